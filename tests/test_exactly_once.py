"""Exactly once across worker processes and crashes: the real host (2 workers), the real simulator, the
real LMDB file, and a worker SIGKILLed at each dangerous point by the test-only fault hook. Every test runs
once per connector (`connector_kind`: ISO 8583, and the HTTPS payment host with its OAuth token cache)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from connector_kinds import Acquirer, start_acquirer
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def acquirer(tmp_path: Path, connector_kind: str) -> Iterator[Acquirer]:
    # 300 ms per answer: concurrent duplicates really overlap with the first attempt.
    acq = start_acquirer(connector_kind, tmp_path / "acquirer", latency_ms=300)
    yield acq
    acq.stop()


@pytest.fixture
def simulator(acquirer: Acquirer) -> SimulatorProcess:
    """The ledger and fault switches (both simulators share them)."""
    return acquirer.simulator


def make_host(workdir: Path, acquirer: Acquirer, **kwargs: Any) -> Host:
    return Host(workdir, acquirer.simulator, extra=acquirer.host_extra(kwargs.pop("extra", None)), **kwargs)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def test_100_identical_requests_over_2_workers_authorize_once(
    tmp_path: Path, acquirer: Acquirer, simulator: SimulatorProcess
) -> None:
    host = make_host(tmp_path / "host", acquirer, workers=2)
    host.start()
    try:
        token = host.token()
        body = json.dumps(sample_purchase("storm-1", amount=7000)).encode()
        results: list[httpx.Response] = []
        # Separate connections so that both worker processes get some of them.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one() -> None:
                results.append(
                    await client.post(host.url + "/transaction/process", content=body, headers=headers(token))
                )

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(one)
        assert [r.status_code for r in results] == [200] * 100, {r.status_code for r in results}
        assert len({r.content for r in results}) == 1
        assert sum(1 for r in results if r.headers.get("Idempotent-Replayed") == "true") == 99
        doc = results[0].json()
        ledger = simulator.ledger()
        assert ledger["totals"]["authorizations"] == 1
        assert simulator.entry("TERM0001", doc["stan"])["authorizations"] == 1
        # STAN and RRN stay unique across the two workers.
        stans = set()
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            for i in range(20):
                body_i = json.dumps(sample_purchase(f"unique-{i}", amount=1000))
                r = await client.post(host.url + "/transaction/process", content=body_i, headers=headers(token))
                stans.add((r.json()["stan"], r.json()["rrn"]))
        assert len(stans) == 20
        if acquirer.kind == "http":  # one shared token per worker, for all 121 transactions
            assert simulator.tokens()["requests"] == 2  # type: ignore[attr-defined]
    finally:
        host.stop()


@pytest.mark.parametrize(
    ("crash_at", "expected_code", "authorizations", "reversed_"),
    [
        # PENDING stored, nothing sent: the acquirer never saw it, so recovery reverses (harmless) and declines.
        ("after_pending", "91", 0, None),
        # The acquirer approved, we died before storing: recovery asks (repeat) and answers the original approval.
        ("after_acquirer", "00", 1, False),
        # COMPLETED stored, reply never sent: the resubmission replays the stored answer.
        ("after_completed", "00", 1, False),
    ],
)
def test_sigkill_at_each_dangerous_point_then_resubmit(
    tmp_path: Path,
    acquirer: Acquirer,
    simulator: SimulatorProcess,
    crash_at: str,
    expected_code: str,
    authorizations: int,
    reversed_: bool | None,
) -> None:
    host = make_host(tmp_path / "host", acquirer)
    host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": crash_at})
    body = json.dumps(sample_purchase(f"crash-{crash_at}", amount=8000)).encode()
    try:
        token = host.token()
        with pytest.raises(httpx.TransportError):
            httpx.post(host.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        host.wait_replaced_worker()  # the worker died; the supervisor replaced it and serves on
        host.stop()
        host.start()  # a full restart: same store, same SAF, no fault hook
        token = host.token()
        first = httpx.post(host.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        assert first.status_code == 200, first.text
        doc = first.json()
        assert doc["responseCode"] == expected_code
        again = httpx.post(host.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
        ledger = simulator.ledger()
        assert ledger["totals"]["authorizations"] == authorizations
        entry = ledger["transactions"].get(f"TERM0001:{doc['stan']}")
        if reversed_ is None:
            assert entry is None or entry["authorizations"] == 0
        else:
            assert entry is not None and entry["reversed"] is reversed_
    finally:
        host.stop()


def test_restart_keeps_answers(tmp_path: Path, acquirer: Acquirer, simulator: SimulatorProcess) -> None:
    host = make_host(tmp_path / "host", acquirer)
    host.start()
    body = json.dumps(sample_purchase("keep-1", amount=1000)).encode()
    try:
        first = httpx.post(host.url + "/transaction/process", content=body, headers=headers(host.token()), timeout=30)
        host.stop()
        host.start()
        again = httpx.post(host.url + "/transaction/process", content=body, headers=headers(host.token()), timeout=30)
        assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
        assert simulator.ledger()["totals"]["authorizations"] == 1
    finally:
        host.stop()


def test_orphaned_reversal_with_unknown_outcome_is_stored_for_forwarding_not_declined(
    tmp_path: Path, acquirer: Acquirer, simulator: SimulatorProcess
) -> None:
    """A reversal whose worker died before sending, recovered while the acquirer's answer is lost: the reversal
    is queued for forwarding (it will be applied), so the answer is 'reversed', and the original counts as
    reversed: a second reversal under another id is refused, never sent."""
    host = make_host(tmp_path / "host", acquirer, acquirer_timeout=1.0)
    purchase = sample_purchase("orig-rev", amount=4000)
    reversal = {
        **purchase,
        "transactionId": "rev-a",
        "transactionType": "REVERSAL",
        "originalTransactionId": "orig-rev",
    }
    url = "/transaction/process"
    try:
        host.start()
        approved = httpx.post(host.url + url, json=purchase, headers=headers(host.token()), timeout=30).json()
        assert approved["approved"]
        host.stop()
        host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": "after_pending"})
        token = host.token()
        with pytest.raises(httpx.TransportError):
            httpx.post(host.url + url, json=reversal, headers=headers(token), timeout=30)
        host.wait_replaced_worker()
        simulator.set_faults(drop_next=1)  # the recovery's repeat (0401) is applied, its answer lost
        first = httpx.post(host.url + url, json=reversal, headers=headers(token), timeout=30)
        assert first.status_code == 200, first.text
        assert first.json()["approved"] is True, first.json()
        messages = simulator.entry(purchase["terminalId"], approved["stan"])["reversal_messages"]
        second = httpx.post(host.url + url, json={**reversal, "transactionId": "rev-b"}, headers=headers(token))
        assert second.status_code == 422 and second.json()["type"] == "/problems/original-already-reversed"
        assert simulator.entry(purchase["terminalId"], approved["stan"])["reversal_messages"] == messages
    finally:
        host.stop()


def test_an_error_after_the_claim_does_not_leave_the_transaction_stuck(
    tmp_path: Path, acquirer: Acquirer, simulator: SimulatorProcess
) -> None:
    """A bug or a store error after PENDING (the process lives on): that attempt gets a 500, and the
    resubmission is recovered at once (reversed and declined: nothing was sent) instead of waiting on an
    owner that is alive but will never finish."""
    host = make_host(tmp_path / "host", acquirer)
    host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": "raise:after_pending"})
    body = json.dumps(sample_purchase("stuck-1", amount=9000)).encode()
    try:
        token = host.token()
        first = httpx.post(host.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        assert first.status_code == 500
        assert first.headers["Content-Type"] == "application/problem+json"
        again = httpx.post(host.url + "/transaction/process", content=body, headers=headers(token), timeout=5)
        assert again.status_code == 200, again.text
        assert again.json()["responseCode"] == "91"
        assert simulator.ledger()["totals"]["authorizations"] == 0
    finally:
        host.stop()
