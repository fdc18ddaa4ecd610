"""One effective reversal per original: the rules every store backend applies inside its own atomic steps.

Pure functions over records, no I/O: a backend calls `refusal` and `hold` inside the write transaction that
claims a REVERSAL, and `settle` inside the one that completes it, so that

  - two REVERSALs of one original under different transactionIds, at the same moment on two workers, make one
    message to the acquirer: the first claim holds the original (reversed_by), the second sees the hold;
  - a crash between completing a reversal and marking its original cannot happen: they are one commit;
  - a reversal that did not take effect (declined, say 25 or 12) releases its original for another attempt.

The flow calls `refusal` first too (a read, before spending anything) for a fast answer; the store's call is
the one that binds.
"""

from __future__ import annotations

from typing import Final

from .types import Event, OriginalRefusal, State, TransactionRecord

REVERSAL: Final = "REVERSAL"
# The outcome of a REVERSAL the acquirer has not acknowledged yet but the store-and-forward queue delivers until
# it does: it counts as done (a second reversal of the original must not be sent meanwhile).
STORED_FOR_FORWARDING: Final = "reversal-stored-for-forwarding"
# Timeline events on the original.
REVERSED_EVENT: Final = "reversed"
RELEASED_EVENT: Final = "reversal-not-effective"


def reversed_by(original: TransactionRecord) -> str:
    """The transactionId holding or having reversed `original` ("" if none). Records written before the
    reversed_by field existed say it with a timeline event only."""
    if original.reversed_by:
        return original.reversed_by
    return next((e.detail for e in original.events if e.what == REVERSED_EVENT), "")


def refusal(
    original: TransactionRecord | None,
    *,
    reversal_id: str,
    amount: int,
    currency: str,
    terminal_id: str,
    holder_pending: bool,
) -> OriginalRefusal | None:
    """Why the REVERSAL `reversal_id` (of `amount` in `currency`, from `terminal_id`) may not reverse `original`
    (None: it may). `holder_pending` says whether the record named by reversed_by(original), if another
    transactionId, is still PENDING."""
    if original is None:
        return OriginalRefusal.UNKNOWN
    if original.state is State.PENDING:
        return OriginalRefusal.IN_PROGRESS
    if original.transaction_type == REVERSAL:
        return OriginalRefusal.IS_REVERSAL
    holder = reversed_by(original)
    if holder and holder != reversal_id:  # our own id: a resubmission of ours
        return OriginalRefusal.IN_PROGRESS if holder_pending else OriginalRefusal.ALREADY_REVERSED
    if not original.approved:
        return OriginalRefusal.NOT_APPROVED
    if amount > original.amount or currency != original.currency:
        return OriginalRefusal.AMOUNT
    if terminal_id != original.terminal_id:
        # The 0400 quotes the original's STAN and terminal (field 41 with field 11 is the acquirer's match key):
        # from another terminal it would name a transaction that terminal never made.
        return OriginalRefusal.TERMINAL
    return None


def refusal_of(
    original: TransactionRecord | None, reversal: TransactionRecord, *, holder_pending: bool
) -> OriginalRefusal | None:
    """`refusal` for a REVERSAL record about to be claimed."""
    return refusal(
        original,
        reversal_id=reversal.transaction_id,
        amount=reversal.amount,
        currency=reversal.currency,
        terminal_id=reversal.terminal_id,
        holder_pending=holder_pending,
    )


def hold(original: TransactionRecord, reversal: TransactionRecord, now: float) -> bool:
    """Mark `original` as held by `reversal` (in the claim's write). False when it already was (a resubmission
    of the same reversal): nothing to write."""
    if original.reversed_by == reversal.transaction_id:
        return False
    original.reversed_by = reversal.transaction_id
    original.events.append(Event(now, "reversal-claimed", reversal.transaction_id))
    return True


def effective(reversal: TransactionRecord) -> bool:
    """A completed REVERSAL took effect: approved by the acquirer, or stored for forwarding until it is."""
    return reversal.approved or reversal.outcome == STORED_FOR_FORWARDING


def settle(original: TransactionRecord, reversal: TransactionRecord, now: float) -> bool:
    """In the write that completes `reversal`: keep the hold and say 'reversed', or release it if the reversal
    did not take effect. False when `original` needs no write."""
    if effective(reversal):
        if reversed_by(original) not in ("", reversal.transaction_id):
            return False  # reversed by another (a record claimed before holds existed): leave it
        original.reversed_by = reversal.transaction_id
        original.events.append(Event(now, REVERSED_EVENT, reversal.transaction_id))
        return True
    if original.reversed_by != reversal.transaction_id:
        return False
    original.reversed_by = ""
    original.events.append(Event(now, RELEASED_EVENT, f"{reversal.transaction_id} {reversal.response_code}"))
    return True


def is_reversal(record: TransactionRecord) -> bool:
    return record.transaction_type == REVERSAL and bool(record.original_transaction_id)
