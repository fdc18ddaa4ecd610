"""OAuth in PostgreSQL, what only that backend has (the common behaviour: tests/test_oauth_contract.py): changes
reaching other workers by NOTIFY, the periodic refresh behind a lost notification, serving from memory during an
outage, sealed private keys, the shared pepper, the one-shot import of a host's files, and garbage input."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from psycopg import sql

from cloudlayer.config import Config, ConfigError, load_config
from cloudlayer.oauth.backends import close_admin, open_key_admin, open_registry, open_runtime, preflight
from cloudlayer.oauth.clients import RegistryError
from cloudlayer.oauth.keys import KeyFileError
from cloudlayer.oauth.pg_sync import OAuthSync
from cloudlayer.oauth.tokens import BearerError, TokenIssuer, TokenVerifier
from cloudlayer.store.pg import migrate
from cloudlayer.store.pg.database import Database
from cloudlayer.store.pg.settings import PgSettings
from conftest import VENV_BIN, write_config

ISSUER, AUDIENCE = "https://cloudlayer.test", "cloudlayer-transactions"


def config(tmp_path: Path, pg: Any, name: str = "c", *, migrated: bool = True, **oauth: Any) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "server": {"var_dir": str(tmp_path / "var")},
        "store": pg.store_section(postgres_connect_timeout=1.0, postgres_pool_timeout=1.0),
        "oauth": oauth,
    }
    cfg = load_config(write_config(tmp_path / f"{name}.toml", sections), environ={})
    if migrated:
        db = Database(PgSettings.from_config(cfg))
        db.open_sync()
        try:
            db.call_sync(migrate.migrate)
        finally:
            db.close()
    return cfg


def cli(cfg_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}
    return subprocess.run(
        [str(VENV_BIN / "cloudlayer"), *argv, "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("cloudlayer: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


class Worker:
    def __init__(self, cfg: Config) -> None:
        self.clients, self.keys, sync = open_runtime(cfg)
        assert isinstance(sync, OAuthSync)
        self.sync = sync
        self.verifier = TokenVerifier(self.keys, self.clients, ISSUER, AUDIENCE, 30, 100)
        self.issuer = TokenIssuer(self.keys, ISSUER, AUDIENCE, 3600)


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Worker]:
    preflight(cfg)  # what `serve` does before its workers: the active key exists
    w = Worker(cfg)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(w.sync.run)
            yield w
            nursery.cancel_scope.cancel()
    finally:
        w.clients.close()


async def until(check: Callable[[], bool], bound: float) -> float:
    """Seconds until check() held (fails after `bound` seconds)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < bound, "not within the bound"
        await trio.sleep(0.01)
    return time.monotonic() - start


def refuse_connections(pg: Any, refuse: bool) -> None:
    with pg.cluster.admin() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(pg.name), sql.SQL("false" if refuse else "true")
            )
        )
        if refuse:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg.name,))


async def test_changes_reach_another_worker_by_notify_long_before_the_refresh(pg_database: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pg_database, shared_refresh=3600)  # only a notification can explain what follows
    async with running(cfg) as a, running(cfg) as b:
        await until(lambda: a.sync.connected and b.sync.connected, 10.0)
        admin = open_registry(cfg)  # `cloudlayer client ...` elsewhere
        try:
            client, secret = admin.add("mypinpad", ["transactions:process"])
            await until(lambda: b.clients.authenticate(client.client_id, secret) is not None, 2.0)
            token = a.issuer.issue(client.client_id, client.scopes)
            assert b.verifier.verify(token).client_id == client.client_id
            admin.disable(client.client_id)
            await until(lambda: not a.clients.is_enabled(client.client_id), 2.0)
            await until(lambda: not b.clients.is_enabled(client.client_id), 2.0)
            with pytest.raises(BearerError):
                b.verifier.verify(token)  # the cached token too
        finally:
            admin.close()
        keys = open_key_admin(cfg)
        try:
            old = a.keys.active.kid
            new = keys.rotate("ES256", 3600, 30)
            await until(lambda: a.keys.active.kid == new.kid and b.keys.active.kid == new.kid, 2.0)
            assert set(b.keys.verify_keys) == {old, new.kid}
        finally:
            close_admin(keys)
        assert a.sync.notifications >= 3 and b.sync.notifications >= 3


async def test_a_lost_notification_is_made_good_by_the_periodic_refresh(pg_database: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pg_database, shared_refresh=1)
    admin = open_registry(cfg)
    client, _ = admin.add("c", ["s"])
    admin.close()
    async with running(cfg) as w:
        assert w.clients.is_enabled(client.client_id)
        heard = w.sync.notifications
        with pg_database.connect() as conn:  # a change whose notification never comes
            conn.execute("ALTER TABLE oauth_clients DISABLE TRIGGER oauth_clients_changed")
            conn.execute("UPDATE oauth_clients SET enabled = false WHERE client_id = %s", (client.client_id,))
        took = await until(lambda: not w.clients.is_enabled(client.client_id), 3.0)
        assert w.sync.notifications == heard
        assert took <= 1.5  # the documented bound: shared_refresh (plus one read)


async def test_an_outage_keeps_serving_from_memory_and_commands_fail_in_one_line(
    pg_database: Any, tmp_path: Path
) -> None:
    cfg = config(tmp_path, pg_database, shared_refresh=1)
    admin = open_registry(cfg)
    client, secret = admin.add("c", ["transactions:process"])
    admin.close()
    async with running(cfg) as w:
        token = w.issuer.issue(client.client_id, client.scopes)
        refuse_connections(pg_database, True)
        try:
            await trio.sleep(2.5)  # refreshes fail meanwhile
            assert w.clients.authenticate(client.client_id, secret) is not None
            fresh = w.issuer.issue(client.client_id, client.scopes)
            assert w.verifier.verify(fresh).client_id == w.verifier.verify(token).client_id == client.client_id
            cfg_path = tmp_path / "c.toml"
            for argv in (("client", "disable", client.client_id), ("keys", "rotate"), ("client", "list")):
                line = await trio.to_thread.run_sync(lambda argv=argv: one_line_error(cli(cfg_path, *argv)))
                assert line.startswith("cloudlayer: PostgreSQL 127.0.0.1:"), line
        finally:
            refuse_connections(pg_database, False)
        admin = open_registry(cfg)
        try:
            admin.disable(client.client_id)  # once back, the next change arrives as usual
        finally:
            admin.close()
        await until(lambda: not w.clients.is_enabled(client.client_id), 10.0)


def _relation_bytes(pg: Any) -> bytes:
    """Every byte PostgreSQL wrote for this database: its heap and index files and the WAL."""
    with pg.cluster.admin() as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (pg.name,)).fetchone()
    data = pg.cluster.root / "data"
    out = bytearray()
    for path in [*sorted((data / "base" / str(row[0])).iterdir()), *sorted((data / "pg_wal").glob("0*"))]:
        if path.is_file():
            out += path.read_bytes()
    return bytes(out)


def test_the_database_holds_no_private_key_or_client_secret_in_clear(pg_database: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pg_database)
    preflight(cfg)
    keys = open_key_admin(cfg)
    keys.rotate("ES256", 3600, 30)
    close_admin(keys)
    admin = open_registry(cfg)
    secrets = [admin.add(f"c{i}", ["s"])[1] for i in range(3)]
    secrets.append(admin.rotate_secret(admin.list()[0].client_id)[1])
    admin.close()
    w = Worker(cfg)
    w.sync.refresh_sync()
    private = []
    for rec in w.keys.verify_keys.values():
        d = rec.key.as_dict(private=True)["d"]
        private += [d.encode(), base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))]
    w.clients.close()
    assert len(private) == 4
    dumped = _relation_bytes(pg_database)
    with pg_database.connect() as conn:  # we read the right files: the stored (sealed, hashed) values are there
        stored = [bytes(r[0]) for r in conn.execute("SELECT sealed_private FROM oauth_signing_keys").fetchall()]
        stored += [bytes(r[0]) for r in conn.execute("SELECT secret_hash FROM oauth_clients").fetchall()]
    assert len(stored) == 5 and all(value in dumped for value in stored)
    for needle in [s.encode() for s in secrets] + private + [b"PRIVATE KEY"]:
        assert needle not in dumped
    # And what the tables hold, as a client of the database sees it.
    with pg_database.connect() as conn:
        text = "".join(
            str(r)
            for t in ("oauth_clients", "oauth_signing_keys", "oauth_settings")
            for r in conn.execute(sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(t))).fetchall()
        )
    for needle in [*secrets, *(p.decode() for p in private[::2])]:
        assert needle not in text


def test_a_sealed_key_moved_into_another_row_does_not_open(pg_database: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pg_database)
    preflight(cfg)
    keys = open_key_admin(cfg)
    keys.rotate("ES256", 3600, 30)
    close_admin(keys)
    with pg_database.connect() as conn:  # the retired key's sealed blob copied over the active one's
        conn.execute(
            "UPDATE oauth_signing_keys SET sealed_private = (SELECT sealed_private FROM oauth_signing_keys"
            " WHERE NOT active) WHERE active"
        )
    w = Worker(cfg)
    try:
        with pytest.raises(KeyFileError, match="does not open on this host"):
            w.sync.refresh_sync()
    finally:
        w.clients.close()
    with pytest.raises(ConfigError, match="does not open on this host"):
        preflight(cfg)  # `serve` stops with that line


def test_a_host_with_another_pepper_is_refused(pg_database: Any, tmp_path: Path) -> None:
    first = config(tmp_path / "a", pg_database)
    admin = open_registry(first)
    admin.add("c", ["s"])
    admin.close()
    other = config(tmp_path / "b", pg_database, migrated=False)  # its own var dir: a pepper of its own
    with pytest.raises(ConfigError, match="pepper"):
        preflight(other)
    with pytest.raises(RegistryError, match="pepper"):
        open_registry(other)
    assert "pepper" in one_line_error(cli(tmp_path / "b" / "c.toml", "client", "add", "x"))


def test_import_copies_a_hosts_files_once_and_keeps_their_tokens_working(pg_database: Any, tmp_path: Path) -> None:
    var = tmp_path / "var"
    files = write_config(tmp_path / "files.toml", {"server": {"var_dir": str(var)}})
    added = json.loads(cli(files, "client", "add", "old", "--json").stdout)
    from cloudlayer.oauth.keys import KeyRing

    assert cli(files, "keys", "rotate").returncode == 0  # the host's first key
    scopes = ("transactions:process",)
    old_token = TokenIssuer(KeyRing(var / "oauth" / "keys.json"), ISSUER, AUDIENCE, 3600).issue(
        added["client_id"], scopes
    )
    assert cli(files, "keys", "rotate").returncode == 0  # a retired key and an active one in the file
    file_keys = KeyRing(var / "oauth" / "keys.json")
    new_token = TokenIssuer(file_keys, ISSUER, AUDIENCE, 3600).issue(added["client_id"], scopes)

    cfg = config(tmp_path, pg_database)  # the same var dir (pepper, sealing ring), now on PostgreSQL
    shared = tmp_path / "c.toml"
    first = cli(shared, "client", "import", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"imported": [added["client_id"]], "present": []}
    assert json.loads(cli(shared, "client", "import", "--json").stdout)["present"] == [added["client_id"]]
    keys = cli(shared, "keys", "import", "--json")
    assert keys.returncode == 0, keys.stderr
    outcome = json.loads(keys.stdout)
    assert outcome["active"] == [file_keys.active.kid] and len(outcome["verify-only"]) == 1
    again = json.loads(cli(shared, "keys", "import", "--json").stdout)
    assert sorted(again["present"]) == sorted(file_keys.verify_keys)
    audit = (var / "audit" / "audit.jsonl").read_text()
    assert '"client import"' in audit and '"keys import"' in audit and added["client_secret"] not in audit

    preflight(cfg)  # an active key exists: none is created
    w = Worker(cfg)
    try:
        w.sync.refresh_sync()
        assert w.keys.active.kid == file_keys.active.kid
        assert w.verifier.verify(old_token).client_id == added["client_id"]
        assert w.verifier.verify(new_token).client_id == added["client_id"]
        assert w.clients.authenticate(added["client_id"], added["client_secret"]) is not None
    finally:
        w.clients.close()


def test_a_second_hosts_active_key_is_imported_verify_only(pg_database: Any, tmp_path: Path) -> None:
    cfg = config(tmp_path, pg_database)
    preflight(cfg)  # the database has its own active key already
    from cloudlayer.oauth.keys import ensure_key_file, read_key_file

    ensure_key_file(tmp_path / "var" / "oauth" / "keys.json", "ES256")
    file_active, _ = read_key_file(tmp_path / "var" / "oauth" / "keys.json")
    done = cli(tmp_path / "c.toml", "keys", "import", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verify-only"] == [file_active]
    listed = json.loads(cli(tmp_path / "c.toml", "keys", "list", "--json").stdout)
    row = next(r for r in listed if r["kid"] == file_active)
    assert not row["active"] and row["verify_until"] == pytest.approx(time.time() + 3630, abs=60)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("client", "import", "--from", "/nonexistent/clients.lmdb"), "no client registry at /nonexistent"),
        (("keys", "import", "--from", "/nonexistent/keys.json"), "key file not found"),
        (("keys", "import", "--from", "{garbage}"), "malformed key file"),
        (("client", "disable", ""), "no client with id ''"),
        (("client", "rotate-secret", "x" * 300), "no client with id"),
        (("client", "add", "bad\nname"), "printable"),
        (("client", "add", "ok", "--scope", 'a"b'), "scope"),
    ],
)
def test_garbage_in_the_commands_gets_one_clear_line(
    pg_database: Any, tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    config(tmp_path, pg_database)
    (tmp_path / "{garbage}").write_text("{not json")
    argv = tuple(str(tmp_path / a) if a == "{garbage}" else a for a in argv)
    assert message in one_line_error(cli(tmp_path / "c.toml", *argv))


def test_import_is_refused_with_the_lmdb_backend(tmp_path: Path) -> None:
    files = write_config(tmp_path / "files.toml", {"server": {"var_dir": str(tmp_path / "var")}})
    for argv in (("client", "import"), ("keys", "import")):
        assert 'is for "postgres" only' in one_line_error(cli(files, *argv), code=2)


@pytest.mark.parametrize("value", [0, -1, 3601, "'soon'", "nan"])
def test_garbage_in_shared_refresh_names_the_key(tmp_path: Path, value: object) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[oauth]\nshared_refresh = {value}\n")
    with pytest.raises(ConfigError, match=r"oauth\.shared_refresh"):
        load_config(path, environ={})


def test_the_dev_client_is_created_once_in_the_shared_registry(pg_database: Any, tmp_path: Path) -> None:
    from cloudlayer.oauth import OAuthService

    cfg = config(tmp_path, pg_database)
    cfg = msgspec.structs.replace(
        cfg,
        server=msgspec.structs.replace(cfg.server, dev_mode=True),
        oauth=msgspec.structs.replace(cfg.oauth, dev_client=True),
    )
    preflight(cfg)
    pairs = []
    for _ in range(2):  # two starts of the serving parent
        service = OAuthService.from_config(cfg)
        try:
            pairs.append(service.ensure_dev_client())
        finally:
            service.close()
    assert pairs[0] is not None and pairs[0] == pairs[1]
    admin = open_registry(cfg)
    try:
        assert [v.name for v in admin.list()] == ["dev"]
    finally:
        admin.close()
