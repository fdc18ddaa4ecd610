"""`SafStore` on PostgreSQL (sibling of acquirer/saf.py): the reversal queue shared by every host.

Leases: a host takes due rows with `SELECT ... FOR UPDATE SKIP LOCKED` (two hosts never take one row, and
neither waits for the other) and stamps `leased_until = now() + lease` with the DATABASE's clock. A host that
dies holding a lease leaves rows that any host takes once that time has passed; `record_attempt` (just before
each send) counts the attempt only while the lease is still ours, so a host whose lease ran out does not send.

The reversal request is stored only sealed with the hosts' sealing key (associated data = the key).

Fencing (docs/postgres.md "A reversal queued by an owner that lost its claim"): a reversal queued for a claim
(`ClaimFence`) is inserted only if the transaction's record is still that owner's, checked under the record's
row lock (FOR SHARE) in the insert statement itself. A take-over updates that row, so the two are serialized:
if the insert commits first, the taker's recovery (after its fence wait) finds the reversal and answers
"reversed"; if the take-over commits first, the insert sees the new owner and the reversal is dropped, because
the new owner inquires and decides alone (a reversal landing after it answered "approved" would reverse at
the issuer what Mypinpad was told was approved). This is what makes a reversal kept in memory through an
outage longer than the lease safe to write later.

PostgreSQL unavailable: a reversal is owed, so `add` never loses one while its claim is ours. It keeps the
sealed entry in memory (`len` counts it) and writes it, fenced, on every later call until it lands, but it
raises `ReversalNotDurable`: memory is not durable (a worker that exits or is killed loses it), so nothing
that relies on the reversal may be recorded yet. The flow then answers 503 and leaves the record PENDING, so
whoever recovers it later (this worker, once `known` could write the backlog, or another host after our
lease) decides from what is durable. `known` writes the backlog first and raises while it cannot. An
acknowledgement that could not be recorded is kept the same way (until then the row may be sent again after
its lease: a repeat 0401, which the acquirer answers without reversing twice). Loop calls (`claim_due`,
`next_due`, `purge_done`, `release`) report nothing and try again later; `record_attempt` says "do not send".
A process that dies during the outage loses its memory, and nothing was recorded on it: the transaction is
still PENDING in the transaction store, and whoever recovers it inquires and reverses again (docs/postgres.md,
"SAF in PostgreSQL").

Every method blocks (the network): call them through trio.to_thread.run_sync.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import structlog

from ...acquirer.saf import SafEntry, SafItem, entry_key
from ...acquirer.types import AcquirerRequest, ClaimFence, MessageKind
from ...sealing import Sealer, SealError
from .database import Conn, Database, DatabaseUnavailable

log = structlog.get_logger(__name__)

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AcquirerRequest)
_UNOPENABLE_RETRY = 3600.0  # a row that cannot be unsealed waits for an operator (`saf list`), never dropped
_OUTAGE_RETRY = 1.0  # seconds until the loop tries the database again

_INSERT = (
    "INSERT INTO saf_entries (key, sealed, reason, attempts, terminal_id, stan, rrn, amount, original_mti)"
    " SELECT %(key)s, %(sealed)s, %(reason)s, %(attempts)s, %(terminal_id)s, %(stan)s, %(rrn)s, %(amount)s,"
    " %(original_mti)s WHERE NOT EXISTS (SELECT 1 FROM saf_done WHERE key = %(key)s)"
    " ON CONFLICT (key) DO NOTHING"
)
# The same insert for a claim's reversal: (rows inserted, the claim still ours), in one statement so that the
# row lock is held only by the server, never across a round trip of a host that may pause.
_INSERT_FENCED = (
    "WITH ours AS (SELECT 1 FROM transactions t WHERE t.client_id = %(client_id)s"
    "  AND t.transaction_id = %(transaction_id)s AND t.owner = %(owner)s FOR SHARE),"
    " ins AS (INSERT INTO saf_entries (key, sealed, reason, attempts, terminal_id, stan, rrn, amount, original_mti)"
    "  SELECT %(key)s, %(sealed)s, %(reason)s, %(attempts)s, %(terminal_id)s, %(stan)s, %(rrn)s, %(amount)s,"
    "  %(original_mti)s WHERE EXISTS (SELECT 1 FROM ours)"
    "  AND NOT EXISTS (SELECT 1 FROM saf_done WHERE key = %(key)s) ON CONFLICT (key) DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM ins), EXISTS (SELECT 1 FROM ours)"
)
_CLAIM = (
    "WITH due AS (SELECT key FROM saf_entries"
    "  WHERE next_attempt <= now() AND (leased_until IS NULL OR leased_until <= now())"
    "  ORDER BY next_attempt LIMIT %s FOR UPDATE SKIP LOCKED)"
    " UPDATE saf_entries s SET lease_owner = %s, leased_until = now() + make_interval(secs => %s)"
    " FROM due WHERE s.key = due.key RETURNING s.key, s.sealed, s.attempts"
)
_ENTRY_COLUMNS = (
    "key, sealed, reason, extract(epoch FROM created_at)::float8, attempts, extract(epoch FROM next_attempt)::float8,"
    " lease_owner, coalesce(extract(epoch FROM leased_until)::float8, 0), terminal_id, stan, rrn, amount,"
    " original_mti, last_error"
)


class ReversalNotDurable(DatabaseUnavailable):
    """The reversal is kept in this process's memory (written later, fenced), not in the database: record no
    outcome that relies on it. A StoreUnavailable, so the transaction answers 503 and stays PENDING."""


def _row(
    request: AcquirerRequest, sealed: bytes, reason: str, attempts: int, key: bytes, fence: ClaimFence | None
) -> dict[str, Any]:
    assert request.original is not None
    claim = {} if fence is None else msgspec.structs.asdict(fence)  # client_id, transaction_id, owner
    return {
        **claim,
        "key": key.decode("ascii"),
        "sealed": sealed,
        "reason": reason,
        "attempts": attempts,
        "terminal_id": request.terminal_id,
        "stan": request.stan,
        "rrn": request.rrn,
        "amount": request.amount,
        "original_mti": request.original.mti,
    }


def _write(conn: Conn, row: dict[str, Any]) -> bool | None:
    """Insert one reversal row: True if added, False if already queued or acknowledged, None if its claim is no
    longer the queuing owner's (dropped: see the module's docstring)."""
    if "owner" not in row:
        return bool(conn.execute(_INSERT, row).rowcount == 1)
    result = conn.execute(_INSERT_FENCED, row).fetchone()
    assert result is not None
    added, ours = int(result[0]), bool(result[1])
    return None if not ours else added == 1


def _dropped(row: dict[str, Any], where: str) -> None:
    log.warning(
        "saf_reversal_dropped",
        stan=row["stan"],
        terminal=row["terminal_id"],
        transaction_id=row["transaction_id"],
        reason=f"{where}: the transaction is no longer this owner's claim; its new owner inquires and decides",
    )


class PgSafQueue:
    """The SAF queue in PostgreSQL. Opens its pool on first use (after any fork), from a worker thread."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer
        self._lock = threading.Lock()  # guards the pool's opening and the in-memory backlog
        self._opened = False
        self._closed = False
        # Written to no table yet because the database was down: key -> row, and acknowledged keys.
        self._unwritten: dict[bytes, dict[str, Any]] = {}
        self._unrecorded_acks: set[bytes] = set()
        self._depth = 0  # rows in saf_entries when last counted (len() must not block the event loop)
        self._oldest: float | None = None  # and the oldest one's creation time (unix seconds)

    # ---- plumbing ------------------------------------------------------------------------------------

    def _call(self, fn: Any) -> Any:
        with self._lock:
            if self._closed:
                raise DatabaseUnavailable("SAF queue closed")
            if not self._opened:
                try:
                    self._db.open_sync()
                except DatabaseUnavailable:
                    # A pool that failed to open is closed for good: the next call builds a fresh one.
                    self._db = Database(self._db.settings, application_name=self._db.pool.name)
                    raise
                self._opened = True
        return self._db.call_sync(fn)

    def _flush(self) -> None:
        """Write what an outage kept in memory (raises DatabaseUnavailable if the database is still down)."""
        with self._lock:
            rows, acks = list(self._unwritten.items()), set(self._unrecorded_acks)
        if not rows and not acks:
            return

        def write(conn: Conn) -> int:
            dropped = 0
            for _, row in rows:
                if _write(conn, row) is None:
                    _dropped(row, "kept through an outage")
                    dropped += 1
            for key in acks:
                self._ack(conn, key)
            return dropped

        dropped: int = self._call(write)
        with self._lock:
            for key, _ in rows:
                self._unwritten.pop(key, None)
            self._unrecorded_acks -= acks
        log.info("saf_backlog_written", reversals=len(rows) - dropped, dropped=dropped, acknowledgements=len(acks))

    def _count(self, conn: Conn) -> None:
        row = conn.execute("SELECT count(*), extract(epoch FROM min(created_at))::float8 FROM saf_entries").fetchone()
        self._depth = int(row[0]) if row else 0
        self._oldest = float(row[1]) if row and row[1] is not None else None

    @staticmethod
    def _ack(conn: Conn, key: bytes) -> None:
        k = key.decode("ascii")
        conn.execute("DELETE FROM saf_entries WHERE key = %s", (k,))
        conn.execute(
            "INSERT INTO saf_done (key) VALUES (%s) ON CONFLICT (key) DO UPDATE SET done_at = now()",
            (k,),
        )

    # ---- SafStore ------------------------------------------------------------------------------------

    def add(self, request: AcquirerRequest, reason: str, *, attempts: int = 0, fence: ClaimFence | None = None) -> bool:
        if request.kind is not MessageKind.REVERSAL or request.original is None:
            raise ValueError("only reversals with original data go into the SAF queue")
        key = entry_key(request)
        row = _row(request, self._sealer.seal(_encoder.encode(request), key), reason, attempts, key, fence)

        def insert(conn: Conn) -> bool | None:
            added = _write(conn, row)
            self._count(conn)
            return added

        try:
            self._flush()
            added: bool | None = self._call(insert)
            if added is None:
                _dropped(row, "queued")
            return bool(added)
        except DatabaseUnavailable as e:
            with self._lock:
                kept = key in self._unwritten
                self._unwritten.setdefault(key, row)
            if not kept:
                log.error("saf_kept_in_memory", stan=request.stan, terminal=request.terminal_id, error=str(e))
            raise ReversalNotDurable(f"reversal kept in memory until the database answers: {e}") from None

    def claim_due(self, owner: str, lease_seconds: float, limit: int = 32) -> list[SafItem]:
        def claim(conn: Conn) -> list[SafItem]:
            items: list[SafItem] = []
            for key, sealed, attempts in conn.execute(_CLAIM, (limit, owner, lease_seconds)).fetchall():
                raw_key = str(key).encode("ascii")
                try:
                    request = _request_decoder.decode(self._sealer.open(bytes(sealed), raw_key))
                except (SealError, msgspec.DecodeError):
                    conn.execute(
                        "UPDATE saf_entries SET lease_owner = '', leased_until = NULL,"
                        " last_error = 'cannot open sealed entry', next_attempt = now() + make_interval(secs => %s)"
                        " WHERE key = %s",
                        (_UNOPENABLE_RETRY, key),
                    )
                    continue
                items.append(SafItem(raw_key, request, int(attempts)))
            return items

        try:
            self._flush()
            items: list[SafItem] = self._call(claim)
            return items
        except DatabaseUnavailable as e:
            log.warning("saf_database_unavailable", step="claim", error=str(e))
            return []

    def record_attempt(self, key: bytes, owner: str) -> bool:
        def count(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE saf_entries SET attempts = attempts + 1"
                " WHERE key = %s AND lease_owner = %s AND leased_until > now()",
                (key.decode("ascii"), owner),
            )
            return cur.rowcount == 1

        try:
            return bool(self._call(count))
        except DatabaseUnavailable as e:
            log.warning("saf_database_unavailable", step="record_attempt", error=str(e))
            return False  # not counted: do not send (the lease lapses and the row is due again)

    def release(self, key: bytes, owner: str, retry_in: float, error: str) -> None:
        def give_back(conn: Conn) -> None:
            conn.execute(
                "UPDATE saf_entries SET lease_owner = '', leased_until = NULL, last_error = %s,"
                " next_attempt = now() + make_interval(secs => %s) WHERE key = %s AND lease_owner = %s",
                (error, retry_in, key.decode("ascii"), owner),
            )

        try:
            self._call(give_back)
        except DatabaseUnavailable as e:  # the lease runs out by itself: due again then
            log.warning("saf_database_unavailable", step="release", error=str(e))

    def delete(self, key: bytes) -> None:
        def ack(conn: Conn) -> None:
            self._ack(conn, key)
            self._count(conn)

        try:
            self._call(ack)
        except DatabaseUnavailable as e:
            with self._lock:
                self._unrecorded_acks.add(key)
            log.warning("saf_database_unavailable", step="acknowledge", error=str(e))

    def known(self, key: bytes) -> bool:
        # Only what the database holds counts: a reversal in memory may yet be lost with this process, or be
        # dropped by its fence. Raises DatabaseUnavailable while the backlog cannot be written.
        self._flush()
        k = key.decode("ascii")

        def look(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM saf_entries WHERE key = %s)"
                " OR EXISTS (SELECT 1 FROM saf_done WHERE key = %s)",
                (k, k),
            ).fetchone()
            return bool(row and row[0])

        return bool(self._call(look))  # DatabaseUnavailable: the caller cannot decide without it

    def purge_done(self, older_than: float) -> int:
        def purge(conn: Conn) -> int:
            return int(conn.execute("DELETE FROM saf_done WHERE done_at < to_timestamp(%s)", (older_than,)).rowcount)

        try:
            return int(self._call(purge))
        except DatabaseUnavailable as e:
            log.warning("saf_database_unavailable", step="purge", error=str(e))
            return 0

    def entries(self) -> list[tuple[bytes, SafEntry]]:
        def read(conn: Conn) -> list[tuple[bytes, SafEntry]]:
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM saf_entries ORDER BY created_at").fetchall()  # noqa: S608 - constant columns
            return [
                (
                    str(r[0]).encode("ascii"),
                    SafEntry(
                        sealed=bytes(r[1]),
                        reason=r[2],
                        created=r[3],
                        attempts=r[4],
                        next_attempt=r[5],
                        lease_owner=r[6],
                        lease_until=r[7],
                        terminal_id=r[8],
                        stan=r[9],
                        rrn=r[10],
                        amount=int(r[11]),
                        original_mti=r[12],
                        last_error=r[13],
                    ),
                )
                for r in rows
            ]

        out: list[tuple[bytes, SafEntry]] = self._call(read)
        return out

    def next_due(self) -> float | None:
        def due(conn: Conn) -> float | None:
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM min(greatest(next_attempt, coalesce(leased_until, next_attempt)))"
                " - now())::float8, extract(epoch FROM min(created_at))::float8 FROM saf_entries"
            ).fetchone()
            self._depth = int(row[0]) if row else 0
            self._oldest = float(row[2]) if row and row[2] is not None else None
            return None if row is None or row[1] is None else float(row[1])

        try:
            self._flush()
            in_seconds: float | None = self._call(due)
        except DatabaseUnavailable as e:
            log.warning("saf_database_unavailable", step="next_due", error=str(e))
            return time.time() + _OUTAGE_RETRY
        # The database says how long from ITS now; the caller waits on its own clock for that long.
        return None if in_seconds is None else time.time() + in_seconds

    def make_all_due(self) -> int:
        def due_now(conn: Conn) -> int:
            return int(conn.execute("UPDATE saf_entries SET next_attempt = now() WHERE next_attempt > now()").rowcount)

        return int(self._call(due_now))

    def oldest_created(self) -> float | None:
        """Creation time of the oldest row when last counted (as `len`): never a query of its own."""
        with self._lock:
            return self._oldest

    def __len__(self) -> int:
        """Rows when last counted (by add, delete or the loop's next_due) plus what waits in memory."""
        with self._lock:
            return self._depth + len(self._unwritten)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._flush()  # one last try for what an outage kept in memory
        except DatabaseUnavailable as e:
            log.warning("saf_database_unavailable", step="close", error=str(e))
        with self._lock:
            self._closed = True
            if self._unwritten:
                log.error("saf_lost_on_close", reversals=len(self._unwritten))
        self._db.close()
