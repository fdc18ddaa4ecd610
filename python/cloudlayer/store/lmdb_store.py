"""The embedded transaction store: LMDB, one group-commit writer per worker process.

Writes (claim, complete, add_events, take_over, id-block reservation, purge, heartbeat) are queued to
the single writer task started by `run`. It drains up to `group_commit_max` queued ops, applies them in
ONE LMDB write transaction in a worker thread, commits durably (sync=True: data and meta page flushed),
then wakes each caller with its own result. Every decision (the claim outcome above all) is taken inside
that write transaction; LMDB serialises write transactions across every process that opens the
environment, so a claim is atomic across Hypercorn workers as well as tasks.

Reads run inline on the event loop: LMDB reads are lookups in a memory map (microseconds), cheaper than
the ~50-100 us hop to a thread. The cost is a page fault on a cold page blocking the loop for one disk
read; the store is small and hot in practice.

Named databases:
  records       client_id NUL transaction_id -> msgpack TransactionRecord
  by_rrn        rrn -> record key (dupsort)
  by_term_stan  terminal_id NUL stan -> record key (dupsort)
  by_created    be64(created_at us) + record key -> ""   (list_since)
  by_completed  be64(completed_at us) + record key -> "" (purge; COMPLETED records only)
  by_card       client_id NUL card_key -> record key (one record per card transaction; lmdb_keys.py)
  meta          ids:next -> be64 sequence; hb:<owner> -> be64 double heartbeat time
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import msgspec
import structlog
import trio

from ..config import Config, StoreConfig
from . import codec, ids, lmdb_keys
from .housekeeping import run_housekeeping
from .owner import OwnerId, current_owner_id, local_owner_alive
from .types import (
    ALWAYS_SEND,
    Claim,
    ClaimOutcome,
    Completion,
    Event,
    NotOwner,
    OwnerDied,
    SendGuard,
    State,
    StoreFull,
    TransactionRecord,
    TransactionStore,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
MB = 1024 * 1024
PURGE_CHUNK = 1000  # records deleted per write transaction, so purging never starves claims
QUEUE_DEPTH = 4096
WAIT_MIN, WAIT_MAX = 0.002, 0.05  # wait_completed polling backoff
_HB = b"hb:"
_F64 = struct.Struct(">d")


class _Op:
    """One queued write and, once the writer is done with it, its result or error."""

    __slots__ = ("args", "done", "error", "kind", "result")

    def __init__(self, kind: str, *args: Any) -> None:
        self.kind = kind
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class LmdbStore:
    """`TransactionStore` on LMDB. Open one per worker process (never share an env across fork)."""

    def __init__(
        self,
        path: Path,
        cfg: StoreConfig,
        *,
        owner_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner_id = owner_id or current_owner_id()
        self.send_guard: SendGuard = ALWAYS_SEND  # one host: nobody else can take our claims while we live
        # PENDING keys this process gave up on (abandon): treated as orphaned although we are alive.
        self._abandoned: set[bytes] = set()
        self.path = Path(path)
        self._cfg = cfg
        self._clock = clock
        self._max_map = cfg.max_map_size_mb * MB
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self.path),
            map_size=cfg.map_size_mb * MB,
            max_dbs=8,
            lock=True,  # LMDB's lock file serialises writers across processes
            sync=True,
            metasync=True,
            readahead=False,  # random access: readahead only pollutes the page cache
            mode=0o600,
        )
        # Reader slots left by processes killed mid-read would pin old pages forever.
        self._env.reader_check()
        with self._env.begin(write=True) as txn:
            self._records = self._env.open_db(b"records", txn=txn)
            self._by_rrn = self._env.open_db(b"by_rrn", txn=txn, dupsort=True)
            self._by_term_stan = self._env.open_db(b"by_term_stan", txn=txn, dupsort=True)
            self._by_created = self._env.open_db(b"by_created", txn=txn)
            self._by_completed = self._env.open_db(b"by_completed", txn=txn)
            self._meta = self._env.open_db(b"meta", txn=txn)
            self._by_card = self._env.open_db(b"by_card", txn=txn)
        self._dbs = lmdb_keys.Dbs(self._records, self._by_card)
        # set_mapsize needs no live transaction in this process: loop-thread reads hold this lock, and the
        # writer thread takes it to resize between its own write transactions.
        self._resize_lock = threading.Lock()
        self._send, self._recv = trio.open_memory_channel[_Op](QUEUE_DEPTH)
        self._committed = trio.Event()  # set (and replaced) after every batch: wakes local waiters
        self._ids = ids.IdBlock()
        self._ids_lock = trio.Lock()
        self.commits = 0  # write transactions committed (for metrics: ops / commits = mean batch)
        self.committed_ops = 0
        self._running = False
        self._commit_ok = True
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> LmdbStore:
        return cls(cfg.var_path(cfg.store.path), cfg.store, **kwargs)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("store writer already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._housekeeping)
                task_status.started()
        finally:
            self._running = False
            self._fail_queued()

    def writable(self) -> bool:
        return self._running and self._commit_ok and not self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    # ---- the writer --------------------------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        # Queued ops wait for `run`. A caller cancelled after this point may still see its op applied
        # (e.g. a NEW claim nobody completes): that record stays PENDING under our live owner id and is
        # recovered as ORPHANED after this process exits. Never processed twice either way.
        if self._closed:
            raise RuntimeError("store is closed")
        await self._send.send(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def _writer(self) -> None:
        while True:
            batch = [await self._recv.receive()]
            while len(batch) < self._cfg.group_commit_max:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            # The thread cannot be interrupted anyway; shielding lets its results reach the callers.
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(self._apply_batch, batch)
                    self._commit_ok = True
                    self.commits += 1
                    self.committed_ops += len(batch)
                except Exception as e:
                    self._commit_ok = False
                    log.error("store_commit_failed", error=repr(e), ops=len(batch))
                    for op in batch:
                        op.result = None
                        op.error = RuntimeError(f"transaction store commit failed: {e!r}")
            for op in batch:
                op.done.set()
            self._committed.set()
            self._committed = trio.Event()

    def _fail_queued(self) -> None:
        while True:
            try:
                op = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            op.error = RuntimeError("store writer stopped")
            op.done.set()

    def _apply_batch(self, batch: list[_Op]) -> None:
        """In the writer thread: the whole batch in one durable transaction, growing the map if needed."""
        if any(op.kind == "adopt" for op in batch):
            self._adopt_map_size()
        for _ in range(64):
            try:
                self._commit(batch)
                return
            except lmdb.MapResizedError:
                self._adopt_map_size()  # another process grew the map: take its size and retry
            except lmdb.MapFullError:
                if not self._grow():
                    break
        # At the ceiling: one transaction per op, so whatever still fits is stored and only the rest fails.
        # Errors stay per op from here on: an op committed alone must not be reported failed.
        for op in batch:
            for _ in range(8):
                try:
                    self._commit([op])
                    break
                except lmdb.MapResizedError:
                    self._adopt_map_size()
                except lmdb.MapFullError:
                    op.result = None
                    op.error = StoreFull(
                        f"transaction store full: map at store.max_map_size_mb={self._cfg.max_map_size_mb} MB "
                        f"({self.path}); purge old records or raise the limit"
                    )
                    break
                except lmdb.Error as e:
                    op.result = None
                    op.error = RuntimeError(f"transaction store commit failed: {e!r}")
                    break

    def _commit(self, batch: list[_Op]) -> None:
        with self._env.begin(write=True) as txn:  # commits on exit (fsync), aborts on any exception
            for op in batch:
                op.result, op.error = None, None
                try:
                    op.result = self._apply(txn, op)
                except (NotOwner, msgspec.DecodeError) as e:
                    op.error = e  # raised before the op wrote anything: fails only this op

    def _grow(self) -> bool:
        current = int(self._env.info()["map_size"])
        if current >= self._max_map:
            return False
        new = min(current * 2, self._max_map)
        with self._resize_lock:
            self._env.set_mapsize(new)
        log.warning("store_map_grown", from_mb=current // MB, to_mb=new // MB, max_mb=self._max_map // MB)
        return True

    def _adopt_map_size(self) -> None:
        with self._resize_lock:
            self._env.set_mapsize(0)

    # ---- ops, applied inside the writer's transaction -----------------------------------------------

    def _apply(self, txn: lmdb.Transaction[bytes], op: _Op) -> Any:
        now = self._clock()
        match op.kind:
            case "claim":
                return self._do_claim(txn, op.args[0], now)
            case "complete":
                return self._do_complete(txn, op.args[0], op.args[1], now)
            case "events":
                return self._do_events(txn, op.args[0], op.args[1], op.args[2])
            case "take_over":
                return self._do_take_over(txn, op.args[0], op.args[1], now)
            case "reserve":
                start = ids.unpack_seq(txn.get(ids.SEQ_KEY, db=self._meta))
                txn.put(ids.SEQ_KEY, ids.pack_seq(start + op.args[0]), db=self._meta)
                return start
            case "purge":
                return self._do_purge(txn, op.args[0], op.args[1], now)
            case "heartbeat":
                txn.put(_HB + self.owner_id.encode(), _F64.pack(now), db=self._meta)
                return None
            case "adopt":
                return None
        raise AssertionError(op.kind)

    def _do_claim(self, txn: lmdb.Transaction[bytes], rec: TransactionRecord, now: float) -> Claim:
        key = codec.record_key(rec.client_id, rec.transaction_id)
        raw = txn.get(key, db=self._records)
        if raw is None:
            refused = lmdb_keys.refuse_or_hold(txn, self._dbs, key, rec, now)
            if refused is not None:
                return refused
            rec.owner = self.owner_id
            rec.created_at = rec.created_at or now
            txn.put(key, codec.encode(rec), db=self._records)
            if rec.rrn:
                txn.put(rec.rrn.encode(), key, db=self._by_rrn)
            if rec.terminal_id and rec.stan:
                txn.put(codec.terminal_stan_key(rec.terminal_id, rec.stan), key, db=self._by_term_stan)
            txn.put(codec.time_key(rec.created_at, key), b"", db=self._by_created)
            return Claim(ClaimOutcome.NEW, rec)
        existing = codec.decode(raw)
        if existing.fingerprint != rec.fingerprint:
            return Claim(ClaimOutcome.CONFLICT, existing)
        if existing.state is State.COMPLETED:
            return Claim(ClaimOutcome.REPLAY, existing)
        if key not in self._abandoned and self._owner_alive(existing.owner, txn, now):
            return Claim(ClaimOutcome.IN_FLIGHT, existing)
        return Claim(ClaimOutcome.ORPHANED, existing)

    def _do_complete(self, txn: lmdb.Transaction[bytes], key: bytes, c: Completion, now: float) -> TransactionRecord:
        raw = txn.get(key, db=self._records)
        if raw is None:
            raise NotOwner("complete: no such transaction")
        rec = codec.decode(raw)
        if rec.state is not State.PENDING or rec.owner != self.owner_id:
            raise NotOwner(f"complete: transaction is {rec.state.value} under another owner or already done")
        rec.state = State.COMPLETED
        rec.response_status = c.response_status
        rec.response_body = c.response_body
        rec.response_code = c.response_code
        rec.approved = c.approved
        rec.authorisation_code = c.authorisation_code
        rec.outcome = c.outcome
        rec.sealed_request = None  # the only copy of card data: gone once the outcome is durable
        rec.completed_at = now
        rec.events.extend(c.events)
        _trim_events(rec)
        txn.put(key, codec.encode(rec), db=self._records)
        txn.put(codec.time_key(now, key), b"", db=self._by_completed)
        lmdb_keys.settle_original(txn, self._dbs, rec, now)  # a REVERSAL's original: same commit
        return rec

    def _do_events(self, txn: lmdb.Transaction[bytes], key: bytes, events: list[Event], replay: bool) -> None:
        raw = txn.get(key, db=self._records)
        if raw is None:
            log.warning("store_events_unknown_transaction", events=len(events))
            return
        rec = codec.decode(raw)
        rec.events.extend(events)
        _trim_events(rec)
        rec.replays += int(replay)
        txn.put(key, codec.encode(rec), db=self._records)

    def _do_take_over(
        self, txn: lmdb.Transaction[bytes], key: bytes, dead_owner: str, now: float
    ) -> TransactionRecord | None:
        raw = txn.get(key, db=self._records)
        if raw is None:
            return None
        rec = codec.decode(raw)
        alive = key not in self._abandoned and self._owner_alive(dead_owner, txn, now)
        if rec.state is not State.PENDING or rec.owner != dead_owner or alive:
            return None  # someone else took it over first, it completed, or the owner is alive after all
        self._abandoned.discard(key)
        rec.owner = self.owner_id
        rec.events.append(Event(now, "taken-over", f"from {dead_owner}"))
        _trim_events(rec)
        txn.put(key, codec.encode(rec), db=self._records)
        return rec

    def _do_purge(self, txn: lmdb.Transaction[bytes], older_than: float, limit: int, now: float) -> int:
        deleted = 0
        cur = txn.cursor(db=self._by_completed)
        cutoff = codec.time_key(older_than)
        while deleted < limit and cur.first() and cur.key() < cutoff:
            key = cur.key()[8:]
            raw = txn.get(key, db=self._records)
            if raw is not None:
                rec = codec.decode(raw)
                if rec.state is State.COMPLETED:
                    self._delete_record(txn, key, rec)
                    deleted += 1
            cur.delete()
        # Heartbeats of workers long gone.
        stale = _F64.pack(now - max(self._cfg.owner_timeout * 100, 86_400.0))
        hb = txn.cursor(db=self._meta)
        more = hb.set_range(_HB)
        while more and hb.key().startswith(_HB):
            # Big-endian doubles of positive times sort like the times; delete() moves to the next entry.
            more = hb.delete() if hb.value() < stale else hb.next()
        return deleted

    def _delete_record(self, txn: lmdb.Transaction[bytes], key: bytes, rec: TransactionRecord) -> None:
        txn.delete(key, db=self._records)
        if rec.rrn:
            txn.delete(rec.rrn.encode(), key, db=self._by_rrn)
        if rec.terminal_id and rec.stan:
            txn.delete(codec.terminal_stan_key(rec.terminal_id, rec.stan), key, db=self._by_term_stan)
        txn.delete(codec.time_key(rec.created_at, key), db=self._by_created)
        lmdb_keys.forget_card_key(txn, self._dbs, key, rec)

    # ---- owners ------------------------------------------------------------------------------------

    def _owner_alive(self, owner: str, txn: lmdb.Transaction[bytes], now: float) -> bool:
        if owner == self.owner_id:
            return True
        oid = OwnerId.parse(owner)
        local = local_owner_alive(oid) if oid is not None else None
        if local is not None:
            return local
        # Not visible from this host: alive while its heartbeat is fresh.
        hb = txn.get(_HB + owner.encode(), db=self._meta)
        return hb is not None and now - _F64.unpack(hb)[0] < self._cfg.owner_timeout

    def abandon(self, client_id: str, transaction_id: str) -> None:
        """This process gave up on a PENDING it owns (an error after the claim): from now on it counts as
        orphaned, so the next resubmission recovers it instead of waiting on a live owner that never finishes."""
        self._abandoned.add(codec.record_key(client_id, transaction_id))

    def owner_alive(self, owner: str) -> bool:
        try:
            with self._resize_lock, self._env.begin() as txn:
                return self._owner_alive(owner, txn, self._clock())
        except lmdb.MapResizedError:
            return True  # cannot read right now: assume alive (waiting is safe, a wrong take-over is not)

    async def _housekeeping(self) -> None:
        await run_housekeeping(self, self._cfg, self._clock)

    # ---- writes ------------------------------------------------------------------------------------

    async def next_ids(self) -> tuple[str, str]:
        seq = self._ids.take()
        if seq is None:
            async with self._ids_lock:
                seq = self._ids.take()
                if seq is None:
                    self._ids.refill(await self._submit(_Op("reserve", ids.BLOCK)))
                    seq = self._ids.take()
        assert seq is not None
        return ids.stan_of(seq), ids.rrn_of(seq, self._clock())

    async def claim(self, record: TransactionRecord) -> Claim:
        checked = codec.validate_claim(record)
        result: Claim = await self._submit(_Op("claim", checked))
        return result

    async def complete(self, client_id: str, transaction_id: str, completion: Completion) -> TransactionRecord:
        c = codec.validate_completion(completion)
        rec: TransactionRecord = await self._submit(_Op("complete", codec.record_key(client_id, transaction_id), c))
        return rec

    async def add_events(self, client_id: str, transaction_id: str, *events: Event, replay: bool = False) -> None:
        checked = codec.validate_events(events)
        await self._submit(_Op("events", codec.record_key(client_id, transaction_id), checked, replay))

    async def take_over(self, client_id: str, transaction_id: str, dead_owner: str) -> TransactionRecord | None:
        rec: TransactionRecord | None = await self._submit(
            _Op("take_over", codec.record_key(client_id, transaction_id), dead_owner)
        )
        return rec

    async def heartbeat(self) -> None:
        """Record that this owner lives (run() does it every owner_timeout/3): how other hosts see us."""
        await self._submit(_Op("heartbeat"))

    async def purge(self, older_than: float) -> int:
        total = 0
        while True:
            n: int = await self._submit(_Op("purge", older_than, PURGE_CHUNK))
            total += n
            if n < PURGE_CHUNK:
                return total

    # ---- reads -------------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        for _ in range(8):
            try:
                with self._resize_lock, self._env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                # Another process grew the map. Adopting its size needs no transaction live in this
                # process, which only the writer can guarantee; without a writer (CLI) do it here.
                if self._running:
                    await self._submit(_Op("adopt"))
                else:
                    self._adopt_map_size()
        raise RuntimeError("transaction store map keeps resizing")

    def _records_for(self, txn: lmdb.Transaction[bytes], keys: list[bytes]) -> list[bytes]:
        return [raw for k in keys if (raw := txn.get(k, db=self._records)) is not None]

    async def get(self, client_id: str, transaction_id: str) -> TransactionRecord | None:
        key = codec.record_key(client_id, transaction_id)
        raw = await self._read(lambda txn: txn.get(key, db=self._records))
        return None if raw is None else codec.decode(raw)

    async def _find(self, db: Any, index_key: bytes) -> list[TransactionRecord]:
        def lookup(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            cur = txn.cursor(db=db)
            keys = list(cur.iternext_dup(keys=False)) if cur.set_key(index_key) else []
            return self._records_for(txn, keys)

        return [codec.decode(raw) for raw in await self._read(lookup)]

    async def find_by_rrn(self, rrn: str) -> list[TransactionRecord]:
        return await self._find(self._by_rrn, rrn.encode())

    async def find_by_terminal_stan(self, terminal_id: str, stan: str) -> list[TransactionRecord]:
        return await self._find(self._by_term_stan, codec.terminal_stan_key(terminal_id, stan))

    async def list_since(self, since: float, limit: int = 100) -> list[TransactionRecord]:
        """Records created at or after `since`, oldest first, at most `limit` (capped at 10,000)."""
        limit = max(0, min(limit, 10_000))

        def scan(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            cur = txn.cursor(db=self._by_created)
            keys: list[bytes] = []
            if cur.set_range(codec.time_key(since)):
                for tkey in cur.iternext(values=False):
                    if len(keys) >= limit:
                        break
                    keys.append(tkey[8:])
            return self._records_for(txn, keys)

        return [codec.decode(raw) for raw in await self._read(scan)]

    async def find_by_transaction_id(self, transaction_id: str, limit: int = 100) -> list[TransactionRecord]:
        """Every client's record with this transactionId (a key scan: for operators, not the hot path)."""
        suffix = b"\0" + transaction_id.encode()

        def scan(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            keys = [k for k in txn.cursor(db=self._records).iternext(values=False) if k.endswith(suffix)]
            return self._records_for(txn, keys[:limit])

        return [codec.decode(raw) for raw in await self._read(scan)]

    async def wait_completed(self, client_id: str, transaction_id: str) -> TransactionRecord:
        """Poll (2 ms doubling to 50 ms; woken at once by this process's own commits) until COMPLETED.

        Raises OwnerDied if the owner dies meanwhile (claim again: ORPHANED), KeyError if the record
        does not exist. Callers bound the wait with a cancel scope.
        """
        delay = WAIT_MIN
        while True:
            committed = self._committed
            rec = await self.get(client_id, transaction_id)
            if rec is None:
                raise KeyError("wait_completed: no such transaction")
            if rec.state is State.COMPLETED:
                return rec
            if not self.owner_alive(rec.owner):
                raise OwnerDied(f"owner {rec.owner} of the PENDING transaction died")
            with trio.move_on_after(delay):
                await committed.wait()
            delay = min(delay * 2, WAIT_MAX)

    def map_size(self) -> int:
        """The current map size in bytes (for metrics and tests)."""
        return int(self._env.info()["map_size"])

    def map_usage(self) -> tuple[int, int] | None:
        """(bytes of the map in use, store.max_map_size_mb in bytes): past the second, writes fail."""
        used = (int(self._env.info()["last_pgno"]) + 1) * int(self._env.stat()["psize"])
        return used, self._max_map


def _trim_events(rec: TransactionRecord) -> None:
    """Keep a timeline bounded (a record replayed forever): the first and the latest events survive."""
    half = codec.MAX_EVENTS // 2
    if len(rec.events) > codec.MAX_EVENTS:
        del rec.events[half : len(rec.events) - half]


if TYPE_CHECKING:
    _conforms: type[TransactionStore] = LmdbStore  # mypy checks LmdbStore against the Protocol
