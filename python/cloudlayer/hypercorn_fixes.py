"""Two fixes to Hypercorn 0.18's trio TCP server, applied in each worker: a race that let one bad request kill a
worker, and a delayed ACK that cost the first request on every new TLS 1.3 connection ~40 ms.

When Hypercorn answers a malformed request (e.g. a bad chunk header) it may close the connection from
`TCPServer._close()` (send_eof, then aclose) while `protocol_send()` still holds the stream in `send_all`:
trio then raises BusyResourceError in `protocol_send`, which only expects Broken/ClosedResourceError, the
exception escapes `TCPServer.run` and the whole worker dies. For us the connection is simply gone, exactly
as when the peer hung up, so we let Hypercorn handle it that way.
Found by tests/reliability (test_crash_findings.py); remove once Hypercorn catches it itself.

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

import trio
from hypercorn.events import Closed
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
    if tcp_quickack:
        TCPServer.run = run  # type: ignore[method-assign]
    _applied = True
