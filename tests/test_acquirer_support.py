"""Shared helpers for the acquirer tests: requests, a running simulator, a running connector."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.ledger import Ledger
from cloudlayer.acquirer.simulator import Simulator
from cloudlayer.acquirer.simulator_config import LatencyConfig, SimulatorConfig
from cloudlayer.acquirer.types import AcquirerRequest, MessageKind
from cloudlayer.config import AcquirerConfig
from cloudlayer.sealing import Sealer

PAN = "4761739001010119"
SEALER = Sealer(bytes(range(32)))


def request(
    stan: int, amount: int = 1000, *, terminal: str = "TERM0001", kind: MessageKind = MessageKind.PURCHASE
) -> AcquirerRequest:
    return AcquirerRequest(
        kind=kind,
        stan=f"{stan:06d}",
        rrn=f"{stan:012d}",
        transmission_datetime="1126120000",
        local_time="120000",
        local_date="1126",
        amount=amount,
        currency="978",
        terminal_id=terminal,
        merchant_id="MERCHANT0000001",
        pos_entry_mode="071",
        pan=PAN,
        expiry="2812",
        pan_sequence="001",
        track2=f"{PAN}D28122010000000000000",
        icc_data=bytes.fromhex("9F2608AABBCCDDEEFF00119F3602001C"),
        pin_block=bytes.fromhex("0123456789ABCDEF"),
    )


def acquirer_config(**overrides: Any) -> AcquirerConfig:
    base: dict[str, Any] = {
        "mode": "tcp",
        "timeout": 0.5,
        "connect_timeout": 1.0,
        "reconnect_min": 0.02,
        "reconnect_max": 0.2,
        "saf_retry_min": 0.05,
        "saf_retry_max": 0.3,
        "echo_interval": 60.0,
    }
    base.update(overrides)
    return AcquirerConfig(**base)


def sim_config(**overrides: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"latency": LatencyConfig(distribution="fixed", fixed_ms=0)}
    base.update(overrides)
    return SimulatorConfig(**base)


@asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None, *, port: int = 0, ledger: Ledger | None = None
) -> AsyncIterator[Simulator]:
    sim = Simulator(config or sim_config(), ledger)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve, "127.0.0.1", port)
        yield sim
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_connector(
    port: int, saf_path: Path, config: AcquirerConfig | None = None, *, wait: bool = True
) -> AsyncIterator[Iso8583Connector]:
    connector = Iso8583Connector(config or acquirer_config(), saf_path, SEALER, host="127.0.0.1", port=port)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        if wait:
            with trio.fail_after(5):
                await connector.wait_ready()
        yield connector
        await connector.aclose()


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    """Poll a condition (behaviour, not timing: the deadline only keeps a broken test from hanging)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the counters polled here have no event to wait on
            await trio.sleep(0.01)


async def ledger_over_http(sim: Simulator) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{sim.admin_port}/ledger")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data
