"""The FastAPI app: POST /oauth/token, POST /transaction/process, GET /healthz.

Configured by environment (serve.py sets it before uvicorn starts its workers): CONVENTIONAL_VAR_DIR,
CONVENTIONAL_ACQUIRER (host:port), CONVENTIONAL_ISSUER, CONVENTIONAL_ACQUIRER_TIMEOUT (seconds).
Each worker process has its own writer thread and acquirer link, opened in the lifespan.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .acquirer import AcquirerLink
from .auth import LIFETIME, SCOPE, Auth, AuthError, Principal
from .flow import Refused, TransactionService
from .models import TransactionRequest
from .store import Store

PROBLEM = "application/problem+json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    var_dir = Path(os.environ["CONVENTIONAL_VAR_DIR"])
    host, _, port = os.environ["CONVENTIONAL_ACQUIRER"].rpartition(":")
    store = Store(var_dir / "transactions.sqlite3")
    link = AcquirerLink(host, int(port), timeout=float(os.environ.get("CONVENTIONAL_ACQUIRER_TIMEOUT", "10")))
    store.start()
    try:
        await link.connect()
        app.state.auth = Auth(var_dir, os.environ["CONVENTIONAL_ISSUER"])
        app.state.transactions = TransactionService(store, link)
        yield
    finally:
        await link.close()
        store.stop()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
_bearer = HTTPBearer(auto_error=False)


def _problem(status: int, slug: str, detail: str, field: str | None = None, **headers: str) -> JSONResponse:
    content: dict[str, Any] = {"type": f"/problems/{slug}", "status": status, "detail": detail}
    if field is not None:
        content["field"] = field
    return JSONResponse(content, status_code=status, media_type=PROBLEM, headers=headers or None)


def _unauthorized(detail: str) -> JSONResponse:
    www = f'Bearer realm="conventional", error="invalid_token", error_description="{detail}"'
    return _problem(401, "invalid-token", detail, **{"WWW-Authenticate": www})


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default answer echoes the offending input (it may be card data): name the field only.
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return _problem(400, "malformed-json", "request body is not valid JSON")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    return _problem(422, "invalid-field", f"{field or 'body'}: {first.get('msg', 'invalid')}", field)


@app.exception_handler(Refused)
async def _refused(request: Request, exc: Refused) -> JSONResponse:
    headers = {"Retry-After": "2"} if exc.status == 503 else {}
    return _problem(exc.status, exc.slug, exc.detail, exc.field, **headers)


@app.exception_handler(AuthError)
async def _auth_failed(request: Request, exc: AuthError) -> JSONResponse:
    return _unauthorized("the access token is invalid")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=NO_STORE)


@app.post("/oauth/token")
async def token(
    request: Request,
    grant_type: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    auth: Auth = request.app.state.auth
    if not client_id or not client_secret:
        return _oauth_error(401, "invalid_client", "client authentication failed")
    client = auth.authenticate(client_id, client_secret)
    if client is None:
        return _oauth_error(401, "invalid_client", "client authentication failed")
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    if scope is not None and scope != client["scope"]:
        return _oauth_error(400, "invalid_scope", "requested scope exceeds the client's allowed scopes")
    body = {
        "access_token": auth.issue(client_id, client["scope"]),
        "token_type": "Bearer",
        "expires_in": LIFETIME,
        "scope": client["scope"],
    }
    return JSONResponse(body, headers=NO_STORE)


async def bearer_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise AuthError("missing bearer token")
    auth: Auth = request.app.state.auth
    # async: a sync dependency would cost a thread-pool round trip per request; the check is ~0.1 ms of C.
    return auth.verify(credentials.credentials, SCOPE)


@app.post("/transaction/process")
async def process(
    request: Request, body: TransactionRequest, principal: Annotated[Principal, Depends(bearer_principal)]
) -> Response:
    service: TransactionService = request.app.state.transactions
    answer = await service.process(principal.client_id, body)
    headers = {"Cache-Control": "no-store"}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(answer.body, media_type="application/json", headers=headers)
