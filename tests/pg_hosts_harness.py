"""Several real hosts (`cloudlayer serve` subprocesses) on one real PostgreSQL database, each as if on its own
machine: every host runs in its own UTS namespace under its own hostname, so its owner ids name another host
and the others judge its workers by their lease in the database (by the database's clock, `store.lease_ttl`),
never by /proc, exactly as two machines would.

OAuth clients and signing keys are shared through PostgreSQL; the hosts share what every host must hold itself
(docs/postgres.md): the first host's pepper and sealing key ring. Hosts are `AttackedHost`s
(tests/reliability/hosts.py): fixed ports across restarts, SIGKILL of one worker or the whole process tree,
every incarnation's logs kept.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess, write_config
from reliability.hosts import AttackedHost
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
ACQUIRER_TIMEOUT = 3.0  # txn_harness.Host's default


def lease(acquirer_timeout: float = ACQUIRER_TIMEOUT) -> dict[str, float]:
    """The shortest lease the config allows (3 x acquirer.timeout + lease_renew, plus a little): another host
    takes a killed host's claims over within seconds, after the lease and the acquirer timeout."""
    return {"lease_ttl": 3 * acquirer_timeout + 0.5, "lease_renew": 0.3}


class PgHost(AttackedHost):
    """An AttackedHost whose `cloudlayer serve` runs under the hostname `machine` (a private UTS namespace)."""

    def __init__(self, workdir: Path, simulator: SimulatorProcess, *, machine: str, **kwargs: Any) -> None:
        self.machine = machine
        super().__init__(workdir, simulator, **kwargs)

    def _spawn(self, env: Mapping[str, str] | None) -> ServerProcess:
        # unshare and sh both exec: the Popen pid is `cloudlayer serve` itself (signals and psutil see it).
        argv = [UNSHARE, "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.machine]
        argv += [CLOUDLAYER, "serve", "--config", str(self.config)]
        return ServerProcess(argv, self.config.parent, env)

    def readyz(self) -> httpx.Response:
        return httpx.get(self.url + "/readyz", timeout=5)


def migrate(config: Path) -> None:
    done = subprocess.run(
        [CLOUDLAYER, "db", "migrate", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def pg_hosts(
    root: Path,
    simulator: SimulatorProcess,
    pg_database: Any,
    n: int = 2,
    *,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    first_extra: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    lease_ttl: float | None = None,
    **host_kwargs: Any,
) -> list[PgHost]:
    """`n` hosts on `pg_database`, the database migrated, the first one started (it makes the OAuth signing
    keys and the sealing key the others share); start the others yourself. `extra` is merged into every host's
    config (e.g. the HTTPS connector's keys), `first_extra` into the first one's only; `env` is the first host's
    start environment."""
    leases = lease(host_kwargs.get("acquirer_timeout", ACQUIRER_TIMEOUT))
    if lease_ttl is not None:  # longer than the shortest allowed (e.g. to outlast a database outage)
        leases["lease_ttl"] = max(lease_ttl, leases["lease_ttl"])
    store = pg_database.store_section(**leases)

    def sections(*layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for layer in (extra, {"store": store}, *layers):
            for name, values in (layer or {}).items():
                merged.setdefault(name, {}).update(values)
        return merged

    # Migrated first: each host adds its client (`client add`, when it is made) to the shared registry.
    root.mkdir(parents=True, exist_ok=True)
    plain = {"store": pg_database.store_section(), "server": {"var_dir": str(root / "migrate")}}
    migrate(write_config(root / "migrate.toml", plain))
    first = PgHost(root / "host-a", simulator, machine="cl-host-a", extra=sections(first_extra), **host_kwargs)
    var = first.var_dir
    shared = {
        "oauth": {"pepper_file": str(var / "oauth" / "pepper")},
        "server": {"sealing_key_file": str(var / "keys" / "sealing.key")},
    }
    first.start(env)
    hosts = [first]
    for i in range(1, n):
        name = chr(ord("a") + i)
        hosts.append(
            PgHost(root / f"host-{name}", simulator, machine=f"cl-host-{name}", extra=sections(shared), **host_kwargs)
        )
    return hosts


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def pending_rows(pg_database: Any) -> list[tuple[str, str]]:
    """(transaction_id, owner) of every PENDING row in the shared database."""
    with pg_database.connect() as conn:
        rows = conn.execute("SELECT transaction_id, owner FROM transactions WHERE state = 'PENDING'").fetchall()
    return [(str(t), str(o)) for t, o in rows]


class Background:
    """Host A's first attempt, waiting in a thread for whatever A answers once it is continued."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, body, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.response = httpx.post(url + "/transaction/process", content=body, headers=headers, timeout=90)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, within: float = 30.0) -> httpx.Response:
        self._thread.join(within)
        assert not self._thread.is_alive(), "host A never answered its first attempt"
        assert self.error is None, repr(self.error)
        assert self.response is not None
        return self.response


def resubmit_until_answered(host: Host, body: bytes, headers: dict[str, str], within: float = 40.0) -> httpx.Response:
    """Mypinpad resubmits after a 503 or a timeout; B answers once it has recovered A's claim."""
    statuses: list[int | str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            r = httpx.post(host.url + "/transaction/process", content=body, headers=headers, timeout=30)
        except httpx.TransportError as e:
            statuses.append(type(e).__name__)
            time.sleep(0.2)
            continue
        statuses.append(r.status_code)
        if r.status_code == 200:
            return r
        assert r.status_code == 503, r.text  # in progress / busy: never a 500, never a made-up decline
        time.sleep(0.2)
    raise AssertionError(f"no answer from host B within {within} s: {statuses}")


def replay(host: Host, body: bytes, headers: dict[str, str], within: float = 30.0) -> httpx.Response:
    """The replay, from whichever worker now serves the host (A's paused one is replaced)."""
    deadline = time.monotonic() + within
    while True:
        try:
            r = httpx.post(host.url + "/transaction/process", content=body, headers=headers, timeout=10)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no replay"
        time.sleep(0.2)


def wait_for_log(host: Host | PgHost, text: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while text not in host.log_text():
        assert time.monotonic() < deadline, f"{text!r} never logged by host A"
        time.sleep(0.05)
