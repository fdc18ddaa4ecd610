"""PostgreSQL backend, foundation: config checks, versioned migrations, `cloudlayer db`, refusal to start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudlayer.config import ConfigError, load_config
from cloudlayer.store.pg import migrate
from cloudlayer.store.pg.database import Database, DatabaseUnavailable
from cloudlayer.store.pg.settings import PgSettings
from conftest import VENV_BIN, ServerProcess, write_config


def _cfg(tmp_path: Path, **store: Any) -> Any:
    path = write_config(tmp_path / "c.toml", {"store": {"backend": "postgres", **store}})
    return load_config(path, environ={})


def _pwfile(tmp_path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    p = tmp_path / "pw"
    p.write_text(text)
    os.chmod(p, mode)
    return p


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({}, "store.postgres_dsn` is required"),
        ({"postgres_dsn": "host=db password=hunter2"}, "must not carry `password`"),
        ({"postgres_dsn": "postgresql://app:hunter2@db/cl"}, "must not carry `password`"),
        ({"postgres_dsn": "host=db passfile=/x"}, "must not carry `passfile`"),
        ({"postgres_dsn": "host='db dbname=x password=hunter2"}, "not a valid libpq"),
        ({"postgres_dsn": "host=db", "postgres_password_file": "missing.pw"}, "file not found"),
        ({"postgres_dsn": "host=db", "postgres_pool_min": 0}, "postgres_pool_min"),
        ({"postgres_dsn": "host=db", "postgres_pool_min": 5, "postgres_pool_max": 4}, "postgres_pool_min"),
        ({"postgres_dsn": "host=db", "postgres_statement_timeout": 0.0}, "postgres_statement_timeout"),
        ({"postgres_dsn": "host=db", "postgres_pool_timeout": -1.0}, "postgres_pool_timeout"),
        ({"postgres_dsn": "host=db", "postgres_password": "x"}, "unknown field `postgres_password`"),
        ({"backend": "mysql"}, "store.backend"),
    ],
)
def test_bad_postgres_settings_stop_the_start(tmp_path: Path, store: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _cfg(tmp_path, **store)
    assert "hunter2" not in str(info.value)


def test_password_file_must_be_private_and_not_empty(tmp_path: Path) -> None:
    _pwfile(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _cfg(tmp_path, postgres_dsn="host=db", postgres_password_file=str(tmp_path / "pw"))
    _pwfile(tmp_path, text="")
    with pytest.raises(ConfigError, match="is empty"):
        _cfg(tmp_path, postgres_dsn="host=db", postgres_password_file=str(tmp_path / "pw"))
    _pwfile(tmp_path, text="  s3cret  \nignored\n")
    cfg = _cfg(tmp_path, postgres_dsn="host=db port=6543 dbname=cl", postgres_password_file=str(tmp_path / "pw"))
    settings = PgSettings.from_config(cfg)
    assert settings.password() == "s3cret"
    assert settings.describe() == "db:6543/cl"


def test_migration_files_are_numbered_and_hashed() -> None:
    known = migrate.known_migrations()
    assert [m.version for m in known] == list(range(1, migrate.LATEST + 1))
    assert all(len(m.checksum) == 64 and m.sql.strip() for m in known)


def _db(pg_database: Any, tmp_path: Path) -> Database:
    cfg = _cfg(tmp_path, **{k: v for k, v in pg_database.store_section().items() if k != "backend"})
    db = Database(PgSettings.from_config(cfg))
    db.open_sync()
    return db


def test_migrate_is_idempotent_and_status_tells(pg_database: Any, tmp_path: Path) -> None:
    db = _db(pg_database, tmp_path)
    try:
        before = db.call_sync(migrate.status)
        assert (before.current, before.pending, before.ok) == (0, list(range(1, migrate.LATEST + 1)), False)
        with pytest.raises(migrate.SchemaError, match="run `cloudlayer db migrate`"):
            db.call_sync(migrate.check_schema)
        assert db.call_sync(migrate.migrate) == list(range(1, migrate.LATEST + 1))
        assert db.call_sync(migrate.migrate) == []  # a second run changes nothing
        after = db.call_sync(migrate.check_schema)
        assert after.ok and after.current == migrate.LATEST
    finally:
        db.close()
    with pg_database.connect() as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"transactions", "owners", "schema_migrations"} <= tables


def test_schema_too_new_or_changed_is_refused(pg_database: Any, tmp_path: Path) -> None:
    db = _db(pg_database, tmp_path)
    try:
        db.call_sync(migrate.migrate)
        with pg_database.connect() as conn:
            conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")
        with pytest.raises(migrate.SchemaError, match="newer build migrated it"):
            db.call_sync(migrate.check_schema)
        with pytest.raises(migrate.SchemaError, match="newer build"):
            db.call_sync(migrate.migrate)  # never "migrates" a schema it does not know
        with pg_database.connect() as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
            conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(migrate.SchemaError, match="differs"):
            db.call_sync(migrate.check_schema)
    finally:
        db.close()


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from pg_cluster import free_port

    pw = _pwfile(tmp_path, text="not-the-password\n")
    cfg = _cfg(
        tmp_path,
        postgres_dsn=f"host=127.0.0.1 port={free_port()} dbname=x user=y",
        postgres_password_file=str(pw),
        postgres_connect_timeout=1.0,
        postgres_pool_timeout=1.0,
    )
    db = Database(PgSettings.from_config(cfg))
    with pytest.raises(DatabaseUnavailable, match=r"PostgreSQL 127\.0\.0\.1:\d+/x") as info:
        db.open_sync()
    assert "not-the-password" not in str(info.value)


def _cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}
    return subprocess.run(
        [str(VENV_BIN / "cloudlayer"), *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_db_commands_and_host_refuses_an_unmigrated_schema(pg_database: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "host.toml", {"store": pg_database.store_section()})
    status = _cli(config, "db", "status", "--json")
    assert status.returncode == 1, status.stderr
    assert json.loads(status.stdout)["pending"] == list(range(1, migrate.LATEST + 1))

    host = ServerProcess.cloudlayer_serve(config)
    assert host.wait(timeout=60) == 2
    assert "run `cloudlayer db migrate`" in host.stderr
    assert "Traceback" not in host.stderr

    done = _cli(config, "db", "migrate")
    assert done.returncode == 0, done.stderr
    assert f"schema at version {migrate.LATEST}" in done.stdout
    again = _cli(config, "db", "migrate")
    assert again.returncode == 0 and "up to date" in again.stdout
    status = _cli(config, "db", "status")
    assert status.returncode == 0 and f"schema version {migrate.LATEST}" in status.stdout

    with pg_database.connect() as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")
    host = ServerProcess.cloudlayer_serve(config)
    assert host.wait(timeout=60) == 2
    assert "upgrade this host" in host.stderr and "Traceback" not in host.stderr


def test_db_commands_on_lmdb_say_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "host.toml", {})
    out = _cli(config, "db", "status")
    assert out.returncode == 2 and 'store.backend is "lmdb"' in out.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
