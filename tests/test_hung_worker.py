"""A worker that stops making progress while it holds a claim (here: SIGSTOPped while its authorization is at
the acquirer) is found by its missing heartbeat, killed and replaced, and the claim recovers like any crash:
the resubmission gets the acquirer's approval, exactly once at the simulator's ledger."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cloudlayer.samples import sample_purchase
from test_worker_respawn import workers
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow

HEARTBEAT = {"worker_heartbeat_interval": 0.2, "worker_heartbeat_timeout": 2.0, "worker_start_timeout": 30.0}
# Far past what the supervisor needs (2 s of silence, then a replacement worker), far below "for ever".
ANSWER_WITHIN = 40.0


def worker_serving(host: Host, client_port: int) -> psutil.Process:
    """The worker process that accepted our connection (its socket's peer is our local port)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for w in workers(host):
            if any(c.raddr and c.raddr.port == client_port for c in w.net_connections(kind="tcp")):
                return w
        time.sleep(0.02)
    raise AssertionError("no worker holds our connection")


def metric(host: Host, name: str) -> float:
    for line in httpx.get(host.metrics_url, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_sigstopped_worker_holding_a_claim_is_killed_and_its_claim_recovers_exactly_once(
    tmp_path: Path, simulator: SimulatorProcess
) -> None:
    host = Host(
        tmp_path / "host", simulator, workers=2, acquirer_timeout=20.0, metrics=True, extra={"server": HEARTBEAT}
    )
    host.start()
    stopped: psutil.Process | None = None
    try:
        token = host.token()
        body = json.dumps(sample_purchase("hung-1", amount=5000)).encode()
        simulator.set_faults(delay_seconds=60.0, delay_next=1)  # the acquirer approves, and answers in a minute
        addr = host.url.removeprefix("http://").rpartition(":")
        first = socket.create_connection((addr[0], int(addr[2])), timeout=10)
        first.sendall(
            b"POST /transaction/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        holder = worker_serving(host, first.getsockname()[1])
        deadline = time.monotonic() + 10
        while simulator.ledger()["totals"]["authorizations"] < 1:  # claimed, sent: now waiting on the acquirer
            assert time.monotonic() < deadline, "the authorization never reached the acquirer"
            time.sleep(0.02)
        holder.send_signal(signal.SIGSTOP)
        stopped = holder

        answer: httpx.Response | None = None
        statuses: list[int | str] = []
        give_up = time.monotonic() + ANSWER_WITHIN
        while answer is None and time.monotonic() < give_up:  # Mypinpad resubmits after a 503 or a timeout
            try:
                r = httpx.post(
                    host.url + "/transaction/process",
                    content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    timeout=max(1.0, give_up - time.monotonic()),
                )
            except httpx.TransportError as e:
                statuses.append(type(e).__name__)
                time.sleep(0.2)
                continue
            statuses.append(r.status_code)
            if r.status_code == 200:
                answer = r
            else:
                assert r.status_code == 503, r.text
                time.sleep(0.2)
        assert answer is not None, f"no answer within {ANSWER_WITHIN} s: {statuses}"
        doc = answer.json()
        assert doc["responseCode"] == "00" and doc["approved"] is True, doc  # recovered, not reversed
        assert not holder.is_running() or holder.status() == psutil.STATUS_ZOMBIE
        ledger = simulator.ledger()
        assert ledger["totals"]["authorizations"] == 1
        assert simulator.entry("TERM0001", doc["stan"])["reversed"] is False
        again = httpx.post(
            host.url + "/transaction/process",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert again.content == answer.content and again.headers["Idempotent-Replayed"] == "true"
        assert simulator.ledger()["totals"]["authorizations"] == 1
        assert "worker_hung" in host.log_text() and "worker_replaced" in host.log_text()
        assert metric(host, "cloudlayer_workers_hung_killed_total") == 1
        assert len(workers(host)) == 2
        first.close()
    finally:
        if stopped is not None and stopped.is_running():
            os.kill(stopped.pid, signal.SIGKILL)  # the test's own SIGSTOPped process, if the host left it
        host.stop()
