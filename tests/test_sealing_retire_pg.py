"""`keys retire-sealing` with store.backend = "postgres": a retired key still sealing a PENDING transaction's
request, a queued reversal or an OAuth signing key's private half in the shared database is kept; one nothing
uses is dropped; a database that cannot be read keeps every key (real PostgreSQL, tests/pg_cluster.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from cloudlayer.acquirer.messages import reversal_for
from cloudlayer.acquirer.saf import entry_key
from cloudlayer.config import load_config
from cloudlayer.oauth.backends import close_admin, open_key_admin, preflight
from cloudlayer.sealing import Sealer, blob_kid
from cloudlayer.sealing.commands import retire_unused
from cloudlayer.sealing.ring import read_ring, rotate
from cloudlayer.sealing.usage import sealed_blob_usage
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.saf import PgSafQueue
from cloudlayer.store.pg.settings import PgSettings
from conftest import write_config
from pg_cluster import free_port
from store_backends import PgBackend, rec
from test_acquirer_support import request
from test_pg_oauth import config

LATER = time.time() + 10 * 86_400  # past server.sealing_retire_grace for every retired key


def _claim_pending(pg_database: Any, sealed: bytes) -> None:
    async def claim() -> None:
        async with PgBackend(pg_database).open() as store:
            await store.claim(rec("pending-1", sealed_request=sealed))

    trio.run(claim)


def test_a_key_still_sealing_anything_in_postgres_is_kept_and_an_unused_one_dropped(
    pg_database: Any, tmp_path: Path
) -> None:
    cfg = config(tmp_path, pg_database)
    ring_path = cfg.var_path(cfg.server.sealing_key_file)
    # Key 1 seals the OAuth signing key (created by the first host's preflight and a key rotation).
    preflight(cfg)
    keys = open_key_admin(cfg)
    keys.rotate("ES256", 3600, 30)
    close_admin(keys)
    oauth_kid = read_ring(ring_path).active
    # Key 2 seals a PENDING transaction's request.
    txn_kid = rotate(ring_path)[1]
    blob = Sealer.from_file(ring_path).seal(b"acquirer request", b"pending-1")
    assert blob_kid(blob) == txn_kid
    _claim_pending(pg_database, blob)
    # Key 3 seals a queued reversal.
    saf_kid = rotate(ring_path)[1]
    queue = PgSafQueue(Database(PgSettings.from_config(cfg), application_name="test-saf"), Sealer.from_file(ring_path))
    reversal = reversal_for(request(7), "0200", "123456")
    try:
        assert queue.add(reversal, "timeout") is True
        # Key 4 seals nothing; key 5 is active.
        unused_kid = rotate(ring_path)[1]
        active = rotate(ring_path)[1]
        assert len({oauth_kid, txn_kid, saf_kid, unused_kid, active}) == 5

        usage = sealed_blob_usage(cfg, Sealer.from_file(ring_path))
        assert usage[txn_kid] == 1 and usage[saf_kid] == 1 and usage[oauth_kid] >= 1 and usage[unused_kid] == 0
        dropped, kept = retire_unused(cfg, now=LATER)
        assert dropped == [unused_kid]
        assert set(kept) == {oauth_kid, txn_kid, saf_kid}
        assert all(why.startswith("still seals") for why in kept.values())
        assert set(read_ring(ring_path).keys) == {oauth_kid, txn_kid, saf_kid, active}

        # The reversal acknowledged and the transaction gone: their keys go; the signing key's stays.
        queue.delete(entry_key(reversal))
        with pg_database.connect() as conn:
            conn.execute("DELETE FROM transactions")
        dropped, kept = retire_unused(cfg, now=LATER)
        assert sorted(dropped) == sorted([txn_kid, saf_kid])
        assert set(kept) == {oauth_kid}
        assert set(read_ring(ring_path).keys) == {oauth_kid, active}
    finally:
        queue.close()


def test_a_database_that_cannot_be_read_keeps_every_retired_key(pg_database: Any, tmp_path: Path) -> None:
    section = pg_database.store_section(postgres_connect_timeout=1.0, postgres_pool_timeout=1.0)
    section["postgres_dsn"] = f"host=127.0.0.1 port={free_port()} dbname=nowhere user=nobody"
    cfg = load_config(
        write_config(tmp_path / "c.toml", {"server": {"var_dir": str(tmp_path / "var")}, "store": section}),
        environ={},
    )
    ring_path = cfg.var_path(cfg.server.sealing_key_file)
    Sealer.from_file(ring_path)
    old = rotate(ring_path)[0]
    dropped, kept = retire_unused(cfg, now=LATER)
    assert dropped == []
    assert kept[old].startswith("the PostgreSQL store's sealed records could not be scanned")
    assert old in read_ring(ring_path).keys
