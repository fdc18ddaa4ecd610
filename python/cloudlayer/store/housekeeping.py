"""The background duty every store backend runs in its nursery: heartbeat every `beat` seconds (LMDB:
owner_timeout/3; PostgreSQL: store.lease_renew, its lease renewal) so that others can tell this owner lives;
purge COMPLETED records past retention every purge_interval. A failure is logged and the next round tries
again: neither may take the store down."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

if TYPE_CHECKING:
    from ..config import StoreConfig

log = structlog.get_logger(__name__)


class _Keeps(Protocol):
    async def purge(self, older_than: float) -> int: ...

    async def heartbeat(self) -> None: ...


async def run_housekeeping(
    store: _Keeps, cfg: StoreConfig, clock: Callable[[], float], *, beat: float | None = None
) -> None:
    beat = max(cfg.owner_timeout / 3 if beat is None else beat, 0.05)
    next_purge = trio.current_time()
    while True:
        if trio.current_time() >= next_purge:
            next_purge = trio.current_time() + cfg.purge_interval
            try:
                n = await store.purge(clock() - cfg.retention_days * 86_400)
                if n:
                    log.info("store_purged", records=n, retention_days=cfg.retention_days)
            except Exception as e:
                log.error("store_purge_failed", error=repr(e))
        try:
            await store.heartbeat()
        except Exception as e:
            log.error("store_heartbeat_failed", error=repr(e))
        await trio.sleep(max(0.0, min(beat, next_purge - trio.current_time())))
