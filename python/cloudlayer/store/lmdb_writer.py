"""The LMDB store's group-commit writer: one task per worker process, one durable write transaction per batch.

Callers queue an `Op` and wait on it. The writer drains up to `group_commit_max` queued ops, applies them in ONE
LMDB write transaction in a worker thread (`apply` decides each op inside it), commits durably (the env is opened
sync=True), then wakes each caller with its own result. LMDB serialises write transactions across every process
that opens the environment, so each decision is atomic across Hypercorn workers as well as tasks.

Background ops (retention purge chunks) never share a transaction with traffic: they wait while traffic is queued
and run alone, so a claim waits for at most one (small, time-boxed) chunk. So that a purge still finishes under
saturation, one background op runs after every `BACKGROUND_EVERY` traffic batches.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmdb
import msgspec
import structlog
import trio

from .types import NotOwner, StoreFull

log = structlog.get_logger(__name__)

MB = 1024 * 1024
QUEUE_DEPTH = 4096
BACKGROUND_EVERY = 4  # traffic batches between two background ops while both are waiting


class Op:
    """One queued write and, once the writer is done with it, its result or error."""

    __slots__ = ("args", "background", "done", "error", "kind", "result")

    def __init__(self, kind: str, *args: Any, background: bool = False) -> None:
        self.kind = kind
        self.args = args
        self.background = background
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = trio.Event()


if TYPE_CHECKING:
    Apply = Callable[[lmdb.Transaction[bytes], Op], Any]


class GroupWriter:
    def __init__(
        self,
        env: lmdb.Environment,
        path: Path,
        *,
        group_commit_max: int,
        max_map: int,
        apply: Apply,
        resize_lock: threading.Lock,
    ) -> None:
        self._env = env
        self._path = path
        self._max = group_commit_max
        self._max_map = max_map
        self._apply = apply
        # set_mapsize needs no live transaction in this process: loop-thread reads hold this lock, and the
        # writer thread takes it to resize between its own write transactions.
        self._resize_lock = resize_lock
        self._send, self._recv = trio.open_memory_channel[Op](QUEUE_DEPTH)
        self._background: collections.deque[Op] = collections.deque()
        self.committed = trio.Event()  # set (and replaced) after every batch: wakes local waiters
        self.commits = 0  # write transactions committed (for metrics: ops / commits = mean batch)
        self.committed_ops = 0
        self.commit_ok = True

    async def submit(self, op: Op) -> Any:
        # Queued ops wait for `run`. A caller cancelled after this point may still see its op applied
        # (e.g. a NEW claim nobody completes): that record stays PENDING under our live owner id and is
        # recovered as ORPHANED after this process exits. Never processed twice either way.
        await self._send.send(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            self._fail_queued()

    async def _loop(self) -> None:
        traffic_batches = 0
        while True:
            batch: list[Op] = []
            if not self._background:
                self._sort(await self._recv.receive(), batch)
            while len(batch) < self._max:
                try:
                    self._sort(self._recv.receive_nowait(), batch)
                except trio.WouldBlock:
                    break
            if batch and not (self._background and traffic_batches >= BACKGROUND_EVERY):
                traffic_batches += 1
                await self._run_batch(batch)
                continue
            traffic_batches = 0
            await self._run_batch([self._background.popleft()])
            if batch:  # taken off the queue already: they go next, before anything queued after them
                await self._run_batch(batch)

    def _sort(self, op: Op, batch: list[Op]) -> None:
        (self._background if op.background else batch).append(op)

    async def _run_batch(self, batch: list[Op]) -> None:
        # The thread cannot be interrupted anyway; shielding lets its results reach the callers.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self._apply_batch, batch)
                self.commit_ok = True
                self.commits += 1
                self.committed_ops += len(batch)
            except Exception as e:
                self.commit_ok = False
                log.error("store_commit_failed", error=repr(e), ops=len(batch))
                for op in batch:
                    op.result = None
                    op.error = RuntimeError(f"transaction store commit failed: {e!r}")
        for op in batch:
            op.done.set()
        self.committed.set()
        self.committed = trio.Event()

    def _fail_queued(self) -> None:
        while self._background:
            self._fail(self._background.popleft())
        while True:
            try:
                op = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._fail(op)

    @staticmethod
    def _fail(op: Op) -> None:
        op.error = RuntimeError("store writer stopped")
        op.done.set()

    def _apply_batch(self, batch: list[Op]) -> None:
        """In the writer thread: the whole batch in one durable transaction, growing the map if needed."""
        if any(op.kind == "adopt" for op in batch):
            self.adopt_map_size()
        for _ in range(64):
            try:
                self._commit(batch)
                return
            except lmdb.MapResizedError:
                self.adopt_map_size()  # another process grew the map: take its size and retry
            except lmdb.MapFullError:
                if not self._grow():
                    break
        # At the ceiling: one transaction per op, so whatever still fits is stored and only the rest fails.
        # Errors stay per op from here on: an op committed alone must not be reported failed.
        for op in batch:
            for _ in range(8):
                try:
                    self._commit([op])
                    break
                except lmdb.MapResizedError:
                    self.adopt_map_size()
                except lmdb.MapFullError:
                    op.result = None
                    op.error = StoreFull(
                        f"transaction store full: map at store.max_map_size_mb={self._max_map // MB} MB "
                        f"({self._path}); purge old records or raise the limit"
                    )
                    break
                except lmdb.Error as e:
                    op.result = None
                    op.error = RuntimeError(f"transaction store commit failed: {e!r}")
                    break

    def _commit(self, batch: list[Op]) -> None:
        with self._env.begin(write=True) as txn:  # commits on exit (fsync), aborts on any exception
            for op in batch:
                op.result, op.error = None, None
                try:
                    op.result = self._apply(txn, op)
                except (NotOwner, msgspec.DecodeError) as e:
                    op.error = e  # raised before the op wrote anything: fails only this op

    def _grow(self) -> bool:
        current = int(self._env.info()["map_size"])
        if current >= self._max_map:
            return False
        new = min(current * 2, self._max_map)
        with self._resize_lock:
            self._env.set_mapsize(new)
        log.warning("store_map_grown", from_mb=current // MB, to_mb=new // MB, max_mb=self._max_map // MB)
        return True

    def adopt_map_size(self) -> None:
        with self._resize_lock:
            self._env.set_mapsize(0)
