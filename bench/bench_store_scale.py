"""Cost as work grows: durable claim + complete with 10 million records in the LMDB store beside an empty store.

    .venv/bin/python bench/bench_store_scale.py [--records 10000000] [--build-budget 900] [--ops 2000]

Both stores are the real `LmdbStore` on the same disk; the large one is filled first (bench/store_fill.py: the
store's own encoding and keys, large append-ordered write transactions, bounded by --build-budget seconds: the
figure says how many records it really held). Then rounds alternate empty / large, each `--ops` claim +
complete pairs from `--claimers` concurrent tasks (group commit as in the host), new transaction ids and card
keys random so they land anywhere in the filled key space. Reported per store: pairs per second and process CPU
per pair (the writer thread included); the issue's target is the large store within 1.3x of the empty one.
The last stdout line is one JSON object (collected by `bench/run.py` in `micro`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench_store import COMPLETION, filesystem_of
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import TransactionRecord
from store_fill import fill, open_store

TARGET = 1.3
CLIENT = "bench-client"
DAY = 86_400.0


def fresh_record(rng_tag: bytes, i: int) -> TransactionRecord:
    txid = os.urandom(16).hex()  # a random id: lands anywhere among the filled (evenly spaced) ids
    return TransactionRecord(
        client_id=CLIENT,
        transaction_id=txid,
        fingerprint=os.urandom(32),
        transaction_type="PURCHASE",
        amount=1200,
        currency="826",
        merchant_id="BENCHMERCHANT01",
        terminal_id="TNEW0001",
        masked_pan="476173******0119",
        card_key=os.urandom(32),
        emv_redacted=os.urandom(190),
        stan=f"{i % 999_999 + 1:06d}",
        rrn="9" + rng_tag.hex()[:3] + f"{i:08d}",
        sealed_request=os.urandom(220),
    )


async def pairs(store: LmdbStore, claimers: int, ops: int, tag: bytes) -> dict[str, float]:
    """`ops` claim + complete pairs from `claimers` tasks: seconds, pairs/s and CPU us per pair."""
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < ops:
            i = next_i
            next_i += 1
            claim = await store.claim(fresh_record(tag, i))
            assert claim.outcome.value == "NEW", claim.outcome
            await store.complete(CLIENT, claim.record.transaction_id, COMPLETION)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        cpu0, t0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(claimers):
                workers.start_soon(worker)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    return {"seconds": elapsed, "pairs_per_s": ops / elapsed, "cpu_us_per_pair": cpu / ops * 1e6}


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rounds),
        "cpu_us_per_pair": statistics.median(r["cpu_us_per_pair"] for r in rounds),
        "rounds": rounds,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-store-scale-", dir=args.dir))
    print(f"stores under {base} ({filesystem_of(base)}); filling {args.records:,} records", flush=True)
    try:
        large = open_store(base / "large", args.records)
        now = time.time()
        # Answered over the last 30 days (inside the 90-day retention: the store's own purge leaves them).
        span = 30 * DAY / max(args.records, 1)
        filled = fill(
            large,
            args.records,
            client_id=CLIENT,
            answered_at=lambda i: now - 30 * DAY + i * span,
            budget_s=args.build_budget,
            progress=lambda n, s: print(f"  {n:,} records in {s:.0f} s", flush=True) if n % 1_000_000 == 0 else None,
        )
        print(
            f"filled {filled.records:,} of {filled.requested:,} in {filled.seconds:.0f} s "
            f"({filled.records / max(filled.seconds, 1e-9):,.0f}/s), {filled.record_bytes} B per encoded record, "
            f"{filled.file_bytes / max(filled.records, 1):,.0f} B per record on disk",
            flush=True,
        )
        empty = open_store(base / "empty", args.ops * args.rounds)
        runs: dict[str, list[dict[str, float]]] = {"empty": [], "large": []}
        for r in range(args.rounds):
            for name, store in (("empty", empty), ("large", large)):
                m = trio.run(pairs, store, args.claimers, args.ops, f"{name}{r}".encode())
                runs[name].append(m)
                print(f"  round {r} {name:5} {m['pairs_per_s']:8,.0f} pairs/s {m['cpu_us_per_pair']:7,.0f} us CPU/pair")
        large.close()
        empty.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    e, big = summary(runs["empty"]), summary(runs["large"])
    time_ratio = e["pairs_per_s"] / big["pairs_per_s"]
    cpu_ratio = big["cpu_us_per_pair"] / e["cpu_us_per_pair"]
    return {
        "bench": "store_scale",
        "records": filled.records,
        "records_requested": filled.requested,
        "build_stopped_by_budget": filled.stopped_by_budget,
        "build_s": round(filled.seconds, 1),
        "record_bytes": filled.record_bytes,
        "disk_bytes_per_record": round(filled.file_bytes / max(filled.records, 1)),
        "claimers": args.claimers,
        "ops": args.ops,
        "empty": e,
        "large": big,
        "time_per_pair_large_over_empty": time_ratio,
        "cpu_per_pair_large_over_empty": cpu_ratio,
        "target": TARGET,
        "met": time_ratio <= TARGET and cpu_ratio <= TARGET,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000_000, help="records in the large store")
    p.add_argument("--build-budget", type=float, default=900.0, help="seconds the fill may take at most")
    p.add_argument("--ops", type=int, default=2000, help="claim + complete pairs per round")
    p.add_argument("--claimers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="directory for the stores (default: the system temp dir)")
    a = p.parse_args()
    if a.records < 1 or a.ops < 1 or a.claimers < 1 or a.rounds < 1:
        p.error("records, ops, claimers, rounds >= 1")
    result = main(a)
    print(
        f"large / empty: time per pair {result['time_per_pair_large_over_empty']:.2f}x, CPU per pair "
        f"{result['cpu_per_pair_large_over_empty']:.2f}x (target <= {TARGET}x): {'met' if result['met'] else 'NOT met'}"
    )
    print(json.dumps(result))
