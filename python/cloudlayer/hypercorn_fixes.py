"""Fixes to Hypercorn 0.18, applied in each worker: two ways one client could kill a worker (a race on a bad
request, DATA after an early HTTP/2 answer), and a delayed ACK that cost the first request on every new TLS 1.3
connection ~40 ms.

When Hypercorn answers a malformed request (e.g. a bad chunk header) it may close the connection from
`TCPServer._close()` (send_eof, then aclose) while `protocol_send()` still holds the stream in `send_all`:
trio then raises BusyResourceError in `protocol_send`, which only expects Broken/ClosedResourceError, the
exception escapes `TCPServer.run` and the whole worker dies. For us the connection is simply gone, exactly
as when the peer hung up, so we let Hypercorn handle it that way.
Found by tests/reliability (test_crash_findings.py); remove once Hypercorn catches it itself.

HTTP/2 DATA after an early answer. When we answer before the request body has arrived (413 for a declared
10^12 bytes, 401, 415), Hypercorn forgets the stream, but h2 still sees it half-closed and reports the client's
DATA frames that follow; Hypercorn's `self.streams[event.stream_id]` then raised KeyError, which ended the
worker (exit 1, every connection on it dropped). Such DATA is now acknowledged for flow control (or the
connection's window would run dry) and the stream reset with NO_ERROR (RFC 9113 8.1: stop sending).

The first request on a new TLS 1.3 connection took ~47 ms, the next ones ~3 ms; TLS 1.2 showed no gap
(bench/bench_tls_first_request.py). After a TLS 1.3 handshake the server still sends its session tickets, and
the client's first request then waits on an ACK that Linux delays (delayed ACK, up to 40 ms) while the client's
Nagle holds the request back. trio already sets TCP_NODELAY on every socket, which is our side of Nagle;
TCP_QUICKACK once the handshake is done makes us ACK at once and the wait goes (bench, TLS 1.3, p50 of the
first request: 51.1 ms without, 11.3 ms with, the second request 8-8.5 ms in both runs on a loaded 2-core box).
Linux leaves quick-ACK mode by itself later; only the first exchange needs it.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import trio
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer

_applied = False
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere nothing to do


async def handshake_then_quickack(
    stream: trio.SSLStream[trio.SocketStream], handshake: Callable[[], Awaitable[None]] | None = None
) -> None:
    """The TLS handshake (`stream.do_handshake` unless given), then TCP_QUICKACK on the connection's socket."""
    await (handshake or stream.do_handshake)()
    if _QUICKACK is not None:
        try:
            stream.transport_stream.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass  # the peer is already gone: Hypercorn finds out on its first read


def _forgotten_data(protocol: Any, event: h2.events.Event, pending: list[h2.events.Event]) -> bool:
    """DATA for a stream Hypercorn has already closed (and that no RequestReceived still queued will open)."""
    if not isinstance(event, h2.events.DataReceived) or event.stream_id in protocol.streams:
        return False
    return not any(isinstance(p, h2.events.RequestReceived) and p.stream_id == event.stream_id for p in pending)


def _drop_data(protocol: Any, event: h2.events.DataReceived) -> None:
    connection = protocol.connection
    try:
        connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
    except h2.exceptions.H2Error:
        pass  # h2 has closed the stream meanwhile: nothing left to say on it


def _patch_h2_data_after_close() -> None:
    original: Callable[[Any, list[h2.events.Event]], Awaitable[None]] = H2Protocol._handle_events

    async def handle_events(self: Any, events: list[h2.events.Event]) -> None:
        pending: list[h2.events.Event] = []
        for event in events:
            if _forgotten_data(self, event, pending):
                if pending:
                    await original(self, pending)
                    pending = []
                _drop_data(self, event)  # type: ignore[arg-type]
            else:
                pending.append(event)
        await original(self, pending)  # also flushes what _drop_data queued

    H2Protocol._handle_events = handle_events  # type: ignore[method-assign]


def apply(*, tcp_quickack: bool = True) -> None:
    global _applied
    if _applied:
        return
    original: Callable[[Any, Any], Awaitable[None]] = TCPServer.protocol_send
    original_run: Callable[[Any], Awaitable[None]] = TCPServer.run

    async def protocol_send(self: Any, event: Any) -> None:
        try:
            await original(self, event)
        except trio.BusyResourceError:
            await self.protocol.handle(Closed())

    async def run(self: Any) -> None:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            # TCPServer.run calls stream.do_handshake(): an instance attribute takes the method's place.
            handshake = stream.do_handshake
            stream.do_handshake = lambda: handshake_then_quickack(stream, handshake)  # type: ignore[method-assign]
        await original_run(self)

    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]
    _patch_h2_data_after_close()
    if tcp_quickack:
        TCPServer.run = run  # type: ignore[method-assign]
    _applied = True
