"""`make cluster`: two CloudLayer hosts on one PostgreSQL behind HAProxy, on this machine, in the foreground.

    .venv/bin/python tools/cluster.py [--dir var/cluster] [--port 8643] [--acquirer-latency-ms N]

Starts, each in its own process group: a throw-away PostgreSQL cluster (tests/pg_cluster.py, as an unprivileged
user), `cloudlayer db migrate`, the acquirer simulator (`cloudlayer simulator`), host A then host B
(`cloudlayer serve`, plain HTTP on loopback, `store.backend = "postgres"`, each its own var dir) and HAProxy
(TLS with a generated dev certificate on 127.0.0.1, health-checking each host's /readyz). OAuth clients and
signing keys are shared through PostgreSQL; the secrets every host holds (the pepper, the sealing key ring, the
card key) are one set of files under DIR/shared. SIGINT/SIGTERM stop everything, newest first.
When everything is up it writes DIR/cluster.json (ports, PIDs, process groups) and prints how to call it.
docs/deploy.md, "Two hosts behind HAProxy on one machine", says why it is built this way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the throw-away PostgreSQL cluster the tests use, not a copy of it
sys.path.insert(0, str(REPO / "tools"))

import cluster_haproxy  # noqa: E402
from pg_cluster import PgCluster, free_port  # noqa: E402

BIN = Path(sys.executable).parent
CLOUDLAYER = str(BIN / "cloudlayer")
HAPROXY = os.environ.get("CLOUDLAYER_HAPROXY", str(BIN / "haproxy"))
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
HOSTS = ("host-a", "host-b")


class ClusterError(Exception):
    """Something did not start: says what, and where its log is."""


class Stop(Exception):
    """SIGINT/SIGTERM arrived: stop everything."""


class Child:
    """A process in its own session (its PID is its process group): stopped as a group, workers included."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.proc.pid

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            _killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while _group_alive(self.pid) and time.monotonic() < deadline:  # spawned workers left behind, if any
            _killpg(self.pid, signal.SIGKILL)
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_GRACE)
        self._log.close()

    def tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())  # JSON scalars are TOML scalars
        out.append("")
    return "\n".join(out)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URLs we built)
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


class Cluster:
    def __init__(self, root: Path, port: int, latency_ms: float | None) -> None:
        self.root = root
        self.port = port
        self.latency_ms = latency_ms
        self.logs = root / "logs"
        self.shared = root / "shared"
        self.children: list[Child] = []
        self.pg: PgCluster | None = None
        self.state: dict[str, Any] = {}

    # ---- start -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)  # throw-away, like its database: every start is a fresh cluster
        self.logs.mkdir(parents=True)
        self.shared.mkdir(mode=0o700)
        print("cluster: starting PostgreSQL (throw-away, as an unprivileged user)", flush=True)
        self.pg = PgCluster()
        self.pg.start()
        db = self.pg.create_database()
        store = db.store_section()
        sim_port, sim_admin = self._start_simulator()
        ports = {name: free_port() for name in HOSTS}
        metrics = {name: free_port() for name in HOSTS}
        configs = {name: self._write_host_config(name, ports[name], metrics[name], store, sim_port) for name in HOSTS}
        self._run([CLOUDLAYER, "db", "migrate", "--config", str(configs["host-a"])], "db migrate")
        client = json.loads(
            self._run([CLOUDLAYER, "client", "add", "mypinpad", "--json", "--config", str(configs["host-a"])], "client")
        )
        secret_file = self.root / "mypinpad.secret"
        secret_file.write_text(client["client_secret"] + "\n")
        secret_file.chmod(0o600)
        hosts = []
        for name in HOSTS:  # A first: it creates the signing keys, sealing key ring and card key B then shares
            child = self._spawn(name, [CLOUDLAYER, "serve", "--config", str(configs[name])])
            self._wait(child, lambda p=ports[name]: _get(f"http://127.0.0.1:{p}/readyz") == 200, "/readyz 200")
            hosts.append(
                {
                    "name": name,
                    "url": f"http://127.0.0.1:{ports[name]}",
                    "metrics": f"http://127.0.0.1:{metrics[name]}/metrics",
                    "pid": child.pid,
                    "config": str(configs[name]),
                    "log": str(child.log_path),
                }
            )
        stats_port = free_port()
        lb = self._start_haproxy(stats_port, [cluster_haproxy.Backend(n, ports[n]) for n in HOSTS])
        self.state = {
            "url": f"https://127.0.0.1:{self.port}",
            "stats": f"http://127.0.0.1:{stats_port}/stats",
            "stats_port": stats_port,
            "client_id": client["client_id"],
            "client_secret_file": str(secret_file),
            "hosts": hosts,
            "haproxy": {"pid": lb.pid, "config": str(self.root / "haproxy.cfg"), "log": str(lb.log_path)},
            "simulator": {"port": sim_port, "admin": f"http://127.0.0.1:{sim_admin}", "pid": self.children[0].pid},
            "postgres": {"dsn": db.dsn, "dir": str(self.pg.root), "log": str(self.pg.root / "postgres.log")},
            "process_groups": [c.pid for c in self.children],
            "supervisor_pid": os.getpid(),
        }
        tmp = self.root / "cluster.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.root / "cluster.json")  # appears whole, once everything answers

    def _start_simulator(self) -> tuple[int, int]:
        port, admin = free_port(), free_port()
        text = (REPO / "configs" / "simulator.toml").read_text()
        text = text.replace('admin_bind = "127.0.0.1:9584"', f'admin_bind = "127.0.0.1:{admin}"')
        if self.latency_ms is not None:
            text = text.replace('distribution = "uniform"', 'distribution = "fixed"')
            text = text.replace("fixed_ms = 0", f"fixed_ms = {self.latency_ms}")
        cfg = self.root / "simulator.toml"
        cfg.write_text(text)
        child = self._spawn("simulator", [CLOUDLAYER, "simulator", "--config", str(cfg), "--bind", f"127.0.0.1:{port}"])
        self._wait(child, lambda: _get(f"http://127.0.0.1:{admin}/ledger") == 200, "its admin port")
        return port, admin

    def _write_host_config(self, name: str, port: int, metrics: int, store: dict[str, object], sim: int) -> Path:
        s = self.shared
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "tls": False,  # TLS ends at HAProxy; host to balancer is loopback
                "var_dir": str(self.root / name / "var"),
                "graceful_timeout": 5.0,
                "sealing_key_file": str(s / "keys" / "sealing.key"),
                "card_key_file": str(s / "keys" / "card.key"),
                # HAProxy on loopback: its X-Forwarded-For names the client (docs/deploy.md §7).
                "trusted_proxies": ["127.0.0.1/32"],
            },
            # One issuer, the balancer's URL. Clients and signing keys are in PostgreSQL (private keys sealed
            # with the shared ring); the pepper that hashes client secrets is a file every host holds.
            "oauth": {
                "issuer": f"https://127.0.0.1:{self.port}",
                "pepper_file": str(s / "oauth" / "pepper"),
            },
            "store": dict(store),
            "acquirer": {"mode": "tcp", "host": "127.0.0.1", "port": sim},
            "logging": {"level": "INFO", "format": "json"},
            "metrics": {"enabled": True, "bind": f"127.0.0.1:{metrics}"},
        }
        path = self.root / name / "cloudlayer.toml"
        path.parent.mkdir()
        path.write_text(_toml(sections))
        return path

    def _start_haproxy(self, stats_port: int, backends: list[cluster_haproxy.Backend]) -> Child:
        from cloudlayer.tls import generate_self_signed

        if not Path(HAPROXY).exists():
            raise ClusterError(f"no HAProxy at {HAPROXY}: `make cluster` installs it (scripts/ensure-haproxy.sh)")
        key_pem, cert_pem = generate_self_signed()
        pem = self.root / "tls" / "haproxy.pem"  # HAProxy wants certificate and key in one file
        pem.parent.mkdir(mode=0o700)
        pem.write_bytes(cert_pem + key_pem)
        pem.chmod(0o600)
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(cluster_haproxy.render(port=self.port, stats_port=stats_port, pem=str(pem), backends=backends))
        self._run([HAPROXY, "-c", "-q", "-f", str(cfg)], "haproxy -c")
        child = self._spawn("haproxy", [HAPROXY, "-db", "-f", str(cfg)])
        names = {b.name for b in backends}

        def all_up() -> bool:
            try:
                states = cluster_haproxy.server_states(stats_port)
            except OSError:
                return False
            return set(states) == names and all(v == "UP" for v in states.values())

        self._wait(child, all_up, "every host UP in its health check")
        return child

    def _spawn(self, name: str, argv: list[str]) -> Child:
        child = Child(name, argv, self.logs)
        self.children.append(child)
        return child

    def _wait(self, child: Child, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if child.exited() is not None:
                raise ClusterError(f"{child.name} exited ({child.exited()}) while starting:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{child.name}: no {what} within {START_TIMEOUT:.0f} s; log {child.log_path}")
            time.sleep(0.1)

    def _run(self, argv: list[str], what: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise ClusterError(f"{what} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-1500:]}")
        return out.stdout

    # ---- run, stop ---------------------------------------------------------------------------------

    def watch(self) -> None:
        """Until a signal. A child that exits on its own (a host killed to see the balancer take it out) is
        reported once and left down: the rest keeps serving, and the stop still stops its process group."""
        reported: set[str] = set()
        while True:
            for c in self.children:
                if c.name not in reported and c.exited() is not None:
                    reported.add(c.name)
                    print(f"cluster: {c.name} exited ({c.exited()}); log {c.log_path}", flush=True)
            time.sleep(0.5)

    def stop(self) -> None:
        for c in reversed(self.children):  # HAProxy first (no new requests), then the hosts, then the simulator
            try:
                c.stop()
            except Exception as e:  # keep stopping the rest
                print(f"cluster: stopping {c.name}: {e}", file=sys.stderr)
        self.children.clear()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def banner(self) -> str:
        st = self.state
        lines = [
            "",
            f"CloudLayer cluster up (everything under {self.root}; Ctrl-C stops it all)",
            f"  balancer     {st['url']}  (HAProxy, TLS with a self-signed dev certificate)",
            f"  HAProxy      stats {st['stats']}, config {st['haproxy']['config']}",
        ]
        for h in st["hosts"]:
            lines.append(f"  {h['name']:<12} {h['url']}  metrics {h['metrics']}, log {h['log']}")
        lines += [
            f"  simulator    127.0.0.1:{st['simulator']['port']} (ISO 8583), ledger {st['simulator']['admin']}/ledger",
            f"  PostgreSQL   {st['postgres']['dsn']}  (data {st['postgres']['dir']})",
            f"  client       {st['client_id']} (secret in {st['client_secret_file']})",
            "",
            "Act like Mypinpad through the balancer:",
            f"  CLOUDLAYER_CLIENT_SECRET=$(cat {st['client_secret_file']}) .venv/bin/cloudlayer try {st['url']} "
            f"--insecure --client-id {st['client_id']}",
            "",
        ]
        return "\n".join(lines)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/cluster.py", description="Two CloudLayer hosts on one PostgreSQL behind HAProxy (make cluster)."
    )
    p.add_argument("--dir", default=str(REPO / "var" / "cluster"), help="where configs, var dirs and logs go")
    p.add_argument("--port", type=int, default=8643, help="HAProxy's TLS port on 127.0.0.1 (0: any free port)")
    p.add_argument(
        "--acquirer-latency-ms", type=float, help="a fixed simulator delay (default: configs/simulator.toml's)"
    )
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    cluster = Cluster(Path(args.dir).resolve(), args.port or free_port(), args.acquirer_latency_ms)
    code = 0
    try:
        cluster.start()
        print(cluster.banner(), flush=True)
        cluster.watch()
    except Stop as e:
        print(f"cluster: {e}: stopping", flush=True)
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second signal while stopping must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        print("cluster: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
