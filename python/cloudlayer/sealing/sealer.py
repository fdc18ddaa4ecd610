"""Encryption at rest for the few records that must hold card data for a while.

A PENDING transaction keeps the acquirer request (PAN, track 2 equivalent, PIN block) so a crash can be
recovered by a repeat or reversed; the store-and-forward queue keeps reversals until acknowledged. PCI DSS
allows that only rendered unreadable: AES-256-GCM with a data key kept in its own 0600 file (the key ring,
ring.py), outside the store, and the sealed copy is erased as soon as it is no longer needed.

A blob is MAGIC + kid (8 bytes) + nonce (12) + ciphertext and tag: the kid says which key of the ring opens it.
Blobs sealed before rotation existed have no head and open with the legacy key.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import Config
from .ring import LEGACY_KID, RingError, SealingRing, ensure_ring, read_ring

log = structlog.get_logger(__name__)

_NONCE = 12
_TAG = 16
MAGIC = b"CLS1"
_HEAD = len(MAGIC) + 8
_CHECK_INTERVAL = 1.0  # seconds between stat() calls on the ring file


class SealError(ValueError):
    """A sealed blob could not be opened (wrong key, tampered, truncated)."""


def _headed(blob: bytes) -> bool:
    return blob.startswith(MAGIC) and len(blob) >= _HEAD + _NONCE + _TAG


def blob_kid(blob: bytes) -> str:
    """The id of the key that sealed `blob` (LEGACY_KID for a blob from before key rotation)."""
    if _headed(blob):
        return blob[len(MAGIC) : _HEAD].hex()
    return LEGACY_KID


class Sealer:
    """Seals with the ring's active key, opens with whichever key a blob names. Thread-safe (the SAF queue
    runs in worker threads); with a `path`, picks up a rotated ring within a second, without a restart."""

    def __init__(self, ring: SealingRing | bytes, path: Path | None = None) -> None:
        if isinstance(ring, bytes):
            if len(ring) != 32:
                raise ValueError("sealing key must be 32 bytes")
            ring = SealingRing.from_single(ring)
        self._path = path
        self._reload_lock = threading.Lock()
        self._stat: tuple[int, int, int] | None = self._file_stat()
        self._install(ring)
        self._next_check = time.monotonic() + _CHECK_INTERVAL
        self._next_forced = 0.0

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        """Load the ring, creating it (0600, parents 0700) on first use."""
        try:
            return cls(ensure_ring(path), path)
        except RingError as e:
            raise ValueError(str(e)) from None

    @classmethod
    def from_config(cls, cfg: Config) -> Sealer:
        return cls.from_file(cfg.var_path(cfg.server.sealing_key_file))

    def _install(self, ring: SealingRing) -> None:
        kid, _ = ring.active_key()
        aeads = {k: AESGCM(v.key) for k, v in ring.keys.items()}
        # One assignment: a thread sealing meanwhile sees the old state or the new one, never a mix.
        self._state = (kid, bytes.fromhex(kid), aeads)

    @property
    def active_kid(self) -> str:
        return self._state[0]

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        self._maybe_reload()
        kid, kid_bytes, aeads = self._state
        aead = aeads[kid]
        nonce = os.urandom(_NONCE)
        return MAGIC + kid_bytes + nonce + aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes = b"") -> bytes:
        if len(blob) < _NONCE + _TAG:
            raise SealError("sealed blob too short")
        kid = blob_kid(blob)
        aead = self._state[2].get(kid)
        if aead is None and self._reload(forced=True):
            aead = self._state[2].get(kid)
        if aead is None:
            raise SealError(f"sealed with key {kid}, which is not in the sealing key ring")
        body = blob[_HEAD:] if _headed(blob) else blob
        plain = _try_open(aead, body, context)
        legacy = self._state[2].get(LEGACY_KID)
        if plain is None and legacy is not None and blob.startswith(MAGIC):
            # A headless legacy blob whose random nonce happens to begin with MAGIC (one in 2**32).
            plain = _try_open(legacy, blob, context)
        if plain is None:
            raise SealError("sealed blob does not open with its key")
        return plain

    # ---- picking up a rotation ------------------------------------------------------------------------

    def _file_stat(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _maybe_reload(self) -> None:
        if self._path is not None and time.monotonic() >= self._next_check:
            self._reload(forced=False)

    def _reload(self, *, forced: bool) -> bool:
        if self._path is None:
            return False
        now = time.monotonic()
        if forced and now < self._next_forced:
            return False
        if not self._reload_lock.acquire(blocking=False):
            return False  # another thread is reloading; this one goes on with the keys it has
        try:
            self._next_check = now + _CHECK_INTERVAL
            if forced:
                self._next_forced = now + _CHECK_INTERVAL
            stat = self._file_stat()
            if stat == self._stat:
                return False
            try:
                ring = read_ring(self._path)
            except RingError as e:
                # Keep sealing with the keys we have; a broken rotation must not take the host down.
                log.error("sealing_key_reload_failed", error=str(e))
                return False
            self._install(ring)
            self._stat = stat
            log.info("sealing_keys_reloaded", active_kid=ring.active, kids=len(ring.keys))
            return True
        finally:
            self._reload_lock.release()


def _try_open(aead: AESGCM, body: bytes, context: bytes) -> bytes | None:
    try:
        return aead.decrypt(body[:_NONCE], body[_NONCE:], context)
    except InvalidTag:
        return None
