"""The store-and-forward loop that both built-in connectors run over their `SafStore` (docs/connectors.md).

Each pass purges old tombstones (hourly), leases the entries that are due to this owner while the link is
usable and delivers them concurrently (the connector's `deliver` sends the 0400/0401 or the HTTPS reversal),
or sleeps until the earliest entry is due, at most `retry_max`, or until `wake()` (a reversal was queued, the
link came up). The connector owns the nursery this runs in.

It also counts the requests that may still queue a reversal (`using`), so that a stopping connector closes
the queue only once they are done (`wait_drained`): closing it under them would lose those reversals.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

from .saf import DONE_RETENTION, SafItem
from .saf_store import SafStore


class SafForwarder:
    def __init__(self) -> None:
        self._wakeup = trio.Event()
        self._users = 0
        self._drained: trio.Event | None = None

    def wake(self) -> None:
        self._wakeup.set()

    @contextmanager
    def using(self) -> Iterator[None]:
        """Around a request that may queue a reversal."""
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._drained is not None:
                self._drained.set()

    async def wait_drained(self, within: float) -> None:
        """Until no request is `using` the queue, at most `within` seconds."""
        if self._users:
            self._drained = trio.Event()
            with trio.move_on_after(within):
                await self._drained.wait()

    async def run(
        self,
        saf: SafStore,
        owner: str,
        *,
        lease: float,
        retry_max: float,
        ready: Callable[[], bool],
        deliver: Callable[[SafItem], Awaitable[None]],
    ) -> None:
        next_purge = 0.0
        while True:
            self._wakeup = trio.Event()
            if time.time() >= next_purge:
                await trio.to_thread.run_sync(saf.purge_done, time.time() - DONE_RETENTION)
                next_purge = time.time() + 3600.0
            if ready():
                items = await trio.to_thread.run_sync(saf.claim_due, owner, lease)
                if items:
                    async with trio.open_nursery() as nursery:
                        for item in items:
                            nursery.start_soon(deliver, item)
                    continue
            next_due = await trio.to_thread.run_sync(saf.next_due)
            wait = retry_max if next_due is None else next_due - time.time()
            with trio.move_on_after(min(max(wait, 0.01), retry_max)):
                await self._wakeup.wait()
