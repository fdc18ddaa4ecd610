"""`cloudlayer audit verify|list`, and the wrapper that gives every administrative command one audit entry.

A package marks an admin subcommand with `mark(parser, "client add")`; `cli.main` then runs it through
`run_audited`, which appends exactly one entry after the command returned (outcome ok or failed) or raised.
Handlers name what they acted on with `note(args, obj=..., detail=..., error=...)`: never a secret, a token or
card data (client ids, key ids, counts and paths are fine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config
from .log import AuditError, append
from .verify import read_entries, verify


def log_path(cfg: Config) -> Path:
    return cfg.var_path(cfg.audit.path)


def mark(parser: argparse.ArgumentParser, action: str) -> None:
    """Make `parser`'s command an audited administrative action (adds --actor)."""
    parser.add_argument("--actor", default=None, help="who asks for this change (recorded in the audit log)")
    parser.set_defaults(audit_action=action)


def note(
    args: argparse.Namespace, *, obj: str | None = None, detail: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """What the audit entry of this command says: the object, non-secret details, why it failed."""
    if obj is not None:
        args.audit_object = obj
    if detail:
        args.audit_detail = {**getattr(args, "audit_detail", {}), **detail}
    if error is not None:
        args.audit_error = error


def _config_for(args: argparse.Namespace) -> Config:
    cfg: Config | None = getattr(args, "audit_config", None)  # e.g. restore: the log of the restored var dir
    return cfg if cfg is not None else load_config(getattr(args, "config", None))


def record(
    args: argparse.Namespace, action: str, rc: int, error: str | None = None, *, config_error_said: bool = False
) -> int:
    """Append the command's entry; a log that cannot be written turns success into exit 1 (said on stderr).

    Without a config that loads there is no log to write to (its place is in the config): said once."""
    try:
        cfg = _config_for(args)
    except ConfigError as e:
        if not config_error_said:
            print(f"cloudlayer: not audited ({e})", file=sys.stderr)
        return rc or 2
    detail = dict(getattr(args, "audit_detail", {}))
    error = error or getattr(args, "audit_error", None)
    if rc != 0:
        detail["exit_code"] = rc
        if error:
            detail["error"] = error[:300]
    try:
        append(
            log_path(cfg),
            action=action,
            outcome="ok" if rc == 0 else "failed",
            obj=getattr(args, "audit_object", None),
            actor=getattr(args, "actor", None),
            detail=detail,
        )
    except AuditError as e:
        print(f"cloudlayer: {e} (the action itself {'was done' if rc == 0 else 'failed'})", file=sys.stderr)
        return rc or 1
    return rc


def run_audited(args: argparse.Namespace, func: Callable[[argparse.Namespace], int]) -> int:
    """Run an admin command and append its one entry (unless it recorded itself early: `args.audit_done`)."""
    action: str = args.audit_action
    try:
        rc = int(func(args))
    except ConfigError as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        if getattr(args, "audit_done", False):
            return 2
        return record(args, action, 2, str(e), config_error_said=True)
    except BaseException as e:
        if not getattr(args, "audit_done", False):
            record(args, action, 1, f"{type(e).__name__}")  # the type only: a message might quote data
        raise
    return rc if getattr(args, "audit_done", False) else record(args, action, rc)


ADMIN_WORDS = {
    ("client", "add"),
    ("client", "disable"),
    ("client", "rotate-secret"),
    ("keys", "rotate"),
    ("keys", "rotate-sealing"),
    ("keys", "retire-sealing"),
    ("saf", "retry"),
    ("backup",),
    ("restore",),
    ("serve",),
}


def audit_usage_error(argv: list[str], code: int) -> None:
    """An admin command refused by argparse (bad arguments) still leaves a failed entry, when we can tell which."""
    words = [a for a in argv if not a.startswith("-")]
    for n in (2, 1):
        key = tuple(words[:n])
        if key in ADMIN_WORDS:
            action = "host start" if key == ("serve",) else " ".join(key)
            config = None
            if "--config" in argv and argv.index("--config") + 1 < len(argv):
                config = argv[argv.index("--config") + 1]
            ns = argparse.Namespace(config=config or os.environ.get("CLOUDLAYER_CONFIG"))
            record(ns, action, code, "usage error")
            return


# ---- audit verify / list -----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
    audit = sub.add_parser("audit", parents=[common], help="the audit log of administrative actions")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = asub.add_parser("verify", parents=[common], help="check the hash chain; exit 1 naming the first bad entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)
    p = asub.add_parser("list", parents=[common], help="the entries, oldest first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="only the last N entries")
    p.set_defaults(func=_cmd_list)


def _cmd_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    result = verify(log_path(cfg))
    if args.json:
        import msgspec

        print(msgspec.json.encode(result).decode())
    elif result.ok:
        print(f"audit log ok: {result.entries} entries, last hash {result.last_hash}")
    else:
        print(f"audit log FAILED at entry {result.bad_entry}: {result.problem} ({result.path})", file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    entries = read_entries(log_path(cfg))
    if args.limit > 0:
        entries = entries[-args.limit :]
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    for e in entries:
        who = e.get("user", "?") + (f" ({e['actor']})" if e.get("actor") else "")
        obj = e.get("object") or "-"
        when, action = e.get("time", "?"), e.get("action", "?")
        print(f"{e.get('seq', '?'):>5}  {when}  {who:20} {action:20} {obj:30} {e.get('outcome')}")
    if not entries:
        print(f"(no audit entries in {log_path(cfg)})", file=sys.stderr)
    return 0
