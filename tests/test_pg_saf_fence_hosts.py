"""A reversal held in memory through an outage longer than the lease (issue 12, docs/postgres.md "A reversal
queued by an owner that lost its claim"): two real hosts on one real PostgreSQL; host A reaches it through a
TCP relay the test severs (A alone loses the database; B keeps it).

A sends a purchase; the acquirer approves it but the answer is lost; the database is gone for A before A's
timeout fires, so A's timeout reversal cannot be written and is kept in A's memory, and A answers 503. A's
lease runs out. The resubmission goes to B, which takes the claim over, inquires after A's lease end plus the
acquirer timeout, finds the approval and answers "approved". Then A gets the database back. A's reversal is
for a claim that is no longer A's: it must be dropped, not forwarded (it would reverse at the issuer what B
answered approved). The SAF queue's insert is fenced by the transaction row (owner, under its row lock), so
whichever of "B takes over" and "A writes its reversal" commits first, the other sees it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlayer.samples import sample_purchase
from conftest import write_config
from connector_kinds import Acquirer, start_acquirer
from link_proxy import LinkProxy
from pg_hosts_harness import Background, replay, resubmit_until_answered, wait_for_log
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

pytestmark = pytest.mark.slow

ACQUIRER_TIMEOUT = 1.0
LEASE = {"lease_ttl": 3.5, "lease_renew": 0.3}  # the least the config allows: 3 x 1.0 + 0.3 = 3.3


@pytest.fixture
def acquirer(tmp_path: Path, connector_kind: str) -> Iterator[Acquirer]:
    acq = start_acquirer(connector_kind, tmp_path / "acquirer")
    yield acq
    acq.stop()


def _migrate(tmp_path: Path, pg_database: Any) -> None:
    cfg = write_config(
        tmp_path / "migrate.toml", {"store": pg_database.store_section(), "server": {"var_dir": str(tmp_path / "m")}}
    )
    done = subprocess.run(
        [CLOUDLAYER, "db", "migrate", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _saf_rows(pg_database: Any) -> int:
    with pg_database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM saf_entries").fetchone()
    return int(row[0]) if row else -1


def _record(pg_database: Any, transaction_id: str) -> tuple[str, str, str]:
    with pg_database.connect() as conn:
        row = conn.execute(
            "SELECT state, stan, outcome FROM transactions WHERE transaction_id = %s", (transaction_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), str(row[2])


def test_reversal_kept_through_an_outage_past_the_lease_is_dropped_once_another_host_answered(
    tmp_path: Path, acquirer: Acquirer, pg_database: Any
) -> None:
    sim: SimulatorProcess = acquirer.simulator
    _migrate(tmp_path, pg_database)
    relay = LinkProxy(pg_database.cluster.port)
    store = pg_database.store_section(**LEASE)
    store_a = {
        **store,
        "postgres_dsn": str(store["postgres_dsn"]).replace(f"port={pg_database.cluster.port}", f"port={relay.port}"),
    }
    fast_saf = {"saf_retry_min": 0.2, "saf_retry_max": 1.0}
    a = Host(
        tmp_path / "a",
        sim,
        acquirer_timeout=ACQUIRER_TIMEOUT,
        extra=acquirer.host_extra({"store": store_a, "acquirer": fast_saf}),
    )
    b: Host | None = None
    try:
        a.start()
        var_a = tmp_path / "a" / "var"
        shared = {
            "store": store,
            "acquirer": fast_saf,
            "oauth": {"pepper_file": str(var_a / "oauth" / "pepper")},
            "server": {"sealing_key_file": str(var_a / "keys" / "sealing.key")},
        }
        b = Host(tmp_path / "b", sim, acquirer_timeout=ACQUIRER_TIMEOUT, extra=acquirer.host_extra(shared))
        b.start()
        hdrs = {"Authorization": f"Bearer {a.token()}", "Content-Type": "application/json"}
        body = json.dumps(sample_purchase("saf-fence-1", amount=5100)).encode()

        sim.set_faults(drop_next=1)  # approved at the acquirer, its answer lost on the way back
        first = Background(a.url, body, hdrs)
        deadline = time.monotonic() + 10
        while sim.ledger()["totals"]["authorizations"] < 1:
            assert time.monotonic() < deadline, "host A never sent the purchase"
            time.sleep(0.01)
        relay.sever()  # before A's timeout (1 s) fires: its reversal cannot be written
        answered = first.join()
        assert answered.status_code == 503, answered.text  # the store is gone: never a made-up decline
        wait_for_log(a, "saf_kept_in_memory")
        assert _saf_rows(pg_database) == 0

        recovered = resubmit_until_answered(b, body, hdrs)  # after A's lease end + the acquirer timeout
        doc = recovered.json()
        assert doc["responseCode"] == "00" and doc["approved"] is True, doc  # B's inquiry found the approval
        state, stan, outcome = _record(pg_database, "saf-fence-1")
        assert (state, outcome) == ("COMPLETED", "recovered-approved")

        relay.restore()  # A is back: its kept reversal is for a claim no longer its own
        wait_for_log(a, "saf_reversal_dropped")
        wait_for_log(a, "worker_replaced")  # A's worker gave its lost lease up (closing its queue)
        time.sleep(3 * fast_saf["saf_retry_max"])  # what was queued would be forwarded by now
        assert _saf_rows(pg_database) == 0
        ledger = sim.ledger()
        assert ledger["totals"]["authorizations"] == 1 and ledger["totals"]["reversal_messages"] == 0
        assert sim.entry("TERM0001", stan)["reversed"] is False  # approved at the issuer, as answered

        again_a, again_b = replay(a, body, hdrs), replay(b, body, hdrs)
        assert again_a.content == again_b.content == recovered.content
    finally:
        relay.close()
        a.stop()
        if b is not None:
            b.stop()
