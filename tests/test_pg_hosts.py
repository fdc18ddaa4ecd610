"""Two real hosts (`cloudlayer serve` subprocesses) on one real PostgreSQL, one real acquirer simulator over TCP:
exactly once across hosts, and OAuth shared through the database (clients, signing keys). Each host has its own
var dir; they share only what every host must hold (docs/postgres.md): the sealing key ring and the pepper."""

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
from conftest import write_config
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path / "sim", latency_ms=300)  # duplicates really overlap the first attempt
    yield sim
    sim.stop()


def two_hosts(tmp_path: Path, sim: SimulatorProcess, pg_database: Any, **oauth: Any) -> tuple[Host, Host]:
    store = pg_database.store_section()
    # Migrated first: each Host adds its client (`client add`) to the shared registry.
    first = write_config(tmp_path / "migrate.toml", {"store": store, "server": {"var_dir": str(tmp_path / "m")}})
    migrated = subprocess.run(
        [CLOUDLAYER, "db", "migrate", "--config", str(first)], capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    a = Host(tmp_path / "a", sim, extra={"store": store, "oauth": oauth})
    var_a = tmp_path / "a" / "var"
    shared = {
        "store": store,
        "oauth": {"pepper_file": str(var_a / "oauth" / "pepper"), **oauth},
        "server": {"sealing_key_file": str(var_a / "keys" / "sealing.key")},
    }
    a.start()  # creates the sealing key ring B shares, and the first signing key (sealed with it, in PG)
    b = Host(tmp_path / "b", sim, extra=shared)
    return a, b


async def test_100_identical_requests_split_across_two_hosts_authorize_once(
    tmp_path: Path, slow_simulator: SimulatorProcess, pg_database: Any
) -> None:
    a, b = two_hosts(tmp_path, slow_simulator, pg_database)
    try:
        b.start()
        token = a.token()  # one token, accepted by both (shared signing keys)
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = json.dumps(sample_purchase("two-hosts-1", amount=7000)).encode()
        results: list[tuple[str, httpx.Response]] = []
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(host: Host) -> None:
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


async def test_database_gone_mid_run_answers_503_not_500(
    tmp_path: Path, slow_simulator: SimulatorProcess, pg_database: Any
) -> None:
    a, _ = two_hosts(tmp_path, slow_simulator, pg_database)  # A only: started and migrated
    try:
        token = a.token()
        hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=60) as client:
            ok = await client.post(
                a.url + "/transaction/process", content=json.dumps(sample_purchase("db-gone-1")), headers=hdrs
            )
            assert ok.status_code == 200, ok.text
            # The database disappears under the running host (its connections are terminated).
            pg_database.cluster.drop_database(pg_database)
            gone = await client.post(
                a.url + "/transaction/process", content=json.dumps(sample_purchase("db-gone-2")), headers=hdrs
            )
        assert gone.status_code == 503, gone.text
        assert gone.headers["Content-Type"].startswith("application/problem+json")
        assert gone.json()["type"].endswith("/problems/store-unavailable") and gone.headers["Retry-After"]
        assert "Traceback" not in a.log_text()
        assert slow_simulator.ledger()["totals"]["authorizations"] == 1  # the second one never reached it
    finally:
        a.stop()


def _kid(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def _cli(host: Host, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDLAYER, *argv, "--config", str(host.config)], capture_output=True, text=True, timeout=60, check=False
    )


def _pay(client: httpx.Client, host: Host, token: str, tid: str) -> int:
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
    a, b = two_hosts(tmp_path, sim, pg_database, shared_refresh=600)
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
    audit = (tmp_path / "b" / "var" / "audit" / "audit.jsonl").read_text()
    assert '"client disable"' in audit and a.client_id in audit and a.client_secret not in audit
