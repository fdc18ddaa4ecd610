"""Who holds a PENDING claim, and whether that worker still lives.

An owner id is `host:boot:pid:start`: `boot` is the kernel's boot id (a reboot kills every owner) and
`start` is the process start time in clock ticks from /proc/<pid>/stat, so a recycled pid is never
mistaken for the worker that died. On the same host and boot, liveness is read from /proc and is
authoritative. Owners on another host or in another PID namespace (owner ids name it beside the
hostname: containers share the boot id and may share a hostname) cannot be seen from here; for them
the store falls back to the heartbeat each worker writes (see LmdbStore).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path


class OwnerId:
    __slots__ = ("boot", "host", "pid", "start")

    def __init__(self, host: str, boot: str, pid: int, start: int) -> None:
        self.host, self.boot, self.pid, self.start = host, boot, pid, start

    def __str__(self) -> str:
        return f"{self.host}:{self.boot}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, text: str) -> OwnerId | None:
        """None for anything that is not an owner id we wrote (treated as unknown by callers)."""
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))


@functools.cache
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return "noboot"


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of a process, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


@functools.cache
def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "nons"


def local_host() -> str:
    """The host part of our owner ids: hostname and PID namespace. Containers share the kernel (and boot id)
    and may share a hostname, but a pid means something else in each PID namespace: /proc judges only owners
    in ours."""
    return f"{socket.gethostname()}/{_pid_namespace()}"


def current_owner_id() -> str:
    """This process's owner id (computed per call: a forked child gets its own)."""
    pid = os.getpid()
    st = process_state(pid)
    return str(OwnerId(local_host(), boot_id(), pid, st[1] if st else 0))


def local_owner_alive(owner: OwnerId) -> bool | None:
    """True/False when `owner` runs on this host, boot and PID namespace; None when this host cannot tell."""
    if owner.host != local_host():
        return None
    if owner.boot != boot_id():
        # An earlier boot of this machine, or another machine under the same hostname (cloned images; the initial
        # PID namespace has the same inode on every kernel): /proc cannot tell which, so the lease or heartbeat
        # decides. Judging it dead here would let a live host's claims be taken over without the fence wait.
        return None
    st = process_state(owner.pid)
    if st is None:
        return False
    state, start = st
    # Z (zombie) / X (dead): killed but not yet reaped by its parent; it will never finish the claim.
    return start == owner.start and state not in ("Z", "X")
