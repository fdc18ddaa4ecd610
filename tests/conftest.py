"""Shared fixtures: trustme certificates, config files, and `cloudlayer serve` as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


# --- TLS material ---------------------------------------------------------------------------------------


class TLSFiles:
    """A trustme CA with a server certificate for 127.0.0.1/localhost, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = directory / "server-cert.pem"
        self.server_key = directory / "server-key.pem"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))

    def client_cert(self, directory: Path, name: str = "mypinpad-test") -> tuple[str, str]:
        """(certfile, keyfile) of a client certificate issued by this CA."""
        issued = self.ca.issue_cert(f"{name}.example")
        cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles(tmp_path_factory.mktemp("tls"))


# --- config files ---------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"unsupported TOML value {value!r}")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a TOML config; `var_dir` defaults to a `var` directory beside it, binds to ephemeral ports."""
    merged: dict[str, dict[str, Any]] = {
        "server": {"bind": "127.0.0.1:0", "var_dir": str(path.parent / "var")},
        "metrics": {"bind": "127.0.0.1:0"},
        "logging": {"format": "json"},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --- the server as a subprocess -------------------------------------------------------------------------


class ServerProcess:
    """`cloudlayer serve` (or any command running cloudlayer.server.serve) in its own process."""

    def __init__(self, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / "serve.stdout"
        self.stderr_path = workdir / "serve.stderr"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDLAYER_", "PROMETHEUS_"))}
        full_env.update(env or {})
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=workdir, env=full_env)
        self.url = ""
        self.metrics_url = ""

    @classmethod
    def cloudlayer_serve(cls, config: Path, env: Mapping[str, str] | None = None) -> ServerProcess:
        return cls([str(VENV_BIN / "cloudlayer"), "serve", "--config", str(config)], config.parent, env)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_banner(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.stdout
            if "listening on" in text:
                listening = re.search(r"listening on (https?://[\d.]+:\d+)", text)
                assert listening, text
                self.url = listening.group(1)
                found = re.search(r"metrics\s+(http://[\d.]+:\d+)/metrics", text)
                self.metrics_url = found.group(1) if found else ""
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no banner within {START_TIMEOUT}s: {self.stderr[-2000:]}")

    def wait_until_serving(self, verify: ssl.SSLContext) -> None:
        """Banner, then /healthz answered by a worker (workers start after the socket is bound)."""
        self.wait_for_banner()
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with httpx.Client(verify=verify, timeout=5.0) as client:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return
            except httpx.TransportError as e:
                last = e
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"not serving within {START_TIMEOUT}s: {last!r}")

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown: a graceful stop, then a kill if it does not come."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server_processes() -> Iterator[list[ServerProcess]]:
    """Collects servers a test starts and stops whatever is still running at teardown."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


# --- card data: the whole suite's traffic ---------------------------------------------------------------

# A test that writes card data on purpose (to prove a scanner or a redaction finds it) puts a file with this
# name in its directory; everything else the suite leaves behind must hold none.
PLANTED_CARD_DATA = "PLANTED_CARD_DATA"


@pytest.fixture(scope="session", autouse=True)
def no_card_data_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After every test has run: every log line of every host, simulator and CLI run, every file under every
    var/ (LMDB stores, SAF queues, keys) and everything else the suite wrote holds no test-card PAN or track
    data (ASCII, BCD, hex) and, in text, no Luhn-valid card number."""
    yield
    from reliability.scan import scan_files

    root = tmp_path_factory.getbasetemp()
    planted = {p.parent for p in root.rglob(PLANTED_CARD_DATA)}
    files = [p for p in root.rglob("*") if p.is_file() and not any(d in p.parents for d in planted)]
    hits = scan_files(files)
    assert not hits, f"card data left behind by the suite: {hits[:10]}"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Any]:
    """A fresh `cloudlayer simulator` subprocess (zero latency) for one test; modules that share one across
    their tests define their own module-scoped `simulator`."""
    from txn_harness import SimulatorProcess

    sim = SimulatorProcess(tmp_path / "sim")
    yield sim
    sim.stop()


@pytest.fixture(params=("iso8583", "http"))
def connector_kind(request: pytest.FixtureRequest) -> str:
    """Which acquirer connector a test runs against (tests/connector_kinds.py starts the matching simulator)."""
    return str(request.param)


# --- PostgreSQL: one throw-away cluster per session, a fresh database per test -------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """initdb + postgres on a free loopback port as an unprivileged user (tests/pg_cluster.py). Installs
    PostgreSQL from Debian's packages when absent; never skipped (CI must run these tests)."""
    from pg_cluster import PgCluster

    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_pg_cluster() -> Iterator[Any]:
    """A cluster of the test's own, for a test that stops PostgreSQL under running hosts (PgCluster.crash and
    restart) without disturbing the session's."""
    from pg_cluster import PgCluster

    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(pg_cluster: Any) -> Iterator[Any]:
    """An empty database owned by the app role, dropped after the test."""
    db = pg_cluster.create_database()
    yield db
    pg_cluster.drop_database(db)


@pytest.fixture(params=("lmdb", "postgres"))
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each transaction-store backend in turn (tests/store_backends.py): the contract suite runs on both."""
    from store_backends import LmdbBackend, PgBackend

    if request.param == "lmdb":
        return LmdbBackend(tmp_path / "store")
    return PgBackend(request.getfixturevalue("pg_database"))
