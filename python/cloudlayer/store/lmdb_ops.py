"""The LMDB store's write ops, each applied inside the writer's transaction (lmdb_writer.py): every decision, the
claim outcome above all, is taken there. Also the owner-liveness rule, which reads and writes share."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import lmdb
import structlog

from ..config import StoreConfig
from . import codec, ids, lmdb_keys
from .lmdb_writer import Op
from .owner import OwnerId, local_owner_alive
from .types import Claim, ClaimOutcome, Completion, Event, NotOwner, State, TransactionRecord

log = structlog.get_logger(__name__)

PURGE_CHUNK = 200  # at most this many records deleted per write transaction...
PURGE_BUDGET = 0.005  # ...or this many seconds of deleting, whichever comes first: a waiting claim's worst case
_HB = b"hb:"
_F64 = struct.Struct(">d")


class Dbs:
    """Every named database of the environment (the layout is in lmdb_store.py)."""

    def __init__(self, env: lmdb.Environment) -> None:
        with env.begin(write=True) as txn:
            self.records = env.open_db(b"records", txn=txn)
            self.by_rrn = env.open_db(b"by_rrn", txn=txn, dupsort=True)
            self.by_term_stan = env.open_db(b"by_term_stan", txn=txn, dupsort=True)
            self.by_created = env.open_db(b"by_created", txn=txn)
            self.by_completed = env.open_db(b"by_completed", txn=txn)
            self.meta = env.open_db(b"meta", txn=txn)
            self.by_card = env.open_db(b"by_card", txn=txn)
        self.keys = lmdb_keys.Dbs(self.records, self.by_card)


class Ops:
    def __init__(self, dbs: Dbs, cfg: StoreConfig, owner_id: str, clock: Callable[[], float]) -> None:
        self.dbs = dbs
        self._cfg = cfg
        self.owner_id = owner_id
        self._clock = clock
        # PENDING keys this process gave up on (abandon): treated as orphaned although we are alive.
        self.abandoned: set[bytes] = set()

    def apply(self, txn: lmdb.Transaction[bytes], op: Op) -> Any:
        now = self._clock()
        match op.kind:
            case "claim":
                return self._claim(txn, op.args[0], now)
            case "complete":
                return self._complete(txn, op.args[0], op.args[1], now)
            case "events":
                return self._events(txn, op.args[0], op.args[1], op.args[2])
            case "take_over":
                return self._take_over(txn, op.args[0], op.args[1], now)
            case "reserve":
                start = ids.unpack_seq(txn.get(ids.SEQ_KEY, db=self.dbs.meta))
                txn.put(ids.SEQ_KEY, ids.pack_seq(start + op.args[0]), db=self.dbs.meta)
                return start
            case "purge":
                return self._purge(txn, op.args[0], now)
            case "heartbeat":
                txn.put(_HB + self.owner_id.encode(), _F64.pack(now), db=self.dbs.meta)
                return None
            case "adopt":
                return None
        raise AssertionError(op.kind)

    def _claim(self, txn: lmdb.Transaction[bytes], rec: TransactionRecord, now: float) -> Claim:
        d = self.dbs
        key = codec.record_key(rec.client_id, rec.transaction_id)
        raw = txn.get(key, db=d.records)
        if raw is None:
            refused = lmdb_keys.refuse_or_hold(txn, d.keys, key, rec, now)
            if refused is not None:
                return refused
            rec.owner = self.owner_id
            rec.created_at = rec.created_at or now
            txn.put(key, codec.encode(rec), db=d.records)
            if rec.rrn:
                txn.put(rec.rrn.encode(), key, db=d.by_rrn)
            if rec.terminal_id and rec.stan:
                txn.put(codec.terminal_stan_key(rec.terminal_id, rec.stan), key, db=d.by_term_stan)
            txn.put(codec.time_key(rec.created_at, key), b"", db=d.by_created)
            return Claim(ClaimOutcome.NEW, rec)
        existing = codec.decode(raw)
        if existing.fingerprint != rec.fingerprint:
            return Claim(ClaimOutcome.CONFLICT, existing)
        if existing.state is State.COMPLETED:
            return Claim(ClaimOutcome.REPLAY, existing)
        if key not in self.abandoned and self.owner_alive(existing.owner, txn, now):
            return Claim(ClaimOutcome.IN_FLIGHT, existing)
        return Claim(ClaimOutcome.ORPHANED, existing)

    def _complete(self, txn: lmdb.Transaction[bytes], key: bytes, c: Completion, now: float) -> TransactionRecord:
        raw = txn.get(key, db=self.dbs.records)
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
        trim_events(rec)
        txn.put(key, codec.encode(rec), db=self.dbs.records)
        txn.put(codec.time_key(now, key), b"", db=self.dbs.by_completed)
        lmdb_keys.settle_original(txn, self.dbs.keys, rec, now)  # a REVERSAL's original: same commit
        return rec

    def _events(self, txn: lmdb.Transaction[bytes], key: bytes, events: list[Event], replays: int) -> None:
        raw = txn.get(key, db=self.dbs.records)
        if raw is None:
            log.warning("store_events_unknown_transaction", events=len(events))
            return
        rec = codec.decode(raw)
        rec.events.extend(events)
        trim_events(rec)
        rec.replays += replays
        txn.put(key, codec.encode(rec), db=self.dbs.records)

    def _take_over(
        self, txn: lmdb.Transaction[bytes], key: bytes, dead_owner: str, now: float
    ) -> TransactionRecord | None:
        raw = txn.get(key, db=self.dbs.records)
        if raw is None:
            return None
        rec = codec.decode(raw)
        alive = key not in self.abandoned and self.owner_alive(dead_owner, txn, now)
        if rec.state is not State.PENDING or rec.owner != dead_owner or alive:
            return None  # someone else took it over first, it completed, or the owner is alive after all
        self.abandoned.discard(key)
        rec.owner = self.owner_id
        rec.events.append(Event(now, "taken-over", f"from {dead_owner}"))
        trim_events(rec)
        txn.put(key, codec.encode(rec), db=self.dbs.records)
        return rec

    def _purge(self, txn: lmdb.Transaction[bytes], older_than: float, now: float) -> tuple[int, bool]:
        """One chunk: (records deleted, whether none older than the cutoff is left)."""
        d = self.dbs
        deleted = 0
        deadline = time.monotonic() + PURGE_BUDGET
        cur = txn.cursor(db=d.by_completed)
        cutoff = codec.time_key(older_than)
        while cur.first() and cur.key() < cutoff:
            if deleted >= PURGE_CHUNK or time.monotonic() > deadline:
                return deleted, False
            key = cur.key()[8:]
            raw = txn.get(key, db=d.records)
            if raw is not None:
                rec = codec.decode(raw)
                if rec.state is State.COMPLETED:
                    self._delete_record(txn, key, rec)
                    deleted += 1
            cur.delete()
        # Heartbeats of workers long gone (once per purge, with its last chunk).
        stale = _F64.pack(now - max(self._cfg.owner_timeout * 100, 86_400.0))
        hb = txn.cursor(db=d.meta)
        more = hb.set_range(_HB)
        while more and hb.key().startswith(_HB):
            # Big-endian doubles of positive times sort like the times; delete() moves to the next entry.
            more = hb.delete() if hb.value() < stale else hb.next()
        return deleted, True

    def _delete_record(self, txn: lmdb.Transaction[bytes], key: bytes, rec: TransactionRecord) -> None:
        d = self.dbs
        txn.delete(key, db=d.records)
        if rec.rrn:
            txn.delete(rec.rrn.encode(), key, db=d.by_rrn)
        if rec.terminal_id and rec.stan:
            txn.delete(codec.terminal_stan_key(rec.terminal_id, rec.stan), key, db=d.by_term_stan)
        txn.delete(codec.time_key(rec.created_at, key), db=d.by_created)
        lmdb_keys.forget_card_key(txn, d.keys, key, rec)

    def owner_alive(self, owner: str, txn: lmdb.Transaction[bytes], now: float) -> bool:
        if owner == self.owner_id:
            return True
        oid = OwnerId.parse(owner)
        local = local_owner_alive(oid) if oid is not None else None
        if local is not None:
            return local
        # Not visible from this host: alive while its heartbeat is fresh.
        hb = txn.get(_HB + owner.encode(), db=self.dbs.meta)
        return hb is not None and now - _F64.unpack(hb)[0] < self._cfg.owner_timeout


def trim_events(rec: TransactionRecord) -> None:
    """Keep a timeline bounded (a record replayed forever): the first and the latest events survive."""
    half = codec.MAX_EVENTS // 2
    if len(rec.events) > codec.MAX_EVENTS:
        del rec.events[half : len(rec.events) - half]
