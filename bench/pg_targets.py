"""The `pg` scenario (bench/run.py --scenario pg): the whole path on the PostgreSQL store beside LMDB, in one run.

Three targets, one after the other, each with the same load (unique purchases, the simulator at zero latency):
`host` (LMDB, as in `unique`), `host-pg` (one host, `store.backend = "postgres"`) and `two-hosts-pg` (two hosts on
one database, connections and rate split evenly between them by one load generator process per host, their
histograms merged). PostgreSQL is the tests' throw-away cluster (tests/pg_cluster.py: fsync and synchronous_commit
on, the same disk as LMDB's), a fresh migrated database per target. For PostgreSQL targets the server CPU counted
is the hosts' and the database's (the postmaster and its backends): LMDB does its store work inside the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen import tree_cpu_seconds
from processes import BenchError, free_port, wait_http, wait_tcp
from scenarios import Credentials
from target_configs import server_toml

if TYPE_CHECKING:
    from run import Bench, Target

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg_cluster import PgCluster  # noqa: E402

CLOUDLAYER = str(Path(sys.executable).parent / "cloudlayer")
PG_TARGETS = ("host-pg", "two-hosts-pg")


def pg_host_toml(toml: str, store: dict[str, object], shared: Path, issuer_port: int) -> str:
    """server_toml's text on PostgreSQL, with the key files every host of the run shares (OAuth is not in
    PostgreSQL yet, docs/postgres.md) and one issuer, so that one token is good on every host."""
    server = [
        f"sealing_key_file = {json.dumps(str(shared / 'sealing.key'))}",
        f"card_key_file = {json.dumps(str(shared / 'card.key'))}",
    ]
    oauth = [
        f"keys_file = {json.dumps(str(shared / 'keys.json'))}",
        f"clients_file = {json.dumps(str(shared / 'clients.lmdb'))}",
        f"pepper_file = {json.dumps(str(shared / 'pepper'))}",
    ]
    lines = []
    for line in toml.splitlines():
        if line.startswith("issuer = "):
            line = f'issuer = "https://127.0.0.1:{issuer_port}"'
        lines.append(line)
        if line == "[server]":
            lines += server
        elif line == "[oauth]":
            lines += oauth
    lines += ["[store]", *(f"{k} = {json.dumps(v)}" for k, v in store.items()), ""]
    return "\n".join(lines)


def postmaster_pid(cluster: PgCluster) -> int:
    """The PostgreSQL server's PID (its backends are its children), from its data directory."""
    return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])


def start_pg_hosts(
    bench: Bench, cluster: PgCluster, name: str, count: int
) -> tuple[Target, Credentials, list[subprocess.Popen[bytes]]]:
    """`count` hosts on one fresh migrated database and one simulator; a client, a token, a preflight on each."""
    from run import Target

    started: list[subprocess.Popen[bytes]] = []
    try:
        db = cluster.create_database()
        sim, sim_port = bench._start_simulator(f"simulator-{name}", 0.0)
        started.append(sim)
        shared = bench.work / f"shared-{name}"
        shared.mkdir(mode=0o700)
        ports = [free_port() for _ in range(count)]
        configs = []
        for i, port in enumerate(ports):
            toml = server_toml(bench.s, port, bench.work / f"var-{name}-{i}", bench.tls, sim_port)
            cfg = bench.work / f"{name}-{i}.toml"
            cfg.write_text(pg_host_toml(toml, db.store_section(), shared, ports[0]))
            configs.append(cfg)
        _cli(["db", "migrate", "--config", str(configs[0])])
        notify = os.environ.get("BENCH_PG_NOTIFY")  # a lever measured (bench/README.md), never a setting
        if notify:
            from pg_notify_lever import set_mode

            set_mode(cluster, db.name, notify)
        client = json.loads(_cli(["client", "add", "bench", "--json", "--config", str(configs[0])]).splitlines()[-1])
        wait_tcp(bench.procs, f"simulator-{name}", sim, sim_port)
        hosts = []
        for i, (port, cfg) in enumerate(zip(ports, configs, strict=True)):
            # One after the other: the first creates the signing keys and sealing key ring the others share.
            host = bench.procs.start(f"{name}-{i}", [CLOUDLAYER, "serve", "--config", str(cfg)])
            started.append(host)
            wait_http(bench.procs, f"{name}-{i}", host, port, bench.tls, "/healthz")
            hosts.append(host)
        creds = None
        for port in ports:  # the same client and token on every host; each must answer a purchase
            creds = bench._token_and_preflight(port, client["client_id"], client["client_secret"], f"{name}-{port}")
        assert creds is not None
        pids = (*(h.pid for h in hosts), postmaster_pid(cluster))
        return Target(name, ports[0], hosts[0].pid, tuple(ports), pids), creds, started
    except BaseException:
        for p in reversed(started):
            bench.procs.stop(p)
        raise


def _cli(args: list[str]) -> str:
    out = subprocess.run([CLOUDLAYER, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise BenchError(f"`cloudlayer {' '.join(args[:2])}` failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


def run_pg(bench: Bench, result: dict[str, Any]) -> None:
    """Measure the PostgreSQL targets into result["targets"] (the LMDB host is measured by run_scenario)."""
    from scenarios import scenario_kinds

    cluster = PgCluster()
    try:
        cluster.start()
        result["postgres_dir"] = str(cluster.root)  # gone after the run: the smoke test checks
        for name, count in zip(PG_TARGETS, (1, 2), strict=True):
            try:
                target, creds, started = start_pg_hosts(bench, cluster, name, count)
            except BenchError as e:
                bench.problems.append(f"pg: {name} unavailable: {e}")
                result["targets"][name] = {"error": str(e)[:500]}
                print(f"  pg / {name}: UNAVAILABLE: {str(e)[:300]}", flush=True)
                continue
            try:
                hosts, db = list(target.pids[:-1]), [target.pids[-1]]
                before = tree_cpu_seconds(hosts), tree_cpu_seconds(db)
                result["targets"][name] = bench.measure(target, "pg", scenario_kinds("pg", bench.s, creds))
                used = tree_cpu_seconds(hosts) - before[0], tree_cpu_seconds(db) - before[1]
                # Over every measurement of this target (closed loop and sweep): where the server CPU went.
                result["targets"][name]["cpu_split"] = {
                    "hosts_s": used[0],
                    "database_s": used[1],
                    "database_share": used[1] / sum(used) if sum(used) else None,
                }
            finally:
                for p in reversed(started):
                    bench.procs.stop(p)
    finally:
        cluster.stop()
