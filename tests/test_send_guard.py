"""The store's send guard in both connectors (docs/postgres.md "Leases and fencing"): right before a
transaction's bytes go to the acquirer the connector asks the guard; refused, nothing is sent (the simulator's
own ledger says so), nothing is queued, and the caller hears LeaseExpired, never a decline. A guard that closes
while an answer is awaited leaves the reversal to the record's next owner. Real simulators over real sockets,
a real SAF file; the guard is a real object of the `SendGuard` protocol that the test opens and closes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.payment_host.connector import HttpConnector
from cloudlayer.acquirer.saf import SafQueue
from cloudlayer.acquirer.types import LeaseExpired
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import ALWAYS_SEND
from payment_host_harness import PaymentHostFiles, PaymentHostProcess
from store_backends import DEFAULT_CFG
from test_acquirer_support import SEALER, acquirer_config, request, running_simulator, wait_until
from test_payment_host_tokens import http_config


class Guard:
    """Open for the first `allow` questions (None: until closed), then closed."""

    def __init__(self, allow: int | None = None) -> None:
        self.allow = allow
        self.asked = 0
        self.open = True

    def may_send(self) -> bool:
        self.asked += 1
        if self.allow is not None and self.asked > self.allow:
            return False
        return self.open


def saf_len(path: Path) -> int:
    q = SafQueue(path, SEALER)
    try:
        return len(q)
    finally:
        q.close()


@asynccontextmanager
async def iso(port: int, saf: Path, guard: Guard) -> AsyncIterator[Iso8583Connector]:
    connector = Iso8583Connector(acquirer_config(), saf, SEALER, host="127.0.0.1", port=port, guard=guard)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        with trio.fail_after(5):
            await connector.wait_ready()  # sign-on and echoes are not transactions: never guarded
        yield connector
        await connector.aclose()


async def test_iso_guard_closed_nothing_is_sent_nothing_queued(tmp_path: Path) -> None:
    guard = Guard()
    async with running_simulator() as sim, iso(sim.port, tmp_path / "saf", guard) as connector:
        guard.open = False
        with pytest.raises(LeaseExpired) as info:
            await connector.send(request(1))
        assert info.value.sent is False
        with pytest.raises(LeaseExpired):
            await connector.inquire(request(1))
        totals = sim.ledger.snapshot()["totals"]
        assert totals["authorizations"] == 0 and totals["repeats"] == 0
        guard.open = True
        assert (await connector.send(request(2))).response_code == "00"  # the same link, still up
        assert sim.ledger.snapshot()["totals"]["authorizations"] == 1
    assert saf_len(tmp_path / "saf") == 0


async def test_iso_guard_closing_while_the_answer_is_awaited_leaves_the_reversal_to_the_next_owner(
    tmp_path: Path,
) -> None:
    guard = Guard()
    async with running_simulator() as sim, iso(sim.port, tmp_path / "saf", guard) as connector:
        sim.set_faults({"drop_answers": True})

        async def close_soon() -> None:
            await wait_until(lambda: sim.ledger.snapshot()["totals"]["authorizations"] == 1)
            guard.open = False  # the lease runs out while the acquirer holds the answer

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with pytest.raises(LeaseExpired) as info:
                await connector.send(request(3))
        assert info.value.sent is True  # it may have been processed: the next owner inquires
        assert connector.reversals_queued == 0
    assert saf_len(tmp_path / "saf") == 0


async def test_iso_saf_reversals_wait_for_an_open_guard(tmp_path: Path) -> None:
    guard = Guard()
    async with running_simulator() as sim, iso(sim.port, tmp_path / "saf", guard) as connector:
        assert (await connector.send(request(4))).response_code == "00"
        guard.open = False
        await connector.queue_reversal(request(4), "test")  # a DB write: queued whatever the guard says
        await trio.sleep(1.0)  # several SAF passes (retry 0.05 .. 0.3 s)
        assert sim.ledger.snapshot()["totals"]["reversal_messages"] == 0
        guard.open = True
        await wait_until(lambda: connector.reversals_acknowledged == 1)
        assert sim.ledger.snapshot()["totals"]["reversal_messages"] == 1


@pytest.fixture
def payment_host(tmp_path: Path) -> Any:
    sim = PaymentHostProcess(tmp_path / "sim", PaymentHostFiles(tmp_path / "files"))
    yield sim
    sim.stop()


@asynccontextmanager
async def http(sim: PaymentHostProcess, saf: Path, guard: Guard) -> AsyncIterator[HttpConnector]:
    connector = HttpConnector(http_config(sim), saf, SEALER, guard=guard)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        with trio.fail_after(10):
            await connector.wait_ready()  # the ping probe and the token request are not guarded
        yield connector
        nursery.cancel_scope.cancel()


def keyed(stan: int) -> Any:
    return msgspec.structs.replace(request(stan), key=f"txn-key-{stan:038d}")


@pytest.mark.slow
async def test_http_guard_closed_before_the_call_or_at_its_first_byte_nothing_is_sent(
    payment_host: PaymentHostProcess, tmp_path: Path
) -> None:
    guard = Guard()
    async with http(payment_host, tmp_path / "saf", guard) as connector:
        guard.open = False
        with pytest.raises(LeaseExpired) as info:
            await connector.send(keyed(1))
        assert info.value.sent is False
        with pytest.raises(LeaseExpired):
            await connector.inquire(keyed(1))
        # Open when the call starts, closed by the time its first byte would go (after the pool, connect, TLS).
        guard.open, guard.asked, guard.allow = True, 0, 1
        with pytest.raises(LeaseExpired) as info:
            await connector.send(keyed(2))
        assert info.value.sent is False and guard.asked == 2
        guard.allow = None
        assert (await connector.send(keyed(3))).response_code == "00"
        ledger = await trio.to_thread.run_sync(payment_host.ledger)
    assert ledger["totals"]["authorizations"] == 1 and ledger["totals"]["repeats"] == 0
    assert saf_len(tmp_path / "saf") == 0


def test_lmdb_store_guard_always_allows(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "store", DEFAULT_CFG)
    try:
        assert store.send_guard is ALWAYS_SEND and store.send_guard.may_send()
    finally:
        store.close()
