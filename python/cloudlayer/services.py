"""One worker's long-lived parts, built once from the config: store, acquirer link, OAuth, the flow."""

from __future__ import annotations

import os
import sys
import time

import lmdb
import structlog
import trio
from quart_trio import QuartTrio

from .acquirer.factory import build_connector
from .cardkey import CardKeys
from .config import Config
from .hostlock import hold_host_lock
from .http import openapi
from .oauth import register_routes as register_oauth_routes
from .oauth.service import OAuthService
from .observability import metrics
from .observability.health import Readiness
from .sealing import Sealer
from .store import open_store
from .transactions import route as transaction_route
from .transactions.flow import TransactionFlow

log = structlog.get_logger(__name__)
# A worker whose store lease is gone exits with this; the supervisor replaces it (docs/postgres.md).
EXIT_LEASE_LOST = 75


def restart_worker() -> None:
    """The store lease is lost: this process must never act under its owner id again. It exits, as a crashed
    worker would, and the supervisor replaces it: a new process is a new owner id (store/owner.py)."""
    log.error("worker_exiting_lease_lost", exit_code=EXIT_LEASE_LOST)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LEASE_LOST)


class Services:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # Held while this worker lives: `cloudlayer restore` refuses a var dir a host is using.
        self.host_lock = hold_host_lock(cfg)
        # The data key that seals card data at rest (pending requests, SAF reversals).
        self.sealer = Sealer.from_config(cfg)
        self.oauth = OAuthService.from_config(cfg)
        # store.backend: LMDB (embedded) or PostgreSQL (shared by hosts, each worker holding a lease).
        self.store = open_store(cfg, on_lease_lost=restart_worker)
        self.connector = build_connector(cfg, self.sealer, guard=self.store.send_guard)
        self.flow = TransactionFlow(
            self.store,
            self.connector,
            self.sealer,
            # The HMAC secret of card keys (the same card transaction under another transactionId): 0600 file.
            card_keys=CardKeys.from_config(cfg),
            acquirer_timeout=cfg.acquirer.timeout,
            # Recovery waits this long for a signed-on link before concluding 'unknown' (and reversing): one
            # connection attempt and its sign-on, what a restarted worker needs.
            link_wait=cfg.acquirer.connect_timeout + cfg.acquirer.timeout,
        )

    def register_routes(self, app: QuartTrio) -> None:
        register_oauth_routes(app, self.oauth)
        transaction_route.register(app, self.cfg.server.transaction_path, self.flow, self.oauth)
        openapi.register(app)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.oauth.run)  # PostgreSQL: the shared clients and keys, loaded before serving
        await nursery.start(self.store.run)
        await nursery.start(self.connector.run)
        await self.flow.attach(nursery)
        metrics.initialise()
        nursery.start_soon(self._sample_metrics)

    def readiness(self) -> Readiness:
        return Readiness(
            store_writable=self.store.writable(),
            acquirer_link_up=self.connector.ready,
            acquirer_reason=self.connector.not_ready_reason,
        )

    async def _sample_metrics(self) -> None:
        """Copy the connector's and the store's counters and states into Prometheus once a second (off the hot
        path; the store reads in a thread, they are LMDB transactions)."""
        late = reversals = 0
        while True:
            c = self.connector
            metrics.ACQUIRER_LINKS_UP.set(c.links_up)
            metrics.ACQUIRER_LATE_RESPONSES.inc(c.late_answers - late)
            metrics.REVERSALS.labels("queued").inc(c.reversals_queued - reversals)
            late, reversals = c.late_answers, c.reversals_queued
            try:
                depth, oldest, usage = await trio.to_thread.run_sync(self._read_stores)
            except lmdb.Error:
                pass  # a store closing under us at shutdown: this sample is skipped, nothing else
            else:
                metrics.SAF_QUEUE_DEPTH.set(depth)
                metrics.SAF_OLDEST_AGE.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
                if usage is not None:  # a store without a map (PostgreSQL) exports neither
                    metrics.STORE_MAP_USED.set(usage[0])
                    metrics.STORE_MAP_MAX.set(usage[1])
            await trio.sleep(1.0)

    def _read_stores(self) -> tuple[int, float | None, tuple[int, int] | None]:
        return self.connector.saf_depth, self.connector.saf_oldest_created(), self.store.map_usage()

    def close(self) -> None:
        self.store.close()
        self.oauth.close()
        self.host_lock.close()
