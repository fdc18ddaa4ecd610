"""LmdbStore only: one group-commit batch, heartbeats of owners on other hosts, map growth, open_store.
The behaviour every backend shares is tests/test_store_contract.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cloudlayer.config import StoreConfig, load_config
from cloudlayer.store import open_store
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import (
    ClaimOutcome,
    State,
    StoreFull,
)
from store_backends import rec


@asynccontextmanager
async def open_lmdb(path: Path, cfg: StoreConfig | None = None, **kw: Any) -> AsyncIterator[LmdbStore]:
    store = LmdbStore(path, cfg or StoreConfig(map_size_mb=4, max_map_size_mb=8), **kw)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_two_claims_in_one_batch(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", StoreConfig(map_size_mb=4))
    outcomes: list[ClaimOutcome] = []

    async def claim() -> None:
        outcomes.append((await store.claim(rec())).outcome)

    try:
        async with trio.open_nursery() as writer:
            async with trio.open_nursery() as claims:
                # Both ops are queued before the writer starts, so they share its first transaction.
                claims.start_soon(claim)
                claims.start_soon(claim)
                await trio.testing.wait_all_tasks_blocked()
                await writer.start(store.run)
            writer.cancel_scope.cancel()
    finally:
        store.close()
    # Wake-up order is the scheduler's; what matters is one NEW and one that saw it PENDING.
    assert sorted(outcomes) == [ClaimOutcome.IN_FLIGHT, ClaimOutcome.NEW]


async def test_owner_on_another_host_lives_by_heartbeat(tmp_path: Path) -> None:
    now = [1_000_000.0]
    remote = "other-host:0123456789ab:4242:99"
    async with open_lmdb(tmp_path / "s", owner_id=remote, clock=lambda: now[0]) as ghost:
        await ghost.claim(rec())
        await ghost.heartbeat()
    async with open_lmdb(tmp_path / "s", StoreConfig(owner_timeout=10.0), clock=lambda: now[0]) as store:
        assert (await store.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT  # fresh heartbeat
        now[0] += 11.0
        assert not store.owner_alive(remote)
        assert (await store.claim(rec())).outcome is ClaimOutcome.ORPHANED
        assert not store.owner_alive("garbage")  # not an owner id and no heartbeat


async def test_open_store_from_config(tmp_path: Path) -> None:
    cfg = load_config(None, environ={"CLOUDLAYER_SERVER_VAR_DIR": f'"{tmp_path}"'})
    store = open_store(cfg)
    try:
        assert isinstance(store, LmdbStore) and store.path == tmp_path / "store"
    finally:
        store.close()


async def test_map_grows_then_store_full_without_corruption(tmp_path: Path) -> None:
    cfg = StoreConfig(map_size_mb=1, max_map_size_mb=2)
    stored: list[str] = []
    async with open_lmdb(tmp_path / "s", cfg) as store:
        start = store.map_size()
        with pytest.raises(StoreFull, match="max_map_size_mb"):
            for i in range(10_000):
                r = rec(f"t{i}", emv_redacted=os.urandom(16_000))  # incompressible filler
                assert (await store.claim(r)).outcome is ClaimOutcome.NEW
                stored.append(r.transaction_id)
        assert store.map_size() == 2 * start == 2 * 1024 * 1024
        assert len(stored) > 60  # it did grow past the first megabyte
        # Stable at the ceiling: the next write fails the same clear way, reads still work.
        with pytest.raises(StoreFull):
            await store.claim(rec("one-more", emv_redacted=os.urandom(16_000)))
        assert await store.get("c1", stored[-1]) is not None
    async with open_lmdb(tmp_path / "s", cfg) as store:
        for tid in stored:
            got = await store.get("c1", tid)
            assert got is not None and got.state is State.PENDING and len(got.emv_redacted) == 16_000
        assert len(await store.list_since(0, limit=10_000)) == len(stored)


def test_stan_wraps() -> None:
    from cloudlayer.store.ids import stan_of

    assert [stan_of(s) for s in (1, 999_999, 1_000_000)] == ["000001", "999999", "000001"]
