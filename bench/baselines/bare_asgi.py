"""The stack ceiling: a bare ASGI app on Hypercorn's trio worker answering every request with a fixed JSON.

It drains the request body (the host must read its body too) and, if BENCH_BASELINE_DELAY_MS is set,
sleeps that long first: the ceiling for the acquirer-latency scenario, where the host waits on the
acquirer for the same time.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

BODY = b'{"status":"ok","source":"bare-asgi"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
DELAY = float(os.environ.get("BENCH_BASELINE_DELAY_MS", "0")) / 1000.0

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if DELAY:
        await trio.sleep(DELAY)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
