"""`SafStore`: what a connector needs from the store-and-forward reversal queue, and the backend a config picks.

Two siblings implement it and share one contract suite (tests/test_saf_contract.py):
  acquirer/saf.py    SafQueue, an LMDB file under var/ (one machine; worker processes share it)
  store/pg/saf.py    PgSafQueue, PostgreSQL tables (several hosts share them; `store.backend = "postgres"`)
Both keep the reversal request only sealed with the hosts' sealing key (associated data = the entry key),
lease due entries to one owner at a time, and leave a tombstone once the acquirer acknowledged a reversal.

Every method blocks (disk, fsync or the network): call them through trio.to_thread.run_sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..sealing import Sealer
    from .saf import SafEntry, SafItem
    from .types import AcquirerRequest, ClaimFence


class SafStore(Protocol):
    def add(self, request: AcquirerRequest, reason: str, *, attempts: int = 0, fence: ClaimFence | None = None) -> bool:
        """Durably queue a reversal (idempotent: False if already queued or acknowledged). With `fence`, only while
        that transaction's record is still `fence.owner`'s, atomically with the check (False, dropped, if not):
        a claim taken over meanwhile belongs to its new owner's recovery, which inquires and decides alone.
        Raises StoreUnavailable when the reversal could not be made durable (PostgreSQL kept it in memory, to be
        written later): the caller must then record no outcome that relies on it."""
        ...

    def claim_due(self, owner: str, lease_seconds: float, limit: int = 32) -> list[SafItem]:
        """Lease up to `limit` due, unleased entries to `owner`, their requests opened."""
        ...

    def record_attempt(self, key: bytes, owner: str) -> bool:
        """Count a send before making it. False when `owner` no longer holds the lease: do not send."""
        ...

    def release(self, key: bytes, owner: str, retry_in: float, error: str) -> None:
        """Give a leased entry back after a failed attempt, due again in `retry_in` seconds."""
        ...

    def delete(self, key: bytes) -> None:
        """Acknowledged: erase the entry (and its sealed card data), keep a tombstone."""
        ...

    def known(self, key: bytes) -> bool:
        """Whether this reversal was ever durably queued (pending, or acknowledged within DONE_RETENTION)."""
        ...

    def purge_done(self, older_than: float) -> int:
        """Forget tombstones of reversals acknowledged before `older_than` (unix time)."""
        ...

    def entries(self) -> list[tuple[bytes, SafEntry]]:
        """Every pending entry (sealed), for operators and the sealing-key usage scan."""
        ...

    def next_due(self) -> float | None:
        """Local wall-clock time the earliest entry becomes due (None if empty): a wake-up hint."""
        ...

    def make_all_due(self) -> int:
        """Operator `saf retry`: every entry waiting for its retry time is due now."""
        ...

    def oldest_created(self) -> float | None:
        """Wall-clock creation time of the oldest waiting reversal (None if none): for the age alert."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


def open_saf(cfg: Config, sealer: Sealer, *, application_name: str = "cloudlayer-saf") -> SafStore:
    """The SAF queue of this config: PostgreSQL with store.backend = "postgres", else the LMDB file."""
    if cfg.store.backend == "postgres":
        from ..store.pg.database import Database
        from ..store.pg.saf import PgSafQueue
        from ..store.pg.settings import PgSettings

        return PgSafQueue(Database(PgSettings.from_config(cfg), application_name=application_name), sealer)
    from .saf import SafQueue

    return SafQueue(cfg.var_path(cfg.acquirer.saf_path), sealer)
