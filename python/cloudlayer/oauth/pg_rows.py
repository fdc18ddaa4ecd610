"""The SQL of OAuth on PostgreSQL (migration 0005): client rows, signing key rows, the pepper check.

Every function takes a connection (store/pg/database.py runs it in a worker thread). A private signing key is
written only sealed with the hosts' sealing key ring; its associated data names the row (kid and alg), so a
sealed blob copied into another row does not open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import msgspec
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet

from ..sealing import Sealer
from ..store.pg.database import Conn
from .clients import Client
from .keys import SUPPORTED_JWS_ALGS, KeyFileError, KeyMeta, KeyRecord, new_record, retire_and_prune

# pg_advisory_xact_lock key for changes to the key set: first start and rotation on two hosts take turns.
# Statements interpolate only these module constants (S608 is off for this file); every value is a bound parameter.
_KEYS_LOCK = int.from_bytes(hashlib.sha256(b"cloudlayer oauth keys").digest()[:8], "big", signed=True)
_PEPPER_CHECK = b"cloudlayer oauth pepper check v1"
_CLIENT_COLUMNS = "client_id, name, secret_hash, scopes, auth_methods, grant_types, enabled, created_at, updated_at"
_KEY_COLUMNS = "kid, alg, sealed_private, public_jwk, active, created_at, retired_at, verify_until"


class KeyRow(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    alg: str
    sealed_private: bytes
    public_jwk: str
    active: bool
    meta: KeyMeta


# -- clients -------------------------------------------------------------------------------------------------
def _client(row: tuple[Any, ...]) -> Client:
    cid, name, secret_hash, scopes, methods, grants, enabled, created, updated = row
    return Client(
        client_id=cid,
        name=name,
        secret_hash=bytes(secret_hash),
        scopes=tuple(scopes),
        auth_methods=tuple(methods),
        grant_types=tuple(grants),
        enabled=enabled,
        created_at=created,
        updated_at=updated,
    )


def _client_params(c: Client) -> tuple[Any, ...]:
    return (
        c.client_id,
        c.name,
        c.secret_hash,
        list(c.scopes),
        list(c.auth_methods),
        list(c.grant_types),
        c.enabled,
        c.created_at,
        c.updated_at,
    )


def load_clients(conn: Conn) -> dict[str, Client]:
    rows = conn.execute(f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id").fetchall()
    return {r[0]: _client(r) for r in rows}


def insert_client(conn: Conn, client: Client) -> bool:
    """False when a client with this id exists (nothing written)."""
    cur = conn.execute(
        f"INSERT INTO oauth_clients ({_CLIENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (client_id) DO NOTHING",
        _client_params(client),
    )
    return cur.rowcount == 1


def put_client(conn: Conn, client: Client) -> None:
    conn.execute(
        f"INSERT INTO oauth_clients ({_CLIENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, secret_hash = excluded.secret_hash,"
        " scopes = excluded.scopes, auth_methods = excluded.auth_methods, grant_types = excluded.grant_types,"
        " enabled = excluded.enabled, created_at = excluded.created_at, updated_at = excluded.updated_at",
        _client_params(client),
    )


def update_client(conn: Conn, client_id: str, change: Callable[[Client], Client]) -> Client | None:
    """Read-modify-write one client under its row lock; None for an unknown id."""
    with conn.transaction():
        row = conn.execute(
            f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = %s FOR UPDATE", (client_id,)
        ).fetchone()
        if row is None:
            return None
        new = change(_client(row))
        put_client(conn, new)
        return new


# -- signing keys --------------------------------------------------------------------------------------------
def _context(kid: str, alg: str) -> bytes:
    return b"cloudlayer/oauth-signing-key\x00" + kid.encode() + b"\x00" + alg.encode()


def open_key(sealer: Sealer, row: KeyRow) -> KeyRecord:
    """The row's private key, opened with this host's sealing key ring (SealError if it cannot)."""
    jwk = json.loads(sealer.open(row.sealed_private, _context(row.kid, row.alg)))
    if jwk.get("kid") != row.kid or jwk.get("alg") != row.alg or row.alg not in SUPPORTED_JWS_ALGS:
        raise KeyFileError(f"signing key {row.kid} does not match its row")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        key = KeySet.registry_cls.import_key(jwk)
    if not key.is_private:
        raise KeyFileError(f"signing key {row.kid} has no private part")
    return KeyRecord(kid=row.kid, alg=row.alg, key=key, meta=row.meta)


def load_keys(conn: Conn) -> list[KeyRow]:
    rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM oauth_signing_keys ORDER BY created_at, kid").fetchall()
    return [
        KeyRow(
            kid=kid,
            alg=alg,
            sealed_private=bytes(sealed),
            public_jwk=public,
            active=active,
            meta=KeyMeta(created_at=created, retired_at=retired, verify_until=until),
        )
        for kid, alg, sealed, public, active, created, retired, until in rows
    ]


def _insert_key(conn: Conn, sealer: Sealer, rec: KeyRecord, active: bool) -> bool:
    private = json.dumps(rec.key.as_dict(private=True, kid=rec.kid, alg=rec.alg, use="sig")).encode()
    public = json.dumps(rec.key.as_dict(private=False, kid=rec.kid, alg=rec.alg, use="sig"))
    cur = conn.execute(
        f"INSERT INTO oauth_signing_keys ({_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (kid) DO NOTHING",
        (
            rec.kid,
            rec.alg,
            sealer.seal(private, _context(rec.kid, rec.alg)),
            public,
            active,
            rec.meta.created_at,
            rec.meta.retired_at,
            rec.meta.verify_until,
        ),
    )
    return cur.rowcount == 1


def ensure_key(conn: Conn, sealer: Sealer, jws_alg: str) -> KeyRecord | None:
    """Create the active key unless one exists (hosts starting at once: one creates). The new key, or None."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
        if conn.execute("SELECT 1 FROM oauth_signing_keys WHERE active").fetchone() is not None:
            return None
        rec = new_record(jws_alg, time.time())
        _insert_key(conn, sealer, rec, active=True)
        return rec


def rotate(conn: Conn, sealer: Sealer, jws_alg: str, token_lifetime: float, leeway: float) -> KeyRecord:
    """keys rotate: the same rule as the key file (keys.retire_and_prune), in one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
        rows = load_keys(conn)
        active = next((r.kid for r in rows if r.active), "")
        now = time.time()
        records = [KeyRecord(kid=r.kid, alg=r.alg, key=None, meta=r.meta) for r in rows]  # metadata only
        kept = {r.kid: r for r in retire_and_prune(active, records, now, token_lifetime, leeway)}
        for r in records:
            if r.kid not in kept:
                conn.execute("DELETE FROM oauth_signing_keys WHERE kid = %s", (r.kid,))
            elif r.kid == active:
                conn.execute(
                    "UPDATE oauth_signing_keys SET active = false, retired_at = %s, verify_until = %s WHERE kid = %s",
                    (r.meta.retired_at, r.meta.verify_until, r.kid),
                )
        new = new_record(jws_alg, now)
        _insert_key(conn, sealer, new, active=True)
        return new


def import_key(conn: Conn, sealer: Sealer, rec: KeyRecord, was_active: bool, verify_for: float) -> str:
    """Copy one key of a host's key file in: 'active' (the database had no active key), 'verify-only' (the
    file's active key, kept verifying `verify_for` seconds, so the tokens it signed keep working) or 'present'."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
        if conn.execute("SELECT 1 FROM oauth_signing_keys WHERE kid = %s", (rec.kid,)).fetchone() is not None:
            return "present"
        has_active = conn.execute("SELECT 1 FROM oauth_signing_keys WHERE active").fetchone() is not None
        if was_active and not has_active:
            _insert_key(conn, sealer, rec, active=True)
            return "active"
        if was_active:
            now = time.time()
            rec = msgspec.structs.replace(
                rec, meta=KeyMeta(created_at=rec.meta.created_at, retired_at=now, verify_until=now + verify_for)
            )
        _insert_key(conn, sealer, rec, active=False)
        return "verify-only"


# -- the pepper ------------------------------------------------------------------------------------------------
def pepper_check_value(pepper: bytes) -> bytes:
    return hmac.new(pepper, _PEPPER_CHECK, hashlib.sha256).digest()


def check_pepper(conn: Conn, pepper: bytes) -> bool:
    """Record this pepper's check value if none is recorded; True when it matches the recorded one."""
    mine = pepper_check_value(pepper)
    conn.execute(
        "INSERT INTO oauth_settings (name, value) VALUES ('pepper_check', %s) ON CONFLICT (name) DO NOTHING", (mine,)
    )
    row = conn.execute("SELECT value FROM oauth_settings WHERE name = 'pepper_check'").fetchone()
    return row is not None and hmac.compare_digest(bytes(row[0]), mine)
