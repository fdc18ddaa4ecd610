"""The client registry in PostgreSQL (store.backend = "postgres"), shared by every host: a `ClientStore`.

Reads (the token endpoint and every bearer check) are served from an in-memory copy of the table, never from
the database: oauth/pg_sync.py replaces the copy when a change is NOTIFYed, and every `oauth.shared_refresh`
seconds whatever happens. Writes (the commands, the dev client) go to the database at once and into this
process's copy after they commit. A write while PostgreSQL is unreachable raises DatabaseUnavailable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..store.pg.database import Database
from . import pg_rows
from .client_secrets import SecretHasher
from .clients import (
    AUTH_METHODS,
    Client,
    ClientChanges,
    ClientView,
    RegistryError,
    new_client,
    plausible_id,
    unknown_client,
    view_of,
)


class PgClientRegistry(ClientChanges):
    def __init__(self, db: Database, hasher: SecretHasher) -> None:
        self._db = db
        self._hasher = hasher
        self._clients: dict[str, Client] = {}  # replaced whole (one assignment), never edited in place
        self.loaded = False

    def install(self, clients: dict[str, Client]) -> None:
        """The database's rows as last read (any thread: a reader sees the old dict or the new one)."""
        self._clients = clients
        self.loaded = True

    def load_sync(self) -> None:
        self.install(self._db.call_sync(pg_rows.load_clients))

    def close(self) -> None:
        self._db.close()

    # -- reads (hot path: memory only) -------------------------------------------------------------------
    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def is_enabled(self, client_id: str) -> bool:
        client = self._clients.get(client_id)
        return client is not None and client.enabled

    def authenticate(self, client_id: str, secret: str) -> Client | None:
        """As the LMDB registry: the same work for an unknown id as for a wrong secret."""
        client = self.get(client_id) if len(client_id) <= 128 else None
        ok = self._hasher.check(secret, None if client is None else client.secret_hash)
        return client if ok else None

    def list(self) -> list[ClientView]:
        """From the database (the commands): what every host sees, not this process's copy."""
        return [view_of(c) for c in self._db.call_sync(pg_rows.load_clients).values()]

    # -- writes (committed before they return) -------------------------------------------------------------
    def add(self, name: str, scopes: Iterable[str], auth_methods: Iterable[str] = AUTH_METHODS) -> tuple[Client, str]:
        client, secret = new_client(self._hasher, name, scopes, auth_methods)
        if not self._db.call_sync(lambda conn: pg_rows.insert_client(conn, client)):
            raise RegistryError("client id collision; try again")
        self._remember(client)
        return client, secret

    def put(self, client: Client) -> None:
        self._db.call_sync(lambda conn: pg_rows.put_client(conn, client))
        self._remember(client)

    def insert_if_absent(self, client: Client) -> bool:
        """`client import`: copy a record in unless its id exists (nothing overwritten)."""
        return self._db.call_sync(lambda conn: pg_rows.insert_client(conn, client))

    def _update(self, client_id: str, change: Callable[[Client], Client]) -> Client:
        if not plausible_id(client_id):
            raise unknown_client(client_id)
        client = self._db.call_sync(lambda conn: pg_rows.update_client(conn, client_id, change))
        if client is None:
            raise unknown_client(client_id)
        self._remember(client)
        return client

    def _remember(self, client: Client) -> None:
        self._clients = {**self._clients, client.client_id: client}
