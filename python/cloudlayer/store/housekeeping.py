"""The background duty every store backend runs in its nursery: heartbeat every `beat` seconds (LMDB:
owner_timeout/3; PostgreSQL: store.lease_renew, its lease renewal) so that others can tell this owner lives;
and, beside it, purge COMPLETED records past retention every purge_interval. A failure is logged and the next
round tries again: neither may take the store down."""

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
    # Two tasks, not one loop: a purge of many chunks can take longer than a lease or an owner_timeout, and
    # the heartbeat (PostgreSQL: the lease renewal) must not wait behind it, or a busy live owner loses its
    # lease (and restarts) or is judged dead by others.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_beat, store, beat)
        nursery.start_soon(_purge, store, cfg, clock)


async def _beat(store: _Keeps, beat: float) -> None:
    while True:
        try:
            await store.heartbeat()
        except Exception as e:
            log.error("store_heartbeat_failed", error=repr(e))
        await trio.sleep(beat)


async def _purge(store: _Keeps, cfg: StoreConfig, clock: Callable[[], float]) -> None:
    while True:
        started = trio.current_time()
        try:
            n = await store.purge(clock() - cfg.retention_days * 86_400)
            if n:
                log.info("store_purged", records=n, retention_days=cfg.retention_days)
        except Exception as e:
            log.error("store_purge_failed", error=repr(e))
        await trio.sleep(max(0.0, started + cfg.purge_interval - trio.current_time()))
