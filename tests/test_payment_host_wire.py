"""The payment-host API's wire format: the committed OpenAPI document is what the structs generate, and our
requests map onto it (and its answers onto ours) without losing a field or leaking a value into an error."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from cloudlayer.acquirer.payment_host import openapi, wire
from cloudlayer.acquirer.types import AcquirerRequest, MessageKind, OriginalData

REPO = Path(__file__).resolve().parent.parent
PAN = "4761739001010119"

REQUEST = AcquirerRequest(
    kind=MessageKind.PURCHASE,
    stan="002001",
    rrn="633000002001",
    transmission_datetime="1126140509",
    local_time="140509",
    local_date="1126",
    amount=1000,
    currency="826",
    terminal_id="TERM0001",
    merchant_id="MERCHANT0000001",
    pos_entry_mode="71",
    pan=PAN,
    expiry="2912",
    pan_sequence="1",
    track2=PAN + "D29122011143804489",
    icc_data=bytes.fromhex("9F02060000000010009A03261126"),
    pin_block=bytes.fromhex("0123456789ABCDEF"),
    key="k" * 43,
)


def test_the_committed_openapi_document_is_the_generated_one() -> None:
    committed = (REPO / "docs" / "payment-host-openapi.json").read_text(encoding="utf-8")
    assert committed == openapi.render(), "regenerate: python -m cloudlayer.acquirer.payment_host.openapi"
    doc = json.loads(committed)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/v1/authorizations",
        "/v1/authorizations/{key}",
        "/v1/authorizations/{key}/reversal",
        "/v1/ping",
        "/oauth/token",
    }


def test_an_authorization_request_carries_every_field_the_iso_message_would() -> None:
    doc = msgspec.json.decode(msgspec.json.encode(wire.authorization_request(REQUEST)))
    assert doc == {
        "type": "purchase",
        "amount": 1000,
        "currency": "826",
        "merchantId": "MERCHANT0000001",
        "terminalId": "TERM0001",
        "posEntryMode": "071",
        "stan": "002001",
        "rrn": "633000002001",
        "transmittedAt": "1126140509",
        "localTime": "140509",
        "localDate": "1126",
        "card": {"pan": PAN, "expiry": "2912", "sequenceNumber": "001", "track2": PAN + "D29122011143804489"},
        "iccData": "9F02060000000010009A03261126",
        "pinBlock": "0123456789ABCDEF",
    }
    refund = msgspec.structs.replace(
        REQUEST,
        kind=MessageKind.REFUND,
        pan=None,
        expiry=None,
        pan_sequence=None,
        track2=None,
        pin_block=None,
        icc_data=b"",
    )
    assert msgspec.json.decode(msgspec.json.encode(wire.authorization_request(refund))).keys() == {
        "type",
        "amount",
        "currency",
        "merchantId",
        "terminalId",
        "posEntryMode",
        "stan",
        "rrn",
        "transmittedAt",
        "localTime",
        "localDate",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pan": "4761A39001010119"}, "card.pan"),
        ({"track2": "4761739001010119X2912"}, "card.track2"),
        ({"amount": 10**12}, "amount"),
        ({"pos_entry_mode": "7X"}, "posEntryMode"),
        ({"terminal_id": "TERMINAL-TOO-LONG"}, "terminalId"),
        ({"stan": "12"}, "stan"),
    ],
)
def test_a_request_the_host_would_refuse_is_refused_before_sending_naming_the_field_not_the_value(
    change: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as e:
        wire.authorization_request(msgspec.structs.replace(REQUEST, **change))
    assert "4761A3" not in str(e.value) and "TERMINAL-TOO-LONG" not in str(e.value)


def test_a_reversal_names_the_original_and_carries_no_card_data() -> None:
    original = OriginalData(
        mti="", stan="002001", transmission_datetime="1126140509", processing_code="200000", key="k" * 43
    )
    reversal = msgspec.structs.replace(
        REQUEST, kind=MessageKind.REVERSAL, transmission_datetime="1126140600", original=original, stan="002001"
    )
    doc = msgspec.json.decode(msgspec.json.encode(wire.reversal_request(reversal)))
    assert doc["type"] == "refund" and doc["stan"] == "002001" and doc["originalTransmittedAt"] == "1126140509"
    assert PAN not in json.dumps(doc) and "card" not in doc and "iccData" not in doc
    with pytest.raises(ValueError, match="original"):
        wire.reversal_request(REQUEST)


def test_an_answer_maps_like_an_0110() -> None:
    answer = wire.Authorization(
        key="k" * 43,
        response_code="00",
        approval_code="T81GIJ",
        icc_data="910A1A2B3C4D5E6F70800012",
        stan="002001",
        rrn="633000002001",
    )
    resp = wire.acquirer_response(answer)
    assert (resp.response_code, resp.authorisation_code, resp.icc_data.hex().upper(), resp.rrn, resp.stan) == (
        "00",
        "T81GIJ",
        "910A1A2B3C4D5E6F70800012",
        "633000002001",
        "002001",
    )
    assert wire.reversal_key("k" * 43) == "k" * 43 + ".reversal"
