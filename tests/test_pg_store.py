"""PostgreSQL store only: several stores (workers, hosts) on one database, the database's clock for owners,
card data only sealed in the tables, deadlines on every call, the integrity check. The behaviour both backends
share is tests/test_store_contract.py."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec
import pytest
import trio

from cloudlayer.sealing import Sealer
from cloudlayer.store.pg import rows
from cloudlayer.store.pg.database import Database, DatabaseUnavailable
from cloudlayer.store.pg.integrity import scan_database
from cloudlayer.store.types import ClaimOutcome, State, TransactionRecord
from store_backends import PgBackend
from test_store_contract import completion, rec

PAN = b"4761739001010119"  # a Luhn-valid test PAN


@pytest.fixture
def pg(pg_database: Any) -> PgBackend:
    return PgBackend(pg_database)


async def test_wait_completed_sees_another_store_complete(pg: PgBackend) -> None:
    """Two stores on one data set (two workers, or two hosts on one PostgreSQL): the waiter on one sees the
    other's completion."""
    async with pg.open() as owner, pg.open() as other:
        await owner.claim(rec())
        got: list[TransactionRecord] = []

        async def waiter() -> None:
            with trio.fail_after(10):
                got.append(await other.wait_completed("c1", "t1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.2)
            assert got == []
            await owner.complete("c1", "t1", completion(b"first answer"))
        assert got[0].response_body == b"first answer"


async def test_next_ids_unique_across_stores(pg: PgBackend) -> None:
    """Two stores on one data set (two workers or two hosts) never hand out the same STAN/RRN."""
    async with pg.open() as a, pg.open() as b:
        got: list[tuple[str, str]] = []

        async def take(store: Any) -> None:
            for _ in range(1100):
                got.append(await store.next_ids())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, a)
            nursery.start_soon(take, b)
    assert len({rrn for _, rrn in got}) == len(got) == 2200


async def test_identical_claims_across_two_stores_make_one_new(pg: PgBackend) -> None:
    async with pg.open() as a, pg.open(owner_id="host-b:0123456789ab:77:1") as b:
        outcomes: list[ClaimOutcome] = []

        async def claim(store: Any) -> None:
            outcomes.append((await store.claim(rec())).outcome)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(claim, a if i % 2 else b)
    assert sorted(outcomes) == [ClaimOutcome.IN_FLIGHT] * 39 + [ClaimOutcome.NEW]


async def test_waiter_is_woken_by_notify_not_by_polling(pg: PgBackend) -> None:
    async with pg.open() as owner, pg.open() as other:
        await owner.claim(rec())
        with trio.fail_after(10):
            while not other._listener.connected:  # noqa: ASYNC110 - a flag the listening thread sets
                await trio.sleep(0.01)
        woke: list[float] = []

        async def waiter() -> None:
            await other.wait_completed("c1", "t1")
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.5)  # the waiter's fallback poll has backed off to 0.5 s by now
            before = other._listener.notifications
            t0 = trio.current_time()
            await owner.complete("c1", "t1", completion())
        assert other._listener.notifications > before
        assert woke[0] - t0 < 0.4  # the NOTIFY, not a poll, woke it


async def test_only_an_awaited_completion_notifies_and_after_its_commit(pg: PgBackend) -> None:
    """Migration 0007: nobody waiting, no NOTIFY (its global lock stays off the hot path); a waiter's mark makes
    the completion notify, from a transaction of its own once the completion has committed."""
    async with pg.open() as owner, pg.open() as other:
        with trio.fail_after(10):
            while not other._listener.connected:  # noqa: ASYNC110 - a flag the listening thread sets
                await trio.sleep(0.01)
        await owner.claim(rec())
        await owner.complete("c1", "t1", completion())
        await owner.claim(rec("t2"))
        with pg.database.connect() as conn:
            conn.execute("LISTEN cloudlayer_completed")
            await other._call(lambda c: rows.mark_awaited(c, "c1", "t2"))
            await other._call(lambda c: rows.mark_awaited(c, "c1", "t1"))  # COMPLETED: left alone
            assert conn.execute("SELECT transaction_id, awaited FROM transactions ORDER BY 1").fetchall() == [
                ("t1", False),
                ("t2", True),
            ]
            await owner.complete("c1", "t2", completion())
            got = await trio.to_thread.run_sync(lambda: [n.payload for n in conn.notifies(timeout=2.0, stop_after=1)])
            assert got == ["c1\x1ft2"]  # t1's completion (unawaited) sent none
            assert await trio.to_thread.run_sync(lambda: [n.payload for n in conn.notifies(timeout=0.5)]) == []


async def test_a_failed_notify_does_not_fail_the_committed_completion(pg: PgBackend) -> None:
    async with pg.open() as store:
        await store.claim(rec())
        await store._call(lambda c: rows.mark_awaited(c, "c1", "t1"))
        with pg.database.cluster.admin(pg.database.name) as conn:  # the NOTIFY after the commit now fails
            conn.execute("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
        done = await store.complete("c1", "t1", completion())
        assert done.state is State.COMPLETED
        got = await store.get("c1", "t1")
        assert got is not None and got.state is State.COMPLETED


async def test_owner_on_another_host_lives_by_its_lease_on_the_database_clock(pg: PgBackend) -> None:
    remote = "other-host:0123456789ab:4242:99"
    async with pg.open(owner_id=remote) as ghost:
        await ghost.claim(rec())  # run() takes the lease before it starts serving
    async with pg.open() as store:
        assert (await store.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT  # its lease runs
        with pg.database.connect() as conn:  # the remote host stops renewing: its lease runs out
            conn.execute("UPDATE owners SET lease_until = now() - interval '1 second' WHERE owner = %s", (remote,))
        assert (await store.claim(rec())).outcome is ClaimOutcome.ORPHANED
        await store.heartbeat()  # refreshes the leases owner_alive() answers from
        assert not store.owner_alive(remote)
        assert not store.owner_alive("garbage")  # not an owner id and no heartbeat
        taken = await store.take_over("c1", "t1", remote)
        assert taken is not None and taken.owner == store.owner_id
        with pg.database.connect() as conn:
            assert conn.execute("SELECT epoch FROM transactions").fetchone() == (1,)  # counted for fencing


async def test_card_data_only_sealed_in_the_database(pg: PgBackend) -> None:
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal(b"PAN=" + PAN + b";track2=" + PAN + b"=2912", b"c1/t1")
    async with pg.open() as store:
        await store.claim(rec(sealed_request=sealed))
        got = await store.get("c1", "t1")
        assert got is not None and got.sealed_request == sealed  # stored as given: ciphertext
        with pg.database.connect() as conn:
            dump = b"".join(bytes(r[0]) for r in conn.execute("SELECT convert_to(t::text, 'UTF8') FROM transactions t"))
        assert PAN not in dump and PAN.hex().encode() not in dump
        await store.complete("c1", "t1", completion())
        with pg.database.connect() as conn:
            assert conn.execute("SELECT sealed_request FROM transactions").fetchone() == (None,)
            with pytest.raises(Exception, match="completed_holds_no_card_data"):
                conn.execute("UPDATE transactions SET sealed_request = '\\x00'")  # the schema refuses it too


async def test_integrity_check_on_the_database(pg: PgBackend) -> None:
    async with pg.open() as store:
        await store.claim(rec("done"))
        await store.complete("c1", "done", completion())
        await store.claim(rec("pending", sealed_request=b"sealed"))

    def scan(**kw: Any) -> Any:
        db = Database(pg.settings)
        db.open_sync()
        try:
            return db.call_sync(lambda conn: scan_database(conn, describe="test", **kw))
        finally:
            db.close()

    ok = scan()
    assert ok.ok and (ok.records, ok.completed, ok.pending) == (2, 1, 1)
    with pg.database.connect() as conn:
        conn.execute("UPDATE transactions SET owner = 'gone-host:0:1:1' WHERE transaction_id = 'pending'")
        conn.execute("UPDATE transactions SET rrn = 'X' WHERE transaction_id = 'done'")
        conn.execute("UPDATE transactions SET response_body = convert_to('pan 4761739001010119', 'UTF8')")
    bad = scan(now=time.time() + 3600)
    found = {(p.check, p.key) for p in bad.problems}
    assert ("orphan", "c1/pending") in found
    assert ("columns", "c1/done") in found
    assert ("card-data", "c1/done") in found
    assert all("4761739001010119" not in p.detail for p in bad.problems)


async def test_every_call_has_a_deadline(pg: PgBackend) -> None:
    slow = msgspec.structs.replace(pg.settings, statement_timeout=0.2, pool_max=1, pool_timeout=0.05)
    db = Database(slow)
    await db.open()
    try:
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await db.call(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        assert time.monotonic() - t0 < 2

        async def hold() -> None:
            await db.call(lambda conn: conn.execute("SELECT pg_sleep(0.18)"))

        async with trio.open_nursery() as nursery:  # the only connection busy: the second caller waits 0.05 s
            nursery.start_soon(hold)
            await trio.sleep(0.02)
            with pytest.raises(DatabaseUnavailable, match="no free connection"):
                await db.call(lambda conn: conn.execute("SELECT 1"))
    finally:
        db.close()


async def test_unreachable_database_fails_the_store_cleanly(pg: PgBackend) -> None:
    from pg_cluster import free_port

    gone = msgspec.structs.replace(
        pg.settings, dsn=f"host=127.0.0.1 port={free_port()} dbname=x user=y", connect_timeout=1.0, pool_timeout=1.0
    )
    from cloudlayer.config import StoreConfig
    from cloudlayer.store.pg.store import PgStore

    store = PgStore(gone, StoreConfig())
    try:
        refused = pytest.RaisesExc(DatabaseUnavailable, match=r"PostgreSQL 127\.0\.0\.1:\d+/x: .*refused")
        with pytest.RaisesGroup(refused):
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
        assert not store.writable()
        with pytest.raises(RuntimeError, match="not open"):
            await store.claim(rec())
    finally:
        store.close()


def test_record_columns_round_trip() -> None:

    r = rec(sealed_request=b"s", card_key=b"\xcc" * 32, reversed_by="r9")
    blob = rows.claim_blob(r)
    back = rows.to_record(("PENDING", "me", None, b"s", 0, b"", "", False, None, "", 0, [], blob, "r9"))
    assert back == msgspec.structs.replace(r, owner="me", events=[])
    assert back.state is State.PENDING and isinstance(back, TransactionRecord)
    # The hold lives in its column only: the claim-time blob never carries one.
    assert rows.to_record(("PENDING", "me", None, b"s", 0, b"", "", False, None, "", 0, [], blob, "")).reversed_by == ""
