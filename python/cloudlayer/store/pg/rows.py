"""The SQL of the PostgreSQL store and the mapping between its rows and TransactionRecord.

Each function takes a connection (autocommit: one statement is one transaction, one round trip) and runs in a
worker thread (store/pg/database.py). The claim is an INSERT ... ON CONFLICT DO NOTHING on the primary key
(client_id, transaction_id): PostgreSQL makes a concurrent second insert of the same key wait for the first
to commit or roll back, so exactly one claimer sees NEW, on every host. `ON CONFLICT` names no constraint on
purpose: a second unique key (e.g. one per card for issue 16) is one more unique index, and a claim that hits
it finds no row under its own key (`find_claimed` returns None) and can look it up by that key instead.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
import structlog
from psycopg.pq import TransactionStatus

from .. import codec
from ..types import Completion, Event, State, TransactionRecord
from .database import Conn, Cursor
from .listener import CHANNEL, key_of
from .ops import Op

log = structlog.get_logger(__name__)
_event_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)

# Columns that rebuild a TransactionRecord (to_record), in this order.
COLUMNS = (
    "t.state, t.owner, t.completed_at, t.sealed_request, t.response_status, t.response_body, t.response_code,"
    " t.approved, t.authorisation_code, t.outcome, t.replays, t.events, t.record, t.reversed_by"
)
N_COLUMNS = 14
_PK = "t.client_id = %s AND t.transaction_id = %s"
# Statements interpolate only these module constants (S608 is off for this file); every value is a bound parameter.
# Seconds left on the record owner's lease by the database's clock (<= 0 expired, NULL no such owner).
_LEASE_LEFT = "(SELECT extract(epoch FROM o.lease_until - now())::float8 FROM owners o WHERE o.owner = t.owner)"
# The completing owner's lease is live (migration 0006): an owner whose lease ran out completes nothing.
_LEASE_LIVE = "EXISTS (SELECT 1 FROM owners o WHERE o.owner = t.owner AND o.lease_until > now())"


def encode_events(events: list[Event] | tuple[Event, ...]) -> list[bytes]:
    return [_event_encoder.encode(e) for e in events]


def to_record(row: tuple[Any, ...]) -> TransactionRecord:
    """A record from the COLUMNS of a row: the claim-time fields from `record`, the rest from the columns."""
    state, owner, completed_at, sealed, status, body, code, approved, auth, outcome, replays, events, blob = row[:13]
    rec = codec.decode(blob)
    rec.reversed_by = row[13]
    rec.state = State(state)
    rec.owner = owner
    rec.completed_at = completed_at or 0.0
    rec.sealed_request = sealed
    rec.response_status = status
    rec.response_body = body
    rec.response_code = code
    rec.approved = approved
    rec.authorisation_code = auth
    rec.outcome = outcome
    rec.replays = replays
    rec.events = [_event_decoder.decode(e) for e in events]
    return rec


def claim_blob(rec: TransactionRecord) -> bytes:
    """The immutable part kept in `record`: no sealed request, no events, no answer, no hold (those are columns)."""
    return codec.encode(msgspec.structs.replace(rec, sealed_request=None, events=[], owner="", reversed_by=""))


_INSERT_CLAIM = (
    "INSERT INTO transactions (client_id, transaction_id, fingerprint, state, owner, rrn, terminal_id, stan,"
    " created_at, sealed_request, events, record, card_key)"
    " VALUES (%s, %s, %s, 'PENDING', %s, %s, %s, %s, %s, %s, %s::bytea[], %s, %s) ON CONFLICT DO NOTHING"
)


def claim_op(rec: TransactionRecord) -> Op[bool]:
    """The claim's INSERT, queued (store/pg/pipeline.py) or run at once (insert_claim): True if it inserted."""
    params = (
        rec.client_id,
        rec.transaction_id,
        rec.fingerprint,
        rec.owner,
        rec.rrn,
        rec.terminal_id,
        rec.stan,
        rec.created_at,
        rec.sealed_request,
        encode_events(rec.events),
        claim_blob(rec),
        rec.card_key or None,
    )
    return Op(_INSERT_CLAIM, params, lambda cur: cur.rowcount == 1)


def insert_claim(conn: Conn, rec: TransactionRecord) -> bool:
    return claim_op(rec).run(conn)


def find_by_card_key(conn: Conn, client_id: str, card_key: bytes) -> TransactionRecord | None:
    """The record already carrying this card transaction for this client (migration 0004's unique index)."""
    row = conn.execute(
        f"SELECT {COLUMNS} FROM transactions t WHERE t.client_id = %s AND t.card_key = %s", (client_id, card_key)
    ).fetchone()
    return None if row is None else to_record(row)


def lock_record(conn: Conn, client_id: str, transaction_id: str) -> TransactionRecord | None:
    """The record under this key, its row locked until the enclosing transaction ends (a reversal's original)."""
    row = conn.execute(f"SELECT {COLUMNS} FROM transactions t WHERE {_PK} FOR UPDATE", (client_id, transaction_id))
    found = row.fetchone()
    return None if found is None else to_record(found)


def set_reversed_by(conn: Conn, original: TransactionRecord, event: Event) -> None:
    """Write `original.reversed_by` (a hold, a mark or a release by store/reversals.py) with its timeline event."""
    conn.execute(
        f"UPDATE transactions t SET reversed_by = %s, events = cl_trim_events(t.events || %s::bytea[], %s) WHERE {_PK}",
        (original.reversed_by, encode_events([event]), codec.MAX_EVENTS, original.client_id, original.transaction_id),
    )


def find_claimed_op(client_id: str, transaction_id: str) -> Op[tuple[TransactionRecord, float | None] | None]:
    """The record under this key and the seconds left on its owner's lease (store/pg/lease.py; None: no lease)."""

    def read(cur: Cursor) -> tuple[TransactionRecord, float | None] | None:
        found = cur.fetchone()
        return None if found is None else (to_record(found), found[N_COLUMNS])

    return Op(f"SELECT {COLUMNS}, {_LEASE_LEFT} FROM transactions t WHERE {_PK}", (client_id, transaction_id), read)


def find_claimed(conn: Conn, client_id: str, transaction_id: str) -> tuple[TransactionRecord, float | None] | None:
    return find_claimed_op(client_id, transaction_id).run(conn)


def complete_op(
    client_id: str, transaction_id: str, owner: str, epoch: int, c: Completion, now: float
) -> Op[tuple[TransactionRecord | None, str | None]]:
    """PENDING under `owner` at `epoch`, its lease live -> COMPLETED with the answer, card data erased, in one
    statement. None: fenced (not PENDING under that owner and epoch: completed, or taken over; or the owner's
    lease has run out). Its `notify`: the key to NOTIFY after the commit, only if a waiter marked the row
    (migration 0007)."""
    params = (
        now,
        c.response_status,
        c.response_body,
        c.response_code,
        c.approved,
        c.authorisation_code,
        c.outcome,
        encode_events(c.events),
        codec.MAX_EVENTS,
        client_id,
        transaction_id,
        owner,
        epoch,
    )
    key = key_of(client_id, transaction_id)

    def read(cur: Cursor) -> tuple[TransactionRecord | None, str | None]:
        row = cur.fetchone()
        if row is None:
            return None, None
        return to_record(row), key if row[N_COLUMNS] else None

    return Op(_COMPLETE, params, read, notify=lambda done: done[1])


_COMPLETE = (
    "UPDATE transactions t SET state = 'COMPLETED', completed_at = %s, sealed_request = NULL,"
    " response_status = %s, response_body = %s, response_code = %s, approved = %s, authorisation_code = %s,"
    " outcome = %s, events = cl_trim_events(t.events || %s::bytea[], %s)"
    f" WHERE {_PK} AND t.state = 'PENDING' AND t.owner = %s AND t.epoch = %s AND {_LEASE_LIVE}"
    f" RETURNING {COLUMNS}, t.awaited"
)


def complete(
    conn: Conn, client_id: str, transaction_id: str, owner: str, epoch: int, c: Completion, now: float
) -> TransactionRecord | None:
    """complete_op at once; then, only if a waiter marked the row, NOTIFY in a statement of its own.
    On an autocommit connection the NOTIFY's transaction writes nothing: it holds the notify lock without a WAL
    flush. Inside a caller's transaction (a REVERSAL's) it is sent on that commit, as a trigger's was."""
    done, notify = complete_op(client_id, transaction_id, owner, epoch, c, now).run(conn)
    if notify is not None:  # another worker or host waits: wake it (store/pg/listener.py)
        _notify(conn, notify)
    return done


def _notify(conn: Conn, key: str) -> None:
    if conn.info.transaction_status is not TransactionStatus.IDLE:  # in the caller's transaction: sent on its commit
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))
        return
    try:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))
    except psycopg.Error as e:
        # The completion has committed: it must not be reported failed. The waiter finds it by its poll.
        log.warning("store_completion_notify_failed", error=type(e).__name__)


def mark_awaited(conn: Conn, client_id: str, transaction_id: str) -> None:
    """Ask the completion of this PENDING record to NOTIFY (migration 0007); nothing if it is not PENDING."""
    conn.execute(
        f"UPDATE transactions t SET awaited = true WHERE {_PK} AND t.state = 'PENDING' AND NOT t.awaited",
        (client_id, transaction_id),
    )


def find_awaited(conn: Conn, client_id: str, transaction_id: str) -> tuple[TransactionRecord, float | None] | None:
    """mark_awaited, then find_claimed: a completion committed after the mark notifies; one before it is read."""
    mark_awaited(conn, client_id, transaction_id)
    return find_claimed(conn, client_id, transaction_id)


def add_events(conn: Conn, client_id: str, transaction_id: str, events: list[Event], replays: int) -> bool:
    cur = conn.execute(
        f"UPDATE transactions t SET events = cl_trim_events(t.events || %s::bytea[], %s), replays = t.replays + %s"
        f" WHERE {_PK}",
        (encode_events(events), codec.MAX_EVENTS, max(0, replays), client_id, transaction_id),
    )
    return cur.rowcount == 1


def take_over(
    conn: Conn, client_id: str, transaction_id: str, dead_owner: str, owner: str, event: Event
) -> tuple[TransactionRecord, int, float | None] | None:
    """PENDING under dead_owner -> under owner, epoch + 1, in one statement: (the record, its new epoch, the
    seconds left on dead_owner's lease, <= 0 once expired). None if it is not (someone else won, or done)."""
    row = conn.execute(
        "UPDATE transactions t SET owner = %s, epoch = t.epoch + 1,"
        " events = cl_trim_events(t.events || %s::bytea[], %s)"
        f" WHERE {_PK} AND t.state = 'PENDING' AND t.owner = %s RETURNING {COLUMNS}, t.epoch,"
        " (SELECT extract(epoch FROM o.lease_until - now())::float8 FROM owners o WHERE o.owner = %s)",
        (owner, encode_events([event]), codec.MAX_EVENTS, client_id, transaction_id, dead_owner, dead_owner),
    ).fetchone()
    if row is None:
        return None
    return to_record(row), int(row[N_COLUMNS]), row[N_COLUMNS + 1]


def reserve_block(conn: Conn) -> int:
    """The next STAN/RRN block number. pg_current_xact_id() gives the statement's transaction an id, so its
    commit is flushed (synchronous_commit) together with the sequence's WAL: a block handed out is never handed
    out again after a crash, which a bare nextval() in a read-only transaction does not promise."""
    row = conn.execute("SELECT nextval('id_blocks'), pg_current_xact_id()").fetchone()
    assert row is not None
    return int(row[0])


def purge(conn: Conn, older_than: float, limit: int, stale_owner_seconds: float) -> int:
    with conn.transaction():
        cur = conn.execute(
            "DELETE FROM transactions t USING (SELECT client_id, transaction_id FROM transactions"
            " WHERE state = 'COMPLETED' AND completed_at < %s ORDER BY completed_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED) old"
            " WHERE t.client_id = old.client_id AND t.transaction_id = old.transaction_id AND t.state = 'COMPLETED'",
            (older_than, limit),
        )
        conn.execute("DELETE FROM owners WHERE lease_until < now() - make_interval(secs => %s)", (stale_owner_seconds,))
        return cur.rowcount


WHERE = {
    "rrn": "t.rrn = %s AND t.rrn <> ''",
    "terminal_stan": "t.terminal_id = %s AND t.stan = %s AND t.stan <> ''",
    "created_since": "t.created_at >= %s",
    "transaction_id": "t.transaction_id = %s",
}


def select(conn: Conn, by: str, params: tuple[Any, ...], limit: int) -> list[TransactionRecord]:
    """Records matching WHERE[by], oldest first."""
    where = WHERE[by]
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM transactions t WHERE {where}"
        " ORDER BY t.created_at, t.client_id, t.transaction_id LIMIT %s",
        (*params, limit),
    ).fetchall()
    return [to_record(r) for r in rows]
