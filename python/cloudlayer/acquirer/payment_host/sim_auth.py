"""The simulated payment host's authorization server: it checks the three client authentication methods as a
bank would, issues opaque expiring tokens, verifies and revokes them. Written from RFC 6749 2.3.1 / 4.4 / 5.2
and RFC 7523 2.2 / 3, separately from our client (client_auth.py), so that the tests check one against the other.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote_plus

from joserfc import jwk, jwt
from joserfc.errors import JoseError

from .client_auth import ASSERTION_TYPE
from .sim_config import HttpSimulatorConfig, SimulatedClient

_ALGS = ("ES256", "ES384", "ES512", "RS256", "PS256", "Ed25519")
_LEEWAY = 5


class ClientRefused(Exception):
    """invalid_client / invalid_request: the message is for the simulator's log and stats, never a secret."""

    def __init__(self, error: str, why: str) -> None:
        super().__init__(why)
        self.error = error


class _Client:
    def __init__(self, spec: SimulatedClient, base_dir: Path) -> None:
        self.client_id = spec.client_id
        self.methods = set(spec.auth_methods)
        self.secret = (base_dir / spec.secret_file).read_text().strip() if spec.secret_file else ""
        self.key: jwk.Key | None = None
        if spec.public_key_file:
            pem = (base_dir / spec.public_key_file).read_bytes()
            for key_type in ("EC", "RSA", "OKP"):
                try:
                    self.key = jwk.import_key(pem, key_type)
                    break
                except (JoseError, ValueError, TypeError):
                    continue
            if self.key is None:
                raise ValueError(f"simulator client {spec.client_id!r}: public_key_file is not a PEM key")


class AuthServer:
    def __init__(self, config: HttpSimulatorConfig, base_dir: Path) -> None:
        self.clients = {c.client_id: _Client(c, base_dir) for c in config.clients}
        self.lifetime = config.token_lifetime
        self.audiences = set(config.token_audiences)
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client id, expiry, wall clock)
        self._jtis: dict[str, float] = {}  # assertion ids seen -> their exp (replays refused)
        self.stats: dict[str, int] = {"requests": 0, "issued": 0, "refused": 0, "failed": 0, "revocations": 0}
        self.by_method: dict[str, int] = {}
        self.rejected_tokens = 0

    # --- the token endpoint -----------------------------------------------------------------------------

    def authenticate(self, form: Mapping[str, str], authorization: str, token_url: str) -> str:
        """The client id, or ClientRefused. Exactly one method per request (RFC 6749 2.3)."""
        basic = authorization[:6].lower() == "basic "
        used = [
            m
            for m, present in (
                ("client_secret_basic", basic),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form),
            )
            if present
        ]
        if len(used) != 1:
            raise ClientRefused("invalid_request", f"{len(used)} client authentication methods in one request")
        method = used[0]
        if method == "client_secret_basic":
            client_id, secret = self._basic(authorization[6:].strip())
            client = self._client(client_id, method)
            self._check_secret(client, secret)
        elif method == "client_secret_post":
            client = self._client(form.get("client_id", ""), method)
            self._check_secret(client, form["client_secret"])
        else:
            client = self._assertion(form, token_url)
        self.by_method[method] = self.by_method.get(method, 0) + 1
        return client.client_id

    @staticmethod
    def _basic(value: str) -> tuple[str, str]:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ClientRefused("invalid_client", "Basic credentials are not base64 text") from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise ClientRefused("invalid_client", "Basic credentials without ':'")
        return unquote_plus(client_id), unquote_plus(secret)

    def _client(self, client_id: str, method: str) -> _Client:
        client = self.clients.get(client_id)
        if client is None:
            raise ClientRefused("invalid_client", "unknown client")
        if method not in client.methods:
            raise ClientRefused("invalid_client", f"{method} not allowed for this client")
        return client

    @staticmethod
    def _check_secret(client: _Client, secret: str) -> None:
        if not client.secret or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise ClientRefused("invalid_client", "wrong client secret")

    def _assertion(self, form: Mapping[str, str], token_url: str) -> _Client:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise ClientRefused("invalid_request", "client_assertion_type is not jwt-bearer")
        raw = form["client_assertion"]
        try:
            payload_iss = _peek_iss(raw)  # the issuer names the client; its registered key must verify the rest
        except ValueError:
            raise ClientRefused("invalid_client", "client_assertion is not a JWT") from None
        client = self._client(payload_iss, "private_key_jwt")
        if client.key is None:
            raise ClientRefused("invalid_client", "client has no registered key")
        try:
            token = jwt.decode(raw, client.key, algorithms=_ALGS)
        except (JoseError, ValueError):
            raise ClientRefused("invalid_client", "client_assertion signature does not verify") from None
        c = token.claims
        now = time.time()
        if c.get("sub") != client.client_id or form.get("client_id", client.client_id) != client.client_id:
            raise ClientRefused("invalid_client", "assertion sub/client_id do not name the issuer")
        aud = c.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud or [])
        if not auds & ({token_url} | self.audiences):
            raise ClientRefused("invalid_client", "assertion aud is not this token endpoint")
        exp, iat = c.get("exp"), c.get("iat", now)
        if not isinstance(exp, int | float) or exp < now - _LEEWAY or not isinstance(iat, int | float):
            raise ClientRefused("invalid_client", "assertion expired or without exp")
        if iat > now + _LEEWAY or exp - iat > 3600:
            raise ClientRefused("invalid_client", "assertion iat in the future or lifetime over an hour")
        jti = c.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ClientRefused("invalid_client", "assertion without jti")
        self._jtis = {j: e for j, e in self._jtis.items() if e >= now - _LEEWAY}
        if jti in self._jtis:
            raise ClientRefused("invalid_client", "assertion jti replayed")
        self._jtis[jti] = float(exp)
        return client

    def issue(self, client_id: str) -> tuple[str, int]:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (client_id, time.time() + self.lifetime)
        self.stats["issued"] += 1
        return token, self.lifetime

    # --- the API's bearer check -------------------------------------------------------------------------

    def verify(self, authorization: str) -> bool:
        if authorization[:7].lower() != "bearer ":
            return False
        held = self._tokens.get(authorization[7:].strip())
        if held is None or held[1] <= time.time():
            self.rejected_tokens += 1
            return False
        return True

    def revoke_all(self) -> int:
        n = len(self._tokens)
        self._tokens.clear()
        self.stats["revocations"] += 1
        return n

    def snapshot(self) -> dict[str, object]:
        now = time.time()
        return {
            **self.stats,
            "by_method": dict(self.by_method),
            "active": sum(1 for _, exp in self._tokens.values() if exp > now),
            "rejected_tokens": self.rejected_tokens,
            "lifetime": self.lifetime,
        }


def _peek_iss(raw: str) -> str:
    """The unverified `iss` of a compact JWT: only to find whose key must verify it."""
    parts = raw.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("payload is not base64url JSON") from None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(iss, str):
        raise ValueError("no iss")
    return iss
