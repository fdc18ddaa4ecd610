"""The pipeline thread (store/pg/pipeline.py) on a real cluster: batched statements keep each request's own
outcome, a failing statement fails only its request, results come back only once committed, and an outage is
DatabaseUnavailable for the batch and over once the database is back."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio

from cloudlayer.store.pg import rows
from cloudlayer.store.pg.database import DatabaseUnavailable
from cloudlayer.store.pg.ops import Op
from cloudlayer.store.pg.pipeline import Pipeline
from store_backends import PgBackend
from test_store_contract import completion, rec


@pytest.fixture
def pg(pg_database: Any) -> PgBackend:
    return PgBackend(pg_database)


def _sleep(seconds: float) -> Op[None]:
    """Keeps the thread busy while the next operations queue up behind it: they form one batch."""
    return Op("SELECT pg_sleep(%s)", (seconds,), lambda cur: None)


async def test_one_failing_statement_fails_only_its_own_request(pg: PgBackend, pg_database: Any) -> None:
    pipe = Pipeline(pg.settings)
    outcomes: dict[str, Any] = {}

    async def claim(tid: str) -> None:
        outcomes[tid] = await pipe.run(rows.claim_op(rec(tid)))

    async def bad() -> None:
        try:
            await pipe.run(Op("SELECT 1 / 0", (), lambda cur: cur.fetchone()))
        except psycopg.errors.DivisionByZero as e:
            outcomes["bad"] = e

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe.run, _sleep(0.5))
            await trio.sleep(0.2)  # the sleep is in the database: what follows queues into one batch
            for i in range(5):
                nursery.start_soon(claim, f"t{i}")
            nursery.start_soon(bad)
    finally:
        pipe.close()
    assert isinstance(outcomes.pop("bad"), psycopg.errors.DivisionByZero)
    assert outcomes == {f"t{i}": True for i in range(5)}
    with pg_database.connect() as conn:  # committed, each of them, despite their batch's failure
        count = conn.execute("SELECT count(*) FROM transactions WHERE state = 'PENDING'").fetchone()
    assert count == (5,)


async def test_batched_claims_and_completions_through_the_store(pg: PgBackend, pg_database: Any) -> None:
    """Concurrent requests through the store's pipeline: each sees its own answer, a replay the stored one."""
    assert pg.settings.pipeline
    async with pg.open() as store:

        async def one(tid: str) -> None:
            claim = await store.claim(rec(tid))
            assert claim.outcome.value == "NEW"
            done = await store.complete("c1", tid, completion())
            assert done.state.value == "COMPLETED" and done.sealed_request is None

        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(one, f"b{i}")
        assert (await store.claim(rec("b7"))).outcome.value == "REPLAY"
    with pg_database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM transactions WHERE state = 'COMPLETED'").fetchone()
    assert row == (64,)


async def test_outage_is_unavailable_then_over(pg: PgBackend, pg_cluster: Any) -> None:
    pipe = Pipeline(pg.settings)
    try:
        assert await pipe.run(rows.claim_op(rec("o1"))) is True
        pg_cluster.crash()
        try:
            with pytest.raises(DatabaseUnavailable) as e:
                await pipe.run(rows.claim_op(rec("o2")))
            assert "password" not in str(e.value).lower()
        finally:
            pg_cluster.restart()
        with trio.fail_after(30):
            while True:
                try:
                    assert await pipe.run(rows.claim_op(rec("o2"))) is True
                    break
                except DatabaseUnavailable:
                    await trio.sleep(0.2)
    finally:
        pipe.close()
