"""The HTTPS/JSON payment-host connector (docs/payment-host.md): the `Connector` of docs/connectors.md over httpx
(trio through anyio), behind OAuth 2.0 client credentials with one shared token per worker.

Every exchange runs under acquirer.timeout, token wait included. Whether a failed request may have been
processed is decided by whether its first byte went out, which httpcore's trace hook reports
(`*.send_request_headers.started`): before it, AcquirerUnavailable; after it (timeout, connection lost, 5xx,
an answer that does not decode), OutcomeUnknown with a durable reversal queued first. A `401 invalid_token`
refreshes the token once and resends once: the Idempotency-Key makes the resend safe. Reversals go through the
same store-and-forward queue as the ISO connector's, with the same lease and backoff. The store's send guard is
checked before each API call and again as its first byte is about to go (LeaseExpired past it, docs/postgres.md
"Leases and fencing"); the ping probe is not guarded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import structlog
import trio

from ...config import AcquirerConfig, Config
from ...observability import metrics
from ...sealing import Sealer
from ...store.types import ALWAYS_SEND, SendGuard, StoreUnavailable
from .. import spec
from ..backoff import backoff_delay
from ..saf import SafItem, SafQueue, entry_key, owner_id
from ..saf_forwarding import SafForwarder
from ..saf_store import SafStore
from ..types import (
    AcquirerRequest,
    AcquirerResponse,
    AcquirerUnavailable,
    ClaimFence,
    LeaseExpired,
    MessageKind,
    OutcomeUnknown,
)
from . import wire
from .client_auth import ClientCredentials, fetch_token, tls_context
from .token_cache import NoToken, TokenCache
from .wire import authorization_key_of, request_key, reversal_for

log = structlog.get_logger(__name__)
# httpx logs every request at INFO: a line per transaction that says nothing our own events do not.
logging.getLogger("httpx").setLevel(logging.WARNING)

_authorization = msgspec.json.Decoder(wire.Authorization)
_reversal = msgspec.json.Decoder(wire.Reversal)
_problem = msgspec.json.Decoder(wire.Problem)
_encoder = msgspec.json.Encoder()
# Answers that say "refused, nothing processed": decline unsent, reverse nothing.
_REFUSED_UNPROCESSED = frozenset({400, 403, 404, 405, 413, 415, 422, 429})


class _NotSent(Exception):
    """Nothing was processed: safe to treat as a decline."""


class _Unknown(Exception):
    """The request may have been processed; no usable answer came."""


class _Fenced(Exception):
    """The send guard refused before the request's first byte: nothing was sent."""


class _SendState:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class HttpConnector:
    """`Connector` for the payment host. Start `run` in a nursery; `aclose` (or cancelling it) stops it."""

    def __init__(
        self,
        config: AcquirerConfig,
        saf_path: Path | SafStore,
        sealer: Sealer,
        *,
        base_dir: str = ".",
        guard: SendGuard = ALWAYS_SEND,
    ) -> None:
        self._cfg = config
        self._guard = guard
        h = config.http
        self._base = h.base_url.rstrip("/")
        creds = ClientCredentials.from_config(h, base_dir)
        context = tls_context(h, base_dir)
        limits = httpx.Limits(max_connections=h.max_connections, max_keepalive_connections=h.max_connections)
        # The deadline is ours (trio, below); httpx's own timeouts only bound a connect that would outlast it.
        timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        self._http = httpx.AsyncClient(verify=context, http2=h.http2, limits=limits, timeout=timeout)
        # Token requests on their own small pool: a pool full of API requests never starves a refresh.
        self._token_http = httpx.AsyncClient(verify=context, limits=httpx.Limits(max_connections=2))
        self._tokens = TokenCache(
            functools.partial(fetch_token, self._token_http, creds, h.token_timeout),
            refresh_at=h.refresh_at,
            default_lifetime=h.default_token_lifetime,
            retry_min=h.token_retry_min,
            retry_max=h.token_retry_max,
        )
        # A path: the LMDB queue there; else the SafStore the factory chose (store.backend = "postgres").
        self._saf: SafStore = SafQueue(saf_path, sealer) if isinstance(saf_path, Path) else saf_path
        self._owner = owner_id()
        self._host_up = False
        self._last_ok = 0.0
        self._ready_event = trio.Event()
        self._probe_wakeup = trio.Event()
        self._saf_forwarder = SafForwarder()
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self.late_answers = 0  # an HTTP answer after our deadline is never read: always 0, for the metrics
        self.garbage_answers = 0
        self.reversals_queued = 0
        self.reversals_acknowledged = 0
        self.token_resends = 0

    @classmethod
    def from_config(
        cls, cfg: Config, saf_path: Path | SafStore, sealer: Sealer, *, guard: SendGuard = ALWAYS_SEND
    ) -> HttpConnector:
        return cls(cfg.acquirer, saf_path, sealer, base_dir=cfg.base_dir, guard=guard)

    # --- the Connector protocol -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._host_up and self._tokens.usable

    @property
    def not_ready_reason(self) -> str:
        if not self._tokens.usable:
            return "token endpoint failing" if self._tokens.failing else "no access token yet"
        return "" if self._host_up else "payment host unreachable"

    @property
    def links_up(self) -> int:
        return 1 if self.ready else 0

    @property
    def saf_depth(self) -> int:
        return len(self._saf)

    def saf_oldest_created(self) -> float | None:
        """Creation time of the oldest reversal waiting (None if none); blocks on the store: call in a thread."""
        return self._saf.oldest_created()

    @property
    def token_requests(self) -> int:
        return self._tokens.requests

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._ready_event.wait()

    def prepare(self, request: AcquirerRequest) -> AcquirerRequest:
        return request  # the key is fixed already; nothing else here changes with the config

    async def send(self, request: AcquirerRequest, *, fence: ClaimFence | None = None) -> AcquirerResponse:
        with self._saf_forwarder.using():
            state = _SendState()
            try:
                return await self._send_once(request, state)
            except _Fenced as e:
                raise LeaseExpired(str(e), sent=False) from None
            except _NotSent as e:
                raise AcquirerUnavailable(str(e)) from None
            except _Unknown as e:
                if not self._guard.may_send():  # as in the ISO connector: the next owner inquires and decides
                    raise LeaseExpired(f"{e}; the lease ran out: left to the next owner", sent=True) from None
                with trio.CancelScope(shield=True):
                    await self.queue_reversal(request, str(e), fence=fence)
                raise OutcomeUnknown(f"{e}; reversal queued") from None
            except trio.Cancelled:
                if state.sent:  # cancelled from outside after sending: still never leave it unreversed
                    with trio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                        # Not durable (kept in memory): the record stays PENDING, and its recovery decides.
                        await self.queue_reversal(request, "cancelled after send", fence=fence)
                raise

    async def _send_once(self, request: AcquirerRequest, state: _SendState) -> AcquirerResponse:
        if request.kind is MessageKind.REVERSAL:
            return await self._reverse(request, state)
        key = request_key(request)
        try:
            body = _encoder.encode(wire.authorization_request(request))
        except ValueError as e:
            raise _NotSent(f"request not sent: {e}") from None
        resp = await self._call("POST", wire.AUTHORIZATIONS, state, key=key, body=body)
        return self._authorization_answer(resp, key)

    async def inquire(self, request: AcquirerRequest) -> AcquirerResponse | None:
        state = _SendState()
        try:
            if request.kind is MessageKind.REVERSAL:  # as ISO's 0401: the reversal again (idempotent)
                return await self._reverse(request, state)
            key = request_key(request)
            resp = await self._call("GET", wire.authorization_path(key), state)
            if resp.status_code == 404:
                return None
            return self._authorization_answer(resp, key)
        except _Fenced as e:
            raise LeaseExpired(str(e), sent=False) from None
        except _NotSent as e:
            raise AcquirerUnavailable(str(e)) from None
        except _Unknown as e:
            raise OutcomeUnknown(str(e)) from None

    async def reversal_recorded(self, request: AcquirerRequest) -> bool:
        with self._saf_forwarder.using():
            return bool(await trio.to_thread.run_sync(self._saf.known, entry_key(reversal_for(request))))

    async def queue_reversal(self, request: AcquirerRequest, reason: str, *, fence: ClaimFence | None = None) -> None:
        reversal = reversal_for(request)
        sent = 1 if request.kind is MessageKind.REVERSAL else 0  # as ISO: the first delivery is already a resend
        with self._saf_forwarder.using():
            added = await trio.to_thread.run_sync(
                functools.partial(self._saf.add, reversal, reason, attempts=sent, fence=fence)
            )
        if added:
            self.reversals_queued += 1
            log.warning("reversal_queued", stan=request.stan, terminal=request.terminal_id, reason=reason)
        self._saf_forwarder.wake()

    # --- lifecycle --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._tokens.run)
                    nursery.start_soon(self._probe_loop)
                    nursery.start_soon(self._saf_loop)
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                # Requests cut short queue their reversals now: the queue stays open for them (bounded).
                await self._saf_forwarder.wait_drained(self._cfg.timeout * 2 + 5.0)
                with trio.move_on_after(5.0):
                    await self._http.aclose()
                    await self._token_http.aclose()
                await trio.to_thread.run_sync(self._saf.close)
            self._stopped.set()

    async def aclose(self) -> None:
        if self._scope is None:
            await self._http.aclose()
            await self._token_http.aclose()
            await trio.to_thread.run_sync(self._saf.close)
            return
        self._scope.cancel()
        await self._stopped.wait()

    # --- exchanges --------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        state: _SendState,
        *,
        key: str | None = None,
        body: bytes | None = None,
        guarded: bool = True,
    ) -> httpx.Response:
        """One API call within acquirer.timeout (token wait included). Raises _NotSent, _Unknown or _Fenced (the
        send guard refused: `guarded` calls only); returns any answer that is none of them (the caller reads it)."""
        with trio.move_on_after(self._cfg.timeout):
            return await self._call_with_token(method, path, state, key, body, guarded)
        if state.sent:
            raise _Unknown("no answer within the acquirer timeout")
        raise _NotSent("no token or connection before the deadline")

    async def _call_with_token(
        self, method: str, path: str, state: _SendState, key: str | None, body: bytes | None, guarded: bool
    ) -> httpx.Response:
        async def trace(event: str, _info: Mapping[str, Any]) -> None:
            if event.endswith(".send_request_headers.started"):
                # The last moment before the first byte (after the pool wait, connect and TLS handshake).
                if guarded and not self._guard.may_send():
                    raise _Fenced("not sent: this worker's store lease may have run out")
                state.sent = True

        for attempt in (1, 2):
            try:
                token = await self._tokens.get()
            except NoToken as e:
                raise _NotSent(f"no access token: {e}") from None
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if key is not None:
                headers[wire.IDEMPOTENCY_KEY] = key
            if body is not None:
                headers["Content-Type"] = "application/json"
            if guarded and not self._guard.may_send():
                raise _Fenced("not sent: this worker's store lease may have run out")
            try:
                resp = await self._http.request(
                    method, self._base + path, content=body, headers=headers, extensions={"trace": trace}
                )
            except httpx.HTTPError as e:
                if not state.sent:
                    self._host_down(type(e).__name__)
                    raise _NotSent(f"not sent: {type(e).__name__}") from None
                raise _Unknown(f"connection lost after sending: {type(e).__name__}") from None
            self._host_reached()
            if resp.status_code == 401 and "invalid_token" in resp.headers.get("www-authenticate", ""):
                # Refused before processing: nothing happened. One new token (shared), one resend.
                state.sent = False
                self._tokens.invalidate(token)
                if attempt == 1:
                    self.token_resends += 1
                    metrics.ACQUIRER_TOKEN_RESENDS.inc()
                    continue
                raise _NotSent("the payment host refused a fresh token too (401)")
            return resp
        raise AssertionError("unreachable")

    def _check_status(self, resp: httpx.Response, what: str) -> None:
        status = resp.status_code
        if status in (200, 201):
            return
        slug = ""
        try:
            slug = _problem.decode(resp.content).type.rsplit("/", 1)[-1][:64]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        if status in _REFUSED_UNPROCESSED or status == 401:
            log.warning("payment_host_refused", what=what, status=status, problem=slug)
            raise _NotSent(f"the payment host refused the {what} unprocessed ({status} {slug})".rstrip())
        raise _Unknown(f"the payment host answered {status} {slug}".rstrip())  # 409, 5xx, anything else

    def _authorization_answer(self, resp: httpx.Response, key: str) -> AcquirerResponse:
        self._check_status(resp, "authorization")
        try:
            answer = _authorization.decode(resp.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._garbage(resp)
            raise _Unknown("the payment host's answer is not an Authorization") from None
        if answer.key != key:
            raise _Unknown("the payment host answered for another key")
        return wire.acquirer_response(answer)

    async def _reverse(self, reversal: AcquirerRequest, state: _SendState) -> AcquirerResponse:
        key = authorization_key_of(reversal)
        try:
            body = _encoder.encode(wire.reversal_request(reversal))
        except ValueError as e:
            raise _NotSent(f"reversal not sent: {e}") from None
        resp = await self._call("POST", wire.reversal_path(key), state, key=wire.reversal_key(key), body=body)
        self._check_status(resp, "reversal")
        try:
            answer = _reversal.decode(resp.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._garbage(resp)
            raise _Unknown("the payment host's answer is not a Reversal") from None
        return AcquirerResponse(response_code=answer.response_code, stan=reversal.stan, rrn=reversal.rrn)

    def _garbage(self, resp: httpx.Response) -> None:
        self.garbage_answers += 1
        log.error("payment_host_garbage_answer", status=resp.status_code, length=len(resp.content))

    # --- readiness --------------------------------------------------------------------------------------

    def _host_reached(self) -> None:
        self._last_ok = trio.current_time()
        if not self._host_up:
            self._host_up = True
            log.info("payment_host_up", base_url=self._base)
            self._saf_forwarder.wake()
        if self.ready:
            self._ready_event.set()

    def _host_down(self, why: str) -> None:
        if self._host_up:
            self._host_up = False
            self._ready_event = trio.Event()
            log.warning("payment_host_down", reason=why)
        self._probe_wakeup.set()

    async def _probe_loop(self) -> None:
        """Keep `ready` true to life: an idle or unreachable host is probed (GET /v1/ping), the latter backing off."""
        attempt = 0
        while True:
            self._probe_wakeup = trio.Event()
            idle = trio.current_time() - self._last_ok
            if self._host_up and idle < self._cfg.http.probe_interval:
                with trio.move_on_after(self._cfg.http.probe_interval - idle):
                    await self._probe_wakeup.wait()
                continue
            try:
                resp = await self._call("GET", wire.PING, _SendState(), guarded=False)
                ok = resp.status_code == 200
            except (_NotSent, _Unknown):
                ok = False
            if ok:
                attempt = 0
                if self.ready:
                    self._ready_event.set()
                continue
            self._host_down("probe failed")
            await trio.sleep(backoff_delay(attempt, self._cfg.reconnect_min, self._cfg.reconnect_max))
            attempt += 1

    # --- store and forward ------------------------------------------------------------------------------

    async def _saf_loop(self) -> None:
        await self._saf_forwarder.run(
            self._saf,
            self._owner,
            lease=self._cfg.timeout * 2 + 5.0,
            retry_max=self._cfg.saf_retry_max,
            ready=lambda: self.ready,
            deliver=self._deliver_reversal,
        )

    async def _deliver_reversal(self, item: SafItem) -> None:
        if not await trio.to_thread.run_sync(self._saf.record_attempt, item.key, self._owner):
            log.info("reversal_lease_lost", stan=item.request.stan)  # another owner has it, or it is done
            return
        try:
            answer = await self._reverse(item.request, _SendState())
        except (_NotSent, _Unknown, _Fenced) as e:
            retry_in = backoff_delay(item.attempts, self._cfg.saf_retry_min, self._cfg.saf_retry_max)
            await trio.to_thread.run_sync(self._saf.release, item.key, self._owner, retry_in, str(e))
            log.info("reversal_retry_scheduled", stan=item.request.stan, retry_in=round(retry_in, 2), error=str(e))
            return
        if answer.response_code in spec.REVERSAL_NOT_ACKNOWLEDGED:  # 91/96: nothing reversed yet, as for ISO
            retry_in = backoff_delay(item.attempts, self._cfg.saf_retry_min, self._cfg.saf_retry_max)
            why = f"answered {answer.response_code}"
            await trio.to_thread.run_sync(self._saf.release, item.key, self._owner, retry_in, why)
            log.info("reversal_retry_scheduled", stan=item.request.stan, retry_in=round(retry_in, 2), error=why)
            return
        # Any other answer acknowledges: 00 reversed, 25 never authorized (the key is then blocked at the host).
        await trio.to_thread.run_sync(self._saf.delete, item.key)
        self.reversals_acknowledged += 1
        log.info(
            "reversal_acknowledged",
            stan=item.request.stan,
            terminal=item.request.terminal_id,
            response_code=answer.response_code,
            attempts=item.attempts + 1,
        )
