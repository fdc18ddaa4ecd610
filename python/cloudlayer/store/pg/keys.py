"""The claim's second and third keys on PostgreSQL (issues 16 and 11), as store/lmdb_keys.py does for LMDB.

The card key is one more unique index (migration 0004): the claim's single INSERT ... ON CONFLICT DO NOTHING
refuses the same card transaction under another transactionId in the same statement that claims the
transactionId, so two such requests on two hosts at the same moment cannot both be NEW. A REVERSAL's claim
and completion run in one database transaction with its original's row locked (SELECT ... FOR UPDATE), applying
the backend-neutral rules of store/reversals.py: two reversals of one original on two hosts serialize on that
lock, and the original's mark commits with the reversal's completion or not at all.
"""

from __future__ import annotations

from .. import reversals
from ..types import Claim, ClaimOutcome, Completion, State, TransactionRecord
from . import rows
from .database import Conn


def claim_reversal(conn: Conn, rec: TransactionRecord, now: float) -> Claim | None:
    """In one transaction: refuse the REVERSAL `rec` (nothing written) or claim it and hold its original.
    None when a record under rec's own key already exists (the caller classifies it as for any claim)."""
    assert rec.original_transaction_id is not None
    with conn.transaction():
        original = rows.lock_record(conn, rec.client_id, rec.original_transaction_id)
        if rows.find_claimed(conn, rec.client_id, rec.transaction_id) is not None:
            return None  # a resubmission of this reversal: it was checked and held when first claimed
        holder_id = reversals.reversed_by(original) if original is not None else ""
        holder = rows.find_claimed(conn, rec.client_id, holder_id) if holder_id else None
        pending = holder is not None and holder[0].state is State.PENDING
        why = reversals.refusal_of(original, rec, holder_pending=pending)
        if why is not None:
            return Claim(ClaimOutcome.ORIGINAL_REFUSED, original or rec, refusal=why)
        if not rows.insert_claim(conn, rec):
            return None  # claimed by a concurrent resubmission meanwhile: classify it
        if original is not None and reversals.hold(original, rec, now):
            rows.set_reversed_by(conn, original, original.events[-1])
        return Claim(ClaimOutcome.NEW, rec)


def duplicate_card(conn: Conn, rec: TransactionRecord) -> Claim | None:
    """After an INSERT refused with no record under rec's own key: the record holding its card key, if any."""
    if not rec.card_key:
        return None
    other = rows.find_by_card_key(conn, rec.client_id, rec.card_key)
    return None if other is None else Claim(ClaimOutcome.DUPLICATE_CARD, other)


def complete_reversal(
    conn: Conn, client_id: str, transaction_id: str, owner: str, epoch: int, c: Completion, now: float
) -> TransactionRecord | None:
    """Complete a REVERSAL (fenced as rows.complete) and settle its original (mark or release) in the same
    transaction."""
    with conn.transaction():
        done = rows.complete(conn, client_id, transaction_id, owner, epoch, c, now)
        if done is not None:
            settle_original(conn, done, now)
        return done


def settle_original(conn: Conn, done: TransactionRecord, now: float) -> None:
    if not reversals.is_reversal(done):
        return
    assert done.original_transaction_id is not None
    original = rows.lock_record(conn, done.client_id, done.original_transaction_id)
    if original is not None and reversals.settle(original, done, now):
        rows.set_reversed_by(conn, original, original.events[-1])
