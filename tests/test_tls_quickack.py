"""TCP_QUICKACK is set on a connection once its TLS handshake is done (hypercorn_fixes): the first request on a
new TLS 1.3 connection then no longer waits ~40 ms on a delayed ACK. Speed is measured in
bench/bench_tls_first_request.py; here only that the option is set, on Hypercorn's real TCP server, over real
sockets. (Linux only, like the option.)"""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trustme
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from cloudlayer import hypercorn_fixes

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")


async def _app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


async def quickack_after_handshake(serve: bool) -> int:
    """Serve one TLS 1.3 connection (Hypercorn's TCPServer when `serve`, else a bare handshake); the server
    socket's TCP_QUICKACK once the handshake is done (Linux leaves quick-ACK mode by itself once requests and
    answers alternate, which is why the option is set after the handshake, where the 40 ms were lost)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    answered, served = trio.Event(), trio.Event()
    result: list[int] = []

    async def client() -> None:
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), client_ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        answered.set()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and the server still answers
        data = b""
        while not data.endswith(b"ok"):
            data += await stream.receive_some(65536)
        served.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            raw = await listener.accept()
            tls = trio.SSLStream(raw, server_ctx, server_side=True, https_compatible=True)
            if serve:
                config = HypercornConfig()
                server = TCPServer(
                    wrap_app(_app, config.wsgi_max_body_size, "asgi"), config, WorkerContext(None), {}, tls
                )  # type: ignore[arg-type]
                nursery.start_soon(server.run)
            else:
                await tls.do_handshake()
            await answered.wait()
            # The client is done with its handshake a moment before the server has read the client's Finished.
            for _ in range(100):
                result.append(raw.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
                if result[-1] or not serve:
                    break
                await trio.sleep(0.01)
            if not serve:
                await tls.receive_some(65536)
                await tls.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await served.wait()
            nursery.cancel_scope.cancel()
    return result[-1]


async def test_a_bare_handshake_leaves_delayed_acks_on() -> None:
    """The control: what the fix changes is really off without it."""
    assert await quickack_after_handshake(serve=False) == 0


async def test_hypercorn_tls_connections_get_quickack_after_the_handshake() -> None:
    hypercorn_fixes.apply()
    assert await quickack_after_handshake(serve=True) == 1
