"""The acquirer's ISO 8583:1987 dialect, written from docs/iso8583.md as a team integrating with it would.

Copied rather than imported from cloudlayer: a baseline must not move when the code it measures changes.
tests/test_bench_conventional.py checks it against cloudlayer's spec, so a change of dialect is noticed.
"""

from __future__ import annotations

from typing import Any


def _fixed(length: int, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": 0, "max_len": length, "desc": ""}


def _var(digits: int, max_len: int, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": digits, "max_len": max_len, "desc": ""}


SPEC: dict[str, dict[str, Any]] = {
    "h": _fixed(0),
    "t": _fixed(4),
    "p": _fixed(8, "b"),
    "1": _fixed(8, "b"),
    "2": _var(2, 19),
    "3": _fixed(6),
    "4": _fixed(12),
    "7": _fixed(10),
    "11": _fixed(6),
    "12": _fixed(6),
    "13": _fixed(4),
    "14": _fixed(4),
    "22": _fixed(3),
    "23": _fixed(3),
    "32": _var(2, 11),
    "35": _var(2, 37),
    "37": _fixed(12),
    "38": _fixed(6),
    "39": _fixed(2),
    "41": _fixed(8),
    "42": _fixed(15),
    "49": _fixed(3),
    "52": _fixed(8, "b"),
    "55": _var(3, 999, "b"),
    "70": _fixed(3),
    "90": _fixed(42),
}

MAX_FRAME = 8192  # docs/iso8583.md: a 2-byte length of 0 or above 8192 is a framing error
