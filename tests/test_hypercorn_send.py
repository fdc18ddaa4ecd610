"""One write per HTTP/1.1 response (hypercorn_send): Hypercorn's real TCP server and h11 protocol over a real
loopback socket, the server's writes counted at its stream, the client's bytes parsed by h11 itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from cloudlayer import hypercorn_fixes, hypercorn_send

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class CountingStream:
    """The server's side of the connection: a real trio SocketStream whose writes are counted."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.socket = stream.socket
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()


def _client_sends(client: h11.Connection, raw: bytes) -> None:
    """Tell the client's state machine about a request written raw (its method decides the response framing)."""
    client.send(h11.Request(method=raw.split(b" ")[0], target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())


async def _read_responses(stream: trio.SocketStream, requests: list[bytes], count: int) -> list[list[Any]]:
    """`count` whole responses as h11 events (Response, Data..., EndOfMessage), fewer at a close."""
    client = h11.Connection(h11.CLIENT)
    _client_sends(client, requests[0])
    responses: list[list[Any]] = []
    events: list[Any] = []
    while len(responses) < count:
        event = client.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            client.receive_data(data)
            if not data:
                return responses + ([events] if events else [])
            continue
        if isinstance(event, h11.ConnectionClosed):
            return responses + ([events] if events else [])
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            responses.append(events)
            events = []
            if len(responses) < count and client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
                _client_sends(client, requests[len(responses)])
    return responses


async def exchange(app: App, requests: list[bytes], count: int | None = None) -> tuple[list[list[Any]], list[bytes]]:
    """Serve one connection with Hypercorn, send the raw `requests`, read `count` responses: (responses, writes)."""
    hypercorn_fixes.apply()
    hypercorn_send.apply()
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    responses: list[list[Any]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client_stream = await trio.open_tcp_stream("127.0.0.1", port)
            server_stream = CountingStream(await listener.accept())
            config = HypercornConfig()
            server = TCPServer(
                wrap_app(app, config.wsgi_max_body_size, "asgi"), config, WorkerContext(None), {}, server_stream
            )  # type: ignore[arg-type]
            nursery.start_soon(server.run)
            for raw in requests:
                await client_stream.send_all(raw)
            responses = await _read_responses(client_stream, requests, count or len(requests))
            await client_stream.aclose()
            nursery.cancel_scope.cancel()
    return responses, server_stream.writes


def _get(method: bytes = b"GET") -> bytes:
    return method + b" / HTTP/1.1\r\nHost: x\r\n\r\n"


def _body_app(body: bytes, status: int = 200, chunks: int = 1, pause: float = 0.0) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain")]
        if chunks == 1:
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if pause:
            await trio.sleep(pause)
        step = max(1, len(body) // chunks)
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    return app


def _parts(events: list[Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    head = events[0]
    assert isinstance(head, h11.Response)
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    return head.status_code, dict(head.headers), body


async def test_a_response_with_a_body_is_one_write() -> None:
    responses, writes = await exchange(_body_app(b'{"ok":true}'), [_get()])
    status, headers, body = _parts(responses[0])
    assert (status, headers[b"content-length"], body) == (200, b"11", b'{"ok":true}')
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b'{"ok":true}')


async def test_keep_alive_answers_each_request_on_the_connection_in_one_write_each() -> None:
    responses, writes = await exchange(_body_app(b"pong"), [_get(), _get()], count=2)
    assert [_parts(r)[2] for r in responses] == [b"pong", b"pong"]
    assert len(writes) == 2 and all(w.endswith(b"pong") for w in writes)


async def test_a_response_without_a_body_is_its_head_alone() -> None:
    responses, writes = await exchange(_body_app(b"", status=204), [_get()])
    assert _parts(responses[0])[0] == 204
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 204 ") and writes[0].endswith(b"\r\n\r\n")


async def test_a_head_request_gets_the_head_and_no_body() -> None:
    responses, writes = await exchange(_body_app(b"twelve bytes"), [_get(b"HEAD")])
    status, headers, body = _parts(responses[0])
    assert (status, headers[b"content-length"], body) == (200, b"12", b"")
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")


async def test_a_streamed_body_is_whole_and_its_first_chunk_rides_with_the_head() -> None:
    body = b"".join(b"%03d," % i for i in range(100))
    responses, writes = await exchange(_body_app(body, chunks=4), [_get()])
    status, headers, received = _parts(responses[0])
    assert (status, headers[b"transfer-encoding"], received) == (200, b"chunked", body)
    assert writes[0].startswith(b"HTTP/1.1 200 ") and body[:100] in writes[0]
    assert b"".join(writes).endswith(b"0\r\n\r\n")


async def test_a_slow_body_still_reaches_the_client_with_its_head() -> None:
    responses, writes = await exchange(_body_app(b"late", pause=0.2), [_get()])
    assert _parts(responses[0])[2] == b"late" and len(writes) == 1


async def test_an_app_failing_after_the_head_still_sends_the_head_then_closes() -> None:
    """As without the change: the head that was started goes out, then Hypercorn closes the connection."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the app broke mid-response")

    responses, writes = await exchange(app, [_get()])
    assert writes and writes[0].startswith(b"HTTP/1.1 200 ")
    assert responses and isinstance(responses[0][0], h11.Response)  # head seen, body never completed


async def test_hypercorns_own_error_answer_is_one_write() -> None:
    """A malformed request: Hypercorn writes its 400 itself (head + end of message), joined."""
    _, writes = await exchange(_body_app(b"unused"), [b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"])
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 400 ") and writes[0].endswith(b"\r\n\r\n")
