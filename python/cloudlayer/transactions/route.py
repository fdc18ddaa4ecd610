"""HTTP face of the transaction endpoint: bearer check, content checks, then the flow."""

from __future__ import annotations

import time

import structlog
from quart import Response, g, request
from quart_trio import QuartTrio

from ..http.problems import PROBLEM_CONTENT_TYPE, Problem
from ..oauth.service import BearerError, OAuthService
from ..observability import metrics
from .flow import TransactionFlow

SCOPE = "transactions:process"
JSON = "application/json"

log = structlog.get_logger(__name__)


def bearer_problem(e: BearerError) -> Response:
    """RFC 6750: status and WWW-Authenticate carry the error; the problem body says it for humans."""
    titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden"}
    problem = Problem(
        e.status,
        (e.error or "missing-token").replace("_", "-"),
        titles.get(e.status, "Unauthorized"),
        e.description,
        headers={"WWW-Authenticate": e.www_authenticate},
    )
    if e.error:
        problem.extra["error"] = e.error
    return problem.response()


def register(app: QuartTrio, path: str, flow: TransactionFlow, oauth: OAuthService) -> None:
    @app.post(path)
    async def process_transaction() -> Response:
        started = time.perf_counter()
        try:
            principal = oauth.verify_bearer_headers(request.headers.getlist("Authorization"), SCOPE)
        except BearerError as e:
            g.outcome = "unauthorized"
            metrics.TOKEN_FAILURES.labels(e.error or "missing_token").inc()
            return bearer_problem(e)
        if request.mimetype != "application/json":
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "Content-Type must be application/json",
                headers={"Accept-Post": "application/json"},
            )
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            answer = await flow.process(principal.client_id, body)
        except Problem as p:
            g.outcome = "conflict" if p.status == 409 else "rejected"
            if p.slug == "transaction-id-conflict":
                metrics.CONFLICTS.inc()
            log.info("transaction_refused", client_id=principal.client_id, status=p.status, problem=p.slug)
            raise
        refused = answer.status >= 400  # a stored refusal (flow._refuse), first time or replayed
        resp = Response(answer.body, status=answer.status, content_type=PROBLEM_CONTENT_TYPE if refused else JSON)
        total = time.perf_counter() - started
        if answer.replayed:
            resp.headers["Idempotent-Replayed"] = "true"
            metrics.REPLAYS.inc()
            g.outcome = "replayed"
        elif refused:
            g.outcome = "rejected"
        else:
            g.outcome = "approved" if answer.outcome.endswith("approved") else "declined"
            metrics.observe_transaction(answer.response_code, answer.acquirer_seconds)
        resp.headers["Server-Timing"] = (
            f"app;dur={(total - answer.acquirer_seconds) * 1000:.2f}, acquirer;dur={answer.acquirer_seconds * 1000:.2f}"
        )
        resp.headers["Cache-Control"] = "no-store"
        log.info(
            "transaction",
            client_id=principal.client_id,
            transaction_id=answer.transaction_id,
            stan=answer.stan,
            rrn=answer.rrn,
            outcome=answer.outcome,
            response_code=answer.response_code,
            replay=answer.replayed,
            app_ms=round((total - answer.acquirer_seconds) * 1000, 3),
            acquirer_ms=round(answer.acquirer_seconds * 1000, 3),
        )
        return resp
