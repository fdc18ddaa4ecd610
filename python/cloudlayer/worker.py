"""One serving worker process: Hypercorn's trio worker for our app, plus the heartbeat the supervisor watches.

The supervisor (server.py) spawns each worker with a shared counter (`multiprocessing.RawValue`, one 64-bit
word in shared memory). A task in the worker's own trio loop adds one to it every
`server.worker_heartbeat_interval`. The tick runs on the same event loop as every request, so a worker whose
loop stops making progress (a deadlock, a blocking C call, SIGSTOP) stops ticking, and the supervisor kills and
replaces it like a crashed worker; its PENDING claims then recover as after any crash.

We run Hypercorn's `worker_serve` ourselves (what `hypercorn.trio.run.trio_worker` does, three lines) because
the heartbeat must share its trio loop, and `trio_worker` gives no way to add a task to it.
"""

from __future__ import annotations

import signal
from functools import partial
from multiprocessing.synchronize import Event as EventType
from typing import Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import check_multiprocess_shutdown_event, load_application

from . import gc_tuning, hypercorn_fixes, hypercorn_send
from .config import LoggingConfig
from .observability import metrics
from .observability.logging import configure_logging


class Heartbeat(Protocol):
    """What `ctx.RawValue("Q", 0)` is to us: one unsigned 64-bit word in shared memory. One writer (the worker),
    one reader (the supervisor), and only a change matters, so it needs no lock."""

    value: int


class HeartbeatWatch:
    """The supervisor's view of one worker's heartbeat: hung when the counter has not moved for `timeout`
    seconds, or (a worker still importing and building its app has not ticked yet) when it has never moved
    within `start_timeout` of the spawn."""

    def __init__(self, heartbeat: Heartbeat, now: float, *, timeout: float, start_timeout: float) -> None:
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.last_value = heartbeat.value
        self.last_change = now
        self.started = False

    def silent_for(self, now: float) -> float | None:
        """Seconds without a tick when that makes the worker hung, else None (it is alive, or still starting)."""
        value = self.heartbeat.value
        if value != self.last_value:
            self.last_value, self.last_change, self.started = value, now, True
            return None
        silent = now - self.last_change
        return silent if silent > (self.timeout if self.started else self.start_timeout) else None


async def beat(heartbeat: Heartbeat, interval: float) -> None:
    """Tick the shared counter every `interval` seconds for as long as this trio loop runs."""
    while True:
        heartbeat.value = (heartbeat.value + 1) % (1 << 64)
        await trio.sleep(interval)


async def _serve(
    config: HypercornConfig, sockets: Sockets, shutdown_event: EventType, heartbeat: Heartbeat, interval: float
) -> None:
    app = load_application(config.application_path, config.wsgi_max_body_size)
    shutdown_trigger = partial(check_multiprocess_shutdown_event, shutdown_event, trio.sleep)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(beat, heartbeat, interval)
        await worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)
        nursery.cancel_scope.cancel()  # served and shut down: the heartbeat has nothing left to say


def worker_main(
    config: HypercornConfig,
    sockets: Sockets,
    shutdown_event: EventType,
    logging_cfg: LoggingConfig,
    heartbeat: Heartbeat,
    heartbeat_interval: float,
) -> None:
    """Entry point of a spawned worker: the parent decides when to stop, so signals are ignored here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(logging_cfg)
    hypercorn_fixes.apply(tcp_quickack=getattr(config, "tcp_quickack", True))
    hypercorn_send.apply()  # one write per HTTP/1.1 response
    gc_tuning.tune()  # last: after every import
    metrics.WORKERS.inc()
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.listen(config.backlog)
    trio.run(_serve, config, sockets, shutdown_event, heartbeat, heartbeat_interval)


__all__ = ["Heartbeat", "HeartbeatWatch", "beat", "worker_main"]
