"""`cloudlayer client ...` and `cloudlayer keys ...`: the operator's OAuth commands.

A new secret is printed once (by `client add` and `client rotate-secret`) and never stored in clear. With
store.backend = "postgres" they change the registry and key set every host shares (oauth/backends.py picks);
`client import` and `keys import` copy this host's files in once (docs/postgres.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from ..audit import commands as audit
from ..config import load_config
from ..sealing import commands as sealing_commands
from ..store.types import StoreUnavailable
from .backends import close_admin, open_key_admin, open_registry
from .clients import AUTH_METHODS, Client, ClientStore, RegistryError
from .import_files import register as register_imports
from .keys import JWS_ALGORITHMS, KeyFileError

T = TypeVar("T")

# What a command can fail with, said in one line: a bad argument, a broken key file, PostgreSQL unreachable.
_FAILURES = (RegistryError, KeyFileError, StoreUnavailable)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
    client = sub.add_parser("client", parents=[common], help="manage OAuth clients (Mypinpad and others)")
    csub = client.add_subparsers(dest="client_command", required=True)

    p = csub.add_parser("add", parents=[common], help="register a client; prints its id and secret once")
    p.add_argument("name")
    p.add_argument("--scope", action="append", help="allowed scope (repeatable; default oauth.default_scope)")
    p.add_argument(
        "--auth-method", action="append", choices=AUTH_METHODS, help="allowed client authentication (default: both)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_client_add)
    audit.mark(p, "client add")

    p = csub.add_parser("list", parents=[common], help="list clients (never secrets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_client_list)

    p = csub.add_parser("disable", parents=[common], help="disable a client; its tokens stop working at once")
    p.add_argument("client_id")
    p.set_defaults(func=_client_disable)
    audit.mark(p, "client disable")

    p = csub.add_parser("rotate-secret", parents=[common], help="issue a new secret; the old one stops working")
    p.add_argument("client_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_client_rotate)
    audit.mark(p, "client rotate-secret")

    keys = sub.add_parser("keys", parents=[common], help="manage token signing keys and card-data sealing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("rotate", parents=[common], help="new active signing key; old keys verify until expiry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_keys_rotate)
    audit.mark(p, "keys rotate")
    p = ksub.add_parser("list", parents=[common], help="signing and sealing keys: ids, states, ages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_keys_list)
    sealing_commands.register(ksub, common)
    register_imports(csub, ksub, common)


def _fail(message: str, args: argparse.Namespace | None = None) -> int:
    print(f"cloudlayer: {message}", file=sys.stderr)
    if args is not None:
        audit.note(args, error=message)
    return 1


def _print_secret(client: Client, secret: str, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps({"client_id": client.client_id, "client_secret": secret, "scopes": list(client.scopes)}))
    else:
        print(f"{verb} client {client.name!r}")
        print(f"  client_id:     {client.client_id}")
        print(f"  client_secret: {secret}")
        print(f"  scopes:        {' '.join(client.scopes)}")
        print("The secret is shown only now: store it in the client's configuration.")


def _client_add(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    scopes = args.scope or cfg.oauth.default_scope.split()
    try:
        client, secret = _on_registry(args, lambda r: r.add(args.name, scopes, args.auth_method or AUTH_METHODS))
    except _FAILURES as e:
        return _fail(str(e), args)
    audit.note(args, obj=f"client:{client.client_id}", detail={"name": client.name, "scopes": list(client.scopes)})
    _print_secret(client, secret, args.json, "added")
    return 0


def _client_list(args: argparse.Namespace) -> int:
    try:
        clients = _on_registry(args, lambda r: r.list())
    except _FAILURES as e:
        return _fail(str(e))
    if args.json:
        print(msgspec.json.encode(clients).decode())
        return 0
    for c in clients:
        state = "enabled " if c.enabled else "DISABLED"
        print(f"{c.client_id}  {state}  {c.name}  scopes={' '.join(c.scopes)}  auth={','.join(c.auth_methods)}")
    return 0


def _client_disable(args: argparse.Namespace) -> int:
    audit.note(args, obj=f"client:{args.client_id}")
    try:
        client = _on_registry(args, lambda r: r.disable(args.client_id))
    except _FAILURES as e:
        return _fail(str(e), args)
    print(f"disabled {client.client_id} ({client.name}); its tokens are refused from now on")
    return 0


def _client_rotate(args: argparse.Namespace) -> int:
    audit.note(args, obj=f"client:{args.client_id}")
    try:
        client, secret = _on_registry(args, lambda r: r.rotate_secret(args.client_id))
    except _FAILURES as e:
        return _fail(str(e), args)
    _print_secret(client, secret, args.json, "new secret for")
    return 0


def _on_registry(args: argparse.Namespace, fn: Callable[[ClientStore], T]) -> T:
    registry = open_registry(load_config(args.config))
    try:
        return fn(registry)
    finally:
        registry.close()


def _keys_rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        admin = open_key_admin(cfg)
        try:
            new = admin.rotate(JWS_ALGORITHMS[cfg.oauth.algorithm], cfg.oauth.token_lifetime, cfg.oauth.leeway)
        finally:
            close_admin(admin)
    except _FAILURES as e:
        return _fail(str(e), args)
    audit.note(args, obj=f"signing-key:{new.kid}", detail={"alg": new.alg})
    if args.json:
        print(json.dumps({"active_kid": new.kid, "alg": new.alg}))
    else:
        print(f"new active signing key {new.kid} ({new.alg}); running workers pick it up within seconds")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        admin = open_key_admin(cfg)
        try:
            active, records = admin.read()
        finally:
            close_admin(admin)
    except _FAILURES as e:
        return _fail(str(e))
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "kind": "signing",
            "kid": r.kid,
            "alg": r.alg,
            "active": r.kid == active,
            "created_at": r.meta.created_at,
            "age_days": round((now - r.meta.created_at) / 86_400, 2),
            "retired_at": r.meta.retired_at,
            "verify_until": r.meta.verify_until,
            "expired": r.meta.verify_until is not None and r.meta.verify_until <= now,
        }
        for r in records
    ]
    try:
        rows += sealing_commands.sealing_rows(cfg, now)
    except (ValueError, OSError) as e:
        return _fail(f"sealing keys: {e}")
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        if row["kind"] == "signing":
            state = "ACTIVE" if row["active"] else "expired" if row["expired"] else "verify-only"
        else:
            state = "ACTIVE" if row["active"] else "retired (opens only)"
            if row["in_use"] is not None:
                state += f", seals {row['in_use']} stored entries"
        print(f"{row['kind']:8} {row['kid']}  {row['alg']:8} {row['age_days']:>8.2f} days  {state}")
    return 0
