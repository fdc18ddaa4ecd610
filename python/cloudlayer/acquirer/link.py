"""The connector's per-connection state and its internal outcomes (acquirer/connector.py uses them)."""

from __future__ import annotations

import structlog
import trio

from .codec import Message

log = structlog.get_logger("cloudlayer.acquirer.connector")

Key = tuple[str, str, str]


class _NotSent(Exception):
    """Nothing left this process: safe to treat as a decline."""


class _Unknown(Exception):
    """The message may have reached the acquirer; no answer came."""


class _SendState:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class _Pending:
    __slots__ = ("error", "event", "link", "response")

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.event = trio.Event()
        self.response: Message | None = None
        self.error: str | None = None


class _Link:
    """One TCP connection and what is in flight on it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.stream: trio.abc.Stream | None = None
        self.up = False  # connected and signed on
        self.send_lock = trio.Lock()
        self.pending: set[Key] = set()
        # When the acquirer last sent us anything. Only what it sends proves it alive: our own sends do not,
        # or steady traffic to a dead acquirer (each request timing out) would keep the link 'up' forever.
        self.last_received = 0.0
        self.scope: trio.CancelScope | None = None  # cancelling it drops the connection

    def drop(self, reason: str) -> None:
        if self.scope is not None and not self.scope.cancel_called:
            log.warning("acquirer_link_dropped", link=self.index, reason=reason)
            self.scope.cancel()
