"""Garbage both ways: the HTTP connector facing every fault the payment host can show (each processed-but-lost
answer ends in a queued reversal, never a made-up approval), and the simulated host facing malformed requests
(each a 4xx naming what is wrong, never a 500, nothing processed)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.acquirer.types import AcquirerUnavailable, OutcomeUnknown
from payment_host_harness import PaymentHostFiles, PaymentHostProcess
from test_acquirer_support import wait_until
from test_payment_host_tokens import http_config, keyed, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaymentHostProcess]:
    workdir = tmp_path_factory.mktemp("payment-host-faults")
    sim = PaymentHostProcess(workdir / "sim", PaymentHostFiles(workdir / "files"))
    yield sim
    sim.stop()


@pytest.mark.parametrize(
    ("fault", "stan"),
    [({"garbage_next": 1}, 101), ({"http_error_next": 1}, 102), ({"close_next": 1}, 103), ({"drop_next": 1}, 104)],
)
async def test_a_processed_request_whose_answer_is_lost_or_garbled_is_reversed(
    host: PaymentHostProcess, tmp_path: Path, fault: dict[str, int], stan: int
) -> None:
    config = http_config(host)
    async with running(config, tmp_path) as connector:
        await trio.to_thread.run_sync(lambda: host.set_faults(**fault))
        with pytest.raises(OutcomeUnknown, match="reversal queued"):
            await connector.send(keyed(stan))
        await wait_until(lambda: connector.saf_depth == 0, within=10)
    entry = (await trio.to_thread.run_sync(host.ledger))["transactions"][f"TERM0001:{stan:06d}"]
    assert entry["authorizations"] == 1 and entry["reversed"] is True


async def test_an_unreachable_host_is_unavailable_not_unknown(host: PaymentHostProcess, tmp_path: Path) -> None:
    config = http_config(host)
    async with running(config, tmp_path) as connector:
        connector._base = "https://127.0.0.1:9"  # a port nothing listens on: connect refused
        with pytest.raises(AcquirerUnavailable):
            await connector.send(keyed(201))
        assert connector.saf_depth == 0 and not connector.ready
        assert connector.not_ready_reason == "payment host unreachable"


def _ca(host: PaymentHostProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=host.files.ca)


def _api(host: PaymentHostProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=host.base_url,
        verify=_ca(host),
        headers={"Authorization": f"Bearer {token}"},
    )


def _token(host: PaymentHostProcess) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": "cloudlayer",
        "client_secret": host.files.secret.read_text().strip(),
    }
    r = httpx.post(host.base_url + "/oauth/token", data=form, verify=_ca(host))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    return str(r.json()["access_token"])


GOOD = {
    "type": "purchase",
    "amount": 1000,
    "currency": "826",
    "merchantId": "M1",
    "terminalId": "TERMX001",
    "posEntryMode": "071",
    "stan": "000301",
    "rrn": "633000000301",
    "transmittedAt": "1126140509",
    "localTime": "140509",
    "localDate": "1126",
}


@pytest.mark.parametrize(
    ("headers", "body", "status", "named"),
    [
        ({}, GOOD, 400, "Idempotency-Key"),
        ({"Idempotency-Key": "short"}, GOOD, 400, "Idempotency-Key"),
        ({"Idempotency-Key": "K" * 43 + ".reversal"}, GOOD, 400, "Idempotency-Key"),
        ({"Idempotency-Key": "G" * 43}, b"{not json", 400, None),
        ({"Idempotency-Key": "G" * 43}, {**GOOD, "amount": -1}, 422, "amount"),
        ({"Idempotency-Key": "G" * 43}, {**GOOD, "card": {"pan": "12ab"}}, 422, "card.pan"),
        ({"Idempotency-Key": "G" * 43}, {k: v for k, v in GOOD.items() if k != "stan"}, 422, "stan"),
        ({"Idempotency-Key": "G" * 43}, [1, 2], 422, None),
    ],
)
def test_malformed_api_requests_are_4xx_problems_naming_the_field_and_process_nothing(
    host: PaymentHostProcess, headers: dict[str, str], body: Any, status: int, named: str | None
) -> None:
    before = host.ledger()["totals"]["messages"]
    with _api(host, _token(host)) as api:
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        r = api.post("/v1/authorizations", content=content, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if named:
        assert named in r.json().get("field", "") + r.json()["detail"]
    assert host.ledger()["totals"]["messages"] == before


def test_the_same_key_with_another_body_is_refused_and_a_reversal_blocks_a_late_authorization(
    host: PaymentHostProcess,
) -> None:
    key = "L" * 43
    with _api(host, _token(host)) as api:
        rev = {k: GOOD[k] for k in ("type", "amount", "currency", "merchantId", "terminalId", "rrn")}
        rev |= {"stan": "000401", "transmittedAt": "1126140600", "originalTransmittedAt": "1126140509"}
        r = api.post(f"/v1/authorizations/{key}/reversal", json=rev, headers={"Idempotency-Key": key + ".reversal"})
        assert r.status_code == 201 and r.json()["responseCode"] == "25" and r.json()["reversed"] is False
        late = api.post("/v1/authorizations", json={**GOOD, "stan": "000401"}, headers={"Idempotency-Key": key})
        assert late.status_code == 409 and late.json()["type"].endswith("authorization-reversed")
        assert api.get(f"/v1/authorizations/{key}").status_code == 404
        other = "M" * 43
        first = api.post("/v1/authorizations", json={**GOOD, "stan": "000402"}, headers={"Idempotency-Key": other})
        assert first.status_code == 201
        reused = api.post("/v1/authorizations", json={**GOOD, "stan": "000403"}, headers={"Idempotency-Key": other})
        assert reused.status_code == 422 and reused.json()["type"].endswith("idempotency-key-reused")
    assert host.entry("TERMX001", "000401")["authorizations"] == 0


@pytest.mark.parametrize(
    ("form", "content_type", "status", "error"),
    [
        (
            {"grant_type": "password", "client_id": "cloudlayer", "client_secret": "x"},
            None,
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": "client_credentials"}, None, 400, "invalid_request"),
        (
            {"grant_type": "client_credentials", "client_id": "cloudlayer", "client_secret": "wrong"},
            None,
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_assertion": "a.b.c", "client_assertion_type": "x"},
            None,
            400,
            "invalid_request",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_assertion": "garbage",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            },
            None,
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, "application/json", 400, "invalid_request"),
    ],
)
def test_malformed_token_requests_get_rfc6749_errors(
    host: PaymentHostProcess, form: dict[str, str], content_type: str | None, status: int, error: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(
        host.base_url + "/oauth/token",
        data=form,
        headers=headers,
        verify=_ca(host),
    )
    assert r.status_code == status and r.json()["error"] == error, r.text
