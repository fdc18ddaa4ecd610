"""From the request body to a checked TransactionRequest and its parsed EMV: every refusal here is a 4xx
problem naming the field, raised before anything is claimed or sent."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from .. import emv
from ..acquirer.spec import PAN_MAX_DIGITS, TRACK2_MAX_CHARS
from ..http.problems import Problem, from_decode_error, from_validation_error
from .models import TransactionRequest, TransactionType, decode_request


def conflict() -> Problem:
    return Problem(
        409,
        "transaction-id-conflict",
        "Transaction id reused",
        "transactionId was already used for a different request; it was not processed again",
        field="transactionId",
    )


def duplicate_card(holder: str) -> Problem:
    """The same card transaction (card, sequence number and ATC, or cryptogram) under another transactionId: it is
    never sent again. Names the transactionId that carries it, the same on every resubmission."""
    return Problem(
        409,
        "duplicate-card-transaction",
        "Card transaction already processed",
        f"emvData: this card transaction (same card and transaction counter) was already submitted as transactionId "
        f"{holder!r}; it was not processed again",
        field="emvData",
        extra={"existingTransactionId": holder},
    )


def decode(body: bytes) -> TransactionRequest:
    try:
        req = decode_request(body)
    except msgspec.ValidationError as e:
        raise from_validation_error(e) from None
    except msgspec.DecodeError as e:
        raise from_decode_error(e) from None
    except RecursionError:
        # msgspec bounds nesting (even inside unknown fields) by raising RecursionError.
        raise Problem(400, "malformed-json", "Malformed JSON", "request body is nested too deeply") from None
    if req.local_date_time is not None:
        try:
            datetime.fromisoformat(req.local_date_time[:19])  # the pattern fixed the shape; is it a real date?
        except ValueError:
            raise Problem(
                422,
                "invalid-field",
                "Invalid request field",
                "localDateTime: not a real date and time",
                field="localDateTime",
            ) from None
    if req.transaction_type is not TransactionType.REVERSAL:
        if req.emv_data is None:
            raise Problem(
                422,
                "invalid-field",
                "Invalid request field",
                "emvData: required for a PURCHASE or REFUND",
                field="emvData",
            )
        if req.original_transaction_id is not None:
            raise Problem(
                422,
                "invalid-field",
                "Invalid request field",
                "originalTransactionId: only a REVERSAL names an original transaction",
                field="originalTransactionId",
            )
    return req


def parse_emv(req: TransactionRequest) -> tuple[bytes, emv.CardData | None]:
    if req.emv_data is None:
        return b"", None
    icc = bytes.fromhex(req.emv_data)
    try:
        card = emv.card_data(icc)  # parses the whole TLV once: malformed data fails here
    except emv.TLVError as e:
        raise _invalid_emv(f"not valid BER-TLV: {e}") from None
    if card is not None:
        _check_card(card)
    return icc, card


# EMV 57 (Book 3 Annex A) after the native parser: PAN, separator D, YYMM, service code, discretionary data.
_TRACK2 = re.compile(rf"[0-9]{{1,{PAN_MAX_DIGITS}}}D[0-9]{{4}}[0-9]{{3}}[0-9]*")


def _check_card(card: emv.CardData) -> None:
    """The card data must fit the fields it feeds (docs/iso8583.md), or nothing could be sent: refuse it here,
    before any claim or STAN, rather than fail after. The native parser has checked 5F24 (6 digits -> field 14)
    and 5F34 (2 digits -> field 23) and that 5A and 57 are digits (and one D)."""
    if card.pan is not None and len(card.pan) > PAN_MAX_DIGITS:
        raise _invalid_emv(f"the PAN (5A, or the PAN in 57) has more than {PAN_MAX_DIGITS} digits (field 2)")
    track2 = card.track2
    if track2 is not None and (len(track2) > TRACK2_MAX_CHARS or not _TRACK2.fullmatch(track2)):
        # An ASCII track 2 ('=' separator) is not EMV 57: its bytes read as nibbles make a PAN past 19 digits.
        # Guessing another encoding of card data is how the wrong card gets charged, so it is refused.
        raise _invalid_emv(
            f"57 is not a track 2 of at most {TRACK2_MAX_CHARS} characters as EMV and ISO/IEC 7813 define it "
            f"(PAN of at most {PAN_MAX_DIGITS} digits, D, YYMM, service code, discretionary data) (field 35)"
        )


def _invalid_emv(why: str) -> Problem:
    return Problem(422, "invalid-emv", "Malformed EMV data", f"emvData: {why}", field="emvData")
