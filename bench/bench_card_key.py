"""What the card key adds to a claim (issue 16), side by side with a claim without one, in one run.

    .venv/bin/python bench/bench_card_key.py [--records 2000] [--rounds 7] [--dir DIR]

Three figures, each with and without a card key, alternating rounds, medians reported:
  1. computing it: CardKeys.key() over the parsed card (one HMAC-SHA256), per transaction;
  2. the claim's own work inside the LMDB write transaction (the by_card lookup and put besides the record and
     its indexes), `records` claims in one transaction that is then aborted: no fsync, so the difference is not
     drowned by the disk;
  3. durable claims per second through the public claim() (group commit, fsync'd), 64 claimers.
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

import trio

from cloudlayer import emv
from cloudlayer.cardkey import CardKeys
from cloudlayer.config import StoreConfig
from cloudlayer.samples import new_tap
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import TransactionRecord

KEYS = CardKeys(os.urandom(32))


def records(n: int, with_key: bool, tag: str) -> list[TransactionRecord]:
    out = []
    for i in range(n):
        card = emv.card_data(bytes.fromhex(new_tap()))
        out.append(
            TransactionRecord(
                client_id="bench-client",
                transaction_id=f"{tag}-{i:09d}",
                fingerprint=os.urandom(32),
                transaction_type="PURCHASE",
                amount=1000,
                currency="978",
                merchant_id="MERCHANT0001",
                terminal_id="TERM0001",
                masked_pan="476173******0119",
                card_key=KEYS.key("bench-client", card) if with_key else b"",
                emv_redacted=os.urandom(180),
                stan=f"{i % 999_999 + 1:06d}",
                rrn=f"6330{i:08d}",
                sealed_request=os.urandom(220),
            )
        )
    return out


def key_cost_us(n: int) -> float:
    cards = [emv.card_data(bytes.fromhex(new_tap())) for _ in range(n)]
    t0 = time.perf_counter()
    for card in cards:
        KEYS.key("bench-client", card)
    return (time.perf_counter() - t0) / n * 1e6


def in_txn_claim_us(store: LmdbStore, recs: list[TransactionRecord]) -> float:
    now = time.time()
    txn = store._env.begin(write=True)  # the writer's own step, minus the commit
    try:
        t0 = time.perf_counter()
        for rec in recs:
            store._ops._claim(txn, rec, now)
        return (time.perf_counter() - t0) / len(recs) * 1e6
    finally:
        txn.abort()


async def durable_claims_per_second(path: Path, recs: list[TransactionRecord]) -> float:
    store = LmdbStore(path, StoreConfig(map_size_mb=256))
    pending = list(recs)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)

            async def worker() -> None:
                while pending:
                    claim = await store.claim(pending.pop())
                    assert claim.outcome.value == "NEW"

            start = trio.current_time()
            async with trio.open_nursery() as workers:
                for _ in range(64):
                    workers.start_soon(worker)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return len(recs) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dir", default=None, help="where the LMDB files go (default: a temporary directory)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-card-key-", dir=args.dir))
    key_us = key_cost_us(20_000)
    print(f"card key: {key_us:.2f} us to compute (HMAC-SHA256 over PAN, sequence, ATC)")
    inside: dict[bool, list[float]] = {False: [], True: []}
    durable: dict[bool, list[float]] = {False: [], True: []}
    warm = LmdbStore(base / "inside", StoreConfig(map_size_mb=256))
    try:
        # A store that already holds records, as in service: the B-tree lookups are not into an empty tree.
        with warm._env.begin(write=True) as txn:
            for rec in records(args.records, True, "seed"):
                warm._ops._claim(txn, rec, time.time())
        for r in range(args.rounds):
            for with_key in (r % 2 == 0, r % 2 != 0):  # alternate which goes first
                inside[with_key].append(in_txn_claim_us(warm, records(args.records, with_key, f"r{r}")))
    finally:
        warm.close()
    for r in range(max(3, args.rounds // 2)):
        for with_key in (False, True):
            recs = records(args.records, with_key, f"d{r}")
            durable[with_key].append(trio.run(durable_claims_per_second, base / f"durable-{r}-{with_key}", recs))
    a, b = statistics.median(inside[False]), statistics.median(inside[True])
    print(f"claim in the write txn: {a:.2f} us without, {b:.2f} us with a card key: +{b - a:.2f} us ({b / a:.2f}x)")
    c, d = statistics.median(durable[False]), statistics.median(durable[True])
    print(f"durable claims/s (group commit, 64 claimers): {c:,.0f} without, {d:,.0f} with ({d / c:.2f}x)")
    print(f"(filesystem of {base} decides the fsync cost)")
    print(
        json.dumps(
            {
                "bench": "card_key",
                "compute_us": round(key_us, 2),
                "claim_in_txn_us": {"without": round(a, 2), "with": round(b, 2)},
                "durable_claims_per_s": {"without": round(c), "with": round(d)},
            }
        )
    )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
