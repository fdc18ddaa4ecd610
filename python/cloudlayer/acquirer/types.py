"""What the transaction flow hands the acquirer link, and what comes back.

This is the contract between `transactions/flow.py` and any connector: ISO 8583 over TCP
(`acquirer/connector.py`), the HTTPS/JSON payment host (`acquirer/payment_host/`), or one a customer writes
for their own acquirer (docs/connectors.md says what it must do). Card data lives here in full only in
memory, for the message to the acquirer; never log these objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import msgspec
import trio


class MessageKind(StrEnum):
    PURCHASE = "PURCHASE"  # 0100 or 0200 (config: acquirer.purchase_mti)
    REFUND = "REFUND"  # 0200 with processing code 20
    REVERSAL = "REVERSAL"  # 0400 (field 90 = original data elements)


class OriginalData(msgspec.Struct, frozen=True, kw_only=True):
    """Field 90 material: what identifies the message being reversed or repeated."""

    mti: str
    stan: str
    transmission_datetime: str  # MMDDhhmmss (field 7 of the original)
    acquirer_institution_id: str = ""
    processing_code: str = ""  # field 3 of the original: a reversal repeats it ("" = purchase)
    key: str = ""  # the original's transaction key (AcquirerRequest.key): what an idempotent host reverses


class AcquirerRequest(msgspec.Struct, frozen=True, kw_only=True):
    kind: MessageKind
    stan: str  # 6 digits, unique per terminal per day (assigned by the store)
    rrn: str  # 12 characters (assigned by the store)
    transmission_datetime: str  # MMDDhhmmss, UTC (field 7)
    local_time: str  # hhmmss (field 12)
    local_date: str  # MMDD (field 13)
    amount: int  # minor units
    currency: str  # ISO 4217 numeric, 3 digits
    terminal_id: str  # field 41, 8 characters
    merchant_id: str  # field 42, 15 characters
    pos_entry_mode: str  # field 22
    pan: str | None = None  # from EMV 5A (or track 2 equivalent); secret
    expiry: str | None = None  # YYMM from 5F24 (YYMMDD)
    pan_sequence: str | None = None  # from 5F34, 3 digits
    track2: str | None = None  # from 57, ISO "D" separator form; secret
    icc_data: bytes = b""  # field 55, unredacted: the issuer needs the cryptogram
    pin_block: bytes | None = None  # field 52; secret
    original: OriginalData | None = None  # reversals and repeats
    # The MTI this request is (to be) sent with, fixed when it is made: a repeat, a recovery or a reversal
    # quotes what was really sent even if acquirer.purchase_mti changed in between ("" = from config).
    mti: str = ""
    # The transaction key (transactions.mapping.transaction_key: client id + transactionId, URL-safe): the same
    # for every resend, recovery and reversal of this transaction. A host with idempotency keys gets this one.
    key: str = ""


class AcquirerResponse(msgspec.Struct, frozen=True, kw_only=True):
    response_code: str  # field 39, 2 characters
    authorisation_code: str | None = None  # field 38
    icc_data: bytes = b""  # field 55 from the issuer (91, 71, 72 ...)
    rrn: str | None = None  # field 37 as echoed
    stan: str | None = None  # field 11 as echoed
    late: bool = False


class ClaimFence(msgspec.Struct, frozen=True):
    """Whose claim a reversal is queued for: the SAF queue writes it only while the transaction's record is still
    `owner`'s (PostgreSQL: checked under the record's row lock in the insert itself). A worker that kept a
    reversal in memory through an outage, and lost the claim meanwhile, drops it: the record's new owner has
    inquired and decided (docs/postgres.md "A reversal queued by an owner that lost its claim")."""

    client_id: str
    transaction_id: str
    owner: str


class AcquirerUnavailable(Exception):
    """The request was never sent (link down, back-pressure limit): safe to decline without reversal."""


class RequestNotEncodable(AcquirerUnavailable):
    """The request holds a value the dialect cannot carry: it was never sent. The contract refuses such requests
    before they are claimed (transactions/decoding.py), so this is a bug; `field` is the ISO 8583 field number."""

    def __init__(self, reason: str, field: str) -> None:
        super().__init__(reason)
        self.field = field


class OutcomeUnknown(Exception):
    """The request may have reached the acquirer but no answer came (timeout, link lost after send).

    The connector has already queued a durable reversal before raising this.
    """


class LeaseExpired(Exception):
    """The store's send guard refused (this worker's lease on its claims may have run out, docs/postgres.md):
    nothing more is sent for this request and no reversal is queued here; the record's next owner recovers it.
    `sent`: the message may already have reached the acquirer before the guard closed (its outcome unknown)."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class Connector(Protocol):
    """An acquirer link (docs/connectors.md is the full contract). Implementations run their background tasks
    in a nursery via `run`; the flow calls only what is below and knows no connector by name."""

    @property
    def ready(self) -> bool:
        """True while requests can be sent now (a link up and signed on; a token held and the host reachable)."""
        ...

    @property
    def not_ready_reason(self) -> str:
        """ "" while ready; else a few words for /readyz naming what is missing (never a secret)."""
        ...

    async def wait_ready(self) -> None:
        """Return once `ready` (callers bound it with their own deadline)."""
        ...

    def prepare(self, request: AcquirerRequest) -> AcquirerRequest:
        """Fix, once, whatever of `request` must stay the same for its first send, its recovery and its
        reversal, whatever the config says later (ISO 8583: the MTI from acquirer.purchase_mti). Called before
        the request is sealed into the PENDING record; no I/O."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The connector's background work (links, tokens, the store-and-forward loop) until cancelled."""
        ...

    async def send(self, request: AcquirerRequest, *, fence: ClaimFence | None = None) -> AcquirerResponse:
        """Send one authorization/financial/reversal message and wait (within acquirer.timeout).

        Raises AcquirerUnavailable if it was not sent (RequestNotEncodable if it cannot be), OutcomeUnknown if
        it may have been (a reversal is then already queued in the store-and-forward queue, under `fence`).
        """
        ...

    async def inquire(self, request: AcquirerRequest) -> AcquirerResponse | None:
        """Ask for the outcome of a message whose answer we lost (crash between send and store): ISO 8583 sends
        the repeat form (0101/0201/0401), a payment host is asked by transaction key. Returns the acquirer's
        original answer, or None if it never saw the original (and will not process it later as new).
        Raises AcquirerUnavailable / OutcomeUnknown as `send` does (without queuing anything)."""
        ...

    async def reversal_recorded(self, request: AcquirerRequest) -> bool:
        """Whether a reversal of `request` was ever queued (pending, or acknowledged): crash recovery must not
        trust an inquiry's approval for a transaction we already reversed."""
        ...

    async def queue_reversal(self, request: AcquirerRequest, reason: str, *, fence: ClaimFence | None = None) -> None:
        """Durably queue a reversal of a message whose outcome is unknown (ISO 8583: an 0400 quoting it in field
        90), to be retried until the acquirer acknowledges it (0410, or the host's answer). With `fence`, only
        while that claim is still its owner's (else dropped: the claim's new owner decides); None for a
        reversal owed whoever holds the record (an approval the store did not record, transactions/fencing.py)."""
        ...

    # Counters and states the host copies into its metrics once a second (observability/metrics.py).
    @property
    def links_up(self) -> int: ...

    @property
    def saf_depth(self) -> int: ...

    def saf_oldest_created(self) -> float | None: ...

    late_answers: int
    reversals_queued: int
