"""The client registry: one small LMDB environment shared by every worker process and the CLI.

LMDB fits: readers never block, a read transaction costs microseconds, and a commit by one process (the
CLI disabling a client) is visible to the next read transaction of every other process. That is what lets
the bearer check reject a disabled client's cached token at once.

With store.backend = "postgres" the registry is shared by every host (oauth/pg_clients.py): a sibling
behind the same `ClientStore` protocol, proven by one contract suite (tests/test_oauth_contract.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import lmdb
import msgspec

from .client_secrets import SecretHasher, new_client_id, new_client_secret

AUTH_METHODS = ("client_secret_basic", "client_secret_post")
GRANT_TYPES = ("client_credentials",)
_MAP_SIZE = 64 * 1024 * 1024  # ~100k clients fit many times over


class Client(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    name: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    auth_methods: tuple[str, ...] = AUTH_METHODS
    grant_types: tuple[str, ...] = GRANT_TYPES
    enabled: bool = True
    created_at: float
    updated_at: float


class ClientView(msgspec.Struct, frozen=True, kw_only=True):
    """What `client list` shows: everything but the secret hash."""

    client_id: str
    name: str
    scopes: tuple[str, ...]
    auth_methods: tuple[str, ...]
    grant_types: tuple[str, ...]
    enabled: bool
    created_at: float
    updated_at: float


class RegistryError(Exception):
    """An operator-facing registry problem (unknown client id, bad scope)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Client)


def validate_scope_token(scope: str) -> bool:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return bool(scope) and all(c == "\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e" for c in scope)


class ClientStore(Protocol):
    """What the token endpoint, the bearer check and the commands need from a client registry. The reads
    (get, is_enabled, authenticate) are the hot path: never a blocking network call."""

    def get(self, client_id: str) -> Client | None: ...

    def is_enabled(self, client_id: str) -> bool: ...

    def authenticate(self, client_id: str, secret: str) -> Client | None: ...

    def list(self) -> list[ClientView]: ...

    def add(
        self, name: str, scopes: Iterable[str], auth_methods: Iterable[str] = AUTH_METHODS
    ) -> tuple[Client, str]: ...

    def disable(self, client_id: str) -> Client: ...

    def rotate_secret(self, client_id: str) -> tuple[Client, str]: ...

    def put(self, client: Client) -> None: ...

    def close(self) -> None: ...


def unknown_client(client_id: str) -> RegistryError:
    return RegistryError(f"no client with id {client_id!r}")


def plausible_id(client_id: str) -> bool:
    """Could be a stored id: 1-128 characters of valid UTF-8 (anything else is unknown without a lookup,
    which LMDB's key size and PostgreSQL's text encoding would refuse with an error of their own)."""
    if not 0 < len(client_id) <= 128:
        return False
    try:
        client_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def view_of(client: Client) -> ClientView:
    return ClientView(**{f: getattr(client, f) for f in ClientView.__struct_fields__})


def new_client(
    hasher: SecretHasher, name: str, scopes: Iterable[str], auth_methods: Iterable[str]
) -> tuple[Client, str]:
    """A checked new client record and its secret (the secret is never stored: only its keyed hash)."""
    scopes_t = tuple(dict.fromkeys(scopes))
    methods_t = tuple(dict.fromkeys(auth_methods))
    if not name.strip():
        raise RegistryError("client name must not be empty")
    if len(name) > 200 or not name.isprintable():
        raise RegistryError("client name must be at most 200 printable characters")
    if not scopes_t or not all(validate_scope_token(s) for s in scopes_t):
        raise RegistryError("scopes must be non-empty RFC 6749 scope tokens")
    if not methods_t or any(m not in AUTH_METHODS for m in methods_t):
        raise RegistryError(f"auth methods must be among {', '.join(AUTH_METHODS)}")
    secret = new_client_secret()
    now = time.time()
    client = Client(
        client_id=new_client_id(),
        name=name,
        secret_hash=hasher.hash(secret),
        scopes=scopes_t,
        auth_methods=methods_t,
        created_at=now,
        updated_at=now,
    )
    return client, secret


class ClientChanges:
    """disable and rotate-secret, one rule for every backend: each backend brings its atomic `_update`."""

    _hasher: SecretHasher

    def _update(self, client_id: str, change: Callable[[Client], Client]) -> Client:
        raise NotImplementedError

    def disable(self, client_id: str) -> Client:
        return self._update(client_id, lambda c: msgspec.structs.replace(c, enabled=False, updated_at=time.time()))

    def rotate_secret(self, client_id: str) -> tuple[Client, str]:
        secret = new_client_secret()
        client = self._update(
            client_id,
            lambda c: msgspec.structs.replace(c, secret_hash=self._hasher.hash(secret), updated_at=time.time()),
        )
        return client, secret


class ClientRegistry(ClientChanges):
    """ClientStore on one LMDB environment (store.backend = "lmdb")."""

    def __init__(self, path: Path, hasher: SecretHasher) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._env = lmdb.open(str(path), map_size=_MAP_SIZE, subdir=True, mode=0o600, max_dbs=0, lock=True)
        self._hasher = hasher
        # client_id -> (raw record, enabled): the hot path compares bytes instead of decoding again.
        self._enabled_memo: dict[str, tuple[bytes, bool]] = {}

    def close(self) -> None:
        self._env.close()

    # -- reads (hot path) ------------------------------------------------------------------------------
    def get(self, client_id: str) -> Client | None:
        if not plausible_id(client_id):
            return None
        with self._env.begin() as txn:
            raw = txn.get(client_id.encode("utf-8", "surrogatepass"))
        return None if raw is None else _decoder.decode(raw)

    def is_enabled(self, client_id: str) -> bool:
        """A fresh read transaction each call: a disablement committed by any process is seen at once."""
        with self._env.begin() as txn:
            raw = txn.get(client_id.encode("utf-8", "surrogatepass"))
        if raw is None:
            return False
        memo = self._enabled_memo.get(client_id)
        if memo is not None and memo[0] == raw:
            return memo[1]
        enabled = _decoder.decode(raw).enabled
        if len(self._enabled_memo) > 10_000:
            self._enabled_memo.clear()
        self._enabled_memo[client_id] = (raw, enabled)
        return enabled

    def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The client if id and secret match; None otherwise, with the same work for an unknown id."""
        client = self.get(client_id) if len(client_id) <= 128 else None
        ok = self._hasher.check(secret, None if client is None else client.secret_hash)
        return client if ok else None

    def list(self) -> list[ClientView]:
        with self._env.begin() as txn:
            records = [_decoder.decode(v) for _, v in txn.cursor()]
        return [view_of(c) for c in records]

    # -- writes (operator commands; fsync'd) -------------------------------------------------------------
    def add(self, name: str, scopes: Iterable[str], auth_methods: Iterable[str] = AUTH_METHODS) -> tuple[Client, str]:
        """Create a client; returns it and its secret, which is never stored or shown again."""
        client, secret = new_client(self._hasher, name, scopes, auth_methods)
        with self._env.begin(write=True) as txn:
            if not txn.put(client.client_id.encode(), _encoder.encode(client), overwrite=False):
                raise RegistryError("client id collision; try again")
        return client, secret

    def put(self, client: Client) -> None:
        """Store a client record as given (tests and migrations)."""
        with self._env.begin(write=True) as txn:
            txn.put(client.client_id.encode(), _encoder.encode(client))

    def _update(self, client_id: str, change: Callable[[Client], Client]) -> Client:
        if not plausible_id(client_id):
            raise unknown_client(client_id)
        with self._env.begin(write=True) as txn:
            raw = txn.get(client_id.encode("utf-8"))
            if raw is None:
                raise unknown_client(client_id)
            client = change(_decoder.decode(raw))
            txn.put(client_id.encode(), _encoder.encode(client))
        return client
