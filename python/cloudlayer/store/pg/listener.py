"""Wake duplicates waiting on a transaction that another host completes: LISTEN/NOTIFY with a fallback poll.

The store sends `cloudlayer_completed` with `client_id US transaction_id` once a row a waiter marked has
turned COMPLETED (store/pg/rows.py complete, migration 0007), to every listening connection. One connection per worker
process listens (not a pooled one: a pooled connection goes back to the pool between calls) in a worker
thread that returns to check its stop flag every LISTEN_TICK, and hands each notification to trio.

A notification can be missed (the listening connection drops; PostgreSQL restarts): waiters also poll, every
`fallback_poll` seconds at most, and every waiter is woken whenever the listener (re)connects.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import structlog
import trio

log = structlog.get_logger(__name__)

CHANNEL = "cloudlayer_completed"
LISTEN_TICK = 0.5  # seconds the listening thread blocks before it looks at its stop flag
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0


def key_of(client_id: str, transaction_id: str) -> str:
    return f"{client_id}\x1f{transaction_id}"


class CompletionListener:
    def __init__(self, dsn: str, connect_kwargs: dict[str, Any]) -> None:
        self._dsn = dsn
        self._kwargs = connect_kwargs
        self._waiters: dict[str, trio.Event] = {}
        self.connected = False
        self.notifications = 0

    def event_for(self, key: str) -> trio.Event:
        """The event set when `key` may have completed; take it BEFORE reading the record, so that a
        completion between the read and the wait is not missed."""
        ev = self._waiters.get(key)
        if ev is None:
            ev = self._waiters[key] = trio.Event()
        return ev

    def wake(self, key: str) -> None:
        ev = self._waiters.pop(key, None)
        if ev is not None:
            ev.set()

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for ev in waiters.values():
            ev.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        task_status.started()
        try:
            # abandon_on_cancel: a cancelled run returns at once; the thread sees `stop` within LISTEN_TICK,
            # closes its connection and ends.
            await trio.to_thread.run_sync(self._listen, token, stop, abandon_on_cancel=True)
        finally:
            stop.set()
            self.connected = False

    def _listen(self, token: trio.lowlevel.TrioToken, stop: threading.Event) -> None:
        backoff = RECONNECT_MIN
        while not stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    backoff = RECONNECT_MIN
                    trio.from_thread.run_sync(self.wake_all, trio_token=token)  # anything missed meanwhile
                    while not stop.is_set():
                        for n in conn.notifies(timeout=LISTEN_TICK):
                            self.notifications += 1
                            trio.from_thread.run_sync(self.wake, n.payload, trio_token=token)
            except trio.RunFinishedError:
                return
            except psycopg.Error as e:
                if self.connected:
                    log.warning("store_listener_disconnected", error=type(e).__name__)
            self.connected = False
            stop.wait(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)
