"""Fill an LMDB transaction store with many COMPLETED records fast, through the store's own encoding.

Used by bench/bench_store_scale.py (claim + complete with 10 million records in the store) and by the
`purge` scenario (a retention purge of a million records under load). Going through `claim()` would take
hours for 10M records (two durable commits each); instead every record is encoded by `store.codec` and
written with all its index entries (the same keys `LmdbStore._do_claim`/`_do_complete` write) in large
write transactions, each database in key order so LMDB appends (MDB_APPEND) instead of searching.

Key order is chosen so the filled keys are spread over the whole key space, like real ones: transaction ids
and card keys are evenly spaced fixed-width values (a new random id or card key lands anywhere among them,
not past the end), RRNs and time keys grow with the record number as they do in time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlayer.config import StoreConfig
from cloudlayer.store import codec
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.lmdb_writer import MB
from cloudlayer.store.types import Event, State, TransactionRecord

CHUNK = 50_000  # records per write transaction
PER_TERMINAL = 10_000  # a terminal's transactions (STAN 1..10,000) before the next terminal
# An upper bound of the bytes a filled record takes on disk, records and indexes with B-tree overhead,
# for the map size (LMDB's map is sparse: only what is written takes disk). Measured: ~1.1 KB.
BYTES_PER_RECORD_BOUND = 2500
_ID_SPACE, _CARD_SPACE = 2**128, 2**256
RESPONSE = (
    b'{"transactionId":"%s","responseCode":"00","approved":true,"authorisationCode":"A1B2C3",'
    b'"stan":"%s","rrn":"%s","emvData":"8A023030910A0102030405060708303071009F360200A1",'
    b'"message":"Approved","currency":"826","amount":1200}'
)


@dataclass
class Filled:
    records: int  # written (may be fewer than asked when the time budget ran out)
    requested: int
    seconds: float
    record_bytes: int  # one encoded record (msgpack), without keys and indexes
    file_bytes: int  # data.mdb on disk after the fill
    stopped_by_budget: bool


def record_at(i: int, n_max: int, client_id: str, at: float) -> TransactionRecord:
    """Record number i of a fill of at most n_max: a COMPLETED contactless purchase, answered at `at`."""
    txid = f"{i * (_ID_SPACE // n_max):032x}"
    stan = f"{i % PER_TERMINAL + 1:06d}"
    rrn = f"{i:012d}"
    return TransactionRecord(
        client_id=client_id,
        transaction_id=txid,
        fingerprint=i.to_bytes(32, "big"),
        state=State.COMPLETED,
        owner="bench-fill",
        transaction_type="PURCHASE",
        amount=1200,
        currency="826",
        merchant_id="BENCHMERCHANT01",
        terminal_id=f"T{i // PER_TERMINAL:07d}",
        masked_pan="476173******0119",
        card_key=(i * (_CARD_SPACE // n_max)).to_bytes(32, "big"),
        emv_redacted=_EMV,
        stan=stan,
        rrn=rrn,
        transmission_datetime="1126140509",
        acquirer_mti="0200",
        response_status=200,
        response_body=RESPONSE % (txid.encode(), stan.encode(), rrn.encode()),
        response_code="00",
        approved=True,
        authorisation_code="A1B2C3",
        outcome="approved",
        created_at=at - 0.05,
        completed_at=at,
        events=[Event(at - 0.05, "received"), Event(at - 0.04, "sent", "0200"), Event(at, "answered", "00")],
    )


_EMV = os.urandom(190)  # the size of emv.redact() of the bench's field 55


def map_size_mb(records: int) -> int:
    return max(64, records * BYTES_PER_RECORD_BOUND // MB + 64)


def open_store(path: Path, records: int) -> LmdbStore:
    """An LmdbStore (same databases and flags as the host's) with a map large enough for `records`."""
    map_mb = map_size_mb(records)
    return LmdbStore(path, StoreConfig(map_size_mb=map_mb, max_map_size_mb=max(map_mb, 65_536)))


def fill(
    store: LmdbStore,
    records: int,
    *,
    client_id: str,
    answered_at: Callable[[int], float],
    budget_s: float,
    progress: Callable[[int, float], None] | None = None,
) -> Filled:
    """Write `records` COMPLETED records (record i answered at answered_at(i), non-decreasing in i) into an
    empty store, stopping early when `budget_s` is spent. Uses the store's environment and database handles
    directly (bench only): the same keys and values `claim` + `complete` would have written."""
    env = store._env  # the bench writes through the store's own handles
    d = store._dbs
    dbs = (d.records, d.by_rrn, d.by_term_stan, d.by_created, d.by_completed, d.by_card)
    started = time.perf_counter()
    done = 0
    sample = codec.encode(record_at(0, records, client_id, answered_at(0)))
    while done < records:
        if time.perf_counter() - started > budget_s:
            break
        end = min(records, done + CHUNK)
        rows: tuple[list[tuple[bytes, bytes]], ...] = ([], [], [], [], [], [])
        for i in range(done, end):
            rec = record_at(i, records, client_id, answered_at(i))
            key = codec.record_key(rec.client_id, rec.transaction_id)
            rows[0].append((key, codec.encode(rec)))
            rows[1].append((rec.rrn.encode(), key))
            rows[2].append((codec.terminal_stan_key(rec.terminal_id, rec.stan), key))
            rows[3].append((codec.time_key(rec.created_at, key), b""))
            rows[4].append((codec.time_key(rec.completed_at, key), b""))
            rows[5].append((codec.card_index_key(rec.client_id, rec.card_key), key))
        with env.begin(write=True) as txn:
            for db, items in zip(dbs, rows, strict=True):
                _, added = txn.cursor(db=db).putmulti(items, append=True)
                if added != len(items):
                    raise RuntimeError("fill: the store must be empty (keys out of order for an append)")
        done = end
        if progress is not None:
            progress(done, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    size = (store.path / "data.mdb").stat().st_size
    return Filled(done, records, elapsed, len(sample), size, done < records)
