"""Random secrets in their own 0600 files (the client-secret pepper, card keys), created once."""

from __future__ import annotations

import os
from pathlib import Path


def load_or_create_secret(path: Path, size: int) -> bytes:
    """Read a random secret from `path`, creating it atomically with mode 0600 if missing.

    Safe when several worker processes start at once: O_EXCL picks one creator, the others read its file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic: fails if another process created it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    if len(data) != size:
        raise ValueError(f"{path}: expected a {size}-byte secret, found {len(data)} bytes")
    return data
