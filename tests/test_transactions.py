"""The transaction endpoint over real sockets, against the real simulator, with the real LMDB store:
exactly once under resubmission, bad input refused with problem+json and nothing stored."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer import emv
from cloudlayer.samples import sample_purchase
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("host"), simulator, acquirer_timeout=1.5, metrics=True)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def token(host: Host) -> str:
    return host.token()


def post(host: Host, token: str, body: Any, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(host.url + "/transaction/process", content=content, headers=headers, timeout=30, **kw)


def txn_show(host: Host, transaction_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDLAYER, "txn", "show", transaction_id, "--json", "--config", str(host.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_approval_carries_issuer_emv_and_replays_byte_identical(
    host: Host, token: str, simulator: SimulatorProcess
) -> None:
    body = sample_purchase("approve-1", amount=4242)  # 4242: the simulator adds an issuer script (71)
    first = post(host, token, body)
    assert first.status_code == 200, first.text
    doc = first.json()
    assert doc["approved"] is True and doc["responseCode"] == "00"
    assert len(doc["authorisationCode"]) == 6 and len(doc["rrn"]) == 12 and len(doc["stan"]) == 6
    tags = dict(emv.decode(doc["emvData"]))
    assert tags["8A"] == b"00" and "91" in tags and "71" in tags
    assert "Idempotent-Replayed" not in first.headers
    assert "acquirer;dur=" in first.headers["Server-Timing"]

    again = post(host, token, {**body, "somethingNew": "unknown fields are tolerated"})
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    entry = simulator.entry(body["terminalId"], doc["stan"])
    assert entry["authorizations"] == 1 and entry["reversals"] == 0


def test_decline_is_200_with_8a(host: Host, token: str) -> None:
    resp = post(host, token, sample_purchase("decline-51", amount=1051))
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["approved"] is False and doc["responseCode"] == "51"
    assert dict(emv.decode(doc["emvData"]))["8A"] == b"51"
    assert doc["message"] == "Insufficient funds"


def test_same_id_different_content_is_409_and_never_sent(host: Host, token: str, simulator: SimulatorProcess) -> None:
    body = sample_purchase("conflict-1", amount=2000)
    assert post(host, token, body).status_code == 200
    before = simulator.ledger()["totals"]["messages"]
    clash = post(host, token, {**body, "amount": 2100})
    assert clash.status_code == 409
    assert clash.headers["Content-Type"] == "application/problem+json"
    assert clash.json()["field"] == "transactionId"
    assert simulator.ledger()["totals"]["messages"] == before


def test_key_order_and_spacing_do_not_make_a_new_request(host: Host, token: str) -> None:
    body = sample_purchase("spacing-1", amount=3000)
    first = post(host, token, body)
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=3).encode()
    again = post(host, token, reordered)
    assert again.status_code == 200 and again.content == first.content


def test_card_data_never_stored(host: Host, token: str) -> None:
    body = sample_purchase("pci-1", amount=1000)
    assert post(host, token, body).status_code == 200
    shown = txn_show(host, "pci-1")
    assert shown.returncode == 0, shown.stderr
    assert "4761739001010119" not in shown.stdout
    assert "476173" in shown.stdout  # 6+4 masked PAN kept for investigations
    for path in Path(host.config.parent, "var").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"4761739001010119" not in data, path
            assert bytes.fromhex("4761739001010119") not in data, path
            assert b"D27122011143804400000F" not in data, path


BAD_INPUTS: list[tuple[str, bytes, dict[str, str], int, str | None]] = [
    ("not json", b"{not json", {}, 400, None),
    ("truncated", b'{"transactionId": "x"', {}, 400, None),
    ("array", b"[]", {}, 422, None),
    ("missing type", json.dumps({"transactionId": "bad-1"}).encode(), {}, 422, "transactionType"),
    (
        "bad enum",
        json.dumps({**sample_purchase("bad-2"), "transactionType": "STEAL"}).encode(),
        {},
        422,
        "transactionType",
    ),
    ("amount zero", json.dumps({**sample_purchase("bad-3"), "amount": 0}).encode(), {}, 422, "amount"),
    ("amount huge", json.dumps({**sample_purchase("bad-4"), "amount": 10**13}).encode(), {}, 422, "amount"),
    ("amount bool", json.dumps({**sample_purchase("bad-5"), "amount": True}).encode(), {}, 422, "amount"),
    ("amount string", json.dumps({**sample_purchase("bad-6"), "amount": "10"}).encode(), {}, 422, "amount"),
    ("currency", json.dumps({**sample_purchase("bad-7"), "currency": "GBP"}).encode(), {}, 422, "currency"),
    ("terminal long", json.dumps({**sample_purchase("bad-8"), "terminalId": "T" * 9}).encode(), {}, 422, "terminalId"),
    ("odd hex", json.dumps({**sample_purchase("bad-9"), "emvData": "9F0"}).encode(), {}, 422, "emvData"),
    ("non hex", json.dumps({**sample_purchase("bad-10"), "emvData": "ZZ"}).encode(), {}, 422, "emvData"),
    ("bad tlv", json.dumps({**sample_purchase("bad-11"), "emvData": "9F0206000000"}).encode(), {}, 422, "emvData"),
    (
        "no emv",
        json.dumps({k: v for k, v in sample_purchase("bad-12").items() if k != "emvData"}).encode(),
        {},
        422,
        "emvData",
    ),
    ("pin block", json.dumps({**sample_purchase("bad-13"), "pinBlock": "12"}).encode(), {}, 422, "pinBlock"),
    (
        "date",
        json.dumps({**sample_purchase("bad-14"), "localDateTime": "yesterday"}).encode(),
        {},
        422,
        "localDateTime",
    ),
    ("null id", json.dumps({**sample_purchase("bad-15"), "transactionId": None}).encode(), {}, 422, "transactionId"),
    (
        "reversal unknown",
        json.dumps(
            {**sample_purchase("bad-16"), "transactionType": "REVERSAL", "originalTransactionId": "never-seen"}
        ).encode(),
        {},
        422,
        "originalTransactionId",
    ),
    (
        "reversal without original",
        json.dumps({**sample_purchase("bad-17"), "transactionType": "REVERSAL"}).encode(),
        {},
        422,
        "originalTransactionId",
    ),
    (
        "purchase with original",
        json.dumps({**sample_purchase("bad-18"), "originalTransactionId": "x"}).encode(),
        {},
        422,
        "originalTransactionId",
    ),
    ("content type", json.dumps(sample_purchase("bad-19")).encode(), {"Content-Type": "text/plain"}, 415, None),
    ("too large", json.dumps({**sample_purchase("bad-20"), "pad": "x" * 40_000}).encode(), {}, 413, None),
    (
        "newline id",
        json.dumps({**sample_purchase("bad-22"), "terminalId": "TERM001\n"}).encode(),
        {},
        422,
        "terminalId",
    ),
    (
        "month 13",
        json.dumps({**sample_purchase("bad-23"), "localDateTime": "2026-13-01T10:00:00"}).encode(),
        {},
        422,
        "localDateTime",
    ),
    (
        "date tail",
        json.dumps({**sample_purchase("bad-24"), "localDateTime": "2026-11-01T10:00:00junk"}).encode(),
        {},
        422,
        "localDateTime",
    ),
    (
        "feb 30",
        json.dumps({**sample_purchase("bad-25"), "localDateTime": "2026-02-30T10:00:00"}).encode(),
        {},
        422,
        "localDateTime",
    ),
    ("deep nesting", b'{"transactionId":"bad-21","x":' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, None),
]


@pytest.mark.parametrize(("name", "body", "headers", "status", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_named_problem_and_stores_nothing(
    host: Host, token: str, name: str, body: bytes, headers: dict[str, str], status: int, field: str | None
) -> None:
    resp = post(host, token, body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc = resp.json()
    assert doc["status"] == status and doc["title"] and doc["detail"] and doc["type"].startswith("/problems/")
    if field is not None:
        assert doc["field"] == field
        assert field in doc["detail"]
    try:
        doc_in = json.loads(body)
    except (ValueError, RecursionError):
        doc_in = None
    tid = doc_in.get("transactionId") if isinstance(doc_in, dict) else None
    if isinstance(tid, str):
        assert txn_show(host, tid).returncode != 0  # nothing stored for it


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        (None, 401, None),
        ("Bearer not-a-jwt", 401, "invalid_token"),
        ("Basic Zm9vOmJhcg==", 401, None),
    ],
)
def test_bearer_required(host: Host, authorization: str | None, status: int, error: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    resp = httpx.post(
        host.url + "/transaction/process", content=json.dumps(sample_purchase("auth-1")), headers=headers, timeout=10
    )
    assert resp.status_code == status
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if error:
        assert f'error="{error}"' in resp.headers["WWW-Authenticate"]


def test_reversal_reaches_the_acquirer_once(host: Host, token: str, simulator: SimulatorProcess) -> None:
    purchase = sample_purchase("to-reverse", amount=5000)
    approved = post(host, token, purchase).json()
    assert approved["approved"]
    reversal = {
        **purchase,
        "transactionId": "rev-1",
        "transactionType": "REVERSAL",
        "originalTransactionId": "to-reverse",
    }
    answers = [post(host, token, reversal) for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["approved"] is True
    entry = simulator.entry(purchase["terminalId"], approved["stan"])
    assert entry["reversals"] == 1 and entry["reversed"] is True
    assert entry["reversal_messages"] == 1
    # A second reversal of the same original under another id is refused and never sent.
    second = post(host, token, {**reversal, "transactionId": "rev-2"})
    assert second.status_code == 422 and second.json()["type"] == "/problems/original-already-reversed"
    assert "rev-1" in second.json()["detail"]
    assert simulator.entry(purchase["terminalId"], approved["stan"])["reversal_messages"] == 1


def test_acquirer_timeout_reverses_and_declines_91(host: Host, token: str, simulator: SimulatorProcess) -> None:
    body = sample_purchase("timeout-1", amount=9999)  # the simulator never answers this amount
    resp = post(host, token, body)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["responseCode"] == "91" and doc["approved"] is False
    assert dict(emv.decode(doc["emvData"]))["8A"] == b"91"
    # The reversal is delivered from the store-and-forward queue (the simulator answers reversals).
    for _ in range(100):
        entry = simulator.ledger()["transactions"].get(f"{body['terminalId']}:{doc['stan']}")
        if entry and entry["reversed"]:
            break
        time.sleep(0.1)
    assert entry and entry["reversed"] and entry["authorizations"] == 1
    assert post(host, token, body).content == resp.content  # the stored decline replays


async def test_concurrent_duplicates_in_one_worker_authorize_once(
    host: Host, token: str, simulator: SimulatorProcess
) -> None:
    body = json.dumps(sample_purchase("burst-1", amount=6000)).encode()
    results: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            results.append(
                await client.post(
                    host.url + "/transaction/process",
                    content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
    assert {r.status_code for r in results} == {200}
    assert len({r.content for r in results}) == 1
    stan = results[0].json()["stan"]
    assert simulator.entry("TERM0001", stan)["authorizations"] == 1


def test_metrics_count_what_happened(host: Host, token: str) -> None:
    body = sample_purchase("metrics-1", amount=1000)
    post(host, token, body)
    post(host, token, body)
    post(host, token, {**body, "amount": 1100})
    post(host, token, b"{")
    httpx.post(host.url + "/transaction/process", content=b"{}", timeout=10)
    text = httpx.get(host.metrics_url, timeout=10).text

    def value(line_start: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(line_start)]
        assert lines, line_start
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    assert value("cloudlayer_replays_total") >= 1
    assert value("cloudlayer_conflicts_total") >= 1
    assert value("cloudlayer_oauth_tokens_issued_total") >= 1
    assert value('cloudlayer_oauth_token_failures_total{reason="missing_token"}') >= 1
    assert value('cloudlayer_http_requests_total{outcome="rejected",route="/transaction/process",status="400"}') >= 1
    assert value('cloudlayer_http_requests_total{outcome="replayed",route="/transaction/process",status="200"}') >= 1
    assert value("cloudlayer_acquirer_links_up") == 1
    assert "4761739001010119" not in text and "metrics-1" not in text  # no card data or ids in labels
