"""The token endpoint's logic (RFC 6749 §2.3, §4.4, §5), independent of the web framework.

The route hands over the raw pieces of the request; this returns status, headers and body. Errors are
exactly RFC 6749 §5.2; every answer carries `Cache-Control: no-store` and `Pragma: no-cache`.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import parse_qsl, unquote_plus

import msgspec
import structlog
import trio

from .clients import ClientStore, validate_scope_token
from .ratelimit import FailureLimiter
from .tokens import TokenIssuer

log = structlog.get_logger(__name__)

FORM_TYPE = "application/x-www-form-urlencoded"
# A client_credentials form is a few hundred bytes: a larger body is refused (413, by the route) unparsed, and
# one within it holding more than MAX_PARAMETERS parameters is invalid_request.
MAX_BODY = 8192
MAX_PARAMETERS = 32
GRANT_TYPE = "client_credentials"
_REALM = 'Basic realm="cloudlayer", charset="UTF-8"'
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Content-Type": "application/json"}
_encode = msgspec.json.Encoder().encode
_OUR_CLIENT_ID = re.compile(r"cl_[0-9a-f]{24}")


def loggable_client_id(client_id: str) -> str:
    """The id if it has our format; else a placeholder, so a secret pasted into client_id is never logged."""
    return client_id if _OUR_CLIENT_ID.fullmatch(client_id) else f"<unrecognised, {len(client_id)} chars>"


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True):
    content_type: str | None
    body: bytes
    query_string: bytes
    authorization: list[str]  # every Authorization header (RFC 6750 3.1 / RFC 6749 2.3: at most one)
    remote_addr: str


class TokenAnswer(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes
    error: str = ""  # the RFC 6749 error code, for metrics ("" on success)


class _Fail(Exception):
    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.headers = status, error, description, headers or {}


def _error(status: int, error: str, description: str, extra: dict[str, str] | None = None) -> TokenAnswer:
    body = _encode({"error": error, "error_description": description})
    return TokenAnswer(status, {**_NO_STORE, **(extra or {})}, body, error)


def _invalid_request(description: str) -> _Fail:
    return _Fail(400, "invalid_request", description)


class TokenEndpoint:
    def __init__(self, clients: ClientStore, issuer: TokenIssuer, limiter: FailureLimiter) -> None:
        self._clients = clients
        self._issuer = issuer
        self._limiter = limiter

    async def handle(self, req: TokenRequest) -> TokenAnswer:
        try:
            return await self._handle(req)
        except _Fail as f:
            return _error(f.status, f.error, f.description, f.headers)

    async def _handle(self, req: TokenRequest) -> TokenAnswer:
        params = _form_params(req)
        client_id, secret, method = _client_credentials(req.authorization, params)
        basic_tried = method == "client_secret_basic"
        basic_header = {"WWW-Authenticate": _REALM} if basic_tried else {}

        keys = (f"client:{client_id}", f"addr:{req.remote_addr}")
        verdict = self._limiter.check(*keys)
        if verdict.retry_after:
            log.info("oauth_token_throttled", client_id=loggable_client_id(client_id), remote_addr=req.remote_addr)
            raise _Fail(
                429,
                "temporarily_unavailable",
                "too many failed client authentications; retry later",
                {"Retry-After": str(verdict.retry_after)},
            )
        if verdict.delay:
            await trio.sleep(verdict.delay)

        client = self._clients.authenticate(client_id, secret)
        if client is None or not client.enabled or method not in client.auth_methods:
            self._limiter.failed(*keys)
            reason = "bad_credentials" if client is None else "disabled" if not client.enabled else "method_not_allowed"
            log.info("oauth_client_auth_failed", client_id=loggable_client_id(client_id), method=method, reason=reason)
            raise _Fail(401, "invalid_client", "client authentication failed", basic_header)
        self._limiter.succeeded(keys[0])

        grant_type = params.get("grant_type")
        if grant_type is None:
            raise _invalid_request("grant_type is required")
        if grant_type != GRANT_TYPE:
            raise _Fail(400, "unsupported_grant_type", "only client_credentials is supported")
        if GRANT_TYPE not in client.grant_types:
            raise _Fail(400, "unauthorized_client", "this client may not use the client_credentials grant")

        scopes = _granted_scopes(params.get("scope"), client.scopes)
        token = self._issuer.issue(client.client_id, scopes)
        log.info("oauth_token_issued", client_id=client.client_id, method=method, scope=" ".join(scopes))
        body = _encode(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self._issuer.lifetime,
                "scope": " ".join(scopes),
            }
        )
        return TokenAnswer(200, dict(_NO_STORE), body)


def _form_params(req: TokenRequest) -> dict[str, str]:
    if req.query_string:
        # Credentials (or anything) in the URL end up in logs and histories (RFC 6749 §2.3.1, §3.2).
        raise _invalid_request("parameters must be sent in the request body, not the query string")
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        raise _invalid_request(f"the request body must be {FORM_TYPE}")
    if len(req.body) > MAX_BODY:  # the route answers 413 first; a caller without it still gets a refusal
        raise _invalid_request("request body too large")
    if req.body.count(b"&") >= MAX_PARAMETERS:
        raise _invalid_request(f"more than {MAX_PARAMETERS} parameters")
    try:
        pairs = form_pairs(req.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _invalid_request("malformed form body") from None
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise _invalid_request(f"parameter {name!r} must not be repeated")
        seen.add(name)
        if value:  # RFC 6749 §3.1: a parameter without a value is treated as omitted
            params[name] = value
    return params


def form_pairs(text: str) -> list[tuple[str, str]]:
    """parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict"), exactly. A body
    without "%" or "+" (ours: ids are hex, secrets base64url) has nothing to unquote, and parse_qsl then only
    splits: done here without its per-field unquote calls. Held to parse_qsl by tests/test_oauth_form.py."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict")
    if text.count("&") >= MAX_PARAMETERS:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


def _client_credentials(headers: list[str], params: dict[str, str]) -> tuple[str, str, str]:
    """(client_id, secret, method) from exactly one of HTTP Basic and the form body."""
    if len(headers) > 1:
        raise _invalid_request("more than one Authorization header")
    authorization = headers[0] if headers else None
    basic: tuple[str, str] | None = None
    if authorization is not None and authorization.strip():
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise _invalid_request("only HTTP Basic client authentication may use the Authorization header")
        basic = _parse_basic(credentials.strip())
    if basic is not None:
        if "client_secret" in params:
            raise _invalid_request("use one client authentication method, not both")
        if "client_id" in params and params["client_id"] != basic[0]:
            raise _invalid_request("client_id in the body differs from the Authorization header")
        return basic[0], basic[1], "client_secret_basic"
    client_id, secret = params.get("client_id"), params.get("client_secret")
    if client_id is None or secret is None:
        raise _Fail(401, "invalid_client", "client authentication failed")
    return client_id, secret, "client_secret_post"


def _parse_basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        decoded = ""
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise _Fail(401, "invalid_client", "malformed HTTP Basic credentials", {"WWW-Authenticate": _REALM})
    # RFC 6749 §2.3.1: id and secret are form-url-encoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


def _granted_scopes(requested: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if requested is None:
        return allowed
    wanted = tuple(dict.fromkeys(requested.split(" ")))
    if not all(validate_scope_token(s) for s in wanted):
        raise _Fail(400, "invalid_scope", "malformed scope")
    unknown = [s for s in wanted if s not in allowed]
    if unknown:
        raise _Fail(400, "invalid_scope", "requested scope exceeds the client's allowed scopes")
    return wanted
