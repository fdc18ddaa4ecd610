"""The LMDB store's second and third keys of a claim, applied inside the claim's own write transaction.

  - the card key (cloudlayer.cardkey): `by_card` maps client_id NUL card_key -> record key, one record per card
    transaction of a client;
  - a REVERSAL's original: checked and held by store.reversals (the rules every backend shares), and settled
    in the write transaction that completes the reversal.

Functions of an open write transaction and the database handles, so lmdb_store.py keeps the writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import lmdb

from . import codec, reversals
from .types import Claim, ClaimOutcome, State, TransactionRecord

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]
else:
    Txn = lmdb.Transaction


class Dbs(NamedTuple):
    records: Any  # lmdb._Database, a name only the type stubs know
    by_card: Any


def _get(txn: Txn, dbs: Dbs, key: bytes) -> TransactionRecord | None:
    raw = txn.get(key, db=dbs.records)
    return None if raw is None else codec.decode(raw)


def refuse_or_hold(txn: Txn, dbs: Dbs, key: bytes, rec: TransactionRecord, now: float) -> Claim | None:
    """For a NEW transactionId: the Claim that refuses it (nothing written), or None after taking its card key
    and holding its original (written in `txn`, committed with the record itself)."""
    if rec.card_key:
        held = txn.get(codec.card_index_key(rec.client_id, rec.card_key), db=dbs.by_card)
        if held is not None and held != key:
            other = _get(txn, dbs, held)
            if other is not None:
                return Claim(ClaimOutcome.DUPLICATE_CARD, other)
    original_key = b""
    original: TransactionRecord | None = None
    if reversals.is_reversal(rec):
        assert rec.original_transaction_id is not None
        original_key = codec.record_key(rec.client_id, rec.original_transaction_id)
        original = _get(txn, dbs, original_key)
        holder_id = reversals.reversed_by(original) if original is not None else ""
        holder = _get(txn, dbs, codec.record_key(rec.client_id, holder_id)) if holder_id else None
        why = reversals.refusal_of(original, rec, holder_pending=holder is not None and holder.state is State.PENDING)
        if why is not None:
            return Claim(ClaimOutcome.ORIGINAL_REFUSED, original or rec, refusal=why)
    if rec.card_key:
        txn.put(codec.card_index_key(rec.client_id, rec.card_key), key, db=dbs.by_card)
    if original is not None and reversals.hold(original, rec, now):
        txn.put(original_key, codec.encode(original), db=dbs.records)
    return None


def settle_original(txn: Txn, dbs: Dbs, rec: TransactionRecord, now: float) -> None:
    """In the write that completes `rec`: if it is a REVERSAL, mark or release its original."""
    if not reversals.is_reversal(rec):
        return
    assert rec.original_transaction_id is not None
    original_key = codec.record_key(rec.client_id, rec.original_transaction_id)
    original = _get(txn, dbs, original_key)
    if original is not None and reversals.settle(original, rec, now):
        txn.put(original_key, codec.encode(original), db=dbs.records)


def forget_card_key(txn: Txn, dbs: Dbs, key: bytes, rec: TransactionRecord) -> None:
    """With the record's deletion (retention): its card key goes too, if it is still this record's."""
    index_key = codec.card_index_key(rec.client_id, rec.card_key)
    if rec.card_key and txn.get(index_key, db=dbs.by_card) == key:
        txn.delete(index_key, db=dbs.by_card)
