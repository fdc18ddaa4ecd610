"""`cloudlayer txn show|list`: read-only views of the transaction store for operators.

Output never holds card data: records are stored redacted (PAN 6+4 at most), the sealed acquirer request
is shown only as present/absent, and the PAN is masked again here in case a bad record slipped through.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..cardkey import fingerprint as card_fingerprint
from ..config import Config, load_config
from .types import TransactionRecord

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
    txn = sub.add_parser("txn", help="inspect stored transactions (read-only)")
    tsub = txn.add_subparsers(dest="txn_command", required=True)

    show = tsub.add_parser("show", parents=[common], help="one transaction with its timeline")
    show.add_argument("id", nargs="?", help="the transactionId")
    show.add_argument("--client", help="the OAuth client id (default: every client with this transactionId)")
    show.add_argument("--rrn", help="find by retrieval reference number instead of transactionId")
    show.add_argument("--json", action="store_true", help="JSON output")
    show.set_defaults(func=_cmd_show)

    lst = tsub.add_parser("list", parents=[common], help="transactions created since a time")
    lst.add_argument("--since", default="24h", help="ISO 8601 time or a duration ago: 30s, 15m, 2h, 7d (default 24h)")
    lst.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    lst.add_argument("--json", action="store_true", help="JSON output")
    lst.set_defaults(func=_cmd_list)

    check = tsub.add_parser(
        "check", parents=[common], help="integrity scan: records decode, indexes agree, no card data, no orphans"
    )
    check.add_argument("--pending-max-age", type=float, default=60.0, help="seconds before a PENDING counts as stuck")
    check.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from .integrity import main as integrity_main

    argv = ["--pending-max-age", str(args.pending_max_age)]
    return integrity_main([*argv, "--config", args.config] if getattr(args, "config", None) else argv)


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from an ISO 8601 time (naive means UTC) or a duration ago; ValueError otherwise."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: expected an ISO 8601 time or a duration like 15m, 2h, 7d; got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _iso(t: float) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds") if t else None


def _mask_pan(pan: str | None) -> str | None:
    if pan is None:
        return None
    digits = [c for c in pan if c.isdigit()]
    if len(digits) <= 10:
        return pan
    return "".join(digits[:6]) + "*" * (len(digits) - 10) + "".join(digits[-4:])


def record_view(rec: TransactionRecord) -> dict[str, Any]:
    """What an operator may see of a record: redacted, secrets reduced to present/absent."""
    return {
        "client_id": rec.client_id,
        "transaction_id": rec.transaction_id,
        "state": rec.state.value,
        "owner": rec.owner,
        "transaction_type": rec.transaction_type,
        "original_transaction_id": rec.original_transaction_id,
        "amount": rec.amount,
        "currency": rec.currency,
        "merchant_id": rec.merchant_id,
        "terminal_id": rec.terminal_id,
        "masked_pan": _mask_pan(rec.masked_pan),
        # 8 hex digits of a hash of the card key (itself a keyed hash): tells taps apart, says nothing of the card.
        "card_key": card_fingerprint(rec.card_key) or None,
        "reversed_by": rec.reversed_by or None,
        "stan": rec.stan,
        "rrn": rec.rrn,
        "transmission_datetime": rec.transmission_datetime,
        "acquirer_mti": rec.acquirer_mti,
        "response_status": rec.response_status,
        "response_code": rec.response_code,
        "approved": rec.approved,
        "authorisation_code": rec.authorisation_code,
        "outcome": rec.outcome,
        "replays": rec.replays,
        "created_at": _iso(rec.created_at),
        "completed_at": _iso(rec.completed_at),
        "fingerprint": rec.fingerprint.hex(),
        "emv_redacted": rec.emv_redacted.hex().upper(),
        "sealed_request": "present (encrypted)" if rec.sealed_request else None,
        "response_body": rec.response_body.decode("utf-8", "replace"),
        "timeline": [
            {"at": _iso(e.at), "what": e.what, "detail": e.detail} for e in sorted(rec.events, key=lambda e: e.at)
        ],
    }


def _print_record(view: dict[str, Any]) -> None:
    for key, value in view.items():
        if key != "timeline" and value not in (None, "", 0):
            print(f"{key:24} {value}")
    print("timeline:")
    for e in view["timeline"]:
        print(f"  {e['at']}  {e['what']:16} {e['detail']}")


def _with_store(args: argparse.Namespace, fn: Callable[[Any], Awaitable[T]]) -> T | None:
    from .lmdb_store import LmdbStore

    cfg = load_config(args.config)
    if cfg.store.backend == "postgres":
        return _with_pg_store(cfg, fn)
    path: Path = cfg.var_path(cfg.store.path)
    if not (path / "data.mdb").exists():
        print(f"cloudlayer: no transaction store at {path}", file=sys.stderr)
        return None
    store = LmdbStore.from_config(cfg)
    try:
        return trio.run(fn, store)
    finally:
        store.close()


def _with_pg_store(cfg: Config, fn: Callable[[Any], Awaitable[T]]) -> T | None:
    from .pg.database import DatabaseUnavailable
    from .pg.store import PgStore

    store = PgStore.from_config(cfg)

    async def run() -> T:
        await store.open()
        return await fn(store)

    try:
        return trio.run(run)
    except DatabaseUnavailable as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return None
    finally:
        store.close()


def _cmd_show(args: argparse.Namespace) -> int:
    if not args.id and not args.rrn:
        print("cloudlayer: txn show needs a transactionId or --rrn", file=sys.stderr)
        return 2

    async def find(store: Any) -> list[TransactionRecord]:
        found: list[TransactionRecord]
        if args.rrn:
            found = await store.find_by_rrn(args.rrn)
            if args.id:
                found = [r for r in found if r.transaction_id == args.id]
        elif args.client:
            one = await store.get(args.client, args.id)
            found = [one] if one else []
        else:
            found = await store.find_by_transaction_id(args.id)
        if args.client:
            found = [r for r in found if r.client_id == args.client]
        return found

    records = _with_store(args, find)
    if not records:
        if records is not None:
            print("cloudlayer: no such transaction", file=sys.stderr)
        return 1
    views = [record_view(r) for r in records]
    if args.json:
        print(json.dumps(views[0] if len(views) == 1 else views, indent=2))
    else:
        for i, view in enumerate(views):
            if i:
                print()
            _print_record(view)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("cloudlayer: --limit must be at least 1", file=sys.stderr)
        return 2

    async def scan(store: Any) -> list[TransactionRecord]:
        found: list[TransactionRecord] = await store.list_since(since, args.limit)
        return found

    records = _with_store(args, scan)
    if records is None:
        return 1
    views = [record_view(r) for r in records]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    for v in views:
        print(
            f"{v['created_at']}  {v['state']:9} {v['client_id']:>16} {v['transaction_id']:36} "
            f"{v['transaction_type']:8} {v['amount']:>10} {v['currency']:3} rrn={v['rrn']} stan={v['stan']} "
            f"{v['response_code'] or '--'} {v['outcome']}"
        )
    print(f"({len(views)} transactions since {_iso(since)})", file=sys.stderr)
    return 0
