"""What a var dir holds, found generically, and the manifest a backup writes about it.

Every directory holding a `data.mdb` is an LMDB environment (the transaction store, the SAF queue, the client
registry, and whatever environment or named database a later version adds): it is copied whole with LMDB's
own consistent copy. The audit log is data. Every other regular file (the sealing key ring, the signing keys,
the pepper, card keys, the dev TLS key, anything new) is treated as a secret and goes to the keys directory,
never beside the data. Runtime-only state is left out: `metrics/` (Prometheus' per-process files), lock files
(`*.lock`) and files being written (`.*.tmp`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import lmdb
import msgspec

FORMAT = "cloudlayer-backup/1"
KEYS_FORMAT = "cloudlayer-backup-keys/1"
MANIFEST = "manifest.json"
KEYS_MANIFEST = "keys-manifest.json"
DATA_DIR = "data"
RUNTIME_DIRS = frozenset({"metrics"})
LMDB_FILE = "data.mdb"

Kind = Literal["lmdb", "file", "key"]


class FileDigest(msgspec.Struct, kw_only=True):
    path: str  # relative to the var dir (for "lmdb": the environment's data.mdb)
    sha256: str
    size: int


class Item(msgspec.Struct, kw_only=True):
    path: str  # relative to the var dir
    kind: Kind
    file: FileDigest
    databases: dict[str, int] = msgspec.field(default_factory=dict)  # lmdb: named db -> entries ("" = main)


class Manifest(msgspec.Struct, kw_only=True):
    format: str = FORMAT
    backup_id: str
    created_at: str
    host: str
    source_var_dir: str
    version: str
    items: list[Item]
    keys: int  # how many key files went to the keys directory (listed in its own manifest)
    notes: list[str] = msgspec.field(default_factory=list)


class KeysManifest(msgspec.Struct, kw_only=True):
    format: str = KEYS_FORMAT
    backup_id: str
    files: list[FileDigest]


class BackupError(Exception):
    """Why a backup or restore was refused or failed (operator-facing, one line)."""


def inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _skipped(name: str) -> bool:
    return name.endswith(".lock") or (name.startswith(".") and name.endswith(".tmp"))


def discover(var: Path, audit_log: Path, exclude: tuple[Path, ...] = ()) -> tuple[list[Path], list[Path], list[Path]]:
    """(LMDB environment dirs, data files, key files) under `var`, as absolute paths, sorted."""
    audit_files = {audit_log.resolve(), audit_log.with_name(audit_log.name + ".head").resolve()}
    envs: list[Path] = []
    data: list[Path] = []
    keys: list[Path] = []

    def walk(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            if entry.resolve() in exclude or entry.is_symlink():
                continue
            if entry.is_dir():
                if d == var and entry.name in RUNTIME_DIRS:
                    continue
                if (entry / LMDB_FILE).is_file():
                    envs.append(entry)
                else:
                    walk(entry)
            elif entry.is_file() and not _skipped(entry.name):
                (data if entry.resolve() in audit_files else keys).append(entry)

    if (var / LMDB_FILE).is_file():
        raise ValueError(f"{var} is itself an LMDB environment: point server.var_dir at its parent")
    walk(var)
    return envs, data, keys


def describe_env(path: Path) -> dict[str, int]:
    """Named databases of an LMDB environment (a copy: nobody else has it open) and their entry counts."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=1024, subdir=True)
    try:
        counts: dict[str, int] = {}
        with env.begin() as txn:
            names = list(txn.cursor().iternext(values=False))
        for name in names:
            try:
                db = env.open_db(bytes(name), create=False)
            except lmdb.Error:
                continue  # a plain key of the main database, not a named database
            with env.begin() as txn:
                counts[bytes(name).decode("utf-8", "replace")] = int(txn.stat(db)["entries"])
        counts[""] = int(env.stat()["entries"])
        return counts
    finally:
        env.close()


def encode(doc: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(doc), indent=1) + b"\n"
