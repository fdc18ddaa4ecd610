"""One persistent TCP link to the acquirer (asyncio streams), many requests in flight on it.

Frames are a 2-byte big-endian length and a pyiso8583 message; answers may come in any order and are
matched to their request on (message class, STAN, terminal), as docs/iso8583.md says. The link signs on
(0800 / 70=001) before use and reconnects on the next request after it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime

import iso8583

from .spec import MAX_FRAME, SPEC

log = logging.getLogger("conventional.acquirer")

Message = dict[str, str]
Key = tuple[str, str, str]


class AcquirerError(Exception):
    """No answer: the link is down or the acquirer did not answer in time (the caller declines with 91)."""


def _key(msg: Message) -> Key:
    return (msg["t"][1:2], msg.get("11", ""), msg.get("41", ""))


class AcquirerLink:
    def __init__(self, host: str, port: int, *, timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        self._host, self._port = host, port
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[Key, asyncio.Future[Message]] = {}
        self._connecting = asyncio.Lock()
        self._signed_on = False

    async def connect(self) -> None:
        async with self._connecting:
            if self._signed_on:
                return
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), self._connect_timeout
            )
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_answers(reader, writer))
            sign_on = {
                "t": "0800",
                "7": datetime.now(UTC).strftime("%m%d%H%M%S"),
                "11": f"{os.getpid() % 1_000_000:06d}",
                "32": "123456",
                "70": "001",
            }
            try:
                answer = await self._exchange(sign_on)
                if answer.get("39") != "00":
                    raise AcquirerError(f"sign-on refused: {answer.get('39')}")
            except BaseException:
                await self.close()
                raise
            self._signed_on = True

    async def send(self, msg: Message) -> Message:
        if not self._signed_on:
            try:
                await self.connect()
            except OSError as e:
                raise AcquirerError(f"cannot connect: {e}") from None
        return await self._exchange(msg)

    async def _exchange(self, msg: Message) -> Message:
        writer = self._writer
        if writer is None:
            raise AcquirerError("link down")
        key = _key(msg)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        raw, _ = iso8583.encode(dict(msg), SPEC)
        try:
            writer.write(len(raw).to_bytes(2, "big") + bytes(raw))
            await writer.drain()
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            raise AcquirerError("no answer in time") from None
        except OSError as e:
            raise AcquirerError(f"link failed: {e}") from None
        finally:
            self._pending.pop(key, None)

    async def _read_answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(2), "big")
                if n == 0 or n > MAX_FRAME:
                    raise ValueError(f"frame length {n} out of range")
                doc, _ = iso8583.decode(await reader.readexactly(n), SPEC)
                future = self._pending.get(_key(doc))
                if future is not None and not future.done():
                    future.set_result(doc)
        except (asyncio.IncompleteReadError, OSError, ValueError, KeyError, iso8583.DecodeError) as e:
            log.warning("acquirer link dropped: %s", type(e).__name__)
        finally:
            if self._writer is writer:
                self._writer, self._signed_on = None, False
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(AcquirerError("link dropped"))
            writer.close()

    async def close(self) -> None:
        writer, task = self._writer, self._reader_task
        self._writer, self._signed_on = None, False
        if writer is not None:
            writer.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
