"""The sealing key ring: one file (0600, `server.sealing_key_file`) holding every AES-256 key that may still
have card data sealed under it, and which one seals new data.

    {"format": "cloudlayer-sealing-keys/1", "active": "<kid>",
     "keys": {"<kid>": {"key": "<base64>", "created_at": t, "retired_at": t | null}}}

A kid is 16 hex digits (8 random bytes), written in clear at the head of every blob it sealed. Before key
rotation existed the file held the 32 raw key bytes and blobs had no head: such a file is converted in place on
first use, its key becoming LEGACY_KID, which also opens every headless blob.

Writers (first use, `keys rotate-sealing`, `keys retire-sealing`, a backup reading a consistent set) take an
flock on `<file>.lock` and replace the file atomically, like the signing keys (oauth/keys.py); workers see a
new file by its stat at most once a second, so a rotation needs no restart.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import msgspec

from ..keyfiles import locked, write_private_json

FORMAT = "cloudlayer-sealing-keys/1"
# Hex like every kid, never a long digit run: card-data scanners must not take a key id for a PAN.
LEGACY_KID = "1e9ac0de1e9ac0de"
KEY_BYTES = 32


class RingError(Exception):
    """The key ring file is unreadable or malformed (operator-facing; never key material)."""


class RingKey(msgspec.Struct, kw_only=True):
    key: bytes
    created_at: float
    retired_at: float | None = None


class SealingRing(msgspec.Struct, kw_only=True):
    active: str
    keys: dict[str, RingKey]

    def active_key(self) -> tuple[str, bytes]:
        return self.active, self.keys[self.active].key

    @classmethod
    def from_single(cls, key: bytes) -> SealingRing:
        """A ring of one key (tests, embedding): it seals with a head naming LEGACY_KID."""
        return cls(active=LEGACY_KID, keys={LEGACY_KID: RingKey(key=key, created_at=time.time())})


def new_kid() -> str:
    while True:
        kid = os.urandom(8).hex()
        if kid != LEGACY_KID and not re.search(r"[0-9]{13}", kid):
            return kid


def _parse(path: Path, data: bytes) -> SealingRing:
    if len(data) == KEY_BYTES and not _is_json(data):
        # The pre-rotation format: the raw key. Its blobs have no head, and open with LEGACY_KID.
        created = path.stat().st_mtime
        return SealingRing(active=LEGACY_KID, keys={LEGACY_KID: RingKey(key=data, created_at=created)})
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError("format")
        keys = {
            str(kid): RingKey(
                key=base64.b64decode(k["key"], validate=True),
                created_at=float(k["created_at"]),
                retired_at=None if k.get("retired_at") is None else float(k["retired_at"]),
            )
            for kid, k in doc["keys"].items()
        }
        active = str(doc["active"])
    except Exception as e:  # one clear line, never key material
        raise RingError(f"{path}: malformed sealing key file ({type(e).__name__})") from None
    if active not in keys or any(len(k.key) != KEY_BYTES for k in keys.values()):
        raise RingError(f"{path}: sealing key file inconsistent (active key missing or a key not 32 bytes)")
    return SealingRing(active=active, keys=keys)


def read_ring(path: Path) -> SealingRing:
    try:
        return _parse(path, path.read_bytes())
    except FileNotFoundError:
        raise RingError(f"sealing key file not found: {path}") from None


def _write(path: Path, ring: SealingRing) -> None:
    doc = {
        "format": FORMAT,
        "active": ring.active,
        "keys": {
            kid: {"key": base64.b64encode(k.key).decode(), "created_at": k.created_at, "retired_at": k.retired_at}
            for kid, k in ring.keys.items()
        },
    }
    write_private_json(path, doc)  # readers see the old file or the new one, never half


def _is_json(data: bytes) -> bool:
    return data.lstrip().startswith(b"{")


def ensure_ring(path: Path) -> SealingRing:
    """The ring, created with one fresh key on first use and converted from the raw-key format."""
    try:
        data = path.read_bytes()
        if _is_json(data):
            return _parse(path, data)
    except FileNotFoundError:
        pass
    with locked(path):  # several workers may start at once: one creates (or converts), the others read
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            kid = new_kid()
            ring = SealingRing(active=kid, keys={kid: RingKey(key=os.urandom(KEY_BYTES), created_at=time.time())})
            _write(path, ring)
            return ring
        ring = _parse(path, data)
        if not _is_json(data):
            _write(path, ring)  # convert the raw-key format in place
        return ring


def rotate(path: Path, now: float | None = None) -> tuple[str, str]:
    """A new active key; the previous one is retired (it still opens what it sealed). Returns (old, new)."""
    now = time.time() if now is None else now
    ensure_ring(path)
    with locked(path):
        ring = read_ring(path)
        old = ring.active
        ring.keys[old].retired_at = now
        new = new_kid()
        ring.keys[new] = RingKey(key=os.urandom(KEY_BYTES), created_at=now)
        ring.active = new
        _write(path, ring)
    return old, new


def drop_keys(path: Path, kids: set[str]) -> list[str]:
    """Remove retired keys (never the active one); the caller has checked that nothing uses them."""
    with locked(path):
        ring = read_ring(path)
        gone = [kid for kid in kids if kid in ring.keys and kid != ring.active and ring.keys[kid].retired_at]
        for kid in gone:
            del ring.keys[kid]
        if gone:
            _write(path, ring)
    return sorted(gone)
