"""Which sealing keys stored data still uses: the PENDING records of the transaction store, the queued
reversals of the SAF queue and (store.backend = "postgres") the OAuth signing keys' private halves are the only
sealed blobs. A retired key is dropped only when this finds no user."""

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

    usage: Counter[str] = Counter()
    if cfg.store.backend == "postgres":
        usage += _postgres_usage(cfg)
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


def _postgres_usage(cfg: Config) -> Counter[str]:
    """Every sealed column of the shared database; a database that cannot be read keeps every key."""
    import msgspec
    import psycopg

    from ..store.pg.database import Database, DatabaseUnavailable
    from ..store.pg.sealed_usage import sealed_usage
    from ..store.pg.settings import PgSettings

    settings = msgspec.structs.replace(PgSettings.from_config(cfg), pool_min=1, pool_max=1)
    db = Database(settings, application_name="cloudlayer-keys-command")
    try:
        db.open_sync()
        try:
            return db.call_sync(sealed_usage)
        finally:
            db.close()
    except (DatabaseUnavailable, psycopg.Error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageUnknown(f"the PostgreSQL store's sealed records could not be scanned: {first}") from None
