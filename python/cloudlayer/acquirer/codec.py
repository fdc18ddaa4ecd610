"""Frames and messages: the length prefix on the TCP stream, and ISO 8583 pack/unpack with our spec.

Pack/unpack is the native codec (rust/iso8583.rs), built from spec.py's SPEC so the dialect has one source
of truth. It is a hand-written replacement for the kept library because pyiso8583 was the largest library
cost on the hot path (bench/bench_iso8583.py): pyiso8583 stays as its oracle (reference_codec.py), and
tests/test_iso8583_native.py and the `iso8583` fuzz target hold the two to the same bytes and errors.
"""

from __future__ import annotations

from typing import Final, Literal

import trio

from .._native import Iso8583DecodeError, Iso8583Dialect, Iso8583EncodeError
from .spec import MAX_FRAME, SPEC

LengthPrefix = Literal["2B", "4B", "4A"]
Message = dict[str, str]


class FrameError(Exception):
    """The peer sent something that is not a frame or not a message of our dialect."""

    def __init__(self, reason: str, frame: bytes = b"") -> None:
        # Only the length and a 4-byte prefix ever leave this object: the frame may hold card data.
        super().__init__(f"{reason} (frame length {len(frame)}, prefix {masked_prefix(frame)})")
        self.frame_length = len(frame)


class EncodeError(ValueError):
    """A value our dialect cannot carry; `field` is its ISO 8583 field number (the message never holds the value)."""

    def __init__(self, reason: str, field: str) -> None:
        super().__init__(f"{reason} (field {field})")
        self.field = field


def masked_prefix(frame: bytes) -> str:
    """Hex of the first 4 bytes (the MTI position) and nothing else: safe to log."""
    return frame[:4].hex() + ("…" if len(frame) > 4 else "")


class Framing:
    """Length prefix codec: 2B / 4B = 2- or 4-byte big-endian binary, 4A = 4 ASCII decimal digits."""

    def __init__(self, prefix: LengthPrefix) -> None:
        self.width: Final = int(prefix[0])
        self.ascii: Final = prefix[1] == "A"
        self.max_len: Final = min(MAX_FRAME, 10**self.width - 1 if self.ascii else 256**self.width - 1)

    def wrap(self, payload: bytes) -> bytes:
        n = len(payload)
        if n > self.max_len:
            raise ValueError(f"message of {n} bytes exceeds the {self.max_len}-byte frame limit")
        head = str(n).zfill(self.width).encode() if self.ascii else n.to_bytes(self.width, "big")
        return head + payload

    def _length(self, head: bytes) -> int:
        if self.ascii:
            if not head.isdigit():
                raise FrameError("length prefix is not ASCII digits", head)
            n = int(head)
        else:
            n = int.from_bytes(head, "big")
        if n == 0 or n > self.max_len:
            raise FrameError(f"length prefix {n} out of range", head)
        return n


class FrameReader:
    """Reads whole frames from a trio stream (bytes may arrive split or coalesced)."""

    def __init__(self, stream: trio.abc.ReceiveStream, framing: Framing) -> None:
        self._stream = stream
        self._framing = framing
        self._buf = bytearray()

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def next_frame(self) -> bytes | None:
        """The next payload, or None at a clean end of stream. Raises FrameError on a bad prefix."""
        width = self._framing.width
        if not await self._fill(width):
            if self._buf:
                raise FrameError("stream ended inside a length prefix", bytes(self._buf))
            return None
        n = self._framing._length(bytes(self._buf[:width]))
        if not await self._fill(width + n):
            raise FrameError("stream ended inside a frame", bytes(self._buf[width:]))
        payload = bytes(self._buf[width : width + n])
        del self._buf[: width + n]
        return payload


DIALECT: Final = Iso8583Dialect(SPEC)


def encode(message: Message) -> bytes:
    """Encode a message dict (field number -> value; binary fields as hex). Raises EncodeError naming the field."""
    try:
        return DIALECT.encode(message)
    except Iso8583EncodeError as e:
        # e.reason names the problem and e.field the field; never the value (it may be a PAN).
        raise EncodeError(f"cannot encode ISO 8583 message: {e.reason}", e.field) from None


def decode(payload: bytes) -> Message:
    """Decode one payload. Raises FrameError (carrying only length + masked prefix) if it is not our dialect."""
    try:
        return DIALECT.decode(payload)
    except Iso8583DecodeError as e:
        raise FrameError(f"undecodable message: {e.reason} in field {e.field}", payload) from None
