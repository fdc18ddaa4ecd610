"""Several real hosts (`cloudlayer serve` subprocesses) on one real PostgreSQL database, each as if on its own
machine: every host runs in its own UTS namespace under its own hostname, so its owner ids name another host
and the others judge its workers by their heartbeat in the database (by the database's clock, against
`store.owner_timeout`), never by /proc, exactly as two machines would.

OAuth is not in PostgreSQL yet (docs/postgres.md): the hosts, on one machine, share the first host's OAuth
files and sealing key, as a shared volume would. Hosts are `AttackedHost`s (tests/reliability/hosts.py): fixed
ports across restarts, SIGKILL of one worker or the whole process tree, every incarnation's logs kept.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess
from reliability.hosts import AttackedHost
from txn_harness import CLOUDLAYER, SimulatorProcess

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
OWNER_TIMEOUT = 2.0  # short, so that another host judges a killed host's owner dead within seconds


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
    owner_timeout: float = OWNER_TIMEOUT,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    first_extra: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    **host_kwargs: Any,
) -> list[PgHost]:
    """`n` hosts on `pg_database`, the database migrated, the first one started (it makes the OAuth signing
    keys and the sealing key the others share); start the others yourself. `extra` is merged into every host's
    config (e.g. the HTTPS connector's keys), `first_extra` into the first one's only; `env` is the first host's
    start environment."""
    store = pg_database.store_section(owner_timeout=owner_timeout)

    def sections(*layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for layer in (extra, {"store": store}, *layers):
            for name, values in (layer or {}).items():
                merged.setdefault(name, {}).update(values)
        return merged

    first = PgHost(root / "host-a", simulator, machine="cl-host-a", extra=sections(first_extra), **host_kwargs)
    migrate(first.config)
    var = first.var_dir
    shared = {
        "oauth": {
            "keys_file": str(var / "oauth" / "keys.json"),
            "clients_file": str(var / "oauth" / "clients.lmdb"),
            "pepper_file": str(var / "oauth" / "pepper"),
        },
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
