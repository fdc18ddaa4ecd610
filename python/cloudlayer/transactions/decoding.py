"""From the request body to a checked TransactionRequest and its parsed EMV: every refusal here is a 4xx
problem naming the field, raised before anything is claimed or sent."""

from __future__ import annotations

from datetime import datetime

import msgspec

from .. import emv
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
        raise Problem(
            422, "invalid-emv", "Malformed EMV data", f"emvData: not valid BER-TLV: {e}", field="emvData"
        ) from None
    return icc, card
