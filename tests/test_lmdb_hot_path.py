"""The LMDB store's hot path beside its background work, on a real LMDB file:

- a replay of a COMPLETED transaction is a read: it answers (and its fingerprint conflict is refused) while
  another process holds LMDB's write lock, so nothing of it waits on the writer; its timeline entry is written
  later, in a batch;
- a retention purge finishes while claims keep coming, and a claim made during a purge waits for at most one
  purge chunk (never queued behind the whole purge, never sharing a transaction with a chunk).

Real parts: the flow, the LMDB store and its writer thread, the connector over TCP to the simulator, a second
process holding the environment's write transaction."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.cardkey import CardKeys
from cloudlayer.config import StoreConfig, load_config
from cloudlayer.http.problems import Problem
from cloudlayer.samples import sample_purchase
from cloudlayer.sealing import Sealer
from cloudlayer.store.lmdb_ops import PURGE_CHUNK
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import State
from cloudlayer.transactions.flow import TransactionFlow
from store_backends import rec
from test_acquirer_support import running_simulator
from test_store_contract import completion

DOCUMENTED_CHUNK = 200  # README "Retention": a claim waits for at most one chunk of 200 records (or 5 ms)
_HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, lock=True)
txn = env.begin(write=True)  # LMDB's writer lock, shared by every process that opens the environment
print("held", flush=True)
sys.stdin.readline()
txn.abort()
"""


@asynccontextmanager
async def writer_held(path: Path) -> AsyncIterator[None]:
    """Another process holds the environment's write transaction until the block ends."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        with trio.fail_after(10):
            said = b""
            while not said.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(16)
                assert chunk, f"the holder exited: {said!r}"
                said += chunk
            assert said == b"held\n"
        yield
    finally:
        with trio.fail_after(10):
            if proc.stdin is not None:
                await proc.stdin.send_all(b"\n")
                await proc.stdin.aclose()
            assert await proc.wait() == 0


async def test_a_replay_answers_while_the_writer_is_held(tmp_path: Path) -> None:
    raw = json.dumps(sample_purchase("replay-read", amount=1000)).encode()
    other = json.dumps(sample_purchase("replay-read", amount=2000)).encode()  # same id, another body
    async with running_simulator() as sim:
        cfg_path = tmp_path / "host.toml"
        cfg_path.write_text(f'[server]\nvar_dir = "{tmp_path}/var"\n[acquirer]\nmode = "tcp"\nport = {sim.port}\n')
        cfg = load_config(cfg_path, environ={})
        sealer = Sealer.from_config(cfg)
        store = LmdbStore.from_config(cfg)
        connector = Iso8583Connector(cfg.acquirer, cfg.var_path("saf"), sealer)
        flow = TransactionFlow(store, connector, sealer, card_keys=CardKeys.from_config(cfg), acquirer_timeout=2.0)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                await nursery.start(connector.run)
                with trio.fail_after(5):
                    await connector.wait_ready()
                first = await flow.process("mypinpad", raw)
                commits = store.commits
                async with writer_held(store.path):
                    with trio.move_on_after(0.5) as probe:
                        await store.heartbeat()  # a write: it waits for the other process's lock
                    assert probe.cancelled_caught, "the writer was not held: this test proves nothing"
                    with trio.fail_after(5):  # a read: no wait on the writer
                        replays = [await flow.process("mypinpad", raw) for _ in range(3)]
                        with pytest.raises(Problem) as refused:
                            await flow.process("mypinpad", other)
                    assert store.commits == commits  # nothing committed meanwhile
                await store.heartbeat()  # queued after anything the replays might have queued: all committed now
                before_flush = await store.get("mypinpad", "replay-read")
                await flow.replays.flush()
                record = await store.get("mypinpad", "replay-read")
                await connector.aclose()
                nursery.cancel_scope.cancel()
        finally:
            store.close()
    assert first.status == 200 and not first.replayed
    for again in replays:
        assert again.replayed and again.status == first.status and again.body == first.body
    assert refused.value.status == 409
    assert before_flush is not None and before_flush.replays == 0  # the replays queued no write themselves
    assert record is not None and record.state is State.COMPLETED and record.replays == 3
    assert (record.events[-1].what, record.events[-1].detail) == ("replayed", "x3")


@asynccontextmanager
async def open_store(path: Path, clock: list[float]) -> AsyncIterator[LmdbStore]:
    store = LmdbStore(path, StoreConfig(map_size_mb=16, max_map_size_mb=64), clock=lambda: clock[0])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def _fill(store: LmdbStore, n: int, prefix: str) -> None:
    async def one(i: int) -> None:
        r = rec(f"{prefix}-{i}", stan=f"{i % 1_000_000:06d}", rrn="")
        await store.claim(r)
        await store.complete(r.client_id, r.transaction_id, completion())

    for start in range(0, n, 64):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(n, start + 64)):
                nursery.start_soon(one, i)


async def test_a_purge_finishes_while_claims_keep_coming(tmp_path: Path) -> None:
    clock = [1_000.0]
    async with open_store(tmp_path / "s", clock) as store:
        await _fill(store, 2_000, "old")
        clock[0] = 1_000_000.0
        purged: list[int] = []
        done = trio.Event()
        made: list[str] = []

        async def purge() -> None:
            purged.append(await store.purge(500_000.0))
            done.set()

        async def traffic(worker: int) -> None:
            for i in range(2_000):  # bounded; ends when the purge does
                if done.is_set():
                    return
                r = rec(f"new-{worker}-{i}", stan="", rrn="")
                await store.claim(r)
                await store.complete(r.client_id, r.transaction_id, completion())
                made.append(r.transaction_id)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(purge)
                for w in range(8):
                    nursery.start_soon(traffic, w)
        assert purged == [2_000] and made
        assert store.record_count() == len(made)  # every old record gone, every new one kept
        for tid in made[:: max(1, len(made) // 50)]:
            got = await store.get("c1", tid)
            assert got is not None and got.state is State.COMPLETED


async def test_a_claim_during_a_purge_waits_for_at_most_one_chunk(tmp_path: Path) -> None:
    clock = [1_000.0]
    n = max(PURGE_CHUNK, DOCUMENTED_CHUNK) * 12
    async with open_store(tmp_path / "s", clock) as store:
        await _fill(store, n, "old")
        clock[0] = 1_000_000.0
        done = trio.Event()
        deleted_per_claim: list[int] = []

        async def purge() -> None:
            await store.purge(500_000.0)
            done.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(purge)
                await trio.lowlevel.checkpoint()  # the purge's first chunk is queued
                for i in range(n):
                    if done.is_set():
                        break
                    before = store.record_count()
                    await store.claim(rec(f"during-{i}", stan="", rrn=""))
                    # Records deleted while this claim waited: its own record is the one added.
                    deleted_per_claim.append(before + 1 - store.record_count())
        assert store.record_count() == len(deleted_per_claim)
    assert len(deleted_per_claim) >= 5, "the purge ended before the claims: this test proves nothing"
    # Claims first: each one waited for at most the chunk already running, not for one beside it in its
    # transaction and not for the purge as a whole (the last claims may see the purge already done: 0).
    assert max(deleted_per_claim) <= DOCUMENTED_CHUNK, deleted_per_claim
