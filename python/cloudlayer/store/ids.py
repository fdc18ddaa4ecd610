"""STAN and RRN from one durable sequence shared by every worker.

Each worker reserves a block of sequence numbers with one durable write (`meta/ids:next`) and hands
them out from memory; a restart abandons the rest of its block, so ids are never reused (gaps are fine).
STAN (field 11): 6 digits, 000001-999999, wrapping. RRN (field 37): 12 characters, `YDDD` (last digit of
the UTC year, day of year) + 8 digits of the sequence: unique unless one day sees 10^8 transactions.
"""

from __future__ import annotations

import struct
import time

BLOCK = 1000
SEQ_KEY = b"ids:next"
_U64 = struct.Struct(">Q")


def stan_of(seq: int) -> str:
    return f"{(seq - 1) % 999_999 + 1:06d}"


def rrn_of(seq: int, now: float) -> str:
    t = time.gmtime(now)
    return f"{t.tm_year % 10}{t.tm_yday:03d}{seq % 100_000_000:08d}"


def pack_seq(seq: int) -> bytes:
    return _U64.pack(seq)


def unpack_seq(raw: bytes | None) -> int:
    return _U64.unpack(raw)[0] if raw else 1


class IdBlock:
    """The worker's current block [next, end); empty until the first reservation."""

    def __init__(self) -> None:
        self.next = 0
        self.end = 0

    def take(self) -> int | None:
        if self.next >= self.end:
            return None
        seq = self.next
        self.next += 1
        return seq

    def refill(self, start: int, size: int = BLOCK) -> None:
        self.next, self.end = start, start + size
