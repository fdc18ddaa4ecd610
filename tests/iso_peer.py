"""An independent ISO 8583 peer written only from docs/iso8583.md with pyiso8583.

It does not import cloudlayer: if the connector and this file disagree, the document is the referee.
"""

from __future__ import annotations

import random
from typing import Any

import iso8583
import trio


def _f(n: int, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": 0, "max_len": n, "desc": ""}


def _v(digits: int, n: int, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": digits, "max_len": n, "desc": ""}


# The field table of docs/iso8583.md, transcribed.
PEER_SPEC: dict[str, dict[str, Any]] = {
    "h": _f(0),
    "t": _f(4),
    "p": _f(8, "b"),
    "1": _f(8, "b"),
    "2": _v(2, 19),
    "3": _f(6),
    "4": _f(12),
    "7": _f(10),
    "11": _f(6),
    "12": _f(6),
    "13": _f(4),
    "14": _f(4),
    "22": _f(3),
    "23": _f(3),
    "32": _v(2, 11),
    "35": _v(2, 37),
    "37": _f(12),
    "38": _f(6),
    "39": _f(2),
    "41": _f(8),
    "42": _f(15),
    "49": _f(3),
    "52": _f(8, "b"),
    "55": _v(3, 999, "b"),
    "70": _f(3),
    "90": _f(42),
}
ECHOED = ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")


def frame(doc: dict[str, str]) -> bytes:
    raw, _ = iso8583.encode(dict(doc), PEER_SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


async def read_frame(stream: trio.abc.ReceiveStream, buf: bytearray) -> dict[str, str] | None:
    while True:
        if len(buf) >= 2:
            n = int.from_bytes(buf[:2], "big")
            if len(buf) >= 2 + n:
                payload = bytes(buf[2 : 2 + n])
                del buf[: 2 + n]
                doc, _ = iso8583.decode(payload, PEER_SPEC)
                return doc
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk


class PeerAcquirer:
    """A minimal acquirer: approves everything with code 00 and approval code PEER01, answers in random order.

    It records what it received as (mti, stan, terminal) tuples, and each message whole in `messages`.
    """

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []
        self.messages: list[dict[str, str]] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        lock = trio.Lock()
        async with trio.open_nursery() as nursery:
            while (doc := await read_frame(stream, buf)) is not None:
                self.received.append((doc["t"], doc.get("11", ""), doc.get("41", "")))
                self.messages.append(doc)
                nursery.start_soon(self._answer, stream, lock, doc)

    async def _answer(self, stream: trio.SocketStream, lock: trio.Lock, doc: dict[str, str]) -> None:
        await trio.sleep(random.uniform(0, 0.02))  # out of order
        mti = doc["t"]
        if mti == "0800":
            answer = {k: doc[k] for k in ("7", "11", "32", "70") if k in doc}
            answer.update({"t": "0810", "39": "00"})
        else:
            answer = {k: doc[k] for k in ECHOED if k in doc}
            answer["t"] = {"0100": "0110", "0101": "0110", "0200": "0210", "0201": "0210"}.get(mti, "0410")
            answer["39"] = "00"
            if mti in ("0100", "0200"):
                answer["38"] = "PEER01"
                answer["55"] = "910A" + "11" * 10
            if mti in ("0400", "0401"):
                answer["90"] = doc["90"]
        async with lock:
            await stream.send_all(frame(answer))


async def peer_request(host: str, port: int, doc: dict[str, str]) -> dict[str, str]:
    """Send one request on a fresh connection and wait for its answer (the peer as a client)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(frame(doc))
        answer = await read_frame(stream, bytearray())
        assert answer is not None
        return answer
