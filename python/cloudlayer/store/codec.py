"""Record encoding, key layout and the checks that keep garbage (and card data) out of the store.

Keys: records are keyed `client_id NUL transaction_id` (UTF-8). Index keys are built here too, so the
layout lives in one place. Time index keys start with big-endian microseconds so a cursor walks them
in time order.
"""

from __future__ import annotations

import re
import struct
from typing import TypeVar

import msgspec

from .types import Completion, Event, InvalidRecord, State, TransactionRecord

T = TypeVar("T")

MAX_ID_BYTES = 128  # client_id, transaction_id (LMDB keys are at most 511 bytes; indexes add to them)
MAX_FIELD_CHARS = 256  # every other string field
MAX_BLOB_BYTES = 32_768  # emv_redacted, sealed_request, response_body
MAX_RECORD_BYTES = 128 * 1024
MAX_EVENTS = 256
MAX_AMOUNT = 10**12 - 1  # ISO 8583 field 4 holds 12 digits
CARD_KEY_BYTES = 32  # cloudlayer.cardkey: HMAC-SHA256

_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(TransactionRecord)
_event_decoder = msgspec.msgpack.Decoder(list[Event])
_completion_decoder = msgspec.msgpack.Decoder(Completion)
_TIME = struct.Struct(">Q")
_DIGITS = re.compile(r"\d")
_RECORD_FIELDS = TransactionRecord.__struct_fields__  # msgspec.structs.fields() re-evaluates annotations


def record_key(client_id: str, transaction_id: str) -> bytes:
    return client_id.encode() + b"\0" + transaction_id.encode()


def split_key(key: bytes) -> tuple[str, str]:
    client, _, txn = bytes(key).partition(b"\0")
    return client.decode(), txn.decode()


def terminal_stan_key(terminal_id: str, stan: str) -> bytes:
    return terminal_id.encode() + b"\0" + stan.encode()


def card_index_key(client_id: str, card_key: bytes) -> bytes:
    """by_card's key: per client, whatever the card key's own derivation (tenants never meet in the index)."""
    return client_id.encode() + b"\0" + card_key


def time_key(t: float, key: bytes = b"") -> bytes:
    return _TIME.pack(max(0, int(t * 1_000_000))) + key


def time_of(tkey: bytes) -> float:
    return float(_TIME.unpack_from(tkey)[0]) / 1_000_000


def encode(record: TransactionRecord) -> bytes:
    return _encoder.encode(record)


def decode(raw: bytes) -> TransactionRecord:
    return _record_decoder.decode(raw)


def _check_id(name: str, value: str) -> None:
    raw = value.encode()
    if not raw or len(raw) > MAX_ID_BYTES or b"\0" in raw or not value.isprintable():
        raise InvalidRecord(f"{name}: must be 1-{MAX_ID_BYTES} bytes of printable text")


def _check_events(events: list[Event] | tuple[Event, ...]) -> None:
    if len(events) > MAX_EVENTS:
        raise InvalidRecord(f"events: at most {MAX_EVENTS}")
    for e in events:
        if len(e.what) > MAX_FIELD_CHARS or len(e.detail) > MAX_FIELD_CHARS * 4:
            raise InvalidRecord("events: `what` or `detail` too long")


def _retyped(value: object, decoder: msgspec.msgpack.Decoder[T], what: str) -> T:
    """Round-trip through msgpack so every field is checked against its declared type."""
    try:
        return decoder.decode(_encoder.encode(value))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError, OverflowError) as e:
        # msgspec names the path ("Expected `int`, got `str` - at `$.amount`") and never the value.
        raise InvalidRecord(f"{what}: {e}") from None


def validate_claim(record: object) -> TransactionRecord:
    """A checked copy of a record to claim, or InvalidRecord."""
    if not isinstance(record, TransactionRecord):
        raise InvalidRecord("claim: expected a TransactionRecord")
    rec = _retyped(record, _record_decoder, "record")
    _check_id("client_id", rec.client_id)
    _check_id("transaction_id", rec.transaction_id)
    if len(rec.fingerprint) != 32:
        raise InvalidRecord("fingerprint: must be 32 bytes")
    if len(rec.card_key) not in (0, CARD_KEY_BYTES):
        raise InvalidRecord(f"card_key: must be empty or {CARD_KEY_BYTES} bytes")
    if rec.reversed_by:
        raise InvalidRecord("reversed_by: must be empty on a new claim")
    if rec.state is not State.PENDING:
        raise InvalidRecord("state: a claim must be PENDING")
    if not 0 <= rec.amount <= MAX_AMOUNT:
        raise InvalidRecord(f"amount: must be 0-{MAX_AMOUNT}")
    for name in _RECORD_FIELDS:
        v = getattr(rec, name)
        if isinstance(v, str) and len(v) > MAX_FIELD_CHARS:
            raise InvalidRecord(f"{name}: at most {MAX_FIELD_CHARS} characters")
        if isinstance(v, bytes) and len(v) > MAX_BLOB_BYTES:
            raise InvalidRecord(f"{name}: at most {MAX_BLOB_BYTES} bytes")
    for name in ("stan", "rrn", "terminal_id"):
        if "\0" in getattr(rec, name):
            raise InvalidRecord(f"{name}: must not contain NUL")
    # PCI DSS guard: a "masked" PAN with more than 6+4 digits is a full PAN and must never be stored.
    if rec.masked_pan is not None and len(_DIGITS.findall(rec.masked_pan)) > 10:
        raise InvalidRecord("masked_pan: more than 6+4 digits visible")
    if rec.replays or rec.response_body or rec.completed_at:
        raise InvalidRecord("claim: response fields must be empty on a new claim")
    _check_events(rec.events)
    if len(encode(rec)) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record: larger than {MAX_RECORD_BYTES} bytes encoded")
    return rec


def validate_completion(completion: object) -> Completion:
    if not isinstance(completion, Completion):
        raise InvalidRecord("complete: expected a Completion")
    c = _retyped(completion, _completion_decoder, "completion")
    if not 100 <= c.response_status <= 599:
        raise InvalidRecord("response_status: must be an HTTP status")
    if len(c.response_body) > MAX_BLOB_BYTES:
        raise InvalidRecord(f"response_body: at most {MAX_BLOB_BYTES} bytes")
    for name in ("response_code", "outcome", "authorisation_code"):
        if len(getattr(c, name) or "") > MAX_FIELD_CHARS:
            raise InvalidRecord(f"{name}: at most {MAX_FIELD_CHARS} characters")
    _check_events(c.events)
    return c


def validate_events(events: tuple[object, ...]) -> list[Event]:
    if not all(isinstance(e, Event) for e in events):
        raise InvalidRecord("events: expected Event values")
    checked = _retyped(list(events), _event_decoder, "events")
    _check_events(checked)
    return checked
