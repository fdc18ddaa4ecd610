"""HTTP routes: the token endpoint, the JWK Set and RFC 8414 metadata."""

from __future__ import annotations

import json

from quart import Response, request
from quart_trio import QuartTrio

from ..observability import metrics
from .clients import AUTH_METHODS, GRANT_TYPES
from .service import OAuthService
from .token_endpoint import TokenRequest

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
        "access_token_signing_alg_values_supported": [service.keyring.active.alg],
    }


def register_routes(app: QuartTrio, service: OAuthService) -> None:
    metadata = json.dumps(authorization_server_metadata(service), separators=(",", ":")).encode()

    @app.post(TOKEN_PATH)
    async def oauth_token() -> Response:
        body = b""
        if (request.content_length or 0) <= 8192:
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        else:
            body = b"\0" * 8193  # refused as too large without reading it
        answer = await service.token_endpoint.handle(
            TokenRequest(
                content_type=request.headers.get("Content-Type"),
                body=body,
                query_string=request.query_string,
                authorization=request.headers.get("Authorization"),
                remote_addr=request.remote_addr or "unknown",
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
