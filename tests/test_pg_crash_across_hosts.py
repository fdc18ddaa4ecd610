"""A host SIGKILLed with a transaction in flight, the resubmission sent to the OTHER host: exactly once across
hosts. Two real hosts (tests/pg_hosts_harness.py: each under its own hostname, so each judges the other's
workers by their lease in PostgreSQL, never by /proc), one real database,
one real simulator (each connector: ISO 8583 over TCP and the HTTPS payment host, `connector_kind`); host A's
worker kills itself at each crash point of tests/test_exactly_once.py
(CLOUDLAYER_TESTING_CRASH_AT), then the whole of host A is SIGKILLed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from cloudlayer.store.pg.rows import COLUMNS, to_record
from connector_kinds import Acquirer, start_acquirer
from link_proxy import LinkProxy
from pg_hosts_harness import headers, pending_rows, pg_hosts
from txn_harness import SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path / "sim", latency_ms=50)
    yield sim
    sim.stop()


@pytest.fixture
def acquirer(tmp_path: Path, connector_kind: str) -> Iterator[Acquirer]:
    acq = start_acquirer(connector_kind, tmp_path / "acquirer", latency_ms=50)
    yield acq
    acq.stop()


def _row(pg_database: Any, transaction_id: str) -> tuple[str, str, bytes | None, list[str]]:
    """(state, owner, response_body, events as "what detail") of the row, read straight from the shared table."""
    with pg_database.connect() as conn:
        found = conn.execute(f"SELECT {COLUMNS} FROM transactions t WHERE t.transaction_id = %s", (transaction_id,))
        row = found.fetchone()
    assert row is not None, f"no row for {transaction_id}"
    rec = to_record(row)
    return rec.state.value, rec.owner, rec.response_body or None, [f"{e.what} {e.detail}" for e in rec.events]


@pytest.mark.parametrize(
    ("crash_at", "lose_inquiry", "expected_code", "authorizations", "reversed_"),
    [
        # PENDING stored by A, nothing sent: B takes it over once A's heartbeat is old, its inquiry finds nothing,
        # it reverses (harmless) and declines.
        ("after_pending", False, "91", 0, None),
        # The acquirer approved, A died before storing: B's inquiry (a repeat) recovers the original approval.
        ("after_acquirer", False, "00", 1, False),
        # The same, but the answer to B's inquiry is lost too: the outcome is unknown, so B declines and its SAF
        # forwards a reversal of the approval A obtained.
        ("after_acquirer", True, "91", 1, True),
        # COMPLETED stored by A, reply never sent: B replays A's stored answer.
        ("after_completed", False, "00", 1, False),
    ],
)
def test_a_host_killed_mid_transaction_the_other_host_answers_the_resubmission(
    tmp_path: Path,
    acquirer: Acquirer,
    pg_database: Any,
    crash_at: str,
    lose_inquiry: bool,
    expected_code: str,
    authorizations: int,
    reversed_: bool | None,
) -> None:
    env = {"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": crash_at}
    simulator = acquirer.simulator
    a, b = pg_hosts(tmp_path, simulator, pg_database, env=env, extra=acquirer.host_extra())
    tid = f"across-{crash_at}-{int(lose_inquiry)}"
    body = json.dumps(sample_purchase(tid, amount=8000)).encode()
    try:
        b.start()
        token = a.token()  # one token, accepted by both hosts (shared signing keys)
        with pytest.raises(httpx.TransportError):
            httpx.post(a.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        a.kill_all()  # and then the whole host goes: nobody on machine A will ever finish it
        state, owner, stored, _ = _row(pg_database, tid)
        assert owner.startswith("cl-host-a/")
        assert state == ("COMPLETED" if crash_at == "after_completed" else "PENDING")
        if lose_inquiry:
            simulator.set_faults(drop_next=1)  # B's inquiry (0201, or the GET by key) is answered, the answer lost

        first = httpx.post(b.url + "/transaction/process", content=body, headers=headers(token), timeout=60)
        assert first.status_code == 200, first.text
        doc = first.json()
        assert doc["responseCode"] == expected_code, doc
        state, owner, stored, events = _row(pg_database, tid)
        assert state == "COMPLETED" and stored == first.content
        if crash_at == "after_completed":
            assert first.headers["Idempotent-Replayed"] == "true"  # A's stored answer, byte for byte
            assert owner.startswith("cl-host-a/")
        else:
            # B took the claim over from A's dead worker, judged dead by its heartbeat age in the database.
            assert owner.startswith("cl-host-b/")
            assert any(e.startswith("taken-over from cl-host-a/") for e in events), events
        if reversed_:
            b_ledger = _wait_reversed(simulator, doc["stan"], within=30)
            assert b_ledger["reversals"] == 1
        assert pending_rows(pg_database) == []

        # The answer is now fixed: a repeat to either host (A restarted on its machine) replays it.
        again_b = httpx.post(b.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        a.start()
        again_a = httpx.post(a.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        for again in (again_a, again_b):
            assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
        ledger = simulator.ledger()
        assert ledger["totals"]["authorizations"] == authorizations
        entry = ledger["transactions"].get(f"TERM0001:{doc['stan']}")
        if reversed_ is None:
            assert entry is None or entry["authorizations"] == 0
        else:
            assert entry is not None and entry["reversed"] is reversed_
            assert entry["reversals"] == (1 if reversed_ else 0)
            if not reversed_:
                assert entry["response_code"] == doc["responseCode"]  # the issuer's own answer, recovered
    finally:
        b.stop()
        a.stop()
    # B, and A after its restart, logged no traceback (A's killed incarnation may show a worker it was spawning
    # when the SIGKILL came: multiprocessing's EOFError in the orphan, not ours).
    assert "Traceback" not in "".join(p.read_text(errors="replace") for p in b.log_files())
    assert "Traceback" not in a.log_text()


def _wait_reversed(simulator: SimulatorProcess, stan: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        entry = simulator.entry("TERM0001", stan)
        if entry["reversed"] or time.monotonic() > deadline:
            assert entry["reversed"], entry
            return entry
        time.sleep(0.2)


def test_a_timeout_reversal_queued_by_a_killed_host_is_forwarded_once_by_the_other(
    tmp_path: Path, simulator: SimulatorProcess, pg_database: Any
) -> None:
    """A purchase times out on host A (the simulator holds its answer past acquirer.timeout) and A's link is cut
    (its sends vanish), so the reversal A queues in the shared SAF cannot leave A. Host A is SIGKILLed; host B,
    started only then, forwards that reversal: the ledger shows the original reversed, by one message."""
    link = LinkProxy(simulator.port)
    timeout = 1.5
    a, b = pg_hosts(
        tmp_path, simulator, pg_database, acquirer_timeout=timeout, first_extra={"acquirer": {"port": link.port}}
    )
    body = json.dumps(sample_purchase("rev-across-1", amount=6000)).encode()
    try:
        token = a.token()
        simulator.set_faults(delay_seconds=timeout * 4, delay_next=1)  # the answer comes after A gave up
        answer: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(a.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
            )
        )
        sender.start()
        deadline = time.monotonic() + 10
        while simulator.ledger()["totals"]["authorizations"] == 0:  # the 0200 reached the acquirer...
            assert time.monotonic() < deadline, "the purchase never reached the simulator"
            time.sleep(0.01)
        link.blackhole()  # ...and now A's link loses everything: its reversal (0400) will not get through
        sender.join(timeout=30)
        [declined] = answer
        assert declined.status_code == 200 and declined.json()["responseCode"] == "91", declined.text
        doc = declined.json()
        with pg_database.connect() as conn:
            queued = conn.execute("SELECT stan FROM saf_entries").fetchall()
        assert queued == [(doc["stan"],)]  # queued durably in the shared SAF before A answered
        time.sleep(1.0)  # A's SAF passes try, through the cut link
        a.kill_all()
        assert simulator.entry("TERM0001", doc["stan"])["reversal_messages"] == 0  # A delivered nothing

        b.start()
        entry = _wait_reversed(simulator, doc["stan"], within=timeout * 2 + 5 + 20)  # after A's SAF lease, if any
        time.sleep(2.0)  # more SAF passes on B: nothing is sent again
        entry = simulator.entry("TERM0001", doc["stan"])
        assert entry["authorizations"] == 1 and entry["reversals"] == 1
        assert entry["reversal_messages"] == 1  # forwarded once, by B
        with pg_database.connect() as conn:
            assert conn.execute("SELECT count(*) FROM saf_entries").fetchone() == (0,)
        # The answer A gave stays the answer, from either host.
        again = httpx.post(b.url + "/transaction/process", content=body, headers=headers(token), timeout=30)
        assert again.content == declined.content and again.headers["Idempotent-Replayed"] == "true"
        assert simulator.ledger()["totals"]["authorizations"] == 1
    finally:
        b.stop()
        a.stop()
        link.close()
    assert "Traceback" not in "".join(p.read_text(errors="replace") for p in b.log_files())
