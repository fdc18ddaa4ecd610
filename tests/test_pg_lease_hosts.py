"""A host paused past its lease while it holds a claim (issue 12, docs/postgres.md "Leases and fencing"): two
real hosts (`cloudlayer serve`) on one real PostgreSQL and one real acquirer simulator (ISO 8583 over TCP, or
the HTTPS payment host: `connector_kind`). Host A's worker
stops itself (SIGSTOP, the test hook CLOUDLAYER_TESTING_CRASH_AT=stop:<point>) holding a claim; host B recovers
it on the resubmission once A's lease has run out and the acquirer timeout has passed; then the test continues
A (SIGCONT). The simulator's ledger shows no second send, A's late work is refused (its send by the guard, its
completion by the epoch fence), A's worker gives its owner id up (it exits and is replaced), and both hosts
replay B's answer byte for byte.

A's supervisor is not paused and is told not to kill a silent worker (a long heartbeat timeout): the pause is
the worker's, as a host's scheduler stall or a VM pause would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cloudlayer.samples import sample_purchase
from conftest import write_config
from connector_kinds import Acquirer, start_acquirer
from pg_hosts_harness import Background, replay, resubmit_until_answered, wait_for_log
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

pytestmark = pytest.mark.slow

ACQUIRER_TIMEOUT = 1.0
LEASE = {"lease_ttl": 3.5, "lease_renew": 0.3}  # the least the config allows: 3 x 1.0 + 0.3 = 3.3
PATIENT_SUPERVISOR = {
    "worker_heartbeat_interval": 1.0,
    "worker_heartbeat_timeout": 120.0,
    "worker_start_timeout": 120.0,
}


@pytest.fixture
def acquirer(tmp_path: Path, connector_kind: str) -> Iterator[Acquirer]:
    acq = start_acquirer(connector_kind, tmp_path / "acquirer")
    yield acq
    acq.stop()


@pytest.fixture
def sim(acquirer: Acquirer) -> SimulatorProcess:
    """The ledger (both simulators keep the same one)."""
    return acquirer.simulator


def two_hosts(tmp_path: Path, acquirer: Acquirer, pg_database: Any, stop_at: str) -> tuple[Host, Host]:
    store = pg_database.store_section(**LEASE)
    common = {"store": store, "server": PATIENT_SUPERVISOR}
    sim = acquirer.simulator
    # Migrated first: each Host adds its client (`client add`) to the shared registry in PostgreSQL.
    migrate_cfg = {"store": pg_database.store_section(), "server": {"var_dir": str(tmp_path / "m")}}
    first = write_config(tmp_path / "migrate.toml", migrate_cfg)
    migrated = subprocess.run(
        [CLOUDLAYER, "db", "migrate", "--config", str(first)], capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    a = Host(tmp_path / "a", sim, acquirer_timeout=ACQUIRER_TIMEOUT, extra=acquirer.host_extra(common))
    var_a = tmp_path / "a" / "var"
    # OAuth clients and signing keys are shared through PostgreSQL; B needs A's pepper and sealing ring.
    shared = {
        "store": store,
        "oauth": {"pepper_file": str(var_a / "oauth" / "pepper")},
        "server": {**PATIENT_SUPERVISOR, "sealing_key_file": str(var_a / "keys" / "sealing.key")},
    }
    a.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": f"stop:{stop_at}"})
    b = Host(tmp_path / "b", sim, acquirer_timeout=ACQUIRER_TIMEOUT, extra=acquirer.host_extra(shared))
    b.start()
    return a, b


def stopped_worker(host: Host, within: float = 20.0) -> psutil.Process:
    assert host.server is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for child in psutil.Process(host.server.proc.pid).children(recursive=True):
            try:
                if child.status() == psutil.STATUS_STOPPED:
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    raise AssertionError("host A's worker never reached its pause point")


def test_host_paused_holding_an_approval_past_its_lease_cannot_complete_and_both_replay_the_recovery(
    tmp_path: Path, acquirer: Acquirer, sim: SimulatorProcess, pg_database: Any
) -> None:
    a, b = two_hosts(tmp_path, acquirer, pg_database, stop_at="after_acquirer")
    paused: psutil.Process | None = None
    try:
        hdrs = {"Authorization": f"Bearer {a.token()}", "Content-Type": "application/json"}
        body = json.dumps(sample_purchase("lease-late-complete", amount=4200)).encode()
        first = Background(a.url, body, hdrs)
        paused = stopped_worker(a)  # sent, approved, answer in hand: paused before it records it
        assert sim.ledger()["totals"]["authorizations"] == 1

        recovered = resubmit_until_answered(b, body, hdrs)
        doc = recovered.json()
        assert doc["responseCode"] == "00" and doc["approved"] is True, doc  # the inquiry found A's approval
        totals = sim.ledger()["totals"]
        assert totals["authorizations"] == 1 and totals["repeats"] == 1  # B asked; nobody sent it again

        paused.send_signal(signal.SIGCONT)
        late = first.join()
        assert late.status_code == 200 and late.content == recovered.content  # B's answer, not A's own
        wait_for_log(a, "completion_fenced")
        wait_for_log(a, "store_lease_lost")
        wait_for_log(a, "worker_replaced")  # A gives its owner id up: a new worker, a new id

        again_a, again_b = replay(a, body, hdrs), replay(b, body, hdrs)
        assert again_a.content == again_b.content == recovered.content
        assert again_a.headers["Idempotent-Replayed"] == again_b.headers["Idempotent-Replayed"] == "true"
        ledger = sim.ledger()
        assert ledger["totals"]["authorizations"] == 1 and ledger["totals"]["reversal_messages"] == 0
        assert sim.entry("TERM0001", doc["stan"])["reversed"] is False  # no forced reversal of a recorded approval
    finally:
        if paused is not None and paused.is_running():
            os.kill(paused.pid, signal.SIGCONT)
        a.stop()
        b.stop()


def test_host_paused_between_claim_and_send_past_its_lease_sends_nothing_and_answers_503(
    tmp_path: Path, acquirer: Acquirer, sim: SimulatorProcess, pg_database: Any
) -> None:
    a, b = two_hosts(tmp_path, acquirer, pg_database, stop_at="after_pending")
    paused: psutil.Process | None = None
    try:
        hdrs = {"Authorization": f"Bearer {a.token()}", "Content-Type": "application/json"}
        body = json.dumps(sample_purchase("lease-late-send", amount=4300)).encode()
        first = Background(a.url, body, hdrs)
        paused = stopped_worker(a)  # claimed (PENDING, sealed request stored), nothing sent yet
        assert sim.ledger()["totals"]["authorizations"] == 0

        recovered = resubmit_until_answered(b, body, hdrs)
        doc = recovered.json()
        assert doc["approved"] is False, doc  # B's inquiry: never seen; B reverses to be safe and declines

        paused.send_signal(signal.SIGCONT)
        late = first.join()
        assert late.status_code == 503, late.text  # refused by the guard: no send, no decline of its own
        assert late.headers["content-type"].startswith("application/problem+json")
        assert late.headers["Retry-After"] and late.json()["type"].endswith("lease-lost")
        wait_for_log(a, "send_fenced")
        wait_for_log(a, "worker_replaced")

        again_a, again_b = replay(a, body, hdrs), replay(b, body, hdrs)
        assert again_a.content == again_b.content == recovered.content
        assert sim.ledger()["totals"]["authorizations"] == 0  # A's original never reached the acquirer
    finally:
        if paused is not None and paused.is_running():
            os.kill(paused.pid, signal.SIGCONT)
        a.stop()
        b.stop()
