"""The same card tap under another transactionId (issue 16) and one effective reversal per original (issue 11),
over real sockets: the real host with 2 workers, the real simulator over TCP, the real LMDB file, a worker
SIGKILLed by the test-only fault hook. Each test checks the simulator's ledger: what the acquirer saw."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from cloudlayer.store.integrity import read_record, scan_store
from reliability.scan import scan_files
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    # 300 ms per answer: requests sent together really overlap inside the host.
    sim = SimulatorProcess(tmp_path / "sim", latency_ms=300)
    yield sim
    sim.stop()


@pytest.fixture
def host(tmp_path: Path, slow_simulator: SimulatorProcess) -> Iterator[Host]:
    h = Host(tmp_path / "host", slow_simulator, workers=2)
    h.start()
    yield h
    h.stop()
    # The store after it all: no PAN in it, in ASCII or packed BCD (nor an unkeyed hash of one), and consistent.
    store = tmp_path / "host" / "var" / "store"
    assert not scan_files(list(store.iterdir()))
    report = scan_store(store)
    assert report.ok, report.problems


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def post(host: Host, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(host.url + "/transaction/process", content=json.dumps(body), headers=headers(token), timeout=30)


async def post_together(host: Host, token: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """All at once, each on its own connection, so that both worker processes take some."""
    results: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            url = host.url + "/transaction/process"
            results.append(await client.post(url, content=json.dumps(body), headers=headers(token)))

        async with trio.open_nursery() as nursery:
            for body in bodies:
                nursery.start_soon(one, body)
    return results


def store_record(host: Host, transaction_id: str) -> Any:
    return read_record(host.workdir / "var" / "store", host.client_id, transaction_id)


def test_the_same_tap_under_a_second_transaction_id_is_409_and_sent_once(
    host: Host, slow_simulator: SimulatorProcess
) -> None:
    token = host.token()
    first = sample_purchase("tap-1", amount=1000)
    answer = post(host, token, first)
    assert answer.status_code == 200 and answer.json()["approved"] is True
    copy = {**first, "transactionId": "tap-2"}  # byte for byte the same emvData
    refused = [post(host, token, copy) for _ in range(3)]
    for r in refused:
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["type"] == "/problems/duplicate-card-transaction" and problem["field"] == "emvData"
        assert problem["existingTransactionId"] == "tap-1" and "'tap-1'" in problem["detail"]
        assert "4761739001010119" not in r.text
    assert len({r.content for r in refused}) == 1  # stable on every resubmission
    assert store_record(host, "tap-2") is None  # nothing stored for it
    ledger = slow_simulator.ledger()
    assert ledger["totals"]["authorizations"] == 1
    # Another amount or terminal does not make it another card transaction either.
    assert post(host, token, {**copy, "transactionId": "tap-3", "amount": 2000}).status_code == 409
    # The first one still replays; a new tap of the same card is a new transaction.
    assert post(host, token, first).content == answer.content
    new_tap = post(host, token, sample_purchase("tap-4", amount=1000))
    assert new_tap.status_code == 200 and new_tap.json()["approved"] is True
    assert slow_simulator.ledger()["totals"]["authorizations"] == 2


async def test_the_same_tap_at_the_same_moment_on_both_workers_is_sent_once(
    host: Host, slow_simulator: SimulatorProcess
) -> None:
    token = host.token()
    tap = sample_purchase("race-0", amount=1000)
    bodies = [{**tap, "transactionId": f"race-{i}"} for i in range(12)]
    results = await post_together(host, token, bodies)
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 11, codes
    winner = next(r for r in results if r.status_code == 200).json()["transactionId"]
    assert {r.json()["existingTransactionId"] for r in results if r.status_code == 409} == {winner}
    assert slow_simulator.ledger()["totals"]["authorizations"] == 1


def test_a_crash_between_the_claims_commit_and_the_send_recovers_as_today(
    tmp_path: Path, slow_simulator: SimulatorProcess
) -> None:
    host = Host(tmp_path / "crash-host", slow_simulator, workers=2)
    host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": "after_pending"})
    body = sample_purchase("crash-tap-1", amount=8000)
    try:
        token = host.token()
        with pytest.raises(httpx.TransportError):  # both claims committed, then SIGKILL before the send
            post(host, token, body)
        host.wait_replaced_worker()
        host.stop()
        host.start()  # same store, no fault hook
        token = host.token()
        # The card key was held by the orphan: another id with the tap is refused, never sent...
        dup = post(host, token, {**body, "transactionId": "crash-tap-2"})
        assert dup.status_code == 409 and dup.json()["existingTransactionId"] == "crash-tap-1"
        # ...and the orphan recovers as it always has: never sent, so reversed (harmless) and declined 91.
        recovered = post(host, token, body)
        assert recovered.status_code == 200 and recovered.json()["responseCode"] == "91"
        assert post(host, token, body).content == recovered.content
        assert post(host, token, {**body, "transactionId": "crash-tap-3"}).status_code == 409
        assert slow_simulator.ledger()["totals"]["authorizations"] == 0
    finally:
        host.stop()
    assert scan_store(tmp_path / "crash-host" / "var" / "store").ok


async def test_reversals_of_one_original_at_the_same_moment_make_one_0400(
    host: Host, slow_simulator: SimulatorProcess
) -> None:
    token = host.token()
    purchase = sample_purchase("orig-1", amount=5000)
    approved = post(host, token, purchase).json()
    assert approved["approved"] is True
    reversal = {k: v for k, v in purchase.items() if k != "emvData"}
    reversal.update(transactionType="REVERSAL", originalTransactionId="orig-1")
    results = await post_together(host, token, [{**reversal, "transactionId": f"rev-{i}"} for i in range(8)])
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) == 1, [(r.status_code, r.text) for r in results]
    refused = {(r.status_code, r.json()["type"]) for r in results if r.status_code != 200}
    assert refused <= {(409, "/problems/original-in-progress"), (422, "/problems/original-already-reversed")}
    winner = ok[0].json()
    # The 0400 quoted the original (STAN, RRN, terminal) and spent no STAN of its own.
    assert (winner["stan"], winner["rrn"]) == (approved["stan"], approved["rrn"])
    entry = slow_simulator.entry("TERM0001", approved["stan"])
    assert entry["reversal_messages"] == 1 and entry["reversals"] == 1 and entry["reversed"] is True
    assert slow_simulator.ledger()["totals"]["reversal_messages"] == 1
    original = store_record(host, "orig-1")
    assert original.reversed_by == winner["transactionId"]
    # From now on every other id is refused as already reversed, naming the winner; the winner replays.
    late = post(host, token, {**reversal, "transactionId": "rev-late"})
    assert late.status_code == 422 and winner["transactionId"] in late.json()["detail"]
    assert post(host, token, {**reversal, "transactionId": winner["transactionId"]}).content == ok[0].content


def test_a_reversal_from_another_terminal_is_refused_and_not_sent(host: Host, slow_simulator: SimulatorProcess) -> None:
    token = host.token()
    purchase = sample_purchase("orig-t", amount=5000)
    assert post(host, token, purchase).json()["approved"] is True
    reversal = {k: v for k, v in purchase.items() if k != "emvData"}
    reversal.update(transactionType="REVERSAL", transactionId="rev-t", originalTransactionId="orig-t")
    refused = post(host, token, {**reversal, "terminalId": "TERM0002"})
    assert refused.status_code == 422 and refused.json()["field"] == "terminalId"
    assert slow_simulator.ledger()["totals"]["reversal_messages"] == 0
    assert post(host, token, reversal).json()["approved"] is True  # from its own terminal it goes


def _wait_reversed(sim: SimulatorProcess, stan: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = sim.ledger()["transactions"].get(f"TERM0001:{stan}")
        if entry and entry["reversed"]:
            return dict(entry)
        time.sleep(0.1)
    raise AssertionError(f"never reversed: {sim.ledger()['transactions'].get(f'TERM0001:{stan}')}")


def test_an_0410_with_96_is_not_an_acknowledgement(host: Host, slow_simulator: SimulatorProcess) -> None:
    token = host.token()
    purchase = sample_purchase("orig-96", amount=5000)
    approved = post(host, token, purchase).json()
    slow_simulator.set_faults(reversal_code="96", reversal_code_next=2)
    reversal = {k: v for k, v in purchase.items() if k != "emvData"}
    reversal.update(transactionType="REVERSAL", transactionId="rev-96", originalTransactionId="orig-96")
    answer = post(host, token, reversal)
    # Answered 96: stored for forwarding (it will be delivered), not declined, and counted as the reversal.
    assert answer.status_code == 200 and answer.json()["responseCode"] == "00", answer.text
    assert store_record(host, "rev-96").outcome == "reversal-stored-for-forwarding"
    assert store_record(host, "orig-96").reversed_by == "rev-96"
    # Store-and-forward repeats it (0401) past the second 96 until the acquirer reverses it.
    entry = _wait_reversed(slow_simulator, approved["stan"])
    assert entry["reversal_messages"] == 3 and entry["repeats"] == 2 and entry["reversals"] == 1
    assert post(host, token, reversal).content == answer.content  # the stored answer replays


def test_a_timeout_reversal_answered_91_is_retried(host: Host, slow_simulator: SimulatorProcess) -> None:
    token = host.token()
    slow_simulator.set_faults(reversal_code="91", reversal_code_next=1)
    timed_out = post(host, token, sample_purchase("late-1", amount=9999)).json()  # never answered: reversed
    assert timed_out["responseCode"] == "91"
    entry = _wait_reversed(slow_simulator, timed_out["stan"])
    assert entry["reversal_messages"] == 2 and entry["authorizations"] == 1
