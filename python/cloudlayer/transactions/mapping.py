"""From Mypinpad's request (and the card data in its EMV) to the message for the acquirer."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Final

from .. import emv
from ..acquirer.types import AcquirerRequest, MessageKind, OriginalData
from .models import TransactionRequest


def transaction_key(client_id: str, transaction_id: str) -> str:
    """Our claim key (client id + transactionId) in a fixed-length URL- and header-safe form: unpadded base64url
    of SHA-256 over both, NUL-separated (43 characters). A connector whose host dedups by key sends this one;
    it carries no Mypinpad identifier in clear."""
    digest = hashlib.sha256(f"{client_id}\0{transaction_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def transmission_datetime(now: float) -> str:
    """Field 7: MMDDhhmmss in UTC."""
    return time.strftime("%m%d%H%M%S", time.gmtime(now))


def _local_fields(req: TransactionRequest, now: float) -> tuple[str, str]:
    """Fields 12 (hhmmss) and 13 (MMDD): the terminal's local time if sent, else ours in UTC."""
    if req.local_date_time is not None:
        ldt = req.local_date_time  # validated: YYYY-MM-DDThh:mm:ss
        return ldt[11:13] + ldt[14:16] + ldt[17:19], ldt[5:7] + ldt[8:10]
    t = time.gmtime(now)
    return time.strftime("%H%M%S", t), time.strftime("%m%d", t)


def build_acquirer_request(
    req: TransactionRequest,
    icc: bytes,
    card: emv.CardData | None,
    *,
    stan: str,
    rrn: str,
    now: float,
    key: str = "",
    original: OriginalData | None = None,
) -> AcquirerRequest:
    local_time, local_date = _local_fields(req, now)
    kind = MessageKind(req.transaction_type.value)
    return AcquirerRequest(
        kind=kind,
        stan=stan,
        rrn=rrn,
        transmission_datetime=transmission_datetime(now),
        local_time=local_time,
        local_date=local_date,
        amount=req.amount,
        currency=req.currency,
        terminal_id=req.terminal_id,
        merchant_id=req.merchant_id,
        pos_entry_mode=req.pos_entry_mode,  # 2 or 3 digits; a 2-digit mode gets its PIN capability digit later
        pan=card.pan if card else None,
        expiry=card.expiry[:4] if card and card.expiry else None,  # field 14 is YYMM; 5F24 is YYMMDD
        pan_sequence=card.pan_sequence if card else None,
        track2=card.track2 if card else None,
        icc_data=icc,
        pin_block=bytes.fromhex(req.pin_block) if req.pin_block else None,
        original=original,
        key=key,
    )


# The request field each ISO 8583 field of ours is made from (docs/iso8583.md), to name it in a problem.
REQUEST_FIELD_OF: Final = {
    "2": "emvData",
    "4": "amount",
    "12": "localDateTime",
    "13": "localDateTime",
    "14": "emvData",
    "22": "posEntryMode",
    "23": "emvData",
    "35": "emvData",
    "41": "terminalId",
    "42": "merchantId",
    "49": "currency",
    "52": "pinBlock",
    "55": "emvData",
    "90": "originalTransactionId",
}


def fingerprint(req: TransactionRequest, icc: bytes) -> bytes:
    """What makes a resubmission 'the same request': every field we act on (key order and spacing of the
    JSON do not matter, unknown fields do not count)."""
    return emv.fingerprint(
        [
            ("transactionId", req.transaction_id),
            ("transactionType", req.transaction_type.value),
            ("originalTransactionId", req.original_transaction_id),
            ("amount", req.amount),
            ("currency", req.currency),
            ("merchantId", req.merchant_id),
            ("terminalId", req.terminal_id),
            ("posEntryMode", req.pos_entry_mode),
            ("emvData", icc),
            ("pinBlock", bytes.fromhex(req.pin_block) if req.pin_block else None),
            ("localDateTime", req.local_date_time),
        ]
    )
