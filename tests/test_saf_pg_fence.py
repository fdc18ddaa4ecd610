"""The SAF queue's fenced insert on a real PostgreSQL (store/pg/saf.py, docs/postgres.md "A reversal queued by
an owner that lost its claim"): a reversal queued for a claim lands only while the transaction's record is
still the queuing owner's, checked under the record's row lock, so a take-over and the insert are serialized
whichever comes first; a reversal kept in memory through an outage is dropped if the claim changed hands."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import pytest
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.messages import reversal_for
from cloudlayer.acquirer.saf import entry_key
from cloudlayer.acquirer.types import ClaimFence
from cloudlayer.store.pg.saf import ReversalNotDurable
from cloudlayer.store.types import StoreUnavailable
from saf_backends import migrated, pg_saf
from test_acquirer_support import SEALER, acquirer_config, request, running_simulator
from test_saf_pg import _refuse_connections

OWNER_A, OWNER_B = "host-a:boot:11:1", "host-b:boot:22:2"


def _pending(pg_database: Any, transaction_id: str, owner: str) -> None:
    """A PENDING record under `owner` (only the columns the fence reads matter here)."""
    with pg_database.connect() as conn:
        conn.execute(
            "INSERT INTO transactions (client_id, transaction_id, fingerprint, state, owner, created_at, record)"
            " VALUES ('client-1', %s, %s, 'PENDING', %s, 0, '\\x00')",
            (transaction_id, bytes(32), owner),
        )


def _rows(pg_database: Any) -> set[str]:
    with pg_database.connect() as conn:
        return {str(r[0]) for r in conn.execute("SELECT stan FROM saf_entries").fetchall()}


def _fence(transaction_id: str, owner: str) -> ClaimFence:
    return ClaimFence("client-1", transaction_id, owner)


def test_a_claims_reversal_lands_only_while_the_claim_is_its_owners(pg_database: Any) -> None:
    q = pg_saf(migrated(pg_database), SEALER)
    try:
        _pending(pg_database, "t-ours", OWNER_A)
        _pending(pg_database, "t-taken", OWNER_B)
        ours, taken = reversal_for(request(1), "0200", "123456"), reversal_for(request(2), "0200", "123456")
        assert q.add(ours, "timeout", fence=_fence("t-ours", OWNER_A)) is True
        assert q.add(ours, "timeout", fence=_fence("t-ours", OWNER_A)) is False  # idempotent, as unfenced
        assert q.add(taken, "timeout", fence=_fence("t-taken", OWNER_A)) is False  # B holds it: dropped
        assert q.add(taken, "timeout", fence=_fence("t-gone", OWNER_A)) is False  # no such record: dropped
        assert q.known(entry_key(taken)) is False
        assert _rows(pg_database) == {"000001"}
        # Unfenced (an approval the store did not record, owed whoever holds the record): lands as before.
        assert q.add(taken, "fenced approval") is True
        assert _rows(pg_database) == {"000001", "000002"}
    finally:
        q.close()


def test_a_take_over_in_progress_holds_the_insert_which_then_sees_the_new_owner(pg_database: Any) -> None:
    q = pg_saf(migrated(pg_database), SEALER)
    _pending(pg_database, "t-1", OWNER_A)
    outcome: list[bool] = []
    try:
        with pg_database.connect() as taker, taker.transaction():
            # What rows.take_over does: one UPDATE of the record's row (epoch + 1), here left uncommitted.
            taker.execute(
                "UPDATE transactions SET owner = %s, epoch = epoch + 1 WHERE client_id = 'client-1'"
                " AND transaction_id = 't-1' AND state = 'PENDING' AND owner = %s",
                (OWNER_B, OWNER_A),
            )
            worker = threading.Thread(
                target=lambda: outcome.append(
                    q.add(reversal_for(request(1), "0200", "123456"), "timeout", fence=_fence("t-1", OWNER_A))
                ),
                daemon=True,
            )
            worker.start()
            time.sleep(1.0)
            assert worker.is_alive() and outcome == []  # waits on the row lock: neither side guesses
        worker.join(30)  # the take-over committed: the insert re-reads the row and finds owner B
        assert outcome == [False]
        assert _rows(pg_database) == set()
    finally:
        q.close()


def test_a_reversal_kept_through_an_outage_is_written_for_its_claim_and_dropped_for_a_taken_one(
    pg_database: Any,
) -> None:
    settings = msgspec.structs.replace(migrated(pg_database), connect_timeout=1.0, pool_timeout=1.0)
    q = pg_saf(settings, SEALER)
    _pending(pg_database, "t-kept", OWNER_A)
    _pending(pg_database, "t-lost", OWNER_A)
    try:
        q.add(reversal_for(request(9), "0200", "123456"), "warm the pool")
        _refuse_connections(pg_database, True)
        try:
            kept, lost = reversal_for(request(1), "0200", "123456"), reversal_for(request(2), "0200", "123456")
            for r, tid in ((kept, "t-kept"), (lost, "t-lost")):
                with pytest.raises(ReversalNotDurable):  # kept in memory, owed; not durable yet
                    q.add(r, "timeout", fence=_fence(tid, OWNER_A))
            assert len(q) == 3
        finally:
            _refuse_connections(pg_database, False)
        with pg_database.connect() as conn:  # meanwhile another host took "t-lost" over (A's lease ran out)
            conn.execute(
                "UPDATE transactions SET owner = %s, epoch = epoch + 1 WHERE transaction_id = 't-lost'", (OWNER_B,)
            )
        deadline = time.monotonic() + 60
        while len(q) > 2 and time.monotonic() < deadline:  # the loop's next passes write the backlog
            q.next_due()
            time.sleep(0.2)
        assert _rows(pg_database) == {"000009", "000001"}  # t-lost's reversal dropped: B decides
        assert len(q) == 2
    finally:
        q.close()


async def test_a_timeout_reversal_that_cannot_be_made_durable_fails_the_send_as_store_unavailable(
    pg_database: Any,
) -> None:
    """The acquirer's answer is lost and the database is gone when the timeout reversal is queued: the send
    raises StoreUnavailable (the flow answers 503 and leaves the record PENDING), never OutcomeUnknown (which
    records "reversed" on a reversal that only this process's memory holds)."""
    settings = msgspec.structs.replace(migrated(pg_database), connect_timeout=1.0, pool_timeout=1.0)
    saf = pg_saf(settings, SEALER)
    cfg = msgspec.structs.replace(acquirer_config(), timeout=0.5)
    async with running_simulator() as sim:
        connector = Iso8583Connector(cfg, saf, SEALER, host="127.0.0.1", port=sim.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(connector.run)
            with trio.fail_after(5):
                await connector.wait_ready()
            await trio.to_thread.run_sync(saf.next_due)  # the pool is open and in use
            await trio.to_thread.run_sync(_refuse_connections, pg_database, True)
            try:
                sim.set_faults({"drop_next": 1})
                with pytest.raises(StoreUnavailable):
                    await connector.send(request(7), fence=_fence("t-7", OWNER_A))
                assert len(saf) == 1  # kept, and written (fenced) once the database answers
            finally:
                await trio.to_thread.run_sync(_refuse_connections, pg_database, False)
            await connector.aclose()
