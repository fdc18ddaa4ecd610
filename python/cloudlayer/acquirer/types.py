"""What the transaction flow hands the acquirer link, and what comes back.

This is the contract between `transactions/flow.py` and any connector (ISO 8583 over TCP today).
Card data lives here in full only in memory, for the message to the acquirer; never log these objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import msgspec


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


class AcquirerResponse(msgspec.Struct, frozen=True, kw_only=True):
    response_code: str  # field 39, 2 characters
    authorisation_code: str | None = None  # field 38
    icc_data: bytes = b""  # field 55 from the issuer (91, 71, 72 ...)
    rrn: str | None = None  # field 37 as echoed
    stan: str | None = None  # field 11 as echoed
    late: bool = False


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


class Connector(Protocol):
    """An acquirer link. Implementations run their background tasks in a nursery via `run`."""

    @property
    def ready(self) -> bool:
        """True while at least one connection to the acquirer is up and signed on."""
        ...

    async def send(self, request: AcquirerRequest) -> AcquirerResponse:
        """Send one authorization/financial/reversal message and wait (within acquirer.timeout).

        Raises AcquirerUnavailable if it was not sent (RequestNotEncodable if it cannot be), OutcomeUnknown if
        it may have been (a reversal is then already queued in the store-and-forward queue).
        """
        ...

    async def wait_ready(self) -> None:
        """Return once a connection is up and signed on (callers bound the wait)."""
        ...

    async def inquire(self, request: AcquirerRequest) -> AcquirerResponse | None:
        """Send the repeat form (0101/0201/0401) of a message whose outcome we lost (crash between
        send and store). Returns the acquirer's original answer, or None if it never saw the original.
        Raises AcquirerUnavailable / OutcomeUnknown as `send` does (without queuing anything)."""
        ...

    async def reversal_recorded(self, request: AcquirerRequest) -> bool:
        """Whether a reversal of `request` was ever queued (pending, or acknowledged): crash recovery must not
        trust an inquiry's approval for a transaction we already reversed."""
        ...

    async def queue_reversal(self, request: AcquirerRequest, reason: str) -> None:
        """Durably queue a reversal (0400, field 90 from `request`) of a message whose outcome is unknown,
        to be retried until the acquirer acknowledges it (0410)."""
        ...
