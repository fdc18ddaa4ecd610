"""The ISO 8583 connector: persistent multiplexed TCP links to the acquirer, QMUX-style.

Requests on a link are matched to answers by key (message class + field 11 + field 41), not by order. Every
exchange runs under the acquirer timeout; when the outcome of a sent message is unknown (timeout, link lost,
garbage from the peer) a durable reversal is queued in the store-and-forward queue before the caller hears
OutcomeUnknown. The store's send guard is checked right before each transaction frame is written (LeaseExpired
past it, docs/postgres.md "Leases and fencing"). One nursery (`run`) owns the links (connect, sign-on, reader,
echo, reconnect with backoff) and the SAF retry loop.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import ssl
from pathlib import Path

import msgspec
import structlog
import trio

from ..config import AcquirerConfig
from ..sealing import Sealer
from ..store.types import ALWAYS_SEND, SendGuard, StoreUnavailable
from . import spec
from .backoff import backoff_delay
from .codec import EncodeError, FrameError, FrameReader, Framing, Message, decode, encode
from .link import Key, _Fenced, _Link, _NotSent, _Pending, _Queued, _SendState, _Unknown
from .link_writer import write_frames
from .messages import build_request, network_request, parse_response, request_mti, reversal_for
from .saf import SafItem, SafQueue, entry_key, owner_id
from .saf_forwarding import SafForwarder
from .saf_store import SafStore
from .tls import client_context, connect_failure, open_stream
from .types import (
    AcquirerRequest,
    AcquirerResponse,
    AcquirerUnavailable,
    ClaimFence,
    LeaseExpired,
    MessageKind,
    OutcomeUnknown,
    RequestNotEncodable,
)

log = structlog.get_logger(__name__)


class Iso8583Connector:
    """`Connector` over ISO 8583:1987 / TCP. Start `run` in a nursery; `aclose` (or cancelling it) stops it."""

    def __init__(
        self,
        config: AcquirerConfig,
        saf_path: Path | SafStore,
        sealer: Sealer,
        *,
        host: str | None = None,
        port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        guard: SendGuard = ALWAYS_SEND,
    ) -> None:
        self._cfg = config
        self._guard = guard
        self._host = host or config.host
        self._port = port if port is not None else config.port
        # Built once (files read at start, not per reconnect); from the config's paths as given if not passed.
        self._tls = tls_context or client_context(config)
        self._framing = Framing(config.length_prefix)
        # A path: the LMDB queue there; else the SafStore the factory chose (store.backend = "postgres").
        self._saf: SafStore = SafQueue(saf_path, sealer) if isinstance(saf_path, Path) else saf_path
        self._owner = owner_id()
        self._links = [_Link(i) for i in range(config.connections)]
        self._pending: dict[Key, _Pending] = {}
        self._slots = trio.Semaphore(config.max_in_flight)
        self._round_robin = itertools.count()
        self._network_stan = itertools.count(random.randrange(1, 999_999))
        self._ready_event = trio.Event()
        self._signed_on_once = False  # until the first sign-on, a request waits for it (see _exchange)
        self._saf_forwarder = SafForwarder()
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        # Counters the host exports as metrics.
        self.late_answers = 0
        self.garbage_frames = 0
        self.reversals_queued = 0
        self.reversals_acknowledged = 0

    # --- the Connector protocol -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(link.up for link in self._links)

    @property
    def not_ready_reason(self) -> str:
        return "" if self.ready else "no acquirer link signed on"

    @property
    def links_up(self) -> int:
        return sum(1 for link in self._links if link.up)

    @property
    def saf_depth(self) -> int:
        """Reversals waiting in the store-and-forward queue (shared by every worker)."""
        return len(self._saf)

    def saf_oldest_created(self) -> float | None:
        """Creation time of the oldest reversal waiting (None if none); blocks on the store: call in a thread."""
        return self._saf.oldest_created()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._ready_event.wait()

    def prepare(self, request: AcquirerRequest) -> AcquirerRequest:
        """Fix the MTI now: recovery and reversals quote what was sent, whatever acquirer.purchase_mti says later."""
        return msgspec.structs.replace(request, mti=request_mti(request, self._cfg.purchase_mti))

    async def send(self, request: AcquirerRequest, *, fence: ClaimFence | None = None) -> AcquirerResponse:
        with self._saf_forwarder.using():
            return await self._send(request, fence)

    async def _send(self, request: AcquirerRequest, fence: ClaimFence | None) -> AcquirerResponse:
        msg, frame = self._encode(request, request_mti(request, self._cfg.purchase_mti))
        state = _SendState(self._guard)
        try:
            reply = await self._exchange(msg, state, frame=frame)
        except _Fenced as e:
            raise LeaseExpired(str(e), sent=False) from None
        except _NotSent as e:
            raise AcquirerUnavailable(str(e)) from None
        except _Unknown as e:
            if not self._guard.may_send():
                # Our lease ran out meanwhile: the record's next owner inquires (after the lease end plus our
                # timeout) and decides; a reversal queued now could race its recovery. As after a crash here.
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
        return parse_response(reply)

    async def inquire(self, request: AcquirerRequest) -> AcquirerResponse | None:
        mti = spec.REPEAT_OF[request_mti(request, self._cfg.purchase_mti)]
        msg, frame = self._encode(request, mti)
        try:
            reply = await self._exchange(msg, _SendState(self._guard), frame=frame)
        except _Fenced as e:
            raise LeaseExpired(str(e), sent=False) from None
        except _NotSent as e:
            raise AcquirerUnavailable(str(e)) from None
        except _Unknown as e:
            raise OutcomeUnknown(str(e)) from None
        if reply.get("39") == spec.UNABLE_TO_LOCATE:
            return None
        return parse_response(reply)

    async def reversal_recorded(self, request: AcquirerRequest) -> bool:
        reversal = reversal_for(request, self._cfg.purchase_mti, self._cfg.acquirer_institution_id)
        with self._saf_forwarder.using():
            return bool(await trio.to_thread.run_sync(self._saf.known, entry_key(reversal)))

    async def queue_reversal(self, request: AcquirerRequest, reason: str, *, fence: ClaimFence | None = None) -> None:
        reversal = reversal_for(request, self._cfg.purchase_mti, self._cfg.acquirer_institution_id)
        # A reversal whose own outcome is unknown may have reached the acquirer as an 0400: retry it as 0401.
        sent = 1 if request.kind is MessageKind.REVERSAL else 0
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
                    for link in self._links:
                        nursery.start_soon(self._link_loop, link)
                    nursery.start_soon(self._saf_loop)
                    task_status.started()
        finally:
            for pending in self._pending.values():
                pending.error = "connector stopped"
                pending.event.set()
            with trio.CancelScope(shield=True):
                # Requests just failed above queue their reversals now: closing the queue under them would
                # lose those reversals. Each is bounded by the acquirer timeout (twice, for a stalled write).
                await self._saf_forwarder.wait_drained(self._cfg.timeout * 2 + 5.0)
                await trio.to_thread.run_sync(self._saf.close)
            self._stopped.set()

    async def aclose(self) -> None:
        if self._scope is None:
            await trio.to_thread.run_sync(self._saf.close)
            return
        self._scope.cancel()
        await self._stopped.wait()

    # --- exchanges --------------------------------------------------------------------------------------

    def _encode(self, request: AcquirerRequest, mti: str) -> tuple[Message, bytes]:
        """The message and its frame, made whole before anything is sent (RequestNotEncodable otherwise)."""
        try:
            msg = build_request(request, mti, self._cfg.acquirer_institution_id)
            return msg, self._framing.wrap(encode(msg))
        except EncodeError as e:
            raise RequestNotEncodable(f"request not sent: {e}", e.field) from None
        except ValueError as e:  # larger than a frame may be
            raise RequestNotEncodable(f"request not sent: {e}", "") from None

    def _pick_link(self) -> _Link | None:
        up = [link for link in self._links if link.up]
        if not up:
            return None
        return up[next(self._round_robin) % len(up)]

    async def _exchange(
        self, msg: Message, state: _SendState, link: _Link | None = None, *, frame: bytes | None = None
    ) -> Message:
        """Send `msg` (as `frame` if already encoded) and wait for its answer, within the acquirer timeout.
        Raises _NotSent or _Unknown."""
        key = spec.match_key(msg["t"], msg["11"], msg.get("41", ""))
        if frame is None:
            try:
                frame = self._framing.wrap(encode(msg))
            except ValueError as e:
                raise _NotSent(str(e)) from None
        pending: _Pending | None = None
        with trio.move_on_after(self._cfg.timeout):
            async with self._slots:  # back-pressure: wait for a slot, within the deadline
                if link is None and not self._signed_on_once:
                    # A worker that just started is still signing on: waiting for it (bounded) beats answering
                    # 91 for an acquirer that is there. A link lost later is an outage: no wait then.
                    with trio.move_on_after(self._cfg.connect_timeout):
                        await self.wait_ready()
                chosen = link or self._pick_link()
                if chosen is None or chosen.stream is None:
                    raise _NotSent("no connection to the acquirer")
                if key in self._pending:
                    raise _NotSent("a request with the same key is already in flight")
                pending = _Pending(chosen)
                self._pending[key] = pending
                chosen.pending.add(key)
                queued = _Queued(frame, state, pending)
                try:
                    self._enqueue(chosen, queued)
                    await pending.event.wait()
                finally:
                    # A frame the writer has not taken yet never leaves: its caller gave up (deadline, cancel).
                    chosen.unqueue(queued)
                    if self._pending.get(key) is pending:
                        del self._pending[key]
                    chosen.pending.discard(key)
                if pending.response is None:
                    if pending.fenced:
                        raise _Fenced(pending.error or "not sent: the send guard refused")
                    if pending.not_sent:
                        raise _NotSent(pending.error or "connection closed")
                    raise _Unknown(pending.error or "link lost")
                return pending.response
        if state.sent:
            raise _Unknown("no answer within the acquirer timeout")
        raise _NotSent("no in-flight slot or link before the deadline")

    def _enqueue(self, link: _Link, item: _Queued) -> None:
        if link.stream is None:
            raise _NotSent("connection closed")
        link.enqueue(item)

    # --- links ------------------------------------------------------------------------------------------

    async def _link_loop(self, link: _Link) -> None:
        attempt = 0
        while True:
            try:
                stream = await open_stream(self._host, self._port, self._tls, self._cfg.connect_timeout)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as e:
                error, reason = connect_failure(e)
                log.warning("acquirer_connect_failed", link=link.index, error=error, reason=reason, attempt=attempt)
                await trio.sleep(backoff_delay(attempt, self._cfg.reconnect_min, self._cfg.reconnect_max))
                attempt += 1
                continue
            signed_on = False
            try:
                link.stream = stream
                link.last_received = trio.current_time()
                async with trio.open_nursery() as nursery:
                    link.scope = nursery.cancel_scope
                    nursery.start_soon(self._reader, link)
                    nursery.start_soon(write_frames, link, self._cfg.timeout)
                    signed_on = await self._sign_on(link)
                    if signed_on:
                        link.up = True
                        self._signed_on_once = True
                        self._ready_event.set()
                        self._saf_forwarder.wake()
                        attempt = 0
                        log.info("acquirer_link_up", link=link.index, host=self._host, port=self._port)
                        nursery.start_soon(self._echo_loop, link)
                    else:
                        nursery.cancel_scope.cancel()
            finally:
                link.up = False
                link.stream = None
                link.scope = None
                if not self.ready:
                    self._ready_event = trio.Event()
                link.fail_queued("connection closed")
                for key in list(link.pending):
                    pending = self._pending.get(key)
                    if pending is not None and pending.link is link:
                        pending.error = "link lost"
                        pending.event.set()
                await trio.aclose_forcefully(stream)
            log.warning("acquirer_link_down", link=link.index)
            await trio.sleep(backoff_delay(attempt, self._cfg.reconnect_min, self._cfg.reconnect_max))
            attempt += 1

    async def _sign_on(self, link: _Link) -> bool:
        msg = network_request(spec.SIGN_ON, self._next_network_stan(), self._cfg.acquirer_institution_id)
        try:
            reply = await self._exchange(msg, _SendState(), link=link)
        except (_NotSent, _Unknown) as e:
            log.warning("acquirer_sign_on_failed", link=link.index, error=str(e))
            return False
        if reply.get("39") != spec.APPROVED:
            log.warning("acquirer_sign_on_refused", link=link.index, response_code=reply.get("39"))
            return False
        return True

    async def _echo_loop(self, link: _Link) -> None:
        """Echo when the acquirer has sent nothing for echo_interval; an echo unanswered within the timeout
        drops the link. A silent acquirer is so found within echo_interval + timeout, busy link or not."""
        interval = self._cfg.echo_interval
        while True:
            silent_for = trio.current_time() - link.last_received
            if silent_for < interval:
                await trio.sleep(interval - silent_for)
                continue
            msg = network_request(spec.ECHO, self._next_network_stan(), self._cfg.acquirer_institution_id)
            try:
                await self._exchange(msg, _SendState(), link=link)  # its answer updates last_received
            except (_NotSent, _Unknown) as e:
                link.drop(f"echo failed: {e}")
                return

    def _next_network_stan(self) -> str:
        return f"{next(self._network_stan) % 999_999 + 1:06d}"

    async def _reader(self, link: _Link) -> None:
        assert link.stream is not None
        reader = FrameReader(link.stream, self._framing)
        try:
            while True:
                payload = await reader.next_frame()
                if payload is None:
                    link.drop("acquirer closed the connection")
                    return
                link.last_received = trio.current_time()
                await self._on_message(link, decode(payload))
        except FrameError as e:
            self.garbage_frames += 1
            log.error("acquirer_garbage_frame", link=link.index, frame_length=e.frame_length, error=str(e))
            link.drop("garbage frame")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            link.drop(f"receive failed: {type(e).__name__}")

    async def _on_message(self, link: _Link, msg: Message) -> None:
        mti = msg["t"]
        if not spec.is_response(mti):
            if mti == "0800":  # the acquirer's own echo / sign-on: acknowledge it
                answer = {k: v for k, v in msg.items() if k in ("7", "11", "32", "70")}
                answer.update(t="0810", **{"39": spec.APPROVED})
                try:
                    self._enqueue(link, _Queued(self._framing.wrap(encode(answer)), _SendState(), None))
                except _NotSent:
                    return  # the link is going down; escaping here would take the connector down
            else:
                log.warning("acquirer_unexpected_request", link=link.index, mti=mti)
            return
        key = spec.match_key(mti, msg.get("11", ""), msg.get("41", ""))
        pending = self._pending.pop(key, None)
        if pending is None:
            self.late_answers += 1
            log.warning("acquirer_late_answer", link=link.index, mti=mti, stan=key[1], terminal=key[2])
            return
        pending.response = msg
        pending.event.set()

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
        # The first send is an 0400; once one may have gone out, every later one is the repeat 0401.
        mti = "0401" if item.attempts > 0 else "0400"
        if not await trio.to_thread.run_sync(self._saf.record_attempt, item.key, self._owner):
            log.info("reversal_lease_lost", stan=item.request.stan)  # another owner has it, or it is done
            return
        try:
            msg = build_request(item.request, mti, self._cfg.acquirer_institution_id)
            reply = await self._exchange(msg, _SendState(self._guard))
        except (_NotSent, _Unknown, _Fenced, ValueError) as e:
            retry_in = backoff_delay(item.attempts, self._cfg.saf_retry_min, self._cfg.saf_retry_max)
            await trio.to_thread.run_sync(self._saf.release, item.key, self._owner, retry_in, str(e))
            log.info("reversal_retry_scheduled", stan=item.request.stan, retry_in=round(retry_in, 2), error=str(e))
            return
        code = reply.get("39", "")
        if code in spec.REVERSAL_NOT_ACKNOWLEDGED:
            # Not an acknowledgement (spec.REVERSAL_NOT_ACKNOWLEDGED): repeat it later, as after no answer.
            retry_in = backoff_delay(item.attempts, self._cfg.saf_retry_min, self._cfg.saf_retry_max)
            await trio.to_thread.run_sync(self._saf.release, item.key, self._owner, retry_in, f"answered {code}")
            log.info(
                "reversal_retry_scheduled", stan=item.request.stan, retry_in=round(retry_in, 2), response_code=code
            )
            return
        # Any other 0410 acknowledges: 00 reversed, 25 the acquirer never saw the original (nothing to undo).
        await trio.to_thread.run_sync(self._saf.delete, item.key)
        self.reversals_acknowledged += 1
        log.info(
            "reversal_acknowledged",
            stan=item.request.stan,
            terminal=item.request.terminal_id,
            response_code=reply.get("39"),
            attempts=item.attempts + 1,
        )


__all__ = ["Iso8583Connector", "MessageKind"]
