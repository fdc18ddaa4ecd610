"""The `replayed` events of records' timelines, written in batches off the replay's path.

A replay is a read: it answers from the stored bytes without a write. Each replay is counted at once by the
`cloudlayer_replays` metric and logged in its request line (`replay: true`); its timeline entry is noted here in
memory and written with the other replays of the same second, one store write per replayed record per flush
(`replayed`, detail `xN` when N replays of that record fell in the same flush) riding the store's group commit.
Not durable: a crash loses at most the last `FLUSH_INTERVAL` of timeline entries and replay counts, which
nothing decides on (the answer replayed is the stored one either way); so does stopping the host.
"""

from __future__ import annotations

import time
from typing import Final

import structlog
import trio

from ..store.types import Event, StoreUnavailable, TransactionStore

log = structlog.get_logger(__name__)

FLUSH_INTERVAL: Final = 1.0  # seconds between two flushes
MAX_PENDING: Final = 10_000  # distinct records noted per flush; past it, only the metric and log line count
_WRITES_AT_ONCE: Final = 64  # concurrent store writes per flush (the LMDB writer's group_commit_max)


class ReplayNotes:
    def __init__(self, store: TransactionStore, *, interval: float = FLUSH_INTERVAL) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[tuple[str, str], list[float]] = {}  # key -> [count, time of the latest]
        self.dropped = 0  # replays not noted (MAX_PENDING reached): counted by the metric only

    def note(self, client_id: str, transaction_id: str) -> None:
        """On the event loop, no await: remember one replay for the next flush."""
        entry = self._pending.get((client_id, transaction_id))
        if entry is not None:
            entry[0] += 1
            entry[1] = time.time()
        elif len(self._pending) < MAX_PENDING:
            self._pending[client_id, transaction_id] = [1, time.time()]
        else:
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # No last flush on stop: the store's writer stops with the same cancellation, and waiting on it
        # would only delay shutdown. What is lost is at most one interval's notes, as in a crash.
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if self.dropped:
            log.warning("replay_notes_dropped", replays=self.dropped, max_pending=MAX_PENDING)
            self.dropped = 0
        items = list(pending.items())
        for i in range(0, len(items), _WRITES_AT_ONCE):
            async with trio.open_nursery() as nursery:
                for (client_id, transaction_id), (count, at) in items[i : i + _WRITES_AT_ONCE]:
                    nursery.start_soon(self._write, client_id, transaction_id, int(count), at)

    async def _write(self, client_id: str, transaction_id: str, count: int, at: float) -> None:
        event = Event(at, "replayed", f"x{count}" if count > 1 else "")
        try:
            await self._store.add_events(client_id, transaction_id, event, replays=count)
        except StoreUnavailable as e:  # an outage: expected, said in one line (no traceback for a known cause)
            log.warning("replay_event_failed", transaction_id=transaction_id, replays=count, error=str(e))
        except Exception:  # bookkeeping only: the replays themselves were answered
            log.exception("replay_event_failed", transaction_id=transaction_id, replays=count)
