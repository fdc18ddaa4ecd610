"""`cloudlayer db migrate|status`: the PostgreSQL store's schema (store.backend = "postgres")."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from ...config import Config, load_config

if TYPE_CHECKING:
    from .database import Database

# psycopg is imported only when a `db` command runs: every other command starts without it.

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    db = sub.add_parser("db", help='the PostgreSQL store\'s schema (store.backend = "postgres")')
    dsub = db.add_subparsers(dest="db_command", required=True)
    m = dsub.add_parser("migrate", parents=[common], help="apply every pending schema migration (one transaction)")
    m.set_defaults(func=_cmd_migrate)
    s = dsub.add_parser("status", parents=[common], help="schema version applied, known to this build, pending")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_status)


def _database(args: argparse.Namespace) -> Database | None:
    from .database import Database
    from .settings import PgSettings

    cfg: Config = load_config(getattr(args, "config", None))
    if cfg.store.backend != "postgres":
        print(f'cloudlayer: store.backend is "{cfg.store.backend}": `db` is for "postgres" only', file=sys.stderr)
        return None
    settings = PgSettings.from_config(cfg)
    db = Database(msgspec.structs.replace(settings, pool_min=1, pool_max=1), application_name="cloudlayer-db-command")
    db.open_sync()
    return db


def _on_database(args: argparse.Namespace, fn: Callable[[Any], T]) -> tuple[int, T | None]:
    """`fn(conn)` on a one-connection pool: (0, its result), or (2, None) for a bad config and (1, None) for an
    unreachable database or a schema error, said in one line."""
    from . import migrate as migrations
    from .database import DatabaseUnavailable

    try:
        db = _database(args)
        if db is None:
            return 2, None
        try:
            return 0, db.call_sync(fn)
        finally:
            db.close()
    except (DatabaseUnavailable, migrations.SchemaError) as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return 1, None


def _cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrate as migrations

    code, applied = _on_database(args, migrations.migrate)
    if code:
        return code
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema at version {applied[-1]}")
    else:
        print(f"schema up to date at version {migrations.LATEST}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from . import migrate as migrations

    code, st = _on_database(args, migrations.status)
    if st is None:
        return code
    if args.json:
        print(json.dumps(msgspec.to_builtins(st) | {"ok": st.ok}, indent=2))
    else:
        print(f"schema version {st.current} (this build knows {st.latest})")
        for a in st.applied:
            print(f"  {a.version:04d} {a.name:32} applied {a.applied_at}")
        for v in st.pending:
            print(f"  {v:04d} pending: run `cloudlayer db migrate`")
        for p in st.problems:
            print(f"  problem: {p}")
    return 0 if st.ok else 1
