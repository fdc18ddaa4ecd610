"""HTTP routes: the token endpoint, the JWK Set and RFC 8414 metadata."""

from __future__ import annotations

import json

from quart import Response, request
from quart_trio import QuartTrio

from ..http.problems import Problem
from ..observability import metrics
from .clients import AUTH_METHODS, GRANT_TYPES
from .keys import JWS_ALGORITHMS
from .service import OAuthService
from .token_endpoint import MAX_BODY, TokenRequest

TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"


def authorization_server_metadata(service: OAuthService) -> dict[str, object]:
    o = service.cfg.oauth
    base = o.issuer.rstrip("/")
    return {
        "issuer": o.issuer,
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "response_types_supported": [],  # no authorization endpoint: client_credentials only
        "scopes_supported": o.default_scope.split(),
        # The configured algorithm (every new key's): built before a shared key set has loaded (PostgreSQL).
        "access_token_signing_alg_values_supported": [JWS_ALGORITHMS[o.algorithm]],
    }


def too_large() -> Problem:
    return Problem(
        413,
        "request-entity-too-large",
        "Request Entity Too Large",
        f"the token endpoint takes a form body of at most {MAX_BODY} bytes",
    )


def register_routes(app: QuartTrio, service: OAuthService) -> None:
    metadata = json.dumps(authorization_server_metadata(service), separators=(",", ":")).encode()

    @app.post(TOKEN_PATH)
    async def oauth_token() -> Response:
        # A body over the endpoint's limit is a 413 problem, like any other route's (openapi.json): refused
        # unread when its declared length says so, else once read (chunked; Quart stops at max_body_bytes).
        if (request.content_length or 0) > MAX_BODY:
            raise too_large()
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        if len(body) > MAX_BODY:
            raise too_large()
        answer = await service.token_endpoint.handle(
            TokenRequest(
                content_type=request.headers.get("Content-Type"),
                body=body,
                query_string=request.query_string,
                authorization=request.headers.getlist("Authorization"),
                remote_addr=service.client_address.resolve(
                    request.remote_addr, request.headers.getlist("X-Forwarded-For")
                ),
            )
        )
        if answer.status == 200:
            metrics.TOKENS_ISSUED.inc()
        else:
            metrics.TOKEN_FAILURES.labels("locked_out" if answer.status == 429 else answer.error).inc()
        return Response(answer.body, status=answer.status, headers=answer.headers)

    @app.get(JWKS_PATH)
    async def oauth_jwks() -> Response:
        service.keyring.maybe_reload()
        return Response(
            service.keyring.jwks_json,
            status=200,
            headers={"Content-Type": "application/jwk-set+json", "Cache-Control": "public, max-age=60"},
        )

    @app.get(METADATA_PATH)
    async def oauth_metadata() -> Response:
        return Response(
            metadata, status=200, headers={"Content-Type": "application/json", "Cache-Control": "public, max-age=300"}
        )
