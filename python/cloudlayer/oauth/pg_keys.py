"""The signing key set in PostgreSQL (store.backend = "postgres"), shared by every host.

`PgKeyRing` is a `SigningKeys`: what a worker signs and verifies with, in memory, replaced by oauth/pg_sync.py
when the key rows change (NOTIFY) and every `oauth.shared_refresh` seconds. `PgKeyAdmin` is a `KeyAdmin`:
first start and `keys rotate|list|import` on the database. Private keys are opened with this host's sealing
key ring; each opened key is kept, so a refresh re-opens only a new or re-sealed row.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from ..sealing import Sealer, SealError
from ..store.pg.database import Database
from . import pg_rows
from .keys import KeyFileError, KeyRecord, key_view

log = structlog.get_logger(__name__)

_NUDGE_INTERVAL = 1.0  # an unknown kid asks for a refresh at most this often (a flood of junk kids costs nothing)


class PgKeyRing:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self._opened: dict[tuple[str, bytes], KeyRecord] = {}
        self.active: KeyRecord
        self.verify_keys: dict[str, KeyRecord] = {}
        self.jwks_json = b""
        self.loaded = False
        self._nudge: Callable[[], None] = lambda: None
        self._next_nudge = 0.0

    def on_unknown_kid(self, nudge: Callable[[], None]) -> None:
        self._nudge = nudge

    def install(self, rows: list[pg_rows.KeyRow]) -> None:
        """The key rows as last read. A row this host cannot open is skipped (and logged); the active one must
        open, else KeyFileError and the keys in use stay as they were."""
        opened: dict[tuple[str, bytes], KeyRecord] = {}
        records: list[KeyRecord] = []
        active = ""
        for row in rows:
            memo = (row.kid, row.sealed_private)
            rec = self._opened.get(memo)
            try:
                rec = pg_rows.open_key(self._sealer, row) if rec is None else rec
            except (SealError, KeyFileError, ValueError) as e:
                if row.active:
                    raise KeyFileError(f"the active signing key {row.kid} does not open on this host: {e}") from None
                log.error("oauth_key_unusable", kid=row.kid, error=str(e))
                continue
            rec = KeyRecord(kid=rec.kid, alg=rec.alg, key=rec.key, meta=row.meta)  # metadata as the row says now
            opened[memo] = rec
            records.append(rec)
            if row.active:
                active = row.kid
        if not active:
            raise KeyFileError("the database holds no active signing key (a host creates one when it starts)")
        before = (self.active.kid, set(self.verify_keys)) if self.loaded else None
        self.active, self.verify_keys, self.jwks_json = key_view(active, records, time.time())
        self._opened = opened
        if before is not None and before != (active, set(self.verify_keys)):
            log.info("oauth_keys_reloaded", active_kid=active, kids=len(self.verify_keys))
        self.loaded = True

    def maybe_reload(self) -> None:
        """Nothing to look at per request: changes arrive by NOTIFY or the periodic refresh."""

    def reload_for_unknown_kid(self) -> bool:
        """A kid we do not know may be a rotation whose notification has not arrived: ask for a refresh (at most
        once a second). This request is refused; those after the refresh verify."""
        now = time.monotonic()
        if now >= self._next_nudge:
            self._next_nudge = now + _NUDGE_INTERVAL
            self._nudge()
        return False


class PgKeyAdmin:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    def ensure(self, jws_alg: str) -> None:
        rec = self._db.call_sync(lambda conn: pg_rows.ensure_key(conn, self._sealer, jws_alg))
        if rec is not None:
            log.info("oauth_key_created", kid=rec.kid, alg=jws_alg)

    def rotate(self, jws_alg: str, token_lifetime: float, leeway: float) -> KeyRecord:
        return self._db.call_sync(lambda conn: pg_rows.rotate(conn, self._sealer, jws_alg, token_lifetime, leeway))

    def read(self) -> tuple[str, list[KeyRecord]]:
        """Ids, algorithms and windows (no private key is opened to list them)."""
        rows = self._db.call_sync(pg_rows.load_keys)
        active = next((r.kid for r in rows if r.active), "")
        return active, [KeyRecord(kid=r.kid, alg=r.alg, key=None, meta=r.meta) for r in rows]

    def import_key(self, rec: KeyRecord, was_active: bool, verify_for: float) -> str:
        return self._db.call_sync(lambda conn: pg_rows.import_key(conn, self._sealer, rec, was_active, verify_for))

    def close(self) -> None:
        self._db.close()
