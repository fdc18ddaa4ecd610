"""A REVERSAL names an earlier transaction of the same client: the checks it must pass before it is sent, and
the field 90 material it quotes."""

from __future__ import annotations

from typing import Final

from ..acquirer.spec import PROCESSING_PURCHASE, PROCESSING_REFUND
from ..acquirer.types import OriginalData
from ..http.problems import Problem
from ..store.types import State, TransactionStore
from .mapping import transaction_key
from .models import TransactionRequest, TransactionType

# Timeline event written on an original transaction once a reversal of it is approved.
REVERSED_EVENT: Final = "reversed"


async def original_for(store: TransactionStore, client_id: str, req: TransactionRequest) -> OriginalData:
    """A REVERSAL names an earlier transaction of the same client, which must be an approval."""
    if req.original_transaction_id is None:
        raise Problem(
            422,
            "invalid-field",
            "Invalid request field",
            "originalTransactionId: required for a REVERSAL",
            field="originalTransactionId",
        )
    original = await store.get(client_id, req.original_transaction_id)
    if original is None:
        raise Problem(
            422,
            "unknown-original",
            "Unknown original transaction",
            "originalTransactionId: no transaction with this id was processed for this client",
            field="originalTransactionId",
        )
    if original.state is State.PENDING:
        raise Problem(
            409,
            "original-in-progress",
            "Original transaction in progress",
            "originalTransactionId: the original transaction is still being processed; retry",
            field="originalTransactionId",
            headers={"Retry-After": "2"},
        )
    if original.transaction_type == TransactionType.REVERSAL.value:
        raise Problem(
            422,
            "invalid-original",
            "Invalid original transaction",
            "originalTransactionId: a reversal cannot be reversed",
            field="originalTransactionId",
        )
    reversed_by = next((e.detail for e in original.events if e.what == REVERSED_EVENT), None)
    if reversed_by is not None and reversed_by != req.transaction_id:  # ours: a resubmission, it replays
        raise Problem(
            422,
            "original-already-reversed",
            "Original transaction already reversed",
            f"originalTransactionId: already reversed by transactionId {reversed_by!r}",
            field="originalTransactionId",
        )
    if not original.approved:
        raise Problem(
            422,
            "original-not-approved",
            "Original transaction not approved",
            "originalTransactionId: the original transaction was not approved; there is nothing to reverse",
            field="originalTransactionId",
        )
    if req.amount > original.amount or req.currency != original.currency:
        raise Problem(
            422,
            "invalid-field",
            "Invalid request field",
            "amount: a reversal must not exceed the original amount, in the original currency",
            field="amount",
        )
    return OriginalData(
        mti=original.acquirer_mti,
        stan=original.stan,
        transmission_datetime=original.transmission_datetime,
        processing_code=PROCESSING_REFUND
        if original.transaction_type == TransactionType.REFUND.value
        else PROCESSING_PURCHASE,
        key=transaction_key(client_id, original.transaction_id),
    )
