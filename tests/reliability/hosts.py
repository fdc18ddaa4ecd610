"""The host under attack: a `txn_harness.Host` on a fixed loopback port (so a restart keeps the URL), with
crash helpers (SIGKILL one worker, or the whole process tree) and every incarnation's logs kept for the
card-data scan."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:  # run.py is started as a script: make tests/ importable like under pytest
    sys.path.insert(0, str(TESTS))

from cloudlayer.config import load_config  # noqa: E402
from txn_harness import CLOUDLAYER, Host, SimulatorProcess, free_port  # noqa: E402

__all__ = ["CLOUDLAYER", "AttackedHost", "SimulatorProcess", "free_port"]


class AttackedHost(Host):
    def __init__(self, workdir: Path, simulator: SimulatorProcess, **kwargs: Any) -> None:
        extra: dict[str, dict[str, Any]] = {k: dict(v) for k, v in kwargs.pop("extra", {}).items()}
        self.port = free_port()
        extra.setdefault("server", {})["bind"] = f"127.0.0.1:{self.port}"
        super().__init__(workdir, simulator, extra=extra, **kwargs)
        self.incarnations = 0
        self.logs_dir = workdir / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        cfg = load_config(str(self.config))
        self.store_path = cfg.var_path(cfg.store.path)
        self.var_dir = Path(cfg.server.var_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: Any = None) -> None:
        self._archive_logs()
        self.incarnations += 1
        super().start(env)

    def _archive_logs(self) -> None:
        """ServerProcess truncates serve.stdout/stderr on start: keep the previous incarnation's copy."""
        if self.server is None:
            return
        for path in (self.server.stdout_path, self.server.stderr_path):
            if path.exists():
                shutil.copy(path, self.logs_dir / f"{self.incarnations}.{path.name}")

    def log_files(self) -> list[Path]:
        self._archive_logs()
        return sorted(self.logs_dir.iterdir())

    def processes(self) -> list[psutil.Process]:
        if self.server is None or self.server.proc.poll() is not None:
            return []
        try:
            parent = psutil.Process(self.server.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        """The Hypercorn workers (spawned children), not multiprocessing's resource tracker."""
        found = []
        for p in self.processes()[1:]:
            try:
                if any("spawn_main" in part for part in p.cmdline()):
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    def kill_random_worker(self, rng: random.Random) -> bool:
        """SIGKILL one worker; the supervisor replaces it and the host serves on. False if none."""
        workers = self.workers()
        if not workers:
            return False
        victim = rng.choice(workers)
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return False
        self._reap_orphans([victim])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [w for w in self.workers() if w.pid != victim.pid]
            if len(alive) >= len(workers) or self.server is None or self.server.proc.poll() is not None:
                break
            time.sleep(0.05)
        return True

    def running(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    def kill_all(self) -> None:
        """The whole host dies at once (power cut): SIGKILL the supervisor and every worker."""
        procs = self.processes()
        if procs:  # freeze the supervisor first: a worker it spawns while we list its children would live on
            try:
                procs[0].send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
            procs = [procs[0], *self.processes()[1:]]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self._reap_orphans(procs)
        if self.server is not None:
            self.server.proc.wait(timeout=10)

    @staticmethod
    def _reap_orphans(procs: list[psutil.Process]) -> None:
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)

    def stop(self) -> None:
        procs = self.processes()
        super().stop()
        self._reap_orphans(procs)  # a worker left behind would keep the port and the store open
        self._archive_logs()

    def saf_depth(self) -> int:
        out = subprocess.run(
            [CLOUDLAYER, "saf", "list", "--config", str(self.config)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return len(json.loads(out.stdout))

    def var_files(self) -> list[Path]:
        return [p for p in self.var_dir.rglob("*") if p.is_file()]
