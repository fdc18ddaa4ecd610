"""Claim + complete, PostgreSQL store beside LMDB store, in one run on one disk.

    .venv/bin/python bench/bench_pg.py [--ops 1000] [--claimers 1,16,64]

Each row runs the same TransactionStore calls (claim -> NEW, then complete) on LmdbStore and on PgStore; every
write is durable before it returns (LMDB sync=True; PostgreSQL synchronous_commit=on, fsync on). The
PostgreSQL side is a throw-away cluster (tests/pg_cluster.py: initdb in the system temp dir, loopback TCP,
scram-sha-256), so both stores sit on the same filesystem. With 1 claimer the figure is the latency of one
claim+complete (us); with more, throughput (pairs/s) and the ratio PG / LMDB. The store alone: the whole
path (HTTP, acquirer) is `make bench`'s, which does not run PostgreSQL yet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench_store import COMPLETION, filesystem_of, record
from cloudlayer.config import StoreConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_cluster import PgCluster

CFG = StoreConfig(map_size_mb=256, owner_timeout=10.0, purge_interval=86_400.0)


async def measure(store: Any, claimers: int, ops: int, offset: int) -> float:
    """Seconds for `ops` claim+complete pairs spread over `claimers` tasks."""
    next_i = offset

    async def worker() -> None:
        nonlocal next_i
        while next_i < offset + ops:
            i = next_i
            next_i += 1
            claim = await store.claim(record(i))
            assert claim.outcome.value == "NEW"
            await store.complete("bench-client", claim.record.transaction_id, COMPLETION)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        start = trio.current_time()
        async with trio.open_nursery() as workers:
            for _ in range(claimers):
                workers.start_soon(worker)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return elapsed


def lmdb_store(base: Path, name: str) -> Any:
    from cloudlayer.store.lmdb_store import LmdbStore

    return LmdbStore(base / name, CFG)


def pg_store(cluster: PgCluster, pool: int) -> Any:
    from cloudlayer.store.pg.store import PgStore
    from pg_support import migrated_settings

    return PgStore(migrated_settings(cluster, pool), CFG)


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    cluster = PgCluster().start()
    print(f"LMDB under {base} ({filesystem_of(base)}); PostgreSQL cluster under {cluster.root}; {args.ops} pairs/run")
    print(f"{'claimers':>8} {'LMDB':>14} {'PostgreSQL':>14} {'PG/LMDB':>8}")
    figures: dict[str, float] = {}
    try:
        for n, claimers in enumerate(args.claimers):
            lm = lmdb_store(base, f"lmdb-{claimers}")
            try:
                t_lmdb = await measure(lm, claimers, args.ops, n * args.ops)
            finally:
                lm.close()
            pg = pg_store(cluster, pool=min(max(claimers, 2), 32))
            try:
                t_pg = await measure(pg, claimers, args.ops, n * args.ops)
            finally:
                pg.close()
            if claimers == 1:
                us_l, us_p = t_lmdb / args.ops * 1e6, t_pg / args.ops * 1e6
                print(f"{claimers:>8} {us_l:>11,.0f} us {us_p:>11,.0f} us {us_l / us_p:>8.2f}  (latency per pair)")
                figures |= {"lmdb_us_per_pair": round(us_l), "pg_us_per_pair": round(us_p)}
            else:
                r_l, r_p = args.ops / t_lmdb, args.ops / t_pg
                print(f"{claimers:>8} {r_l:>12,.0f}/s {r_p:>12,.0f}/s {r_p / r_l:>8.2f}  (pairs per second)")
                figures |= {f"lmdb_pairs_per_s_{claimers}": round(r_l), f"pg_pairs_per_s_{claimers}": round(r_p)}
        print(json.dumps({"bench": "pg_store", "ops": args.ops, **figures}))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=1000)
    p.add_argument("--claimers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    trio.run(main, p.parse_args())
