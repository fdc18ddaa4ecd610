"""The serving supervisor replaces a worker that dies, and gives up (exit 1) when workers die in a loop."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow


def workers(host: Host) -> list[psutil.Process]:
    assert host.server is not None
    found = []
    for p in psutil.Process(host.server.proc.pid).children():
        try:
            if any("spawn_main" in part for part in p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:  # a worker that just died (zombie until the supervisor reaps it)
            pass
    return found


def wait_for_workers(host: Host, count: int, not_pids: set[int]) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [w for w in workers(host) if w.pid not in not_pids]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError("no replacement worker")


def test_dead_worker_is_replaced_and_the_host_serves_on(tmp_path: Path, simulator: SimulatorProcess) -> None:
    host = Host(tmp_path / "host", simulator, workers=2)
    host.start()
    try:
        before = workers(host)
        assert len(before) == 2
        before[0].send_signal(signal.SIGKILL)
        after = wait_for_workers(host, 2, {before[0].pid})
        assert before[1].pid in {w.pid for w in after}
        host.wait_replaced_worker()
        assert (
            httpx.post(
                host.url + "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": host.client_id,
                    "client_secret": host.client_secret,
                },
                timeout=10,
            ).status_code
            == 200
        )
    finally:
        host.stop()


def test_workers_dying_in_a_loop_stop_the_host(tmp_path: Path, simulator: SimulatorProcess) -> None:
    host = Host(tmp_path / "host", simulator, workers=1)
    host.start()
    assert host.server is not None
    killed: set[int] = set()
    try:
        for _ in range(10):
            if host.server.proc.poll() is not None:
                break
            try:
                victim = wait_for_workers(host, 1, killed)[0]
            except (AssertionError, psutil.NoSuchProcess):
                break
            killed.add(victim.pid)
            victim.send_signal(signal.SIGKILL)
        assert host.wait_exit(30) == 1
        assert "workers keep dying" in host.log_text()
        assert 5 <= len(killed) <= 7
    finally:
        host.stop()
