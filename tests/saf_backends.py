"""The two SAF backends for the contract suite: a real LMDB file, and real PostgreSQL (the pg_database fixture)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlayer.acquirer.saf import SafQueue
from cloudlayer.acquirer.saf_store import SafStore
from cloudlayer.sealing import Sealer
from cloudlayer.store.pg import migrate
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.saf import PgSafQueue
from cloudlayer.store.pg.settings import PgSettings


def pg_settings(pg_database: Any, **overrides: Any) -> PgSettings:
    base: dict[str, Any] = {
        "dsn": pg_database.dsn,
        "password_file": Path(pg_database.password_file),
        "pool_min": 1,
        "pool_max": 4,
        "connect_timeout": 2.0,
        "pool_timeout": 2.0,
        "statement_timeout": 5.0,
    }
    base.update(overrides)
    return PgSettings(**base)


def migrated(pg_database: Any) -> PgSettings:
    settings = pg_settings(pg_database)
    db = Database(settings, application_name="test-migrate")
    db.open_sync()
    try:
        db.call_sync(migrate.migrate)
    finally:
        db.close()
    return settings


def pg_saf(settings: PgSettings, sealer: Sealer) -> PgSafQueue:
    return PgSafQueue(Database(settings, application_name="test-saf"), sealer)


def saf_factory(kind: str, tmp_path: Path, pg_database: Any | None) -> Callable[[Sealer], SafStore]:
    """Opens instances of one queue (as two workers or two hosts would): same file, or same database."""
    if kind == "lmdb":
        return lambda sealer: SafQueue(tmp_path / "saf", sealer)
    settings = migrated(pg_database)
    return lambda sealer: pg_saf(settings, sealer)


def stored_bytes(kind: str, tmp_path: Path, pg_database: Any) -> bytes:
    """Everything the backend keeps on disk or in its tables, to look for card data in."""
    if kind == "lmdb":
        return (tmp_path / "saf" / "data.mdb").read_bytes()
    with pg_database.connect() as conn:
        rows = conn.execute("SELECT s::text FROM saf_entries s UNION ALL SELECT d::text FROM saf_done d").fetchall()
    return "\n".join(str(r[0]) for r in rows).encode()
