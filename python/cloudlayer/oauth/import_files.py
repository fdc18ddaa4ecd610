"""`cloudlayer client import` and `cloudlayer keys import`: copy a host's file-based OAuth state into PostgreSQL.

A one-shot command per host rather than an automatic step of `db migrate`: the files are per host while the
database is one, `db migrate` runs once from wherever the operator is, and an import must say what it did
(which clients were copied, which already existed, which key became active). Nothing is overwritten: a
client id or key id already in the database is left as it is. The file's active key becomes the database's
active key only when the database has none; otherwise it is copied verify-only for token_lifetime + leeway, so
every token it signed keeps verifying on every host. Secret hashes stay valid only under the same pepper: the
import refuses a host whose pepper differs from the database's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..audit import commands as audit
from ..config import Config, load_config
from ..store.types import StoreUnavailable
from .backends import hasher_for, open_pg_key_admin, open_pg_registry
from .clients import ClientRegistry, RegistryError
from .keys import KeyFileError, read_key_file


def register(
    csub: argparse._SubParsersAction[argparse.ArgumentParser],
    ksub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    p = csub.add_parser("import", parents=[common], help='copy this host\'s client file into PostgreSQL ("postgres")')
    p.add_argument("--from", dest="source", help="the LMDB client registry directory (default oauth.clients_file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_client_import)
    audit.mark(p, "client import")
    p = ksub.add_parser("import", parents=[common], help="copy this host's signing key file into PostgreSQL")
    p.add_argument("--from", dest="source", help="the JWK Set file (default oauth.keys_file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_keys_import)
    audit.mark(p, "keys import")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"cloudlayer: {message}", file=sys.stderr)
    audit.note(args, error=message)
    return 1


def _postgres_config(args: argparse.Namespace) -> Config | None:
    cfg = load_config(args.config)
    if cfg.store.backend != "postgres":
        _fail(args, f'store.backend is "{cfg.store.backend}": import is for "postgres" only (the files are in use)')
        return None
    return cfg


def _report(args: argparse.Namespace, what: str, outcome: dict[str, list[str]]) -> int:
    audit.note(args, obj=what, detail={k: len(v) for k, v in outcome.items()})
    if args.json:
        print(json.dumps(outcome))
    else:
        for state, ids in outcome.items():
            print(f"{state}: {len(ids)}" + (f" ({', '.join(ids)})" if ids else ""))
    return 0


def _client_import(args: argparse.Namespace) -> int:
    cfg = _postgres_config(args)
    if cfg is None:
        return 2
    source = Path(args.source) if args.source else cfg.var_path(cfg.oauth.clients_file)
    if not (source / "data.mdb").is_file():
        return _fail(args, f"no client registry at {source} (expected an LMDB directory holding data.mdb)")
    try:
        files = ClientRegistry(source, hasher_for(cfg))
        try:
            records = [c for c in (files.get(v.client_id) for v in files.list()) if c is not None]
        finally:
            files.close()
        shared = open_pg_registry(cfg)  # refuses a pepper that differs from the database's
        try:
            outcome: dict[str, list[str]] = {"imported": [], "present": []}
            for client in records:
                copied = shared.insert_if_absent(client)
                outcome["imported" if copied else "present"].append(client.client_id)
        finally:
            shared.close()
    except (RegistryError, StoreUnavailable, OSError) as e:
        return _fail(args, str(e))
    return _report(args, "clients", outcome)


def _keys_import(args: argparse.Namespace) -> int:
    cfg = _postgres_config(args)
    if cfg is None:
        return 2
    source = Path(args.source) if args.source else cfg.var_path(cfg.oauth.keys_file)
    try:
        active, records = read_key_file(source)
        admin = open_pg_key_admin(cfg)
        try:
            outcome: dict[str, list[str]] = {"active": [], "verify-only": [], "present": [], "expired": []}
            verify_for = cfg.oauth.token_lifetime + cfg.oauth.leeway
            now = time.time()
            for rec in records:
                until = rec.meta.verify_until
                if rec.kid != active and until is not None and until <= now:
                    outcome["expired"].append(rec.kid)  # verifies nothing any more: not copied
                    continue
                outcome[admin.import_key(rec, rec.kid == active, verify_for)].append(rec.kid)
        finally:
            admin.close()
    except (KeyFileError, StoreUnavailable, OSError) as e:
        return _fail(args, str(e))
    return _report(args, "signing-keys", outcome)
