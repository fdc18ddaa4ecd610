"""The card-data scanner and the store integrity scan find what they look for (so a clean report means something)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lmdb
import trio

from cloudlayer.config import StoreConfig
from cloudlayer.store import codec
from cloudlayer.store.integrity import luhn_runs, scan_store
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import TransactionRecord
from reliability.scan import scan_bytes

PAN = "4761739001010119"


def test_scan_finds_the_test_card_in_every_encoding() -> None:
    for blob in (
        f"pan={PAN} ".encode(),
        b"\x00" + bytes.fromhex(PAN) + b"\x00",
        PAN.encode("utf-16-le"),
        b"57134761739001010119D27122011143804400000F",
        bytes.fromhex("4761739001010119D27122011143804400000F"),
        b"\x00" + hashlib.sha256(PAN.encode()).digest() + b"\x00",  # a card key that forgot its HMAC secret
    ):
        assert scan_bytes(blob, "x"), blob
    assert [h.what for h in scan_bytes(b"card 4111111111111111 ok", "x")] == ["Luhn-valid 16-digit run"]
    assert scan_bytes(b"\0binary rrn=6330000014980\0", "data.mdb") == []  # an RRN glued to a stray page byte
    assert scan_bytes(b"id=9f1e4111111111111111ab t=0.411111111111111 rrn=633000000001", "x") == []


def _record(tid: str, **kw: Any) -> TransactionRecord:
    return TransactionRecord(client_id="c1", transaction_id=tid, fingerprint=b"f" * 32, rrn="633000000001", **kw)


async def test_integrity_scan_passes_a_good_store_and_flags_each_defect(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path, StoreConfig())
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.claim(_record("good", sealed_request=b"x", terminal_id="T1", stan="000001"))
        nursery.cancel_scope.cancel()
    store.close()
    clean = scan_store(path, pending_max_age=3600)
    assert clean.ok and clean.records == 1 and clean.pending == 1, clean.problems
    assert luhn_runs(b"x 4111111111111111 y") and not luhn_runs(b"4111111111111112")
    # Defects written behind the store's back: a record with no index entries and card data, and garbage.
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        records = env.open_db(b"records", txn=txn)
        bad = _record("bad", sealed_request=b"x", merchant_id="4111111111111111", created_at=1.0, owner="gone")
        txn.put(codec.record_key("c1", "bad"), codec.encode(bad), db=records)
        txn.put(codec.record_key("c1", "junk"), b"\xc1not msgpack", db=records)
    env.close()
    checks = {p.check for p in scan_store(path, pending_max_age=60).problems}
    assert checks == {"decode", "index", "card-data", "orphan"}, checks
