"""bench_pg.py's database: a fresh, migrated one in the throw-away cluster, as PgSettings (not a bench: no
bench_ prefix, so run.py does not run it)."""

from __future__ import annotations

from typing import Any

from cloudlayer.store.pg import migrate
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.settings import PgSettings


def migrated_settings(cluster: Any, pool: int) -> PgSettings:
    db = cluster.create_database()
    settings = PgSettings(
        dsn=db.dsn,
        password_file=db.password_file,
        pool_min=pool,
        pool_max=pool,
        connect_timeout=5.0,
        pool_timeout=10.0,
        statement_timeout=10.0,
    )
    conn = Database(settings)
    conn.open_sync()
    try:
        conn.call_sync(migrate.migrate)
    finally:
        conn.close()
    return settings
