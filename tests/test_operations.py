"""What operators rely on: SIGTERM loses no transaction in flight, /readyz follows the acquirer link."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow


async def test_sigterm_finishes_transactions_in_flight(tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path / "sim", latency_ms=2000)  # every answer takes 2 s (< acquirer timeout)
    host = Host(tmp_path / "host", simulator)
    try:
        host.start()
        token = host.token()
        answers: dict[str, httpx.Response] = {}
        bodies = {f"inflight-{i}": json.dumps(sample_purchase(f"inflight-{i}", amount=1000)) for i in range(10)}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:

            async def one(i: int) -> None:
                answers[f"inflight-{i}"] = await client.post(
                    host.url + "/transaction/process",
                    content=bodies[f"inflight-{i}"],
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
                await trio.sleep(1.0)  # all ten are waiting on the acquirer now (margin for a slow machine)
                assert host.server is not None
                host.server.send_signal(signal.SIGTERM)
        assert {tid: a.status_code for tid, a in answers.items()} == {f"inflight-{i}": 200 for i in range(10)}
        assert all(a.json()["approved"] for a in answers.values())
        assert await trio.to_thread.run_sync(host.wait_exit) == 0
        assert simulator.ledger()["totals"]["authorizations"] == 10
        # Every answer was stored before it was sent: after a restart each one replays.
        host.start()
        token = host.token()
        async with httpx.AsyncClient(timeout=30) as client:
            for tid, first in answers.items():
                again = await client.post(
                    host.url + "/transaction/process",
                    content=bodies[tid],
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
                assert again.headers.get("Idempotent-Replayed") == "true"
                assert again.content == first.content
    finally:
        host.stop()
        simulator.stop()


def test_readyz_follows_the_acquirer_link(tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path / "sim")
    host = Host(tmp_path / "host", simulator, extra={"acquirer": {"reconnect_max": 0.5}})
    try:
        host.start()
        assert httpx.get(host.url + "/readyz", timeout=5).status_code == 200
        simulator.stop()

        def readyz() -> httpx.Response:
            return httpx.get(host.url + "/readyz", timeout=5)

        deadline = time.monotonic() + 20
        while readyz().status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        down = readyz()
        assert down.status_code == 503
        assert down.json()["checks"]["acquirer"] == "down"
        assert httpx.get(host.url + "/healthz", timeout=5).status_code == 200  # alive, just not ready
        simulator = SimulatorProcess(tmp_path / "sim2", port=simulator.port)
        deadline = time.monotonic() + 20
        while readyz().status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert readyz().status_code == 200
    finally:
        host.stop()
        simulator.stop()


def test_client_hanging_up_mid_transaction_cannot_cancel_it(tmp_path: Path) -> None:
    """Mypinpad gives up while we wait on the acquirer: the transaction still completes and is stored, and the
    resubmission gets that answer (no second authorization, no request stuck PENDING)."""
    import socket

    simulator = SimulatorProcess(tmp_path / "sim", latency_ms=2500)
    host = Host(tmp_path / "host", simulator)
    try:
        host.start()
        token = host.token()
        body = json.dumps(sample_purchase("hangup-1", amount=1000)).encode()
        port = int(host.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /transaction/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(1.0)  # the claim is made and the 0200 is out; the answer is 1.5 s away
        # Hung up. The resubmission waits for the first attempt, then replays its stored answer.
        again = httpx.post(
            host.url + "/transaction/process",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert again.status_code == 200 and again.json()["approved"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert simulator.ledger()["totals"]["authorizations"] == 1
    finally:
        host.stop()
        simulator.stop()


def test_a_reversal_while_the_acquirer_is_down_is_stored_and_forwarded(tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path / "sim")
    host = Host(tmp_path / "host", simulator, extra={"acquirer": {"reconnect_max": 0.5}})
    try:
        host.start()
        token = host.token()
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        purchase = sample_purchase("sf-1", amount=1000)
        approved = httpx.post(host.url + "/transaction/process", content=json.dumps(purchase), headers=hdrs, timeout=30)
        assert approved.json()["approved"]
        simulator.stop()
        deadline = time.monotonic() + 20
        while httpx.get(host.url + "/readyz", timeout=5).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        reversal = {
            **purchase,
            "transactionId": "sf-rev",
            "transactionType": "REVERSAL",
            "originalTransactionId": "sf-1",
        }
        answer = httpx.post(host.url + "/transaction/process", content=json.dumps(reversal), headers=hdrs, timeout=30)
        assert answer.status_code == 200 and answer.json()["responseCode"] == "00"  # accepted: it will be delivered
        simulator = SimulatorProcess(tmp_path / "sim2", port=simulator.port)  # the acquirer comes back
        key = f"TERM0001:{answer.json()['stan']}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            entry = simulator.ledger()["transactions"].get(key) or simulator.ledger()["transactions"].get(
                f"TERM0001:{approved.json()['stan']}"
            )
            if entry and entry["reversal_messages"] >= 1:
                break
            time.sleep(0.2)
        assert entry and entry["reversal_messages"] >= 1
    finally:
        host.stop()
        simulator.stop()
