"""The claim's second and third keys, on the store's own atomic steps: the card key (issue 16) and a REVERSAL's
hold on its original (issue 11). Written against the TransactionStore Protocol (`open_backend`), so that a
second backend runs the same cases: each on the real LMDB file and on real PostgreSQL (`store_backend`).

Also the card key itself (cloudlayer.cardkey): keyed, per client, the ATC first and the cryptogram in its
place, none without a PAN.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio

from cloudlayer import emv
from cloudlayer.cardkey import CardKeys, fingerprint
from cloudlayer.config import StoreConfig
from cloudlayer.samples import SAMPLE_EMV_HEX, new_tap
from cloudlayer.store import reversals
from cloudlayer.store.commands import record_view
from cloudlayer.store.integrity import scan_store
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import (
    ClaimOutcome,
    Completion,
    InvalidRecord,
    OriginalRefusal,
    State,
    TransactionRecord,
    TransactionStore,
)

FP = b"\x02" * 32
KEY_A, KEY_B = b"\xaa" * 32, b"\xbb" * 32


def rec(tid: str, client: str = "c1", **kw: Any) -> TransactionRecord:
    base: dict[str, Any] = {"amount": 1000, "currency": "978", "merchant_id": "M1", "terminal_id": "T1"}
    base["sealed_request"] = b"\x00" * 40  # stands for the sealed acquirer request every PENDING holds
    base.update(kw)
    return TransactionRecord(client_id=client, transaction_id=tid, fingerprint=FP, **base)


def reversal(tid: str, original: str, **kw: Any) -> TransactionRecord:
    return rec(tid, transaction_type="REVERSAL", original_transaction_id=original, **kw)


def done(*, approved: bool = True, code: str = "00", outcome: str = "approved") -> Completion:
    return Completion(
        response_status=200,
        response_body=b'{"responseCode":"%s"}' % code.encode(),
        response_code=code,
        approved=approved,
        authorisation_code="A1B2C3" if approved else None,
        outcome=outcome,
    )


@asynccontextmanager
async def open_backend(path: Path) -> AsyncIterator[TransactionStore]:
    store = LmdbStore(path, StoreConfig(map_size_mb=4, max_map_size_mb=8))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def approved_original(store: TransactionStore, tid: str = "o1", **kw: Any) -> TransactionRecord:
    assert (await store.claim(rec(tid, **kw))).outcome is ClaimOutcome.NEW
    return await store.complete("c1", tid, done())


# ---- the card key ----------------------------------------------------------------------------------------


def _card(hex_data: str) -> emv.CardData:
    card = emv.card_data(bytes.fromhex(hex_data))
    assert card is not None
    return card


def test_card_key_is_keyed_per_client_and_per_tap() -> None:
    keys = CardKeys(b"\x01" * 32)
    tap = _card(SAMPLE_EMV_HEX)
    key = keys.key("mypinpad", tap)
    assert len(key) == 32 and key == keys.key("mypinpad", _card(SAMPLE_EMV_HEX))
    assert keys.key("another-tenant", tap) != key  # tenants never collide
    assert CardKeys(b"\x02" * 32).key("mypinpad", tap) != key  # keyed: not a hash anyone can recompute
    assert keys.key("mypinpad", _card(new_tap())) != key  # a new tap is a new transaction
    # The cryptogram alone does not make a new card transaction while the ATC is there...
    same_atc = SAMPLE_EMV_HEX.replace("9F26088E19ED4F2A1A4D2B", "9F26080000000000000001")
    assert keys.key("mypinpad", _card(same_atc)) == key
    # ...and stands in for it where there is none.
    no_atc = SAMPLE_EMV_HEX.replace("9F36020013", "")
    other_cryptogram = no_atc.replace("9F26088E19ED4F2A1A4D2B", "9F26080000000000000001")
    assert keys.key("mypinpad", _card(no_atc)) not in (b"", key, keys.key("mypinpad", _card(other_cryptogram)))
    # Neither: the transactionId alone decides, as before. Without a PAN there is no card at all.
    neither = no_atc.replace("9F26088E19ED4F2A1A4D2B", "")
    assert keys.key("mypinpad", _card(neither)) == b""
    assert keys.key("mypinpad", None) == b""
    with pytest.raises(ValueError):
        CardKeys(b"short")


def test_card_key_file_is_created_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "card.key"
    first = CardKeys.from_file(path).key("c", _card(SAMPLE_EMV_HEX))
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o777 == 0o700
    assert CardKeys.from_file(path).key("c", _card(SAMPLE_EMV_HEX)) == first  # the next start reads the same


async def test_same_card_key_under_another_id_is_refused_and_writes_nothing(store_backend: Any) -> None:
    async with store_backend.open() as store:
        assert (await store.claim(rec("t1", card_key=KEY_A))).outcome is ClaimOutcome.NEW
        dup = await store.claim(rec("t2", card_key=KEY_A))
        assert dup.outcome is ClaimOutcome.DUPLICATE_CARD and dup.record.transaction_id == "t1"
        assert await store.get("c1", "t2") is None
        # The first one's own resubmission is not a duplicate of itself.
        assert (await store.claim(rec("t1", card_key=KEY_A))).outcome is ClaimOutcome.IN_FLIGHT
        await store.complete("c1", "t1", done())
        assert (await store.claim(rec("t1", card_key=KEY_A))).outcome is ClaimOutcome.REPLAY
        again = await store.claim(rec("t2", card_key=KEY_A))  # stable, completed or not
        assert again.outcome is ClaimOutcome.DUPLICATE_CARD and again.record.transaction_id == "t1"
        # Another card key, another client (whatever its key's bytes: the index is per client), or none: new.
        assert (await store.claim(rec("t3", card_key=KEY_B))).outcome is ClaimOutcome.NEW
        assert (await store.claim(rec("t2", client="c2", card_key=KEY_A))).outcome is ClaimOutcome.NEW
        assert (await store.claim(rec("t4"))).outcome is ClaimOutcome.NEW
        assert (await store.claim(rec("t5"))).outcome is ClaimOutcome.NEW


async def test_same_card_key_at_the_same_moment_one_wins(store_backend: Any) -> None:
    async with store_backend.open() as store:
        outcomes: list[ClaimOutcome] = []

        async def one(i: int) -> None:
            outcomes.append((await store.claim(rec(f"race-{i}", card_key=KEY_A))).outcome)

        async with trio.open_nursery() as nursery:  # one group-commit batch, or several: one NEW either way
            for i in range(20):
                nursery.start_soon(one, i)
        assert sorted(outcomes).count(ClaimOutcome.NEW) == 1
        assert outcomes.count(ClaimOutcome.DUPLICATE_CARD) == 19


@pytest.mark.parametrize("card_key", [b"\x01" * 31, b"\x01" * 33])
async def test_card_key_of_the_wrong_size_is_refused(store_backend: Any, card_key: bytes) -> None:
    async with store_backend.open() as store:
        with pytest.raises(InvalidRecord, match="card_key"):
            await store.claim(rec("t1", card_key=card_key))
        with pytest.raises(InvalidRecord, match="reversed_by"):
            await store.claim(rec("t1", reversed_by="x"))
        assert await store.get("c1", "t1") is None


async def test_card_key_is_purged_with_its_record_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_backend(path) as store:
        await store.claim(rec("t1", card_key=KEY_A))
        done_rec = await store.complete("c1", "t1", done())
        view = record_view(done_rec)
        assert view["card_key"] == fingerprint(KEY_A) and len(view["card_key"]) == 8
        assert KEY_A.hex() not in str(view)
        await store.claim(rec("t2", card_key=KEY_B))
        assert await store.purge(older_than=done_rec.completed_at + 1) == 1
        # Gone with its record: the same tap is new again (retention is longer than any card replay window).
        assert (await store.claim(rec("t9", card_key=KEY_A))).outcome is ClaimOutcome.NEW
    assert scan_store(path).ok
    # `txn check` finds an index entry that lost its record, and a record that lost its index entry.
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        by_card = env.open_db(b"by_card", txn=txn)
        txn.delete(b"c1\0" + KEY_B, db=by_card)
        txn.put(b"c1\0" + b"\xcc" * 32, b"c1\0nobody", db=by_card)
    env.close()
    problems = {(p.check, p.key, p.detail) for p in scan_store(path).problems}
    assert ("card-key", "c1/t2", "record missing from by_card") in problems
    assert ("card-key", "c1/nobody", "by_card entry for a missing record") in problems


# ---- one effective reversal per original -----------------------------------------------------------------


async def test_reversal_claim_holds_its_original_and_completion_settles_it(store_backend: Any) -> None:
    async with store_backend.open() as store:
        await approved_original(store)
        assert (await store.claim(reversal("r1", "o1"))).outcome is ClaimOutcome.NEW
        held = await store.get("c1", "o1")
        assert held is not None and held.reversed_by == "r1"
        second = await store.claim(reversal("r2", "o1"))
        assert second.outcome is ClaimOutcome.ORIGINAL_REFUSED and second.refusal is OriginalRefusal.IN_PROGRESS
        assert await store.get("c1", "r2") is None  # refused: nothing written
        assert (await store.claim(reversal("r1", "o1"))).outcome is ClaimOutcome.IN_FLIGHT  # its own resubmission
        await store.complete("c1", "r1", done())
        marked = await store.get("c1", "o1")
        assert marked is not None and marked.reversed_by == "r1"
        assert [e.what for e in marked.events][-2:] == ["reversal-claimed", reversals.REVERSED_EVENT]
        after = await store.claim(reversal("r2", "o1"))
        assert after.outcome is ClaimOutcome.ORIGINAL_REFUSED and after.refusal is OriginalRefusal.ALREADY_REVERSED
        assert after.record.reversed_by == "r1"


async def test_a_reversal_stored_for_forwarding_counts_and_a_declined_one_releases(store_backend: Any) -> None:
    async with store_backend.open() as store:
        await approved_original(store, "o1")
        await approved_original(store, "o2")
        await store.claim(reversal("r1", "o1"))
        await store.complete("c1", "r1", done(outcome=reversals.STORED_FOR_FORWARDING))
        refused = await store.claim(reversal("r1b", "o1"))
        assert refused.refusal is OriginalRefusal.ALREADY_REVERSED
        # Declined (say 12): nothing was reversed, so the original is free for another attempt.
        await store.claim(reversal("r2", "o2"))
        await store.complete("c1", "r2", done(approved=False, code="12", outcome="declined"))
        released = await store.get("c1", "o2")
        assert (
            released is not None and released.reversed_by == "" and released.events[-1].what == "reversal-not-effective"
        )
        assert (await store.claim(reversal("r3", "o2"))).outcome is ClaimOutcome.NEW


async def test_two_reversals_at_the_same_moment_one_is_claimed(store_backend: Any) -> None:
    async with store_backend.open() as store:
        await approved_original(store)
        claims: list[Any] = []

        async def one(i: int) -> None:
            claims.append(await store.claim(reversal(f"r{i}", "o1")))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        assert [c.outcome for c in claims].count(ClaimOutcome.NEW) == 1
        assert {c.refusal for c in claims if c.outcome is not ClaimOutcome.NEW} == {OriginalRefusal.IN_PROGRESS}


@pytest.mark.parametrize(
    ("setup", "changes", "why"),
    [
        ("none", {}, OriginalRefusal.UNKNOWN),
        ("pending", {}, OriginalRefusal.IN_PROGRESS),
        ("reversal", {}, OriginalRefusal.IS_REVERSAL),
        ("declined", {}, OriginalRefusal.NOT_APPROVED),
        ("approved", {"amount": 1001}, OriginalRefusal.AMOUNT),
        ("approved", {"currency": "826"}, OriginalRefusal.AMOUNT),
        ("approved", {"terminal_id": "T2"}, OriginalRefusal.TERMINAL),
    ],
)
async def test_reversal_refusals_write_nothing(
    store_backend: Any, setup: str, changes: dict[str, Any], why: OriginalRefusal
) -> None:
    async with store_backend.open() as store:
        target = "o1"
        if setup == "pending":
            await store.claim(rec("o1"))
        elif setup == "declined":
            await store.claim(rec("o1"))
            await store.complete("c1", "o1", done(approved=False, code="05", outcome="declined"))
        elif setup == "approved":
            await approved_original(store)
        elif setup == "reversal":
            await approved_original(store)
            await store.claim(reversal("r0", "o1"))
            await store.complete("c1", "r0", done())
            target = "r0"
        before = await store.get("c1", target)
        claim = await store.claim(reversal("r1", target, **changes))
        assert claim.outcome is ClaimOutcome.ORIGINAL_REFUSED and claim.refusal is why
        assert await store.get("c1", "r1") is None
        assert await store.get("c1", target) == before  # the original untouched


async def test_a_crash_between_claim_and_complete_leaves_the_hold_for_recovery(store_backend: Any) -> None:
    """The hold is in the claim's commit, the mark in the completion's: a worker dying in between leaves the
    reversal PENDING and its original held, and whoever completes the reversal (recovery) marks it."""
    async with store_backend.open() as store:
        await approved_original(store)
        await store.claim(reversal("r1", "o1"))
    async with store_backend.open() as store:  # "restarted"; recovery completes it (as its take-over would)
        held = await store.get("c1", "o1")
        assert held is not None and held.reversed_by == "r1"
        pending = await store.get("c1", "r1")
        assert pending is not None and pending.state is State.PENDING
        assert (await store.claim(reversal("r2", "o1"))).refusal is OriginalRefusal.IN_PROGRESS
        await store.complete("c1", "r1", done())
        assert (await store.claim(reversal("r2", "o1"))).refusal is OriginalRefusal.ALREADY_REVERSED
    if store_backend.name == "lmdb":
        assert scan_store(store_backend.path).ok
