"""Durable claims per second: group commit versus one fsync per write, in one run.

    .venv/bin/python bench/bench_store.py [--claimers 64] [--ops 3000] [--dir DIR]

Each mode runs the same LmdbStore code path; only store.group_commit_max differs (64 vs 1). Every
claim is durable (LMDB sync=True) before it returns. Run it on the disk the store will live on: tmpfs
makes fsync free and the comparison meaningless (the script says which filesystem it used).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import trio

from cloudlayer.config import StoreConfig
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import Completion, TransactionRecord

COMPLETION = Completion(
    response_status=200,
    response_body=b'{"transactionId":"x","responseCode":"00","approved":true,"emvData":"8A023030"}' * 3,
    response_code="00",
    approved=True,
    authorisation_code="A1B2C3",
    outcome="approved",
)


def record(i: int) -> TransactionRecord:
    return TransactionRecord(
        client_id="bench-client",
        transaction_id=f"txn-{i:09d}",
        fingerprint=i.to_bytes(32, "big"),
        transaction_type="PURCHASE",
        amount=1000 + i,
        currency="978",
        merchant_id="MERCHANT0001",
        terminal_id="TERM0001",
        masked_pan="476173******0119",
        emv_redacted=os.urandom(180),
        stan=f"{i % 999_999 + 1:06d}",
        rrn=f"6330{i:08d}",
        sealed_request=os.urandom(220),
    )


async def measure(path: Path, group: int, claimers: int, ops: int, complete: bool) -> float:
    store = LmdbStore(path, StoreConfig(map_size_mb=256, group_commit_max=group))
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < ops:
            i = next_i
            next_i += 1
            claim = await store.claim(record(i))
            assert claim.outcome.value == "NEW"
            if complete:
                await store.complete("bench-client", claim.record.transaction_id, COMPLETION)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            start = trio.current_time()
            async with trio.open_nursery() as workers:
                for _ in range(claimers):
                    workers.start_soon(worker)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        print(f"    mean batch {store.committed_ops / max(store.commits, 1):.1f} ops over {store.commits} commits")
    finally:
        store.close()
    return ops / elapsed


def filesystem_of(path: Path) -> str:
    out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.split()[-1] if out.returncode == 0 else "unknown"


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    print(f"store under {base} ({filesystem_of(base)}), {args.claimers} concurrent claimers, {args.ops} ops per run")
    results: dict[tuple[str, int], float] = {}
    try:
        for kind, complete in (("claim", False), ("claim+complete", True)):
            for group in (args.group, 1):
                path = base / f"{kind}-{group}"
                results[kind, group] = rate = await measure(path, group, args.claimers, args.ops, complete)
                shutil.rmtree(path)
                print(f"  {kind:15} group_commit_max={group:<3} {rate:10,.0f} /s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for kind in ("claim", "claim+complete"):
        ratio = results[kind, args.group] / results[kind, 1]
        print(f"{kind}: group commit is {ratio:.1f}x one fsync per write")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--claimers", type=int, default=64)
    p.add_argument("--ops", type=int, default=3000)
    p.add_argument("--group", type=int, default=64, help="group_commit_max for the batched run")
    p.add_argument("--dir", default=None, help="directory for the store (default: the system temp dir)")
    trio.run(main, p.parse_args())
