"""The store-and-forward queue of reversals: durable (LMDB, fsync on commit), sealed, shareable by processes.

One entry per reversed transaction, keyed by terminal + STAN + original MTI + original field 7, so queuing
the same reversal twice is a no-op. An acknowledged reversal leaves a tombstone (key and time, no card data)
for DONE_RETENTION, so that crash recovery can still tell that a transaction was reversed.
The reversal request (it holds the PAN) is stored only sealed
(AES-GCM, the key as associated data). Several worker processes may open the same file: a worker *leases*
due entries in a write transaction (LMDB serialises writers across processes), so each entry is in flight
from one worker at a time; a crashed worker's lease simply expires.

All methods block (disk, fsync): call them through trio.to_thread.run_sync.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from ..sealing import Sealer, SealError
from .types import AcquirerRequest, ClaimFence, MessageKind

_MAP_SIZE = 64 * 1024 * 1024
# How long an acknowledged reversal is remembered: far longer than any resubmission of its transaction.
DONE_RETENTION = 30 * 86400.0


class SafEntry(msgspec.Struct, kw_only=True):
    sealed: bytes  # Sealer.seal(msgpack(AcquirerRequest)), associated data = the entry key
    reason: str
    created: float
    attempts: int = 0
    next_attempt: float = 0.0  # wall clock (shared between processes)
    lease_owner: str = ""
    lease_until: float = 0.0
    # Non-secret summary for operators (`cloudlayer saf list`).
    terminal_id: str = ""
    stan: str = ""
    rrn: str = ""
    amount: int = 0
    original_mti: str = ""
    last_error: str = ""


class SafItem(msgspec.Struct, frozen=True):
    key: bytes
    request: AcquirerRequest
    attempts: int


class _Created(msgspec.Struct):
    created: float  # msgspec skips the other fields of a SafEntry: no unsealing, no copying


_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(SafEntry)
_created_decoder = msgspec.msgpack.Decoder(_Created)
_request_decoder = msgspec.msgpack.Decoder(AcquirerRequest)

# LMDB forbids opening one environment twice in a process: share it between SafQueue objects.
_envs: dict[str, tuple[Any, int]] = {}
_envs_lock = threading.Lock()


def _open_env(path: Path) -> Any:
    real = str(path.resolve())
    with _envs_lock:
        env, refs = _envs.get(real, (None, 0))
        if env is None:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            env = lmdb.open(real, map_size=_MAP_SIZE, subdir=True, sync=True, max_dbs=2)
        _envs[real] = (env, refs + 1)
        return env


def _close_env(path: Path) -> None:
    real = str(path.resolve())
    with _envs_lock:
        env, refs = _envs[real]
        if refs <= 1:
            del _envs[real]
            env.close()
        else:
            _envs[real] = (env, refs - 1)


def entry_key(request: AcquirerRequest) -> bytes:
    o = request.original
    assert o is not None, "SAF entries are reversals with original data"
    return f"{request.terminal_id}:{request.stan}:{o.mti}:{o.transmission_datetime}".encode()


class SafQueue:
    def __init__(self, path: Path, sealer: Sealer) -> None:
        self.path = path
        self._sealer = sealer
        self._env = _open_env(path)
        self._pending = self._env.open_db(b"pending")  # reversals still to deliver (sealed)
        self._done = self._env.open_db(b"done")  # acknowledged: key -> time, nothing else
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_env(self.path)

    def add(self, request: AcquirerRequest, reason: str, *, attempts: int = 0, fence: ClaimFence | None = None) -> bool:
        """Durably queue a reversal. False if it was already queued (idempotent).

        `attempts` > 0 when the 0400 itself may already have gone out: every send from the queue is then an 0401.
        `fence` is not checked here: this file is written at once, never kept in memory through an outage to land
        later, and on one machine a claim is taken over only from a worker /proc shows dead (the LMDB store), so a
        reversal cannot arrive after another worker's recovery of the claim the way a kept one can on PostgreSQL.
        """
        if request.kind is not MessageKind.REVERSAL or request.original is None:
            raise ValueError("only reversals with original data go into the SAF queue")
        key = entry_key(request)
        entry = SafEntry(
            sealed=self._sealer.seal(_encoder.encode(request), key),
            reason=reason,
            created=time.time(),
            terminal_id=request.terminal_id,
            stan=request.stan,
            rrn=request.rrn,
            amount=request.amount,
            original_mti=request.original.mti,
            attempts=attempts,
        )
        with self._env.begin(write=True) as txn:
            if txn.get(key, db=self._done) is not None:
                return False  # already reversed and acknowledged
            return bool(txn.put(key, _encoder.encode(entry), overwrite=False, db=self._pending))

    def claim_due(self, owner: str, lease_seconds: float, limit: int = 32) -> list[SafItem]:
        """Lease up to `limit` due, unleased entries to `owner`; they come back with their requests opened."""
        now = time.time()
        items: list[SafItem] = []
        with self._env.begin(write=True) as txn:
            for key, raw in list(txn.cursor(db=self._pending)):  # snapshot: we write while walking
                if len(items) >= limit:
                    break
                entry = _entry_decoder.decode(raw)
                if entry.next_attempt > now or (entry.lease_owner and entry.lease_until > now):
                    continue
                try:
                    request = _request_decoder.decode(self._sealer.open(entry.sealed, bytes(key)))
                except (SealError, msgspec.DecodeError):
                    # Wrong key or damage: leave it for an operator (`saf list`), never drop a reversal silently.
                    entry.last_error = "cannot open sealed entry"
                    entry.next_attempt = now + 3600
                    txn.put(key, _encoder.encode(entry), db=self._pending)
                    continue
                entry.lease_owner = owner
                entry.lease_until = now + lease_seconds
                txn.put(key, _encoder.encode(entry), db=self._pending)
                items.append(SafItem(bytes(key), request, entry.attempts))
        return items

    def release(self, key: bytes, owner: str, retry_in: float, error: str) -> None:
        """Give a leased entry back after a failed attempt, due again in `retry_in` seconds."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._pending)
            if raw is None:
                return
            entry = _entry_decoder.decode(raw)
            if entry.lease_owner != owner:
                return  # our lease expired and someone else has it now
            entry.next_attempt = time.time() + retry_in
            entry.lease_owner = ""
            entry.lease_until = 0.0
            entry.last_error = error
            txn.put(key, _encoder.encode(entry), db=self._pending)

    def delete(self, key: bytes) -> None:
        """The acquirer acknowledged the reversal (0410): erase the entry and its sealed card data, keep a
        tombstone."""
        with self._env.begin(write=True) as txn:
            txn.delete(key, db=self._pending)
            txn.put(key, _encoder.encode(time.time()), db=self._done)

    def known(self, key: bytes) -> bool:
        """Whether this reversal was ever queued (still pending, or acknowledged within DONE_RETENTION)."""
        with self._env.begin() as txn:
            return txn.get(key, db=self._pending) is not None or txn.get(key, db=self._done) is not None

    def purge_done(self, older_than: float) -> int:
        """Forget tombstones of reversals acknowledged before `older_than` (unix time)."""
        n = 0
        with self._env.begin(write=True) as txn:
            for key, raw in list(txn.cursor(db=self._done)):
                if msgspec.msgpack.decode(raw, type=float) < older_than:
                    txn.delete(key, db=self._done)
                    n += 1
        return n

    def record_attempt(self, key: bytes, owner: str) -> bool:
        """Count a send before making it, so the next one is a repeat (0401) even if this process dies.
        False when `owner` no longer holds the entry's lease (expired and taken, or acknowledged): do not send."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(key, db=self._pending)
            if raw is None:
                return False
            entry = _entry_decoder.decode(raw)
            if entry.lease_owner != owner or entry.lease_until <= time.time():
                return False
            entry.attempts += 1
            txn.put(key, _encoder.encode(entry), db=self._pending)
            return True

    def entries(self) -> list[tuple[bytes, SafEntry]]:
        with self._env.begin() as txn:
            return [(bytes(k), _entry_decoder.decode(v)) for k, v in txn.cursor(db=self._pending)]

    def next_due(self) -> float | None:
        """Wall-clock time the earliest entry becomes due (None if empty)."""
        due = [max(e.next_attempt, e.lease_until if e.lease_owner else 0.0) for _, e in self.entries()]
        return min(due) if due else None

    def make_all_due(self) -> int:
        """Operator `saf retry`: every unleased entry is due now."""
        n = 0
        with self._env.begin(write=True) as txn:
            for key, raw in list(txn.cursor(db=self._pending)):
                entry = _entry_decoder.decode(raw)
                if entry.next_attempt > 0:
                    entry.next_attempt = 0.0
                    txn.put(key, _encoder.encode(entry), db=self._pending)
                    n += 1
        return n

    def oldest_created(self) -> float | None:
        """Wall-clock creation time of the oldest waiting reversal (None if none waits): for the age alert."""
        with self._env.begin() as txn:
            created = [_created_decoder.decode(v).created for _, v in txn.cursor(db=self._pending)]
        return min(created) if created else None

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._pending)["entries"])


def owner_id() -> str:
    return f"{os.getpid()}-{os.urandom(4).hex()}"
