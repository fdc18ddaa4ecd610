"""The audit log: one JSON line per administrative action, each chained to the one before by SHA-256.

An entry is canonical JSON (sorted keys, no spaces, ASCII) with these members:
    seq      1, 2, 3 ... (no gaps)
    time     UTC, ISO 8601 with milliseconds and "Z"
    user     the OS user who ran the command (`sudo_user` too when run through sudo)
    actor    the `--actor` given on the command line, or null
    action   e.g. "client add", "keys rotate-sealing", "host start"
    object   what it acted on, e.g. "client:cl_...", "sealing-key:...", or null
    outcome  "ok" or "failed"
    detail   non-secret facts (a config digest, a count, why it failed); never a secret, token or card data
    host     the machine's hostname, pid the process
    prev     `hash` of the previous entry; the first entry's is GENESIS
    hash     SHA-256 (hex) of the entry's canonical JSON without `hash`

An edited byte changes the entry's own hash (or stops it parsing, or makes it non-canonical), so `verify` names
the entry that holds the byte; a removed or reordered entry breaks `prev`/`seq` at the next one. The head file
(`<log>.head`: seq and hash of the last entry written) catches entries cut off the end.

Appends are atomic across processes: an exclusive flock on `<log>.lock` serialises writers (each reads the
last entry, then writes one line with a single O_APPEND write and fsyncs), then the head is replaced
atomically. A crash between the two leaves the head one entry behind, which `verify` accepts.

Tamper *evidence*, not prevention: whoever can write the var dir can rewrite the whole chain and its head.
Ship the log off the host (or record `audit list --json`'s last hash elsewhere) for an anchor they cannot reach.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pwd
import socket
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .. import keyfiles

GENESIS = hashlib.sha256(b"cloudlayer audit log v1").hexdigest()
MAX_LINE = 16_384  # an entry is a few hundred bytes; a longer line is damage, not an entry
_TAIL_CHUNK = 65_536


class AuditError(Exception):
    """The audit log cannot be written or read (operator-facing, one line)."""


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid:{os.geteuid()}"


def head_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".head")


def locked(log_path: Path) -> AbstractContextManager[None]:
    """The writers' lock (also held by a backup while it copies the log)."""
    return keyfiles.locked(log_path)


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_CHUNK)
    data = os.pread(fd, size - start, start)
    if not data.endswith(b"\n"):
        raise AuditError("audit log: the last entry is incomplete; run `cloudlayer audit verify`")
    lines = data[:-1].split(b"\n")
    if start > 0 and len(lines) < 2:
        raise AuditError("audit log: the last entry is too long; run `cloudlayer audit verify`")
    return lines[-1]


def append(
    log_path: Path,
    *,
    action: str,
    outcome: str,
    obj: str | None = None,
    actor: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one entry (durably, before returning) and return it."""
    entry: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "user": os_user(),
        "actor": actor,
        "action": action,
        "object": obj,
        "outcome": outcome,
        "detail": detail or {},
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if os.environ.get("SUDO_USER"):
        entry["sudo_user"] = os.environ["SUDO_USER"]
    try:
        with locked(log_path):
            fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                last = _last_line(fd)
                if last is None:
                    entry["seq"], entry["prev"] = 1, GENESIS
                else:
                    try:
                        previous = json.loads(last)
                        entry["seq"], entry["prev"] = int(previous["seq"]) + 1, str(previous["hash"])
                    except (ValueError, KeyError, TypeError):
                        raise AuditError("audit log: last entry damaged; see `cloudlayer audit verify`") from None
                entry["hash"] = entry_hash(entry)
                line = canonical(entry) + b"\n"
                if len(line) > MAX_LINE:
                    raise AuditError("audit entry too long")
                os.write(fd, line)  # one write to an O_APPEND file: never interleaved with another writer's
                os.fsync(fd)
            finally:
                os.close(fd)
            _write_head(log_path, entry["seq"], entry["hash"])
    except OSError as e:
        raise AuditError(f"audit log {log_path} not writable: {e.strerror or e}") from None
    return entry


def _write_head(log_path: Path, seq: int, digest: str) -> None:
    path = head_path(log_path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, canonical({"seq": seq, "hash": digest}) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
