"""What the completion NOTIFY costs the PostgreSQL store: claim + complete pairs/s, alternating on one throw-away
cluster, in three modes (a lever measured, never a setting). Not run by `make bench`.

    .venv/bin/python bench/pg_notify_lever.py [--ops 1000] [--claimers 32] [--rounds 2]

  - trigger: as before migration 0007, every completing transaction calls pg_notify (TRIGGER_SQL, re-created
    after migrating). Such a transaction takes PostgreSQL's global notify lock in its pre-commit and holds it
    through its commit record's WAL flush, so these commits are serialised one fsync each instead of sharing a
    group flush;
  - every: the store as built (migration 0007) with every row marked awaited (the column's default set true),
    so every completion sends its NOTIFY in a transaction of its own after it commits: the worst case;
  - awaited: the store as built, nobody waiting (the common case): no NOTIFY at all.
Also printed: commits per pair from pg_stat_database (2: the claim's INSERT and the completion's UPDATE; 3 in
`every`, the NOTIFY's own).
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
MODES = ("trigger", "every", "awaited")
# Migration 0002's completion trigger, which 0007 dropped: for before/after figures in one session.
TRIGGER_SQL = """
CREATE FUNCTION cl_notify_completed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cloudlayer_completed', NEW.client_id || chr(31) || NEW.transaction_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER transactions_completed_notify AFTER UPDATE OF state ON transactions
    FOR EACH ROW WHEN (OLD.state = 'PENDING' AND NEW.state = 'COMPLETED') EXECUTE FUNCTION cl_notify_completed();
"""


def set_mode(cluster: PgCluster, dbname: str, mode: str) -> None:
    with cluster.admin(dbname) as conn:
        if mode == "trigger":
            conn.execute(TRIGGER_SQL)
        elif mode == "every":
            conn.execute("ALTER TABLE transactions ALTER COLUMN awaited SET DEFAULT true")
        elif mode != "awaited":
            raise ValueError(f"notify mode {mode!r}: one of {', '.join(MODES)}")


def _commits(cluster: PgCluster, dbname: str) -> int:
    time.sleep(0.6)  # the statistics collector reports with a short delay
    with cluster.admin(dbname) as conn:
        row = conn.execute(COMMITS).fetchone()
    assert row is not None
    return int(row[0])


async def main(args: argparse.Namespace) -> None:
    cluster = PgCluster().start()
    figures: dict[str, list[float]] = {m: [] for m in MODES}
    offset = 0
    try:
        for rnd in range(args.rounds):
            for mode in MODES:
                store = pg_store(cluster, pool=min(args.claimers, 32))
                dbname = store._db.settings.dsn.split("dbname=")[1].split()[0]
                set_mode(cluster, dbname, mode)
                before = _commits(cluster, dbname)
                try:
                    elapsed = await measure(store, args.claimers, args.ops, offset)
                finally:
                    store.close()
                offset += args.ops
                per_pair = (_commits(cluster, dbname) - before) / args.ops
                rate = args.ops / elapsed
                figures[mode].append(round(rate))
                print(f"round {rnd} notify {mode:>7}: {rate:8,.0f} pairs/s, {per_pair:.2f} commits/pair")
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
