"""Transactions in SQLite (WAL, synchronous=FULL): one writer thread owns the connection.

The event loop never touches SQLite: every read and write is queued to the writer thread, which runs
whatever is queued in one transaction and commits it (one fsync for the batch, like ours group-commits),
then resolves each caller's future. A caller's write is therefore on disk when its await returns.
The row id is the STAN/RRN sequence: SQLite hands out a new, unique one to every INSERT, across worker
processes too (they share the file; writers take turns under busy_timeout).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY,  -- never deleted, so ids are never reused: STAN and RRN come from it
    client_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('PENDING', 'COMPLETED')),
    transaction_type TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    masked_pan TEXT,
    stan TEXT,
    rrn TEXT,
    response_code TEXT,
    response_body BLOB,
    created_at REAL NOT NULL,
    completed_at REAL,
    UNIQUE (client_id, transaction_id)
)
"""
BATCH_MAX = 256


def connect(path: Path) -> sqlite3.Connection:
    """A connection set up for durability: WAL journal, fsync on every commit, wait for other writers."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def create_schema(path: Path) -> None:
    conn = connect(path)
    try:
        conn.execute(SCHEMA)
    finally:
        conn.close()


def stan_of(row_id: int) -> str:
    return f"{(row_id - 1) % 999_999 + 1:06d}"


def rrn_of(row_id: int, now: float) -> str:
    t = time.gmtime(now)
    return f"{t.tm_year % 10}{t.tm_yday:03d}{row_id % 100_000_000:08d}"


@dataclass(frozen=True)
class NewTransaction:
    client_id: str
    transaction_id: str
    fingerprint: str
    transaction_type: str
    amount: int
    currency: str
    merchant_id: str
    terminal_id: str
    masked_pan: str | None


@dataclass(frozen=True)
class Claimed:
    """The PENDING row is ours (committed): send it with this STAN and RRN."""

    row_id: int
    stan: str
    rrn: str


@dataclass(frozen=True)
class Existing:
    """Someone claimed this (client, transactionId) before."""

    fingerprint: str
    state: str
    response_body: bytes | None


def _claim(conn: sqlite3.Connection, t: NewTransaction) -> Claimed | Existing:
    now = time.time()
    row = conn.execute(
        "INSERT INTO transactions (client_id, transaction_id, fingerprint, state, transaction_type, amount,"
        " currency, merchant_id, terminal_id, masked_pan, created_at)"
        " VALUES (?, ?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (client_id, transaction_id) DO NOTHING RETURNING id",
        (
            t.client_id,
            t.transaction_id,
            t.fingerprint,
            t.transaction_type,
            t.amount,
            t.currency,
            t.merchant_id,
            t.terminal_id,
            t.masked_pan,
            now,
        ),
    ).fetchone()
    if row is not None:
        row_id = int(row[0])
        stan, rrn = stan_of(row_id), rrn_of(row_id, now)
        conn.execute("UPDATE transactions SET stan = ?, rrn = ? WHERE id = ?", (stan, rrn, row_id))
        return Claimed(row_id, stan, rrn)
    fingerprint, state, body = conn.execute(
        "SELECT fingerprint, state, response_body FROM transactions WHERE client_id = ? AND transaction_id = ?",
        (t.client_id, t.transaction_id),
    ).fetchone()
    return Existing(fingerprint, state, body)


def _complete(conn: sqlite3.Connection, row_id: int, response_code: str, body: bytes) -> None:
    conn.execute(
        "UPDATE transactions SET state = 'COMPLETED', response_code = ?, response_body = ?, completed_at = ?"
        " WHERE id = ? AND state = 'PENDING'",
        (response_code, body, time.time(), row_id),
    )


_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


class Store:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    async def claim(self, t: NewTransaction) -> Claimed | Existing:
        result: Claimed | Existing = await self._call(_claim, t)
        return result

    async def complete(self, row_id: int, response_code: str, body: bytes) -> None:
        await self._call(_complete, row_id, response_code, body)

    def _call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return future

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch = [job]
                while len(batch) < BATCH_MAX:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._jobs.put(None)  # stop after this batch
                        break
                    batch.append(more)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, _, _ in batch:
                try:
                    results.append((fn(conn, *args), None))
                except sqlite3.Error as e:  # one bad statement fails its caller, not the batch
                    results.append((None, e))
            conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsync'd before this returns
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(None, e)] * len(batch)
        for (_, _, future, loop), (value, error) in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_resolve, future, value, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
