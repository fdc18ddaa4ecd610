"""Which client registry and signing key set a process uses: files (store.backend = "lmdb") or PostgreSQL
shared by every host ("postgres"). The one place that looks at the backend; the parts are siblings behind
`ClientStore`, `SigningKeys` and `KeyAdmin`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ..config import Config, ConfigError
from ..sealing import Sealer, load_or_create_secret
from .client_secrets import SecretHasher
from .clients import ClientRegistry, ClientStore
from .keys import JWS_ALGORITHMS, FileKeyAdmin, KeyAdmin, KeyFileError, KeyRing, SigningKeys

if TYPE_CHECKING:
    from ..store.pg.database import Database
    from .pg_clients import PgClientRegistry
    from .pg_keys import PgKeyAdmin
    from .pg_sync import OAuthSync

PEPPER_DIFFERS = (
    "oauth.pepper_file: this host's pepper differs from the one the database's clients were made with;"
    " give every host the same pepper file"
)

# psycopg is imported only when the config says postgres: the LMDB host and its commands start without it.


def hasher_for(cfg: Config) -> SecretHasher:
    return SecretHasher(load_or_create_secret(cfg.var_path(cfg.oauth.pepper_file), 32))


def _database(cfg: Config, name: str, pool_max: int) -> Database:
    from ..store.pg.database import Database
    from ..store.pg.settings import PgSettings

    settings = msgspec.structs.replace(PgSettings.from_config(cfg), pool_min=1, pool_max=pool_max)
    return Database(settings, application_name=name)


def _opened(db: Database) -> Database:
    try:
        db.open_sync()
    except Exception:
        db.close()
        raise
    return db


def open_registry(cfg: Config) -> ClientStore:
    """The registry the commands change (PostgreSQL: opened now; raises DatabaseUnavailable)."""
    if cfg.store.backend != "postgres":
        return ClientRegistry(cfg.var_path(cfg.oauth.clients_file), hasher_for(cfg))
    return open_pg_registry(cfg)


def open_pg_registry(cfg: Config) -> PgClientRegistry:
    """The shared registry, refusing a host whose pepper is not the database's (its hashes would not match)."""
    from . import pg_rows
    from .clients import RegistryError
    from .pg_clients import PgClientRegistry

    db = _opened(_database(cfg, "cloudlayer-oauth-command", 1))
    hasher = hasher_for(cfg)
    pepper = load_or_create_secret(cfg.var_path(cfg.oauth.pepper_file), 32)
    if not db.call_sync(lambda conn: pg_rows.check_pepper(conn, pepper)):
        db.close()
        raise RegistryError(PEPPER_DIFFERS)
    return PgClientRegistry(db, hasher)


def open_key_admin(cfg: Config) -> KeyAdmin:
    if cfg.store.backend != "postgres":
        return FileKeyAdmin(cfg.var_path(cfg.oauth.keys_file))
    return open_pg_key_admin(cfg)


def open_pg_key_admin(cfg: Config) -> PgKeyAdmin:
    from .pg_keys import PgKeyAdmin

    return PgKeyAdmin(_opened(_database(cfg, "cloudlayer-oauth-command", 1)), Sealer.from_config(cfg))


def close_admin(admin: KeyAdmin) -> None:
    close = getattr(admin, "close", None)
    if close is not None:
        close()


def open_runtime(cfg: Config) -> tuple[ClientStore, SigningKeys, OAuthSync | None]:
    """What a worker serves with. Files: loaded now. PostgreSQL: empty until `OAuthSync.run` (the app's
    nursery, before the first request) or `refresh_sync` loads it; nothing blocks here."""
    jws_alg = JWS_ALGORITHMS[cfg.oauth.algorithm]
    if cfg.store.backend != "postgres":
        admin = FileKeyAdmin(cfg.var_path(cfg.oauth.keys_file))
        admin.ensure(jws_alg)
        return ClientRegistry(cfg.var_path(cfg.oauth.clients_file), hasher_for(cfg)), KeyRing(admin.path), None
    from ..store.pg.database import connect_kwargs
    from .pg_clients import PgClientRegistry
    from .pg_keys import PgKeyRing
    from .pg_sync import OAuthSync

    db = _database(cfg, "cloudlayer-oauth", 1)
    clients = PgClientRegistry(db, hasher_for(cfg))
    keys = PgKeyRing(Sealer.from_config(cfg))
    listen = connect_kwargs(db.settings, "cloudlayer-oauth-listener")
    return clients, keys, OAuthSync(db, clients, keys, listen, cfg.oauth.shared_refresh)


def preflight(cfg: Config) -> None:
    """`cloudlayer serve` with PostgreSQL, before any worker: this host's pepper is the one the other hosts
    use, an active signing key exists (the first host creates it) and opens with this host's sealing key ring.
    Else ConfigError: the start stops with one line saying what to do."""
    from ..store.pg.database import DatabaseUnavailable
    from . import pg_rows
    from .pg_keys import PgKeyAdmin, PgKeyRing

    sealer = Sealer.from_config(cfg)
    db = _database(cfg, "cloudlayer-preflight", 1)
    try:
        db.open_sync()
        pepper = load_or_create_secret(cfg.var_path(cfg.oauth.pepper_file), 32)
        if not db.call_sync(lambda conn: pg_rows.check_pepper(conn, pepper)):
            raise ConfigError(PEPPER_DIFFERS)
        PgKeyAdmin(db, sealer).ensure(JWS_ALGORITHMS[cfg.oauth.algorithm])
        PgKeyRing(sealer).install(db.call_sync(pg_rows.load_keys))
    except (DatabaseUnavailable, KeyFileError) as e:
        raise ConfigError(f"oauth: {e}") from None
    finally:
        db.close()
