"""The connector's per-connection state and its internal outcomes (acquirer/connector.py uses them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from .codec import Message

if TYPE_CHECKING:
    from ..store.types import SendGuard

log = structlog.get_logger("cloudlayer.acquirer.connector")

Key = tuple[str, str, str]


class _NotSent(Exception):
    """Nothing left this process: safe to treat as a decline."""


class _Unknown(Exception):
    """The message may have reached the acquirer; no answer came."""


class _Fenced(Exception):
    """The send guard refused right before the write: nothing of this message left this process."""


class _SendState:
    __slots__ = ("guard", "sent")

    def __init__(self, guard: SendGuard | None = None) -> None:
        self.sent = False
        self.guard = guard  # a transaction's message (not sign-on, echo or their answers): checked before writing


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
