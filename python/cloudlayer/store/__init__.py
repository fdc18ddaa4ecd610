"""The transaction store: the contract in `types`, the embedded LMDB backend in `lmdb_store`, PostgreSQL in `pg`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .types import TransactionStore


def open_store(cfg: Config, *, on_lease_lost: Callable[[], None] | None = None) -> TransactionStore:
    """The configured backend, opened for this worker process (start its `run` in the app nursery).
    `on_lease_lost`: PostgreSQL calls it once this worker's lease is gone for good (it must restart)."""
    if cfg.store.backend == "lmdb":
        from .lmdb_store import LmdbStore

        return LmdbStore.from_config(cfg)
    if cfg.store.backend == "postgres":
        from .pg.store import PgStore

        return PgStore.from_config(cfg, on_lease_lost=on_lease_lost)
    raise ValueError(f"unknown store.backend {cfg.store.backend!r}")
