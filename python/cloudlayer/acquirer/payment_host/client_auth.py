"""Our side of OAuth 2.0 at the payment host: client credentials (RFC 6749 section 4.4) with the client
authentication the config names, read from files (never inline), over TLS with an optional client certificate.

Hand-written on purpose, on joserfc (already ours) for the RFC 7523 assertion: authlib's httpx integration is
deprecated in current authlib (it warns to move to httpx2), its AsyncOAuth2Client owns a token lifecycle we need
differently (refresh at a fraction of the lifetime, single flight, backoff, one resend on 401: token_cache.py),
and its client_secret_basic skips the form-encoding RFC 6749 section 2.3.1 asks for. What is left is three small
encodings. Secrets and assertions live in this object only; its repr shows neither.
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import time
from pathlib import Path
from typing import Final
from urllib.parse import quote_plus

import httpx
import msgspec
import trio
from joserfc import jwk, jwt
from joserfc.errors import JoseError

from ...config import ConfigError, HttpAcquirerConfig
from .wire import OAuthError, TokenAnswer

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_token_decoder = msgspec.json.Decoder(TokenAnswer)
_error_decoder = msgspec.json.Decoder(OAuthError)


class TokenError(Exception):
    """The token endpoint gave no token. The message says why (status, OAuth error code), never a secret."""


def _read_secret_file(path: str, key: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"invalid config: `{key}` cannot be read: {e.strerror}") from None
    if not data.strip():
        raise ConfigError(f"invalid config: `{key}` is empty")
    return data


def signing_key(pem: bytes) -> tuple[jwk.Key, str]:
    """A private key from PEM and the JWS algorithm it signs with (P-256 ES256, P-384 ES384, RSA RS256, Ed25519
    as RFC 9864's Ed25519). Raises ValueError for anything else."""
    for key_type in ("EC", "RSA", "OKP"):
        try:
            key = jwk.import_key(pem, key_type)
        except (JoseError, ValueError, TypeError):
            continue
        if not key.is_private:
            raise ValueError("the key file holds a public key; private_key_jwt needs the private key")
        if isinstance(key, jwk.ECKey):
            alg = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(key.curve_name)
        elif isinstance(key, jwk.RSAKey):
            alg = "RS256"
        else:
            alg = "Ed25519" if key.curve_name == "Ed25519" else None
        if alg is None:
            raise ValueError("unsupported key curve for private_key_jwt")
        return key, alg
    raise ValueError("not a PEM private key (EC, RSA or Ed25519)")


class ClientCredentials:
    """Builds one token request: form body and headers for the configured client authentication method."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        method: str,
        secret: str = "",
        key: jwk.Key | None = None,
        alg: str = "",
        key_id: str = "",
        audience: str = "",
        assertion_lifetime: int = 60,
        scope: str = "",
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.method = method
        self._secret = secret
        self._key = key
        self._alg = alg
        self._key_id = key_id
        self._audience = audience or token_url
        self._assertion_lifetime = assertion_lifetime
        self._scope = scope

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, method={self.method!r})"

    @classmethod
    def from_config(cls, h: HttpAcquirerConfig, base_dir: str) -> ClientCredentials:
        if h.auth_method == "private_key_jwt":
            pem = _read_secret_file(os.path.join(base_dir, h.private_key_file), "acquirer.http.private_key_file")
            try:
                key, alg = signing_key(pem)
            except ValueError as e:
                raise ConfigError(f"invalid config: `acquirer.http.private_key_file` {e}") from None
            return cls(
                token_url=h.token_url,
                client_id=h.client_id,
                method=h.auth_method,
                scope=h.scope,
                key=key,
                alg=alg,
                key_id=h.private_key_id,
                audience=h.assertion_audience,
                assertion_lifetime=h.assertion_lifetime,
            )
        raw = _read_secret_file(os.path.join(base_dir, h.client_secret_file), "acquirer.http.client_secret_file")
        try:
            secret = raw.decode().strip()
        except UnicodeDecodeError:
            raise ConfigError("invalid config: `acquirer.http.client_secret_file` is not UTF-8 text") from None
        return cls(token_url=h.token_url, client_id=h.client_id, method=h.auth_method, scope=h.scope, secret=secret)

    def token_request(self) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, headers) of one token request; a private_key_jwt assertion is fresh each time."""
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json"}
        if self.method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts form-urlencoded before they are joined and base64-encoded.
            pair = f"{quote_plus(self.client_id, safe='')}:{quote_plus(self._secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif self.method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret)
        else:
            form.update(
                client_id=self.client_id, client_assertion_type=ASSERTION_TYPE, client_assertion=self._assertion()
            )
        return form, headers

    def _assertion(self) -> str:
        """RFC 7523 section 3: iss = sub = client id, aud = the token endpoint, a short exp, a unique jti."""
        assert self._key is not None
        now = int(time.time())
        header = {"alg": self._alg, "typ": "JWT"}
        if self._key_id:
            header["kid"] = self._key_id
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self._audience,
            "iat": now,
            "exp": now + self._assertion_lifetime,
            "jti": secrets.token_urlsafe(24),
        }
        return jwt.encode(header, claims, self._key, algorithms=[self._alg])


async def fetch_token(client: httpx.AsyncClient, creds: ClientCredentials, within: float) -> TokenAnswer:
    """One token request within `within` seconds. Raises TokenError (status and OAuth error code only: never the
    body's other text)."""
    form, headers = creds.token_request()
    try:
        with trio.fail_after(within):
            resp = await client.post(creds.token_url, data=form, headers=headers)
    except trio.TooSlowError:
        raise TokenError("token endpoint did not answer in time") from None
    except httpx.HTTPError as e:
        raise TokenError(f"token endpoint unreachable: {type(e).__name__}") from None
    if resp.status_code != 200:
        code = ""
        try:
            code = _error_decoder.decode(resp.content).error[:64]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        raise TokenError(f"token endpoint answered {resp.status_code}" + (f" {code}" if code else ""))
    try:
        answer = _token_decoder.decode(resp.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise TokenError("token endpoint answered 200 without a valid token document") from None
    if answer.token_type.lower() != "bearer":
        raise TokenError("token endpoint answered a token that is not a Bearer token")
    return answer


def tls_context(h: HttpAcquirerConfig, base_dir: str) -> ssl.SSLContext:
    """Server certificates checked against tls_ca (or the system's); our certificate for mutual TLS if set."""
    context = ssl.create_default_context(cafile=os.path.join(base_dir, h.tls_ca) if h.tls_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if h.client_cert_file:
        try:
            context.load_cert_chain(
                os.path.join(base_dir, h.client_cert_file), os.path.join(base_dir, h.client_key_file)
            )
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"invalid config: `acquirer.http.client_cert_file` cannot be loaded: {e}") from None
    return context  # httpcore sets ALPN (h2 when acquirer.http.http2) on it
