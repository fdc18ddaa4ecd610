"""Two real hosts (`cloudlayer serve` subprocesses) on one real PostgreSQL, one real acquirer simulator over TCP:
exactly once across hosts, PostgreSQL itself stopped mid-load and started again, and OAuth shared through the
database (clients, signing keys). The hosts come from tests/pg_hosts_harness.py (each under its own hostname,
sharing only what every host must hold: host A's pepper and sealing key ring)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from pg_hosts_harness import PgHost, pg_hosts
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


def _kid(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def _cli(host: PgHost, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDLAYER, *argv, "--config", str(host.config)], capture_output=True, text=True, timeout=60, check=False
    )


def _pay(client: httpx.Client, host: PgHost, token: str, tid: str) -> int:
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps(sample_purchase(tid, amount=1000))
    return client.post(host.url + "/transaction/process", content=body, headers=hdrs).status_code


def _within(bound: float, check: Any) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound, f"not within {bound} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_oauth_is_shared_tokens_disable_and_rotation_reach_both_hosts(tmp_path: Path, pg_database: Any) -> None:
    sim = SimulatorProcess(tmp_path / "sim")
    # shared_refresh long: what follows within 2 s is the NOTIFY, not the periodic refresh.
    a, b = pg_hosts(tmp_path, sim, pg_database, extra={"oauth": {"shared_refresh": 600}})
    n = iter(range(1000))
    try:
        b.start()
        with httpx.Client(timeout=30) as client:
            token_a, token_b = a.token(), b.token()  # each host's client, each issued where it was added
            for host in (a, b):
                for token in (token_a, token_b):
                    assert _pay(client, host, token, f"shared-{next(n)}") == 200
            assert (
                b.token()
                and httpx.post(  # A's client is known to B: it gets a token from B as well
                    b.url + "/oauth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": a.client_id,
                        "client_secret": a.client_secret,
                    },
                    timeout=10,
                ).status_code
                == 200
            )

            # Rotation on A (the CLI): B signs with the new key too; tokens of the old key still verify on both.
            rotated = _cli(a, "keys", "rotate", "--json")
            assert rotated.returncode == 0, rotated.stderr
            new_kid = json.loads(rotated.stdout)["active_kid"]
            _within(2.0, lambda: _kid(b.token()) == new_kid)
            fresh_a = a.token()
            assert _kid(fresh_a) == new_kid != _kid(token_a)
            for host in (a, b):
                assert _pay(client, host, fresh_a, f"shared-{next(n)}") == 200
                assert _pay(client, host, token_a, f"shared-{next(n)}") == 200  # old key: until retirement
            jwks = client.get(b.url + "/.well-known/jwks.json").json()
            assert {k["kid"] for k in jwks["keys"]} == {new_kid, _kid(token_a)}
            assert all("d" not in k for k in jwks["keys"])

            # A client disabled through B's CLI stops working on both hosts at once (NOTIFY: well under 2 s).
            disabled = _cli(b, "client", "disable", a.client_id)
            assert disabled.returncode == 0, disabled.stderr
            took = max(
                _within(2.0, lambda h=host: _pay(client, h, token_a, f"shared-{next(n)}") == 401) for host in (a, b)
            )
            assert took < 2.0
            for host in (a, b):
                assert _pay(client, host, fresh_a, f"shared-{next(n)}") == 401
                assert _pay(client, host, token_b, f"shared-{next(n)}") == 200  # the other client is untouched
            listed = json.loads(_cli(a, "client", "list", "--json").stdout)
            assert {c["client_id"]: c["enabled"] for c in listed} == {a.client_id: False, b.client_id: True}
    finally:
        b.stop()
        a.stop()
        sim.stop()
    for host in (a, b):
        assert "Traceback" not in host.log_text()
    audit = (b.var_dir / "audit" / "audit.jsonl").read_text()
    assert '"client disable"' in audit and a.client_id in audit and a.client_secret not in audit
