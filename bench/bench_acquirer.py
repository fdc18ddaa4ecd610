"""Acquirer round trips per second over one connection, against the in-process simulator at zero latency.

    .venv/bin/python bench/bench_acquirer.py [--seconds 3] [--in-flight 1 16 256]

Connector and simulator share one trio loop (and one core): the figure is the cost of both ends.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import structlog
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.simulator import Simulator
from cloudlayer.acquirer.simulator_config import LatencyConfig, SimulatorConfig
from cloudlayer.acquirer.types import AcquirerRequest, MessageKind
from cloudlayer.config import AcquirerConfig
from cloudlayer.sealing import Sealer


def _request(stan: int, terminal: str) -> AcquirerRequest:
    return AcquirerRequest(
        kind=MessageKind.PURCHASE,
        stan=f"{stan % 1_000_000:06d}",
        rrn=f"{stan:012d}",
        transmission_datetime="1126120000",
        local_time="120000",
        local_date="1126",
        amount=1000,
        currency="978",
        terminal_id=terminal,
        merchant_id="MERCHANT0000001",
        pos_entry_mode="071",
        pan="4761739001010119",
        expiry="2812",
        icc_data=bytes(120),
    )


async def measure(in_flight: int, seconds: float, saf: Path) -> float:
    sim = Simulator(SimulatorConfig(admin_bind="", latency=LatencyConfig(fixed_ms=0)))
    cfg = AcquirerConfig(mode="tcp", connections=1, max_in_flight=max(in_flight, 1), timeout=10.0)
    done = 0
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        connector = Iso8583Connector(cfg, saf, Sealer(bytes(32)), host="127.0.0.1", port=port)
        await nursery.start(connector.run)
        await connector.wait_ready()
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal done
            stan = 0
            terminal = f"T{index:07d}"  # one terminal per worker: keys never collide
            while time.perf_counter() < deadline:
                stan += 1
                await connector.send(_request(stan, terminal))
                done += 1

        start = time.perf_counter()
        async with trio.open_nursery() as workers:
            for i in range(in_flight):
                workers.start_soon(worker, i)
        elapsed = time.perf_counter() - start
        await connector.aclose()
        nursery.cancel_scope.cancel()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 16, 256])
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.in_flight:
            rate = trio.run(measure, n, args.seconds, Path(tmp) / f"saf{n}")
            print(f"in flight {n:>4}: {rate:8.0f} round trips/s (one connection, zero simulator latency)")


if __name__ == "__main__":
    main()
