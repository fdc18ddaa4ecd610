"""OAuth over real sockets: a Mypinpad-like client (client_secret_post, Bearer) against a Hypercorn server.

The server is a small QuartTrio app with our routes and a protected dummy transaction route, served by
Hypercorn's trio worker on 127.0.0.1:0. Every error case and attack token asserts status, error code
and the WWW-Authenticate header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey
from quart import Response, request
from quart_trio import QuartTrio

from cloudlayer.config import Config, OAuthConfig, ServerConfig
from cloudlayer.oauth import BearerError, OAuthService, register_routes
from cloudlayer.oauth.client_secrets import looks_like_secret
from cloudlayer.oauth.clients import Client
from cloudlayer.oauth.keys import KeyRing, read_key_file, rotate_keys
from cloudlayer.oauth.ratelimit import FailureLimiter
from cloudlayer.oauth.tokens import TokenIssuer

SCOPE = "transactions:process"
ISSUER = "https://cloudlayer.test"
AUDIENCE = "cloudlayer-transactions"
REPO = Path(__file__).resolve().parent.parent
CLI = [str(REPO / ".venv" / "bin" / "cloudlayer")]


# -- fixtures ------------------------------------------------------------------------------------------
def make_config(var: Path, **oauth: Any) -> Config:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway": 30,
        "slowdown_after": 100,
        "lockout_after": 200,
        **oauth,
    }
    return Config(server=ServerConfig(var_dir=str(var), dev_mode=True), oauth=OAuthConfig(**settings))


def write_toml(path: Path, var: Path) -> Path:
    path.write_text(f'[server]\nvar_dir = "{var}"\n[oauth]\nissuer = "{ISSUER}"\n')
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path / "var")


@pytest.fixture
def service(cfg: Config) -> Any:
    svc = OAuthService.from_config(cfg)
    yield svc
    svc.close()


@pytest.fixture
def mypinpad(service: OAuthService) -> tuple[str, str]:
    client, secret = service.clients.add("mypinpad", [SCOPE, "reports:read"])
    return client.client_id, secret


def make_app(service: OAuthService) -> QuartTrio:
    app = QuartTrio("oauth-test")
    register_routes(app, service)

    @app.post("/transaction/process")
    async def process() -> Response:
        try:
            principal = service.verify_bearer(request.headers.get("Authorization"), SCOPE)
        except BearerError as e:
            body = {"error": e.error, "error_description": e.description} if e.error else {}
            return Response(
                json.dumps(body),
                status=e.status,
                headers={"WWW-Authenticate": e.www_authenticate, "Content-Type": "application/json"},
            )
        return Response(json.dumps({"client_id": principal.client_id}), content_type="application/json")

    return app


@pytest.fixture
async def http(service: OAuthService, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    hc.errorlog = None
    shutdown = trio.Event()
    binds = await nursery.start(partial(serve, make_app(service), hc, shutdown_trigger=shutdown.wait))
    async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
        yield client
    shutdown.set()


async def get_token(http: httpx.AsyncClient, client_id: str, secret: str, **extra: str) -> str:
    """Mypinpad's way: client_secret_post, form body."""
    r = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, **extra},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def call_protected(http: httpx.AsyncClient, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await http.post("/transaction/process", headers=headers, json={})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(cid: str, /, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": cid,
        "aud": AUDIENCE,
        "exp": now + 600,
        "iat": now,
        "jti": "test-jti",
        "client_id": cid,
        "scope": SCOPE,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str = "ES256") -> str:
    """A compact JWS built by hand, so tests can make tokens joserfc would refuse to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    signature = jws.JWSRegistry.algorithms[alg].sign(signing_input, key)
    return f"{signing_input.decode()}.{b64(signature)}"


def our_header(service: OAuthService, **override: Any) -> dict[str, Any]:
    active = service.keyring.active
    header = {"alg": active.alg, "kid": active.kid, "typ": "at+jwt", **override}
    return {k: v for k, v in header.items() if v is not None}


def assert_bearer_error(r: httpx.Response, status: int, error: str | None) -> None:
    assert r.status_code == status, r.text
    header = r.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    if error is None:
        assert "error=" not in header
    else:
        assert f'error="{error}"' in header
        assert r.json()["error"] == error


def assert_token_error(r: httpx.Response, status: int, error: str, basic_challenge: bool = False) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert set(r.json()) <= {"error", "error_description", "error_uri"}
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Pragma"] == "no-cache"
    if basic_challenge:
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
    else:
        assert "WWW-Authenticate" not in r.headers


# -- the happy path, as Mypinpad does it ---------------------------------------------------------------
async def test_mypinpad_flow_gets_token_and_calls_protected_route(
    http: httpx.AsyncClient, service: OAuthService, mypinpad: tuple[str, str]
) -> None:
    client_id, secret = mypinpad
    assert looks_like_secret(secret)
    with structlog.testing.capture_logs() as logs:
        r = await http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        )
        assert r.status_code == 200
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Pragma"] == "no-cache"
        body = r.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == f"{SCOPE} reports:read"  # default: everything the client may have
        token = body["access_token"]
        r = await call_protected(http, f"Bearer {token}")
        assert r.status_code == 200
        assert r.json() == {"client_id": client_id}
        # Scheme is case-insensitive (RFC 7235).
        assert (await call_protected(http, f"bEaReR {token}")).status_code == 200
    # RFC 9068 shape.
    header_b64, payload_b64, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    assert header == {"alg": "ES256", "kid": service.keyring.active.kid, "typ": "at+jwt"}
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"}
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["exp"] - claims["iat"] == 3600
    # Neither the secret nor the token appears in any log event.
    dumped = json.dumps(logs, default=str)
    assert secret not in dumped and token not in dumped and payload_b64 not in dumped
    assert any(e["event"] == "oauth_token_issued" for e in logs)


async def test_client_secret_basic_with_form_encoded_credentials(
    http: httpx.AsyncClient, service: OAuthService
) -> None:
    # An id/secret pair is form-url-encoded before Basic encoding (RFC 6749 §2.3.1).
    client, secret = service.clients.add("basic-user", [SCOPE])
    creds = base64.b64encode(f"{client.client_id}:{secret}".replace("-", "%2D").encode()).decode()
    r = await http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {creds}"}
    )
    assert r.status_code == 200, r.text
    assert (await call_protected(http, f"Bearer {r.json()['access_token']}")).status_code == 200


async def test_requested_scope_subset_is_granted(http: httpx.AsyncClient, mypinpad: tuple[str, str]) -> None:
    client_id, secret = mypinpad
    r = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": SCOPE},
    )
    assert r.status_code == 200 and r.json()["scope"] == SCOPE


async def test_metadata_and_jwks(http: httpx.AsyncClient, service: OAuthService) -> None:
    meta = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert meta["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    r = await http.get("/.well-known/jwks.json")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert [k["kid"] for k in keys] == [service.keyring.active.kid]
    assert keys[0]["alg"] == "ES256" and keys[0]["use"] == "sig" and keys[0]["crv"] == "P-256"
    assert "d" not in keys[0]  # public only


# -- token endpoint errors (RFC 6749 §5.2) -------------------------------------------------------------
async def test_token_request_shape_errors(http: httpx.AsyncClient, mypinpad: tuple[str, str]) -> None:
    client_id, secret = mypinpad
    good = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    # JSON instead of a form body.
    assert_token_error(await http.post("/oauth/token", json=good), 400, "invalid_request")
    # A repeated parameter.
    body = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}&scope=a&scope=b"
    r = await http.post("/oauth/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_token_error(r, 400, "invalid_request")
    # Credentials in the query string.
    r = await http.post("/oauth/token", params={"client_secret": secret}, data={**good})
    assert_token_error(r, 400, "invalid_request")
    # Both client authentication methods at once.
    creds = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    r = await http.post("/oauth/token", data=good, headers={"Authorization": f"Basic {creds}"})
    assert_token_error(r, 400, "invalid_request")
    # Missing grant_type (credentials fine).
    r = await http.post("/oauth/token", data={"client_id": client_id, "client_secret": secret})
    assert_token_error(r, 400, "invalid_request")
    # Not UTF-8.
    r = await http.post(
        "/oauth/token", content=b"grant_type=\xff", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_token_error(r, 400, "invalid_request")


async def test_unsupported_grant_and_invalid_scope(http: httpx.AsyncClient, mypinpad: tuple[str, str]) -> None:
    client_id, secret = mypinpad
    creds = {"client_id": client_id, "client_secret": secret}
    r = await http.post("/oauth/token", data={"grant_type": "password", **creds})
    assert_token_error(r, 400, "unsupported_grant_type")
    r = await http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "admin", **creds})
    assert_token_error(r, 400, "invalid_scope")
    r = await http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": f'{SCOPE} "x"', **creds})
    assert_token_error(r, 400, "invalid_scope")


async def test_unauthorized_client(http: httpx.AsyncClient, service: OAuthService) -> None:
    client, secret = service.clients.add("no-grants", [SCOPE])
    service.clients.put(msgspec.structs.replace(client, grant_types=()))
    r = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client.client_id, "client_secret": secret},
    )
    assert_token_error(r, 400, "unauthorized_client")


async def test_invalid_client_same_answer_for_unknown_id_and_wrong_secret(
    http: httpx.AsyncClient, service: OAuthService, mypinpad: tuple[str, str]
) -> None:
    client_id, secret = mypinpad
    form = {"grant_type": "client_credentials"}
    wrong = await http.post("/oauth/token", data={**form, "client_id": client_id, "client_secret": secret + "x"})
    unknown = await http.post("/oauth/token", data={**form, "client_id": "cl_nobody", "client_secret": secret})
    missing = await http.post("/oauth/token", data={**form, "client_id": client_id})
    for r in (wrong, unknown, missing):
        assert_token_error(r, 401, "invalid_client")
    assert wrong.content == unknown.content
    # Disabled client, and a client that may only use Basic trying the body.
    service.clients.disable(client_id)
    r = await http.post("/oauth/token", data={**form, "client_id": client_id, "client_secret": secret})
    assert_token_error(r, 401, "invalid_client")
    basic_only, basic_secret = service.clients.add("basic-only", [SCOPE], ["client_secret_basic"])
    r = await http.post("/oauth/token", data={**form, "client_id": basic_only.client_id, "client_secret": basic_secret})
    assert_token_error(r, 401, "invalid_client")


async def test_invalid_client_via_basic_challenges_with_basic(
    http: httpx.AsyncClient, mypinpad: tuple[str, str]
) -> None:
    client_id, _ = mypinpad
    form = {"grant_type": "client_credentials"}
    wrong = base64.b64encode(f"{client_id}:nope".encode()).decode()
    r = await http.post("/oauth/token", data=form, headers={"Authorization": f"Basic {wrong}"})
    assert_token_error(r, 401, "invalid_client", basic_challenge=True)
    for malformed in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        r = await http.post("/oauth/token", data=form, headers={"Authorization": malformed})
        assert_token_error(r, 401, "invalid_client", basic_challenge=True)


async def test_failed_authentications_lock_out_with_retry_after(tmp_path: Path, nursery: trio.Nursery) -> None:
    cfg = make_config(tmp_path / "var", slowdown_after=100, lockout_after=3, failure_window=60.0)
    service = OAuthService.from_config(cfg)
    try:
        hc = HypercornConfig()
        hc.bind, hc.accesslog, hc.errorlog = ["127.0.0.1:0"], None, None
        binds = await nursery.start(partial(serve, make_app(service), hc))
        victim, secret = service.clients.add("victim", [SCOPE])
        form = {"grant_type": "client_credentials", "client_id": victim.client_id}
        async with httpx.AsyncClient(base_url=binds[0]) as http:
            for _ in range(3):
                r = await http.post("/oauth/token", data={**form, "client_secret": "guess"})
                assert_token_error(r, 401, "invalid_client")
            # Locked: even the right secret is refused until the window moves on.
            r = await http.post("/oauth/token", data={**form, "client_secret": secret})
            assert r.status_code == 429
            assert r.json()["error"] == "temporarily_unavailable"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            # The source address is locked too: another (unknown) client id from it gets 429.
            r = await http.post("/oauth/token", data={**form, "client_id": "cl_other", "client_secret": "guess"})
            assert r.status_code == 429
        nursery.cancel_scope.cancel()
    finally:
        service.close()


def test_limiter_slows_down_before_locking_out() -> None:
    limiter = FailureLimiter(window=60.0, slowdown_after=2, lockout_after=4)
    assert limiter.check("client:a").delay == 0 and limiter.check("client:a").retry_after == 0
    limiter.failed("client:a", "addr:x")
    limiter.failed("client:a", "addr:x")
    first = limiter.check("client:a", "addr:y")
    assert first.delay > 0 and first.retry_after == 0
    limiter.failed("client:a")
    assert limiter.check("client:a").delay > first.delay  # grows with each failure
    limiter.failed("client:a")
    assert limiter.check("client:a").retry_after > 0
    limiter.succeeded("client:a")
    assert limiter.check("client:a").retry_after == 0
    assert limiter.check("addr:x").delay > 0  # the address keeps its count


# -- bearer protection (RFC 6750) ----------------------------------------------------------------------
async def test_missing_and_malformed_authorization(http: httpx.AsyncClient) -> None:
    assert_bearer_error(await call_protected(http, None), 401, None)
    assert_bearer_error(await call_protected(http, "Basic Zm9vOmJhcg=="), 401, None)
    assert_bearer_error(await call_protected(http, "Bearer"), 400, "invalid_request")
    assert_bearer_error(await call_protected(http, "Bearer a b"), 400, "invalid_request")
    assert_bearer_error(await call_protected(http, "Bearer not-a-jwt"), 401, "invalid_token")


async def test_insufficient_scope(http: httpx.AsyncClient, service: OAuthService) -> None:
    client, secret = service.clients.add("reports-only", ["reports:read"])
    token = await get_token(http, client.client_id, secret)
    r = await call_protected(http, f"Bearer {token}")
    assert_bearer_error(r, 403, "insufficient_scope")
    assert f'scope="{SCOPE}"' in r.headers["WWW-Authenticate"]


def attack_tokens(service: OAuthService, client_id: str) -> dict[str, str]:
    """Tokens an attacker (or a misconfigured peer) might present; every one must get invalid_token."""
    ours = service.keyring.active
    good_claims = claims_for(client_id)
    attacker = ECKey.generate_key("P-256", private=True)
    attacker_pub = attacker.as_dict(private=False)
    header_b64 = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": ours.kid}).encode())
    payload_b64 = b64(json.dumps(good_claims).encode())
    # HS256 keyed with our own public key (the classic algorithm-confusion attack), in two encodings.
    public_jwk = json.dumps(ours.key.as_dict(private=False)).encode()
    public_pem = ours.key.as_bytes(private=False)
    hs_tokens = {}
    for name, secret in (("hs256_public_jwk", public_jwk), ("hs256_public_pem", public_pem)):
        signing_input = f"{b64(json.dumps(our_header(service, alg='HS256')).encode())}.{payload_b64}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        hs_tokens[name] = f"{signing_input}.{b64(mac)}"
    now = int(time.time())
    tokens = {
        "alg_none": f"{header_b64}.{payload_b64}.",
        **hs_tokens,
        "embedded_jwk": sign(our_header(service, jwk=attacker_pub), good_claims, attacker),
        "embedded_jwk_no_kid": sign({"alg": "ES256", "typ": "at+jwt", "jwk": attacker_pub}, good_claims, attacker),
        "jku": sign(our_header(service, jku="https://evil.example/jwks.json"), good_claims, attacker),
        "x5u": sign(our_header(service, x5u="https://evil.example/cert.pem"), good_claims, attacker),
        "unknown_kid": sign(our_header(service, kid="never-issued"), good_claims, attacker),
        "no_kid": sign(our_header(service, kid=None), good_claims, ours.key),
        "attacker_key_our_kid": sign(our_header(service), good_claims, attacker),
        "expired": sign(our_header(service), claims_for(client_id, exp=now - 61, iat=now - 700), ours.key),
        "not_yet_valid": sign(our_header(service), claims_for(client_id, nbf=now + 120), ours.key),
        "issued_in_future": sign(our_header(service), claims_for(client_id, iat=now + 120), ours.key),
        "no_exp": sign(our_header(service), claims_for(client_id, exp=None), ours.key),
        "wrong_iss": sign(our_header(service), claims_for(client_id, iss="https://evil.example"), ours.key),
        "wrong_aud": sign(our_header(service), claims_for(client_id, aud="someone-else"), ours.key),
        "no_aud": sign(our_header(service), claims_for(client_id, aud=None), ours.key),
        "no_sub": sign(our_header(service), claims_for(client_id, sub=None), ours.key),
        "no_client_id": sign(our_header(service), claims_for(client_id, client_id=None), ours.key),
        "sub_mismatch": sign(our_header(service), claims_for(client_id, sub="cl_other"), ours.key),
        "typ_jwt": sign(our_header(service, typ="JWT"), good_claims, ours.key),
        "no_typ": sign(our_header(service, typ=None), good_claims, ours.key),
        "crit": sign(our_header(service, crit=["exp"]), good_claims, ours.key),
        "b64_false": sign(our_header(service, b64=False), good_claims, ours.key),
        "unknown_client": sign(our_header(service), claims_for("cl_nobody"), ours.key),
        "exp_nan_string": sign(our_header(service), claims_for(client_id, exp="9999999999"), ours.key),
    }
    good = sign(our_header(service), good_claims, ours.key)
    h, p, s = good.split(".")
    tokens["tampered_payload"] = f"{h}.{b64(json.dumps(claims_for(client_id, scope='admin ' + SCOPE)).encode())}.{s}"
    tokens["bad_signature"] = f"{h}.{p}.{s[:-4]}AAAA"
    tokens["eddsa_deprecated_alg"] = sign(
        our_header(service, alg="EdDSA"), good_claims, OKPKey.generate_key("Ed25519"), alg="Ed25519"
    )
    return tokens


async def test_every_attack_token_is_rejected(
    http: httpx.AsyncClient, service: OAuthService, mypinpad: tuple[str, str]
) -> None:
    client_id, _ = mypinpad
    # The hand-made good token passes, so each failure below is down to its one defect.
    good = sign(our_header(service), claims_for(client_id), service.keyring.active.key)
    assert (await call_protected(http, f"Bearer {good}")).status_code == 200
    tokens = attack_tokens(service, client_id)
    for name, token in tokens.items():
        r = await call_protected(http, f"Bearer {token}")
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"], name
        assert r.json()["error"] == "invalid_token", name
    r = await call_protected(http, f"Bearer {tokens['expired']}")
    assert 'error_description="the access token expired"' in r.headers["WWW-Authenticate"]


async def test_leeway_accepts_small_clock_skew(http: httpx.AsyncClient, service: OAuthService) -> None:
    client, _ = service.clients.add("skewed", [SCOPE])
    now = int(time.time())
    key = service.keyring.active.key
    just_expired = sign(our_header(service), claims_for(client.client_id, exp=now - 5, iat=now - 600), key)
    slightly_future = sign(our_header(service), claims_for(client.client_id, nbf=now + 10, iat=now + 10), key)
    for token in (just_expired, slightly_future):
        assert (await call_protected(http, f"Bearer {token}")).status_code == 200


# -- cache, disablement, rotation ----------------------------------------------------------------------
async def test_disabled_client_cached_token_refused_across_processes(
    http: httpx.AsyncClient, service: OAuthService, cfg: Config, tmp_path: Path, mypinpad: tuple[str, str]
) -> None:
    client_id, secret = mypinpad
    token = await get_token(http, client_id, secret)
    for _ in range(3):
        assert (await call_protected(http, f"Bearer {token}")).status_code == 200
    assert service.verifier.cache_hits >= 2  # the later calls were served from the cache
    # Another process (the operator's CLI) disables the client.
    toml = write_toml(tmp_path / "c.toml", Path(cfg.server.var_dir))
    done = await trio.run_process([*CLI, "client", "disable", client_id, "--config", str(toml)], capture_stdout=True)
    assert done.returncode == 0
    r = await call_protected(http, f"Bearer {token}")
    assert_bearer_error(r, 401, "invalid_token")
    # And it cannot get a new token.
    r = await http.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    )
    assert_token_error(r, 401, "invalid_client")


async def test_verification_without_cache_gives_same_principal(
    service: OAuthService, mypinpad: tuple[str, str]
) -> None:
    client_id, _ = mypinpad
    token = service.issuer.issue(client_id, (SCOPE,))
    uncached = service.verifier.verify(token, use_cache=False)
    cached_first = service.verifier.verify(token)
    cached_again = service.verifier.verify(token)
    assert uncached == cached_first == cached_again
    assert cached_again.client_id == client_id and cached_again.scopes == frozenset({SCOPE})


async def test_cache_is_bounded(tmp_path: Path) -> None:
    service = OAuthService.from_config(make_config(tmp_path / "var", token_cache_size=3))
    try:
        client, _ = service.clients.add("many", [SCOPE])
        tokens = [service.issuer.issue(client.client_id, (SCOPE,)) for _ in range(5)]
        for t in tokens:
            service.verify_bearer(f"Bearer {t}", SCOPE)
        assert len(service.verifier._cache) == 3
        assert all(t in service.verifier._cache for t in tokens[2:])
    finally:
        service.close()


async def test_rotation_old_tokens_keep_verifying_and_workers_pick_up_new_key(
    http: httpx.AsyncClient, service: OAuthService, cfg: Config, tmp_path: Path, mypinpad: tuple[str, str]
) -> None:
    client_id, secret = mypinpad
    old_kid = service.keyring.active.kid
    old_token = await get_token(http, client_id, secret)
    toml = write_toml(tmp_path / "c.toml", Path(cfg.server.var_dir))
    done = await trio.run_process([*CLI, "keys", "rotate", "--json", "--config", str(toml)], capture_stdout=True)
    new_kid = json.loads(done.stdout.decode().strip().splitlines()[-1])["active_kid"]
    assert new_kid != old_kid
    # A token signed by the new key (as another worker would issue it) verifies at once: unknown kid -> reload.
    other_worker = TokenIssuer(KeyRing(cfg.var_path(cfg.oauth.keys_file)), ISSUER, AUDIENCE, 3600)
    new_token = other_worker.issue(client_id, (SCOPE,))
    assert (await call_protected(http, f"Bearer {new_token}")).status_code == 200
    assert service.keyring.active.kid == new_kid  # this worker now signs with the new key, no restart
    fresh = await get_token(http, client_id, secret)
    assert json.loads(base64.urlsafe_b64decode(fresh.split(".")[0] + "=="))["kid"] == new_kid
    # The old key still verifies its tokens (cache cleared, so this is a full check).
    service.verifier.clear_cache()
    assert (await call_protected(http, f"Bearer {old_token}")).status_code == 200
    kids = {k["kid"] for k in (await http.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {old_kid, new_kid}


def test_rotation_prunes_keys_whose_tokens_have_expired(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = rotate_keys(path, "ES256", token_lifetime=0, leeway=0)
    second = rotate_keys(path, "ES256", token_lifetime=0, leeway=0)  # first retired, verify_until = now
    third = rotate_keys(path, "ES256", token_lifetime=3600, leeway=30)  # first pruned; second kept
    active, records = read_key_file(path)
    assert active == third.kid
    assert {r.kid for r in records} == {second.kid, third.kid} and first.kid not in {r.kid for r in records}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unknown_kid_reload_is_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    rotate_keys(path, "ES256", 3600, 30)
    ring = KeyRing(path)
    rotate_keys(path, "ES256", 3600, 30)
    assert ring.reload_for_unknown_kid() is True
    rotate_keys(path, "ES256", 3600, 30)
    assert ring.reload_for_unknown_kid() is False  # a second unknown kid within the second: no reload
    assert len(ring.verify_keys) == 2


async def test_eddsa_config_signs_with_ed25519(tmp_path: Path) -> None:
    service = OAuthService.from_config(make_config(tmp_path / "var", algorithm="EdDSA"))
    try:
        client, _ = service.clients.add("ed", [SCOPE])
        token = service.issuer.issue(client.client_id, (SCOPE,))
        assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "Ed25519"
        assert service.verify_bearer(f"Bearer {token}", SCOPE).client_id == client.client_id
    finally:
        service.close()


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_issued_tokens_are_jws_that_joserfc_verifies(tmp_path: Path, algorithm: str) -> None:
    # The issuer signs with cryptography directly (tokens._compact_signer): joserfc, with only the public key,
    # must accept every token, and reject it once a byte of the signature changes.
    service = OAuthService.from_config(make_config(tmp_path / "var", algorithm=algorithm))
    try:
        active = service.keyring.active
        public = active.key.as_dict(private=False)
        key = ECKey.import_key(public) if algorithm == "ES256" else OKPKey.import_key(public)
        for _ in range(20):  # ECDSA's R and S vary in length: pad errors would show within a few
            token = service.issuer.issue("cl_client", (SCOPE,))
            obj = jws.deserialize_compact(token, key, algorithms=[active.alg])
            assert obj.headers() == {"alg": active.alg, "kid": active.kid, "typ": "at+jwt"}
            assert json.loads(obj.payload)["client_id"] == "cl_client"
            head, payload, sig = token.split(".")
            bad = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BA")
            with pytest.raises(Exception, match=r"(?i)signature"):
                jws.deserialize_compact(f"{head}.{payload}.{bad}", key, algorithms=[active.alg])
    finally:
        service.close()


def test_issuer_falls_back_to_joserfc_for_another_key_type() -> None:
    from cloudlayer.oauth.tokens import _compact_signer

    assert _compact_signer("ES256", "kid", OKPKey.generate_key("Ed25519", private=True)) is None
    assert _compact_signer("RS256", "kid", ECKey.generate_key("P-256", private=True)) is None


# -- registry, secrets, dev client ---------------------------------------------------------------------
def test_secrets_are_stored_only_as_keyed_hashes(service: OAuthService, cfg: Config) -> None:
    client, secret = service.clients.add("hashed", [SCOPE])
    stored = service.clients.get(client.client_id)
    assert isinstance(stored, Client) and len(stored.secret_hash) == 32
    data = b"".join(p.read_bytes() for p in cfg.var_path(cfg.oauth.clients_file).iterdir())
    assert secret.encode() not in data and secret[6:].encode() not in data
    assert service.clients.authenticate(client.client_id, secret) is not None
    assert service.clients.authenticate(client.client_id, secret[:-1]) is None
    assert service.clients.authenticate("cl_unknown", secret) is None
    pepper = cfg.var_path(cfg.oauth.pepper_file)
    assert stat.S_IMODE(os.stat(pepper).st_mode) == 0o600
    keys = cfg.var_path(cfg.oauth.keys_file)
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600


def test_dev_client_created_once_and_reused(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "var", dev_client=True)
    first = OAuthService.from_config(cfg)
    try:
        pair = first.ensure_dev_client()
        assert pair is not None and looks_like_secret(pair[1])
        assert first.ensure_dev_client() == pair  # each start prints the same pair
        path = cfg.var_path("oauth/dev_client.json")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert first.clients.authenticate(*pair) is not None
    finally:
        first.close()
    no_dev = OAuthService.from_config(make_config(tmp_path / "var2"))
    try:
        assert no_dev.ensure_dev_client() is None
    finally:
        no_dev.close()


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_cli_commands(tmp_path: Path) -> None:
    var = tmp_path / "var"
    toml = str(write_toml(tmp_path / "c.toml", var))
    added = _run([*CLI, "client", "add", "mypinpad", "--json", "--config", toml])
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert looks_like_secret(created["client_secret"]) and created["scopes"] == [SCOPE]
    listed = _run([*CLI, "client", "list", "--json", "--config", toml])
    rows = json.loads(listed.stdout)
    assert [r["client_id"] for r in rows] == [created["client_id"]] and rows[0]["enabled"] is True
    assert created["client_secret"] not in listed.stdout and "secret_hash" not in listed.stdout
    rotated = _run([*CLI, "client", "rotate-secret", created["client_id"], "--json", "--config", toml])
    new_secret = json.loads(rotated.stdout)["client_secret"]
    assert new_secret != created["client_secret"]
    assert _run([*CLI, "client", "disable", created["client_id"], "--config", toml]).returncode == 0
    assert json.loads(_run([*CLI, "client", "list", "--json", "--config", toml]).stdout)[0]["enabled"] is False
    missing = _run([*CLI, "client", "disable", "cl_nope", "--config", toml])
    assert missing.returncode == 1 and "no client" in missing.stderr
    # The registry reflects the CLI's work: only the new secret authenticates (a disabled client still
    # authenticates at the registry level; the token endpoint refuses it).
    svc = OAuthService.from_config(make_config(var))
    try:
        assert svc.clients.authenticate(created["client_id"], new_secret) is not None
        assert svc.clients.authenticate(created["client_id"], created["client_secret"]) is None
    finally:
        svc.close()
    assert _run([*CLI, "keys", "rotate", "--json", "--config", toml]).returncode == 0
    listed = json.loads(_run([*CLI, "keys", "list", "--json", "--config", toml]).stdout)
    keys = [k for k in listed if k["kind"] == "signing"]  # keys list shows the sealing keys too
    assert [k["active"] for k in listed if k["kind"] == "sealing"] == [True]
    assert len(keys) == 2 and sum(k["active"] for k in keys) == 1
    assert all(k["alg"] == "ES256" for k in keys)


def test_cli_prints_help_without_error() -> None:
    r = _run([sys.executable, "-m", "cloudlayer.cli", "client", "--help"])
    assert r.returncode == 0 and "rotate-secret" in r.stdout


def test_pinned_registry_refuses_none_hmac_and_deprecated_algorithms() -> None:
    from joserfc.errors import UnsupportedAlgorithmError

    from cloudlayer.oauth.tokens import _pinned_registry

    registry = _pinned_registry()
    for alg in ("none", "HS256", "HS512", "RS256", "EdDSA", ""):
        with pytest.raises(UnsupportedAlgorithmError):
            registry.get_alg(alg)
    assert registry.get_alg("ES256").name == "ES256"


async def test_secret_pasted_as_client_id_is_not_logged(http: httpx.AsyncClient, mypinpad: tuple[str, str]) -> None:
    client_id, secret = mypinpad
    with structlog.testing.capture_logs() as logs:
        r = await http.post(
            "/oauth/token", data={"grant_type": "client_credentials", "client_id": secret, "client_secret": client_id}
        )
    assert_token_error(r, 401, "invalid_client")
    assert logs and secret not in json.dumps(logs, default=str)
