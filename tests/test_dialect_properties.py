"""Property: over the contract's own bounds (and just past them), a request that decodes builds an acquirer
message that encodes, and one whose values the dialect cannot carry is refused at decode time, naming the field.

The referee is independent of the code under test: pyiso8583 with the field table of docs/iso8583.md as
transcribed by tests/iso_peer.py, plus that table's formats (digits, printable ASCII, track 2 per ISO/IEC 7813).
Requests are built without the contract's checks (msgspec Structs do not validate on construction) so the
referee judges the values themselves; then the real decode (the route's) must agree with its verdict.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import iso8583
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cloudlayer import emv
from cloudlayer.acquirer.codec import encode
from cloudlayer.acquirer.messages import build_request
from cloudlayer.acquirer.types import OriginalData
from cloudlayer.http.problems import Problem
from cloudlayer.transactions.decoding import decode, parse_emv
from cloudlayer.transactions.mapping import build_acquirer_request
from cloudlayer.transactions.models import TransactionRequest, TransactionType
from iso_peer import PEER_SPEC

ACQUIRER_ID = "123456"

# docs/iso8583.md, "format" column, for the fields a request carries.
_FORMATS = {
    "2": r"[0-9]{1,19}",
    "3": r"[0-9]{6}",
    "4": r"[0-9]{12}",
    "7": r"[0-9]{10}",
    "11": r"[0-9]{6}",
    "12": r"[0-9]{6}",
    "13": r"[0-9]{4}",
    "14": r"[0-9]{4}",
    "22": r"[0-9]{3}",
    "23": r"[0-9]{3}",
    "32": r"[0-9]{1,11}",
    # ISO/IEC 7813 track 2 as EMV 57 carries it: PAN, D, YYMM, service code, discretionary data; <= 37.
    "35": r"(?=.{1,37}$)[0-9]{1,19}D[0-9]{4}[0-9]{3}[0-9]*",
    "37": r"[\x20-\x7e]{12}",
    "41": r"[\x20-\x7e]{8}",
    "42": r"[\x20-\x7e]{15}",
    "49": r"[0-9]{3}",
    "52": r"[0-9A-F]{16}",
    "55": r"(?:[0-9A-F]{2}){1,999}",
    "90": r"[0-9]{42}",
}
# Which request field feeds which ISO field (the referee's own reading of docs/iso8583.md).
_SOURCE = {
    "2": "emvData",
    "14": "emvData",
    "23": "emvData",
    "35": "emvData",
    "55": "emvData",
    "4": "amount",
    "22": "posEntryMode",
    "41": "terminalId",
    "42": "merchantId",
    "49": "currency",
    "52": "pinBlock",
}


# A value of each request field that the dialect certainly carries: the referee puts it in place of a field it
# found uncarriable, to look for more.
_SAFE = {
    "amount": 1000,
    "currency": "826",
    "merchantId": "MERCHANT0000001",
    "terminalId": "TERM0001",
    "posEntryMode": "071",
    "pinBlock": None,
    "emvData": "9F02060000000010009F270180",
}


def referee(body: dict[str, Any]) -> set[str]:
    """The request fields whose values the dialect cannot carry (empty: it carries them all)."""
    body, found = dict(body), set()
    while True:
        field = _first_uncarriable(body)
        if field is None:
            return found
        assert field not in found, field
        found.add(field)
        body[field] = _SAFE[field]


def _first_uncarriable(body: dict[str, Any]) -> str | None:
    pin = body.get("pinBlock")
    if pin is not None and not re.fullmatch(_FORMATS["52"], pin.upper()):
        return "pinBlock"  # field 52 is 8 bytes whether or not this message carries it (a reversal does not)
    icc = bytes.fromhex(body["emvData"]) if body.get("emvData") else b""
    card = emv.card_data(icc) if icc else None
    raw = TransactionRequest(
        transaction_id=body["transactionId"],
        transaction_type=TransactionType(body["transactionType"]),
        amount=body["amount"],
        currency=body["currency"],
        merchant_id=body["merchantId"],
        terminal_id=body["terminalId"],
        pos_entry_mode=body["posEntryMode"],
        emv_data=body.get("emvData"),
        original_transaction_id=body.get("originalTransactionId"),
        pin_block=pin,
        local_date_time=body.get("localDateTime"),
    )
    original = OriginalData(mti="0200", stan="000001", transmission_datetime="1126120000")
    req = build_acquirer_request(raw, icc, card, stan="000002", rrn="633000000002", now=1.8e9, original=original)
    mti = "0400" if raw.transaction_type is TransactionType.REVERSAL else "0200"
    try:
        payload = encode(build_request(req, mti, ACQUIRER_ID))
    except ValueError as e:
        number = re.search(r"field (\d+)", str(e))
        assert number, str(e)
        return _SOURCE[number.group(1)]
    doc, _ = iso8583.decode(payload, PEER_SPEC)
    for number, value in sorted(doc.items()):
        if number in _FORMATS and not re.fullmatch(_FORMATS[number], value):
            return _SOURCE[number]
    return None


def check_mapping(body: dict[str, Any], payload: bytes) -> None:
    """What reached the message is what the document says each request field becomes."""
    doc, _ = iso8583.decode(payload, PEER_SPEC)
    mode = body["posEntryMode"]
    assert doc["22"] == (mode + "0" if len(mode) == 2 else mode)
    assert doc["4"] == f"{body['amount']:012d}"
    assert doc["41"] == body["terminalId"].ljust(8) and doc["42"] == body["merchantId"].ljust(15)
    assert doc["49"] == body["currency"]
    if body["transactionType"] != "REVERSAL" and body.get("pinBlock"):
        assert doc["52"] == body["pinBlock"].upper()
    if body.get("emvData"):
        assert doc["55"] == body["emvData"].upper()
    for number, value in doc.items():
        if number in _FORMATS:
            assert re.fullmatch(_FORMATS[number], value), number


# ---- requests over the contract's bounds -------------------------------------------------------------------
# Each field is inside its bounds most of the time and just past them (or in a form the dialect cannot carry)
# now and then, so that requests with none, one or several uncarriable values are all common.

DIGITS = string.digits
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def digits(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(DIGITS), min_size=min_size, max_size=max_size)


def mostly(inside: st.SearchStrategy[Any], outside: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`inside` nine times in ten, else `outside`."""
    return st.integers(0, 9).flatmap(lambda n: outside if n == 0 else inside)


def bcd(s: str) -> bytes:
    return bytes.fromhex(s + "F" * (len(s) % 2))


@st.composite
def track_2(draw: st.DrawFn, pan: str) -> bytes:
    tail = draw(mostly(digits(7, 37 - len(pan) - 1), digits(0, 30)))  # YYMM + service code + discretionary
    track2 = pan + "D" + tail
    # An ASCII track 2 ('=' separator) is what some kernels hand over instead of EMV's nibbles.
    return draw(mostly(st.just(bcd(track2)), st.just(track2.replace("D", "=").encode())))


@st.composite
def field_55(draw: st.DrawFn) -> str:
    items: list[tuple[str, emv.EncodableValue]] = [("9F02", b"\x00\x00\x00\x00\x10\x00")]
    pan = draw(mostly(digits(12, 19), digits(20, 22)))
    if draw(st.booleans()):
        items.append(("5A", bcd(pan)))
    if draw(st.booleans()):
        items.append(("57", draw(track_2(pan[:19] if draw(st.booleans()) else pan))))
    if draw(st.booleans()):
        items.append(("5F24", bytes.fromhex(draw(digits(6, 6)))))
    if draw(st.booleans()):
        items.append(("5F34", bytes.fromhex(draw(digits(2, 2)))))
    data = emv.encode(items)
    # Sometimes pad to around field 55's limit (999 bytes) and the old contract's (1024).
    target = draw(st.sampled_from([0, 0, 0, 0, 990, 998, 999, 999, 1000, 1001, 1024]))
    if target > len(data) + 5:
        data += emv.encode([("9F7C", b"\x00" * (target - len(data) - 5))])
    return data.hex() if draw(st.booleans()) else data.hex().upper()


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["PURCHASE", "REFUND", "REVERSAL"]))
    body: dict[str, Any] = {
        "transactionId": draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)),
        "transactionType": kind,
        "amount": draw(mostly(st.integers(1, 10**12 - 1), st.sampled_from([10**12, 10**12 + 1]))),
        "currency": draw(digits(3, 3)),
        "merchantId": draw(mostly(st.text(PRINTABLE, min_size=1, max_size=15), st.sampled_from(["M" * 16, "MÉRCH"]))),
        "terminalId": draw(mostly(st.text(PRINTABLE, min_size=1, max_size=8), st.sampled_from(["T" * 9, "TERMé"]))),
        "posEntryMode": draw(mostly(digits(2, 3), st.sampled_from(["7", "0711"]))),
        "emvData": draw(field_55()),
    }
    if kind == "REVERSAL":
        body["originalTransactionId"] = "orig-1"
    if draw(st.booleans()):
        hex16 = st.text(st.sampled_from("0123456789abcdefABCDEF"), min_size=16, max_size=16)
        body["pinBlock"] = draw(mostly(hex16, st.builds(lambda a, b: a + b, hex16, hex16)))  # format 4: 16 bytes
    if draw(st.booleans()):
        body["localDateTime"] = draw(st.sampled_from(["2026-11-26T14:05:09", "2028-02-29T00:00:00.5"]))
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=request_bodies())
def test_a_request_decodes_if_and_only_if_the_dialect_carries_it(body: dict[str, Any]) -> None:
    uncarriable = referee(body)
    try:
        req = decode(json.dumps(body).encode())
        icc, card = parse_emv(req)
    except Problem as p:
        event(f"refused: {p.field}")
        assert p.status == 422 and p.field is not None, p.detail
        assert uncarriable, f"refused although the dialect carries it: {p.detail}"
        assert p.field in uncarriable, (p.detail, uncarriable)
        return
    event("accepted")
    assert not uncarriable, f"accepted although the dialect cannot carry {sorted(uncarriable)}"
    original = OriginalData(mti="0200", stan="000001", transmission_datetime="1126120000")
    acq = build_acquirer_request(req, icc, card, stan="000002", rrn="633000000002", now=1.8e9, original=original)
    mti = "0400" if req.transaction_type is TransactionType.REVERSAL else "0200"
    check_mapping(body, encode(build_request(acq, mti, ACQUIRER_ID)))
