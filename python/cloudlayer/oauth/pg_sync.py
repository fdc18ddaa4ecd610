"""Keeps one worker's in-memory clients and keys equal to PostgreSQL's: NOTIFY, and a periodic refresh.

Migration 0005's triggers send `cloudlayer_oauth` on every committed change to the client or key rows. One
connection per worker listens (in a thread, as store/pg/listener.py does) and wakes the refresher, which reads
both tables (a few rows: one round trip each) in a worker thread and installs them on the trio thread. Bounds:
- a change is used by every host within the NOTIFY latency (milliseconds), normally;
- a notification lost with a connection is covered twice: every (re)connection of the listener refreshes,
  and the refresher runs every `oauth.shared_refresh` seconds whatever happens: the worst case;
- PostgreSQL unreachable: the copy in memory keeps serving (tokens are issued and verified as of the last
  refresh), refreshes are retried every `shared_refresh` seconds, and the outage is logged once.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import structlog
import trio

from ..store.pg.database import Conn, Database, DatabaseUnavailable
from . import pg_rows
from .clients import Client
from .keys import KeyFileError
from .pg_clients import PgClientRegistry
from .pg_keys import PgKeyRing

log = structlog.get_logger(__name__)

CHANNEL = "cloudlayer_oauth"
LISTEN_TICK = 0.5  # seconds the listening thread blocks before it looks at its stop flag
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0


def read_all(conn: Conn) -> tuple[dict[str, Client], list[pg_rows.KeyRow]]:
    return pg_rows.load_clients(conn), pg_rows.load_keys(conn)


class OAuthSync:
    def __init__(
        self,
        db: Database,
        clients: PgClientRegistry,
        keys: PgKeyRing,
        listen_kwargs: dict[str, Any],
        refresh_interval: float,
    ) -> None:
        self._db = db
        self._clients = clients
        self._keys = keys
        self._listen_kwargs = listen_kwargs
        self._interval = refresh_interval
        self._changed = trio.Event()
        self._failing = False
        self._opened = False
        self.connected = False  # the listener's connection is up (tests, diagnostics)
        self.refreshes = 0
        self.notifications = 0
        keys.on_unknown_kid(self.poke)

    def poke(self) -> None:
        self._changed.set()

    def refresh_sync(self) -> None:
        """One blocking refresh (start-up, the dev client): raises if the database or the active key fails."""
        if not self._opened:
            self._db.open_sync()
            self._opened = True
        clients, keys = self._db.call_sync(read_all)
        self._install(clients, keys)

    def _install(self, clients: dict[str, Client], keys: list[pg_rows.KeyRow]) -> None:
        self._keys.install(keys)  # first: it refuses a key set without a usable active key
        self._clients.install(clients)
        self.refreshes += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self._opened:
            await self._db.open()
            self._opened = True
        clients, keys = await self._db.call(read_all)  # the first copy must load: no serving without it
        self._install(clients, keys)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen_in_thread)
            task_status.started()
            while True:
                with trio.move_on_after(self._interval):
                    await self._changed.wait()
                self._changed = trio.Event()  # before reading: a change committed meanwhile refreshes again
                await self._refresh()

    async def _refresh(self) -> None:
        try:
            clients, keys = await self._db.call(read_all)
            self._install(clients, keys)
        except (DatabaseUnavailable, KeyFileError) as e:
            if not self._failing:
                log.warning("oauth_refresh_failed", error=str(e), serving="the clients and keys last read")
            self._failing = True
            return
        if self._failing:
            log.info("oauth_refresh_recovered")
        self._failing = False

    async def _listen_in_thread(self) -> None:
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        try:
            await trio.to_thread.run_sync(self._listen, token, stop, abandon_on_cancel=True)
        finally:
            stop.set()
            self.connected = False

    def _listen(self, token: trio.lowlevel.TrioToken, stop: threading.Event) -> None:
        backoff = RECONNECT_MIN
        connected = False
        while not stop.is_set():
            try:
                with psycopg.connect(self._db.settings.dsn, autocommit=True, **self._listen_kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    connected = self.connected = True
                    backoff = RECONNECT_MIN
                    trio.from_thread.run_sync(self.poke, trio_token=token)  # whatever changed while not listening
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_TICK):
                            self.notifications += 1
                            trio.from_thread.run_sync(self.poke, trio_token=token)
            except trio.RunFinishedError:
                return
            except psycopg.Error as e:
                if connected:
                    log.warning("oauth_listener_disconnected", error=type(e).__name__)
            connected = self.connected = False
            stop.wait(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)
