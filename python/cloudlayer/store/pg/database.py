"""PostgreSQL access for a trio program: psycopg 3's blocking driver and psycopg_pool from worker threads.

psycopg's own async API runs on asyncio only; under trio we run the blocking driver in `trio.to_thread`
threads, one pooled connection per call. Every call has a deadline at each step:
  - a free connection: waited for in trio (cancellable), at most `pool_timeout`, then DatabaseUnavailable;
  - connecting: libpq's `connect_timeout`; a dead peer mid-call: `tcp_user_timeout` and TCP keepalives;
  - every statement: the server's `statement_timeout` (set per connection), so no thread waits for ever.
A thread cannot be cancelled half-way, so a cancelled caller waits for its call to end (bounded as above):
the outcome of a write is therefore always known to the caller or to nobody, never half-applied.

Durability: `synchronous_commit = on` per connection, so a COMMIT returns only once its WAL is flushed
(PostgreSQL groups concurrent commits into one flush by itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import structlog
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from ..types import StoreUnavailable
from .settings import PgSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


class DatabaseUnavailable(StoreUnavailable):
    """PostgreSQL could not be reached, or did not answer within its deadline. The message names no secret."""


def connect_kwargs(settings: PgSettings, application_name: str) -> dict[str, Any]:
    """libpq parameters added to the DSN: the password from its file, deadlines, durable commits."""
    statement_ms = max(1, int(settings.statement_timeout * 1000))
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(settings.connect_timeout)),  # libpq takes whole seconds
        "application_name": application_name,
        "options": (
            f"-c statement_timeout={statement_ms} -c synchronous_commit=on "
            f"-c idle_in_transaction_session_timeout={2 * statement_ms}"
        ),
        # A peer that vanished (no RST) fails the call within the deadline instead of at TCP's ~15 minutes.
        "tcp_user_timeout": statement_ms + 1000,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    password = settings.password()
    if password is not None:
        kwargs["password"] = password
    return kwargs


def unavailable(settings: PgSettings, e: BaseException) -> DatabaseUnavailable:
    # psycopg's messages name host and port, never the password (it is not in the DSN); keep the first line.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DatabaseUnavailable(f"PostgreSQL {settings.describe()}: {first}")


class Database:
    """One connection pool per worker process (open it after fork: connections never cross a fork)."""

    def __init__(self, settings: PgSettings, *, application_name: str = "cloudlayer") -> None:
        self.settings = settings
        # Autocommit: a one-statement call is one round trip; several statements use conn.transaction().
        self._kwargs = {**connect_kwargs(settings, application_name), "autocommit": True}
        self.pool: ConnectionPool[Conn] = ConnectionPool(
            settings.dsn,
            kwargs=self._kwargs,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            open=False,
            timeout=settings.pool_timeout,
            name=application_name,
            reconnect_timeout=max(60.0, settings.connect_timeout * 4),
        )
        # Callers queue here, in trio, for one of the pool's connections: a thread is taken only with one.
        self._limiter = trio.CapacityLimiter(settings.pool_max)
        self._opened = False

    # ---- lifecycle -----------------------------------------------------------------------------------

    def open_sync(self) -> None:
        """Open the pool and wait for its first connections (blocking: the CLI, or a worker thread)."""
        try:
            self.pool.open(wait=True, timeout=self.settings.connect_timeout + self.settings.pool_timeout)
        except (PoolTimeout, psycopg.Error) as e:
            self.pool.close(timeout=1.0)
            raise unavailable(self.settings, self._why_not(e)) from None
        self._opened = True

    def _why_not(self, e: BaseException) -> BaseException:
        """The pool says only "initialization incomplete": one direct attempt tells the operator why (refused,
        authentication failed, no such database...), within connect_timeout."""
        if not isinstance(e, PoolTimeout):
            return e
        try:
            psycopg.connect(self.settings.dsn, **self._kwargs).close()
        except psycopg.Error as direct:
            return direct
        return e

    async def open(self) -> None:
        await trio.to_thread.run_sync(self.open_sync)

    def close(self) -> None:
        if not self.pool.closed:
            self.pool.close(timeout=5.0)

    # ---- calls ---------------------------------------------------------------------------------------

    def call_sync(self, fn: Callable[[Conn], T]) -> T:
        """Run fn on a pooled autocommit connection: each statement commits on its own; fn wraps several in
        `conn.transaction()` to make them atomic. Blocking: use `call` from trio code."""
        try:
            with self.pool.connection(timeout=self.settings.pool_timeout) as conn:
                return fn(conn)
        except (PoolTimeout, psycopg.OperationalError) as e:
            # OperationalError: connection lost, server shutting down, statement_timeout (QueryCanceled)...
            raise unavailable(self.settings, e) from None

    async def call(self, fn: Callable[[Conn], T]) -> T:
        with trio.move_on_after(self.settings.pool_timeout) as waited:
            await self._limiter.acquire()
        if waited.cancelled_caught:
            raise DatabaseUnavailable(
                f"PostgreSQL {self.settings.describe()}: no free connection within "
                f"store.postgres_pool_timeout={self.settings.pool_timeout}s"
            )
        try:
            return await trio.to_thread.run_sync(self.call_sync, fn)
        finally:
            self._limiter.release()
