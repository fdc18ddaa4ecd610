"""A bounded soak: a steady open-loop rate of fresh transactions (plus a share of resubmissions) for a fixed
time, sampling the host's RSS, open fds and LMDB size once a second. Reports errors and the slopes after
warm-up (least squares). The store grows with every new transaction by design (90-day retention), so its
figure is bytes per stored transaction, not flatness."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import trio

from cloudlayer.samples import sample_purchase

from .hosts import AttackedHost, SimulatorProcess


@dataclass
class SoakFigures:
    seconds: float = 0.0
    rate: float = 0.0
    requests: int = 0
    errors: int = 0
    rss_mb_start: float = 0.0
    rss_mb_per_min: float = 0.0
    fds_start: int = 0
    fds_per_min: float = 0.0
    store_bytes_per_txn: float = 0.0
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # t, rss MB, fds, store bytes
    metrics_text: bytes = b""  # /metrics at the end, for the card-data scan

    def table_row(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if k not in ("samples", "metrics_text")}


def slope_per_min(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if sxx == 0 else 60.0 * sum((x - mx) * (y - my) for x, y in points) / sxx


def _store_bytes(path: Path) -> int:
    data = path / "data.mdb"
    return data.stat().st_blocks * 512 if data.exists() else 0  # allocated, not the sparse map size


def _sample(host: AttackedHost) -> tuple[float, int]:
    rss = fds = 0
    for p in host.processes():
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, fds


async def run_soak(workdir: Path, *, seconds: float, rate: float, workers: int = 2, warmup: float = 0.3) -> SoakFigures:
    figures = SoakFigures(rate=rate)
    sim = SimulatorProcess(workdir / "sim", latency_ms=5)
    host = AttackedHost(workdir / "host", sim, workers=workers, extra={"metrics": {"enabled": True}})
    try:
        await trio.to_thread.run_sync(host.start)
        token = await trio.to_thread.run_sync(host.token)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        rng = random.Random(7)
        stored = 0
        bodies: dict[int, str] = {}
        start = trio.current_time()
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=16)) as client:

            async def one(i: int) -> None:
                nonlocal stored
                resubmit = i > 10 and rng.random() < 0.1
                n = rng.randrange(i - 10, i) if resubmit else i
                # The same bytes on a resubmission (sample_purchase stamps the local time: a new body is a 409).
                body = bodies.setdefault(n, json.dumps(sample_purchase(f"soak-{n}", amount=1000)))
                figures.requests += 1
                try:
                    r = await client.post(host.url + "/transaction/process", content=body, headers=headers)
                    ok = r.status_code == 200
                except httpx.TransportError:
                    ok = False
                figures.errors += not ok
                stored += ok and not resubmit

            async def sampler() -> None:
                while True:
                    rss, fds = await trio.to_thread.run_sync(_sample, host)
                    figures.samples.append((trio.current_time() - start, rss, fds, _store_bytes(host.store_path)))
                    await trio.sleep(1.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler)
                i = 0
                while (elapsed := trio.current_time() - start) < seconds:
                    i += 1
                    nursery.start_soon(one, i)
                    await trio.sleep(max(0.0, start + i / rate - trio.current_time()))
                with trio.move_on_after(15):
                    while len(nursery.child_tasks) > 1:  # noqa: ASYNC110 - bounded drain of in-flight requests
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            if host.server is not None and host.server.metrics_url:
                figures.metrics_text = (await client.get(host.server.metrics_url + "/metrics")).content
        figures.seconds = round(elapsed, 1)
        after = [s for s in figures.samples if s[0] >= seconds * warmup]
        if after:
            figures.rss_mb_start = round(after[0][1], 1)
            figures.fds_start = after[0][2]
            figures.rss_mb_per_min = round(slope_per_min([(t, r) for t, r, _, _ in after]), 2)
            figures.fds_per_min = round(slope_per_min([(t, float(f)) for t, _, f, _ in after]), 2)
        grown = figures.samples[-1][3] - figures.samples[0][3] if len(figures.samples) > 1 else 0
        figures.store_bytes_per_txn = round(grown / max(stored, 1), 1)
        return figures
    finally:
        await trio.to_thread.run_sync(host.stop)
        sim.stop()
