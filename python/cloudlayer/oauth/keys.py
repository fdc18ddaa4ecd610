"""Signing keys: a JWK Set file (0600) holding the active key and older keys kept for verification.

File layout (a JWK Set with extra top-level members, which RFC 7517 §5 allows):
    {"keys": [<private JWK with kid, alg, use>...], "active_kid": "...",
     "key_meta": {"<kid>": {"created_at": t, "retired_at": t|null, "verify_until": t|null}}}
`keys rotate` retires the active key (it keeps verifying until every token it signed has expired:
retired_at + token_lifetime + leeway) and adds a new active one; expired retired keys are pruned then.
Writers (first start, the CLI) take an flock and replace the file atomically; readers (workers) notice a
new file by its stat at most once a second, so a rotation needs no restart.

With store.backend = "postgres" the same key set lives in the database instead (oauth/pg_keys.py), behind
the same two protocols: `SigningKeys` (what a worker signs and verifies with) and `KeyAdmin` (the commands).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, KeySet, OKPKey

from ..keyfiles import locked, write_private_json

log = structlog.get_logger(__name__)

# JWS "alg" names we sign with. Config says "EdDSA"; joserfc 1.8 deprecates that name (RFC 9864) with a
# SecurityWarning, so we use the fully specified "Ed25519" instead.
JWS_ALGORITHMS: dict[str, str] = {"ES256": "ES256", "EdDSA": "Ed25519"}
SUPPORTED_JWS_ALGS = frozenset(JWS_ALGORITHMS.values())
_CHECK_INTERVAL = 1.0  # seconds between stat() calls on the key file


class KeyMeta(msgspec.Struct, kw_only=True):
    created_at: float
    retired_at: float | None = None
    verify_until: float | None = None


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed (operator-facing)."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    alg: str
    key: Any  # joserfc Key (private)
    meta: KeyMeta


def generate_key(jws_alg: str) -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        key: Key
        if jws_alg == "ES256":
            key = ECKey.generate_key("P-256", private=True)
        elif jws_alg == "Ed25519":
            key = OKPKey.generate_key("Ed25519", private=True)
        else:
            raise KeyFileError(f"unsupported signing algorithm {jws_alg!r}")
    return key


# -- the file ------------------------------------------------------------------------------------------
def read_key_file(path: Path) -> tuple[str, list[KeyRecord]]:
    try:
        raw = json.loads(path.read_bytes())
        active = raw["active_kid"]
        metas = raw["key_meta"]
        records = []
        with warnings.catch_warnings():
            warnings.simplefilter("error", SecurityWarning)
            for jwk in raw["keys"]:
                kid, alg = jwk["kid"], jwk["alg"]
                if alg not in SUPPORTED_JWS_ALGS:
                    raise KeyFileError(f"{path}: key {kid} has unsupported alg {alg!r}")
                key = KeySet.registry_cls.import_key(jwk)
                if not key.is_private:
                    raise KeyFileError(f"{path}: key {kid} has no private part")
                records.append(KeyRecord(kid=kid, alg=alg, key=key, meta=msgspec.convert(metas[kid], KeyMeta)))
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {path}") from None
    except KeyFileError:
        raise
    except Exception as e:  # malformed JSON/JWK: one clear line, never key material
        raise KeyFileError(f"{path}: malformed key file ({type(e).__name__})") from None
    if active not in {r.kid for r in records}:
        raise KeyFileError(f"{path}: active_kid is not in the key set")
    return active, records


def _write_key_file(path: Path, active: str, records: list[KeyRecord]) -> None:
    doc = {
        "keys": [r.key.as_dict(private=True, kid=r.kid, alg=r.alg, use="sig") for r in records],
        "active_kid": active,
        "key_meta": {r.kid: msgspec.to_builtins(r.meta) for r in records},
    }
    write_private_json(path, doc)  # readers see the old file or the new one, never half


class SigningKeys(Protocol):
    """The keys one process signs and verifies with (read on the hot path: never a blocking call)."""

    active: KeyRecord
    verify_keys: dict[str, KeyRecord]
    jwks_json: bytes

    def maybe_reload(self) -> None: ...

    def reload_for_unknown_kid(self) -> bool: ...


class KeyAdmin(Protocol):
    """The signing key set as the commands and the first start see it."""

    def ensure(self, jws_alg: str) -> None: ...

    def rotate(self, jws_alg: str, token_lifetime: float, leeway: float) -> KeyRecord: ...

    def read(self) -> tuple[str, list[KeyRecord]]: ...


def key_view(active: str, records: list[KeyRecord], now: float) -> tuple[KeyRecord, dict[str, KeyRecord], bytes]:
    """(active record, the keys that still verify, the public JWKS document) of a key set."""
    verify = {r.kid: r for r in records if r.kid == active or r.meta.verify_until is None or r.meta.verify_until > now}
    public = [r.key.as_dict(private=False, kid=r.kid, alg=r.alg, use="sig") for r in verify.values()]
    return verify[active], verify, json.dumps({"keys": public}, separators=(",", ":")).encode()


def retire_and_prune(
    active: str, records: list[KeyRecord], now: float, lifetime: float, leeway: float
) -> list[KeyRecord]:
    """A rotation's effect on the old keys: the active one verifies until its last token expired; keys past
    their window are dropped. Shared by both backends, so rotation means the same on each."""
    kept = []
    for r in records:
        if r.kid == active:
            r.meta.retired_at = now
            r.meta.verify_until = now + lifetime + leeway
        if r.meta.verify_until is None or r.meta.verify_until > now:
            kept.append(r)
    return kept


def new_record(jws_alg: str, now: float) -> KeyRecord:
    key = generate_key(jws_alg)
    return KeyRecord(kid=key.thumbprint(), alg=jws_alg, key=key, meta=KeyMeta(created_at=now))


def ensure_key_file(path: Path, jws_alg: str) -> None:
    """Create the key file with one active key unless it exists (safe when several workers start at once)."""
    with locked(path):
        if path.exists():
            return
        rec = new_record(jws_alg, time.time())
        _write_key_file(path, rec.kid, [rec])
        log.info("oauth_key_created", kid=rec.kid, alg=jws_alg)


def rotate_keys(path: Path, jws_alg: str, token_lifetime: float, leeway: float) -> KeyRecord:
    """Add a new active key; the previous one verifies until its last token has expired."""
    with locked(path):
        now = time.time()
        if path.exists():
            active, records = read_key_file(path)
        else:
            active, records = "", []
        kept = retire_and_prune(active, records, now, token_lifetime, leeway)
        new = new_record(jws_alg, now)
        _write_key_file(path, new.kid, [*kept, new])
    return new


class FileKeyAdmin:
    """KeyAdmin on the key file (store.backend = "lmdb")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self, jws_alg: str) -> None:
        ensure_key_file(self.path, jws_alg)

    def rotate(self, jws_alg: str, token_lifetime: float, leeway: float) -> KeyRecord:
        return rotate_keys(self.path, jws_alg, token_lifetime, leeway)

    def read(self) -> tuple[str, list[KeyRecord]]:
        return read_key_file(self.path)


# -- the in-memory view a worker uses ------------------------------------------------------------------
class KeyRing:
    """The keys one process signs and verifies with, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stat: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._next_forced = 0.0
        self.active: KeyRecord
        self.verify_keys: dict[str, KeyRecord] = {}
        self.jwks_json: bytes = b""
        self._load()

    def _file_stat(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _load(self) -> None:
        stat = self._file_stat()
        active, records = read_key_file(self._path)
        self.active, self.verify_keys, self.jwks_json = key_view(active, records, time.time())
        self._stat = stat

    def maybe_reload(self) -> None:
        """Pick up a rotated key file; stats it at most once a second."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _CHECK_INTERVAL
        self._reload_if_changed()

    def reload_for_unknown_kid(self) -> bool:
        """An unknown kid may mean a rotation we have not seen yet: reload at most once a second."""
        now = time.monotonic()
        if now < self._next_forced:
            return False
        self._next_forced = now + _CHECK_INTERVAL
        self._next_check = now + _CHECK_INTERVAL
        return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        try:
            if self._file_stat() == self._stat:
                return False
            self._load()
        except (OSError, KeyFileError) as e:
            # Keep serving with the keys we have; a broken rotation must not take the host down.
            log.error("oauth_key_reload_failed", error=str(e))
            return False
        log.info("oauth_keys_reloaded", active_kid=self.active.kid, kids=len(self.verify_keys))
        return True
