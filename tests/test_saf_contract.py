"""One behavioural suite for both SafStore backends: the LMDB file and PostgreSQL (real file, real server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlayer.acquirer.messages import reversal_for
from cloudlayer.acquirer.saf import entry_key
from cloudlayer.acquirer.saf_store import SafStore
from cloudlayer.acquirer.types import AcquirerRequest
from cloudlayer.sealing import Sealer
from saf_backends import saf_factory, stored_bytes
from test_acquirer_support import PAN, SEALER, request

OTHER_KEY = Sealer(bytes(range(1, 33)))


@pytest.fixture(params=("lmdb", "postgres"))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[Sealer], SafStore]]]:
    pg = request.getfixturevalue("pg_database") if request.param == "postgres" else None
    opened: list[SafStore] = []

    def make(sealer: Sealer = SEALER) -> SafStore:
        q = saf_factory(request.param, tmp_path, pg)(sealer)
        opened.append(q)
        return q

    request.node.stash_pg = pg
    yield request.param, make
    for q in opened:
        q.close()


def rev(stan: int) -> AcquirerRequest:
    return reversal_for(request(stan), "0200", "123456")


def test_add_is_idempotent_and_one_owner_leases_an_entry(backend: Any) -> None:
    _, make = backend
    a, b = make(), make()
    assert a.add(rev(1), "timeout") is True
    assert b.add(rev(1), "timeout") is False
    assert len(a) == 1
    claimed = a.claim_due("host-a", lease_seconds=30)
    assert [(i.request.pan, i.attempts) for i in claimed] == [(PAN, 0)]
    assert claimed[0].request == rev(1)
    assert b.claim_due("host-b", lease_seconds=30) == []
    a.release(claimed[0].key, "host-a", retry_in=0, error="link down")
    again = b.claim_due("host-b", lease_seconds=30)
    assert [i.key for i in again] == [entry_key(rev(1))]
    assert [e.last_error for _, e in b.entries()] == ["link down"]


def test_record_attempt_only_for_the_lease_holder_and_counted(backend: Any) -> None:
    _, make = backend
    a, b = make(), make()
    a.add(rev(2), "timeout", attempts=1)
    [item] = a.claim_due("host-a", lease_seconds=30)
    assert item.attempts == 1
    assert b.record_attempt(item.key, "host-b") is False
    assert a.record_attempt(item.key, "host-a") is True
    a.release(item.key, "host-b", retry_in=0, error="not mine")  # not the holder: nothing changes
    assert a.claim_due("host-a", lease_seconds=30) == []
    a.release(item.key, "host-a", retry_in=0, error="timeout")
    [again] = b.claim_due("host-b", lease_seconds=30)
    assert again.attempts == 2


def test_an_expired_lease_is_due_for_another_owner_and_fences_the_old_one(backend: Any) -> None:
    _, make = backend
    a, b = make(), make()
    a.add(rev(3), "timeout")
    [item] = a.claim_due("host-a", lease_seconds=0.4)
    assert b.claim_due("host-b", lease_seconds=30) == []
    time.sleep(0.6)
    [taken] = b.claim_due("host-b", lease_seconds=30)
    assert taken.key == item.key
    assert a.record_attempt(item.key, "host-a") is False  # the paused owner must not send
    assert b.record_attempt(item.key, "host-b") is True


def test_acknowledged_leaves_a_tombstone_until_purged(backend: Any) -> None:
    _, make = backend
    a = make()
    key = entry_key(rev(4))
    assert a.known(key) is False
    a.add(rev(4), "timeout")
    assert a.known(key) is True
    [item] = a.claim_due("host-a", lease_seconds=30)
    a.delete(item.key)
    assert len(a) == 0 and a.entries() == []
    assert a.known(key) is True
    assert a.add(rev(4), "timeout") is False  # already reversed: not queued again
    assert a.next_due() is None
    assert a.purge_done(time.time() - 3600) == 0
    assert a.purge_done(time.time() + 5) == 1
    assert a.known(key) is False


def test_card_data_is_stored_only_sealed(backend: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kind, make = backend
    a = make()
    a.add(rev(5), "timeout")
    [(_, entry)] = a.entries()
    assert entry.stan == "000005" and entry.terminal_id == "TERM0001" and entry.original_mti == "0200"
    stored = stored_bytes(kind, tmp_path, request.node.stash_pg)
    assert stored
    for needle in (PAN.encode(), PAN.encode().hex().encode(), bytes.fromhex("0123456789ABCDEF").hex().encode()):
        assert needle not in stored


def test_an_entry_that_cannot_be_opened_is_kept_for_an_operator(backend: Any) -> None:
    _, make = backend
    make().add(rev(6), "timeout")
    wrong = make(OTHER_KEY)
    assert wrong.claim_due("host-a", lease_seconds=30) == []
    assert len(wrong.entries()) == 1
    assert [e.last_error for _, e in wrong.entries()] == ["cannot open sealed entry"]
    assert make().claim_due("host-b", lease_seconds=30) == []  # parked for an hour, not dropped


def test_retry_time_next_due_and_make_all_due(backend: Any) -> None:
    _, make = backend
    a = make()
    assert a.next_due() is None
    a.add(rev(7), "timeout")
    due = a.next_due()
    assert due is not None and due <= time.time() + 1.0
    [item] = a.claim_due("host-a", lease_seconds=30)
    a.release(item.key, "host-a", retry_in=3600, error="timeout")
    assert a.claim_due("host-a", lease_seconds=30) == []
    due = a.next_due()
    assert due is not None and due > time.time() + 3000
    assert a.make_all_due() == 1
    assert len(a.claim_due("host-b", lease_seconds=30)) == 1


def test_concurrent_claimers_each_take_every_entry_once(backend: Any) -> None:
    _, make = backend
    queues = [make() for _ in range(3)]
    for stan in range(100, 140):
        queues[0].add(rev(stan), "timeout")
    taken: list[list[bytes]] = [[] for _ in queues]

    def drain(i: int) -> None:
        while True:
            items = queues[i].claim_due(f"host-{i}", lease_seconds=30, limit=3)
            if not items:
                return
            taken[i].extend(item.key for item in items)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(queues))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [k for keys in taken for k in keys]
    assert sorted(every) == sorted(entry_key(rev(s)) for s in range(100, 140))
