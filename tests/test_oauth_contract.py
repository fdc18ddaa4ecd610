"""One contract for the OAuth client registry and signing key set, run on both backends: the LMDB file and key
file (store.backend = "lmdb") and PostgreSQL shared by hosts ("postgres", a real cluster). What a worker serves
with (`open_runtime`) and what the commands change (`open_registry`, `open_key_admin`) come from
oauth/backends.py, as in the host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlayer.config import Config, load_config
from cloudlayer.oauth.backends import open_key_admin, open_registry, open_runtime
from cloudlayer.oauth.clients import Client, ClientStore, RegistryError
from cloudlayer.oauth.keys import KeyAdmin, KeyRing, SigningKeys
from cloudlayer.oauth.tokens import BearerError, TokenIssuer, TokenVerifier
from conftest import write_config

ISSUER, AUDIENCE = "https://cloudlayer.test", "cloudlayer-transactions"


class Backend:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._open: list[Any] = []
        self._open_lmdb: ClientStore | None = None

    def registry(self) -> ClientStore:
        """What a command opens. LMDB allows one environment per path per process: one shared here (its every
        read is a fresh transaction, as in another process); PostgreSQL: a new registry each time."""
        if self.cfg.store.backend == "lmdb" and self._open_lmdb is not None:
            return self._open_lmdb
        r = open_registry(self.cfg)
        self._open.append(r)
        if self.cfg.store.backend == "lmdb":
            self._open_lmdb = r
        return r

    def admin(self) -> KeyAdmin:
        a = open_key_admin(self.cfg)
        self._open.append(a)
        return a

    def worker(self) -> tuple[ClientStore, SigningKeys]:
        """What one worker process serves with, loaded as it is at this moment."""
        self.admin().ensure("ES256")  # the first start (PostgreSQL: the host's preflight)
        if self.cfg.store.backend == "lmdb":
            return self.registry(), KeyRing(self.cfg.var_path(self.cfg.oauth.keys_file))
        clients, keys, sync = open_runtime(self.cfg)
        self._open.append(clients)
        assert sync is not None
        sync.refresh_sync()
        return clients, keys

    def close(self) -> None:
        for thing in self._open:
            close = getattr(thing, "close", None)
            if close is not None:  # a key file needs no closing
                close()


@pytest.fixture(params=("lmdb", "postgres"))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    sections: dict[str, dict[str, Any]] = {"server": {"var_dir": str(tmp_path / "var")}}
    if request.param == "postgres":
        from cloudlayer.store.pg import migrate
        from cloudlayer.store.pg.database import Database
        from cloudlayer.store.pg.settings import PgSettings

        pg = request.getfixturevalue("pg_database")
        sections["store"] = pg.store_section()
        cfg = load_config(write_config(tmp_path / "c.toml", sections), environ={})
        db = Database(PgSettings.from_config(cfg))
        db.open_sync()
        try:
            db.call_sync(migrate.migrate)
        finally:
            db.close()
    else:
        cfg = load_config(write_config(tmp_path / "c.toml", sections), environ={})
    b = Backend(cfg)
    yield b
    b.close()


def test_a_client_added_authenticates_and_is_listed_without_its_secret(backend: Backend) -> None:
    admin = backend.registry()
    client, secret = admin.add("mypinpad", ["transactions:process", "extra"], ["client_secret_basic"])
    clients, _ = backend.worker()
    got = clients.authenticate(client.client_id, secret)
    assert got is not None and got.scopes == ("transactions:process", "extra") and got.enabled
    assert got.auth_methods == ("client_secret_basic",)
    assert clients.is_enabled(client.client_id)
    assert clients.authenticate(client.client_id, secret + "x") is None
    assert clients.authenticate("cl_" + "0" * 24, secret) is None
    assert clients.authenticate("x" * 500, secret) is None
    assert not clients.is_enabled("cl_unknown")
    [view] = admin.list()
    assert view.client_id == client.client_id and view.name == "mypinpad"
    assert not hasattr(view, "secret_hash")


def test_disable_and_rotate_secret(backend: Backend) -> None:
    admin = backend.registry()
    client, old = admin.add("a", ["s"])
    other, other_secret = admin.add("b", ["s"])
    _, new = admin.rotate_secret(client.client_id)
    clients, _ = backend.worker()
    assert clients.authenticate(client.client_id, old) is None
    assert clients.authenticate(client.client_id, new) is not None
    assert admin.disable(client.client_id).enabled is False
    clients, _ = backend.worker()
    assert not clients.is_enabled(client.client_id)
    found = clients.authenticate(client.client_id, new)
    assert found is not None and not found.enabled  # the token endpoint refuses it as disabled
    assert clients.is_enabled(other.client_id) and clients.authenticate(other.client_id, other_secret) is not None
    assert [v.enabled for v in sorted(admin.list(), key=lambda v: v.name)] == [False, True]


@pytest.mark.parametrize(
    ("name", "scopes", "methods", "message"),
    [
        ("", ["s"], ["client_secret_basic"], "name must not be empty"),
        ("bad\nname", ["s"], ["client_secret_basic"], "printable"),
        ("x" * 201, ["s"], ["client_secret_basic"], "at most 200"),
        ("ok", [], ["client_secret_basic"], "scope"),
        ("ok", ['sc"ope'], ["client_secret_basic"], "scope"),
        ("ok", ["s"], ["none"], "auth methods"),
    ],
)
def test_garbage_in_add_is_refused_and_nothing_written(
    backend: Backend, name: str, scopes: list[str], methods: list[str], message: str
) -> None:
    admin = backend.registry()
    with pytest.raises(RegistryError, match=message):
        admin.add(name, scopes, methods)
    assert admin.list() == []


@pytest.mark.parametrize("client_id", ["cl_" + "0" * 24, "", "x" * 300, "\udcff"])
def test_changing_an_unknown_client_names_it(backend: Backend, client_id: str) -> None:
    admin = backend.registry()
    with pytest.raises(RegistryError, match="no client with id"):
        admin.disable(client_id)
    with pytest.raises(RegistryError, match="no client with id"):
        admin.rotate_secret(client_id)


def test_put_stores_a_record_as_given(backend: Backend) -> None:
    admin = backend.registry()
    record = Client(
        client_id="cl_" + "a" * 24,
        name="given",
        secret_hash=b"\x07" * 32,
        scopes=("s",),
        enabled=False,
        created_at=1.0,
        updated_at=2.0,
    )
    admin.put(record)
    clients, _ = backend.worker()
    assert clients.get(record.client_id) == record


def test_first_start_creates_one_key_and_rotation_keeps_the_old_one_verifying(backend: Backend) -> None:
    admin = backend.admin()
    admin.ensure("ES256")
    admin.ensure("ES256")  # a second worker or host starting: nothing new
    first_active, records = admin.read()
    assert [r.kid for r in records] == [first_active]
    _, keys = backend.worker()
    issuer = TokenIssuer(keys, ISSUER, AUDIENCE, 3600)
    clients = backend.registry()
    client, _ = clients.add("c", ["transactions:process"])
    old_token = issuer.issue(client.client_id, client.scopes)

    before = time.time()
    new = admin.rotate("ES256", token_lifetime=3600, leeway=30)
    active, records = admin.read()
    assert active == new.kid != first_active
    old = next(r for r in records if r.kid == first_active)
    assert old.meta.retired_at is not None and before <= old.meta.retired_at <= time.time()
    assert old.meta.verify_until == pytest.approx(old.meta.retired_at + 3630)

    # Another worker, loaded after the rotation, signs with the new key and verifies both.
    worker_clients, worker_keys = backend.worker()
    assert worker_keys.active.kid == new.kid
    verifier = TokenVerifier(worker_keys, worker_clients, ISSUER, AUDIENCE, 30, 100)
    new_token = TokenIssuer(worker_keys, ISSUER, AUDIENCE, 3600).issue(client.client_id, client.scopes)
    assert verifier.verify(old_token).client_id == client.client_id
    assert verifier.verify(new_token).client_id == client.client_id
    assert set(worker_keys.verify_keys) == {first_active, new.kid}


def test_rotation_prunes_keys_past_their_window(backend: Backend) -> None:
    admin = backend.admin()
    admin.ensure("ES256")
    first, _ = admin.read()
    second = admin.rotate("ES256", token_lifetime=0, leeway=0)  # first retired, verify_until = now
    third = admin.rotate("ES256", token_lifetime=3600, leeway=30)  # first pruned; second kept
    active, records = admin.read()
    assert active == third.kid
    assert {r.kid for r in records} == {second.kid, third.kid}
    _, keys = backend.worker()
    assert first not in keys.verify_keys


def test_a_token_of_a_retired_key_is_refused_after_its_window(backend: Backend) -> None:
    admin = backend.admin()
    clients_admin = backend.registry()
    client, _ = clients_admin.add("c", ["s"])
    clients, keys = backend.worker()
    token = TokenIssuer(keys, ISSUER, AUDIENCE, 3600).issue(client.client_id, client.scopes)
    admin.rotate("ES256", token_lifetime=0, leeway=0)  # the old key stops verifying now
    clients, keys = backend.worker()
    with pytest.raises(BearerError):
        TokenVerifier(keys, clients, ISSUER, AUDIENCE, 0, 100).verify(token)
