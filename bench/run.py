"""The bench suite's one entry point: `.venv/bin/python bench/run.py [options]` (what `make bench` runs).

For each scenario it starts, on loopback and each in its own process group, the targets one after the
other (the host with its acquirer simulator, then the two ceilings served by the same `cloudlayer.server`
code with the same TOML, then the conventional FastAPI host with a simulator of its own), drives each with
the same load generator (bench/loadgen.py, separate processes), closed loop then an open-loop sweep of
rates up to that target's saturation, and stops everything it started before going on. Results:
bench/results/<timestamp>/ (run.json, summary.md, <scenario>.png, logs/). See bench/README.md for the
methodology.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import report
import scenario_purge
import target_scenarios
from loadgen_workload import RequestKind, Workload, fill
from machine import machine_info, versions
from pg_targets import run_pg
from processes import (
    START_TIMEOUT,
    BenchError,
    Processes,
    free_port,
    http_request,
    make_tls,
    terminate_on_signals,
    wait_http,
    wait_tcp,
)
from scenarios import DESCRIPTIONS, Credentials, Settings, parse_args, purchase_body, scenario_kinds
from target_configs import payment_host_setup, server_toml, simulator_toml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
CLOUDLAYER = str(Path(PYTHON).parent / "cloudlayer")
LOADGEN = str(BENCH / "loadgen.py")
BASELINE_SERVE = str(BENCH / "baselines" / "serve.py")
CONVENTIONAL_SERVE = str(BENCH / "baselines" / "conventional" / "serve.py")
STORE_BUILD_BUDGET = 900.0  # seconds bench_store_scale may spend filling its large store
EXTRA_SCENARIOS = {
    "replay": target_scenarios.run_replay,
    "workers": target_scenarios.run_workers,
    "purge": scenario_purge.run_purge,
}


# -- targets ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A started server: its port and the PIDs whose CPU (children included) counts as the server's."""

    name: str
    port: int
    pid: int
    # Several hosts behind one target (the pg scenario's two hosts): the load is split across `ports`, and the
    # CPU of every process tree in `pids` is the server's. Default: (port,) and (pid,).
    ports: tuple[int, ...] = ()
    pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.ports = self.ports or (self.port,)
        self.pids = self.pids or (self.pid,)


class Bench:
    def __init__(self, settings: Settings, out_dir: Path, work_dir: Path, procs: Processes) -> None:
        self.s = settings
        self.out_dir = out_dir
        self.work = work_dir
        self.procs = procs
        self.tls = make_tls(settings.tls, work_dir / "tls")
        self.run_tag = dt.datetime.now().strftime("%H%M%S")
        self.problems: list[str] = []

    # targets

    def start_host(
        self, scenario: str, latency_ms: float, extra_toml: str = ""
    ) -> tuple[Target, Credentials, list[subprocess.Popen[bytes]]]:
        started: list[subprocess.Popen[bytes]] = []
        try:
            sim_port, port = free_port(), free_port()
            sim_cfg = self.work / f"simulator-{scenario}.toml"
            sim_toml, sim_args, host_extra = simulator_toml(latency_ms), [], ""
            if scenario == "http":  # the payment host beside the ISO port, and the host pointed at it
                sim_toml, sim_args, host_extra = payment_host_setup(self.work / "payment-host", sim_toml)
            sim_cfg.write_text(sim_toml, encoding="utf-8")
            sim = self.procs.start(
                f"simulator-{scenario}",
                [
                    CLOUDLAYER,
                    "simulator",
                    "--bind",
                    f"127.0.0.1:{sim_port}",
                    "--simulator-config",
                    str(sim_cfg),
                    *sim_args,
                ],
            )
            started.append(sim)
            cfg = self.work / f"host-{scenario}.toml"
            toml = server_toml(self.s, port, self.work / f"var-host-{scenario}", self.tls, sim_port)
            cfg.write_text(
                toml.replace('[acquirer]\nmode = "tcp"', '[acquirer]\nkind = "http"\nmode = "tcp"') + host_extra
                if host_extra
                else toml + extra_toml
            )
            add = subprocess.run(
                [CLOUDLAYER, "client", "add", "bench", "--json", "--config", str(cfg)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if add.returncode != 0:
                raise BenchError(f"`cloudlayer client add` failed ({add.returncode}): {add.stderr.strip()[-500:]}")
            client = json.loads(add.stdout.strip().splitlines()[-1])
            wait_tcp(self.procs, f"simulator-{scenario}", sim, sim_port)
            host = self.procs.start(f"host-{scenario}", [CLOUDLAYER, "serve", "--config", str(cfg)])
            started.append(host)
            wait_http(self.procs, f"host-{scenario}", host, port, self.tls, "/healthz")
            status, body = http_request(
                port,
                self.tls,
                "POST",
                "/oauth/token",
                urllib.parse.urlencode(
                    {
                        "grant_type": "client_credentials",
                        "client_id": client["client_id"],
                        "client_secret": client["client_secret"],
                    }
                ).encode(),
                {"content-type": "application/x-www-form-urlencoded"},
            )
            if status != 200:
                raise BenchError(f"POST /oauth/token answered {status}: {body[:300]!r}")
            creds = Credentials(client["client_id"], client["client_secret"], json.loads(body)["access_token"])
            probe = fill(purchase_body(), f"preflight-{scenario}-{self.run_tag}").encode()
            status, body = http_request(
                port,
                self.tls,
                "POST",
                self.s.transaction_path,
                probe,
                {"content-type": "application/json", "authorization": f"Bearer {creds.token}"},
            )
            if status != 200:
                raise BenchError(f"preflight POST {self.s.transaction_path} answered {status}: {body[:300]!r}")
            return Target("host", port, host.pid), creds, started
        except BaseException:
            for p in reversed(started):
                self.procs.stop(p)
            raise

    def start_baseline(self, name: str, scenario: str, delay_ms: float) -> tuple[Target, subprocess.Popen[bytes]]:
        port = free_port()
        cfg = self.work / f"{name}-{scenario}.toml"
        cfg.write_text(server_toml(self.s, port, self.work / f"var-{name}-{scenario}", self.tls, None))
        proc = self.procs.start(
            f"{name}-{scenario}",
            [PYTHON, BASELINE_SERVE, name, str(cfg)],
            env={"BENCH_BASELINE_DELAY_MS": str(delay_ms)},
        )
        try:
            wait_http(self.procs, f"{name}-{scenario}", proc, port, self.tls, "/")
        except BaseException:
            self.procs.stop(proc)
            raise
        return Target(name, port, proc.pid), proc

    def start_conventional(
        self, scenario: str, latency_ms: float
    ) -> tuple[Target, Credentials, list[subprocess.Popen[bytes]]]:
        """The conventional host (bench/baselines/conventional/) with its own simulator, var dir and client,
        started and checked like the host: a token from its /oauth/token and one preflight purchase."""
        started: list[subprocess.Popen[bytes]] = []
        name = f"conventional-{scenario}"
        try:
            sim, sim_port = self._start_simulator(f"simulator-{name}", latency_ms)
            started.append(sim)
            var = self.work / f"var-{name}"
            add = subprocess.run(
                [PYTHON, CONVENTIONAL_SERVE, "add-client", "--var-dir", str(var)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if add.returncode != 0:
                raise BenchError(f"conventional add-client failed ({add.returncode}): {add.stderr.strip()[-500:]}")
            client = json.loads(add.stdout.strip().splitlines()[-1])
            port = free_port()
            argv = [PYTHON, CONVENTIONAL_SERVE, "serve", "--var-dir", str(var), "--bind", f"127.0.0.1:{port}"]
            argv += ["--acquirer", f"127.0.0.1:{sim_port}", "--workers", str(self.s.workers)]
            argv += ["--log-level", self.s.log_level.lower()]
            if self.tls.enabled:
                argv += ["--certfile", self.tls.certfile, "--keyfile", self.tls.keyfile]
            wait_tcp(self.procs, f"simulator-{name}", sim, sim_port)
            proc = self.procs.start(name, argv)
            started.append(proc)
            wait_http(self.procs, name, proc, port, self.tls, "/healthz")
            creds = self._token_and_preflight(port, client["client_id"], client["client_secret"], scenario)
            return Target("conventional", port, proc.pid), creds, started
        except BaseException:
            for p in reversed(started):
                self.procs.stop(p)
            raise

    def _start_simulator(self, name: str, latency_ms: float) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        cfg = self.work / f"{name}.toml"
        cfg.write_text(simulator_toml(latency_ms), encoding="utf-8")
        argv = [CLOUDLAYER, "simulator", "--bind", f"127.0.0.1:{port}", "--simulator-config", str(cfg)]
        return self.procs.start(name, argv), port

    def _token_and_preflight(self, port: int, client_id: str, client_secret: str, scenario: str) -> Credentials:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        status, body = http_request(
            port,
            self.tls,
            "POST",
            "/oauth/token",
            urllib.parse.urlencode(form).encode(),
            {"content-type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            raise BenchError(f"POST /oauth/token answered {status}: {body[:300]!r}")
        creds = Credentials(client_id, client_secret, json.loads(body)["access_token"])
        probe = fill(purchase_body(), f"preflight-{scenario}-{self.run_tag}").encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {creds.token}"}
        status, body = http_request(port, self.tls, "POST", self.s.transaction_path, probe, headers)
        if status != 200:
            raise BenchError(f"preflight POST {self.s.transaction_path} answered {status}: {body[:300]!r}")
        return creds

    def measure_conventional(self, scenario: str, latency_ms: float, result: dict[str, Any]) -> None:
        try:
            target, creds, started = self.start_conventional(scenario, latency_ms)
        except BenchError as e:
            self.problems.append(f"{scenario}: conventional unavailable: {e}")
            result["targets"]["conventional"] = {"error": str(e)[:500]}
            print(f"  {scenario} / conventional: UNAVAILABLE: {str(e)[:300]}", flush=True)
            return
        try:
            result["targets"]["conventional"] = self.measure(target, scenario, scenario_kinds(scenario, self.s, creds))
        finally:
            for p in reversed(started):
                self.procs.stop(p)

    # measurements

    def loadgen(
        self, target: Target, scenario: str, kinds: list[RequestKind], conns: int, rate: float, tag: str
    ) -> dict[str, Any]:
        wl_paths = []
        for port in target.ports:
            workload = Workload("127.0.0.1", port, tuple(kinds), self.tls.enabled, self.tls.ca_file or None)
            wl_paths.append(self.work / f"workload-{scenario}-{target.name}-{port}.json")
            workload.dump(wl_paths[-1])
        n = max(self.s.loadgen_procs, len(target.ports))  # at least one generator per host, each its share
        running: list[tuple[subprocess.Popen[bytes], Path]] = []
        budget = self.s.warmup + self.s.duration + self.s.request_timeout + START_TIMEOUT
        try:
            for i in range(n):
                out = self.work / f"lg-{scenario}-{target.name}-{tag}-{i}.json"
                out.unlink(missing_ok=True)
                argv = [
                    PYTHON,
                    LOADGEN,
                    "--workload",
                    str(wl_paths[i % len(wl_paths)]),
                    "--connections",
                    str(conns // n + (1 if i < conns % n else 0)),
                    "--rate",
                    str(rate / n),
                    "--warmup",
                    str(self.s.warmup),
                    "--duration",
                    str(self.s.duration),
                    "--timeout",
                    str(self.s.request_timeout),
                    "--id-prefix",
                    f"b{self.run_tag}-{scenario[:3]}-{target.name[:2]}{tag}-{i}-",
                    "--seed",
                    str(1000 + i),
                    "--out",
                    str(out),
                ]
                if i == 0:
                    for pid in target.pids:
                        argv += ["--cpu-pid", str(pid)]
                running.append((self.procs.start(f"loadgen-{scenario}-{target.name}", argv), out))
            results = []
            for proc, out in running:
                try:
                    rc = proc.wait(timeout=budget)
                except subprocess.TimeoutExpired:
                    raise BenchError(f"load generator for {target.name} overran {budget:.0f} s") from None
                if rc != 0 or not out.exists():
                    tail = self.procs.log_tail(f"loadgen-{scenario}-{target.name}")
                    raise BenchError(f"load generator for {target.name} failed ({rc}): {tail}")
                results.append(json.loads(out.read_text(encoding="utf-8")))
        finally:
            for proc, _ in running:
                self.procs.stop(proc)
        return report.summarize(results)

    def measure(self, target: Target, scenario: str, kinds: list[RequestKind]) -> dict[str, Any]:
        print(f"  {scenario} / {target.name}: closed loop, {self.s.connections} connections", flush=True)
        closed = self.loadgen(target, scenario, kinds, self.s.connections, 0.0, "c")
        print(
            f"    {closed['throughput']:,.0f} req/s, p99 {closed['latency_ms'].get('p99', 0):.2f} ms, "
            f"errors {closed['errors_total']}",
            flush=True,
        )
        opens = []
        for i, fraction in enumerate(self.s.sweep):
            rate = fraction * closed["throughput"]
            if rate < 1:
                continue
            print(
                f"  {scenario} / {target.name}: open loop at {rate:,.0f} req/s ({fraction:g} of saturation)", flush=True
            )
            m = self.loadgen(target, scenario, kinds, self.s.open_connections, rate, f"o{i}")
            m["fraction"] = fraction
            opens.append(m)
        return {"port": target.port, "closed": closed, "open": opens}

    def run_scenario(self, scenario: str) -> dict[str, Any]:
        latency = self.s.acquirer_latency_ms if scenario == "latency" else 0.0
        result: dict[str, Any] = {"description": DESCRIPTIONS[scenario], "acquirer_latency_ms": latency, "targets": {}}
        # Placeholder credentials of the host's lengths, for baselines when the host is not measured.
        creds = Credentials("bench-client-id-000000000000", "x" * 43, "x" * 220)
        if "host" in self.s.targets:
            try:
                target, creds, started = self.start_host(scenario, latency)
            except BenchError as e:
                self.problems.append(f"{scenario}: host unavailable: {e}")
                result["targets"]["host"] = {"error": str(e)[:500]}
                print(f"  {scenario} / host: UNAVAILABLE: {str(e)[:300]}", flush=True)
            else:
                try:
                    result["targets"]["host"] = self.measure(target, scenario, scenario_kinds(scenario, self.s, creds))
                finally:
                    for p in reversed(started):
                        self.procs.stop(p)
        if scenario == "pg":  # the host on PostgreSQL, one and two of them, beside the LMDB host above
            if "host" in self.s.targets:
                run_pg(self, result)
            report.add_pg_ratios(result)
            return result
        kinds = scenario_kinds(scenario, self.s, creds)
        for name in ("quart-trio", "bare-asgi"):
            if name not in self.s.targets or scenario == "http":  # same baselines as unique: measured there
                continue
            target, proc = self.start_baseline(name, scenario, latency)
            try:
                result["targets"][name] = self.measure(target, scenario, kinds)
            finally:
                self.procs.stop(proc)
        if "conventional" in self.s.targets and scenario != "http":
            self.measure_conventional(scenario, latency, result)
        report.add_ratios(result)
        return result

    def run_micro(self) -> dict[str, Any]:
        benches: dict[str, Any] = {}
        for script in sorted(BENCH.glob("bench_*.py")):
            print(f"  micro: {script.name}", flush=True)
            name = script.stem
            argv, timeout = [PYTHON, str(script)], self.s.micro_timeout
            if name == "bench_store_scale":  # its size is a run setting (--store-records; --quick: fewer)
                argv += ["--records", str(self.s.store_records), "--build-budget", str(STORE_BUILD_BUDGET)]
                timeout += STORE_BUILD_BUDGET
            proc = self.procs.start(f"micro-{name}", argv)
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
                self.problems.append(f"micro: {script.name} overran {timeout:.0f} s")
            finally:
                self.procs.stop(proc)
            text = (self.out_dir / "logs" / f"micro-{name}.log").read_text(errors="replace")
            lines = [ln for ln in text.splitlines()[1:]]  # the first line is the logged command
            parsed = []
            for ln in lines:
                if ln.startswith("{"):
                    try:
                        parsed.append(json.loads(ln))
                    except json.JSONDecodeError:
                        pass
            if rc not in (0, None):
                self.problems.append(f"micro: {script.name} exited {rc}")
            benches[name] = {"returncode": rc, "json": parsed, "stdout_tail": "\n".join(lines)[-4000:]}
        return {"description": DESCRIPTIONS["micro"], "benches": benches}


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    out_dir = Path(args.out_dir) if args.out_dir else BENCH / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="cloudlayer-bench-"))
    procs = Processes(out_dir / "logs")
    run: dict[str, Any] = {
        "run_id": stamp,
        "command": shlex.join([PYTHON, *sys.argv] if argv is None else [PYTHON, __file__, *argv]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": settings.to_json(),
        "scenarios": {},
    }
    bench = Bench(settings, out_dir, work_dir, procs)
    print(f"bench: results in {out_dir}", flush=True)
    code = 0
    try:
        with terminate_on_signals():
            for scenario in settings.scenarios:
                print(f"scenario {scenario}", flush=True)
                if scenario == "micro":
                    run["scenarios"][scenario] = bench.run_micro()
                elif scenario in EXTRA_SCENARIOS:  # issue 13's targets: bench/target_scenarios.py
                    run["scenarios"][scenario] = EXTRA_SCENARIOS[scenario](bench)
                else:
                    run["scenarios"][scenario] = bench.run_scenario(scenario)
    except BenchError as e:
        bench.problems.append(str(e))
        print(f"bench: {e}", file=sys.stderr)
        code = 1
    finally:
        procs.stop_all()
        run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        run["problems"] = bench.problems
        run["pids_started"] = procs.started_pids
        run["work_dir"] = str(work_dir)
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
        written = report.write_run(out_dir, run)
        print("bench: wrote " + ", ".join(str(p) for p in written), flush=True)
    if bench.problems:
        print("bench: problems:\n  " + "\n  ".join(bench.problems), file=sys.stderr)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
