"""What the flow does once this worker's store lease has run out mid-transaction (docs/postgres.md "Leases and
fencing"): nothing more is sent (the send guard refused: LeaseExpired), or the answer could not be recorded
(complete was fenced: LeaseLost). Either way the record's current owner decides; this worker makes up nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from ..acquirer.types import AcquirerRequest, Connector, LeaseExpired
from ..http.problems import Problem
from ..store.types import Completion, State, TransactionRecord, TransactionStore
from .models import TransactionType

log = structlog.get_logger("cloudlayer.transactions.flow")


def handed_over() -> Problem:
    return Problem(
        503,
        "lease-lost",
        "Transaction handed over",
        "this worker's hold on the transaction ran out before it could finish; retry (its next owner answers)",
        headers={"Retry-After": "2"},
    )


def lease_expired(rec: TransactionRecord, e: LeaseExpired) -> Problem:
    """The guard refused: the record stays PENDING, unrecorded and unreversed here, for its next owner."""
    log.error("send_fenced", transaction_id=rec.transaction_id, stan=rec.stan, sent=e.sent, reason=str(e))
    return handed_over()


async def after_fenced(
    store: TransactionStore,
    connector: Connector,
    rec: TransactionRecord,
    completion: Completion,
    unseal: Callable[[TransactionRecord], AcquirerRequest],
) -> TransactionRecord | None:
    """Our answer was not recorded. The record to replay (COMPLETED by its new owner), or None (retry later).

    An approval we hold is reversed (queued; SAF entries are idempotent by key) only when the record is
    COMPLETED with another answer. While the record is PENDING, under a new owner or still under ours (our
    lease lost, nobody has taken it over yet), its next owner's inquiry, made after our lease's end plus
    acquirer.timeout, sees this approval and decides alone: a reversal queued now could land after that
    inquiry answered "approved" (reversed at the issuer, answered approved)."""
    current = await store.get(rec.client_id, rec.transaction_id)
    log.error(
        "completion_fenced",
        transaction_id=rec.transaction_id,
        stan=rec.stan,
        ours=completion.outcome,
        recorded=current.outcome if current is not None else "",
    )
    if completion.approved and rec.transaction_type != TransactionType.REVERSAL.value:
        done = current is not None and current.state is State.COMPLETED
        # The new owner recorded an approval of the same message (its inquiry quoted our STAN): the same
        # authorization, whatever field 38 an acquirer sends in answer to a repeat.
        agrees = done and current is not None and current.approved
        recovering = current is not None and current.state is State.PENDING
        if not agrees and not recovering:
            # Unfenced: the record is COMPLETED under its new owner with another answer; nobody inquires again.
            await connector.queue_reversal(unseal(rec), reason="fenced: an approval the store did not record")
    if current is not None and current.state is State.COMPLETED:
        return current
    return None
