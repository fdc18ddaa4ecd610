"""`make cluster`'s entry point (tools/cluster.py) for real: PostgreSQL, two hosts, the simulator and HAProxy as
processes. `cloudlayer try` through the balancer; one host SIGKILLed under load: HAProxy's /readyz check takes it
out, its in-flight transactions are resubmitted (as Mypinpad would) and recovered by the other host, exactly
once at the acquirer; then SIGTERM to the cluster leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from cloudlayer.samples import sample_purchase
from txn_harness import CLOUDLAYER

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "tools" / "cluster.py"
HAPROXY = Path(sys.executable).parent / "haproxy"
sys.path.insert(0, str(REPO / "tools"))

import cluster_haproxy  # noqa: E402

START_TIMEOUT = 240  # PostgreSQL's initdb, two hosts one after the other, HAProxy's first checks: on 2 busy cores
LATENCY_MS = 1000  # the acquirer's delay: transactions are really in flight when the host dies


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any], Path]]:
    if not HAPROXY.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-haproxy.sh"), str(HAPROXY)], check=True, timeout=600)
    root = tmp_path / "cluster"
    out_path = tmp_path / "cluster.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(CLUSTER), "--dir", str(root), "--port", "0", "--acquirer-latency-ms", str(LATENCY_MS)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (root / "cluster.json").exists():
            assert proc.poll() is None, out_path.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "cluster not up in time: " + out_path.read_text(errors="replace")
            time.sleep(0.2)
        state = json.loads((root / "cluster.json").read_text())
        yield proc, state, out_path
    finally:
        if proc.poll() is None:  # the test failed before its own SIGTERM: stop it all the same way
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _try(state: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    secret = Path(state["client_secret_file"]).read_text().strip()
    return subprocess.run(
        [CLOUDLAYER, "try", state["url"], "--insecure", "--client-id", state["client_id"], "--json"],
        env={**os.environ, "CLOUDLAYER_CLIENT_SECRET": secret},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _in_flight(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cloudlayer_http_requests_in_flight") and not line.startswith("#")
    )


def _processes_naming(marks: tuple[str, ...]) -> list[str]:
    left = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(m in cmd for m in marks):
                left.append(f"{p.pid}: {cmd}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


async def test_cluster_try_failover_and_clean_stop(
    cluster: tuple[subprocess.Popen[bytes], dict[str, Any], Path],
) -> None:
    proc, state, out_path = cluster
    stats = state["stats_port"]
    a, b = state["hosts"]
    sim = state["simulator"]["admin"]

    # 1. Mypinpad's dance through HAProxy: token, purchase, byte-identical replay of the retry.
    tried = await trio.to_thread.run_sync(_try, state)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    doc = json.loads(tried.stdout)
    assert doc["status"] == 200 and doc["approved"] and doc["retry"]["replayed"]

    # 2. Eight purchases in flight through the balancer; host A is SIGKILLed (supervisor and worker: its process
    # group) while its share waits on the acquirer.
    secret = await trio.Path(state["client_secret_file"]).read_text()
    form = {"grant_type": "client_credentials", "client_id": state["client_id"], "client_secret": secret.strip()}
    async with httpx.AsyncClient(verify=False, timeout=60) as client:
        token = (await client.post(state["url"] + "/oauth/token", data=form)).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = {f"cluster-kill-{i}": json.dumps(sample_purchase(f"cluster-kill-{i}", amount=2500)) for i in range(8)}
    first: dict[str, int | str] = {}
    limits = httpx.Limits(max_keepalive_connections=0)  # one connection per request: round robin across hosts

    async def send(client: httpx.AsyncClient, txn: str) -> None:
        try:
            r = await client.post(state["url"] + "/transaction/process", content=bodies[txn], headers=headers)
            first[txn] = r.status_code
        except httpx.TransportError as e:
            first[txn] = type(e).__name__

    async def kill_a_when_busy() -> None:
        await trio.to_thread.run_sync(lambda: _wait(lambda: _in_flight(a["metrics"]) >= 1, 30, "nothing on A"))
        await trio.sleep(0.3)  # claimed and sent: now waiting for the acquirer's answer
        os.killpg(a["pid"], signal.SIGKILL)

    async with httpx.AsyncClient(verify=False, timeout=60, limits=limits) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_a_when_busy)
            for txn in bodies:
                nursery.start_soon(send, client, txn)
    failed = [t for t, s in first.items() if s != 200]
    assert failed, f"no request was in flight on the killed host: {first}"
    assert any(s == 200 for s in first.values()), first  # host B's share went through meanwhile

    # 3. HAProxy's /readyz check takes A out.
    await trio.to_thread.run_sync(
        _wait,
        lambda: cluster_haproxy.server_states(stats)[a["name"]].startswith("DOWN"),
        15,
        "HAProxy still sends to the dead host",
    )
    assert (await trio.to_thread.run_sync(cluster_haproxy.server_states, stats))[b["name"]] == "UP"

    # 4. Mypinpad resubmits what failed: host B recovers what A had claimed; every transaction gets one answer,
    # the same on every resubmission, and the acquirer authorized each at most once.
    answers: dict[str, bytes] = {}
    async with httpx.AsyncClient(verify=False, timeout=60) as client:
        for txn, body in bodies.items():
            for _ in range(40):
                r = await client.post(state["url"] + "/transaction/process", content=body, headers=headers)
                if r.status_code == 200:
                    break
                assert r.status_code == 503, r.text  # only "still in progress": never a 5xx of ours otherwise
                await trio.sleep(0.5)
            assert r.status_code == 200, (txn, r.status_code, r.text)
            answers[txn] = r.content
            again = await client.post(state["url"] + "/transaction/process", content=body, headers=headers)
            assert again.content == r.content and again.headers["Idempotent-Replayed"] == "true"
    b_log = await trio.Path(b["log"]).read_text(errors="replace")
    recovered = [t for t in failed if any("recovering_orphan" in ln and t in ln for ln in b_log.splitlines())]
    assert recovered, f"host B recovered none of {failed}"
    async with httpx.AsyncClient(timeout=5) as client:
        ledger = (await client.get(sim + "/ledger")).json()
    for txn, content in answers.items():
        resp = json.loads(content)
        entry = ledger["transactions"].get(f"{'TERM0001'.ljust(8)}:{resp['stan']}")
        assert entry is None or entry["authorizations"] == 1, (txn, entry)

    # 5. New purchases keep succeeding, all through B.
    before = await trio.to_thread.run_sync(cluster_haproxy.server_answers, stats)
    async with httpx.AsyncClient(verify=False, timeout=60) as client:
        for i in range(6):
            r = await client.post(
                state["url"] + "/transaction/process",
                content=json.dumps(sample_purchase(f"cluster-after-{i}")),
                headers=headers,
            )
            assert r.status_code == 200, r.text
    after = await trio.to_thread.run_sync(cluster_haproxy.server_answers, stats)
    assert after[b["name"]] - before[b["name"]] == 6 and after[a["name"]] == before[a["name"]]

    # 6. SIGTERM to the cluster stops everything it started; nothing is left.
    proc.send_signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(lambda: proc.wait(timeout=90)) == 0
    assert "cluster: stopped" in await trio.Path(out_path).read_text()
    for pgid in state["process_groups"]:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    marks = (str(Path(state["haproxy"]["config"]).parent), state["postgres"]["dir"])
    left = await trio.to_thread.run_sync(_processes_naming, marks)
    assert not left, left
    assert not await trio.Path(state["postgres"]["dir"]).exists()
