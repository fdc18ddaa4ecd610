"""The real parts for transaction tests: `cloudlayer simulator` and `cloudlayer serve` as subprocesses over
real TCP, an OAuth client made with the real CLI, and the simulator's ledger read over its admin port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from conftest import REPO, ServerProcess, write_config

VENV_BIN = Path(sys.executable).parent
CLOUDLAYER = str(VENV_BIN / "cloudlayer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorProcess:
    """`cloudlayer simulator` with zero latency (unless told otherwise) and its admin port."""

    def __init__(
        self,
        workdir: Path,
        *,
        latency_ms: int = 0,
        port: int | None = None,
        args: Sequence[str] = (),
        extra_toml: str = "",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.admin_port = free_port()
        base = (REPO / "configs" / "simulator.toml").read_text()
        base = base.replace('admin_bind = "127.0.0.1:9584"', f'admin_bind = "127.0.0.1:{self.admin_port}"')
        base = base.replace('distribution = "uniform"', 'distribution = "fixed"')
        base = base.replace("fixed_ms = 0", f"fixed_ms = {latency_ms}")
        self.config = workdir / "simulator.toml"
        self.config.write_text(base + extra_toml)
        self.log_path = workdir / "simulator.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [CLOUDLAYER, "simulator", "--config", str(self.config), "--bind", f"127.0.0.1:{self.port}", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.ledger()
                return
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    raise AssertionError("simulator exited") from None
                time.sleep(0.05)
        raise AssertionError("simulator did not start")

    def ledger(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.admin_port}/ledger", timeout=5).json())

    def set_faults(self, **faults: Any) -> None:
        httpx.post(f"http://127.0.0.1:{self.admin_port}/faults", json=faults, timeout=5).raise_for_status()

    def entry(self, terminal_id: str, stan: str) -> dict[str, Any]:
        return dict(self.ledger()["transactions"][f"{terminal_id.ljust(8)}:{stan}"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Host:
    """`cloudlayer serve` (plain HTTP: TLS is tested elsewhere) pointed at a simulator; restartable."""

    def __init__(
        self,
        workdir: Path,
        simulator: SimulatorProcess,
        *,
        workers: int = 1,
        acquirer_timeout: float = 3.0,
        metrics: bool = False,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        sections: dict[str, dict[str, Any]] = {
            "server": {"tls": False, "workers": workers, "graceful_timeout": 5.0},
            "acquirer": {
                "mode": "tcp",
                "port": simulator.port,
                "timeout": acquirer_timeout,
                "saf_retry_min": 0.2,
                "saf_retry_max": 1.0,
            },
            "metrics": {"enabled": metrics, "bind": "127.0.0.1:0"},
        }
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        self.workdir = workdir
        self.config = write_config(workdir / "host.toml", sections)
        self.server: ServerProcess | None = None
        self.client_id, self.client_secret = self._add_client()

    def _add_client(self) -> tuple[str, str]:
        out = subprocess.run(
            [CLOUDLAYER, "client", "add", "mypinpad", "--json", "--config", str(self.config)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        doc = json.loads(out.stdout)
        return str(doc["client_id"]), str(doc["client_secret"])

    def start(self, env: Mapping[str, str] | None = None, *, wait_ready: bool = True) -> None:
        """Start and wait until /readyz says ready (or, with wait_ready=False, until a worker answers
        /healthz: the acquirer link may not be up yet)."""
        self.server = self._spawn(env)
        self.server.wait_for_banner()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ("/readyz" if wait_ready else "/healthz"), timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.server.proc.poll() is not None:
                raise AssertionError(f"host exited: {self.server.stderr[-3000:]}")
            time.sleep(0.05)
        raise AssertionError("host not ready")

    def _spawn(self, env: Mapping[str, str] | None) -> ServerProcess:
        """The `cloudlayer serve` process (a subclass may run it elsewhere, e.g. under another hostname)."""
        return ServerProcess.cloudlayer_serve(self.config, env)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def metrics_url(self) -> str:
        assert self.server is not None and self.server.metrics_url, "metrics not enabled"
        return self.server.metrics_url + "/metrics"

    def token(self) -> str:
        resp = httpx.post(
            self.url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret},
            timeout=10,
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def wait_replaced_worker(self, timeout: float = 30) -> None:
        """After a worker died: the supervisor stays up, replaces it, and the host is ready again."""
        assert self.server is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.server.proc.poll() is None, "the host stopped instead of replacing its worker"
            if "worker_replaced" in self.log_text():
                try:
                    if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise AssertionError("the dead worker was not replaced")

    def wait_links_up(self, count: int, timeout: float = 30) -> None:
        """Until `count` acquirer links have signed on. /readyz answers from whichever worker takes the connection,
        so a host with 2 workers can say ready while the other's sign-on is still on the wire: a test that then
        drops the acquirer's answers would leave that worker without a link for good."""
        deadline = time.monotonic() + timeout
        while self.log_text().count('"event":"acquirer_link_up"') < count:
            assert time.monotonic() < deadline, f"fewer than {count} acquirer links signed on in {timeout} s"
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.server is not None
        return self.server.wait(timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def log_text(self) -> str:
        assert self.server is not None
        return self.server.stdout + self.server.stderr
