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

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import psutil

import report
from loadgen_workload import TAP_PLACEHOLDER, RequestKind, Workload, fill

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
CLOUDLAYER = str(Path(PYTHON).parent / "cloudlayer")
LOADGEN = str(BENCH / "loadgen.py")
BASELINE_SERVE = str(BENCH / "baselines" / "serve.py")
CONVENTIONAL_SERVE = str(BENCH / "baselines" / "conventional" / "serve.py")
TARGETS = ("host", "quart-trio", "bare-asgi", "conventional")
SCENARIOS = ("unique", "http", "retry", "token", "latency", "mix", "micro")
START_TIMEOUT = 30.0
STOP_GRACE = 10.0


class BenchError(Exception):
    """Something the harness could not do (a target would not start, a generator failed): says what."""


# -- a realistic request ----------------------------------------------------------------------------------


def _tlv(tag: str, value: str) -> str:
    size = 8 if value == TAP_PLACEHOLDER else len(value) // 2  # {TAP} stands for 8 bytes
    return f"{tag}{size:02X}{value}"


# A Visa contactless authorisation's field 55 (test card 4761 7390 0101 0119, not a real card): 23 tags, no ATC ({TAP}).
FIELD_55 = "".join(
    _tlv(t, v)
    for t, v in (
        ("9F02", "000000001200"),
        ("9F03", "000000000000"),
        # A new tap per request (loadgen_workload's {TAP}): the cryptogram is fresh, and there is no ATC (9F36) so
        # that the cryptogram is the card key (65,536 counters of one test card would not last a bench run).
        ("9F26", "{TAP}"),
        ("82", "2000"),
        ("9F10", "06011203A00000"),
        ("9F33", "E0F8C8"),
        ("9F1A", "0826"),
        ("95", "0000000000"),
        ("5F2A", "0826"),
        ("9A", "261126"),
        ("9C", "00"),
        ("9F37", "3D8B2C11"),
        ("9F27", "80"),
        ("9F34", "1F0302"),
        ("9F35", "22"),
        ("84", "A0000000031010"),
        ("9F09", "008C"),
        ("9F1E", "3132333435363738"),
        ("9F41", "00000042"),
        ("5A", "4761739001010119"),
        ("57", "4761739001010119D29122011143804489"),
        ("5F34", "01"),
        ("9F6E", "20700000"),
    )
)
AMOUNT_APPROVED = 1200  # the simulator picks field 39 from the last two digits: 00 approves


def purchase_body() -> str:
    # {ID} is replaced per request by the load generator; everything else is fixed, so a replay is byte-identical.
    fields = {
        "transactionId": "{ID}",
        "transactionType": "PURCHASE",
        "amount": AMOUNT_APPROVED,
        "currency": "826",
        "merchantId": "BENCHMERCHANT01",
        "terminalId": "BENCH001",
        "posEntryMode": "071",
        "emvData": FIELD_55,
        "localDateTime": "2026-11-26T14:05:09",
    }
    return json.dumps(fields, separators=(",", ":"))


@dataclass
class Credentials:
    client_id: str
    client_secret: str
    token: str


def scenario_kinds(scenario: str, settings: Settings, creds: Credentials) -> list[RequestKind]:
    purchase = RequestKind(
        name="purchase",
        weight=1.0,
        method="POST",
        path=settings.transaction_path,
        headers=(("content-type", "application/json"), ("authorization", f"Bearer {creds.token}")),
        body=purchase_body(),
    )
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}
    )
    token = RequestKind(
        name="token",
        weight=1.0,
        method="POST",
        path="/oauth/token",
        headers=(("content-type", "application/x-www-form-urlencoded"),),
        body=form,
    )
    if scenario in ("unique", "latency", "http"):
        return [purchase]
    if scenario == "retry":
        return [_with(purchase, replay_share=settings.replay_share)]
    if scenario == "token":
        return [token]
    if scenario == "mix":
        # Mostly fresh purchases, some resubmissions, an occasional token request.
        return [_with(purchase, weight=0.95, replay_share=0.1), _with(token, weight=0.05)]
    raise ValueError(f"unknown load scenario {scenario!r}")


def _with(kind: RequestKind, **changes: Any) -> RequestKind:
    raw = kind.to_json() | changes
    return RequestKind.from_json(raw)


DESCRIPTIONS = {
    "unique": "Unique purchases: every request a new transactionId (auth, decode, EMV, durable claim, "
    "acquirer round trip at zero latency, durable complete).",
    "http": "As unique, through the HTTPS/JSON payment-host connector (acquirer.kind = http: OAuth client "
    "credentials, one shared token, Idempotency-Key) instead of ISO 8583; the host only (compare with unique).",
    "retry": "Retry storm: a share of requests resubmit an already answered transactionId byte for byte "
    "(the host replays its stored answer).",
    "token": "Token requests: POST /oauth/token, client_credentials with the secret in the form body.",
    "latency": "Acquirer latency: the simulator answers after a fixed delay, so concurrency, not CPU, is "
    "the limit; the baselines sleep the same delay before answering.",
    "mix": "A mix: 95% purchases (10% of them resubmissions), 5% token requests.",
    "micro": "Micro benchmarks (bench/bench_*.py), each run as a subprocess; their JSON lines collected.",
}


# -- settings -----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    scenarios: list[str]
    targets: list[str]
    workers: int = 1
    tls: bool = False
    acquirer_latency_ms: float = 50.0
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 32
    open_connections: int = 128
    sweep: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9, 1.0])
    loadgen_procs: int = 1
    replay_share: float = 0.3
    request_timeout: float = 10.0
    log_level: str = "INFO"
    transaction_path: str = "/transaction/process"
    micro_timeout: float = 600.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default: all")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--acquirer-latency-ms", type=float, default=50.0, help="the latency scenario's delay")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each measurement")
    p.add_argument("--connections", type=int, default=32, help="closed-loop concurrency")
    p.add_argument("--open-connections", type=int, default=128, help="connection pool of the open loop")
    p.add_argument("--sweep", default="0.25,0.5,0.75,0.9,1.0", help="open-loop rates, fractions of saturation")
    p.add_argument("--no-sweep", action="store_true", help="closed loop only")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes (split connections)")
    p.add_argument("--replay-share", type=float, default=0.3, help="retry storm: share of resubmissions")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--quick", action="store_true", help="2 s windows, sweep 0.5 and 1.0: a fast look")
    p.add_argument("--out-dir", help="default: bench/results/<timestamp>")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary var dirs (LMDB, keys)")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    try:
        sweep = [] if args.no_sweep else [float(x) for x in args.sweep.split(",") if x.strip()]
    except ValueError:
        p.error("--sweep: comma-separated fractions, e.g. 0.5,1.0")
    if any(not 0 < f <= 2 for f in sweep):
        p.error("--sweep fractions must be in (0, 2]")
    s = Settings(
        scenarios=args.scenario or list(SCENARIOS),
        targets=[t for t in TARGETS if t in targets],
        workers=args.workers,
        tls=args.tls,
        acquirer_latency_ms=args.acquirer_latency_ms,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        open_connections=args.open_connections,
        sweep=sweep,
        loadgen_procs=args.loadgen_procs,
        replay_share=args.replay_share,
        log_level=args.log_level,
    )
    if args.quick:
        s.duration, s.warmup = min(s.duration, 2.0), min(s.warmup, 0.5)
        s.sweep = [f for f in (0.5, 1.0) if sweep]
    if s.workers < 1 or s.connections < 1 or s.loadgen_procs < 1 or s.duration <= 0 or s.warmup < 0:
        p.error("workers, connections, loadgen-procs >= 1; duration > 0; warmup >= 0")
    if s.loadgen_procs > min(s.connections, s.open_connections):
        p.error("--loadgen-procs cannot exceed the connection count")
    return s, args


# -- processes: everything started here is stopped here -------------------------------------------------------


class Processes:
    """Starts each child in its own session (process group) and stops the whole group, always."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.started_pids: list[int] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # closed in stop()
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.running.append((name, proc, log))
        self.started_pids.append(proc.pid)
        return proc

    def log_tail(self, name: str, chars: int = 1500) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (_, p, log) in enumerate(self.running):
            if p is proc:
                del self.running[i]
                _stop_group(p)
                log.close()
                return

    def stop_all(self) -> None:
        while self.running:
            self.stop(self.running[-1][1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it (workers included)."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + STOP_GRACE
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=STOP_GRACE)


@contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit so every `finally` (stop_all) runs; SIGINT is KeyboardInterrupt already."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# -- plumbing: ports, readiness, TLS, configs -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tls:
    enabled: bool
    certfile: str = ""
    keyfile: str = ""
    ca_file: str = ""

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def make_tls(enabled: bool, directory: Path) -> Tls:
    if not enabled:
        return Tls(False)
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return Tls(True, str(paths["cert"]), str(paths["key"]), str(paths["ca"]))


def http_request(
    port: int, tls: Tls, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if tls.enabled:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=tls.client_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(procs: Processes, name: str, proc: subprocess.Popen[bytes], port: int, tls: Tls, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} while starting: {procs.log_tail(name)}")
        try:
            http_request(port, tls, "GET", path)
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    raise BenchError(f"{name} did not answer on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s")


def wait_tcp(procs: Processes, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} while starting: {procs.log_tail(name)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s")


def server_toml(settings: Settings, port: int, var_dir: Path, tls: Tls, acquirer_port: int | None) -> str:
    """One TOML for host and baselines alike (baselines ignore the acquirer and OAuth sections)."""
    lines = [
        "[server]",
        f'bind = "127.0.0.1:{port}"',
        f"workers = {settings.workers}",
        f"tls = {'true' if tls.enabled else 'false'}",
        f"certfile = {json.dumps(tls.certfile)}",
        f"keyfile = {json.dumps(tls.keyfile)}",
        f"var_dir = {json.dumps(str(var_dir))}",
        # Hypercorn's default closes a keep-alive connection after 1,000 requests: the bench must not
        # measure reconnects. The host's own default is raised too; stated here so no default can change it.
        "keep_alive_max_requests = 1000000",
        "graceful_timeout = 2.0",
        f"transaction_path = {json.dumps(settings.transaction_path)}",
        "",
        "[oauth]",
        f'issuer = "https://127.0.0.1:{port}"',
        "",
        "[acquirer]",
        'mode = "tcp"',
        'host = "127.0.0.1"',
        f"port = {acquirer_port or 9}",
        'length_prefix = "2B"',
        "",
        "[logging]",
        f'level = "{settings.log_level}"',
        'format = "json"',
        "",
        "[metrics]",
        'bind = "127.0.0.1:0"',
        "",
    ]
    return "\n".join(lines)


def simulator_toml(latency_ms: float) -> str:
    return "\n".join(
        [
            "[simulator]",
            'length_prefix = "2B"',
            'admin_bind = ""',
            'default_response = "00"',
            "",
            "[simulator.latency]",
            'distribution = "fixed"',
            f"fixed_ms = {float(latency_ms)}",
            "",
        ]
    )


def payment_host_setup(directory: Path, sim_toml: str) -> tuple[str, list[str], str]:
    """For the http scenario: a trustme CA and certificate, a client secret file; the simulator's [simulator.http]
    section and --http-bind, and the host's [acquirer.http] section."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    secret = directory / "client-secret"
    secret.write_text("bench-payment-host-secret\n")
    http_port = free_port()
    sim = sim_toml + "\n".join(
        [
            "",
            "[simulator.http]",
            f"certfile = {json.dumps(str(paths['cert']))}",
            f"keyfile = {json.dumps(str(paths['key']))}",
            "token_lifetime = 3600",
            "[[simulator.http.clients]]",
            'client_id = "cloudlayer-bench"',
            f"secret_file = {json.dumps(str(secret))}",
            "",
        ]
    )
    base = f"https://127.0.0.1:{http_port}"
    host = "\n".join(
        [
            "",
            "[acquirer.http]",
            f'base_url = "{base}"',
            f'token_url = "{base}/oauth/token"',
            'client_id = "cloudlayer-bench"',
            f"client_secret_file = {json.dumps(str(secret))}",
            f"tls_ca = {json.dumps(str(paths['ca']))}",
            "",
        ]
    )
    return sim, ["--http-bind", f"127.0.0.1:{http_port}"], host


# -- targets ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A started server: its port and the PIDs whose CPU (children included) counts as the server's."""

    name: str
    port: int
    pid: int


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

    def start_host(self, scenario: str, latency_ms: float) -> tuple[Target, Credentials, list[subprocess.Popen[bytes]]]:
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
                else toml
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
        workload = Workload("127.0.0.1", target.port, tuple(kinds), self.tls.enabled, self.tls.ca_file or None)
        wl_path = self.work / f"workload-{scenario}-{target.name}.json"
        workload.dump(wl_path)
        n = self.s.loadgen_procs
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
                    str(wl_path),
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
                    argv += ["--cpu-pid", str(target.pid)]
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
            proc = self.procs.start(f"micro-{name}", [PYTHON, str(script)])
            try:
                rc: int | None = proc.wait(timeout=self.s.micro_timeout)
            except subprocess.TimeoutExpired:
                rc = None
                self.problems.append(f"micro: {script.name} overran {self.s.micro_timeout:.0f} s")
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


# -- the run record -------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    out = {}
    for dist in (
        "cloudlayer",
        "hypercorn",
        "quart",
        "quart-trio",
        "trio",
        "h11",
        "msgspec",
        "joserfc",
        "lmdb",
        "hdrhistogram",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        out["git_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


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
