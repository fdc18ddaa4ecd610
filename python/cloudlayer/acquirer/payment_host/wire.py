"""The payment-host API's messages (docs/payment-host.md, docs/payment-host-openapi.json) and their mapping from
and to our AcquirerRequest / AcquirerResponse. One place for both sides: the connector encodes what the
simulator decodes, and the OpenAPI document is generated from these structs (payment_host/openapi.py).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from .. import spec
from ..types import AcquirerRequest, AcquirerResponse, MessageKind, OriginalData

API_PREFIX: Final = "/v1"
AUTHORIZATIONS: Final = API_PREFIX + "/authorizations"
PING: Final = API_PREFIX + "/ping"
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
REPLAYED: Final = "Idempotent-Replayed"
PROBLEM_JSON: Final = "application/problem+json"
_T = TypeVar("_T")
NOT_FOUND_CODE: Final = "25"  # ISO 8583's "unable to locate record": a reversal of something never seen

# An idempotency key: our transaction key (43 characters of base64url) or its reversal form.
Key = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{16,128}(\.reversal)?$")]
Digits3 = Annotated[str, Meta(pattern=r"^[0-9]{3}$")]
Hex = Annotated[str, Meta(max_length=2048, pattern=r"^(?:[0-9A-Fa-f]{2})*$")]
Stan = Annotated[str, Meta(pattern=r"^[0-9]{6}$")]
Rrn = Annotated[str, Meta(pattern=r"^[0-9A-Za-z ]{12}$")]
Mmddhhmmss = Annotated[str, Meta(pattern=r"^[0-9]{10}$")]
Amount = Annotated[int, Meta(ge=0, lt=10**12)]


class Card(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Card data taken from the EMV data (secret: TLS only, never logged)."""

    pan: Annotated[str, Meta(pattern=r"^[0-9]{1,19}$")] | None = None
    expiry: Annotated[str, Meta(pattern=r"^[0-9]{4}$")] | None = None  # YYMM
    sequence_number: Digits3 | None = None
    # Track 2 equivalent data as EMV tag 57 gives it: PAN, "D", expiry, service code, discretionary data.
    track2: Annotated[str, Meta(max_length=37, pattern=r"^[0-9]{1,19}D[0-9]*$")] | None = None


class AuthorizationRequest(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """POST /v1/authorizations, with `Idempotency-Key: <transaction key>`."""

    type: Literal["purchase", "refund"]
    amount: Amount  # minor units
    currency: Digits3  # ISO 4217 numeric
    merchant_id: Annotated[str, Meta(min_length=1, max_length=15)]
    terminal_id: Annotated[str, Meta(min_length=1, max_length=8)]
    pos_entry_mode: Digits3
    stan: Stan  # ours, unique per terminal per day
    rrn: Rrn  # ours
    transmitted_at: Mmddhhmmss  # UTC, as ISO 8583 field 7
    local_time: Annotated[str, Meta(pattern=r"^[0-9]{6}$")]  # hhmmss at the terminal
    local_date: Annotated[str, Meta(pattern=r"^[0-9]{4}$")]  # MMDD at the terminal
    card: Card | None = None
    icc_data: Hex = ""  # ISO 8583 field 55: the card's EMV data, unredacted, hex
    pin_block: Annotated[str, Meta(pattern=r"^(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})$")] | None = None


class Authorization(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """The host's answer to a create or a lookup: the same document every time for one key."""

    key: Key
    response_code: Annotated[str, Meta(min_length=2, max_length=2)]  # "00" approved; ISO 8583 field 39 codes
    approval_code: Annotated[str, Meta(min_length=1, max_length=6)] | None = None
    icc_data: Hex = ""  # the issuer's EMV data (91, 71, 72), hex
    stan: Stan | None = None
    rrn: Rrn | None = None
    reversed: bool = False


class ReversalRequest(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """POST /v1/authorizations/{key}/reversal, with `Idempotency-Key: <key>.reversal`. No card data: the host
    finds what to undo by the key in the path."""

    type: Literal["purchase", "refund"]  # of the authorization being reversed
    amount: Amount
    currency: Digits3
    merchant_id: Annotated[str, Meta(min_length=1, max_length=15)]
    terminal_id: Annotated[str, Meta(min_length=1, max_length=8)]
    stan: Stan  # the original's
    rrn: Rrn  # ours for this message (the original's, for a timeout reversal)
    transmitted_at: Mmddhhmmss  # the reversal's own
    original_transmitted_at: Mmddhhmmss


class Reversal(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    key: Key  # the reversal's idempotency key
    authorization_key: Key
    response_code: Annotated[str, Meta(min_length=2, max_length=2)]  # "00" reversed, "25" never authorized
    reversed: bool


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 application/problem+json."""

    type: str
    title: str
    status: int
    detail: str = ""
    field: str | None = None


class TokenAnswer(msgspec.Struct, kw_only=True):
    """RFC 6749 section 5.1 (what we read of it)."""

    access_token: Annotated[str, Meta(min_length=1, max_length=4096)]
    token_type: str
    expires_in: Annotated[int, Meta(ge=1)] | None = None
    scope: str | None = None


class OAuthError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 6749 section 5.2."""

    error: str
    error_description: str | None = None


def reversal_key(authorization_key: str) -> str:
    """The reversal's own idempotency key: one reversal per authorization, however often it is resent."""
    return f"{authorization_key}.reversal"


def authorization_path(key: str) -> str:
    return f"{AUTHORIZATIONS}/{key}"


def reversal_path(key: str) -> str:
    return f"{AUTHORIZATIONS}/{key}/reversal"


def _type_of(request: AcquirerRequest) -> Literal["purchase", "refund"]:
    return "refund" if request.kind is MessageKind.REFUND else "purchase"


def authorization_request(request: AcquirerRequest) -> AuthorizationRequest:
    """Our request as the host takes it. Raises ValueError naming a field (never its value) if it does not fit."""
    card = None
    if request.pan or request.expiry or request.pan_sequence or request.track2:
        card = Card(
            pan=request.pan,
            expiry=request.expiry,
            sequence_number=request.pan_sequence.zfill(3) if request.pan_sequence else None,
            track2=request.track2,
        )
    doc = AuthorizationRequest(
        type=_type_of(request),
        amount=request.amount,
        currency=request.currency,
        merchant_id=request.merchant_id,
        terminal_id=request.terminal_id,
        pos_entry_mode=request.pos_entry_mode.zfill(3),
        stan=request.stan,
        rrn=request.rrn,
        transmitted_at=request.transmission_datetime,
        local_time=request.local_time,
        local_date=request.local_date,
        card=card,
        icc_data=request.icc_data.hex().upper(),
        pin_block=request.pin_block.hex().upper() if request.pin_block else None,
    )
    return _validated(doc, AuthorizationRequest)


def reversal_request(request: AcquirerRequest) -> ReversalRequest:
    """The reversal document for a REVERSAL request (its `original` names what it undoes)."""
    o = request.original
    if request.kind is not MessageKind.REVERSAL or o is None:
        raise ValueError("original: a reversal needs the original's data")
    refund = o.processing_code.startswith("20")
    doc = ReversalRequest(
        type="refund" if refund else "purchase",
        amount=request.amount,
        currency=request.currency,
        merchant_id=request.merchant_id,
        terminal_id=request.terminal_id,
        stan=o.stan,
        rrn=request.rrn,
        transmitted_at=request.transmission_datetime,
        original_transmitted_at=o.transmission_datetime,
    )
    return _validated(doc, ReversalRequest)


def _validated(doc: _T, kind: type[_T]) -> _T:
    # The host validates with the same structs: what it would refuse as 422 is refused here, unsent. msgspec's
    # message ("Expected `str` matching regex ... - at `$.card.pan`") names a field and a rule, never a value.
    try:
        return msgspec.json.decode(msgspec.json.encode(doc), type=kind)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None


def acquirer_response(answer: Authorization) -> AcquirerResponse:
    return AcquirerResponse(
        response_code=answer.response_code,
        authorisation_code=answer.approval_code,
        icc_data=bytes.fromhex(answer.icc_data) if answer.icc_data else b"",
        rrn=answer.rrn,
        stan=answer.stan,
    )


def request_key(request: AcquirerRequest) -> str:
    """The request's Idempotency-Key: its transaction key; for a request made before keys existed, one derived
    the same way from what identifies it (stable across resends and recoveries alike)."""
    if request.key:
        return request.key
    ident = f"{request.terminal_id}\0{request.stan}\0{request.transmission_datetime}\0{request.rrn}"
    return base64.urlsafe_b64encode(hashlib.sha256(ident.encode()).digest()).rstrip(b"=").decode()


def reversal_for(request: AcquirerRequest) -> AcquirerRequest:
    """The reversal of `request` (itself if it already is one), as the SAF queue stores it: it keeps STAN, RRN
    and terminal, quotes the original (and its key), and carries no PIN block."""
    if request.kind is MessageKind.REVERSAL:
        return msgspec.structs.replace(request, pin_block=None) if request.pin_block else request
    refund = request.kind is MessageKind.REFUND
    return msgspec.structs.replace(
        request,
        kind=MessageKind.REVERSAL,
        transmission_datetime=datetime.now(UTC).strftime("%m%d%H%M%S"),
        pin_block=None,
        original=OriginalData(
            mti=request.mti,
            stan=request.stan,
            transmission_datetime=request.transmission_datetime,
            processing_code=spec.PROCESSING_REFUND if refund else spec.PROCESSING_PURCHASE,
            key=request_key(request),
        ),
    )


def authorization_key_of(reversal: AcquirerRequest) -> str:
    """The key of the authorization a reversal undoes (its original's transaction key)."""
    o = reversal.original
    assert o is not None
    if o.key:
        return o.key
    original = msgspec.structs.replace(reversal, transmission_datetime=o.transmission_datetime, key="")
    return request_key(original)
