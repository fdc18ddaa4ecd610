"""`store.postgres_*`: a DSN without a password, the password's file, pool sizes and deadlines.

The password never sits in the TOML (or the DSN): it is read from `store.postgres_password_file`, a file
that only its owner may read (like libpq's own ~/.pgpass rule). Checked at config load, so a bad setting
stops the start with one line naming the key.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from ...config import Config, ConfigError

# DSN keys that would put a secret (or where to find one we do not control) into the TOML.
_FORBIDDEN_DSN_KEYS = ("password", "passfile")
MAX_POOL = 1000


class PgSettings(msgspec.Struct, frozen=True, kw_only=True):
    dsn: str
    password_file: Path | None
    pool_min: int
    pool_max: int
    connect_timeout: float
    pool_timeout: float
    statement_timeout: float
    pipeline: bool = True  # claims and completions batched by one thread (store/pg/pipeline.py)

    @classmethod
    def from_config(cls, cfg: Config) -> PgSettings:
        s = cfg.store
        pw = Path(cfg.base_dir, s.postgres_password_file) if s.postgres_password_file else None
        return cls(
            dsn=s.postgres_dsn,
            password_file=pw,
            pool_min=s.postgres_pool_min,
            pool_max=s.postgres_pool_max,
            connect_timeout=s.postgres_connect_timeout,
            pool_timeout=s.postgres_pool_timeout,
            statement_timeout=s.postgres_statement_timeout,
            pipeline=s.postgres_pipeline,
        )

    def password(self) -> str | None:
        """The password (first line of the file, stripped), or None when authentication needs none."""
        if self.password_file is None:
            return None
        text = self.password_file.read_text(encoding="utf-8").splitlines()
        return text[0].strip() if text else ""

    def describe(self) -> str:
        """host:port/dbname for banners and errors: never a secret."""
        d = conninfo_to_dict(self.dsn)
        return f"{d.get('host', '(socket)')}:{d.get('port', 5432)}/{d.get('dbname', d.get('user', ''))}"


def check_config(cfg: Config, bad: Callable[[str, str], ConfigError]) -> None:
    s = cfg.store
    if not s.postgres_dsn:
        raise bad("store.postgres_dsn", 'is required with store.backend = "postgres"')
    try:
        parsed = conninfo_to_dict(s.postgres_dsn)
    except ProgrammingError:
        # psycopg's message can quote the DSN (and so a password typed into it): say only what is wrong.
        raise bad("store.postgres_dsn", "is not a valid libpq connection string or URI") from None
    for key in _FORBIDDEN_DSN_KEYS:
        if key in parsed:
            raise bad("store.postgres_dsn", f"must not carry `{key}`: put the password in store.postgres_password_file")
    if s.postgres_password_file:
        path = Path(cfg.base_dir, s.postgres_password_file)
        try:
            st = path.stat()
        except OSError:
            raise bad("store.postgres_password_file", f"file not found: {s.postgres_password_file!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise bad("store.postgres_password_file", "must be a regular file")
        if st.st_mode & 0o077:
            raise bad("store.postgres_password_file", "must be readable by its owner only (chmod 600)")
        if st.st_size == 0:
            raise bad("store.postgres_password_file", "is empty")
    _check_lease(cfg, bad)
    if not 1 <= s.postgres_pool_min <= s.postgres_pool_max <= MAX_POOL:
        raise bad("store.postgres_pool_min", f"must be 1 <= postgres_pool_min <= postgres_pool_max <= {MAX_POOL}")
    for key in ("postgres_connect_timeout", "postgres_pool_timeout", "postgres_statement_timeout"):
        value = getattr(s, key)
        if not 0 < value <= 600:
            raise bad(f"store.{key}", "must be more than 0 and at most 600 seconds")


def _check_lease(cfg: Config, bad: Callable[[str, str], ConfigError]) -> None:
    """The lease must outlast what it protects (docs/postgres.md): a send's whole exchange (acquirer.timeout)
    as the local bound's margin, a renewal's interval, and room for both again."""
    s, timeout = cfg.store, cfg.acquirer.timeout
    if not (math.isfinite(s.lease_renew) and 0.05 <= s.lease_renew <= 60):
        raise bad("store.lease_renew", "must be between 0.05 and 60 seconds")
    if not (math.isfinite(s.lease_ttl) and math.isfinite(timeout)) or s.lease_ttl > 3600:
        raise bad("store.lease_ttl", "must be a number of seconds, at most 3600")
    least = 3 * timeout + s.lease_renew
    if s.lease_ttl < least:
        raise bad("store.lease_ttl", f"must be at least 3 x acquirer.timeout + store.lease_renew ({least:g} s)")
