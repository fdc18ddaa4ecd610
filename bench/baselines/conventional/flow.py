"""One transaction: EMV parse (pyemv), claim (PENDING committed), 0200 to the acquirer, COMPLETED committed, answer.

A resubmission of a completed transaction with the same content gets the stored answer byte for byte; the
same id with other content is a 409; one still PENDING (its first attempt in flight) a 503 with Retry-After.
Not here (the bench never needs them, and bench/README.md says so): recovery of a PENDING row left by a
crash, and reversals of timed-out authorizations (a timeout is answered with a 91 decline).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from pyemv import tlv

from .acquirer import AcquirerError, AcquirerLink
from .models import APPROVED_CODES, MESSAGES, TransactionRequest, TransactionResponse
from .store import Claimed, NewTransaction, Store

ACQUIRER_ID = "123456"


class Refused(Exception):
    """A 4xx answer: status, problem type slug, detail, and the field it names (if any)."""

    def __init__(self, status: int, slug: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.field = status, slug, detail, field


@dataclass(frozen=True)
class Answer:
    body: bytes
    replayed: bool


@dataclass(frozen=True)
class Card:
    pan: str | None
    track2: str | None
    expiry: str | None
    sequence: str | None

    @property
    def masked_pan(self) -> str | None:
        return f"{self.pan[:6]}{'*' * (len(self.pan) - 10)}{self.pan[-4:]}" if self.pan else None


def card_from_emv(icc: bytes) -> Card:
    try:
        tags = tlv.decode(icc, flatten=True)
    except tlv.DecodeError as e:
        raise Refused(422, "invalid-emv", f"emvData: not valid BER-TLV: {e.msg}", "emvData") from None
    pan = tags.get("5A")
    track2 = tags.get("57")
    expiry = tags.get("5F24")
    sequence = tags.get("5F34")
    return Card(
        pan=pan.hex().upper().rstrip("F") if pan else None,
        track2=track2.hex().upper().rstrip("F") if track2 else None,
        expiry=expiry.hex()[:4] if expiry else None,
        sequence=sequence.hex().zfill(3) if sequence else None,
    )


def fingerprint(req: TransactionRequest) -> str:
    """What makes a resubmission 'the same request': the validated fields (order, spacing, extras ignored)."""
    return hashlib.sha256(req.model_dump_json().encode()).hexdigest()


def iso_request(req: TransactionRequest, card: Card, icc: bytes, claimed: Claimed) -> dict[str, str]:
    now = time.gmtime()
    if req.local_date_time:
        ldt = req.local_date_time
        local_time, local_date = ldt[11:13] + ldt[14:16] + ldt[17:19], ldt[5:7] + ldt[8:10]
    else:
        local_time, local_date = time.strftime("%H%M%S", now), time.strftime("%m%d", now)
    msg = {
        "t": "0200",
        "3": "200000" if req.transaction_type == "REFUND" else "000000",
        "4": f"{req.amount:012d}",
        "7": time.strftime("%m%d%H%M%S", now),
        "11": claimed.stan,
        "12": local_time,
        "13": local_date,
        "22": req.pos_entry_mode.ljust(3, "0"),
        "32": ACQUIRER_ID,
        "37": claimed.rrn,
        "41": req.terminal_id.ljust(8),
        "42": req.merchant_id.ljust(15),
        "49": req.currency,
        "55": icc.hex(),
    }
    if card.pan:
        msg["2"] = card.pan
    if card.expiry:
        msg["14"] = card.expiry
    if card.sequence:
        msg["23"] = card.sequence
    if card.track2:
        msg["35"] = card.track2
    if req.pin_block:
        msg["52"] = req.pin_block
    return msg


def response_emv(code: str, issuer_icc_hex: str) -> str:
    """8A (the response code, for the terminal) first, then whatever the issuer sent (91, 71, 72)."""
    try:
        issuer = tlv.decode(bytes.fromhex(issuer_icc_hex)) if issuer_icc_hex else {}
    except tlv.DecodeError:  # malformed issuer data: the authorization still happened; answer with 8A alone
        issuer = {}
    return tlv.encode({"8A": code.encode(), **issuer}).hex().upper()


class TransactionService:
    def __init__(self, store: Store, acquirer: AcquirerLink) -> None:
        self._store = store
        self._acquirer = acquirer

    async def process(self, client_id: str, req: TransactionRequest) -> Answer:
        icc = bytes.fromhex(req.emv_data)
        card = card_from_emv(icc)
        fp = fingerprint(req)
        claim = await self._store.claim(
            NewTransaction(
                client_id=client_id,
                transaction_id=req.transaction_id,
                fingerprint=fp,
                transaction_type=req.transaction_type,
                amount=req.amount,
                currency=req.currency,
                merchant_id=req.merchant_id,
                terminal_id=req.terminal_id,
                masked_pan=card.masked_pan,
            )
        )
        if not isinstance(claim, Claimed):
            if claim.fingerprint != fp:
                raise Refused(409, "transaction-id-conflict", "transactionId was already used for another request")
            if claim.state != "COMPLETED" or claim.response_body is None:
                raise Refused(503, "in-progress", "the first attempt of this transaction is still being processed")
            return Answer(claim.response_body, replayed=True)
        try:
            answer = await self._acquirer.send(iso_request(req, card, icc, claim))
            code, auth_code, issuer_icc = answer.get("39", "96"), answer.get("38"), answer.get("55", "")
        except AcquirerError:
            code, auth_code, issuer_icc = "91", None, ""
        body = (
            TransactionResponse(
                transaction_id=req.transaction_id,
                response_code=code,
                approved=code in APPROVED_CODES,
                authorisation_code=auth_code,
                rrn=claim.rrn,
                stan=claim.stan,
                emv_data=response_emv(code, issuer_icc),
                message=MESSAGES.get(code, f"Declined (response code {code})"),
            )
            .model_dump_json(by_alias=True)
            .encode()
        )
        await self._store.complete(claim.row_id, code, body)
        return Answer(body, replayed=False)
