"""Prometheus metrics (prometheus_client), multi-process aware, and the /metrics exporter.

`cloudlayer serve` points PROMETHEUS_MULTIPROC_DIR at var/metrics (emptied at each start) before it spawns the
Hypercorn workers, so every metric below is backed by a per-process file; the exporter, which runs in the
serving parent process, sums them with `MultiProcessCollector`. prometheus_client picks that storage when it
is first imported, which in a worker is after the variable is set.

Labels are low-cardinality by construction: route templates (never raw paths), status codes, outcome and
reason words from fixed sets. Never a PAN, client secret, transaction id or anything from a request body.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Multi-process values check the pid on every write (a fork must not write into its parent's file), and
# os.getpid is a syscall: ~8 of them per transaction. The pid is read once and again in any forked child
# (register_at_fork), which keeps that guarantee; MultiProcessValue's process_identifier is the documented hook.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _process_identifier() -> int:
    return _pid


os.register_at_fork(after_in_child=_refresh_pid)
if os.environ.get(MULTIPROC_ENV):  # chosen before the first metric below is built, as prometheus_client does
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_process_identifier)  # type: ignore[no-untyped-call]

# Seconds. The HTTP stack alone costs ~0.5 ms; an acquirer round trip tens to hundreds of ms; the acquirer
# timeout (default 10 s) is the top.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "cloudlayer_http_requests",
    "HTTP requests answered, by route template, status code and outcome "
    "(approved, declined, replayed, conflict, rejected, error, ok).",
    ["route", "status", "outcome"],
)
REQUEST_DURATION = Histogram(
    "cloudlayer_http_request_duration_seconds",
    "Time from request received to response ready, by route template.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "cloudlayer_http_requests_in_flight",
    "Requests being processed now, all workers.",
    multiprocess_mode="livesum",
)
ACQUIRER_DURATION = Histogram(
    "cloudlayer_acquirer_duration_seconds",
    "Acquirer round trip, by message kind (authorization, reversal, inquiry, echo).",
    ["message"],
    buckets=_LATENCY_BUCKETS,
)
REPLAYS = Counter(
    "cloudlayer_replays",
    "Retries answered with the stored response of an already processed transaction.",
)
CONFLICTS = Counter(
    "cloudlayer_conflicts",
    "Requests reusing a transactionId with different content: refused, never processed.",
)
ACQUIRER_LINKS_UP = Gauge(
    "cloudlayer_acquirer_links_up",
    "Connected acquirer links, all workers (expected: workers x acquirer.connections).",
    multiprocess_mode="livesum",
)
SAF_QUEUE_DEPTH = Gauge(
    "cloudlayer_saf_queue_depth",
    "Reversals waiting in the store-and-forward queue (the queue is shared: highest report of any worker).",
    multiprocess_mode="livemax",
)
ACQUIRER_LATE_RESPONSES = Counter(
    "cloudlayer_acquirer_late_responses",
    "Acquirer answers that arrived after their request had timed out (and been reversed).",
)
REVERSALS = Counter(
    "cloudlayer_reversals",
    "Reversals queued, by reason (timeout, link_broken, recovery, requested).",
    ["reason"],
)
TOKENS_ISSUED = Counter(
    "cloudlayer_oauth_tokens_issued",
    "Access tokens issued by the token endpoint.",
)
TOKEN_FAILURES = Counter(
    "cloudlayer_oauth_token_failures",
    "Token endpoint and bearer failures, by reason (invalid_client, invalid_request, "
    "unsupported_grant_type, locked_out, invalid_token).",
    ["reason"],
)
ACQUIRER_TOKEN_REQUESTS = Counter(
    "cloudlayer_acquirer_token_requests",
    "Token requests we made to the payment host's token endpoint (acquirer.kind = http), by outcome "
    "(ok, refused, error).",
    ["outcome"],
)
ACQUIRER_TOKEN_HELD = Gauge(
    "cloudlayer_acquirer_token_held",
    "Workers holding a usable payment-host access token (acquirer.kind = http).",
    multiprocess_mode="livesum",
)
ACQUIRER_TOKEN_RESENDS = Counter(
    "cloudlayer_acquirer_token_resends",
    "Payment-host requests resent once with a new token after a 401 invalid_token.",
)
WORKERS = Gauge(
    "cloudlayer_workers",
    "Worker processes serving requests.",
    multiprocess_mode="livesum",
)
TRANSACTION_RESPONSES = Counter(
    "cloudlayer_transaction_responses",
    "Transactions answered for the first time (replays and refusals not counted), by ISO 8583 response code "
    "(00 approved; 91 also when the acquirer did not answer in time and the authorization was reversed).",
    ["code"],
)
SAF_OLDEST_AGE = Gauge(
    "cloudlayer_saf_oldest_entry_age_seconds",
    "Age of the oldest reversal waiting in the store-and-forward queue, 0 when it is empty.",
    multiprocess_mode="livemax",
)
STORE_MAP_USED = Gauge(
    "cloudlayer_store_map_used_bytes",
    "Bytes of the transaction store's LMDB map in use (the file never shrinks; deleted pages are reused).",
    multiprocess_mode="livemax",
)
STORE_MAP_MAX = Gauge(
    "cloudlayer_store_map_max_bytes",
    "store.max_map_size_mb in bytes: the map grows by itself up to this, then transactions fail.",
    multiprocess_mode="livemax",
)

# Label values of fixed sets, exported at 0 from the start so that rate() and ratios over them (the alerting
# rules in deploy/prometheus/) have a series to work on before the first event.
_TOKEN_FAILURE_REASONS = (
    "invalid_client",
    "invalid_request",
    "unsupported_grant_type",
    "locked_out",
    "invalid_token",
    "insufficient_scope",
    "missing_token",
)
_RESPONSE_CODES = ("00", "05", "91")


def initialise() -> None:
    """Create the fixed-set label children (at 0) in this worker; call once at worker start."""
    for reason in _TOKEN_FAILURE_REASONS:
        TOKEN_FAILURES.labels(reason)
    for code in _RESPONSE_CODES:
        TRANSACTION_RESPONSES.labels(code)
    REVERSALS.labels("queued")


def response_code_label(code: str) -> str:
    """An ISO 8583 response code as a label value: two letters or digits, anything else 'other' (bounded)."""
    return code if len(code) == 2 and code.isascii() and code.isalnum() else "other"


class SupervisorStats:
    """Counters of the serving parent process, which does not write the per-process metrics files (it imported
    prometheus_client before PROMETHEUS_MULTIPROC_DIR was set): the exporter renders them beside the workers'."""

    def __init__(self) -> None:
        self.worker_exits = 0
        self.hung_killed = 0

    def collect(self) -> list[CounterMetricFamily]:
        exits = CounterMetricFamily(
            "cloudlayer_worker_exits",
            "Worker processes that exited while the host was serving (each is replaced, unless they die in a loop).",
        )
        exits.add_metric([], self.worker_exits)
        hung = CounterMetricFamily(
            "cloudlayer_workers_hung_killed",
            "Workers killed (and replaced) by the supervisor because their heartbeat stopped "
            "(server.worker_heartbeat_timeout).",
        )
        hung.add_metric([], self.hung_killed)
        return [exits, hung]


SUPERVISOR = SupervisorStats()


# Label children resolved once (labels() validates and locks on every call). The label sets are bounded by
# construction (see the module doc); the bound here only guards against a bug.
_CHILDREN_MAX = 4096
_request_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
_response_children: dict[str, Any] = {}
_ACQUIRER_AUTHORIZATION = ACQUIRER_DURATION.labels("authorization")


def observe_request(route: str, status: int, outcome: str, seconds: float) -> None:
    """Count one answered request and its duration (one call on the hot path)."""
    key = (route, status, outcome)
    children = _request_children.get(key)
    if children is None:
        if len(_request_children) >= _CHILDREN_MAX:
            _request_children.clear()
        children = _request_children[key] = (
            REQUESTS.labels(route, str(status), outcome),
            REQUEST_DURATION.labels(route),
        )
    children[0].inc()
    children[1].observe(seconds)


def observe_transaction(response_code: str, acquirer_seconds: float) -> None:
    """A transaction answered for the first time: its response code and its acquirer round trip."""
    child = _response_children.get(response_code)
    if child is None:
        if len(_response_children) >= _CHILDREN_MAX:
            _response_children.clear()
        child = _response_children[response_code] = TRANSACTION_RESPONSES.labels(response_code_label(response_code))
    child.inc()
    _ACQUIRER_AUTHORIZATION.observe(acquirer_seconds)


def prepare_multiprocess_dir(directory: Path) -> None:
    """Create (or empty) the per-process metrics directory and point prometheus_client at it.

    Call it in the serving parent before any worker starts; workers inherit the environment. Files of a
    previous run are removed, or dead processes' counters would be summed into the new run's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters stay summed), when running multi-process."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client


def exporter_registry() -> CollectorRegistry:
    """The registry /metrics renders: every worker's files when multi-process, else this process's metrics."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated upstream
    registry.register(SUPERVISOR)
    return registry


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_app(registry: CollectorRegistry) -> ASGIApp:
    """A minimal ASGI app (trio) serving GET /metrics in the Prometheus text format."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            status, body, content_type = 404, b"not found\n", b"text/plain; charset=utf-8"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"method not allowed\n", b"text/plain; charset=utf-8"
        else:
            # Reading every worker's file is blocking I/O: keep it off the event loop.
            body = await trio.to_thread.run_sync(generate_latest, registry)
            status, content_type = 200, CONTENT_TYPE_LATEST.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


async def serve_metrics(bind: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics over plain HTTP on `bind` (keep it on a private address) until cancelled.

    Reports the bound URLs (e.g. ["http://127.0.0.1:9464"]) through task_status, so port 0 works.
    """
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # a Logger object: Hypercorn adds no handler of its own
    config.include_server_header = False
    config.keep_alive_timeout = 75.0
    config.graceful_timeout = 1.0
    # Our app takes plain dicts; Hypercorn's signature spells out its TypedDict events.
    app = cast("ASGIFramework", metrics_app(exporter_registry()))
    await hypercorn_serve(app, config, mode="asgi", task_status=task_status)
