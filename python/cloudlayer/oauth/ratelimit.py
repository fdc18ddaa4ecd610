"""Failed client authentications, counted per client id and per source address.

In memory, per worker process: with N workers an attacker gets at most N times the budget before the
lockout, which still turns online guessing of a 256-bit secret (already hopeless) into noise, and keeps
the token endpoint free of shared-state writes. A success for a client id clears that id's count.
With store.backend = "postgres" it stays per worker on every host, on purpose (a shared count would be a
database write per failed attempt, a load an unauthenticated caller controls): the effective budget is
hosts x workers x lockout_after per window (docs/postgres.md, "OAuth in PostgreSQL").
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

_MAX_TRACKED = 100_000  # bound memory under a spray of random ids/addresses
_BASE_DELAY = 0.1
_MAX_DELAY = 2.0


class Verdict:
    __slots__ = ("delay", "retry_after")

    def __init__(self, delay: float = 0.0, retry_after: int = 0) -> None:
        self.delay = delay  # seconds to wait before answering (slowdown)
        self.retry_after = retry_after  # > 0: refuse with 429 and this Retry-After


ALLOW = Verdict()


class FailureLimiter:
    def __init__(self, window: float, slowdown_after: int, lockout_after: int) -> None:
        self._window = window
        self._slowdown_after = slowdown_after
        self._lockout_after = lockout_after
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def check(self, *keys: str) -> Verdict:
        """What to do with a new attempt from these keys (e.g. "client:<id>", "addr:<ip>")."""
        now = time.monotonic()
        worst = ALLOW
        for key in keys:
            times = self._recent(key, now)
            n = 0 if times is None else len(times)
            if times is not None and n >= self._lockout_after:
                # Locked until enough failures leave the window to fall below the lockout threshold.
                oldest_relevant = times[n - self._lockout_after]
                return Verdict(retry_after=max(1, int(oldest_relevant + self._window - now + 0.999)))
            if n >= self._slowdown_after:
                delay = min(_MAX_DELAY, _BASE_DELAY * 2 ** (n - self._slowdown_after))
                if delay > worst.delay:
                    worst = Verdict(delay=delay)
        return worst

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self._lockout_after + 1)
                if len(self._failures) > _MAX_TRACKED:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(key)
            times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
