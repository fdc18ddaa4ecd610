"""`<var_dir>/host.lock`: held (shared flock) by every process of a running host, so that `cloudlayer restore`
can tell that a var dir is in use and refuse to write into it.

Shared, not exclusive: several hosts may share one var dir on purpose (the store is multi-process). The lock
dies with the process that holds it, so a killed host never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .config import Config

LOCK_NAME = "host.lock"


class HostLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def hold_host_lock(cfg: Config) -> HostLock:
    var = cfg.var_path("")
    var.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(var / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a restore holds it exclusively
    return HostLock(fd)


def exclusive_if_idle(var_dir: Path) -> HostLock | None:
    """The lock held exclusively (no host can start meanwhile), or None while a host runs on `var_dir`."""
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(var_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return HostLock(fd)
