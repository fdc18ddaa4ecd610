"""A trio TCP acquirer simulator speaking our ISO 8583 dialect (docs/iso8583.md), for dev, tests and benches.

Rules come from SimulatorConfig: the response code by the last two digits of the amount, one amount that is
never answered, latency, issuer EMV data (91, and 71/72 scripts for chosen amounts), 6-character approval
codes. It keeps a Ledger of every authorization, reversal and repeat, answers a repeat with the original
answer, and serves the ledger and run-time fault switches on a loopback HTTP/JSON admin port.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import string
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import trio

from . import spec
from .codec import FrameError, FrameReader, Framing, Message, decode, encode
from .ledger import Ledger
from .simulator_config import FaultConfig, SimulatorConfig
from .tls import server_context

log = structlog.get_logger(__name__)

_ECHOED = ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")
GARBAGE = b"\xff\xfeNOT-ISO8583\x00\x01"
_APPROVAL_ALPHABET = string.ascii_uppercase + string.digits


def _tlv(tag: str, value_hex: str) -> str:
    n = len(value_hex) // 2
    return f"{tag}{n:02X}{value_hex}" if n < 128 else f"{tag}81{n:02X}{value_hex}"


class Simulator:
    """One simulator: rules, ledger and faults. `serve` runs the TCP server (and the admin port)."""

    def __init__(self, config: SimulatorConfig | None = None, ledger: Ledger | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.ledger = ledger or Ledger()
        self.faults = msgspec.structs.replace(self.config.faults)
        self.port = 0
        self.admin_port = 0
        # More admin routes (the payment host's /tokens): each returns (status, JSON) or None if not its route.
        self.admin_extensions: list[Callable[[str, str, bytes], tuple[int, Any] | None]] = []
        self._framing = Framing(self.config.length_prefix)
        c = self.config  # TLS files are read here, once: a bad one fails the construction, not the serving
        self._tls = server_context(c.tls_certfile, c.tls_keyfile, c.tls_client_ca) if c.tls_certfile else None

    # --- serving ----------------------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        tcp = await trio.open_tcp_listeners(port, host=host)
        self.port = tcp[0].socket.getsockname()[1]
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
        if self._tls is not None:
            listeners = [trio.SSLListener(listener, self._tls) for listener in tcp]
        async with trio.open_nursery() as nursery:
            if self.config.admin_bind:
                admin_host, _, admin_port = self.config.admin_bind.rpartition(":")
                self.admin_port = await nursery.start(self._serve_admin, admin_host, int(admin_port))
            await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
            log.info("simulator_listening", host=host, port=self.port, admin_port=self.admin_port, tls=self.tls)
            task_status.started(self.port)

    @property
    def tls(self) -> str:
        """How the listener speaks: plain TCP, TLS, or mutual TLS (a client certificate required)."""
        if not self.config.tls_certfile:
            return "plain TCP"
        return "mutual TLS" if self.config.tls_client_ca else "TLS"

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(10):  # a client that connects and says nothing holds nothing for long
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as e:
                # Wrong CA, wrong name, no or an unknown client certificate: the client is refused.
                log.warning("simulator_tls_refused", error=type(e.__cause__ or e).__name__)
                await trio.aclose_forcefully(stream)
                return
        write_lock = trio.Lock()
        reader = FrameReader(stream, self._framing)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        payload = await reader.next_frame()
                        if payload is None:
                            break
                        msg = decode(payload)
                    except FrameError as e:
                        log.warning("simulator_garbage_frame", frame_length=e.frame_length)
                        break
                    self.ledger.messages += 1
                    nursery.start_soon(self._answer, msg, stream, write_lock, nursery.cancel_scope)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (a host killed mid-exchange resets the connection): only this connection ends
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(
        self, msg: Message, stream: trio.abc.Stream, lock: trio.Lock, connection: trio.CancelScope
    ) -> None:
        answer = self.process(msg)  # ledger first: the acquirer "did it" even if the answer is lost
        await trio.sleep(self._latency())
        f = self.faults
        if f.delay_seconds > 0:
            delay = f.delay_seconds
            if f.delay_next > 0:  # only the next N answers: the delay switches itself off after them
                f.delay_next -= 1
                if f.delay_next == 0:
                    f.delay_seconds = 0.0
            await trio.sleep(delay)
        if answer is None:
            return
        if f.close_next > 0 or (f.close_rate and random.random() < f.close_rate):
            f.close_next = max(0, f.close_next - 1)
            log.info("simulator_fault_close", mti=msg["t"], stan=msg.get("11"))
            connection.cancel()
            await trio.aclose_forcefully(stream)
            return
        if f.drop_answers or f.drop_next > 0 or (f.drop_rate and random.random() < f.drop_rate):
            f.drop_next = max(0, f.drop_next - 1)
            log.info("simulator_fault_drop", mti=msg["t"], stan=msg.get("11"))
            return
        if f.garbage_next > 0 or (f.garbage_rate and random.random() < f.garbage_rate):
            f.garbage_next = max(0, f.garbage_next - 1)
            log.info("simulator_fault_garbage", mti=msg["t"], stan=msg.get("11"))
            frame = self._framing.wrap(GARBAGE)
        else:
            frame = self._framing.wrap(encode(answer))
        async with lock:
            try:
                await stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _latency(self) -> float:
        lat = self.config.latency
        if lat.distribution == "uniform":
            return random.uniform(lat.min_ms, lat.max_ms) / 1000
        if lat.distribution == "exponential":
            return random.expovariate(1 / lat.mean_ms) / 1000 if lat.mean_ms > 0 else 0.0
        return lat.fixed_ms / 1000

    # --- rules and ledger -------------------------------------------------------------------------------

    def process(self, msg: Message) -> Message | None:
        """Apply the rules to one request, record it in the ledger, return the answer (None: no answer)."""
        mti = msg["t"]
        if mti == "0800":
            return {**{k: msg[k] for k in ("7", "11", "32", "70") if k in msg}, "t": "0810", "39": "00"}
        if mti in ("0100", "0200"):
            return self._authorize(msg)
        if mti in ("0101", "0201"):
            return self._repeat(msg)
        if mti in ("0400", "0401"):
            return self._reverse(msg)
        log.warning("simulator_unsupported_mti", mti=mti)
        return None

    def _authorize(self, msg: Message) -> Message | None:
        entry = self.ledger.entry(msg.get("41", ""), msg.get("11", ""))
        entry.authorizations += 1
        if entry.authorizations > 1:
            log.warning("simulator_duplicate_authorization", stan=entry.stan, terminal=entry.terminal_id)
            return self._base_answer(msg, "94")  # duplicate transmission: not processed again
        amount = int(msg.get("4", "0"))
        entry.rrn, entry.amount, entry.mti = msg.get("37", ""), amount, msg["t"]
        if entry.rrn:
            self.ledger.by_rrn[entry.rrn] = self.ledger.key(entry.terminal_id, entry.stan)
        code = self.config.responses.get(f"{amount % 100:02d}", self.config.default_response)
        answer = self._base_answer(msg, code)
        icc = ""
        if code == spec.APPROVED:
            answer["38"] = "".join(secrets.choice(_APPROVAL_ALPHABET) for _ in range(6))
            if self.config.issuer_authentication_data:
                icc += _tlv("91", self.config.issuer_authentication_data)
        for tag, value in sorted(self.config.scripts.get(str(amount), {}).items()):
            icc += _tlv(tag, value)
        if icc:
            answer["55"] = icc
        entry.response_code, entry.answer = code, answer
        if amount == self.config.no_answer_amount:
            return None
        return answer

    def _repeat(self, msg: Message) -> Message:
        entry = self.ledger.get(msg.get("41", ""), msg.get("11", ""))
        if entry is None or entry.answer is None:
            # Never saw the original: say so (25), and do not process the repeat as a new authorization.
            entry = self.ledger.entry(msg.get("41", ""), msg.get("11", ""))
            entry.repeats += 1
            return self._base_answer(msg, spec.UNABLE_TO_LOCATE)
        entry.repeats += 1
        return dict(entry.answer)

    def _reverse(self, msg: Message) -> Message:
        try:
            _, original_stan, _, _ = spec.parse_original_data(msg.get("90", ""))
        except ValueError:
            return self._base_answer(msg, "30")  # format error
        entry = self.ledger.entry(msg.get("41", ""), original_stan)
        entry.reversal_messages += 1
        if msg["t"] == "0401":
            entry.repeats += 1
        f = self.faults
        if f.reversal_code and entry.reversal_answer is None:
            code = f.reversal_code
            if f.reversal_code_next > 0:  # only the next N reversals: the fault switches itself off after them
                f.reversal_code_next -= 1
                if f.reversal_code_next == 0:
                    f.reversal_code = ""
            log.info("simulator_fault_reversal_code", stan=original_stan, response_code=code)
            return {**self._base_answer(msg, code), "90": msg["90"]}  # reversed nothing: not recorded as done
        if entry.reversal_answer is not None:
            return {**entry.reversal_answer, "t": "0410"}  # already reversed: the same answer again
        code = spec.APPROVED if entry.authorizations else spec.UNABLE_TO_LOCATE
        entry.reversals += 1
        entry.reversed = bool(entry.authorizations)
        answer = self._base_answer(msg, code)
        answer["90"] = msg["90"]
        entry.reversal_answer = answer
        return answer

    @staticmethod
    def _base_answer(msg: Message, code: str) -> Message:
        answer = {k: msg[k] for k in _ECHOED if k in msg}
        answer["t"] = spec.REQUEST_TO_RESPONSE.get(msg["t"], msg["t"][:2] + "10")
        answer["39"] = code
        return answer

    def set_faults(self, changes: dict[str, Any]) -> FaultConfig:
        """Merge run-time fault switches (validated like the config)."""
        merged = msgspec.structs.asdict(self.faults) | changes
        self.faults = msgspec.convert(merged, FaultConfig, strict=False)
        log.info("simulator_faults_set", **msgspec.structs.asdict(self.faults))
        return self.faults

    # --- admin: loopback HTTP/JSON ---------------------------------------------------------------------

    async def _serve_admin(self, host: str, port: int, *, task_status: trio.TaskStatus[int]) -> None:
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        hc = HypercornConfig()
        hc.bind = [f"{host}:{port}"]
        hc.accesslog = None
        hc.errorlog = None

        async with trio.open_nursery() as nursery:
            # A plain-dict ASGI app: hypercorn's TypedDict scope types would add nothing for three routes.
            app: Any = self._admin_app
            binds: list[str] = await nursery.start(functools.partial(serve, app, hc, mode="asgi"))
            task_status.started(int(binds[0].rsplit(":", 1)[1]))

    async def _admin_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        status, payload = self._admin_route(scope["method"], scope["path"], body)
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _admin_route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        for extension in self.admin_extensions:
            routed = extension(method, path, body)
            if routed is not None:
                return routed
        if path == "/ledger" and method == "GET":
            return 200, self.ledger.snapshot()
        if path == "/faults" and method == "GET":
            return 200, msgspec.structs.asdict(self.faults)
        if path == "/faults" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object")
                return 200, msgspec.structs.asdict(self.set_faults(changes))
            except (ValueError, msgspec.ValidationError) as e:
                return 400, {"error": str(e)}
        return 404, {"error": f"no route {method} {path}"}


async def serve_simulator(
    config: SimulatorConfig | None,
    host: str,
    port: int,
    *,
    ledger: Ledger | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a simulator until cancelled; reports the bound TCP port via task_status.started(port)."""
    await Simulator(config, ledger).serve(host, port, task_status=task_status)
