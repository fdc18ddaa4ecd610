"""`TransactionStore` on PostgreSQL: the same states and guarantees as store/lmdb_store.py, across hosts.

  - claim: INSERT ... ON CONFLICT DO NOTHING on (client_id, transaction_id), committed durably
    (synchronous_commit = on) before NEW is returned, i.e. before the acquirer sees anything;
  - complete: one UPDATE guarded by `state = PENDING AND owner = us`, committed before the reply; it erases
    the sealed request (card data is only ever stored sealed with the hosts' key: never in clear in PG);
  - replays answer with the exact `response_body` bytes stored;
  - owners: on this host and boot /proc is authoritative (store/owner.py); owners elsewhere live while their
    heartbeat, stamped with the database's clock, is younger than `store.owner_timeout` (after an outage of
    ours, counted from when we reach the database again);
  - waiting for a duplicate in flight anywhere: LISTEN/NOTIFY (store/pg/listener.py) with a bounded poll;
  - STAN/RRN: blocks of store.ids.BLOCK from the `id_blocks` sequence, unique across hosts and restarts.
PostgreSQL groups concurrent commits into one WAL flush itself: there is no batching writer here.
Card keys and a REVERSAL's hold on its original: store/pg/keys.py (migration 0004).
The lease with its epoch fencing (issue 12) is not here yet: the `epoch` column is counted, not enforced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from .. import codec, ids, reversals
from ..housekeeping import run_housekeeping
from ..owner import OwnerId, current_owner_id, local_owner_alive
from ..types import (
    Claim,
    ClaimOutcome,
    Completion,
    Event,
    InvalidRecord,
    NotOwner,
    OwnerDied,
    State,
    TransactionRecord,
    TransactionStore,
)
from . import keys as pg_keys
from . import rows
from .database import Conn, Database, DatabaseUnavailable, connect_kwargs
from .listener import CompletionListener, key_of
from .settings import PgSettings

if TYPE_CHECKING:
    from ...config import Config, StoreConfig

log = structlog.get_logger(__name__)

PURGE_CHUNK = 1000
WAIT_MIN, WAIT_MAX = 0.005, 0.5  # wait_completed's fallback poll (notifications wake it at once)
_TEXT_COLUMNS = ("response_code", "outcome", "authorisation_code")


class PgStore:
    """One per worker process; `run` (in the app's nursery) opens the pool, listens, heartbeats and purges."""

    def __init__(
        self,
        settings: PgSettings,
        cfg: StoreConfig,
        *,
        owner_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner_id = owner_id or current_owner_id()
        self._cfg = cfg
        self._clock = clock
        self._db = Database(settings)
        self._listener = CompletionListener(settings.dsn, connect_kwargs(settings, "cloudlayer-listener"))
        self._abandoned: set[tuple[str, str]] = set()
        self._reversals: set[tuple[str, str]] = set()  # REVERSALs claimed or taken over here, still PENDING
        self._ids = ids.IdBlock()
        self._ids_lock = trio.Lock()
        self._ages: dict[str, float] = {}  # owner -> heartbeat age (s) at _ages_at (trio clock)
        self._ages_at = 0.0
        self._opened = False
        self._running = False
        self._ok = True
        self._failing_since = 0.0  # monotonic time of the first failed call of the current outage
        self._reachable_since: float | None = None  # monotonic time our calls succeeded again after failing
        self._outage = 0.0  # how long that outage lasted, as we saw it
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> PgStore:
        return cls(PgSettings.from_config(cfg), cfg.store, **kwargs)

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (run() does it; the CLI calls it alone for reads)."""
        if self._closed:
            raise RuntimeError("store is closed")
        if not self._opened:
            await self._db.open()
            self._opened = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("store already running")
        await self.open()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listener.run)
                await self.heartbeat()  # other hosts see us alive before our first claim
                nursery.start_soon(self._housekeeping)
                task_status.started()
        finally:
            self._running = False

    def map_usage(self) -> tuple[int, int] | None:
        return None  # PostgreSQL grows with its disk: watch that with the database's own monitoring

    def writable(self) -> bool:
        return self._running and self._ok and not self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    async def _call(self, fn: Callable[[Conn], Any]) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        if not self._opened:
            raise RuntimeError("store is not open: start run() (or open()) first")
        try:
            result = await self._db.call(fn)
        except DatabaseUnavailable:
            if self._ok:
                self._failing_since = time.monotonic()
            self._ok = False
            raise
        if not self._ok:
            self._reachable_since = time.monotonic()
            self._outage = self._reachable_since - self._failing_since
        self._ok = True
        return result

    # ---- owners ----------------------------------------------------------------------------------------

    def _alive(self, owner: str, age: float | None) -> bool:
        if owner == self.owner_id:
            return True
        oid = OwnerId.parse(owner)
        local = local_owner_alive(oid) if oid is not None else None
        if local is not None:
            return local
        if age is None:
            return False
        # While the database was down, no owner could beat, and after it each host's pool reconnects at its own
        # backoff (up to about the outage's length later): a stale heartbeat is no evidence until we have seen the
        # database for owner_timeout plus twice the outage, or every live host would look dead when it returns.
        if not self._ok:
            return True  # our last call failed: no heartbeat's age is evidence yet
        if age < self._cfg.owner_timeout:
            return True
        since = self._reachable_since
        return since is not None and time.monotonic() - since < self._cfg.owner_timeout + 2 * self._outage

    def owner_alive(self, owner: str) -> bool:
        """From the heartbeat ages last read (every owner_timeout/3); claims and waits read them fresh."""
        age = self._ages.get(owner)
        if age is not None:
            age += trio.current_time() - self._ages_at
        return self._alive(owner, age)

    def abandon(self, client_id: str, transaction_id: str) -> None:
        self._abandoned.add((client_id, transaction_id))

    async def heartbeat(self) -> None:
        ages: dict[str, float] = await self._call(lambda conn: rows.heartbeat(conn, self.owner_id))
        self._ages, self._ages_at = ages, trio.current_time()

    async def _housekeeping(self) -> None:
        await run_housekeeping(self, self._cfg, self._clock)

    # ---- writes ----------------------------------------------------------------------------------------

    async def next_ids(self) -> tuple[str, str]:
        seq = self._ids.take()
        if seq is None:
            async with self._ids_lock:
                seq = self._ids.take()
                if seq is None:
                    block: int = await self._call(rows.reserve_block)
                    self._ids.refill((block - 1) * ids.BLOCK + 1)
                    seq = self._ids.take()
        assert seq is not None
        return ids.stan_of(seq), ids.rrn_of(seq, self._clock())

    async def claim(self, record: TransactionRecord) -> Claim:
        rec = codec.validate_claim(record)
        rec.owner = self.owner_id
        rec.created_at = rec.created_at or self._clock()
        key = (rec.client_id, rec.transaction_id)

        is_reversal = reversals.is_reversal(rec)

        def do(conn: Conn) -> Claim:
            for _ in range(3):
                if is_reversal:
                    held = pg_keys.claim_reversal(conn, rec, rec.created_at)
                    if held is not None:
                        return held
                elif rows.insert_claim(conn, rec):  # one statement: the transactionId and the card key
                    return Claim(ClaimOutcome.NEW, rec)
                found = rows.find_claimed(conn, *key)
                if found is None:
                    duplicate = pg_keys.duplicate_card(conn, rec)
                    if duplicate is not None:
                        return duplicate
                    continue  # purged between the two statements: claim again
                existing, age = found
                if existing.fingerprint != rec.fingerprint:
                    return Claim(ClaimOutcome.CONFLICT, existing)
                if existing.state is State.COMPLETED:
                    return Claim(ClaimOutcome.REPLAY, existing)
                if key not in self._abandoned and self._alive(existing.owner, age):
                    return Claim(ClaimOutcome.IN_FLIGHT, existing)
                return Claim(ClaimOutcome.ORPHANED, existing)
            raise RuntimeError("claim: the record kept disappearing")

        try:
            result: Claim = await self._call(do)
        except DatabaseUnavailable:
            # The INSERT may have committed before the connection failed: if it did, the record is PENDING under
            # our live owner id and nobody would finish it; counted as abandoned, a resubmission here recovers it.
            self._abandoned.add(key)
            raise
        if result.outcome is ClaimOutcome.NEW:
            self._abandoned.discard(key)  # ours and live from now on, whatever an earlier failed attempt left
            if is_reversal:
                self._reversals.add(key)
        return result

    async def complete(self, client_id: str, transaction_id: str, completion: Completion) -> TransactionRecord:
        c = codec.validate_completion(completion)
        for name in _TEXT_COLUMNS:
            if "\0" in (getattr(c, name) or ""):
                raise InvalidRecord(f"{name}: must not contain NUL")
        now = self._clock()
        key = (client_id, transaction_id)
        # A REVERSAL this worker claimed or took over settles its original in the same transaction; any other
        # completion stays one statement (the hot path).
        complete = pg_keys.complete_reversal if key in self._reversals else rows.complete
        done: TransactionRecord | None = await self._call(
            lambda conn: complete(conn, client_id, transaction_id, self.owner_id, c, now)
        )
        if done is None:
            raise NotOwner("complete: transaction missing, already completed, or PENDING under another owner")
        self._reversals.discard(key)
        if reversals.is_reversal(done) and complete is rows.complete:  # not expected: settle it now, apart
            log.warning("store_reversal_settled_apart", transaction_id=transaction_id)
            await self._call(lambda conn: pg_keys.settle_original(conn, done, now))
        self._abandoned.discard(key)
        self._listener.wake(key_of(client_id, transaction_id))  # local waiters need not wait for the NOTIFY
        return done

    async def add_events(self, client_id: str, transaction_id: str, *events: Event, replay: bool = False) -> None:
        checked = codec.validate_events(events)
        found: bool = await self._call(lambda conn: rows.add_events(conn, client_id, transaction_id, checked, replay))
        if not found:
            log.warning("store_events_unknown_transaction", events=len(checked))

    async def take_over(self, client_id: str, transaction_id: str, dead_owner: str) -> TransactionRecord | None:
        key = (client_id, transaction_id)
        event = Event(self._clock(), "taken-over", f"from {dead_owner}")

        def do(conn: Conn) -> TransactionRecord | None:
            if key not in self._abandoned and self._alive(dead_owner, rows.heartbeat_age(conn, dead_owner)):
                return None
            return rows.take_over(conn, client_id, transaction_id, dead_owner, self.owner_id, event)

        rec: TransactionRecord | None = await self._call(do)
        if rec is not None:
            self._abandoned.discard(key)
            if reversals.is_reversal(rec):
                self._reversals.add(key)
        return rec

    async def purge(self, older_than: float) -> int:
        stale = max(self._cfg.owner_timeout * 100, 86_400.0)
        total = 0
        while True:
            n: int = await self._call(lambda conn: rows.purge(conn, older_than, PURGE_CHUNK, stale))
            total += n
            if n < PURGE_CHUNK:
                return total

    # ---- reads -----------------------------------------------------------------------------------------

    async def get(self, client_id: str, transaction_id: str) -> TransactionRecord | None:
        found = await self._call(lambda conn: rows.find_claimed(conn, client_id, transaction_id))
        return None if found is None else found[0]

    async def _select(self, by: str, params: tuple[Any, ...], limit: int = 10_000) -> list[TransactionRecord]:
        found: list[TransactionRecord] = await self._call(lambda conn: rows.select(conn, by, params, limit))
        return found

    async def find_by_rrn(self, rrn: str) -> list[TransactionRecord]:
        return await self._select("rrn", (rrn,))

    async def find_by_terminal_stan(self, terminal_id: str, stan: str) -> list[TransactionRecord]:
        return await self._select("terminal_stan", (terminal_id, stan))

    async def list_since(self, since: float, limit: int = 100) -> list[TransactionRecord]:
        """Records created at or after `since`, oldest first, at most `limit` (capped at 10,000)."""
        return await self._select("created_since", (since,), max(0, min(limit, 10_000)))

    async def find_by_transaction_id(self, transaction_id: str, limit: int = 100) -> list[TransactionRecord]:
        """Every client's record with this transactionId (operators' look-up)."""
        return await self._select("transaction_id", (transaction_id,), max(0, min(limit, 10_000)))

    async def wait_completed(self, client_id: str, transaction_id: str) -> TransactionRecord:
        """Until COMPLETED by any host: woken by the completion NOTIFY, polling at most every WAIT_MAX.
        OwnerDied if the owner dies meanwhile, KeyError if there is no such record. Callers bound it."""
        key = key_of(client_id, transaction_id)
        delay = WAIT_MIN
        while True:
            woken = self._listener.event_for(key)
            found: tuple[TransactionRecord, float | None] | None = await self._call(
                lambda conn: rows.find_claimed(conn, client_id, transaction_id)
            )
            if found is None:
                raise KeyError("wait_completed: no such transaction")
            rec, age = found
            if rec.state is State.COMPLETED:
                return rec
            if not self._alive(rec.owner, age):
                raise OwnerDied(f"owner {rec.owner} of the PENDING transaction died")
            with trio.move_on_after(delay):
                await woken.wait()
            delay = min(delay * 2, WAIT_MAX)


if TYPE_CHECKING:
    _conforms: type[TransactionStore] = PgStore  # mypy checks PgStore against the Protocol
