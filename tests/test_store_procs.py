"""LmdbStore across real worker processes: atomic claims, SIGKILL orphans, cross-process waits, ids."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudlayer.config import StoreConfig
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.owner import OwnerId, local_owner_alive
from cloudlayer.store.types import ClaimOutcome, OwnerDied, State, TransactionRecord

# A worker process: opens the store, runs its writer, obeys stdin lines, prints one JSON line per answer.
WORKER = r"""
import json, sys, trio
from pathlib import Path
from cloudlayer.config import StoreConfig
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import Completion, TransactionRecord

def rec(tid):
    return TransactionRecord(client_id="c1", transaction_id=tid, fingerprint=b"\x01" * 32, amount=1)

def say(obj):
    print(json.dumps(obj), flush=True)

async def line():
    return (await trio.to_thread.run_sync(sys.stdin.readline)).strip()

async def main(path):
    store = LmdbStore(Path(path), StoreConfig(map_size_mb=8))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        say({"owner": store.owner_id})
        while cmd := await line():
            op, _, arg = cmd.partition(" ")
            if op == "race":
                keys = json.loads(arg)
                out = {}
                limit = trio.Semaphore(64)
                async def one(k):
                    async with limit:
                        out[k] = (await store.claim(rec(k))).outcome.value
                async with trio.open_nursery() as inner:
                    for k in keys:
                        inner.start_soon(one, k)
                say(out)
            elif op == "claim":
                say((await store.claim(rec(arg))).outcome.value)
            elif op == "complete":
                c = Completion(response_status=200, response_body=b"body-" + arg.encode(), response_code="00",
                               approved=True, authorisation_code="A1", outcome="approved")
                say((await store.complete("c1", arg, c)).state.value)
            elif op == "take_over":
                tid, dead = arg.split(" ", 1)
                got = await store.take_over("c1", tid, dead)
                say(got is not None)
            elif op == "fill":
                for i in range(int(arg)):
                    r = rec(f"fill-{i}")
                    r.emv_redacted = bytes(range(256)) * 64
                    await store.claim(r)
                say(store.map_size())
            elif op == "ids":
                say([await store.next_ids() for _ in range(int(arg))])
        nursery.cancel_scope.cancel()
    store.close()

trio.run(main, sys.argv[1])
"""


class Worker:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.owner: str = self.read()["owner"]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        assert text, "worker exited"
        return json.loads(text)

    def ask(self, line: str) -> Any:
        self.send(line)
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            assert self.proc.wait(timeout=10) == 0
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            assert f is not None
            f.close()


def rec(tid: str) -> TransactionRecord:
    return TransactionRecord(client_id="c1", transaction_id=tid, fingerprint=b"\x01" * 32, amount=1)


async def in_store(path: Path, fn: Any) -> Any:
    store = LmdbStore(path, StoreConfig(map_size_mb=8))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            result = await fn(store)
            nursery.cancel_scope.cancel()
        return result
    finally:
        store.close()


def test_claim_is_atomic_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    keys = [f"k{i}" for i in range(400)]
    workers = [Worker(path), Worker(path)]
    try:
        # Both are up with the env open; each claims every key, in opposite orders, at the same time.
        workers[0].send("race " + json.dumps(keys))
        workers[1].send("race " + json.dumps(keys[::-1]))
        results = [w.read() for w in workers]
    finally:
        for w in workers:
            w.stop()
    for k in keys:
        assert sorted([results[0][k], results[1][k]]) == ["IN_FLIGHT", "NEW"], k


async def test_sigkill_while_pending_orphans_and_one_take_over_wins(tmp_path: Path) -> None:
    path = tmp_path / "s"
    victim = Worker(path)
    assert victim.ask("claim t1") == "NEW"
    dead = victim.owner

    async def check_alive(store: LmdbStore) -> bool:
        return store.owner_alive(dead)

    assert await in_store(path, check_alive) is True
    victim.proc.send_signal(signal.SIGKILL)
    # Killed but not yet reaped (a zombie) already counts as dead.
    while (await in_store(path, check_alive)) is not False:  # noqa: ASYNC110 - SIGKILL lands asynchronously
        await trio.sleep(0.01)
    victim.kill()

    async def claim(store: LmdbStore) -> Any:
        return await store.claim(rec("t1"))

    claim_result = await in_store(path, claim)
    assert claim_result.outcome is ClaimOutcome.ORPHANED and claim_result.record.owner == dead

    racers = [Worker(path), Worker(path)]
    try:
        for w in racers:
            w.send(f"take_over t1 {dead}")
        won = [w.read() for w in racers]
        assert sorted(won) == [False, True]
        winner = racers[won.index(True)]
        assert winner.ask("complete t1") == "COMPLETED"
    finally:
        for w in racers:
            w.stop()

    async def get(store: LmdbStore) -> Any:
        return await store.get("c1", "t1")

    final = await in_store(path, get)
    assert final.state is State.COMPLETED and final.owner == winner.owner


async def test_wait_completed_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    other = Worker(path)
    try:
        assert other.ask("claim t1") == "NEW"
        assert other.ask("claim t2") == "NEW"

        async def wait_for_other(store: LmdbStore) -> Any:
            assert (await store.claim(rec("t1"))).outcome is ClaimOutcome.IN_FLIGHT
            async with trio.open_nursery() as nursery:
                done: list[Any] = []

                async def waiter() -> None:
                    done.append(await store.wait_completed("c1", "t1"))

                nursery.start_soon(waiter)
                await trio.sleep(0.05)  # let it poll a few times first; not a timing assertion
                assert done == []
                answer = await trio.to_thread.run_sync(other.ask, "complete t1")
                assert answer == "COMPLETED"
            return done[0]

        with trio.fail_after(20):
            got = await in_store(path, wait_for_other)
        assert got.state is State.COMPLETED and got.response_body == b"body-t1"

        async def wait_for_dead(store: LmdbStore) -> Any:
            outcome = "returned"

            async def waiter() -> None:
                nonlocal outcome
                try:
                    await store.wait_completed("c1", "t2")
                except OwnerDied:
                    outcome = "owner-died"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                await trio.to_thread.run_sync(os.kill, other.proc.pid, signal.SIGKILL)
            return outcome

        with trio.fail_after(20):
            assert await in_store(path, wait_for_dead) == "owner-died"
    finally:
        other.kill()


def test_next_ids_unique_across_processes_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s"
    seen: list[str] = []
    for _ in range(2):  # and again after both restart
        workers = [Worker(path), Worker(path)]
        try:
            for w in workers:
                w.send("ids 1500")
            for w in workers:
                seen += [rrn for _stan, rrn in w.read()]
        finally:
            for w in workers:
                w.stop()
    assert len(seen) == 6000 and len(set(seen)) == 6000


async def test_map_grown_by_another_process_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = LmdbStore(path, StoreConfig(map_size_mb=1, max_map_size_mb=1))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert (await store.claim(rec("mine"))).outcome is ClaimOutcome.NEW
            other = Worker(path)  # opens with an 8 MB map and writes ~3 MB: beyond our mapping
            try:
                grown = await trio.to_thread.run_sync(other.ask, "fill 200")
            finally:
                other.stop()
            assert grown == 8 * 1024 * 1024
            # Our reads and writes hit MDB_MAP_RESIZED and adopt the bigger map instead of failing.
            got = await store.get("c1", "fill-199")
            assert got is not None and len(got.emv_redacted) == 16_384
            assert (await store.claim(rec("fill-0"))).outcome is ClaimOutcome.ORPHANED  # its owner exited
            assert (await store.claim(rec("after"))).outcome is ClaimOutcome.NEW
            assert store.map_size() == 8 * 1024 * 1024
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_live_owner_in_another_pid_namespace_is_never_judged_dead_from_proc(tmp_path: Path) -> None:
    """Containers share the kernel (boot id) and may share a hostname, but not pids: a worker in another PID
    namespace must not be judged by our /proc (its pid means another process here, or none)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-Urpf", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged PID namespaces here")
    code = (
        "import sys; from cloudlayer.store.owner import current_owner_id as c; print(c(), flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [unshare, "-Urpf", "--mount-proc", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        owner = OwnerId.parse(child.stdout.readline().strip())
        assert owner is not None
        assert child.poll() is None  # alive while we judge it
        assert local_owner_alive(owner) is not False
    finally:
        child.communicate(input="", timeout=10)
