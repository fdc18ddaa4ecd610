"""What the completion NOTIFY costs the PostgreSQL store: claim + complete pairs/s with migration 0002's trigger
`transactions_completed_notify` enabled and disabled, alternating on one throw-away cluster (a lever measured,
not a setting: with the trigger off, waiters on another host fall back to polling). Not run by `make bench`.

    .venv/bin/python bench/pg_notify_lever.py [--ops 1000] [--claimers 32] [--rounds 2]

Why it matters: a transaction that issued NOTIFY takes PostgreSQL's global notify lock in its pre-commit and
holds it through its commit record's WAL flush, so such commits are serialised one fsync each instead of
sharing a group flush. Every completion issues one (the trigger), so completions queue behind each other.
Also printed: commits per pair from pg_stat_database (2: the claim's INSERT and the completion's UPDATE).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio

from bench_pg import measure, pg_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_cluster import PgCluster

COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


def _commits(cluster: PgCluster, dbname: str) -> int:
    time.sleep(0.6)  # the statistics collector reports with a short delay
    with cluster.admin(dbname) as conn:
        row = conn.execute(COMMITS).fetchone()
    assert row is not None
    return int(row[0])


async def main(args: argparse.Namespace) -> None:
    cluster = PgCluster().start()
    figures: dict[str, list[float]] = {"on": [], "off": []}
    offset = 0
    try:
        for rnd in range(args.rounds):
            for trigger in ("on", "off"):
                store = pg_store(cluster, pool=min(args.claimers, 32))
                dbname = store._db.settings.dsn.split("dbname=")[1].split()[0]
                if trigger == "off":
                    with cluster.admin(dbname) as conn:
                        conn.execute("ALTER TABLE transactions DISABLE TRIGGER transactions_completed_notify")
                before = _commits(cluster, dbname)
                try:
                    elapsed = await measure(store, args.claimers, args.ops, offset)
                finally:
                    store.close()
                offset += args.ops
                per_pair = (_commits(cluster, dbname) - before) / args.ops
                rate = args.ops / elapsed
                figures[trigger].append(round(rate))
                print(f"round {rnd} notify {trigger:>3}: {rate:8,.0f} pairs/s, {per_pair:.2f} commits/pair")
        best = {k: max(v) for k, v in figures.items()}
        print(json.dumps({"bench": "pg_notify_lever", "claimers": args.claimers, "pairs_per_s": figures, **best}))
    finally:
        cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=1000)
    p.add_argument("--claimers", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    trio.run(main, p.parse_args())
