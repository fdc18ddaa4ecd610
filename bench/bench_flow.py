"""The transaction flow without HTTP: what one transaction costs us beyond the web framework.

Real parts: the LMDB store (group commit, fsync), the ISO 8583 connector over TCP to `cloudlayer simulator`
(a subprocess, zero latency), sealing, EMV parsing, fingerprinting. C concurrent callers run N purchases
through `TransactionFlow.process`; we report transactions/s and this process's CPU per transaction (the
simulator's CPU is not counted). Prints one JSON line at the end for bench/run.py.

    .venv/bin/python bench/bench_flow.py [--n 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.cardkey import CardKeys
from cloudlayer.config import load_config
from cloudlayer.samples import sample_purchase
from cloudlayer.sealing import Sealer
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.transactions.flow import TransactionFlow

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_simulator(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, admin = _free_port(), _free_port()
    text = (REPO / "configs" / "simulator.toml").read_text()
    text = text.replace('admin_bind = "127.0.0.1:9584"', f'admin_bind = "127.0.0.1:{admin}"')
    text = text.replace('distribution = "uniform"', 'distribution = "fixed"')
    (workdir / "sim.toml").write_text(text)
    cmd = [str(Path(sys.executable).parent / "cloudlayer"), "simulator", "--config", str(workdir / "sim.toml")]
    proc = subprocess.Popen([*cmd, "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{admin}/ledger", timeout=2)
            return proc, port
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("simulator did not start")


async def _run(workdir: Path, port: int, n: int, concurrency: int) -> dict[str, float]:
    cfg_path = workdir / "host.toml"
    cfg_path.write_text(f'[server]\nvar_dir = "{workdir}/var"\n[acquirer]\nmode = "tcp"\nport = {port}\n')
    cfg = load_config(cfg_path, environ={})
    sealer = Sealer.from_config(cfg)
    store = LmdbStore.from_config(cfg)
    connector = Iso8583Connector(cfg.acquirer, cfg.var_path("saf"), sealer)
    flow = TransactionFlow(store, connector, sealer, card_keys=CardKeys.from_config(cfg), acquirer_timeout=5.0)
    bodies = [msgspec.json.encode(sample_purchase(f"flow-{i}", amount=1000)) for i in range(n + 50)]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await nursery.start(connector.run)
        await connector.wait_ready()
        await flow.attach(nursery)
        for body in bodies[n:]:  # warm-up
            await flow.process("bench", body)
        todo = iter(bodies[:n])
        wall0, cpu0 = time.perf_counter(), os.times()

        async def caller() -> None:
            for body in todo:
                await flow.process("bench", body)

        async with trio.open_nursery() as callers:
            for _ in range(concurrency):
                callers.start_soon(caller)
        wall, cpu1 = time.perf_counter() - wall0, os.times()
        nursery.cancel_scope.cancel()
    store.close()
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    return {
        "transactions_per_second": round(n / wall, 1),
        "cpu_us_per_transaction": round((user + system) / n * 1e6, 1),
        "user_us": round(user / n * 1e6, 1),
        "system_us": round(system / n * 1e6, 1),
        "ops_per_commit": round(store.committed_ops / max(store.commits, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudlayer-bench-flow-") as tmp:
        workdir = Path(tmp)
        sim, port = _start_simulator(workdir)
        try:
            figures = trio.run(_run, workdir, port, args.n, args.concurrency)
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    print(
        f"flow without HTTP, {args.n} purchases, {args.concurrency} concurrent: "
        f"{figures['transactions_per_second']:,.0f} txn/s, {figures['cpu_us_per_transaction']:.0f} us CPU each "
        f"(user {figures['user_us']:.0f}, system {figures['system_us']:.0f}), "
        f"{figures['ops_per_commit']} store writes per fsync"
    )
    print(json.dumps({"bench": "flow", **figures}))


if __name__ == "__main__":
    main()
