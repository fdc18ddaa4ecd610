"""Encryption at rest for the few records that must hold card data for a while.

A PENDING transaction keeps the acquirer request (PAN, track 2 equivalent, PIN block) so a crash can be
recovered by a repeat or reversed; the store-and-forward queue keeps reversals until acknowledged. PCI DSS
allows that only rendered unreadable: AES-256-GCM with a data key kept in its own 0600 file, outside the
store, and the sealed copy is erased as soon as it is no longer needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .config import Config

_NONCE = 12


class SealError(ValueError):
    """A sealed blob could not be opened (wrong key, tampered, truncated)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        """Load the data key, creating it (0600, parents 0700) on first use."""
        return cls(load_or_create_secret(path, 32))

    @classmethod
    def from_config(cls, cfg: Config) -> Sealer:
        return cls.from_file(cfg.var_path(cfg.server.sealing_key_file))

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes = b"") -> bytes:
        if len(blob) < _NONCE + 16:
            raise SealError("sealed blob too short")
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], context)
        except Exception:
            raise SealError("sealed blob does not open with this key") from None


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
