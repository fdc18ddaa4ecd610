"""Connector <-> simulator over real TCP on 127.0.0.1, with a real LMDB store-and-forward queue."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from cloudlayer.acquirer.ledger import Ledger
from cloudlayer.acquirer.saf import SafQueue
from cloudlayer.acquirer.simulator_config import LatencyConfig
from cloudlayer.acquirer.types import AcquirerResponse, AcquirerUnavailable, OutcomeUnknown
from test_acquirer_support import (
    PAN,
    SEALER,
    acquirer_config,
    ledger_over_http,
    request,
    running_connector,
    running_simulator,
    sim_config,
    wait_until,
)


def saf_len(path: Path) -> int:
    q = SafQueue(path, SEALER)
    try:
        return len(q)
    finally:
        q.close()


async def test_500_concurrent_requests_answered_out_of_order_all_matched(tmp_path: Path) -> None:
    latency = LatencyConfig(distribution="uniform", min_ms=0, max_ms=30)
    async with running_simulator(sim_config(latency=latency)) as sim:
        async with running_connector(sim.port, tmp_path / "saf", acquirer_config(timeout=10.0)) as connector:
            results: dict[int, AcquirerResponse] = {}
            amounts = {stan: random.choice([1000, 1005, 1051, 2255]) for stan in range(1, 501)}

            async def one(stan: int) -> None:
                results[stan] = await connector.send(request(stan, amounts[stan]))

            async with trio.open_nursery() as nursery:
                for stan in amounts:
                    nursery.start_soon(one, stan)
    assert len(results) == 500
    for stan, response in results.items():
        assert response.stan == f"{stan:06d}"
        assert response.rrn == f"{stan:012d}"
        assert response.response_code == f"{amounts[stan] % 100:02d}"
        assert (response.authorisation_code is not None) == (response.response_code == "00")
    ledger = sim.ledger.snapshot()
    assert ledger["totals"]["authorizations"] == 500
    assert connector.late_answers == 0


async def test_approval_carries_issuer_data_and_six_char_code(tmp_path: Path) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        response = await connector.send(request(1, 4242))
    assert response.response_code == "00"
    assert response.authorisation_code is not None and len(response.authorisation_code) == 6
    assert response.icc_data.startswith(bytes.fromhex("910A"))  # issuer authentication data (tag 91)


async def test_duplicate_key_in_flight_is_refused_and_first_survives(tmp_path: Path) -> None:
    async with running_simulator(sim_config(latency=LatencyConfig(fixed_ms=200))) as sim:
        async with running_connector(sim.port, tmp_path / "saf") as connector:
            first: list[AcquirerResponse] = []

            async def send_first() -> None:
                first.append(await connector.send(request(7)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_first)
                await wait_until(lambda: connector.in_flight == 1)
                with pytest.raises(AcquirerUnavailable, match="already in flight"):
                    await connector.send(request(7))
    assert first[0].response_code == "00"
    assert sim.ledger.snapshot()["totals"]["authorizations"] == 1


async def test_in_flight_bound_is_never_exceeded(tmp_path: Path) -> None:
    async with running_simulator(sim_config(latency=LatencyConfig(fixed_ms=5))) as sim:
        async with running_connector(sim.port, tmp_path / "saf", acquirer_config(max_in_flight=4)) as connector:
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, connector.in_flight)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as senders:
                    for stan in range(1, 41):
                        senders.start_soon(connector.send, request(stan))
                nursery.cancel_scope.cancel()
    assert 1 <= peak <= 4
    assert sim.ledger.snapshot()["totals"]["authorizations"] == 40


async def test_no_link_means_unavailable_and_nothing_queued(tmp_path: Path) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nobody listens there now
    async with running_connector(port, tmp_path / "saf", wait=False) as connector:
        assert not connector.ready
        with pytest.raises(AcquirerUnavailable):
            await connector.send(request(1))
    assert saf_len(tmp_path / "saf") == 0


async def test_timeout_queues_one_reversal_delivered_when_the_acquirer_answers_again(tmp_path: Path) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        sim.set_faults({"drop_answers": True})
        with pytest.raises(OutcomeUnknown, match="reversal queued"):
            await connector.send(request(11))
        assert connector.reversals_queued == 1
        # The reversal is durable and sealed: the PAN is nowhere in the file.
        assert PAN.encode() not in (tmp_path / "saf" / "data.mdb").read_bytes()
        await wait_until(lambda: sim.ledger.snapshot()["totals"]["reversal_messages"] >= 2)  # retried, dropped
        sim.set_faults({"drop_answers": False})
        await wait_until(lambda: connector.reversals_acknowledged == 1)
        ledger = await ledger_over_http(sim)
    entry = ledger["transactions"]["TERM0001:000011"]
    assert entry["authorizations"] == 1
    assert entry["reversals"] == 1 and entry["reversed"] is True
    assert entry["repeats"] >= 1  # retries went out as 0401
    assert saf_len(tmp_path / "saf") == 0


async def test_reversal_survives_simulator_outage_and_connector_restart(tmp_path: Path) -> None:
    ledger = Ledger()
    saf = tmp_path / "saf"
    async with running_simulator(ledger=ledger) as sim:
        port = sim.port
        async with running_connector(port, saf) as connector:
            sim.set_faults({"drop_answers": True})
            with pytest.raises(OutcomeUnknown):
                await connector.send(request(21))
    # Simulator and connector are both gone; the reversal waits on disk.
    assert saf_len(saf) == 1
    async with running_simulator(ledger=ledger, port=port) as sim:
        async with running_connector(port, saf) as connector:
            await wait_until(lambda: connector.reversals_acknowledged == 1)
    entry = ledger.snapshot()["transactions"]["TERM0001:000021"]
    assert entry["authorizations"] == 1
    assert entry["reversals"] == 1
    assert saf_len(saf) == 0


async def test_repeat_returns_the_original_answer_or_none(tmp_path: Path) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        original = await connector.send(request(31, 1000))
        again = await connector.inquire(request(31, 1000))
        never = await connector.inquire(request(32, 1000))
    assert again is not None
    assert (again.response_code, again.authorisation_code, again.icc_data) == (
        original.response_code,
        original.authorisation_code,
        original.icc_data,
    )
    assert never is None
    entry = sim.ledger.snapshot()["transactions"]["TERM0001:000031"]
    assert (entry["authorizations"], entry["repeats"]) == (1, 1)
    assert sim.ledger.snapshot()["transactions"]["TERM0001:000032"]["authorizations"] == 0


async def test_unanswered_amount_times_out_and_late_answer_is_counted(tmp_path: Path) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        with pytest.raises(OutcomeUnknown):
            await connector.send(request(40, 9999))  # the simulator never answers this amount
        sim.set_faults({"delay_seconds": 1.0, "delay_next": 1})
        with pytest.raises(OutcomeUnknown):
            await connector.send(request(41))
        await wait_until(lambda: connector.late_answers == 1)
        await wait_until(lambda: connector.reversals_acknowledged == 2)
        assert (await connector.send(request(42))).response_code == "00"


@pytest.mark.parametrize("fault", ["close_next", "garbage_next"])
async def test_connection_fault_fails_in_flight_cleanly_and_reconnects(tmp_path: Path, fault: str) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        sim.set_faults({fault: 1})
        with pytest.raises(OutcomeUnknown, match="reversal queued"):
            await connector.send(request(51))
        if fault == "garbage_next":
            assert connector.garbage_frames == 1
        await wait_until(lambda: connector.ready)
        assert (await connector.send(request(52))).response_code == "00"
        await wait_until(lambda: connector.reversals_acknowledged == 1)
    assert sim.ledger.snapshot()["transactions"]["TERM0001:000051"]["reversals"] == 1


async def test_dropped_answer_fault(tmp_path: Path) -> None:
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf") as connector:
        sim.set_faults({"drop_next": 1})
        with pytest.raises(OutcomeUnknown):
            await connector.send(request(61))
        await wait_until(lambda: connector.reversals_acknowledged == 1)
        assert connector.ready


@pytest.mark.parametrize("prefix", ["4A", "4B"])
async def test_other_length_prefixes(tmp_path: Path, prefix: str) -> None:
    async with running_simulator(sim_config(length_prefix=prefix)) as sim:
        async with running_connector(sim.port, tmp_path / "saf", acquirer_config(length_prefix=prefix)) as connector:
            assert (await connector.send(request(71, 1005))).response_code == "05"


async def test_saf_lease_gives_each_entry_to_one_worker(tmp_path: Path) -> None:
    from cloudlayer.acquirer.messages import reversal_for

    a = SafQueue(tmp_path / "saf", SEALER)
    b = SafQueue(tmp_path / "saf", SEALER)
    try:
        reversal = reversal_for(request(81), "0200", "123456")
        assert a.add(reversal, "test") is True
        assert b.add(reversal, "test") is False  # idempotent: one entry per reversed transaction
        claimed = a.claim_due("worker-a", lease_seconds=30)
        assert [item.request.pan for item in claimed] == [PAN]
        assert b.claim_due("worker-b", lease_seconds=30) == []
        a.release(claimed[0].key, "worker-a", retry_in=0, error="timeout")
        assert len(b.claim_due("worker-b", lease_seconds=30)) == 1
    finally:
        a.close()
        b.close()


async def test_idle_link_sends_echoes_and_a_dead_echo_drops_the_link(tmp_path: Path) -> None:
    async with running_simulator() as sim:
        cfg = acquirer_config(echo_interval=0.2, timeout=0.5, reconnect_min=0.05, reconnect_max=0.1)
        async with running_connector(sim.port, tmp_path / "saf", cfg) as connector:
            before = sim.ledger.messages
            await wait_until(lambda: sim.ledger.messages >= before + 3, within=5.0)  # 0800 echoes while idle
            assert connector.ready
            sim.set_faults({"drop_answers": True})  # echoes go unanswered: the link is dropped, then rebuilt
            await wait_until(lambda: not connector.ready, within=5.0)
            sim.set_faults({"drop_answers": False})
            await wait_until(lambda: connector.ready, within=5.0)
            assert (await connector.send(request(81))).response_code == "00"
