"""Chaos under load, short form (~30 s): kills, link cuts and stalls while Mypinpad resubmits; zero violations.
Also on two hosts sharing one PostgreSQL database (~60 s), Mypinpad resubmitting to either host.

The long form is `python tests/reliability/run.py` (`--pg-hosts 2` for the PostgreSQL mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudlayer.store.types import State, TransactionRecord
from reliability.chaos import Chaos, ChaosPlan, _check_ledger_entry
from reliability.scan import scan_bytes, scan_files

pytestmark = pytest.mark.slow


async def test_chaos_short_no_violations(tmp_path: Path, connector_kind: str) -> None:
    plan = ChaosPlan(duration=16.0, clients=5, interval=2.0, seed=1, connector_kind=connector_kind)
    chaos = Chaos(tmp_path, plan)
    figures = await chaos.run()
    assert figures.violations == []
    # The chaos really happened and really bit: otherwise zero violations proves nothing.
    assert figures.worker_kills >= 1 and figures.host_kills >= 1 and figures.link_cuts >= 1
    assert figures.lost_answers > 0 and figures.duplicates_served > 0
    assert figures.attempted >= 50 and figures.authorizations >= figures.attempted // 2
    assert figures.saf_left == 0 and figures.integrity_problems == 0
    if connector_kind == "http":
        assert figures.revocations >= 1 and figures.server_errors >= 1
    # Card data: every log line of every incarnation, every file under var/ (LMDB included), /metrics.
    assert chaos.host is not None and chaos.metrics_text
    hits = scan_files([*chaos.host.log_files(), *chaos.host.var_files()])
    hits += scan_bytes(chaos.metrics_text, "/metrics")
    assert hits == []


async def test_chaos_short_two_pg_hosts_no_violations(tmp_path: Path, pg_database: Any) -> None:
    """Either host killed (a worker or the whole process tree), link cuts, stalls, dropped answers; each attempt
    to a host picked at random, so resubmissions cross hosts. (PostgreSQL stopped mid-load: tests/test_pg_hosts.py.)"""
    plan = ChaosPlan(
        duration=20.0,
        clients=4,
        interval=2.5,
        seed=5,
        pg_hosts=2,
        actions=("kill_host", "kill_worker", "link_cut", "stall", "drop", "kill_host"),
    )
    chaos = Chaos(tmp_path, plan, pg=pg_database)
    figures = await chaos.run()
    assert figures.violations == []
    assert figures.worker_kills >= 1 and figures.host_kills >= 2 and figures.link_cuts >= 1
    assert figures.lost_answers > 0 and figures.duplicates_served > 0
    assert figures.attempted >= 30 and figures.authorizations >= figures.attempted // 2
    assert figures.saf_left == 0 and figures.integrity_problems == 0  # integrity: the shared table, card data too
    assert len(chaos.hosts) == 2
    hits = scan_files([p for h in chaos.hosts for p in (*h.log_files(), *h.var_files())])
    assert hits == []


def _record(approved: bool, code: str) -> TransactionRecord:
    body = f'{{"approved":{str(approved).lower()},"responseCode":"{code}"}}'.encode()
    return TransactionRecord(
        client_id="c",
        transaction_id="t",
        fingerprint=b"f" * 32,
        state=State.COMPLETED,
        transaction_type="PURCHASE",
        response_body=body,
    )


def _entry(auths: int, code: str, reversed_: bool) -> dict[str, Any]:
    return {"authorizations": auths, "response_code": code, "reversed": reversed_}


@pytest.mark.parametrize(
    ("entry", "record", "broken"),
    [
        (_entry(2, "00", False), _record(True, "00"), True),  # authorized twice
        (_entry(1, "00", False), _record(False, "91"), True),  # approved, told declined, never reversed
        (_entry(1, "00", True), _record(True, "00"), True),  # reversed, told approved
        (_entry(1, "00", False), None, True),  # approved, unknown to the store
        (_entry(1, "00", False), _record(True, "00"), False),
        (_entry(1, "00", True), _record(False, "91"), False),  # timeout: reversed and declined
        (_entry(1, "05", False), _record(False, "05"), False),
        (_entry(0, "", True), None, False),  # reversal of something never sent
    ],
)
def test_invariant_checker_catches_each_broken_promise(
    entry: dict[str, Any], record: TransactionRecord | None, broken: bool
) -> None:
    found: list[str] = []
    _check_ledger_entry("TERM0001:000001", entry, record, found)
    assert bool(found) is broken, found
