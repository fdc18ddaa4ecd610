"""A link's one writer task, and the store's send guard checked at the last moment before each write.

Every frame queued on a link since its last send goes out in ONE send_all (concurrent requests coalesce into one
syscall instead of one each). This is the only place an acquirer frame is written (acquirer/connector.py).
"""

from __future__ import annotations

import trio

from .link import _Link, _Queued


async def write_frames(link: _Link, write_deadline: float) -> None:
    """Run until the link's stream fails: frames are whole and joined whole; a send_all cut short would leave half
    a frame on the wire, so it is shielded from cancellation from outside (a link drop included) and bounded by
    `write_deadline` seconds (the acquirer timeout); if it cannot finish, the connection is dropped."""
    stream = link.stream
    assert stream is not None
    while True:
        await link.outbox_ready.wait()
        link.outbox_ready = trio.Event()
        batch, link.outbox = link.outbox, []
        if not batch:
            continue
        # The store's send guard, at the last moment before the write (nothing is marked sent yet): a
        # transaction frame whose worker may have lost its lease never leaves (docs/postgres.md).
        batch = [item for item in batch if may_send(item)]
        if not batch:
            continue
        for item in batch:  # taken: from here on each may have reached the acquirer
            item.state.sent = True
        data = batch[0].frame if len(batch) == 1 else b"".join(item.frame for item in batch)
        # THE acquirer frame write: the only one on a link.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + write_deadline) as scope:
            try:
                await stream.send_all(data)
            except trio.ClosedResourceError:
                for item in batch:
                    item.state.sent = False
                    if item.pending is not None:
                        item.pending.fail_not_sent("connection closed")
                link.drop("connection closed")
                return
            except (trio.BrokenResourceError, OSError) as e:
                link.drop(f"send failed: {type(e).__name__}")  # the callers hear 'link lost': outcome unknown
                return
        if scope.cancelled_caught:
            link.drop("send stalled")
            return


def may_send(item: _Queued) -> bool:
    """The send guard's verdict for one queued frame; a refused frame's caller hears 'fenced' (nothing sent)."""
    guard = item.state.guard
    if guard is None or guard.may_send():
        return True
    if item.pending is not None:
        item.pending.fail_fenced("not sent: this worker's store lease may have run out")
    return False
