"""The store's background duty (store/housekeeping.py): the heartbeat, which on PostgreSQL is the lease renewal,
never waits behind a purge. A purge of a million records takes longer than a lease; renewals held up behind it
lost a busy, live worker its lease (and restarted it). The scheduler alone is under test here, on trio's mock
clock: the store's purge and heartbeat are the two calls it schedules."""

from __future__ import annotations

import trio

from cloudlayer.config import StoreConfig
from cloudlayer.store.housekeeping import run_housekeeping


class _SlowPurge:
    def __init__(self) -> None:
        self.beats: list[float] = []
        self.purges: list[tuple[float, float]] = []

    async def purge(self, older_than: float) -> int:
        started = trio.current_time()
        await trio.sleep(30.0)  # many chunks behind traffic
        self.purges.append((started, trio.current_time()))
        return 1

    async def heartbeat(self) -> None:
        self.beats.append(trio.current_time())


async def test_the_heartbeat_keeps_its_beat_while_a_long_purge_runs(autojump_clock: trio.testing.MockClock) -> None:
    store = _SlowPurge()
    cfg = StoreConfig(purge_interval=60.0)
    with trio.move_on_after(100.0):
        await run_housekeeping(store, cfg, lambda: 1e9, beat=2.0)
    assert len(store.purges) == 2  # at 0-30 and again at 60-90: every purge_interval from each start
    assert store.purges[1][0] - store.purges[0][0] == 60.0
    gaps = [b - a for a, b in zip(store.beats, store.beats[1:], strict=False)]
    assert gaps and max(gaps) <= 2.0  # renewed every beat, during both purges too
    assert len(store.beats) >= 50


async def test_a_failing_purge_or_heartbeat_is_logged_and_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls = {"purge": 0, "heartbeat": 0}

    class _Failing:
        async def purge(self, older_than: float) -> int:
            calls["purge"] += 1
            raise OSError("disk")

        async def heartbeat(self) -> None:
            calls["heartbeat"] += 1
            raise OSError("database")

    with trio.move_on_after(10.0):
        await run_housekeeping(_Failing(), StoreConfig(purge_interval=3.0), lambda: 1e9, beat=1.0)
    assert calls["purge"] >= 3 and calls["heartbeat"] >= 9
