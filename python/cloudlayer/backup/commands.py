"""`cloudlayer backup DIR --keys-dir KEYDIR` and `cloudlayer restore DIR --keys-dir KEYDIR --var VAR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from ..audit import commands as audit
from ..config import load_config
from .layout import BackupError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
    p = sub.add_parser(
        "backup", parents=[common], help="consistent copy of every embedded store (host may run), keys apart"
    )
    p.add_argument("dir", help="new or empty directory for the data and its manifest")
    p.add_argument("--keys-dir", required=True, help="new or empty directory for the keys (apart from DIR)")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(func=_cmd_backup)
    audit.mark(p, "backup")

    p = sub.add_parser("restore", parents=[common], help="a backup into a var dir no host is using (digests first)")
    p.add_argument("dir", help="the backup's directory (with manifest.json)")
    p.add_argument("--keys-dir", required=True, help="the backup's keys directory")
    p.add_argument("--var", required=True, help="the var dir to restore into (no host running on it)")
    p.set_defaults(func=_cmd_restore)
    audit.mark(p, "restore")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"cloudlayer: {message}", file=sys.stderr)
    audit.note(args, error=message)
    return 1


def _cmd_backup(args: argparse.Namespace) -> int:
    from .take import take_backup

    cfg = load_config(args.config)
    audit.note(args, obj=f"backup:{Path(args.dir).resolve()}", detail={"keys_dir": str(Path(args.keys_dir).resolve())})
    try:
        manifest = take_backup(cfg, Path(args.dir), Path(args.keys_dir))
    except (BackupError, ValueError, OSError) as e:
        return _fail(args, str(e))
    envs = [i for i in manifest.items if i.kind == "lmdb"]
    audit.note(args, detail={"backup_id": manifest.backup_id, "stores": [i.path for i in envs], "keys": manifest.keys})
    if args.json:
        print(msgspec.json.encode(manifest).decode())
        return 0
    print(f"backup {manifest.backup_id} written to {Path(args.dir).resolve()}")
    for item in envs:
        dbs = ", ".join(f"{name or '(main)'}={n}" for name, n in sorted(item.databases.items()))
        print(f"  lmdb  {item.path:24} {item.file.size:>12} bytes  {dbs}")
    for item in manifest.items:
        if item.kind != "lmdb":
            print(f"  file  {item.path:24} {item.file.size:>12} bytes")
    print(f"  {manifest.keys} key file(s) written to {Path(args.keys_dir).resolve()} (keep them apart from the data)")
    for note in manifest.notes:
        print(f"  note: {note}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from .restore import restore_backup

    cfg = load_config(args.config)
    var = Path(args.var).resolve()
    audit.note(args, obj=f"var:{var}", detail={"from": str(Path(args.dir).resolve())})
    try:
        manifest = restore_backup(Path(args.dir), Path(args.keys_dir), var)
    except (BackupError, OSError) as e:
        return _fail(args, str(e))  # recorded in the config's own log: VAR stays as it was
    # Done: the entry goes into the restored var dir's log (the backup's history, then this restore).
    args.audit_config = msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, var_dir=str(var)))
    audit.note(args, detail={"backup_id": manifest.backup_id})
    print(f"restored backup {manifest.backup_id} ({manifest.created_at}, from {manifest.source_var_dir}) into {var}")
    print("next: `cloudlayer txn check` and `cloudlayer audit verify` with a config whose server.var_dir is it")
    return 0
