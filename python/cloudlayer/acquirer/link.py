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
    __slots__ = ("error", "event", "fenced", "link", "not_sent", "response")

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.event = trio.Event()
        self.response: Message | None = None
        self.error: str | None = None
        self.not_sent = False  # the link's writer never put its frame on the wire (safe to decline)
        self.fenced = False  # ... because the send guard refused it (the lease may be gone: no decline, 503)

    def fail_fenced(self, reason: str) -> None:
        self.fenced = True
        self.fail_not_sent(reason)

    def fail_not_sent(self, reason: str) -> None:
        self.not_sent = True
        self.error = reason
        self.event.set()


class _Queued:
    """A whole frame waiting for the link's writer, and who waits for its answer (None: nobody does)."""

    __slots__ = ("frame", "pending", "state")

    def __init__(self, frame: bytes, state: _SendState, pending: _Pending | None) -> None:
        self.frame = frame
        self.state = state
        self.pending = pending


class _Link:
    """One TCP connection and what is in flight on it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.stream: trio.abc.Stream | None = None
        self.up = False  # connected and signed on
        # Frames written by concurrent requests, sent together by the link's one writer task (link_writer.write_frames).
        self.outbox: list[_Queued] = []
        self.outbox_ready = trio.Event()
        self.pending: set[Key] = set()
        # When the acquirer last sent us anything. Only what it sends proves it alive: our own sends do not,
        # or steady traffic to a dead acquirer (each request timing out) would keep the link 'up' forever.
        self.last_received = 0.0
        self.scope: trio.CancelScope | None = None  # cancelling it drops the connection

    def enqueue(self, item: _Queued) -> None:
        self.outbox.append(item)
        self.outbox_ready.set()

    def unqueue(self, item: _Queued) -> bool:
        """Take back a frame the writer has not taken yet (its caller gave up): True if it was still queued."""
        try:
            self.outbox.remove(item)
        except ValueError:
            return False
        return True

    def fail_queued(self, reason: str) -> None:
        """The connection is gone: frames still queued were never sent."""
        for item in self.outbox:
            if item.pending is not None:
                item.pending.fail_not_sent(reason)
        self.outbox.clear()

    def drop(self, reason: str) -> None:
        if self.scope is not None and not self.scope.cancel_called:
            log.warning("acquirer_link_dropped", link=self.index, reason=reason)
            self.scope.cancel()
