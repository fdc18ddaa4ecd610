"""A REVERSAL names an earlier transaction of the same client: the answer when it may not be reversed, and the
field 90 material it quotes.

The rule itself is store.reversals.refusal, applied twice: here as a read before anything is spent (a fast
answer), and inside the store's claim, which binds (two reversals at the same moment make one 0400).
"""

from __future__ import annotations

from ..acquirer.spec import PROCESSING_PURCHASE, PROCESSING_REFUND
from ..acquirer.types import OriginalData
from ..http.problems import Problem
from ..store import reversals
from ..store.types import OriginalRefusal, State, TransactionRecord, TransactionStore
from .mapping import transaction_key
from .models import TransactionRequest, TransactionType


async def original_for(store: TransactionStore, client_id: str, req: TransactionRequest) -> TransactionRecord:
    """The original a REVERSAL names, if it may be reversed by it; otherwise the problem that says why."""
    if req.original_transaction_id is None:
        raise Problem(
            422,
            "invalid-field",
            "Invalid request field",
            "originalTransactionId: required for a REVERSAL",
            field="originalTransactionId",
        )
    original = await store.get(client_id, req.original_transaction_id)
    holder_pending = False
    if original is not None and (holder_id := reversals.reversed_by(original)) not in ("", req.transaction_id):
        holder = await store.get(client_id, holder_id)
        holder_pending = holder is not None and holder.state is State.PENDING
    why = reversals.refusal(
        original,
        reversal_id=req.transaction_id,
        amount=req.amount,
        currency=req.currency,
        terminal_id=req.terminal_id,
        holder_pending=holder_pending,
    )
    if why is not None:
        raise refusal_problem(why, original)
    assert original is not None
    return original


def original_data(client_id: str, original: TransactionRecord) -> OriginalData:
    """Field 90 (and the processing code) of the 0400 that reverses `original`."""
    return OriginalData(
        mti=original.acquirer_mti,
        stan=original.stan,
        transmission_datetime=original.transmission_datetime,
        processing_code=PROCESSING_REFUND
        if original.transaction_type == TransactionType.REFUND.value
        else PROCESSING_PURCHASE,
        key=transaction_key(client_id, original.transaction_id),
    )


def refusal_problem(why: OriginalRefusal, original: TransactionRecord | None) -> Problem:
    """The answer to a REVERSAL refused for `why` (the same whether the read or the store's claim found it)."""
    field = "originalTransactionId"
    match why:
        case OriginalRefusal.UNKNOWN:
            return Problem(
                422,
                "unknown-original",
                "Unknown original transaction",
                "originalTransactionId: no transaction with this id was processed for this client",
                field=field,
            )
        case OriginalRefusal.IN_PROGRESS:
            return Problem(
                409,
                "original-in-progress",
                "Original transaction in progress",
                "originalTransactionId: the original transaction, or a reversal of it, is still being processed; retry",
                field=field,
                headers={"Retry-After": "2"},
            )
        case OriginalRefusal.IS_REVERSAL:
            return Problem(
                422,
                "invalid-original",
                "Invalid original transaction",
                "originalTransactionId: a reversal cannot be reversed",
                field=field,
            )
        case OriginalRefusal.ALREADY_REVERSED:
            by = reversals.reversed_by(original) if original is not None else ""
            return Problem(
                422,
                "original-already-reversed",
                "Original transaction already reversed",
                f"originalTransactionId: already reversed by transactionId {by!r}",
                field=field,
            )
        case OriginalRefusal.NOT_APPROVED:
            return Problem(
                422,
                "original-not-approved",
                "Original transaction not approved",
                "originalTransactionId: the original transaction was not approved; there is nothing to reverse",
                field=field,
            )
        case OriginalRefusal.AMOUNT:
            return Problem(
                422,
                "invalid-field",
                "Invalid request field",
                "amount: a reversal must not exceed the original amount, in the original currency",
                field="amount",
            )
        case OriginalRefusal.TERMINAL:
            return Problem(
                422,
                "invalid-field",
                "Invalid request field",
                "terminalId: a reversal must come from the original transaction's terminal (its 0400 quotes the "
                "original's STAN and terminal)",
                field="terminalId",
            )
