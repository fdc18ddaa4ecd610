"""A fix for a Hypercorn 0.18 race that let one bad request kill a worker (applied in each worker).

When Hypercorn answers a malformed request (e.g. a bad chunk header) it may close the connection from
`TCPServer._close()` (send_eof, then aclose) while `protocol_send()` still holds the stream in `send_all`:
trio then raises BusyResourceError in `protocol_send`, which only expects Broken/ClosedResourceError, the
exception escapes `TCPServer.run` and the whole worker dies. For us the connection is simply gone, exactly
as when the peer hung up, so we let Hypercorn handle it that way.
Found by tests/reliability (test_crash_findings.py); remove once Hypercorn catches it itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.events import Closed
from hypercorn.trio.tcp_server import TCPServer

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    original: Callable[[Any, Any], Awaitable[None]] = TCPServer.protocol_send

    async def protocol_send(self: Any, event: Any) -> None:
        try:
            await original(self, event)
        except trio.BusyResourceError:
            await self.protocol.handle(Closed())

    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]
    _applied = True
