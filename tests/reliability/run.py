"""The long forms: chaos (default 120 s), soak (default 60 s), then the card-data scan over everything they
left (logs of every incarnation, var/ with LMDB, /metrics); prints the figures table. Exit 1 on a violation.

    .venv/bin/python tests/reliability/run.py [--chaos-seconds 120] [--soak-seconds 60] [--soak-rate 50]
        [--pg-hosts 2]

--pg-hosts N runs the chaos part on N hosts sharing one PostgreSQL database (a throw-away cluster,
tests/pg_cluster.py), with PostgreSQL itself stopped and started again among the actions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the harness modules

from reliability.chaos import Chaos, ChaosPlan
from reliability.scan import Hit, scan_bytes, scan_tree
from reliability.soak import run_soak


def _table(title: str, row: dict[str, object]) -> str:
    lines = [f"\n### {title}\n", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in row.items()]
    return "\n".join(lines)


def _scan_all(work: Path, chaos_metrics: bytes, soak_metrics: bytes) -> tuple[list[Hit], int]:
    hits = scan_tree(work) + scan_bytes(chaos_metrics, "chaos /metrics") + scan_bytes(soak_metrics, "soak /metrics")
    return hits, sum(1 for p in work.rglob("*") if p.is_file())


async def _chaos(work: Path, args: argparse.Namespace) -> Chaos:
    plan = ChaosPlan(duration=args.chaos_seconds, clients=6, interval=3.0, seed=args.seed, pg_hosts=args.pg_hosts)
    if not args.pg_hosts:
        chaos = Chaos(work / "chaos", plan)
        await chaos.run()
        return chaos
    from pg_cluster import PgCluster

    cluster = PgCluster()
    try:
        await trio.to_thread.run_sync(cluster.start)
        chaos = Chaos(work / "chaos", plan, pg=await trio.to_thread.run_sync(cluster.create_database))
        await chaos.run()
        return chaos
    finally:
        await trio.to_thread.run_sync(cluster.stop)


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cloudlayer-reliability-"))
    chaos = await _chaos(work, args)
    figures = chaos.figures
    mode = f", {args.pg_hosts} hosts on PostgreSQL" if args.pg_hosts else ""
    print(_table(f"Chaos under load ({args.chaos_seconds:.0f} s{mode})", figures.table_row()), flush=True)
    for v in figures.violations[:50]:
        print("VIOLATION", v)
    soak = await run_soak(work / "soak", seconds=args.soak_seconds, rate=args.soak_rate)
    print(_table(f"Soak ({args.soak_seconds:.0f} s at {args.soak_rate:.0f} tx/s)", soak.table_row()), flush=True)
    hits, files = await trio.to_thread.run_sync(_scan_all, work, chaos.metrics_text, soak.metrics_text)
    print(_table("Card data", {"files scanned": files, "metrics pages": 2, "hits": len(hits)}))
    for h in hits[:20]:
        print("CARD DATA", h)
    print(f"\n(work directory kept: {work})")
    failed = figures.violations or hits or soak.errors
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chaos-seconds", type=float, default=120.0)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--soak-rate", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--pg-hosts", type=int, default=0, help="chaos on N hosts sharing one PostgreSQL (0: LMDB)")
    sys.exit(trio.run(main, parser.parse_args()))
