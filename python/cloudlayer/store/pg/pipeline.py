"""One batching database thread per worker for the hot path's writes (claims, completions): psycopg pipeline mode.

Why: on the pool path (database.py) every statement is a hop into a trio worker thread and back, and up to
postgres_pool_max threads take the GIL from the event loop as they come and go. Here trio queues an `Op`
(store/pg/ops.py) and one thread sends everything queued in one pipeline: one round trip, one commit and one
wake of the event loop per batch, however many requests it carries.

A batch is ONE transaction (chosen over one transaction per operation, pipelined): a backend waits for each
commit's WAL flush before it reads the next message, so on one connection one transaction per operation is one
flush after another, a ceiling of 1/fsync commits per second per worker; one transaction per batch is one flush
for all of it, as the LMDB store's batching writer does. It keeps every operation's own guarantees because:
  - no result is handed back before the batch's COMMIT has returned (synchronous_commit = on: flushed), so a
    claim is NEW only once its PENDING row is durable (before any acquirer send), a completion only once its
    COMPLETED row is (before the reply);
  - a batch commits whole or not at all: nothing of it is half-applied. If a statement fails and the connection
    is still good (a deadlock between two batches, a constraint), each operation runs again alone, in its own
    transaction: one request's failure fails that request only;
  - the connection lost, the database unreachable or too slow (statement_timeout): the outcome is unknown, as
    for one statement on the pool path, and every operation of the batch raises DatabaseUnavailable (a claim
    then counts itself abandoned, store.py); the next batch reconnects;
  - the rows are distinct requests' rows; two claims of one key in one batch: the second sees the first's row
    (ON CONFLICT, rowcount 0) and looks it up on the pool path after the commit (IN_FLIGHT).
Row locks are held until the batch commits, so a concurrent duplicate on another worker waits that long.
A completion's NOTIFY (migration 0007) is sent after its batch has committed, in a write-free transaction of its
own: notifying inside the batch would hold the database-wide notify lock through the batch's flush.
Waiting is shielded, as on the pool path (a thread cannot be cancelled half-way): the outcome of a write is known
to its caller, and every step of the thread has a deadline (connect_timeout, statement_timeout, tcp_user_timeout).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, TypeVar

import psycopg
import structlog
import trio

from .database import Conn, connect_kwargs, unavailable
from .listener import CHANNEL
from .ops import Op
from .settings import PgSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
MAX_BATCH = 64  # as the LMDB writer: enough to share a flush, small enough to bound one batch's latency


class _Queued:
    __slots__ = ("done", "error", "op", "result", "token")

    def __init__(self, op: Op[Any]) -> None:
        self.op = op
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Pipeline:
    """The thread and its connection (opened by the thread, reopened after a failure); `close` ends both."""

    def __init__(self, settings: PgSettings, *, application_name: str = "cloudlayer-pipeline") -> None:
        self.settings = settings
        self._kwargs = {**connect_kwargs(settings, application_name), "autocommit": True}
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Conn | None = None
        self._closed = False

    async def run(self, op: Op[T]) -> T:
        """Queue `op`, wait for its batch to commit, and return its result (DatabaseUnavailable: unknown)."""
        if self._closed:
            raise RuntimeError("store is closed")
        if self._thread is None:
            # Owned by the store, not a nursery: it outlives no store (close joins it) and runs no trio code.
            self._thread = threading.Thread(target=self._serve, name="cloudlayer-pg-pipeline", daemon=True)
            self._thread.start()
        queued = _Queued(op)
        self._queue.put(queued)
        with trio.CancelScope(shield=True):
            await queued.done.wait()
        if queued.error is not None:
            raise queued.error
        result: T = queued.result
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.settings.statement_timeout + self.settings.connect_timeout + 5.0)

    # ---- the thread ----------------------------------------------------------------------------------

    def _serve(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._run(batch)
            except BaseException as e:  # a bug must not leave callers waiting for ever
                log.exception("store_pipeline_failed")
                for q in batch:
                    q.error = q.error or e
            self._deliver(batch)
        if self._conn is not None:
            self._conn.close()

    def _deliver(self, batch: list[_Queued]) -> None:
        for token in {q.token for q in batch}:  # one wake of each event loop per batch
            mine = [q for q in batch if q.token is token]
            try:
                token.run_sync_soon(_wake, mine)
            except trio.RunFinishedError:
                pass  # that event loop has ended: nobody waits

    def _connection(self) -> Conn:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = psycopg.connect(self.settings.dsn, **self._kwargs)
        return conn

    def _run(self, batch: list[_Queued]) -> None:
        try:
            conn = self._connection()
            try:
                with conn.pipeline(), conn.transaction():
                    cursors = [conn.execute(q.op.sql, q.op.params) for q in batch]
                for q, cur in zip(batch, cursors, strict=True):
                    q.result = q.op.read(cur)
            except psycopg.Error as e:
                if conn.broken or conn.closed or isinstance(e, psycopg.errors.QueryCanceled):
                    raise
                # Rolled back whole: each runs again alone, failing only itself.
                log.warning("store_pipeline_batch_retried_alone", error=type(e).__name__, operations=len(batch))
                for q in batch:
                    self._alone(conn, q)
        except psycopg.OperationalError as e:
            down = unavailable(self.settings, e)
            for q in batch:
                q.error = down
            return
        self._notify(conn, [q for q in batch if q.error is None])

    def _alone(self, conn: Conn, q: _Queued) -> None:
        try:
            q.result = q.op.run(conn)  # autocommit: its own transaction
        except psycopg.OperationalError as e:
            q.error = unavailable(self.settings, e)
        except psycopg.Error as e:
            q.error = e

    def _notify(self, conn: Conn, done: list[_Queued]) -> None:
        keys = [k for q in done if q.op.notify is not None and (k := q.op.notify(q.result)) is not None]
        if not keys:
            return
        try:
            with conn.pipeline():
                for key in keys:
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))
        except psycopg.Error as e:
            # The completions have committed: they must not be reported failed. Waiters find them by their poll.
            log.warning("store_completion_notify_failed", error=type(e).__name__)


def _wake(batch: list[_Queued]) -> None:
    for q in batch:
        q.done.set()
