"""The TransactionStore contract, run against every backend (LMDB and PostgreSQL, tests/store_backends.py):
every claim outcome, completion, lookups, purge, bounded timelines, ids, bad input. Backend-specific tests:
tests/test_store.py (LMDB), tests/test_pg_store.py (PostgreSQL)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from cloudlayer.config import StoreConfig
from cloudlayer.store.owner import OwnerId, current_owner_id
from cloudlayer.store.types import (
    ClaimOutcome,
    Completion,
    Event,
    InvalidRecord,
    NotOwner,
    OwnerDied,
    State,
    TransactionRecord,
)
from store_backends import StoreBackend, rec


def completion(body: bytes = b'{"responseCode":"00"}') -> Completion:
    return Completion(
        response_status=200,
        response_body=body,
        response_code="00",
        approved=True,
        authorisation_code="A1B2C3",
        outcome="approved",
        events=(Event(1.0, "answered", "00"),),
    )


def dead_owner() -> str:
    """Our own pid with a different start time: what a recycled pid looks like."""
    me = OwnerId.parse(current_owner_id())
    assert me is not None
    return str(OwnerId(me.host, me.boot, me.pid, me.start + 1))


async def test_new_then_in_flight_then_replay_and_conflict(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        assert store.writable()
        first = await store.claim(rec(sealed_request=b"sealed"))
        assert first.outcome is ClaimOutcome.NEW
        assert first.record.owner == store.owner_id and first.record.state is State.PENDING
        assert first.record.created_at > 0

        again = await store.claim(rec())
        assert again.outcome is ClaimOutcome.IN_FLIGHT  # our own live claim
        assert again.record.sealed_request == b"sealed"
        assert (await store.claim(rec(fp=b"\x02" * 32))).outcome is ClaimOutcome.CONFLICT

        done = await store.complete("c1", "t1", completion())
        assert done.state is State.COMPLETED
        assert done.sealed_request is None  # card data erased on completion
        assert done.events[-1].what == "answered"

        replay = await store.claim(rec())
        assert replay.outcome is ClaimOutcome.REPLAY
        assert replay.record.response_body == b'{"responseCode":"00"}'
        assert replay.record.sealed_request is None
        conflict = await store.claim(rec(fp=b"\x02" * 32))
        assert conflict.outcome is ClaimOutcome.CONFLICT
        assert conflict.record.state is State.COMPLETED  # the existing record, unchanged

        # Same transactionId under another client is another transaction.
        assert (await store.claim(rec(client="c2"))).outcome is ClaimOutcome.NEW


async def test_concurrent_identical_claims_make_one_new(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        outcomes: list[ClaimOutcome] = []

        async def claim() -> None:
            outcomes.append((await store.claim(rec())).outcome)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(claim)
    assert sorted(outcomes) == [ClaimOutcome.IN_FLIGHT] * 19 + [ClaimOutcome.NEW]


async def test_orphaned_and_take_over(store_backend: StoreBackend) -> None:
    dead = dead_owner()
    async with store_backend.open(owner_id=dead) as ghost:
        assert (await ghost.claim(rec())).outcome is ClaimOutcome.NEW
    async with store_backend.open() as store:
        assert not store.owner_alive(dead)
        assert store.owner_alive(store.owner_id)
        claim = await store.claim(rec())
        assert claim.outcome is ClaimOutcome.ORPHANED and claim.record.owner == dead
        with pytest.raises(NotOwner):
            await store.complete("c1", "t1", completion())  # not ours until taken over

        won = await store.take_over("c1", "t1", dead)
        assert won is not None and won.owner == store.owner_id
        assert won.events[-1].what == "taken-over"
        assert await store.take_over("c1", "t1", dead) is None  # only one winner
        assert (await store.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT
        assert (await store.complete("c1", "t1", completion())).state is State.COMPLETED
        with pytest.raises(NotOwner):
            await store.complete("c1", "t1", completion())  # already completed
        with pytest.raises(NotOwner):
            await store.complete("c1", "nope", completion())


async def test_abandoned_claim_counts_as_orphaned(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        await store.claim(rec())
        store.abandon("c1", "t1")
        claim = await store.claim(rec())
        assert claim.outcome is ClaimOutcome.ORPHANED
        taken = await store.take_over("c1", "t1", store.owner_id)
        assert taken is not None
        assert (await store.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT  # ours again, alive


async def test_take_over_refuses_a_live_owner(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        await store.claim(rec())
        assert await store.take_over("c1", "t1", store.owner_id) is None


async def test_durable_across_reopen_and_lookups(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        stan, rrn = await store.next_ids()
        await store.claim(rec(stan=stan, rrn=rrn))
        await store.complete("c1", "t1", completion())
        await store.add_events("c1", "t1", Event(2.0, "replayed"), replays=1)
        await store.add_events("c1", "missing", Event(2.0, "replayed"))  # unknown: ignored, no error
        await store.claim(rec("t2"))
        before = await store.get("c1", "t1")
    async with store_backend.open() as store:
        after = await store.get("c1", "t1")
        assert after == before and after is not None
        assert after.replays == 1 and after.events[-1].what == "replayed"
        assert [r.transaction_id for r in await store.find_by_rrn(rrn)] == ["t1"]
        assert [r.transaction_id for r in await store.find_by_terminal_stan("T1", stan)] == ["t1"]
        assert await store.find_by_rrn("000000000000") == []
        assert [r.transaction_id for r in await store.list_since(0)] == ["t1", "t2"]
        assert [r.transaction_id for r in await store.list_since(0, limit=1)] == ["t1"]
        assert [r.client_id for r in await store.find_by_transaction_id("t2")] == ["c1"]
        pending = await store.get("c1", "t2")
        assert pending is not None and pending.state is State.PENDING
        assert await store.get("c1", "never") is None


async def test_wait_completed_local_and_owner_died(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        await store.claim(rec())
        results: list[TransactionRecord] = []

        async def waiter() -> None:
            results.append(await store.wait_completed("c1", "t1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            assert results == []
            await store.complete("c1", "t1", completion())
        assert results[0].state is State.COMPLETED
        assert results[0].response_body == completion().response_body
        with pytest.raises(KeyError):
            await store.wait_completed("c1", "unknown")

    dead = dead_owner()
    async with store_backend.open(owner_id=dead) as ghost:
        await ghost.claim(rec("t9"))
    async with store_backend.open() as store:
        with pytest.raises(OwnerDied):
            await store.wait_completed("c1", "t9")


async def test_purge_removes_only_old_completed(store_backend: StoreBackend) -> None:
    now = [1_000_000.0]
    async with store_backend.open(clock=lambda: now[0]) as store:
        for tid in ("old", "old-pending", "new"):
            await store.claim(rec(tid, rrn=f"RRN-{tid}", stan="000001"))
        await store.complete("c1", "old", completion())
        now[0] += 100 * 86_400
        await store.complete("c1", "new", completion())
        assert await store.purge(now[0] - 90 * 86_400) == 1
        assert await store.get("c1", "old") is None
        assert await store.find_by_rrn("RRN-old") == []
        assert {r.transaction_id for r in await store.find_by_terminal_stan("T1", "000001")} == {"old-pending", "new"}
        assert (await store.get("c1", "old-pending")) is not None  # PENDING is never purged
        assert (await store.get("c1", "new")) is not None
        # Even "everything older than the future" leaves PENDING alone.
        assert await store.purge(now[0] + 1) == 1
        assert [r.transaction_id for r in await store.list_since(0)] == ["old-pending"]


async def test_housekeeping_purges_on_start(store_backend: StoreBackend) -> None:
    now = [1_000_000.0]
    cfg = StoreConfig(map_size_mb=4, retention_days=1.0, purge_interval=3600.0)
    async with store_backend.open(cfg, clock=lambda: now[0]) as store:
        await store.claim(rec())
        await store.complete("c1", "t1", completion())
    now[0] += 2 * 86_400
    async with store_backend.open(cfg, clock=lambda: now[0]) as store:
        with trio.fail_after(5):
            while await store.get("c1", "t1") is not None:  # noqa: ASYNC110 - polling the store, no event to wait on
                await trio.sleep(0.01)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "12"}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": 10**13}, "amount"),
        ({"fingerprint": b"short"}, "fingerprint"),
        ({"fingerprint": "not-bytes" * 4}, "fingerprint"),
        ({"transaction_id": ""}, "transaction_id"),
        ({"transaction_id": "x" * 200}, "transaction_id"),
        ({"transaction_id": "a\0b"}, "transaction_id"),
        ({"client_id": 7}, "client_id"),
        ({"merchant_id": "m" * 1000}, "merchant_id"),
        ({"masked_pan": "4761739001010119"}, "masked_pan"),
        ({"state": State.COMPLETED}, "state"),
        ({"emv_redacted": b"\0" * 40_000}, "emv_redacted"),
        ({"events": ["not an event"]}, "events"),
        ({"response_body": b"{}"}, "response"),
        ({"rrn": "12\x0034"}, "rrn"),
    ],
)
async def test_bad_claims_are_rejected_cleanly(
    store_backend: StoreBackend, changes: dict[str, Any], field: str
) -> None:
    async with store_backend.open() as store:
        bad = rec()
        for name, value in changes.items():
            setattr(bad, name, value)  # msgspec does not check assignments: a buggy caller can do this
        with pytest.raises(InvalidRecord, match=field) as info:
            await store.claim(bad)
        assert "4761739001010119" not in str(info.value)  # never echoes the value
        assert await store.list_since(0) == []
        assert (await store.claim(rec())).outcome is ClaimOutcome.NEW  # the store is fine


async def test_bad_completion_and_events_rejected(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        await store.claim(rec())
        with pytest.raises(InvalidRecord, match="response_status"):
            await store.complete("c1", "t1", msgspec.structs.replace(completion(), response_status=42))
        with pytest.raises(InvalidRecord, match="response_body"):
            await store.complete("c1", "t1", msgspec.structs.replace(completion(), response_body=b"x" * 40_000))
        with pytest.raises(InvalidRecord):
            await store.claim("not a record")
        with pytest.raises(InvalidRecord, match="events"):
            await store.add_events("c1", "t1", "garbage")
        got = await store.get("c1", "t1")
        assert got is not None and got.state is State.PENDING


async def test_events_stay_bounded(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        await store.claim(rec(events=[Event(0.0, "received")]))
        for i in range(300):
            await store.add_events("c1", "t1", Event(float(i), "replayed"), replays=1)
        got = await store.get("c1", "t1")
        assert got is not None and got.replays == 300
        assert len(got.events) == 256
        assert got.events[0].what == "received" and got.events[-1].at == 299.0


async def test_next_ids_format_and_restart(store_backend: StoreBackend) -> None:
    seen: set[str] = set()
    for _ in range(2):
        async with store_backend.open() as store:
            pairs = [await store.next_ids() for _ in range(1200)]  # crosses a block boundary
        for stan, rrn in pairs:
            assert len(stan) == 6 and stan.isdigit() and stan != "000000"
            assert len(rrn) == 12 and rrn.isdigit()
        rrns = {rrn for _, rrn in pairs}
        assert len(rrns) == len(pairs) and not rrns & seen  # a restart never reuses an id
        seen |= rrns


async def test_writer_stopped_and_closed(store_backend: StoreBackend) -> None:
    async with store_backend.open() as store:
        pass
    assert not store.writable()
    with pytest.raises(RuntimeError, match="closed"):
        await store.claim(rec())
