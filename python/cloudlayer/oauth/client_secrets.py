"""Client secrets: generated, shown once, stored only as HMAC-SHA-256(pepper, secret).

The pepper lives in its own 0600 file outside the client store, so a copy of the store alone does not
allow offline guessing. 256-bit random secrets make a slow KDF unnecessary: HMAC is enough and keeps the
token endpoint cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

# A recognisable prefix (and a CRC32 tail, like GitHub's tokens) lets secret scanners spot a leaked secret
# with few false positives.
SECRET_PREFIX = "clsec_"
CLIENT_ID_PREFIX = "cl_"
_SECRET_BYTES = 32  # 256 random bits


def new_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_hex(12)


def new_client_secret() -> str:
    body = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{SECRET_PREFIX}{body}{_checksum(body)}"


def looks_like_secret(value: str) -> bool:
    """True for a well-formed secret of ours (prefix + body + matching checksum); used by leak scanners/tests."""
    if not value.startswith(SECRET_PREFIX) or len(value) < len(SECRET_PREFIX) + 7:
        return False
    body, check = value[len(SECRET_PREFIX) : -6], value[-6:]
    return _checksum(body) == check


def _checksum(body: str) -> str:
    crc = zlib.crc32(body.encode("ascii"))
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(6):
        crc, r = divmod(crc, 62)
        out.append(alphabet[r])
    return "".join(out)


class SecretHasher:
    """Keyed hashing and constant-time checking of client secrets."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("pepper must be at least 32 bytes")
        self._pepper = pepper
        # The pepper's keyed HMAC state, built once: each hash copies it instead of redoing the key schedule.
        self._keyed = hmac.new(pepper, digestmod=hashlib.sha256)
        # Compared against when the client id is unknown, so that case costs the same work as a wrong secret.
        self._decoy = hmac.new(pepper, secrets.token_bytes(32), hashlib.sha256).digest()

    def hash(self, secret: str) -> bytes:
        h = self._keyed.copy()
        h.update(secret.encode("utf-8", "surrogatepass"))
        return h.digest()

    def check(self, secret: str, stored: bytes | None) -> bool:
        """Constant-time check; `stored=None` (unknown client) does the same work and returns False."""
        candidate = self.hash(secret)
        ok = hmac.compare_digest(candidate, self._decoy if stored is None else stored)
        return ok and stored is not None
