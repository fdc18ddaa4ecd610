"""What the bench sends: the request bodies, the scenarios' request kinds and the run's settings (bench/run.py)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from loadgen_workload import TAP_PLACEHOLDER, RequestKind

TARGETS = ("host", "quart-trio", "bare-asgi", "conventional")
SCENARIOS = ("unique", "http", "retry", "token", "latency", "mix", "pg", "replay", "workers", "purge", "micro")


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
    if scenario in ("unique", "latency", "http", "pg", "workers", "purge"):
        return [purchase]
    if scenario == "replay":  # after a seed of fresh ones, only resubmissions of answered transactions
        return [_with(purchase, replay_share=1.0)]
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
    "pg": "Unique purchases on the PostgreSQL store beside LMDB: the host on LMDB, one host on PostgreSQL, two "
    "hosts on one PostgreSQL (load split evenly); the server CPU of PostgreSQL targets includes the database's.",
    "replay": "Replays only: resubmissions of already answered transactions (after a seed of 32 fresh ones, in the "
    "warm-up), beside unique purchases on the same server at the same moment; host and conventional.",
    "workers": "Unique purchases with 1 and then 2 worker processes: CPU per request as the workers grow; host and "
    "conventional.",
    "purge": "A retention purge under load: the host's store pre-filled with records that expire during the second "
    "of two open-loop windows at half saturation (same host, same rate): p99 with the purge and without.",
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
    store_records: int = 10_000_000  # bench_store_scale: records in the large store
    purge_records: int = 1_000_000  # purge scenario: expired records the host purges under load

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description="Load and micro benchmarks, the baselines side by side."
    )
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
    p.add_argument("--store-records", type=int, help="bench_store_scale's large store (default 10M; quick 200k)")
    p.add_argument("--purge-records", type=int, help="purge scenario's expired records (default 1M; quick 50k)")
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
        s.sweep = [f for f in (0.25, 0.5, 1.0) if sweep]
        s.store_records, s.purge_records = 200_000, 50_000
    s.store_records = args.store_records or s.store_records
    s.purge_records = args.purge_records or s.purge_records
    if s.workers < 1 or s.connections < 1 or s.loadgen_procs < 1 or s.duration <= 0 or s.warmup < 0:
        p.error("workers, connections, loadgen-procs >= 1; duration > 0; warmup >= 0")
    if s.loadgen_procs > min(s.connections, s.open_connections):
        p.error("--loadgen-procs cannot exceed the connection count")
    return s, args
