"""An offline integrity scan of an LMDB transaction store: run it on a stopped (or quiet) host's store.
(store.backend = "postgres": store/pg/integrity.py, the same checks on the shared database.)

Checks, each reported as a `Problem` naming the record key (client NUL transaction id, never card data):
  - every record decodes as a TransactionRecord and sits under the key its own ids make;
  - COMPLETED records hold a response (status, body) and no sealed request (card data erased);
  - no PENDING record older than `pending_max_age` seconds whose owner is dead or unknown
    (an orphan nobody resubmitted: a transaction that may be authorized and never answered);
  - indexes match records both ways: by_rrn, by_term_stan, by_created for every record, by_completed for
    every COMPLETED record, and no index entry pointing at a missing or different record;
  - card keys match both ways: every record's card key (32 bytes) maps to it in by_card, every by_card entry
    names a record carrying that key;
  - a REVERSAL named by an original's reversed_by exists and reverses that original;
  - no card data in any stored byte: a masked PAN with at most 6+4 digits, no Luhn-valid 13-19 digit run
    in the raw record bytes (apart from the sealed request, which is ciphertext).

`python -m cloudlayer.store.integrity --config FILE` prints the report as JSON and exits 1 on a problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgspec

from . import codec
from .owner import OwnerId, local_owner_alive
from .types import State, TransactionRecord

if TYPE_CHECKING:
    from ..config import Config

_DIGIT_RUN = re.compile(rb"(?<![0-9])[0-9]{13,19}(?![0-9])")
_MASKED_DIGITS = re.compile(r"[0-9]")


class Problem(msgspec.Struct, frozen=True):
    check: str
    key: str
    detail: str


class IntegrityReport(msgspec.Struct, kw_only=True):
    path: str
    records: int = 0
    pending: int = 0
    completed: int = 0
    index_entries: int = 0
    problems: list[Problem] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def luhn_valid(digits: bytes | str) -> bool:
    text = digits.decode() if isinstance(digits, bytes) else digits
    total = 0
    for i, ch in enumerate(reversed(text)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_runs(data: bytes) -> list[bytes]:
    """Luhn-valid runs of 13-19 ASCII digits not glued to other digits: candidate PANs."""
    return [m.group() for m in _DIGIT_RUN.finditer(data) if luhn_valid(m.group())]


def _printable_key(key: bytes) -> str:
    return bytes(key).replace(b"\0", b"/").decode("utf-8", "replace")


def _open(path: Path) -> lmdb.Environment:
    # Read-only with the lock file, so a scan of a live store sees consistent snapshots.
    return lmdb.open(str(path), readonly=True, max_dbs=8, lock=True, readahead=False, subdir=True)


def iter_records(path: Path) -> Iterator[TransactionRecord]:
    """Every decodable record of a store (for tests and the chaos harness: compare answers)."""
    env = _open(path)
    try:
        with env.begin() as txn:
            db = env.open_db(b"records", txn=txn, create=False)
            for _, raw in txn.cursor(db=db):
                try:
                    yield codec.decode(raw)
                except msgspec.DecodeError:
                    continue
    finally:
        env.close()


def read_record(path: Path, client_id: str, transaction_id: str) -> TransactionRecord | None:
    """One record by its ids, read from outside the host (tests: "nothing was stored for this request")."""
    if not (path / "data.mdb").exists():
        return None
    env = _open(path)
    try:
        with env.begin() as txn:
            db = env.open_db(b"records", txn=txn, create=False)
            raw = txn.get(codec.record_key(client_id, transaction_id), db=db)
            return None if raw is None else codec.decode(raw)
    finally:
        env.close()


def _owner_dead(owner: str) -> bool:
    oid = OwnerId.parse(owner)
    if oid is None:
        return True
    # Another host's owner cannot be judged from here: not reported (its heartbeat decides at run time).
    return local_owner_alive(oid) is False


def scan_store(path: Path, *, pending_max_age: float = 60.0, now: float | None = None) -> IntegrityReport:
    now = time.time() if now is None else now
    report = IntegrityReport(path=str(path))
    problems = report.problems
    env = _open(path)
    try:
        with env.begin() as txn:
            dbs = {
                name: env.open_db(name.encode(), txn=txn, create=False, dupsort=name in ("by_rrn", "by_term_stan"))
                for name in ("records", "by_rrn", "by_term_stan", "by_created", "by_completed")
            }
            try:
                by_card = env.open_db(b"by_card", txn=txn, create=False)
            except lmdb.NotFoundError:
                by_card = None  # a store written before card keys: none to check
            records: dict[bytes, TransactionRecord] = {}
            for key, raw in txn.cursor(db=dbs["records"]):
                k = _printable_key(key)
                report.records += 1
                try:
                    rec = codec.decode(raw)
                except msgspec.DecodeError as e:
                    problems.append(Problem("decode", k, str(e)))
                    continue
                records[bytes(key)] = rec
                _check_record(rec, bytes(key), bytes(raw), now, pending_max_age, report)
            _check_indexes(txn, dbs, records, report)
            _check_card_keys(txn, by_card, records, report)
            _check_reversals(records, report)
    finally:
        env.close()
    return report


def _check_record(
    rec: TransactionRecord, key: bytes, raw: bytes, now: float, pending_max_age: float, report: IntegrityReport
) -> None:
    k = _printable_key(key)
    problems = report.problems
    if codec.record_key(rec.client_id, rec.transaction_id) != key:
        problems.append(Problem("key", k, "record ids do not match its key"))
    if rec.state is State.COMPLETED:
        report.completed += 1
        if not 100 <= rec.response_status <= 599 or not rec.response_body:
            problems.append(Problem("completed", k, "COMPLETED without a stored response"))
        if rec.sealed_request is not None:
            problems.append(Problem("completed", k, "COMPLETED still holds the sealed request"))
        if not rec.completed_at:
            problems.append(Problem("completed", k, "COMPLETED without completed_at"))
    else:
        report.pending += 1
        if rec.sealed_request is None:
            problems.append(Problem("pending", k, "PENDING without its sealed request: cannot be recovered"))
        age = now - rec.created_at
        if age > pending_max_age and _owner_dead(rec.owner):
            problems.append(Problem("orphan", k, f"PENDING for {age:.0f}s and its owner is gone"))
    if rec.masked_pan is not None and len(_MASKED_DIGITS.findall(rec.masked_pan)) > 10:
        problems.append(Problem("card-data", k, "masked_pan shows more than 6+4 digits"))
    # The sealed request is ciphertext: blank it before looking for digit runs in the rest.
    plain = raw.replace(rec.sealed_request, b"") if rec.sealed_request else raw
    if luhn_runs(plain):
        problems.append(Problem("card-data", k, "a Luhn-valid 13-19 digit run in the record"))


def _check_indexes(
    txn: lmdb.Transaction[bytes],
    dbs: dict[str, lmdb._Database],
    records: dict[bytes, TransactionRecord],
    report: IntegrityReport,
) -> None:
    problems = report.problems
    seen: dict[str, set[tuple[bytes, bytes]]] = {name: set() for name in dbs if name != "records"}
    for name, db in dbs.items():
        if name == "records":
            continue
        for ikey, value in txn.cursor(db=db):
            report.index_entries += 1
            ikey, value = bytes(ikey), bytes(value)
            target = ikey[8:] if name in ("by_created", "by_completed") else value
            seen[name].add((ikey, target))
            rec = records.get(target)
            if rec is None:
                problems.append(Problem("index", _printable_key(target), f"{name} entry for a missing record"))
                continue
            if name == "by_completed" and rec.state is not State.COMPLETED:
                problems.append(Problem("index", _printable_key(target), "by_completed entry for a PENDING record"))
    for key, rec in records.items():
        k = _printable_key(key)
        expected: list[tuple[str, bytes]] = [("by_created", codec.time_key(rec.created_at, key))]
        if rec.rrn:
            expected.append(("by_rrn", rec.rrn.encode()))
        if rec.terminal_id and rec.stan:
            expected.append(("by_term_stan", codec.terminal_stan_key(rec.terminal_id, rec.stan)))
        for name, ikey in expected:
            target = ikey[8:] if name == "by_created" else key
            if (ikey, target) not in seen[name]:
                problems.append(Problem("index", k, f"record missing from {name}"))
        if rec.state is State.COMPLETED and (codec.time_key(rec.completed_at, key), key) not in seen["by_completed"]:
            problems.append(Problem("index", k, "COMPLETED record missing from by_completed"))


def _check_card_keys(
    txn: lmdb.Transaction[bytes],
    by_card: lmdb._Database | None,
    records: dict[bytes, TransactionRecord],
    report: IntegrityReport,
) -> None:
    problems = report.problems
    index: dict[bytes, bytes] = {}
    if by_card is not None:
        for ikey, target in txn.cursor(db=by_card):
            report.index_entries += 1
            index[bytes(ikey)] = bytes(target)
            rec = records.get(bytes(target))
            if rec is None:
                problems.append(Problem("card-key", _printable_key(target), "by_card entry for a missing record"))
            elif codec.card_index_key(rec.client_id, rec.card_key) != ikey:
                problems.append(Problem("card-key", _printable_key(target), "by_card entry for another card key"))
    for key, rec in records.items():
        if not rec.card_key:
            continue
        if len(rec.card_key) != codec.CARD_KEY_BYTES:
            problems.append(Problem("card-key", _printable_key(key), "card_key is not 32 bytes"))
        elif index.get(codec.card_index_key(rec.client_id, rec.card_key)) != key:
            problems.append(Problem("card-key", _printable_key(key), "record missing from by_card"))


def _check_reversals(records: dict[bytes, TransactionRecord], report: IntegrityReport) -> None:
    for key, rec in records.items():
        if not rec.reversed_by:
            continue
        reversal = records.get(codec.record_key(rec.client_id, rec.reversed_by))
        if reversal is None or reversal.original_transaction_id != rec.transaction_id:
            report.problems.append(
                Problem("reversal", _printable_key(key), "reversed_by names no reversal of this transaction")
            )


def _scan_postgres(cfg: Config, pending_max_age: float) -> IntegrityReport:
    from .pg.database import Database
    from .pg.integrity import scan_database
    from .pg.settings import PgSettings

    settings = msgspec.structs.replace(PgSettings.from_config(cfg), pool_min=1, pool_max=1)
    db = Database(settings, application_name="cloudlayer-txn-check")
    db.open_sync()
    try:
        return db.call_sync(
            lambda conn: scan_database(
                conn,
                describe=settings.describe(),
                pending_max_age=pending_max_age,
            )
        )
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    from ..config import load_config

    parser = argparse.ArgumentParser(prog="python -m cloudlayer.store.integrity", description=__doc__)
    parser.add_argument("--config", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--pending-max-age", type=float, default=60.0)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if cfg.store.backend == "postgres":
        report = _scan_postgres(cfg, args.pending_max_age)
    else:
        report = scan_store(cfg.var_path(cfg.store.path), pending_max_age=args.pending_max_age)
    print(json.dumps(msgspec.to_builtins(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
