"""Versioned schema migrations: `migrations/NNNN_name.sql`, applied in order by `cloudlayer db migrate`.

`schema_migrations` records each applied version with the SHA-256 of its file. `migrate` runs every pending
file in ONE transaction under an advisory lock (PostgreSQL's DDL is transactional: a failing migration leaves
the schema as it was; two hosts migrating at once take turns). A host checks the schema before it serves
(`check_schema`) and refuses to start on a database that is behind (run `cloudlayer db migrate`), ahead of
what this build knows (a newer build migrated it: upgrade this host), or whose applied files differ.
A migration that cannot run in a transaction (CREATE INDEX CONCURRENTLY) needs a step of its own here.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

if TYPE_CHECKING:
    from ...config import Config

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock key: "cloudlayer migrate" folded into a bigint, constant across builds.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"cloudlayer migrate").digest()[:8], "big", signed=True)

Conn = psycopg.Connection[tuple[Any, ...]]


class SchemaError(Exception):
    """The database's schema is not the one this build runs on; the message says what to do."""


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str
    checksum: str


class AppliedMigration(msgspec.Struct, frozen=True):
    version: int
    name: str
    checksum: str
    applied_at: str


class SchemaStatus(msgspec.Struct, kw_only=True):
    current: int  # highest applied version, 0 for an empty database
    latest: int  # highest version this build knows
    applied: list[AppliedMigration]
    pending: list[int]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.pending and not self.problems


def known_migrations() -> list[Migration]:
    """The migration files shipped in this package, checked to be numbered 1, 2, 3... without gaps."""
    out: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = _FILE.match(entry.name)
        if m is None:
            continue
        sql = entry.read_text(encoding="utf-8")
        out.append(Migration(int(m.group(1)), m.group(2), sql, hashlib.sha256(sql.encode()).hexdigest()))
    out.sort(key=lambda m: m.version)
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise SchemaError(f"migration files are not numbered 1..{len(out)} without gaps")
    return out


LATEST = len(known_migrations())


def _applied(conn: Conn) -> list[AppliedMigration]:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at::text FROM schema_migrations ORDER BY version"
    ).fetchall()
    return [AppliedMigration(int(v), str(n), str(c), str(a)) for v, n, c, a in rows]


def status(conn: Conn) -> SchemaStatus:
    known = {m.version: m for m in known_migrations()}
    applied = _applied(conn)
    problems: list[str] = []
    for a in applied:
        k = known.get(a.version)
        if k is None:
            problems.append(
                f"database has migration {a.version} ({a.name}) that this build does not know "
                f"(it knows up to {LATEST}): a newer build migrated it; upgrade this host"
            )
        elif k.checksum != a.checksum:
            problems.append(f"migration {a.version} ({a.name}) applied differs from this build's file")
    done = {a.version for a in applied}
    return SchemaStatus(
        current=max(done, default=0),
        latest=LATEST,
        applied=applied,
        pending=[v for v in sorted(known) if v not in done],
        problems=problems,
    )


def migrate(conn: Conn) -> list[int]:
    """Apply every pending migration in one transaction; returns the versions applied (maybe none)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        st = status(conn)
        if st.problems:
            raise SchemaError("; ".join(st.problems))
        by_version = {m.version: m for m in known_migrations()}
        for version in st.pending:
            m = by_version[version]
            conn.execute(m.sql.encode())  # no parameters: the file's statements run as one script
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
        return st.pending


def check_schema(conn: Conn) -> SchemaStatus:
    """For a host about to serve: the schema must be exactly this build's, else SchemaError."""
    st = status(conn)
    if st.problems:
        raise SchemaError("; ".join(st.problems))
    if st.pending:
        raise SchemaError(
            f"database schema at version {st.current}, this build needs {st.latest}: run `cloudlayer db migrate`"
        )
    return st


def check_before_serving(cfg: Config) -> SchemaStatus:
    """`cloudlayer serve` with store.backend = "postgres": the database answers and its schema is this
    build's, else ConfigError (the start stops with one line saying what to do)."""
    from ...config import ConfigError
    from .database import Database, DatabaseUnavailable
    from .settings import PgSettings

    settings = msgspec.structs.replace(PgSettings.from_config(cfg), pool_min=1, pool_max=1)
    db = Database(settings, application_name="cloudlayer-preflight")
    try:
        db.open_sync()
        return db.call_sync(check_schema)
    except (DatabaseUnavailable, SchemaError) as e:
        raise ConfigError(f"store: {e}") from None
    finally:
        db.close()
