"""The SAF queue in PostgreSQL beyond the shared contract: a database outage never drops a reversal, and a
reversal queued by a host that was then killed is forwarded by another host, once, to a real simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from psycopg import sql

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.messages import reversal_for
from cloudlayer.acquirer.saf import entry_key
from cloudlayer.acquirer.types import AcquirerRequest
from cloudlayer.store.pg.database import DatabaseUnavailable
from cloudlayer.store.pg.saf import ReversalNotDurable
from cloudlayer.store.pg.settings import PgSettings
from saf_backends import migrated, pg_saf
from test_acquirer_support import SEALER, acquirer_config, request, running_connector, running_simulator, wait_until

LEASE = 4.0


def _rows(pg_database: Any) -> int:
    with pg_database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM saf_entries").fetchone()
    return int(row[0]) if row else -1


def _refuse_connections(pg_database: Any, refuse: bool) -> None:
    with pg_database.cluster.admin() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(pg_database.name), sql.SQL("false" if refuse else "true")
            )
        )
        if refuse:  # and cut the pool's open connections: the database is gone for this host
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg_database.name,)
            )


def test_a_reversal_queued_while_the_database_is_down_is_kept_and_lands_later(pg_database: Any) -> None:
    settings = msgspec.structs.replace(migrated(pg_database), connect_timeout=1.0, pool_timeout=1.0)
    q = pg_saf(settings, SEALER)
    try:
        assert q.add(reversal_for(request(1), "0200", "123456"), "timeout") is True
        _refuse_connections(pg_database, True)
        try:
            second = reversal_for(request(2), "0200", "123456")
            # Kept in memory, not lost; but not durable, so the caller records nothing that relies on it.
            with pytest.raises(ReversalNotDurable):
                q.add(second, "timeout")
            with pytest.raises(ReversalNotDurable):
                q.add(second, "timeout")  # still one entry
            with pytest.raises(DatabaseUnavailable):  # recovery cannot rely on what only memory holds
                q.known(entry_key(second))
            assert len(q) == 2
            assert q.claim_due("host-a", lease_seconds=30) == []  # the loop carries on
            assert q.record_attempt(entry_key(second), "host-a") is False  # so nothing is sent
            due = q.next_due()
            assert due is not None and due < time.time() + 5
        finally:
            _refuse_connections(pg_database, False)
        assert _rows(pg_database) == 1
        # The loop's next passes write what waited in memory, once the pool has reconnected (it backs off).
        deadline = time.monotonic() + 60
        while _rows(pg_database) < 2 and time.monotonic() < deadline:
            q.next_due()
            time.sleep(0.2)
        assert _rows(pg_database) == 2
        assert q.known(entry_key(second)) is True  # durable now
        assert {i.request.stan for i in q.claim_due("host-a", lease_seconds=30)} == {"000001", "000002"}
    finally:
        q.close()


_HOLDER = """
import sys, time
from pathlib import Path
import msgspec
import pytest
from cloudlayer.acquirer.types import AcquirerRequest
from cloudlayer.sealing import Sealer
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.saf import PgSafQueue
from cloudlayer.store.pg.database import DatabaseUnavailable
from cloudlayer.store.pg.saf import ReversalNotDurable
from cloudlayer.store.pg.settings import PgSettings

fields = msgspec.json.decode(sys.argv[1])
settings = PgSettings(**(fields | {"password_file": Path(fields["password_file"])}))
reversal = msgspec.msgpack.decode(bytes.fromhex(sys.stdin.readline()), type=AcquirerRequest)
q = PgSafQueue(Database(settings, application_name="host-a"), Sealer(bytes(range(32))))
assert q.add(reversal, "timeout") is True
[item] = q.claim_due("host-a", lease_seconds=float(sys.argv[2]))
assert q.record_attempt(item.key, "host-a")  # about to send its 0400... and then the host dies
print("leased", flush=True)
time.sleep(600)
"""


def _host_a_leases_then_dies(settings: PgSettings, reversal: AcquirerRequest) -> None:
    host_a = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, msgspec.json.encode(settings, enc_hook=str).decode(), str(LEASE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert host_a.stdin is not None and host_a.stdout is not None and host_a.stderr is not None
        host_a.stdin.write(msgspec.msgpack.encode(reversal).hex().encode() + b"\n")
        host_a.stdin.close()
        line = host_a.stdout.readline()
        assert line == b"leased\n", host_a.stderr.read()
    finally:
        host_a.send_signal(signal.SIGKILL)
        host_a.wait(timeout=10)


async def test_a_reversal_leased_by_a_killed_host_is_forwarded_once_by_another(
    pg_database: Any, tmp_path: Path
) -> None:
    settings = migrated(pg_database)
    cfg = acquirer_config()
    purchase = request(41)
    async with running_simulator() as sim:
        async with running_connector(sim.port, tmp_path / "lmdb-saf", cfg) as first:
            assert (await first.send(purchase)).response_code == "00"
        reversal = reversal_for(first.prepare(purchase), cfg.purchase_mti, cfg.acquirer_institution_id)

        # Host A: a real process that queues the reversal, leases it for delivery, and is SIGKILLed.
        await trio.to_thread.run_sync(_host_a_leases_then_dies, settings, reversal)
        leased_at = time.monotonic()

        # Host B: another connector on the same database, its own owner id.
        saf_b = pg_saf(settings, SEALER)
        connector = Iso8583Connector(cfg, saf_b, SEALER, host="127.0.0.1", port=sim.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.run)
            with trio.fail_after(5):
                await connector.wait_ready()
            await trio.sleep(0.8)  # several SAF passes (saf_retry_max = 0.3 s) while A's lease still holds
            if time.monotonic() - leased_at < LEASE - 0.2:
                assert sim.ledger.snapshot()["totals"]["reversal_messages"] == 0
            await wait_until(lambda: connector.reversals_acknowledged == 1, within=LEASE + 10)
            await trio.sleep(1.0)  # more passes: nothing is sent again
            await connector.aclose()
    snap = sim.ledger.snapshot()
    entry = snap["transactions"]["TERM0001:000041"]
    assert entry["authorizations"] == 1
    assert entry["reversals"] == 1 and entry["reversed"] is True
    assert snap["totals"]["reversal_messages"] == 1
    assert entry["repeats"] == 1  # A counted its attempt before dying: B's send is the repeat 0401
    check = pg_saf(settings, SEALER)
    try:
        assert check.entries() == [] and check.known(entry_key(reversal)) is True
    finally:
        check.close()


def test_the_config_picks_the_postgres_queue_for_connectors_and_saf_commands(pg_database: Any, tmp_path: Path) -> None:
    from cloudlayer.acquirer.factory import build_connector
    from cloudlayer.config import load_config
    from cloudlayer.sealing import Sealer
    from cloudlayer.store.pg.saf import PgSafQueue
    from conftest import VENV_BIN, write_config

    settings = migrated(pg_database)
    config = write_config(tmp_path / "host.toml", {"store": pg_database.store_section()})
    cfg = load_config(config, environ={})
    sealer = Sealer.from_config(cfg)
    connector = build_connector(cfg, sealer)
    saf = connector._saf  # type: ignore[attr-defined]
    assert isinstance(saf, PgSafQueue)
    saf.close()
    q = pg_saf(settings, sealer)  # the host's own sealing key ring, as the commands open it
    try:
        q.add(reversal_for(request(51), "0200", "123456"), "timeout")
        [item] = q.claim_due("host-a", lease_seconds=30)
        q.release(item.key, "host-a", retry_in=3600, error="link down")
    finally:
        q.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(VENV_BIN / "cloudlayer"), *argv, "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)

    listed = run("saf", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = msgspec.json.decode(listed.stdout)
    assert (row["stan"], row["attempts"], row["last_error"]) == ("000051", 0, "link down")
    assert "4761" not in listed.stdout
    retried = run("saf", "retry")
    assert retried.returncode == 0 and retried.stdout.startswith("1 reversal(s) made due now"), retried.stderr
