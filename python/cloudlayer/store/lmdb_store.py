"""The embedded transaction store: LMDB, one group-commit writer per worker process.

Writes (claim, complete, add_events, take_over, id-block reservation, purge, heartbeat) are queued to
the single group-commit writer started by `run` (lmdb_writer.py): ONE durable LMDB write transaction per
batch, every decision (the claim outcome above all) taken inside it by lmdb_ops.py. LMDB serialises write
transactions across every process that opens the environment, so a claim is atomic across Hypercorn workers
as well as tasks. A retention purge runs in small time-boxed chunks that never share a transaction with
traffic and wait while traffic is queued (lmdb_writer.py, lmdb_ops.PURGE_CHUNK / PURGE_BUDGET).

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

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import structlog
import trio

from ..config import Config, StoreConfig
from . import codec, ids
from .housekeeping import run_housekeeping
from .lmdb_ops import Dbs, Ops
from .lmdb_writer import MB, GroupWriter, Op
from .owner import current_owner_id
from .types import (
    ALWAYS_SEND,
    Claim,
    Completion,
    Event,
    OwnerDied,
    SendGuard,
    State,
    TransactionRecord,
    TransactionStore,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
WAIT_MIN, WAIT_MAX = 0.002, 0.05  # wait_completed polling backoff


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
        self._dbs = Dbs(self._env)
        self._ops = Ops(self._dbs, cfg, self.owner_id, clock)
        self._resize_lock = threading.Lock()
        self._writer = GroupWriter(
            self._env,
            self.path,
            group_commit_max=cfg.group_commit_max,
            max_map=self._max_map,
            apply=self._ops.apply,
            resize_lock=self._resize_lock,
        )
        self._ids = ids.IdBlock()
        self._ids_lock = trio.Lock()
        self._running = False
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> LmdbStore:
        return cls(cfg.var_path(cfg.store.path), cfg.store, **kwargs)

    @property
    def commits(self) -> int:
        """Write transactions committed (for metrics: committed_ops / commits = mean batch)."""
        return self._writer.commits

    @property
    def committed_ops(self) -> int:
        return self._writer.committed_ops

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("store writer already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                nursery.start_soon(self._housekeeping)
                task_status.started()
        finally:
            self._running = False

    def writable(self) -> bool:
        return self._running and self._writer.commit_ok and not self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    async def _submit(self, op: Op) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._writer.submit(op)

    # ---- owners ------------------------------------------------------------------------------------

    def abandon(self, client_id: str, transaction_id: str) -> None:
        """This process gave up on a PENDING it owns (an error after the claim): from now on it counts as
        orphaned, so the next resubmission recovers it instead of waiting on a live owner that never finishes."""
        self._ops.abandoned.add(codec.record_key(client_id, transaction_id))

    def owner_alive(self, owner: str) -> bool:
        try:
            with self._resize_lock, self._env.begin() as txn:
                return self._ops.owner_alive(owner, txn, self._clock())
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
                    self._ids.refill(await self._submit(Op("reserve", ids.BLOCK)))
                    seq = self._ids.take()
        assert seq is not None
        return ids.stan_of(seq), ids.rrn_of(seq, self._clock())

    async def claim(self, record: TransactionRecord) -> Claim:
        checked = codec.validate_claim(record)
        result: Claim = await self._submit(Op("claim", checked))
        return result

    async def complete(self, client_id: str, transaction_id: str, completion: Completion) -> TransactionRecord:
        c = codec.validate_completion(completion)
        rec: TransactionRecord = await self._submit(Op("complete", codec.record_key(client_id, transaction_id), c))
        return rec

    async def add_events(self, client_id: str, transaction_id: str, *events: Event, replays: int = 0) -> None:
        checked = codec.validate_events(events)
        await self._submit(Op("events", codec.record_key(client_id, transaction_id), checked, max(0, replays)))

    async def take_over(self, client_id: str, transaction_id: str, dead_owner: str) -> TransactionRecord | None:
        rec: TransactionRecord | None = await self._submit(
            Op("take_over", codec.record_key(client_id, transaction_id), dead_owner)
        )
        return rec

    async def heartbeat(self) -> None:
        """Record that this owner lives (run() does it every owner_timeout/3): how other hosts see us."""
        await self._submit(Op("heartbeat"))

    async def purge(self, older_than: float) -> int:
        """Delete COMPLETED records answered before `older_than`, one small background chunk at a time."""
        total = 0
        done = False
        while not done:
            n, done = await self._submit(Op("purge", older_than, background=True))
            total += n
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
                    await self._submit(Op("adopt"))
                else:
                    self._writer.adopt_map_size()
        raise RuntimeError("transaction store map keeps resizing")

    def _records_for(self, txn: lmdb.Transaction[bytes], keys: list[bytes]) -> list[bytes]:
        return [raw for k in keys if (raw := txn.get(k, db=self._dbs.records)) is not None]

    async def get(self, client_id: str, transaction_id: str) -> TransactionRecord | None:
        key = codec.record_key(client_id, transaction_id)
        raw = await self._read(lambda txn: txn.get(key, db=self._dbs.records))
        return None if raw is None else codec.decode(raw)

    async def _find(self, db: Any, index_key: bytes) -> list[TransactionRecord]:
        def lookup(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            cur = txn.cursor(db=db)
            keys = list(cur.iternext_dup(keys=False)) if cur.set_key(index_key) else []
            return self._records_for(txn, keys)

        return [codec.decode(raw) for raw in await self._read(lookup)]

    async def find_by_rrn(self, rrn: str) -> list[TransactionRecord]:
        return await self._find(self._dbs.by_rrn, rrn.encode())

    async def find_by_terminal_stan(self, terminal_id: str, stan: str) -> list[TransactionRecord]:
        return await self._find(self._dbs.by_term_stan, codec.terminal_stan_key(terminal_id, stan))

    async def list_since(self, since: float, limit: int = 100) -> list[TransactionRecord]:
        """Records created at or after `since`, oldest first, at most `limit` (capped at 10,000)."""
        limit = max(0, min(limit, 10_000))

        def scan(txn: lmdb.Transaction[bytes]) -> list[bytes]:
            cur = txn.cursor(db=self._dbs.by_created)
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
            keys = [k for k in txn.cursor(db=self._dbs.records).iternext(values=False) if k.endswith(suffix)]
            return self._records_for(txn, keys[:limit])

        return [codec.decode(raw) for raw in await self._read(scan)]

    async def wait_completed(self, client_id: str, transaction_id: str) -> TransactionRecord:
        """Poll (2 ms doubling to 50 ms; woken at once by this process's own commits) until COMPLETED.

        Raises OwnerDied if the owner dies meanwhile (claim again: ORPHANED), KeyError if the record
        does not exist. Callers bound the wait with a cancel scope.
        """
        delay = WAIT_MIN
        while True:
            committed = self._writer.committed
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

    def record_count(self) -> int:
        """Records in the store, PENDING and COMPLETED (for metrics and tests)."""
        with self._resize_lock, self._env.begin() as txn:
            return int(txn.stat(self._dbs.records)["entries"])

    def map_size(self) -> int:
        """The current map size in bytes (for metrics and tests)."""
        return int(self._env.info()["map_size"])

    def map_usage(self) -> tuple[int, int] | None:
        """(bytes of the map in use, store.max_map_size_mb in bytes): past the second, writes fail."""
        used = (int(self._env.info()["last_pgno"]) + 1) * int(self._env.stat()["psize"])
        return used, self._max_map


if TYPE_CHECKING:
    _conforms: type[TransactionStore] = LmdbStore  # mypy checks LmdbStore against the Protocol
