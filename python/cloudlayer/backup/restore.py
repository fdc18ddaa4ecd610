"""`cloudlayer restore DIR --keys-dir KEYDIR --var VAR`: a backup back into a var dir no host is using.

Order: read both manifests (same backup id), check every digest of the data and of the keys, take the var
dir's host lock exclusively (refused while any host process holds it: a running host's data is never
overwritten, and no host can start while we write), refuse if anything the backup holds already exists there,
then write each file beside its place and rename it in. Nothing is written before every check has passed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec

from ..hostlock import exclusive_if_idle
from .layout import (
    DATA_DIR,
    KEYS_MANIFEST,
    MANIFEST,
    BackupError,
    FileDigest,
    KeysManifest,
    Manifest,
    inside,
    sha256_file,
)


def _load(path: Path, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except FileNotFoundError:
        raise BackupError(f"no {path.name} in {path.parent}: not a (finished) backup") from None
    except msgspec.DecodeError as e:
        raise BackupError(f"{path}: not a backup manifest ({e})") from None


def read_manifests(dest: Path, keys_dir: Path) -> tuple[Manifest, KeysManifest]:
    manifest = _load(dest / MANIFEST, Manifest)
    keys = _load(keys_dir / KEYS_MANIFEST, KeysManifest)
    assert isinstance(manifest, Manifest) and isinstance(keys, KeysManifest)
    if manifest.format != "cloudlayer-backup/1" or keys.format != "cloudlayer-backup-keys/1":
        raise BackupError(f"unknown backup format {manifest.format!r} / {keys.format!r}")
    if manifest.backup_id != keys.backup_id:
        raise BackupError(f"--keys-dir holds the keys of backup {keys.backup_id}, not of {manifest.backup_id}")
    return manifest, keys


def _safe_rel(rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BackupError(f"manifest names an unsafe path {rel!r}")
    return p


def _check(base: Path, f: FileDigest) -> None:
    path = base / _safe_rel(f.path)
    try:
        digest, size = sha256_file(path)
    except FileNotFoundError:
        raise BackupError(f"{path} is missing from the backup") from None
    if (digest, size) != (f.sha256, f.size):
        raise BackupError(f"{path} does not match its manifest digest: the backup is damaged or was altered")


def verify_backup(dest: Path, keys_dir: Path) -> tuple[Manifest, KeysManifest]:
    manifest, keys = read_manifests(dest, keys_dir)
    for item in manifest.items:
        _check(dest / DATA_DIR, item.file)
    for f in keys.files:
        _check(keys_dir, f)
    if len(keys.files) != manifest.keys:
        raise BackupError(f"the keys manifest lists {len(keys.files)} files, the backup says {manifest.keys}")
    return manifest, keys


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(tmp, dst)


def restore_backup(dest: Path, keys_dir: Path, var: Path) -> Manifest:
    dest, keys_dir, var = dest.resolve(), keys_dir.resolve(), var.resolve()
    if inside(var, dest) or inside(var, keys_dir):
        raise BackupError("--var must not be inside the backup")
    manifest, keys = verify_backup(dest, keys_dir)
    lock = exclusive_if_idle(var)
    if lock is None:
        raise BackupError(f"a host is running on {var} (it holds {var / 'host.lock'}): stop it first")
    try:
        targets = [(dest / DATA_DIR / _safe_rel(i.file.path), var / _safe_rel(i.file.path)) for i in manifest.items]
        targets += [(keys_dir / _safe_rel(f.path), var / _safe_rel(f.path)) for f in keys.files]
        roots = {var / _safe_rel(i.path) for i in manifest.items} | {dst for _, dst in targets}
        present = sorted(str(p) for p in roots if p.exists())
        if present:
            raise BackupError(
                f"{present[0]} already exists: restore writes only into a var dir without the backup's data "
                f"(move {len(present)} existing path(s) aside first)"
            )
        for src, dst in targets:
            _place(src, dst)
        for item in manifest.items:
            if item.kind == "lmdb":
                os.chmod(var / _safe_rel(item.path), 0o700)
        _fsync_tree(var)
    finally:
        lock.close()
    return manifest


def _fsync_tree(root: Path) -> None:
    for d, _, _ in os.walk(root):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["read_manifests", "restore_backup", "verify_backup"]
