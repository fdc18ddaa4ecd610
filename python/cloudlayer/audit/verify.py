"""Checking the audit log's hash chain: the first entry that was edited, removed, reordered or cut off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .log import GENESIS, MAX_LINE, canonical, entry_hash, head_path

FIELDS = frozenset({"seq", "time", "user", "actor", "action", "object", "outcome", "detail", "host", "pid", "prev"})
OPTIONAL = frozenset({"sudo_user"})


class VerifyResult(msgspec.Struct, kw_only=True):
    path: str
    entries: int  # entries that verified, in order, before the first bad one
    ok: bool
    bad_entry: int | None = None  # 1-based: the entry (= line) where the chain breaks
    problem: str = ""
    last_hash: str = GENESIS


def _check_line(line: bytes, n: int, prev: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if len(line) > MAX_LINE:
        return None, "too long to be an entry (damaged)"
    try:
        entry = json.loads(line)
    except ValueError:
        return None, "not valid JSON (edited or damaged)"
    if not isinstance(entry, dict):
        return None, "not an entry object (edited)"
    try:
        if canonical(entry) != line:
            return None, "not in canonical form (edited)"
    except (TypeError, ValueError):
        return None, "not an entry object (edited)"
    keys = set(entry) - {"hash"}
    if "hash" not in entry or not FIELDS <= keys or keys - FIELDS - OPTIONAL:
        return None, "fields missing or added (edited)"
    if entry["hash"] != entry_hash(entry):
        return None, "its hash does not match its content (edited)"
    expected_seq = 1 if prev is None else prev["seq"] + 1
    if entry["seq"] != expected_seq:
        return None, f"seq {entry['seq']!r} where {expected_seq} was expected (an entry was removed or reordered)"
    if entry["prev"] != (GENESIS if prev is None else prev["hash"]):
        return None, "prev does not match the entry before it (an entry was removed, replaced or reordered)"
    return entry, ""


def verify(log_path: Path) -> VerifyResult:
    result = VerifyResult(path=str(log_path), entries=0, ok=True)
    try:
        data = log_path.read_bytes()
    except FileNotFoundError:
        data = b""

    def bad(n: int, problem: str) -> VerifyResult:
        result.ok, result.bad_entry, result.problem = False, n, problem
        return result

    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    prev: dict[str, Any] | None = None
    hashes: list[str] = []
    for n, line in enumerate(complete, 1):
        entry, problem = _check_line(line, n, prev)
        if entry is None:
            return bad(n, problem)
        prev = entry
        hashes.append(entry["hash"])
        result.entries = n
        result.last_hash = entry["hash"]
    if tail:
        return bad(len(complete) + 1, "incomplete: the log was truncated inside this entry")
    return _check_head(log_path, result, hashes, bad)


def _check_head(
    log_path: Path, result: VerifyResult, hashes: list[str], bad: Callable[[int, str], VerifyResult]
) -> VerifyResult:
    try:
        head = json.loads(head_path(log_path).read_bytes())
        seq, digest = int(head["seq"]), str(head["hash"])
    except FileNotFoundError:
        if hashes:
            name = head_path(log_path).name
            return bad(len(hashes), f"the head file {name} is missing: truncation cannot be ruled out")
        return result
    except (ValueError, KeyError, TypeError):
        return bad(len(hashes), "the head file is damaged")
    last = len(hashes)
    if seq > last:
        return bad(last + 1, f"truncated: entry {seq} was written but the log ends at entry {last}")
    if seq < 1 or hashes[seq - 1] != digest:
        return bad(max(seq, 1), "differs from the recorded head (the chain was rewritten)")
    if seq < last - 1:  # a crash between the line and the head leaves it one behind, never more
        return bad(seq + 1, f"written after the recorded head (entry {seq}): appended by something else")
    return result


def read_entries(log_path: Path) -> list[dict[str, Any]]:
    """Every parseable entry, for `audit list` (verify says whether to trust them)."""
    try:
        data = log_path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
