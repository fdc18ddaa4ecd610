"""The payment-host API as OpenAPI 3.1, generated from the structs in wire.py so that the document cannot drift
from what the connector sends and the simulator accepts. `python -m cloudlayer.acquirer.payment_host.openapi`
prints it; docs/payment-host-openapi.json is that output (tests/test_payment_host_wire.py compares them)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from . import wire

_STRUCTS = (
    wire.AuthorizationRequest,
    wire.Authorization,
    wire.ReversalRequest,
    wire.Reversal,
    wire.Problem,
    wire.TokenAnswer,
    wire.OAuthError,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(name)}}}
    if headers:
        out["headers"] = headers
    return out


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {wire.PROBLEM_JSON: {"schema": _ref("Problem")}}}


_KEY_HEADER = {
    "name": wire.IDEMPOTENCY_KEY,
    "in": "header",
    "required": True,
    "description": "The transaction key (authorizations) or `<authorization key>.reversal` (reversals). A request "
    "resent with the same key and body is answered with the first answer, never processed again.",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{16,128}(\.reversal)?$"},
}
_KEY_PATH = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "The authorization's transaction key.",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{16,128}$"},
}
_REPLAYED = {
    "Idempotent-Replayed": {"description": "`true` on an answer replayed for a resend", "schema": {"type": "string"}}
}
_COMMON_ERRORS = {
    "400": _problem("Missing or malformed Idempotency-Key, or a body that is not JSON."),
    "401": _problem(
        'Bearer token missing, expired or revoked (`WWW-Authenticate: Bearer error="invalid_token"`): '
        "nothing was processed; get a new token and resend."
    ),
    "422": _problem(
        "A field is invalid (`field` names it), or the key was used before with a different body "
        "(`type` ends in `idempotency-key-reused`): nothing was processed."
    ),
    "5XX": _problem("Something failed at the host: the request may or may not have been processed."),
}


def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_STRUCTS, ref_template="#/components/schemas/{name}")
    bearer: list[dict[str, list[str]]] = [{"oauth2": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CloudLayer payment-host API",
            "version": "1.0.0",
            "description": "What CloudLayer calls on an HTTPS/JSON acquirer (docs/payment-host.md).",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "description": "Client credentials; client authentication client_secret_basic, "
                    "client_secret_post or private_key_jwt (RFC 7523); optionally over mutual TLS (RFC 8705).",
                    "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}},
                }
            },
        },
        "security": bearer,
        "paths": {
            wire.AUTHORIZATIONS: {
                "post": {
                    "operationId": "createAuthorization",
                    "summary": "Authorize a purchase or refund, once per Idempotency-Key",
                    "parameters": [_KEY_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("AuthorizationRequest")}},
                    },
                    "responses": {
                        "201": _json("Authorization", "Processed now (approved or declined: see responseCode)."),
                        "200": _json("Authorization", "Processed before under this key: the first answer.", _REPLAYED),
                        "409": _problem(
                            "The first request with this key is still being processed, or the key "
                            "was reversed before it was authorized: not processed."
                        ),
                        **_COMMON_ERRORS,
                    },
                }
            },
            wire.AUTHORIZATIONS + "/{key}": {
                "get": {
                    "operationId": "getAuthorization",
                    "summary": "The answer given to the authorization with this key (the inquiry after a lost answer)",
                    "parameters": [_KEY_PATH],
                    "responses": {
                        "200": _json("Authorization", "Seen: the answer it got (reversed tells whether it was since)."),
                        "404": _problem("Never seen under this key; a lookup never creates one."),
                        **{k: v for k, v in _COMMON_ERRORS.items() if k in ("401", "5XX")},
                    },
                }
            },
            wire.AUTHORIZATIONS + "/{key}/reversal": {
                "post": {
                    "operationId": "reverseAuthorization",
                    "summary": "Reverse the authorization with this key (idempotent: one reversal per authorization)",
                    "parameters": [_KEY_PATH, _KEY_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ReversalRequest")}},
                    },
                    "responses": {
                        "201": _json(
                            "Reversal",
                            "Recorded now: responseCode 00 reversed, 25 never authorized (the "
                            "key is then blocked: a late authorization with it is refused).",
                        ),
                        "200": _json("Reversal", "Reversed before: the first answer.", _REPLAYED),
                        **_COMMON_ERRORS,
                    },
                }
            },
            wire.PING: {
                "get": {
                    "operationId": "ping",
                    "summary": "Reachability and token check (readiness probe); processes nothing",
                    "responses": {
                        "200": {"description": "Up, and the bearer token is good."},
                        "401": _COMMON_ERRORS["401"],
                    },
                }
            },
            "/oauth/token": {
                "post": {
                    "operationId": "token",
                    "summary": "RFC 6749 section 4.4 client credentials",
                    "security": [],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "required": ["grant_type"],
                                    "properties": {
                                        "grant_type": {"const": "client_credentials"},
                                        "scope": {"type": "string"},
                                        "client_id": {"type": "string"},
                                        "client_secret": {"type": "string"},
                                        "client_assertion_type": {
                                            "const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                                        },
                                        "client_assertion": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("TokenAnswer", "A bearer token (Cache-Control: no-store)."),
                        "400": _json("OAuthError", "invalid_request, unsupported_grant_type (RFC 6749 5.2)."),
                        "401": _json("OAuthError", "invalid_client: the client authentication failed."),
                        "5XX": {"description": "The token endpoint failed: retry with backoff."},
                    },
                }
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
