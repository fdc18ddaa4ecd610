"""Two real hosts (`cloudlayer serve` subprocesses) on one real PostgreSQL, one real acquirer simulator over TCP:
exactly once across hosts, and PostgreSQL itself stopped mid-load and started again. The hosts come from
tests/pg_hosts_harness.py (each under its own hostname, sharing host A's OAuth files and sealing key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from pg_hosts_harness import pg_hosts
from reliability.chaos import Chaos, ChaosPlan
from txn_harness import CLOUDLAYER, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path / "sim", latency_ms=300)  # duplicates really overlap the first attempt
    yield sim
    sim.stop()


async def test_100_identical_requests_split_across_two_hosts_authorize_once(
    tmp_path: Path, slow_simulator: SimulatorProcess, pg_database: Any
) -> None:
    a, b = pg_hosts(tmp_path, slow_simulator, pg_database)
    try:
        b.start()
        token = a.token()  # one token, accepted by both (shared signing keys)
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = json.dumps(sample_purchase("two-hosts-1", amount=7000)).encode()
        results: list[tuple[str, httpx.Response]] = []
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(host: Any) -> None:
                resp = await client.post(host.url + "/transaction/process", content=body, headers=hdrs)
                results.append((host.url, resp))

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, a if i % 2 else b)
        statuses = [r.status_code for _, r in results]
        assert statuses == [200] * 100, {s: statuses.count(s) for s in set(statuses)}
        assert len({r.content for _, r in results}) == 1  # the first answer, byte for byte, from both hosts
        replayed = [url for url, r in results if r.headers.get("Idempotent-Replayed") == "true"]
        assert len(replayed) == 99
        assert {a.url, b.url} <= {url for url, _ in results}
        doc = results[0][1].json()
        assert slow_simulator.ledger()["totals"]["authorizations"] == 1
        assert slow_simulator.entry("TERM0001", doc["stan"])["authorizations"] == 1

        # STAN and RRN stay unique across the two hosts.
        ids = set()
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(20):
                host = a if i % 2 else b
                r = await client.post(
                    host.url + "/transaction/process",
                    content=json.dumps(sample_purchase(f"two-hosts-unique-{i}", amount=1000)),
                    headers=hdrs,
                )
                assert r.status_code == 200, r.text
                ids.add((r.json()["stan"], r.json()["rrn"]))
        assert len(ids) == 20
    finally:
        b.stop()
        a.stop()
    # The shared database agrees: one record per transaction, every one COMPLETED, no card data anywhere.
    check = await trio.run_process(
        [CLOUDLAYER, "txn", "check", "--config", str(a.config)], capture_stdout=True, capture_stderr=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert (report["records"], report["completed"]) == (21, 21)


async def test_postgres_stopped_mid_load_answers_503_then_resumes_and_loses_nothing(
    tmp_path: Path, own_pg_cluster: Any
) -> None:
    """Two hosts under load (Mypinpad resubmitting to either host); PostgreSQL is stopped with an immediate
    shutdown (as in a crash: no checkpoint), kept down, and started again on the same port and data directory,
    twice. While it is down: every 5xx is a 503 problem+json with Retry-After (tests/reliability/chaos.py
    counts anything else a violation), /readyz on each host says not ready because of the store, no traceback.
    Afterwards: every transaction answered with one answer, no PENDING row left, no double authorization, every
    approval the issuer gave either answered approved or reversed (the chaos run's invariant checker, reading
    the shared table)."""
    db = own_pg_cluster.create_database()
    plan = ChaosPlan(
        duration=14.0,
        clients=4,
        interval=4.0,
        seed=3,
        workers=1,
        pg_hosts=2,
        actions=("db_outage",),
        db_outage=3.0,
        resubmit_share=0.1,
    )
    chaos = Chaos(tmp_path, plan, pg=db)
    figures = await chaos.run()
    assert figures.violations == []
    assert figures.db_outages >= 2 and figures.readyz_store_down == 2 * figures.db_outages
    assert figures.store_503s > 0  # the outage really met requests: they were answered 503 store-unavailable
    assert figures.attempted >= 20 and figures.authorizations >= figures.attempted // 2
    assert figures.saf_left == 0 and figures.integrity_problems == 0
    for host in chaos.hosts:
        logs = "".join(p.read_text(errors="replace") for p in host.log_files())
        assert "Traceback" not in logs and '"store_unavailable"' in logs
    with db.connect() as conn:  # straight from the table: nothing left PENDING
        assert conn.execute("SELECT count(*) FROM transactions WHERE state = 'PENDING'").fetchone() == (0,)
