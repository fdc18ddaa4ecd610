"""`cloudlayer backup DIR --keys-dir KEYDIR`: a consistent copy of a (running) host's var dir.

Each LMDB environment is copied with LMDB's own copy (mdb_env_copy2 with compaction): one read transaction,
so the copy is a committed state of that environment however hard the host writes meanwhile, never the torn
file a `cp` of data.mdb would give. Environments are copied one after another (a backup is a set of
per-store snapshots, like mdb_copy run on each); the host's design tolerates exactly that: a reversal in the
SAF copy without its transaction, or the other way round, is what a crash between the two writes leaves too.

While the copy runs, the sealing key ring and the signing key file are locked, so no key is rotated or
dropped meanwhile: every sealed blob in the copied data opens with a key in the copied ring.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lmdb

from ..audit import log as audit_log
from ..config import Config
from ..keyfiles import locked
from .layout import (
    DATA_DIR,
    KEYS_MANIFEST,
    LMDB_FILE,
    MANIFEST,
    BackupError,
    FileDigest,
    Item,
    KeysManifest,
    Manifest,
    describe_env,
    discover,
    encode,
    inside,
    sha256_file,
)

# Config keys naming state; a backup covers the var dir, so each must resolve inside it.
STATE_KEYS: tuple[tuple[str, Callable[[Config], str]], ...] = (
    ("store.path", lambda c: c.store.path),
    ("acquirer.saf_path", lambda c: c.acquirer.saf_path),
    ("oauth.clients_file", lambda c: c.oauth.clients_file),
    ("oauth.keys_file", lambda c: c.oauth.keys_file),
    ("oauth.pepper_file", lambda c: c.oauth.pepper_file),
    ("server.sealing_key_file", lambda c: c.server.sealing_key_file),
    ("audit.path", lambda c: c.audit.path),
)


def check_places(var: Path, dest: Path, keys_dir: Path) -> None:
    """The data and its keys never in one place, neither inside the var dir it copies."""
    if inside(keys_dir, dest) or inside(dest, keys_dir):
        raise BackupError("--keys-dir must be apart from DIR (not the same, not inside it, not around it)")
    for name, path in (("DIR", dest), ("--keys-dir", keys_dir)):
        if inside(path, var) or inside(var, path):
            raise BackupError(f"{name} {path} overlaps the var dir {var}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BackupError(f"{name} {path} exists and is not an empty directory")


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _copy_private(src: Path, dst: Path) -> None:
    _mkdir_private(dst.parent)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())


def _copy_env(src: Path, dst: Path) -> None:
    _mkdir_private(dst)
    # Read-only with the lock file: our read transaction registers as a reader, so the host's writers keep
    # the pages of our snapshot until the copy is done.
    env = lmdb.open(str(src), readonly=True, lock=True, subdir=True, max_dbs=0)
    try:
        env.copy(str(dst), compact=True)
    finally:
        env.close()
    os.chmod(dst / LMDB_FILE, 0o600)


def take_backup(cfg: Config, dest: Path, keys_dir: Path) -> Manifest:
    var = cfg.var_path("").resolve()
    dest, keys_dir = dest.resolve(), keys_dir.resolve()
    if not var.is_dir():
        raise BackupError(f"no var dir at {var}")
    for key, get in STATE_KEYS:
        if not inside(cfg.var_path(get(cfg)).resolve(), var):
            raise BackupError(f"`{key}` lies outside server.var_dir: a backup covers the var dir only")
    check_places(var, dest, keys_dir)
    audit_path = cfg.var_path(cfg.audit.path)
    notes: list[str] = []
    if cfg.store.backend != "lmdb":
        notes.append(f"store.backend = {cfg.store.backend!r}: the transaction store is not in this backup (pg_dump)")
    backup_id = uuid.uuid4().hex
    items: list[Item] = []
    key_files: list[FileDigest] = []
    with ExitStack() as locks:
        locks.enter_context(locked(cfg.var_path(cfg.server.sealing_key_file)))  # the locks rotations take
        locks.enter_context(locked(cfg.var_path(cfg.oauth.keys_file)))
        envs, _, _ = discover(var, audit_path, (dest, keys_dir))
        for env_dir in envs:
            rel = env_dir.relative_to(var)
            target = dest / DATA_DIR / rel
            _copy_env(env_dir, target)
            digest, size = sha256_file(target / LMDB_FILE)
            items.append(
                Item(
                    path=str(rel),
                    kind="lmdb",
                    file=FileDigest(path=str(rel / LMDB_FILE), sha256=digest, size=size),
                    databases=describe_env(target),
                )
            )
        with audit_log.locked(audit_path):  # no entry half-copied, log and head agree
            _, data_files, _ = discover(var, audit_path, (dest, keys_dir))
            for path in data_files:
                rel = path.relative_to(var)
                _copy_private(path, dest / DATA_DIR / rel)
                digest, size = sha256_file(dest / DATA_DIR / rel)
                items.append(Item(path=str(rel), kind="file", file=FileDigest(path=str(rel), sha256=digest, size=size)))
        _, _, secret_files = discover(var, audit_path, (dest, keys_dir))
        for path in secret_files:
            rel = path.relative_to(var)
            _copy_private(path, keys_dir / rel)
            digest, size = sha256_file(keys_dir / rel)
            key_files.append(FileDigest(path=str(rel), sha256=digest, size=size))
    manifest = Manifest(
        backup_id=backup_id,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        host=socket.gethostname(),
        source_var_dir=str(var),
        version=_version(),
        items=items,
        keys=len(key_files),
        notes=notes,
    )
    _write_manifest(keys_dir / KEYS_MANIFEST, encode(KeysManifest(backup_id=backup_id, files=key_files)))
    _write_manifest(dest / MANIFEST, encode(manifest))  # last: a backup without its manifest is unfinished
    return manifest


def _version() -> str:
    try:
        return version("cloudlayer")
    except PackageNotFoundError:
        return "unknown"


def _write_manifest(path: Path, data: bytes) -> None:
    _mkdir_private(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
