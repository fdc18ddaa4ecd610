"""One access token per worker, shared by all its requests, kept fresh by one background task.

- The refresher (`run`, in the connector's nursery) is the only caller of the token endpoint: single flight by
  construction. It fetches at start, then again at `refresh_at` (0.8) of each token's lifetime, so requests
  find a token waiting instead of waiting for one.
- `get()` returns the held token while it is usable; with none usable it waits for a fetch under way, or fails
  at once (NoToken) while the endpoint is failing and backing off, so callers decline fast ("not sent").
- `invalidate(token)` after a `401 invalid_token`: the first caller that reports the token held drops it and
  wakes the refresher; every other caller that saw the same token just waits for the new one. A burst of 401s
  costs one token request.
Tokens are never logged; counts go to metrics (ok / refused / error) as they happen (not the hot path).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from ...observability import metrics
from ..backoff import backoff_delay
from .client_auth import TokenError
from .wire import TokenAnswer

log = structlog.get_logger(__name__)


class NoToken(Exception):
    """No usable token, and none is coming right now (the token endpoint is failing)."""


class _Token:
    __slots__ = ("expires_at", "invalid", "refresh_at", "value")

    def __init__(self, value: str, refresh_at: float, expires_at: float) -> None:
        self.value = value
        self.refresh_at = refresh_at
        self.expires_at = expires_at
        self.invalid = False


class TokenCache:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[TokenAnswer]],
        *,
        refresh_at: float = 0.8,
        default_lifetime: float = 300.0,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self._fetch = fetch
        self._refresh_fraction = refresh_at
        self._default_lifetime = default_lifetime
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._token: _Token | None = None
        self._fetching = False
        self._failing = False
        self._changed = trio.Event()  # set (and replaced) after every fetch, good or bad
        self._wakeup = trio.Event()  # wakes the refresher early (invalidation, a caller with no token)
        self.requests = 0  # token requests made
        self.failures = 0

    # --- what requests use ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        t = self._token
        return t is not None and not t.invalid and trio.current_time() < t.expires_at

    @property
    def failing(self) -> bool:
        return self._failing

    async def get(self) -> str:
        """A usable token (callers bound this with their own deadline)."""
        while True:
            t = self._token
            if t is not None and not t.invalid and trio.current_time() < t.expires_at:
                return t.value
            if self._failing and not self._fetching:
                raise NoToken("token endpoint failing")
            self._wakeup.set()
            await self._changed.wait()

    def invalidate(self, value: str) -> None:
        """The host refused `value` (401 invalid_token): drop it if it is still the one held, refresh now."""
        t = self._token
        if t is not None and t.value == value and not t.invalid:
            t.invalid = True
            self._publish()
            log.warning("acquirer_token_rejected", action="refreshing")
            self._wakeup.set()

    # --- the refresher ----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        try:
            while True:
                self._wakeup = trio.Event()
                self._publish()
                t = self._token
                now = trio.current_time()
                if t is not None and not t.invalid and now < t.refresh_at:
                    with trio.move_on_after(t.refresh_at - now):
                        await self._wakeup.wait()
                    continue
                if await self._fetch_once():
                    attempt = 0
                    continue
                # Back off whatever wakes us: callers fail fast meanwhile (or use a token still valid).
                await trio.sleep(backoff_delay(attempt, self._retry_min, self._retry_max))
                attempt += 1
        finally:
            self._token = None
            self._publish()

    async def _fetch_once(self) -> bool:
        self._fetching = True
        sent_at = trio.current_time()  # the lifetime counts from the request: never later than the issuer's
        self.requests += 1
        try:
            answer = await self._fetch()
        except TokenError as e:
            self.failures += 1
            self._failing = True
            outcome = "refused" if "answered 4" in str(e) else "error"
            metrics.ACQUIRER_TOKEN_REQUESTS.labels(outcome).inc()
            log.warning("acquirer_token_failed", reason=str(e), still_holding=self.usable)
            return False
        else:
            lifetime = float(answer.expires_in or self._default_lifetime)
            # Usable until a little before its end (clock skew, requests in flight); refreshed well before that.
            margin = min(30.0, 0.05 * lifetime)
            refresh = sent_at + self._refresh_fraction * lifetime
            self._token = _Token(answer.access_token, refresh, sent_at + lifetime - margin)
            self._failing = False
            metrics.ACQUIRER_TOKEN_REQUESTS.labels("ok").inc()
            log.info("acquirer_token_obtained", expires_in=int(lifetime))
            return True
        finally:
            # No checkpoint between the token's assignment and here: waiters woken now find it in place.
            self._fetching = False
            changed, self._changed = self._changed, trio.Event()
            changed.set()
            self._publish()

    def _publish(self) -> None:
        metrics.ACQUIRER_TOKEN_HELD.set(1 if self.usable else 0)
