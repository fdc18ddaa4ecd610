"""`cloudlayer serve`: Hypercorn trio workers for our app, configured from our Config, under a trio supervisor.

The parent process binds the listening sockets, serves /metrics (summing every worker's metrics files) and
supervises `server.workers` spawned worker processes (worker.py); each worker imports `cloudlayer.asgi:app`,
which builds the app from the config file named by CLOUDLAYER_CONFIG.

Hung workers. A worker that dies is replaced. A worker that lives but makes no progress (deadlocked, stuck in a
C call, SIGSTOPped) would otherwise count as alive for ever, and so would its PENDING claims: each worker ticks
a shared-memory heartbeat from its event loop, and one silent for `server.worker_heartbeat_timeout` (or not
ticking within `server.worker_start_timeout` of its spawn) is SIGKILLed, then replaced like any crashed worker
(metric `cloudlayer_workers_hung_killed_total`); its claims recover as after a crash.

Shutdown. Hypercorn's own `run` stops workers on the first SIGINT/SIGTERM but has no way to force a stuck
shutdown, and workers die at once if a service manager sends SIGTERM to the whole process group. So we
supervise ourselves: workers ignore SIGINT/SIGTERM and stop only when the parent sets the shared shutdown
event; each then stops accepting, lets in-flight requests finish for up to `server.graceful_timeout`, and runs
the app's shutdown (store flush, acquirer link close). A second signal, or a shutdown that outlives its
deadline, kills the workers (SIGKILL) and `serve` returns 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.process import BaseProcess

import msgspec
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import repr_socket_addr

from . import devmode
from .acquirer.simulator_config import SimulatorConfig
from .acquirer.tls import check_client_files
from .config import Config, ConfigError
from .hostlock import hold_host_lock
from .observability import metrics
from .observability.logging import configure_logging
from .tls import ensure_dev_certificate
from .worker import Heartbeat, HeartbeatWatch, worker_main

log = structlog.get_logger(__name__)

APPLICATION_PATH = "cloudlayer.asgi:app"
# Time the app's shutdown (after_serving: store flush, acquirer link close) gets after in-flight requests.
LIFESPAN_SHUTDOWN_TIMEOUT = 10.0
# A TLS handshake that takes longer than this is an attack or a broken client, not a slow network.
SSL_HANDSHAKE_TIMEOUT = 10.0
# A worker that dies is replaced; more than CRASH_LOOP_DEATHS deaths within CRASH_LOOP_WINDOW seconds stop
# the host instead (exit 1), so that a service manager sees a host that cannot run.
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW = 60.0
LISTEN_BACKLOG = 1024
# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are fixed by OpenSSL and all fine).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CloudLayerHypercornConfig(HypercornConfig):
    """Hypercorn's TLS context (TLS >= 1.2, no compression, ALPN) with the hardening its `options =` drops."""

    tcp_quickack = True  # server.tcp_quickack, read by each worker (hypercorn_fixes)

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            context.options |= (
                ssl.OP_NO_RENEGOTIATION
                | ssl.OP_CIPHER_SERVER_PREFERENCE
                | ssl.OP_SINGLE_ECDH_USE
                | ssl.OP_NO_TLSv1
                | ssl.OP_NO_TLSv1_1
            )
        return context


def _state_path(cfg: Config, value: str) -> str:
    return str(cfg.var_path(value))


def hypercorn_config(cfg: Config, config_path: str | None) -> HypercornConfig:
    """Translate our config into Hypercorn's. Raises ConfigError naming the key when TLS material is unusable."""
    server = cfg.server
    hc = CloudLayerHypercornConfig()
    hc.application_path = APPLICATION_PATH
    hc.worker_class = "trio"
    hc.bind = [server.bind]
    hc.workers = server.workers
    hc.backlog = LISTEN_BACKLOG
    hc.keep_alive_timeout = server.keep_alive_timeout
    hc.keep_alive_max_requests = server.keep_alive_max_requests
    hc.read_timeout = server.read_timeout
    hc.graceful_timeout = server.graceful_timeout
    hc.shutdown_timeout = LIFESPAN_SHUTDOWN_TIMEOUT
    hc.ssl_handshake_timeout = SSL_HANDSHAKE_TIMEOUT
    hc.include_server_header = False  # no version banner for scanners
    hc.accesslog = None  # the app logs each request itself, with the fields that matter
    # A Logger object (not "-"): Hypercorn then adds no handler, and records flow into our structlog chain.
    hc.errorlog = logging.getLogger("hypercorn.error")
    # Request bodies are limited by the app (Quart MAX_CONTENT_LENGTH = server.max_body_bytes, 413 past it);
    # Hypercorn's h11_max_incomplete_size (16 KiB) bounds the request line and headers.
    hc.alpn_protocols = ["h2", "http/1.1"] if server.http2 else ["http/1.1"]
    hc.ciphers = TLS12_CIPHERS
    hc.tcp_quickack = server.tcp_quickack
    if server.tls:
        if server.certfile or server.keyfile:
            if not (server.certfile and server.keyfile):
                raise ConfigError("invalid config: `server.certfile` and `server.keyfile` must be set together")
            hc.certfile = _state_path(cfg, server.certfile)
            hc.keyfile = _state_path(cfg, server.keyfile)
        else:
            certfile, keyfile = ensure_dev_certificate(cfg.var_path(""))
            hc.certfile, hc.keyfile = str(certfile), str(keyfile)
        if server.client_ca:
            hc.ca_certs = _state_path(cfg, server.client_ca)
            hc.verify_mode = ssl.CERT_REQUIRED if server.require_client_cert else ssl.CERT_OPTIONAL
        _check_tls(hc)
    elif server.client_ca:
        raise ConfigError("invalid config: `server.client_ca` needs server.tls = true")
    if config_path:
        os.environ["CLOUDLAYER_CONFIG"] = os.path.abspath(config_path)
    return hc


def _check_tls(hc: HypercornConfig) -> None:
    # Check here, once, so that bad TLS material stops the start with one line, not a traceback per worker.
    for key, path in (
        ("server.certfile", hc.certfile),
        ("server.keyfile", hc.keyfile),
        ("server.client_ca", hc.ca_certs),
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"invalid config: `{key}` file not found or not readable: {path}")
    try:
        hc.create_ssl_context()
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"invalid config: TLS material unusable (server.certfile/keyfile/client_ca): {e.strerror or e}"
        ) from None


def startup_banner(cfg: Config, listen: Sequence[str], metrics_urls: Sequence[str] = ()) -> str:
    """Human lines printed on start: where we listen, TLS mode, workers, store, acquirer, metrics."""
    server = cfg.server
    lines = [f"CloudLayer listening on {', '.join(listen)}"]
    if server.tls:
        tls = "dev self-signed certificate" if not server.certfile else f"certificate {server.certfile}"
        if server.client_ca:
            tls += ", client certificates " + ("required" if server.require_client_cert else "optional")
        tls += ", HTTP/2 and HTTP/1.1" if server.http2 else ", HTTP/1.1"
        lines.append(f"  TLS       {tls}")
    lines.append(f"  workers   {server.workers}")
    if cfg.store.backend == "postgres":
        from .store.pg.settings import PgSettings

        lines.append(f"  store     postgres at {PgSettings.from_config(cfg).describe()}")
    else:
        lines.append(f"  store     {cfg.store.backend} at {cfg.var_path(cfg.store.path)}")
    acquirer = cfg.acquirer
    if acquirer.mode == "simulator":
        lines.append("  acquirer  built-in simulator (in-process)")
    else:
        lines.append(f"  acquirer  {acquirer.host}:{acquirer.port}" + (" (TLS)" if acquirer.tls else ""))
    if metrics_urls:
        lines.append(f"  metrics   {', '.join(url + '/metrics' for url in metrics_urls)}")
    return "\n".join(lines)


def config_digest(cfg: Config) -> str:
    """SHA-256 of the effective configuration (file and environment overrides), for the audit log. The working
    directory (`base_dir`) is left out: the same settings give the same digest wherever the host is started."""
    doc = msgspec.to_builtins(cfg)
    doc.pop("base_dir", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def serve(
    cfg: Config,
    config_path: str | None,
    *,
    application_path: str = APPLICATION_PATH,
    on_started: Callable[[str], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code (0 after a graceful stop).

    `on_started(config_digest)` is called once the sockets are bound, before the workers start."""
    configure_logging(cfg.logging)
    hc = hypercorn_config(cfg, config_path)
    hc.application_path = application_path
    sim_cfg = devmode.embedded_simulator_config(cfg) if cfg.acquirer.mode == "simulator" else None
    check_client_files(cfg)
    if cfg.store.backend == "postgres":
        from .store.pg.migrate import check_before_serving

        check_before_serving(cfg)  # reachable, and migrated to exactly this build's schema version
        from .oauth.backends import preflight

        preflight(cfg)  # the shared pepper matches ours; an active signing key exists and opens here
    if cfg.metrics.enabled:
        metrics.prepare_multiprocess_dir(cfg.var_path("metrics"))
    try:
        sockets = hc.create_sockets()
    except OSError as e:
        raise ConfigError(f"invalid config: `server.bind` cannot listen on {cfg.server.bind}: {e.strerror}") from None
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.listen(hc.backlog)  # queue connections from now on, while workers start
    host_lock = hold_host_lock(cfg)
    if on_started is not None:
        on_started(config_digest(cfg))
    try:
        return trio.run(_supervise, cfg, hc, sockets, sim_cfg)
    finally:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
        host_lock.close()


def _listen_urls(sockets: Sockets) -> list[str]:
    urls = [f"https://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.secure_sockets]
    urls += [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets]
    return urls


class _Supervisor:
    def __init__(self, cfg: Config, hc: HypercornConfig, sockets: Sockets) -> None:
        self.cfg = cfg
        self.hc = hc
        self.sockets = sockets
        self.ctx = multiprocessing.get_context("spawn")
        self.shutdown_event = self.ctx.Event()
        self.processes: list[BaseProcess] = []
        self.heartbeats: dict[BaseProcess, HeartbeatWatch] = {}
        self.stopping = False
        self.forced = False
        self.failed = False
        self.stop_requested = trio.Event()
        self.deaths: list[float] = []  # trio clock times of recent unexpected worker exits

    def spawn_workers(self) -> None:
        for _ in range(self.hc.workers):
            self.spawn_one()

    def spawn_one(self) -> BaseProcess:
        # Ignored dispositions survive exec: a worker cannot be killed by a signal before it ignores it.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        server = self.cfg.server
        heartbeat: Heartbeat = self.ctx.RawValue("Q", 0)
        try:
            process = self.ctx.Process(
                target=worker_main,
                kwargs={
                    "config": self.hc,
                    "sockets": self.sockets,
                    "shutdown_event": self.shutdown_event,
                    "logging_cfg": self.cfg.logging,
                    "heartbeat": heartbeat,
                    "heartbeat_interval": server.worker_heartbeat_interval,
                },
                daemon=True,
            )
            process.start()
            self.processes.append(process)
            self.heartbeats[process] = HeartbeatWatch(
                heartbeat,
                trio.current_time(),
                timeout=server.worker_heartbeat_timeout,
                start_timeout=server.worker_start_timeout,
            )
            return process
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def begin_stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("shutdown_started", reason=reason, graceful_timeout=self.cfg.server.graceful_timeout)
            self.shutdown_event.set()
            self.stop_requested.set()

    def force(self, reason: str) -> None:
        self.forced = True
        log.warning("shutdown_forced", reason=reason)
        for process in self.processes:
            if process.exitcode is None:
                process.kill()

    async def watch(self, process: BaseProcess, nursery: trio.Nursery) -> None:
        """Reap a worker; one that dies while we serve is replaced, unless workers die in a loop."""
        await trio.lowlevel.wait_readable(process.sentinel)
        process.join()
        if process.pid is not None:
            metrics.mark_worker_dead(process.pid)
        self.processes.remove(process)
        self.heartbeats.pop(process, None)
        if self.stopping:
            return
        log.error("worker_exited", pid=process.pid, exitcode=process.exitcode)
        metrics.SUPERVISOR.worker_exits += 1
        now = trio.current_time()
        self.deaths = [t for t in self.deaths if now - t < CRASH_LOOP_WINDOW] + [now]
        if len(self.deaths) > CRASH_LOOP_DEATHS:
            self.failed = True
            self.begin_stop(f"workers keep dying ({len(self.deaths)} in {CRASH_LOOP_WINDOW:.0f} s)")
            return
        # The store recovers what the dead worker left PENDING (its owner id is now dead); serve on.
        replacement = self.spawn_one()
        log.warning("worker_replaced", dead_pid=process.pid, pid=replacement.pid)
        nursery.start_soon(self.watch, replacement, nursery)

    async def kill_hung_workers(self) -> None:
        """SIGKILL a worker whose heartbeat stopped; `watch` then reaps and replaces it like a crashed one."""
        while True:
            await trio.sleep(self.cfg.server.worker_heartbeat_interval)
            if self.stopping:
                continue  # a stuck shutdown is `enforce_deadline`'s to force
            now = trio.current_time()
            for process, watch in list(self.heartbeats.items()):
                silent = watch.silent_for(now)
                if silent is None or process.exitcode is not None:
                    continue
                log.error("worker_hung", pid=process.pid, silent_seconds=round(silent, 1), started=watch.started)
                metrics.SUPERVISOR.hung_killed += 1
                del self.heartbeats[process]  # killed once; `watch` reaps it
                process.kill()

    async def handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping:
                self.force(f"second signal {name}")
            else:
                self.begin_stop(name)

    async def enforce_deadline(self) -> None:
        await self.stop_requested.wait()
        await trio.sleep(self.cfg.server.graceful_timeout + LIFESPAN_SHUTDOWN_TIMEOUT + 1.0)
        self.force("shutdown deadline passed")


async def _supervise(cfg: Config, hc: HypercornConfig, sockets: Sockets, sim_cfg: SimulatorConfig | None) -> int:
    sup = _Supervisor(cfg, hc, sockets)
    async with trio.open_nursery() as services:
        metrics_urls: list[str] = []
        if cfg.metrics.enabled:
            metrics_urls = await services.start(metrics.serve_metrics, cfg.metrics.bind)
        if sim_cfg is not None:
            devmode.point_workers_at(await services.start(devmode.run_embedded_simulator, sim_cfg))
        sup.spawn_workers()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            print(startup_banner(cfg, _listen_urls(sockets), metrics_urls), flush=True)
            if cfg.server.dev_mode:
                print(devmode.dev_client_banner(cfg, _listen_urls(sockets)[0]), flush=True)
            log.info("serving", listen=_listen_urls(sockets), workers=len(sup.processes), pid=os.getpid())
            async with trio.open_nursery() as watchers:
                watchers.start_soon(sup.handle_signals, signals)
                watchers.start_soon(sup.enforce_deadline)
                watchers.start_soon(sup.kill_hung_workers)
                async with trio.open_nursery() as workers:
                    for process in list(sup.processes):
                        workers.start_soon(sup.watch, process, workers)
                # Every worker has exited: the signal and deadline watchers have nothing left to do.
                watchers.cancel_scope.cancel()
        services.cancel_scope.cancel()
    code = 1 if (sup.forced or sup.failed) else 0
    log.info("stopped", exit_code=code)
    return code


__all__ = ["APPLICATION_PATH", "CloudLayerHypercornConfig", "hypercorn_config", "serve", "startup_banner"]
