"""`TransactionStore` on PostgreSQL: the same states and guarantees as store/lmdb_store.py, across hosts.

  - claim: INSERT ... ON CONFLICT DO NOTHING on (client_id, transaction_id), committed durably
    (synchronous_commit = on) before NEW is returned, i.e. before the acquirer sees anything;
  - complete: one UPDATE guarded by `state = PENDING AND owner = us AND epoch = ours` and our live lease,
    committed before the reply; it erases the sealed request (card data is only ever stored sealed with the
    hosts' key: never in clear in PG);
  - replays answer with the exact `response_body` bytes stored;
  - owners: each holds a lease by the database's clock (store/pg/lease.py, migration 0006), renewed every
    store.lease_renew and never revived once expired; an owner lives while its lease does (on this host and
    boot, /proc saying it is gone settles it sooner: store/owner.py). The lease's local bound is the send
    guard connectors check before every acquirer write; a lost lease is final (`on_lease_lost` restarts);
  - take-over: one UPDATE, epoch + 1; the taker then waits for the dead lease's end + acquirer.timeout before
    it recovers, so that whatever the old owner sent has landed; complete is fenced by owner, epoch and a live
    lease (LeaseLost otherwise);
  - waiting for a duplicate in flight anywhere: LISTEN/NOTIFY (store/pg/listener.py) with a bounded poll; the
    waiter marks the row, and only a marked row's completion notifies, after its commit (migration 0007);
  - STAN/RRN: blocks of store.ids.BLOCK from the `id_blocks` sequence, unique across hosts and restarts.
Claims and completions go through one batching thread per worker (store/pg/pipeline.py, psycopg pipeline mode:
one round trip and one commit per batch; `store.postgres_pipeline = false`: the pool, one statement a hop).
Card keys and a REVERSAL's hold on its original: store/pg/keys.py (migration 0004).
Why this makes a paused host harmless, and the residual risk: docs/postgres.md "Leases and fencing".
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
    LeaseLost,
    NotOwner,
    OwnerDied,
    SendGuard,
    State,
    TransactionRecord,
    TransactionStore,
)
from . import keys as pg_keys
from . import rows
from .database import Conn, Database, DatabaseUnavailable, connect_kwargs
from .lease import Lease, fence_wait, lease_left
from .listener import CompletionListener, key_of
from .ops import Op
from .pipeline import Pipeline
from .settings import PgSettings

if TYPE_CHECKING:
    from ...config import Config, StoreConfig

log = structlog.get_logger(__name__)

PURGE_CHUNK = 1000
WAIT_MIN, WAIT_MAX = 0.005, 0.5  # wait_completed's fallback poll (notifications wake it at once)
_TEXT_COLUMNS = ("response_code", "outcome", "authorisation_code")


class LeaseGone(DatabaseUnavailable):
    """This worker's lease ran out: it claims nothing more (503, retry: another worker or host serves it)."""


class PgStore:
    """One per worker process; `run` (in the app's nursery) opens the pool, listens, renews its lease and
    purges."""

    def __init__(
        self,
        settings: PgSettings,
        cfg: StoreConfig,
        *,
        owner_id: str | None = None,
        clock: Callable[[], float] = time.time,
        send_window: float = 10.0,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        self.owner_id = owner_id or current_owner_id()
        self._cfg = cfg
        self._clock = clock
        # acquirer.timeout: the lease's local margin, and how long past a dead lease a taker waits.
        self._send_window = send_window
        self._lease = Lease(self.owner_id, ttl=cfg.lease_ttl, margin=min(send_window, cfg.lease_ttl / 2))
        self.send_guard: SendGuard = self._lease
        self._on_lease_lost = on_lease_lost
        self._epochs: dict[tuple[str, str], int] = {}  # claims taken over here (epoch > 0), still PENDING
        self._db = Database(settings)
        self._pipe = Pipeline(settings) if settings.pipeline else None
        self._listener = CompletionListener(settings.dsn, connect_kwargs(settings, "cloudlayer-listener"))
        self._abandoned: set[tuple[str, str]] = set()
        self._reversals: set[tuple[str, str]] = set()  # REVERSALs claimed or taken over here, still PENDING
        self._ids = ids.IdBlock()
        self._ids_lock = trio.Lock()
        self._leases: dict[str, float] = {}  # owner -> seconds left on its lease at _leases_at (trio clock)
        self._leases_at = 0.0
        self._opened = False
        self._running = False
        self._ok = True
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> PgStore:
        return cls(PgSettings.from_config(cfg), cfg.store, send_window=cfg.acquirer.timeout, **kwargs)

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
                await self.heartbeat()  # our lease exists before our first claim
                if self._lease.lost:
                    raise LeaseGone("store: this owner id's lease had already expired")
                nursery.start_soon(self._housekeeping)
                task_status.started()
        finally:
            self._running = False

    def map_usage(self) -> tuple[int, int] | None:
        return None  # PostgreSQL grows with its disk: watch that with the database's own monitoring

    def writable(self) -> bool:
        return self._running and self._ok and not self._closed and not self._lease.lost

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pipe is not None:
                self._pipe.close()
            self._db.close()

    async def _call(self, fn: Callable[[Conn], Any]) -> Any:
        return await self._db_call(self._db.call, fn)

    async def _run(self, op: Op[Any]) -> Any:
        """One statement of the hot path: batched by the pipeline thread, or on the pool without it."""
        if self._pipe is None:
            return await self._call(op.run)
        return await self._db_call(self._pipe.run, op)

    async def _db_call(self, call: Callable[[Any], Any], arg: Any) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        if not self._opened:
            raise RuntimeError("store is not open: start run() (or open()) first")
        try:
            result = await call(arg)
        except DatabaseUnavailable:
            self._ok = False
            raise
        self._ok = True
        return result

    # ---- owners ----------------------------------------------------------------------------------------

    def _alive(self, owner: str, left: float | None) -> bool:
        """Alive while its lease is, by the database's clock (`left`: seconds left). On this host /proc can only
        shorten that: a process that is gone holds nothing, but one that lives (maybe SIGSTOPped) may have
        lost its lease."""
        if owner == self.owner_id:
            return not self._lease.lost
        oid = OwnerId.parse(owner)
        if oid is not None and local_owner_alive(oid) is False:
            return False
        return left is not None and left > 0

    def owner_alive(self, owner: str) -> bool:
        """From the leases last read (every lease_renew); claims and waits read them fresh."""
        left = self._leases.get(owner)
        if left is not None:
            left -= trio.current_time() - self._leases_at
        return self._alive(owner, left)

    def abandon(self, client_id: str, transaction_id: str) -> None:
        self._abandoned.add((client_id, transaction_id))
        self._epochs.pop((client_id, transaction_id), None)

    async def heartbeat(self) -> None:
        """Renew the lease (store/pg/lease.py). Past the local bound, or refused by the database, it is lost."""
        if self._lease.lost:
            return
        if self._lease.expired_locally():  # e.g. SIGSTOPped past it: the guard has closed, give the id up
            await self._lose("the local lease bound passed before a renewal")
            return
        held, leases = await self._call(self._lease.renew)
        self._leases, self._leases_at = leases, trio.current_time()
        if not held and not self._lease.lost:  # a concurrent heartbeat (the renewal loop's) may have lost it first
            await self._lose("the database found the lease expired")

    async def _lose(self, why: str) -> None:
        log.error("store_lease_lost", owner=self.owner_id, reason=why)
        self._lease.give_up(None)  # the guard closes first, whatever the database does next
        while True:  # end it now in the database (takers need not wait it out), and know the database is back
            try:
                await self._call(self._lease.give_up)
                break
            except DatabaseUnavailable:
                # The lease runs out by itself meanwhile. Restarting now would only fail to start (no database):
                # stay, refusing everything with 503, until the database answers again.
                await trio.sleep(self._cfg.lease_renew)
        if self._on_lease_lost is not None:
            # In-flight requests answer first (their sends are refused, their completions fenced).
            await trio.sleep(self._send_window + 1.0)
            self._on_lease_lost()

    async def _housekeeping(self) -> None:
        await run_housekeeping(self, self._cfg, self._clock, beat=self._cfg.lease_renew)

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
        if self._lease.lost:
            raise LeaseGone("store: this worker's lease ran out; it is restarting")
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
                existing, left = found
                if existing.fingerprint != rec.fingerprint:
                    return Claim(ClaimOutcome.CONFLICT, existing)
                if existing.state is State.COMPLETED:
                    return Claim(ClaimOutcome.REPLAY, existing)
                # Abandoned counts only for a claim still under our own id: a key this worker once gave up may
                # since have been claimed by another host, whose live claim must not be taken over unawaited.
                ours_given_up = key in self._abandoned and existing.owner == self.owner_id
                if not ours_given_up and self._alive(existing.owner, left):
                    return Claim(ClaimOutcome.IN_FLIGHT, existing)
                return Claim(ClaimOutcome.ORPHANED, existing)
            raise RuntimeError("claim: the record kept disappearing")

        try:
            # The hot path first: one INSERT, batched with other requests' (store/pg/pipeline.py); a duplicate,
            # a REVERSAL or a card key already claimed then goes the pool path, the INSERT again a no-op.
            if not is_reversal and await self._run(rows.claim_op(rec)):
                result = Claim(ClaimOutcome.NEW, rec)
            else:
                result = await self._call(do)
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
        epoch = self._epochs.get(key, 0)
        done: TransactionRecord | None
        if complete is rows.complete:  # batched; its NOTIFY (if awaited) after the batch commits
            done, _ = await self._run(rows.complete_op(client_id, transaction_id, self.owner_id, epoch, c, now))
        else:
            owner = self.owner_id
            done = await self._call(lambda conn: complete(conn, client_id, transaction_id, owner, epoch, c, now))
        if done is None:
            await self._refused(client_id, transaction_id)
        assert done is not None
        self._reversals.discard(key)
        self._epochs.pop(key, None)
        if reversals.is_reversal(done) and complete is rows.complete:  # not expected: settle it now, apart
            log.warning("store_reversal_settled_apart", transaction_id=transaction_id)
            await self._call(lambda conn: pg_keys.settle_original(conn, done, now))
        self._abandoned.discard(key)
        self._listener.wake(key_of(client_id, transaction_id))  # local waiters need not wait for the NOTIFY
        return done

    async def _refused(self, client_id: str, transaction_id: str) -> None:
        """Why complete() found nothing to update: NotOwner, or LeaseLost when another owner (or epoch) has it
        or our lease ran out."""
        current = await self.get(client_id, transaction_id)
        if current is None:
            raise NotOwner("complete: no such transaction")
        if current.state is State.COMPLETED and current.owner == self.owner_id:
            raise NotOwner("complete: already completed")
        log.error("store_completion_fenced", transaction_id=transaction_id, state=current.state.value)
        raise LeaseLost("complete: fenced (taken over by another owner, or this owner's lease ran out)")

    async def add_events(self, client_id: str, transaction_id: str, *events: Event, replays: int = 0) -> None:
        checked = codec.validate_events(events)
        found: bool = await self._call(lambda conn: rows.add_events(conn, client_id, transaction_id, checked, replays))
        if not found:
            log.warning("store_events_unknown_transaction", events=len(checked))

    async def take_over(self, client_id: str, transaction_id: str, dead_owner: str) -> TransactionRecord | None:
        key = (client_id, transaction_id)
        event = Event(self._clock(), "taken-over", f"from {dead_owner}")

        abandoned_here = key in self._abandoned and dead_owner == self.owner_id  # only our own gives no fence wait

        def do(conn: Conn) -> tuple[TransactionRecord, int, float | None] | None:
            if not abandoned_here and self._alive(dead_owner, lease_left(conn, dead_owner)):
                return None
            return rows.take_over(conn, client_id, transaction_id, dead_owner, self.owner_id, event)

        if self._lease.lost:
            raise LeaseGone("store: this worker's lease ran out; it is restarting")
        taken: tuple[TransactionRecord, int, float | None] | None = await self._call(do)
        if taken is None:
            return None
        rec, epoch, dead_left = taken
        self._abandoned.discard(key)
        self._epochs[key] = epoch
        if reversals.is_reversal(rec):
            self._reversals.add(key)
        oid = OwnerId.parse(dead_owner)
        gone = abandoned_here or (oid is not None and local_owner_alive(oid) is False)
        # A process that is gone (or our own, given up) sends nothing more; a lease that ran out may belong to a
        # paused owner whose last send is still on its way: let it land before the inquiry.
        wait = 0.0 if gone else fence_wait(dead_left, self._send_window)
        if wait > 0:
            log.warning("take_over_fence_wait", transaction_id=transaction_id, seconds=round(wait, 3))
            await trio.sleep(wait)
        return rec

    async def purge(self, older_than: float) -> int:
        stale = max(self._cfg.lease_ttl * 100, 86_400.0)
        total = 0
        while True:
            n: int = await self._call(lambda conn: rows.purge(conn, older_than, PURGE_CHUNK, stale))
            total += n
            if n < PURGE_CHUNK:
                return total

    # ---- reads -----------------------------------------------------------------------------------------

    async def get(self, client_id: str, transaction_id: str) -> TransactionRecord | None:
        # Every request's first read (a resubmission's fast path): batched with the hot path's writes.
        found = await self._run(rows.find_claimed_op(client_id, transaction_id))
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
        marked = False  # the first read marks the row: its completion notifies (migration 0007)
        while True:
            woken = self._listener.event_for(key)
            read = rows.find_claimed if marked else rows.find_awaited
            found: tuple[TransactionRecord, float | None] | None = await self._call(
                lambda conn: read(conn, client_id, transaction_id)  # noqa: B023 - awaited in this iteration
            )
            marked = True
            if found is None:
                raise KeyError("wait_completed: no such transaction")
            rec, left = found
            if rec.state is State.COMPLETED:
                return rec
            if not self._alive(rec.owner, left):
                raise OwnerDied(f"owner {rec.owner} of the PENDING transaction died")
            with trio.move_on_after(delay):
                await woken.wait()
            delay = min(delay * 2, WAIT_MAX)


if TYPE_CHECKING:
    _conforms: type[TransactionStore] = PgStore  # mypy checks PgStore against the Protocol
