"""RFC 9068 JWT access tokens: issuing, and verifying with a bounded cache of verified tokens.

joserfc traps handled here (checked against joserfc 1.8 source):
- `jws.deserialize_compact` checks the signature only: claims go through a JWTClaimsRegistry with every
  claim we rely on essential (a token without `exp` would otherwise pass);
- it never looks at `typ`: we require `at+jwt` (RFC 9068 §4);
- an empty algorithm list means joserfc's defaults (HS256 included): our registry has a fixed list of
  asymmetric algorithms, refuses any algorithm that carries a SecurityWarning, and the header's `alg` must
  equal the algorithm of the key its `kid` names, so an HMAC token "signed" with our public key fails;
- embedded key headers (`jwk`, `jku`, `x5u`, `x5c`, ...) and `crit`/`b64` are refused outright.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwk import Key
from joserfc.jwt import JWTClaimsRegistry
from joserfc.registry import HeaderParameter

from .clients import ClientStore
from .keys import SUPPORTED_JWS_ALGS, SigningKeys

log = structlog.get_logger(__name__)

MAX_TOKEN_LENGTH = 4096
AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})


class Principal(msgspec.Struct, frozen=True):
    """Who a verified bearer token speaks for."""

    client_id: str
    scopes: frozenset[str]
    token_id: str
    expires_at: float


class BearerError(Exception):
    """A bearer token was missing or refused (RFC 6750 §3). `www_authenticate` is the full header value."""

    def __init__(self, status: int, error: str | None, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        params = ['realm="cloudlayer"']
        if error is not None:
            params.append(f'error="{error}"')
            params.append(f'error_description="{description}"')
        if scope is not None:
            params.append(f'scope="{scope}"')
        self.www_authenticate = "Bearer " + ", ".join(params)


def invalid_token(description: str = "the access token is invalid") -> BearerError:
    return BearerError(401, "invalid_token", description)


class _PinnedJWSRegistry(jws.JWSRegistry):
    """Only our asymmetric algorithms; never one joserfc flags with a SecurityWarning (e.g. "EdDSA")."""

    def get_alg(self, name: str) -> Any:
        alg = self.algorithms.get(name)
        if alg is None or name not in SUPPORTED_JWS_ALGS or alg.security_warning:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return super().get_alg(name)


_REFUSED = HeaderParameter("refused: keys come only from our own key set", "none")
_HEADER_REGISTRY = {name: _REFUSED for name in ("jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "cty")}


def _pinned_registry() -> _PinnedJWSRegistry:
    registry = _PinnedJWSRegistry(
        header_registry=_HEADER_REGISTRY, algorithms=sorted(SUPPORTED_JWS_ALGS), strict_check_header=True
    )
    registry.max_header_length = 512
    registry.max_payload_length = 2048
    registry.max_signature_length = 128
    return registry


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_Signer = tuple[bytes, Callable[[bytes], bytes]]  # the encoded protected header + ".", and the signature function


def _compact_signer(alg: str, kid: str, key: Any) -> _Signer | None:
    """RFC 7515 compact serialisation for our two algorithms straight on `cryptography`, the header encoded once
    per key: joserfc's serialize_compact re-encodes and re-checks the same header on every token, about as much
    work as the ECDSA signature itself (measured: bench/README.md). None: leave it to joserfc."""
    header = _b64url(msgspec.json.encode({"alg": alg, "kid": kid, "typ": "at+jwt"})) + b"."
    private = getattr(key, "private_key", None)
    if alg == "ES256" and isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        es256 = private
        ecdsa_sha256 = ec.ECDSA(SHA256())  # immutable: built once, not per token

        def sign_es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(es256.sign(data, ecdsa_sha256))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants R || S (RFC 7518 3.4), not DER

        return header, sign_es256
    if alg == "Ed25519" and isinstance(private, ed25519.Ed25519PrivateKey):
        return header, private.sign
    return None


class TokenIssuer:
    def __init__(self, keyring: SigningKeys, issuer: str, audience: str, lifetime: int) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self.lifetime = lifetime
        self._registry = _pinned_registry()
        self._encode = msgspec.json.Encoder().encode
        self._signers: dict[str, _Signer | None] = {}  # by kid (a kid is the key's thumbprint: never reused)

    def issue(self, client_id: str, scopes: tuple[str, ...]) -> str:
        self._keyring.maybe_reload()
        active = self._keyring.active
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "sub": client_id,
            "aud": self._audience,
            "exp": now + self.lifetime,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": " ".join(scopes),
        }
        if active.kid not in self._signers:
            self._signers[active.kid] = _compact_signer(active.alg, active.kid, active.key)
        signer = self._signers[active.kid]
        if signer is None:
            header = {"alg": active.alg, "kid": active.kid, "typ": "at+jwt"}
            return jws.serialize_compact(header, self._encode(claims), active.key, registry=self._registry)
        signing_input = signer[0] + _b64url(self._encode(claims))
        return (signing_input + b"." + _b64url(signer[1](signing_input))).decode("ascii")


class _Cached(msgspec.Struct, frozen=True):
    principal: Principal
    valid_until: float  # exp + leeway
    kid: str


class TokenVerifier:
    """Verifies access tokens; a verified token is cached (by its exact string) until it expires."""

    def __init__(
        self,
        keyring: SigningKeys,
        clients: ClientStore,
        issuer: str,
        audience: str,
        leeway: int,
        cache_size: int,
    ) -> None:
        self._keyring = keyring
        self._clients = clients
        self._leeway = leeway
        self._registry = _pinned_registry()
        self._claims = JWTClaimsRegistry(
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            client_id={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._decode_claims = msgspec.json.Decoder(dict[str, Any]).decode
        self.cache_hits = 0
        self.cache_misses = 0

    def clear_cache(self) -> None:
        self._cache.clear()

    def verify(self, token: str, use_cache: bool = True) -> Principal:
        """The token's principal, or BearerError(401, invalid_token). Client enablement is checked every time."""
        self._keyring.maybe_reload()
        now = time.time()
        entry = self._cache.get(token) if use_cache else None
        if entry is not None:
            if now >= entry.valid_until:
                del self._cache[token]
                raise invalid_token("the access token expired")
            key_record = self._keyring.verify_keys.get(entry.kid)
            if key_record is None or _retired(key_record, now):  # its key was withdrawn or retired
                del self._cache[token]
                raise invalid_token()
            self._cache.move_to_end(token)
            self.cache_hits += 1
        else:
            self.cache_misses += 1
            entry = self._verify_fully(token)
            if use_cache:
                self._cache[token] = entry
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        principal = entry.principal
        # LMDB: one read transaction (microseconds), a disablement by any process counts from the next request.
        # PostgreSQL: a dict lookup in the copy oauth/pg_sync.py keeps (NOTIFY latency, shared_refresh at worst).
        if not self._clients.is_enabled(principal.client_id):
            self._cache.pop(token, None)
            log.info("bearer_rejected", reason="client_unknown_or_disabled", client_id=principal.client_id)
            raise invalid_token()
        return principal

    def _verify_fully(self, token: str) -> _Cached:
        if len(token) > MAX_TOKEN_LENGTH:
            raise invalid_token()
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
            self._registry.check_header(header)
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower() not in AT_JWT_TYPES:
                raise _Reject("typ is not at+jwt")
            record = self._key_for(header.get("kid"))
            if header["alg"] != record.alg:
                raise _Reject("alg does not match the key")
            key: Key = record.key
            if not jws.validate_compact(obj, key, registry=self._registry):
                raise _Reject("bad signature")
            claims = self._decode_claims(obj.payload)
            self._claims.validate(claims)
            client_id, scope = claims["client_id"], claims.get("scope", "")
            if not isinstance(client_id, str) or claims["sub"] != client_id or not isinstance(scope, str):
                raise _Reject("client_id/sub/scope malformed")
        except _Reject as e:
            log.info("bearer_rejected", reason=str(e))
            raise invalid_token() from None
        except (JoseError, ValueError, msgspec.DecodeError, UnicodeError) as e:
            expired = type(e).__name__ == "ExpiredTokenError"
            log.info("bearer_rejected", reason=type(e).__name__)
            raise invalid_token("the access token expired" if expired else "the access token is invalid") from None
        exp = float(claims["exp"])
        principal = Principal(client_id, frozenset(scope.split()), str(claims["jti"]), exp)
        return _Cached(principal, exp + self._leeway, record.kid)

    def _key_for(self, kid: object) -> Any:
        if not isinstance(kid, str):
            raise _Reject("no kid")
        record = self._keyring.verify_keys.get(kid)
        if record is None and self._keyring.reload_for_unknown_kid():
            record = self._keyring.verify_keys.get(kid)
        if record is None:
            raise _Reject("unknown kid")
        if _retired(record, time.time()):
            raise _Reject("key retired")
        return record


def _retired(record: Any, now: float) -> bool:
    """Past its verify window: the key set is only re-read when the file changes, so check at use."""
    until = record.meta.verify_until
    return until is not None and now >= until


class _Reject(Exception):
    """An internal reason to refuse a token (logged, never shown to the caller)."""
