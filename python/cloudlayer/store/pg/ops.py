"""A store statement split in two halves: what to send (SQL and parameters) and how to read its result.

psycopg's pipeline mode (store/pg/pipeline.py) sends many statements before reading any result, and reading one
forces a sync: so a statement that may be pipelined is an `Op`, sent by whoever runs it and read afterwards.
`run` does both at once on any connection (the pool path, a caller's transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .database import Conn, Cursor

T = TypeVar("T")


class Op(Generic[T]):
    """One statement and the reading of its result. `notify`: from the result, a key to NOTIFY once the
    statement has committed (migration 0007), or None."""

    __slots__ = ("notify", "params", "read", "sql")

    def __init__(
        self,
        sql: str,
        params: tuple[Any, ...],
        read: Callable[[Cursor], T],
        *,
        notify: Callable[[T], str | None] | None = None,
    ) -> None:
        self.sql = sql
        self.params = params
        self.read = read
        self.notify = notify

    def run(self, conn: Conn) -> T:
        return self.read(conn.execute(self.sql, self.params))
