"""The supervisor's judgement of one heartbeat (worker.HeartbeatWatch) and the worker's tick (worker.beat),
over a real shared-memory counter from a spawn context."""

from __future__ import annotations

import multiprocessing

import trio
import trio.testing

from cloudlayer.worker import HeartbeatWatch, beat


def test_a_worker_that_never_ticks_is_hung_only_after_the_start_timeout() -> None:
    counter = multiprocessing.get_context("spawn").RawValue("Q", 0)
    watch = HeartbeatWatch(counter, 100.0, timeout=2.0, start_timeout=30.0)
    assert watch.silent_for(110.0) is None  # still starting: no tick yet, within the grace
    assert watch.silent_for(131.0) == 31.0


def test_a_ticking_worker_lives_and_a_silent_one_is_hung_after_the_timeout() -> None:
    counter = multiprocessing.get_context("spawn").RawValue("Q", 0)
    watch = HeartbeatWatch(counter, 0.0, timeout=2.0, start_timeout=30.0)
    for t in range(1, 20):
        counter.value += 1
        assert watch.silent_for(float(t)) is None
    assert watch.silent_for(21.0) is None  # 2 s without a tick: not yet more than the timeout
    assert watch.silent_for(21.5) == 2.5


async def test_beat_ticks_on_its_interval(autojump_clock: trio.testing.MockClock) -> None:
    counter = multiprocessing.get_context("spawn").RawValue("Q", (1 << 64) - 2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(beat, counter, 0.01)
        await trio.sleep(0.105)
        nursery.cancel_scope.cancel()
    assert counter.value == 9  # 11 ticks (at 0, 0.01 .. 0.1 s) from 2**64 - 2: wrapped, not overflowed
