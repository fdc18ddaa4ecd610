"""ASGI middleware around the whole app: the in-flight gauge, and closing a connection whose request framing
was ambiguous.

In flight. Counting in Quart's before/after-request hooks missed every request cancelled mid-body (a client
hang-up, a bad chunk): the after hook never ran, and 300 hang-ups left the gauge at 300. Here the decrement is
in a `finally` around the whole ASGI call, which runs on completion, error and cancellation alike.

Content-Length with Transfer-Encoding. h11 frames such a request by Transfer-Encoding, as RFC 9112 6.1 allows,
but the same section says the server MUST close the connection after responding: a front proxy may have framed
it by Content-Length and then sees a different "next request" from ours (request smuggling). We add
`Connection: close` to the response, and Hypercorn (h11) closes after sending it, leaving anything pipelined
behind it unanswered. HTTP/2 has no Transfer-Encoding (h2 refuses it), so this is HTTP/1.x only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

from ..observability import metrics

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


def ambiguous_framing(scope: Scope) -> bool:
    """True for an HTTP/1.x request that carries both Content-Length and Transfer-Encoding."""
    if scope["type"] != "http" or scope.get("http_version", "1.1") not in ("1.0", "1.1"):
        return False
    names = {name.lower() for name, _ in scope.get("headers", ())}
    return b"content-length" in names and b"transfer-encoding" in names


def guard(inner: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        if ambiguous_framing(scope):
            send = _closing(send)
        metrics.IN_FLIGHT.inc()
        try:
            await inner(scope, receive, send)
        finally:
            metrics.IN_FLIGHT.dec()

    return app


def _closing(send: ASGISendCallable) -> ASGISendCallable:
    async def closing_send(message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing_send
