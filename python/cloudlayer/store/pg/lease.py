"""This worker's lease on PostgreSQL (issue 12, docs/postgres.md "Leases and fencing"), and its send guard.

The database's clock decides: the owners row carries `lease_until`, set to now() + lease_ttl when the worker
registers and on every renewal, and a renewal is `UPDATE ... WHERE owner = me AND lease_until > now()`, so a
lease that has expired is never brought back to life (other hosts may already have taken its claims over).

The local bound is monotonic and always earlier: a renewal's moment of *sending* is taken before the statement
leaves, so the database's now() + ttl is computed after it, and `deadline = sent_at + ttl - margin` falls before
the database's lease_until by at least `margin` (which covers the two clocks' rate drift, and more). The send
guard (`may_send`) is that deadline: past it, or once the lease is lost, no connector writes to the acquirer.
A lost lease is final: this owner id never acts again (the worker restarts under a new one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .database import Conn


def boottime() -> float:
    """A monotonic clock that also runs through a system suspend (CLOCK_BOOTTIME), not only a process stop:
    a host that wakes past its deadline must see that it did. Plain monotonic where there is none."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


# Every owner's lease: seconds left by the database's clock (<= 0: expired).
LEASES_SQL = "SELECT owner, extract(epoch FROM lease_until - now())::float8 FROM owners"


class Lease:
    """The lease of one owner id. `renew` blocks (a worker thread); `may_send` is read on the event loop."""

    def __init__(self, owner: str, *, ttl: float, margin: float, monotonic: Callable[[], float] = boottime) -> None:
        if not 0 < margin < ttl:
            raise ValueError("lease margin must be positive and below the lease's ttl")
        self.owner = owner
        self.ttl = ttl
        self.margin = margin
        self._monotonic = monotonic
        self.deadline = -math.inf  # local monotonic time past which nothing is sent
        self.lost = False
        self._registered = False

    def may_send(self) -> bool:
        """The send guard: this owner still holds its lease by the local bound (always earlier than the DB's)."""
        return not self.lost and self._monotonic() < self.deadline

    def expired_locally(self) -> bool:
        return self._registered and self._monotonic() >= self.deadline

    def renew(self, conn: Conn) -> tuple[bool, dict[str, float]]:
        """Register (the first time) or renew; (held, every owner's seconds left). held False: the lease had
        expired by the database's clock (or its row is gone): it stays expired, the caller gives the id up."""
        sent_at = self._monotonic()  # before the statement: the DB's now() is later, its lease_until too
        if self._registered:
            row = conn.execute(
                "UPDATE owners SET lease_until = now() + make_interval(secs => %s), last_seen = now()"
                " WHERE owner = %s AND lease_until > now() RETURNING 1",
                (self.ttl, self.owner),
            ).fetchone()
        else:
            # A new owner id (a new process) has no row yet; one that has a row (another store object of this
            # process) renews it under the same rule: an expired row is not revived.
            row = conn.execute(
                "INSERT INTO owners AS o (owner, last_seen, lease_until)"
                " VALUES (%s, now(), now() + make_interval(secs => %s))"
                " ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until, last_seen = now()"
                " WHERE o.lease_until > now() RETURNING 1",
                (self.owner, self.ttl),
            ).fetchone()
        held = row is not None and not self.lost
        if held:
            self._registered = True
            self.deadline = max(self.deadline, sent_at + self.ttl - self.margin)
        leases = {str(o): float(left) for o, left in conn.execute(LEASES_SQL).fetchall()}
        return held, leases

    def give_up(self, conn: Conn | None) -> None:
        """Final: the guard closes now; with a connection, the lease also ends now in the database, so that
        other hosts need not wait for it to run out (they still wait acquirer.timeout past it)."""
        self.lost = True
        if conn is not None:
            conn.execute("UPDATE owners SET lease_until = least(lease_until, now()) WHERE owner = %s", (self.owner,))


def lease_left(conn: Conn, owner: str) -> float | None:
    """Seconds left on `owner`'s lease by the database's clock (<= 0 expired; None: no such owner)."""
    row = conn.execute(
        "SELECT extract(epoch FROM lease_until - now())::float8 FROM owners WHERE owner = %s", (owner,)
    ).fetchone()
    return None if row is None else float(row[0])


def fence_wait(dead_lease_left: float | None, send_window: float) -> float:
    """How long a taker waits after taking a claim over before it inquires: until the dead owner's lease end
    plus acquirer.timeout, so that whatever the old owner sent before its guard closed has reached the
    acquirer (or never will). No lease row: nothing to wait for (it never registered, or expired long ago)."""
    if dead_lease_left is None:
        return 0.0
    return max(0.0, dead_lease_left + send_window)
