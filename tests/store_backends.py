"""The store backends the contract suite (tests/test_store_contract.py) runs against, behind one interface.

`backend.open()` starts a store on the backend's one data set (LMDB: a directory; PostgreSQL: this test's
migrated database) and stops it on exit; opening again reopens the same data, as a restarted worker would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from cloudlayer.config import StoreConfig
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import TransactionRecord

DEFAULT_CFG = StoreConfig(map_size_mb=4, max_map_size_mb=8)

# The record the store suites claim (tests/test_store_contract.py, tests/test_store.py).
FP = b"\x01" * 32


def rec(tid: str = "t1", client: str = "c1", fp: bytes = FP, **kw: Any) -> TransactionRecord:
    base: dict[str, Any] = {
        "amount": 1000,
        "currency": "978",
        "merchant_id": "M1",
        "terminal_id": "T1",
        "masked_pan": "476173******0119",
    }
    base.update(kw)
    return TransactionRecord(client_id=client, transaction_id=tid, fingerprint=fp, **base)


class StoreBackend:
    name = ""

    def make(self, cfg: StoreConfig | None = None, **kw: Any) -> Any:
        """A store, not yet running (`run` it in a nursery; `close` it after)."""
        raise NotImplementedError

    @asynccontextmanager
    async def open(self, cfg: StoreConfig | None = None, **kw: Any) -> AsyncIterator[Any]:
        store = self.make(cfg, **kw)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                yield store
                nursery.cancel_scope.cancel()
        finally:
            store.close()


class LmdbBackend(StoreBackend):
    name = "lmdb"

    def __init__(self, path: Path) -> None:
        self.path = path

    def make(self, cfg: StoreConfig | None = None, **kw: Any) -> LmdbStore:
        return LmdbStore(self.path, cfg or DEFAULT_CFG, **kw)


class PgBackend(StoreBackend):
    name = "postgres"

    def __init__(self, database: Any) -> None:
        from cloudlayer.store.pg import migrate
        from cloudlayer.store.pg.database import Database
        from cloudlayer.store.pg.settings import PgSettings

        self.database = database
        self.settings = PgSettings(
            dsn=database.dsn,
            password_file=database.password_file,
            pool_min=1,
            pool_max=8,
            connect_timeout=5.0,
            pool_timeout=5.0,
            statement_timeout=5.0,
        )
        db = Database(msgspec.structs.replace(self.settings, pool_max=1))
        db.open_sync()
        try:
            db.call_sync(migrate.migrate)
        finally:
            db.close()

    def make(self, cfg: StoreConfig | None = None, **kw: Any) -> Any:
        from cloudlayer.store.pg.store import PgStore

        return PgStore(self.settings, cfg or DEFAULT_CFG, **kw)
