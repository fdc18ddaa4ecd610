"""One worker's long-lived parts, built once from the config: store, acquirer link, OAuth, the flow."""

from __future__ import annotations

import trio
from quart_trio import QuartTrio

from .acquirer.factory import build_connector
from .config import Config
from .http import openapi
from .oauth import register_routes as register_oauth_routes
from .oauth.service import OAuthService
from .observability import metrics
from .observability.health import Readiness
from .sealing import Sealer
from .store import open_store
from .transactions import route as transaction_route
from .transactions.flow import TransactionFlow


class Services:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # The data key that seals card data at rest (pending requests, SAF reversals).
        self.sealer = Sealer.from_config(cfg)
        self.oauth = OAuthService.from_config(cfg)
        self.store = open_store(cfg)  # store.backend: LMDB (embedded) or PostgreSQL (shared by hosts)
        self.connector = build_connector(cfg, self.sealer)
        self.flow = TransactionFlow(
            self.store,
            self.connector,
            self.sealer,
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
        await nursery.start(self.store.run)
        await nursery.start(self.connector.run)
        self.flow.attach(nursery)
        nursery.start_soon(self._sample_metrics)

    def readiness(self) -> Readiness:
        return Readiness(
            store_writable=self.store.writable(),
            acquirer_link_up=self.connector.ready,
            acquirer_reason=self.connector.not_ready_reason,
        )

    async def _sample_metrics(self) -> None:
        """Copy the connector's counters and states into Prometheus once a second (off the hot path)."""
        late = reversals = 0
        while True:
            c = self.connector
            metrics.ACQUIRER_LINKS_UP.set(c.links_up)
            metrics.SAF_QUEUE_DEPTH.set(c.saf_depth)
            metrics.ACQUIRER_LATE_RESPONSES.inc(c.late_answers - late)
            metrics.REVERSALS.labels("queued").inc(c.reversals_queued - reversals)
            late, reversals = c.late_answers, c.reversals_queued
            await trio.sleep(1.0)

    def close(self) -> None:
        self.store.close()
        self.oauth.close()
