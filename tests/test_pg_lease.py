"""The PostgreSQL store's lease (store/pg/lease.py, docs/postgres.md "Leases and fencing") on a real cluster:
renewal never revives an expired lease, the local bound is earlier than the database's, a lost lease is final,
completion is fenced by owner, epoch and a live lease, and a taker waits out the dead lease plus the acquirer
timeout before it recovers. Config keys are checked at load. Whole hosts paused mid-transaction:
tests/test_pg_lease_hosts.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.saf import SafQueue
from cloudlayer.config import ConfigError, StoreConfig, load_config
from cloudlayer.store.owner import OwnerId, boot_id, local_host, local_owner_alive
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.lease import Lease, boottime
from cloudlayer.store.pg.store import LeaseGone
from cloudlayer.store.types import ClaimOutcome, Completion, LeaseLost, NotOwner, State, StoreUnavailable
from cloudlayer.transactions import fencing
from store_backends import DEFAULT_CFG, PgBackend
from test_acquirer_support import SEALER, acquirer_config, request
from test_saf_pg import _refuse_connections
from test_store_contract import completion, rec

REMOTE = "other-host:0123456789ab:4242:99"  # an owner on another host: /proc cannot judge it, only its lease


@pytest.fixture
def pg(pg_database: Any) -> PgBackend:
    return PgBackend(pg_database)


def lease_left(pg: PgBackend, owner: str) -> float | None:
    with pg.database.connect() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM lease_until - now())::float8 FROM owners WHERE owner = %s", (owner,)
        ).fetchone()
    return None if row is None else float(row[0])


def expire(pg: PgBackend, owner: str, seconds_ago: float = 1.0) -> None:
    """The owner stopped renewing `seconds_ago` before its lease's end, as a paused host does."""
    with pg.database.connect() as conn:
        conn.execute(
            "UPDATE owners SET lease_until = now() - make_interval(secs => %s) WHERE owner = %s", (seconds_ago, owner)
        )


def epoch_of(pg: PgBackend, tid: str = "t1") -> int:
    with pg.database.connect() as conn:
        row = conn.execute("SELECT epoch FROM transactions WHERE transaction_id = %s", (tid,)).fetchone()
    assert row is not None
    return int(row[0])


# ---- the lease and its local bound --------------------------------------------------------------------


async def test_the_local_bound_falls_before_the_databases_lease_end(pg: PgBackend) -> None:
    async with pg.open(send_window=1.5) as store:
        await store.heartbeat()
        local_left = store.send_guard.deadline - boottime()
        db_left = lease_left(pg, store.owner_id)
        assert db_left is not None
        # deadline = (moment the renewal was sent) + ttl - margin: at least the margin before the database's end.
        assert local_left <= db_left - 1.5 + 0.05
        assert local_left > DEFAULT_CFG.lease_ttl - 1.5 - 5.0  # and it was really renewed
        assert store.send_guard.may_send()


def test_lease_renewal_never_revives_an_expired_lease_and_the_bound_is_from_the_sending_moment(
    pg: PgBackend,
) -> None:
    now = [100.0]
    lease = Lease("host-x:0123456789ab:1:1", ttl=30.0, margin=3.0, monotonic=lambda: now[0])
    db = Database(msgspec.structs.replace(pg.settings, pool_min=1, pool_max=1))
    db.open_sync()
    try:
        assert not lease.may_send()  # not registered yet: nothing may be sent
        held, leases = db.call_sync(lease.renew)
        assert held and lease.deadline == 100.0 + 30.0 - 3.0
        assert 29.0 < leases[lease.owner] <= 30.0
        now[0] = 126.9
        assert lease.may_send()
        now[0] = 127.0  # the local bound, whatever the database says
        assert not lease.may_send() and lease.expired_locally()
        now[0] = 110.0
        expire(pg, lease.owner)
        held, _ = db.call_sync(lease.renew)
        assert not held  # expired by the database's clock: the UPDATE matched nothing
        left = lease_left(pg, lease.owner)
        assert left is not None and left < 0  # and it stays expired
        assert lease.deadline == 127.0  # the bound did not move either
    finally:
        db.close()


async def test_a_renewal_that_finds_the_lease_expired_gives_the_owner_id_up_for_good(pg: PgBackend) -> None:
    lost: list[float] = []
    async with pg.open(send_window=0.2, on_lease_lost=lambda: lost.append(trio.current_time())) as store:
        assert (await store.claim(rec())).outcome is ClaimOutcome.NEW
        assert store.send_guard.may_send() and store.writable()
        t0 = trio.current_time()
        expire(pg, store.owner_id)
        await store.heartbeat()  # (or the store's own renewal loop, whichever comes first)
        with trio.fail_after(10):
            while not lost:  # noqa: ASYNC110 - the callback has no event to wait on
                await trio.sleep(0.05)
        assert not store.send_guard.may_send() and not store.writable()
        left = lease_left(pg, store.owner_id)
        assert left is not None and left <= 0  # not renewed
        assert lost and lost[0] - t0 >= 1.2  # restart asked for after the in-flight grace (send_window + 1)
        with pytest.raises(LeaseGone):
            await store.claim(rec("t2"))
        assert issubclass(LeaseGone, StoreUnavailable)  # 503 Retry-After, as any store outage
        with pytest.raises(LeaseLost):  # its claim cannot be completed any more either
            await store.complete("c1", "t1", completion())
        await store.heartbeat()  # a lost lease stays lost
        assert not store.send_guard.may_send()
        assert len(lost) == 1


async def test_past_the_local_bound_the_guard_closes_and_the_lease_is_ended_in_the_database(pg: PgBackend) -> None:
    """A worker paused past its local bound (SIGSTOP) does not renew on waking: it gives the id up, and ends the
    lease at once in the database so that takers need not wait for it to run out."""
    cfg = StoreConfig(map_size_mb=4, max_map_size_mb=8, lease_ttl=3.0, lease_renew=60.0)
    async with pg.open(cfg, send_window=1.0) as store:
        assert store.send_guard.may_send()
        with trio.fail_after(10):
            while store.send_guard.may_send():  # noqa: ASYNC110 - the guard is a clock comparison
                await trio.sleep(0.02)
        # Past ttl - margin = 2 s after the renewal was sent: the database's lease still runs for about 1 s.
        db_left = lease_left(pg, store.owner_id)
        assert db_left is not None and db_left > 0
        await store.heartbeat()
        db_left = lease_left(pg, store.owner_id)
        assert db_left is not None and db_left <= 0
        assert not store.send_guard.may_send()


# ---- fencing ------------------------------------------------------------------------------------------


async def test_complete_is_fenced_by_a_stale_epoch(pg: PgBackend) -> None:
    async with pg.open() as store:
        await store.claim(rec())
        with pg.database.connect() as conn:  # a take-over happened meanwhile (same owner string, new epoch)
            conn.execute("UPDATE transactions SET epoch = epoch + 1")
        with pytest.raises(LeaseLost):
            await store.complete("c1", "t1", completion())
        got = await store.get("c1", "t1")
        assert got is not None and got.state is State.PENDING  # nothing recorded


async def test_complete_is_fenced_once_the_owners_lease_ran_out_even_if_nobody_took_over(pg: PgBackend) -> None:
    async with pg.open(owner_id=REMOTE) as store:
        await store.claim(rec())
        expire(pg, REMOTE)
        with pytest.raises(LeaseLost):
            await store.complete("c1", "t1", completion())


async def test_the_old_owners_late_completion_is_refused_and_the_takers_stands(pg: PgBackend) -> None:
    async with pg.open(owner_id=REMOTE) as old, pg.open(send_window=0.5) as taker:
        await old.claim(rec())
        assert (await taker.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT  # its lease runs: no take-over
        assert await taker.take_over("c1", "t1", REMOTE) is None
        expire(pg, REMOTE, seconds_ago=5.0)
        assert (await taker.claim(rec())).outcome is ClaimOutcome.ORPHANED
        taken = await taker.take_over("c1", "t1", REMOTE)
        assert taken is not None and taken.owner == taker.owner_id and epoch_of(pg) == 1
        with pytest.raises(LeaseLost):
            await old.complete("c1", "t1", completion(b"late"))
        done = await taker.complete("c1", "t1", completion(b"recovered"))
        assert done.response_body == b"recovered"
        with pytest.raises(NotOwner):  # and nobody overwrites the recorded answer
            await old.complete("c1", "t1", completion(b"late"))
        got = await taker.get("c1", "t1")
        assert got is not None and got.response_body == b"recovered"


async def test_the_taker_waits_the_dead_lease_end_plus_the_acquirer_timeout(pg: PgBackend) -> None:
    async with pg.open(owner_id=REMOTE) as old:  # claims, then its host pauses (stops renewing)
        await old.claim(rec())
        await old.claim(rec("t2"))
    async with pg.open(send_window=1.5) as taker:
        expire(pg, REMOTE, seconds_ago=0.2)  # ended 0.2 s ago: 1.3 s of the acquirer timeout still to run
        t0 = trio.current_time()
        taken = await taker.take_over("c1", "t1", REMOTE)
        waited = trio.current_time() - t0
        assert taken is not None
        assert 1.0 <= waited < 6.0
        expire(pg, REMOTE, seconds_ago=3.0)  # long enough ago: anything it sent has landed
        t0 = trio.current_time()
        assert await taker.take_over("c1", "t2", REMOTE) is not None
        assert trio.current_time() - t0 < 0.5


async def test_a_local_owner_that_is_gone_is_taken_over_at_once_whatever_its_lease(pg: PgBackend) -> None:
    """/proc says the process is gone (kill -9): it sends nothing more, so neither its live lease nor the
    acquirer timeout is waited for (crash recovery stays prompt)."""
    dead = str(OwnerId(local_host(), boot_id(), _dead_pid(), 1))
    async with pg.open(owner_id=dead) as crashed:
        await crashed.claim(rec())
    left = lease_left(pg, dead)
    assert left is not None and left > 10  # its lease runs on
    async with pg.open(send_window=5.0) as taker:
        assert (await taker.claim(rec())).outcome is ClaimOutcome.ORPHANED
        t0 = trio.current_time()
        assert await taker.take_over("c1", "t1", dead) is not None
        assert trio.current_time() - t0 < 2.0


async def test_a_key_given_up_here_then_claimed_by_another_host_is_not_taken_over_unawaited(pg: PgBackend) -> None:
    """A claim attempt that failed here in doubt marks the key abandoned; if another host then claimed it, that
    host's live claim is judged by its lease like any other, never taken over at once (no fence wait)."""
    async with pg.open(send_window=1.5) as here, pg.open(owner_id=REMOTE) as there:
        here.abandon("c1", "t1")
        assert (await there.claim(rec())).outcome is ClaimOutcome.NEW
        assert (await here.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT
        assert await here.take_over("c1", "t1", REMOTE) is None  # its lease runs
        assert epoch_of(pg) == 0


async def test_an_owner_under_our_hostname_with_another_boot_id_is_judged_by_its_lease(pg: PgBackend) -> None:
    """Cloned machines share a hostname and the initial PID namespace's inode: an owner id naming our host but
    another boot may be a live process elsewhere, so /proc does not judge it (it used to say "dead")."""
    twin = OwnerId(local_host(), "0" * 12 if boot_id() != "0" * 12 else "1" * 12, os.getpid(), 1)
    assert local_owner_alive(twin) is None
    async with pg.open(owner_id=str(twin)) as other, pg.open(send_window=1.5) as here:
        await other.claim(rec())
        assert (await here.claim(rec())).outcome is ClaimOutcome.IN_FLIGHT
        assert await here.take_over("c1", "t1", str(twin)) is None


def _dead_pid() -> int:
    pid = os.getpid() + 100_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


# ---- configuration --------------------------------------------------------------------------------------


def _load(tmp_path: Path, store: str, acquirer: str = "") -> Any:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o600)
    path = tmp_path / "c.toml"
    path.write_text(
        f'[store]\nbackend = "postgres"\npostgres_dsn = "host=db"\npostgres_password_file = "{pw}"\n{store}\n'
        f"[acquirer]\n{acquirer}\n"
    )
    return load_config(path, environ={})


@pytest.mark.parametrize(
    ("store", "acquirer", "key"),
    [
        ("lease_ttl = 30.0", "", "store.lease_ttl"),  # < 3 x 10 + 2
        ("lease_ttl = 9.9\nlease_renew = 1.0", "timeout = 3.0", "store.lease_ttl"),  # < 3 x 3 + 1
        ("lease_ttl = nan", "", "store.lease_ttl"),
        ("lease_ttl = inf", "", "store.lease_ttl"),
        ("lease_ttl = -40.0", "", "store.lease_ttl"),
        ('lease_ttl = "40"', "", "store.lease_ttl"),
        ("lease_renew = 0.0", "", "store.lease_renew"),
        ("lease_renew = -1.0", "", "store.lease_renew"),
        ("lease_renew = nan", "", "store.lease_renew"),
        ("lease_renew = 3601.0", "", "store.lease_renew"),
        ("lease_ttl = 1e9", "", "store.lease_ttl"),
    ],
)
def test_bad_lease_settings_stop_the_start_naming_the_key(tmp_path: Path, store: str, acquirer: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        _load(tmp_path, store, acquirer)
    assert "\n" not in str(info.value)


def test_lease_settings_at_their_bound_load(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "lease_ttl = 9.5\nlease_renew = 0.5", "timeout = 3.0")
    assert cfg.store.lease_ttl == 9.5 and cfg.store.lease_renew == 0.5
    defaults = _load(tmp_path, "")
    assert defaults.store.lease_ttl >= 3 * defaults.acquirer.timeout + defaults.store.lease_renew


# ---- a late owner holding an approval (transactions/fencing.py) --------------------------------------


def approved_completion(code: str = "A1B2C3") -> Completion:
    return msgspec.structs.replace(completion(b"approved"), approved=True, authorisation_code=code, response_code="00")


async def test_a_fenced_approval_is_reversed_only_when_the_record_does_not_carry_it(
    pg: PgBackend, tmp_path: Path
) -> None:
    connector = Iso8583Connector(acquirer_config(), tmp_path / "saf", SEALER, host="127.0.0.1", port=9)
    try:
        async with pg.open(owner_id=REMOTE) as old:
            tids = ("agrees", "agrees-other-code", "declined", "recovering", "ours")
            claimed = [(await old.claim(rec(tid))).record for tid in tids]
        expire(pg, REMOTE, seconds_ago=30.0)
        async with pg.open(send_window=0.5) as taker:
            for tid in ("agrees", "agrees-other-code", "declined", "recovering"):
                assert await taker.take_over("c1", tid, REMOTE) is not None
            await taker.complete("c1", "agrees", approved_completion())  # its inquiry found our approval
            # An acquirer may answer the repeat with another field 38 (or none): still the same authorization.
            await taker.complete("c1", "agrees-other-code", approved_completion("ZZ9999"))
            declined = msgspec.structs.replace(
                completion(b"declined"), approved=False, authorisation_code=None, response_code="91"
            )
            await taker.complete("c1", "declined", declined)  # its inquiry found nothing: reversed, declined
            stans = {
                "agrees": 1,
                "declined": 2,
                "recovering": 3,
                "ours": 4,
                "agrees-other-code": 5,
            }  # "ours": not taken over yet
            answers = {}
            for r in claimed:
                answers[r.transaction_id] = await fencing.after_fenced(
                    taker, connector, r, approved_completion(), lambda r: request(stans[r.transaction_id])
                )
        assert answers["agrees"] is not None and answers["agrees"].response_body == b"approved"
        assert answers["agrees-other-code"] is not None and answers["agrees-other-code"].response_body == b"approved"
        assert answers["declined"] is not None and answers["declined"].response_body == b"declined"
        assert answers["recovering"] is None  # still PENDING under its new owner: 503, it decides
        assert answers["ours"] is None  # still PENDING under the lost owner: its next owner's inquiry decides
        assert connector.reversals_queued == 1  # the approval the recorded decline does not carry
        saf = SafQueue(tmp_path / "saf", SEALER)
        try:
            assert [entry.stan for _key, entry in saf.entries()] == ["000002"]
        finally:
            saf.close()
    finally:
        await connector.aclose()


async def test_a_lease_lost_while_the_database_is_down_restarts_only_once_it_answers_again(pg: PgBackend) -> None:
    """Renewals fail, the local bound passes: the guard closes at once, but the worker asks for its restart only
    once the database answers (a replacement could not start without it), after ending the lease there."""
    pg.settings = msgspec.structs.replace(pg.settings, connect_timeout=1.0, pool_timeout=1.0)
    cfg = StoreConfig(map_size_mb=4, max_map_size_mb=8, lease_ttl=2.0, lease_renew=0.2)
    lost: list[float] = []
    async with pg.open(cfg, send_window=0.5, on_lease_lost=lambda: lost.append(trio.current_time())) as store:
        _refuse_connections(pg.database, True)
        try:
            with trio.fail_after(30):
                while store.send_guard.may_send():  # noqa: ASYNC110 - the guard is a clock comparison
                    await trio.sleep(0.05)
            await trio.sleep(3.0)  # several renewal rounds, each refused
            assert not lost and not store.writable()
        finally:
            _refuse_connections(pg.database, False)
        with trio.fail_after(60):
            while not lost:  # noqa: ASYNC110 - the callback has no event to wait on
                await trio.sleep(0.05)
        left = lease_left(pg, store.owner_id)
        assert left is not None and left <= 0  # ended, not renewed
        assert not store.send_guard.may_send()
