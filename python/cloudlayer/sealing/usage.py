"""Which sealing keys stored data still uses: the PENDING records of the transaction store and the queued
reversals of the SAF queue are the only sealed blobs. A retired key is dropped only when this finds no user."""

from __future__ import annotations

from collections import Counter

from ..config import Config
from .sealer import Sealer, blob_kid


class UsageUnknown(Exception):
    """The stored data cannot be scanned from here (say why): keep every key."""


def sealed_blob_usage(cfg: Config, sealer: Sealer) -> Counter[str]:
    """kid -> number of stored blobs sealed with it (reads a live store safely: LMDB read snapshots)."""
    from ..acquirer.saf import SafQueue
    from ..store.integrity import iter_records

    if cfg.store.backend != "lmdb":
        raise UsageUnknown(f"store.backend = {cfg.store.backend!r}: its sealed records are not scanned here")
    usage: Counter[str] = Counter()
    store = cfg.var_path(cfg.store.path)
    if (store / "data.mdb").exists():
        for rec in iter_records(store):
            if rec.sealed_request:
                usage[blob_kid(rec.sealed_request)] += 1
    saf_path = cfg.var_path(cfg.acquirer.saf_path)
    if (saf_path / "data.mdb").exists():
        queue = SafQueue(saf_path, sealer)
        try:
            for _, entry in queue.entries():
                usage[blob_kid(entry.sealed)] += 1
        finally:
            queue.close()
    return usage
