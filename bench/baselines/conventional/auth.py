"""OAuth2 client credentials: client secrets kept as HMAC-SHA-256(pepper, secret), ES256 access tokens (PyJWT).

The var dir holds `pepper` and `signing-key.pem` (0600) and `clients.json` ({client_id: {secret_hmac,
scope}}). Every bearer token is verified in full on every request (signature, exp, iat, iss, aud): no cache,
which is what a team using PyJWT's documented `jwt.decode` does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

SCOPE = "transactions:process"
AUDIENCE = "cloudlayer-transactions"
LIFETIME = 3600
LEEWAY = 30
KID = "conventional-1"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init_var_dir(var_dir: Path) -> None:
    """Pepper and signing key, made once (before any worker starts)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    if not (var_dir / "pepper").exists():
        _write_private(var_dir / "pepper", secrets.token_bytes(32))
    if not (var_dir / "signing-key.pem").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(var_dir / "signing-key.pem", pem)


def add_client(var_dir: Path) -> dict[str, str]:
    """A new client; its secret is returned once and stored only as an HMAC."""
    init_var_dir(var_dir)
    client_id, secret = "cl_" + secrets.token_hex(12), secrets.token_urlsafe(32)
    pepper = (var_dir / "pepper").read_bytes()
    path = var_dir / "clients.json"
    clients = json.loads(path.read_text()) if path.exists() else {}
    clients[client_id] = {"secret_hmac": hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest(), "scope": SCOPE}
    path.write_text(json.dumps(clients))
    return {"client_id": client_id, "client_secret": secret}


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    client_id: str
    scopes: frozenset[str]


class Auth:
    def __init__(self, var_dir: Path, issuer: str) -> None:
        self._pepper = (var_dir / "pepper").read_bytes()
        self._clients: dict[str, dict[str, str]] = json.loads((var_dir / "clients.json").read_text())
        loaded = serialization.load_pem_private_key((var_dir / "signing-key.pem").read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("signing-key.pem is not an EC key")
        self._private_key = loaded
        self._public_key = loaded.public_key()
        self._issuer = issuer
        self._decoy = secrets.token_hex(32)  # compared against for an unknown client: same work, same time

    def authenticate(self, client_id: str, client_secret: str) -> dict[str, str] | None:
        client = self._clients.get(client_id)
        expected = client["secret_hmac"] if client else self._decoy
        candidate = hmac.new(self._pepper, client_secret.encode(), hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(candidate, expected)
        return client if ok and client is not None else None

    def issue(self, client_id: str, scope: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": client_id,
            "aud": AUDIENCE,
            "exp": now + LIFETIME,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": scope,
        }
        return jwt.encode(claims, self._private_key, algorithm="ES256", headers={"kid": KID, "typ": "at+jwt"})

    def verify(self, token: str, scope: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public_key,
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError as e:
            raise AuthError(type(e).__name__) from None
        client_id = claims.get("client_id")
        if not isinstance(client_id, str) or client_id != claims["sub"] or client_id not in self._clients:
            raise AuthError("unknown client")
        scopes = frozenset(str(claims.get("scope", "")).split())
        if scope not in scopes:
            raise AuthError("insufficient scope")
        return Principal(client_id, scopes)
