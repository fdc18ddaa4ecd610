"""`cloudlayer txn check` on the PostgreSQL store: the checks of store/integrity.py, on the shared database.

Per row: the record decodes and its claim-time fields agree with the columns the lookups use (ids,
fingerprint, RRN, terminal + STAN, creation time); COMPLETED holds an answer and no sealed request; PENDING
holds its sealed request; no PENDING older than `pending_max_age` whose owner is dead (on this host by /proc,
elsewhere by its lease having run out, by the database's clock: store/pg/lease.py); no card data in any stored
byte but the sealed request (ciphertext). The indexes are PostgreSQL's own, kept by it: not re-checked here.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .. import codec
from ..integrity import IntegrityReport, Problem, _check_record
from ..owner import OwnerId, local_owner_alive
from ..types import State
from .database import Conn
from .rows import COLUMNS, N_COLUMNS, to_record

_BATCH = 500


def _owner_dead(owner: str, lease_left: float | None) -> bool:
    oid = OwnerId.parse(owner)
    if oid is not None and local_owner_alive(oid) is False:
        return True
    return lease_left is None or lease_left <= 0


def _stored_bytes(row: tuple[Any, ...]) -> bytes:
    """Every byte of a row but the sealed request, for the card-data scan."""
    parts: list[bytes] = []
    for i, v in enumerate(row):
        if i == 3:  # sealed_request (rows.COLUMNS order): ciphertext
            continue
        if isinstance(v, bytes):
            parts.append(v)
        elif isinstance(v, list):
            parts.extend(bytes(x) for x in v)
        elif v is not None:
            parts.append(str(v).encode())
    return b"\n".join(parts)


def scan_database(
    conn: Conn, *, describe: str, pending_max_age: float = 60.0, now: float | None = None
) -> IntegrityReport:
    now = time.time() if now is None else now
    report = IntegrityReport(path=f"postgres {describe}")
    # A server-side cursor inside one transaction: one consistent snapshot, read in batches.
    with conn.transaction(), conn.cursor(name="cloudlayer_integrity") as cur:
        cur.execute(
            f"SELECT {COLUMNS}, t.client_id, t.transaction_id, t.fingerprint, t.rrn, t.terminal_id, t.stan,"  # noqa: S608
            " t.created_at, (SELECT extract(epoch FROM o.lease_until - now())::float8 FROM owners o"
            " WHERE o.owner = t.owner) FROM transactions t ORDER BY t.client_id, t.transaction_id"
        )
        while batch := cur.fetchmany(_BATCH):
            for row in batch:
                _check_row(row, report, now, pending_max_age)
    return report


def _check_row(row: tuple[Any, ...], report: IntegrityReport, now: float, pending_max_age: float) -> None:
    report.records += 1
    client_id, transaction_id, fingerprint, rrn, terminal_id, stan, created_at, left = row[N_COLUMNS : N_COLUMNS + 8]
    key = codec.record_key(client_id, transaction_id)
    k = f"{client_id}/{transaction_id}"
    try:
        rec = to_record(row)
    except (msgspec.DecodeError, ValueError):
        report.problems.append(Problem("decode", k, "record does not decode as a TransactionRecord"))
        return
    columns = (rec.client_id, rec.transaction_id, rec.fingerprint, rec.rrn, rec.terminal_id, rec.stan, rec.created_at)
    if columns != (client_id, transaction_id, fingerprint, rrn, terminal_id, stan, created_at):
        report.problems.append(Problem("columns", k, "record fields disagree with the row's indexed columns"))
    # store/integrity.py's per-record checks, its orphan check off (owners elsewhere are judged below).
    _check_record(rec, key, _stored_bytes(row[:N_COLUMNS]), now, float("inf"), report)
    if rec.state is State.PENDING:
        age = now - rec.created_at
        if age > pending_max_age and _owner_dead(rec.owner, left):
            report.problems.append(Problem("orphan", k, f"PENDING for {age:.0f}s and its owner is gone"))
