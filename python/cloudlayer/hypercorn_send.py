"""One write per HTTP/1.1 response instead of three: a change to how Hypercorn 0.18's h11 protocol writes.

Hypercorn writes every h11 event the moment it has it: the response head (status line and headers) in one
`send_all`, the body in a second, and the end of message (b"" under Content-Length) in a third, each under the
connection's send lock and a shielded cancel scope, the empty one still a checkpoint through trio's scheduler.
That was 16 % of a worker's event-loop samples for a purchase (bench/README.md, "What limits the host").

Here the head is held in the protocol until the next event of the same response, and goes out joined to it:
a response with a body is one write, a response without one (a 204, a HEAD answer, an error Hypercorn writes
itself) is one write of the head when its end of message comes, and an empty write is skipped. Nothing is
reordered and nothing else waits: Quart sends the head and then the body back to back from one task, so the
head is held for no longer than that. Any other write on the connection (a raw data event, an informational
response) sends the held head first. HTTP/2 is untouched (h2 frames are already written per batch).

What we keep from Hypercorn: the h11 state machine decides every byte, exactly as before; only when the bytes
are handed to the socket changes. tests/test_hypercorn_send.py holds the bytes on the wire to what h11 makes.
A patch, not a setting: Hypercorn has none for it; remove this module if Hypercorn comes to join them itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol

_HELD = "_cloudlayer_held_head"  # the instance attribute that holds a response head not written yet
_applied = False


async def _send_h11_event(self: Any, event: Any) -> None:
    """Hypercorn's H11Protocol._send_h11_event, with the response head held until the next event."""
    try:
        data = self.connection.send(event)
    except h11.LocalProtocolError:
        if self.connection.their_state != h11.ERROR:
            raise
        return  # as Hypercorn: nothing to write for an event h11 refused after the peer's error
    held: bytes = getattr(self, _HELD, b"")
    if isinstance(event, h11.Response):  # a final response's head (1xx heads are InformationalResponse)
        setattr(self, _HELD, held + data)
        return
    if held:
        setattr(self, _HELD, b"")
        data = held + data
    if data:
        await self.send(RawData(data=data))


def _flushing(original: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Awaitable[None]]:
    """Wrap H11Protocol.stream_send: an event that writes around _send_h11_event sends the held head first."""

    async def stream_send(self: Any, event: Any) -> None:
        held: bytes = getattr(self, _HELD, b"")
        if held and not _goes_through_h11(event):
            setattr(self, _HELD, b"")
            await self.send(RawData(data=held))
        await original(self, event)

    return stream_send


def _goes_through_h11(event: Any) -> bool:
    return isinstance(event, Body | EndBody | Response)


def apply() -> None:
    global _applied
    if _applied:
        return
    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    H11Protocol.stream_send = _flushing(H11Protocol.stream_send)  # type: ignore[method-assign,assignment]
    _applied = True
