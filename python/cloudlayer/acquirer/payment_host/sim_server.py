"""The simulated payment host over HTTPS: a small ASGI app under Hypercorn (trio) serving the API
(docs/payment-host.md) and its token endpoint, with the ISO simulator's fault switches applied to every answer,
and `/tokens` on the simulator's admin port (revoke, lifetime, counts).
"""

from __future__ import annotations

import functools
import json
import random
import ssl
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import structlog
import trio

from ...tls import generate_self_signed
from ..simulator import GARBAGE, Simulator
from . import wire
from .sim_auth import AuthServer, ClientRefused
from .sim_config import HttpSimulatorConfig
from .sim_rules import Outcome, PaymentHostRules, Refused

log = structlog.get_logger(__name__)

MAX_BODY = 65_536
_encoder = msgspec.json.Encoder()
_auth_request = msgspec.json.Decoder(wire.AuthorizationRequest)
_reversal_request = msgspec.json.Decoder(wire.ReversalRequest)
Headers = list[tuple[bytes, bytes]]


class _Answer(Exception):
    """Raised inside a route to answer at once."""

    def __init__(self, status: int, body: bytes, content_type: bytes, headers: Headers | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers or []


def _problem(status: int, slug: str, detail: str, field: str | None = None, headers: Headers | None = None) -> _Answer:
    doc = wire.Problem(
        type=f"/problems/{slug}", title=slug.replace("-", " "), status=status, detail=detail, field=field
    )
    return _Answer(status, _encoder.encode(doc), wire.PROBLEM_JSON.encode(), headers)


def _oauth_error(status: int, error: str, headers: Headers | None = None) -> _Answer:
    return _Answer(status, _encoder.encode(wire.OAuthError(error=error)), b"application/json", headers)


_INVALID_TOKEN = [(b"www-authenticate", b'Bearer error="invalid_token"')]


class PaymentHostSimulator:
    def __init__(self, simulator: Simulator, config: HttpSimulatorConfig, base_dir: Path) -> None:
        self.sim = simulator
        self.config = config
        self.rules = PaymentHostRules(simulator)
        self.auth = AuthServer(config, base_dir)
        self.base_dir = base_dir
        self.port = 0
        self.ca_file = ""  # the certificate clients must trust (its own when self-signed)
        simulator.admin_extensions.append(self.admin_route)

    # --- serving ----------------------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        hc = HypercornConfig()
        hc.bind = [f"{host}:{port}"]
        hc.accesslog = None
        hc.errorlog = None
        hc.keep_alive_timeout = 75.0
        hc.keep_alive_max_requests = 1_000_000
        certfile, keyfile = self._certificate()
        hc.certfile, hc.keyfile = certfile, keyfile
        if self.config.client_ca:
            hc.ca_certs = str(self.base_dir / self.config.client_ca)
            hc.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate from client_ca, no handshake
        app: Any = self._app  # a plain-dict ASGI app, as the simulator's admin app
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(functools.partial(serve, app, hc, mode="asgi"))
            self.port = int(binds[0].rsplit(":", 1)[1])
            log.info("payment_host_listening", host=host, port=self.port, mutual_tls=bool(self.config.client_ca))
            task_status.started(self.port)

    def _certificate(self) -> tuple[str, str]:
        if self.config.certfile:
            self.ca_file = str(self.base_dir / self.config.certfile)
            return self.ca_file, str(self.base_dir / self.config.keyfile)
        key_pem, cert_pem = generate_self_signed()
        directory = Path(tempfile.mkdtemp(prefix="cloudlayer-payment-host-"))
        (directory / "key.pem").write_bytes(key_pem)
        (directory / "cert.pem").write_bytes(cert_pem)
        self.ca_file = str(directory / "cert.pem")
        return self.ca_file, str(directory / "key.pem")

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await _read_body(receive)
            try:
                outcome = await self._route(scope["method"], scope["path"], headers, body)
            except Refused as e:  # the rules said no: nothing was processed
                raise _problem(e.status, e.slug, e.detail) from None
        except _Answer as a:
            await _respond(send, a.status, a.body, a.content_type, a.headers)
            return
        await self._answer_with_faults(send, outcome)

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Outcome:
        if path == "/oauth/token" and method == "POST":
            host = headers.get("host", "")
            raise self._token(headers, body, f"https://{host}{path}")
        if not path.startswith(wire.API_PREFIX + "/"):
            raise _problem(404, "not-found", "no such resource")
        if not self.auth.verify(headers.get("authorization", "")):
            raise _problem(401, "invalid-token", "bearer token missing, expired or revoked", headers=_INVALID_TOKEN)
        parts = path[len(wire.AUTHORIZATIONS) :].strip("/").split("/") if path.startswith(wire.AUTHORIZATIONS) else []
        if path == wire.PING and method == "GET":
            raise _Answer(200, b'{"status":"ok"}', b"application/json")
        if path == wire.AUTHORIZATIONS and method == "POST":
            key = _idempotency_key(headers, reversal=False)
            return self.rules.authorize(key, _decode(_auth_request, body))
        if len(parts) == 1 and parts[0] and method == "GET":
            found = self.rules.lookup(parts[0])
            if found is None:
                raise _problem(404, "authorization-not-found", "no authorization with this key")
            return found
        if len(parts) == 2 and parts[1] == "reversal" and method == "POST":
            key = _idempotency_key(headers, reversal=True)
            if key != wire.reversal_key(parts[0]):
                raise _problem(
                    400, "invalid-idempotency-key", "Idempotency-Key: must be <key>.reversal", "Idempotency-Key"
                )
            return self.rules.reverse(parts[0], _decode(_reversal_request, body))
        raise _problem(405 if parts or path == wire.AUTHORIZATIONS else 404, "not-allowed", "no such operation")

    def _token(self, headers: dict[str, str], body: bytes, token_url: str) -> _Answer:
        self.auth.stats["requests"] += 1
        f = self.sim.faults
        if f.token_error_next > 0:
            f.token_error_next -= 1
            self.auth.stats["failed"] += 1
            return _Answer(503, b'{"error":"temporarily_unavailable"}', b"application/json")
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _oauth_error(400, "invalid_request")
        try:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body)))
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type")
        try:
            client_id = self.auth.authenticate(form, headers.get("authorization", ""), token_url)
        except ClientRefused as e:
            self.auth.stats["refused"] += 1
            log.info("payment_host_client_refused", error=e.error, why=str(e))
            extra = [(b"www-authenticate", b'Basic realm="token"')] if e.error == "invalid_client" else []
            return _oauth_error(401 if e.error == "invalid_client" else 400, e.error, extra)
        token, lifetime = self.auth.issue(client_id)
        doc = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        return _Answer(200, _encoder.encode(doc), b"application/json", [(b"cache-control", b"no-store")])

    async def _answer_with_faults(self, send: Any, outcome: Outcome) -> None:
        """As the ISO side: processed first, then latency and the fault switches decide what goes back."""
        await trio.sleep(self.sim._latency())
        f = self.sim.faults
        if f.delay_seconds > 0:
            delay = f.delay_seconds
            if f.delay_next > 0:
                f.delay_next -= 1
                if f.delay_next == 0:
                    f.delay_seconds = 0.0
            await trio.sleep(delay)
        if not outcome.answered or f.drop_answers or f.drop_next > 0 or (f.drop_rate and random.random() < f.drop_rate):
            if outcome.answered:
                f.drop_next = max(0, f.drop_next - 1)
            log.info("payment_host_fault_drop")
            await trio.sleep(3600)  # hold the request: the client's deadline ends it
            return
        if f.close_next > 0 or (f.close_rate and random.random() < f.close_rate):
            f.close_next = max(0, f.close_next - 1)
            log.info("payment_host_fault_close")
            # Half an answer, then the connection goes: Hypercorn closes a stream whose app fails mid-body.
            await send(
                {
                    "type": "http.response.start",
                    "status": outcome.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(outcome.body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": outcome.body[:5], "more_body": True})
            raise ConnectionAbortedError("simulated connection close")
        if f.http_error_next > 0 or (f.http_error_rate and random.random() < f.http_error_rate):
            f.http_error_next = max(0, f.http_error_next - 1)
            log.info("payment_host_fault_5xx")
            a = _problem(500, "internal-error", "simulated failure after processing")
            await _respond(send, a.status, a.body, a.content_type)
            return
        if f.garbage_next > 0 or (f.garbage_rate and random.random() < f.garbage_rate):
            f.garbage_next = max(0, f.garbage_next - 1)
            log.info("payment_host_fault_garbage")
            await _respond(send, outcome.status, GARBAGE, b"application/json")
            return
        extra = [(wire.REPLAYED.lower().encode(), b"true")] if outcome.status == 200 else []
        await _respond(send, outcome.status, outcome.body, b"application/json", extra)

    # --- admin: GET|POST /tokens on the simulator's admin port ------------------------------------------

    def admin_route(self, method: str, path: str, body: bytes) -> tuple[int, Any] | None:
        if path != "/tokens":
            return None
        if method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict) or set(changes) - {"revoke_all", "lifetime"}:
                    raise ValueError("body must be a JSON object with revoke_all and/or lifetime")
                lifetime = changes.get("lifetime")
                if lifetime is not None and (not isinstance(lifetime, int) or lifetime < 1):
                    raise ValueError("lifetime must be a positive integer (seconds)")
            except ValueError as e:
                return 400, {"error": str(e)}
            if lifetime is not None:
                self.auth.lifetime = lifetime
            if changes.get("revoke_all"):
                log.info("payment_host_tokens_revoked", count=self.auth.revoke_all())
        elif method != "GET":
            return 405, {"error": "GET or POST"}
        return 200, self.auth.snapshot()


def _idempotency_key(headers: dict[str, str], *, reversal: bool) -> str:
    key = headers.get(wire.IDEMPOTENCY_KEY.lower(), "")
    if not key:
        raise _problem(400, "missing-idempotency-key", "Idempotency-Key: required", wire.IDEMPOTENCY_KEY)
    try:
        msgspec.json.decode(_encoder.encode(key), type=wire.Key)
    except msgspec.ValidationError:
        raise _problem(400, "invalid-idempotency-key", "Idempotency-Key: malformed", wire.IDEMPOTENCY_KEY) from None
    if key.endswith(".reversal") != reversal:
        raise _problem(
            400, "invalid-idempotency-key", "Idempotency-Key: wrong form for this operation", wire.IDEMPOTENCY_KEY
        )
    return key


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        message = str(e)
        field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else None
        raise _problem(422, "invalid-field", message.split(" - at ")[0], field) from None
    except msgspec.DecodeError:
        raise _problem(400, "malformed-json", "body is not valid JSON") from None


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        event = await receive()
        chunk: bytes = event.get("body", b"")
        body += chunk
        if len(body) > MAX_BODY:
            raise _problem(413, "body-too-large", "request body over 64 KiB")
        if not event.get("more_body"):
            return body


async def _respond(send: Any, status: int, body: bytes, content_type: bytes, extra: Headers | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
