"""The `purge` scenario: does a retention purge of a million records move the p99 of concurrent traffic?

The host's own housekeeping does the purge (nothing in cloudlayer is called from here). Before the host starts,
its LMDB store is filled (bench/store_fill.py) with `--purge-records` COMPLETED records all answered within
0.2 s of each other; the host's `store.retention_days` is then chosen so that they pass retention at a moment
T a little after the host is ready, and `store.purge_interval` is 0.25 s so housekeeping notices within a
quarter of a second. On that one host, same rate (half its closed-loop saturation), same connections:

1. closed loop (saturation), 2. open loop *without* a purge (nothing has expired yet),
3. open loop *with* the purge: its window starts at T, while housekeeping deletes the records (1,000 per write
   transaction, queued with the traffic's claims and completions to the same writer).

Then the host's log says how many records were purged and (polled) when the purge ended, so the summary states
whether the purge lasted the whole window. The conventional host has no retention purge: not measured here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from processes import BenchError
from scenarios import DESCRIPTIONS, scenario_kinds
from store_fill import fill, map_size_mb, open_store

if TYPE_CHECKING:
    from run import Bench

TARGET_P99_RATIO = 2.0
SPREAD_S = 0.2  # the filled records' completion times span this much
PURGE_INTERVAL = 0.25
HOST_START_ALLOWANCE = 10.0  # seconds for `cloudlayer serve` to come up before the first measurement
PURGE_WAIT_MAX = 180.0  # how long to wait, after the window, for the host to log the end of the purge


def _purged(log_text: str) -> tuple[int, float]:
    """Records the host's housekeeping logged as purged, and the time of its last such line."""
    n, last = 0, 0.0
    for line in log_text.splitlines():
        if '"store_purged"' in line:
            try:
                entry = json.loads(line[line.index("{") :])
                n += int(entry.get("records", 0))
                last = dt.datetime.fromisoformat(entry["timestamp"]).timestamp()
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
    return n, last


def run_purge(bench: Bench) -> dict[str, Any]:
    s = bench.s
    result: dict[str, Any] = {"description": DESCRIPTIONS["purge"], "targets": {}, "own_checks": True, "checks": {}}
    if "host" not in s.targets:
        return result
    var = bench.work / "var-host-purge"
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"  purge: filling the host's store with {s.purge_records:,} records", flush=True)
    store = open_store(var / "store", s.purge_records)
    answered = time.time() - 60.0
    try:
        filled = fill(
            store,
            s.purge_records,
            client_id="bench-purge",
            answered_at=lambda i: answered + i * SPREAD_S / s.purge_records,
            budget_s=600.0,
        )
    finally:
        store.close()
    print(f"    {filled.records:,} records in {filled.seconds:.0f} s", flush=True)
    measurement = s.warmup + s.duration + 2.5  # one loadgen run: start, warm-up, window, drain
    expire_at = time.time() + HOST_START_ALLOWANCE + 2 * measurement
    retention_days = (expire_at - (answered + SPREAD_S)) / 86_400
    extra = (
        f"\n[store]\nmap_size_mb = {map_size_mb(s.purge_records + 100_000)}\n"
        f"retention_days = {retention_days!r}\npurge_interval = {PURGE_INTERVAL}\n"
    )
    try:
        target, creds, started = bench.start_host("purge", 0.0, extra_toml=extra)
    except BenchError as e:
        bench.problems.append(f"purge: host unavailable: {e}")
        result["targets"]["host"] = {"error": str(e)[:500]}
        return result
    kinds = scenario_kinds("purge", s, creds)
    try:
        print("  purge / host: closed loop", flush=True)
        closed = bench.loadgen(target, "purge", kinds, s.connections, 0.0, "c")
        rate = 0.5 * closed["throughput"]
        print(f"  purge / host: open loop at {rate:,.0f} req/s without a purge", flush=True)
        without = bench.loadgen(target, "purge", kinds, s.open_connections, rate, "o0")
        wait = expire_at - s.warmup - 0.5 - time.time()
        if wait < 0:
            bench.problems.append(f"purge: the records expired {-wait:.1f} s before the window could start")
        time.sleep(max(0.0, wait))
        slack = wait
        print(f"  purge / host: open loop at {rate:,.0f} req/s while {filled.records:,} records are purged", flush=True)
        with_purge = bench.loadgen(target, "purge", kinds, s.open_connections, rate, "o1")
        window_end = with_purge["window_start_unix"] + with_purge["window_s"]
        deadline, purged, purge_end = time.time() + PURGE_WAIT_MAX, 0, 0.0
        while time.time() < deadline:
            purged, purge_end = _purged(bench.procs.log_tail("host-purge", 10**8))
            if purged >= filled.records:
                break
            time.sleep(0.2)
    finally:
        for p in reversed(started):
            bench.procs.stop(p)
    without["fraction"], with_purge["fraction"] = 0.5, 0.5
    without["purge"], with_purge["purge"] = False, True
    p99_without, p99_with = without["latency_ms"].get("p99"), with_purge["latency_ms"].get("p99")
    ratio = p99_with / p99_without if p99_with and p99_without else None
    result["targets"]["host"] = {"closed": closed, "open": [without, with_purge]}
    result["purge"] = {
        "records_filled": filled.records,
        "records_purged": purged,
        "fill_s": round(filled.seconds, 1),
        "expired_at_unix": expire_at,
        "window_start_unix": with_purge["window_start_unix"],
        "slack_s": round(slack, 1),  # time to spare before the expiry (negative: the purge began too early)
        # From expiry to the host's last store_purged log line (housekeeping notices within PURGE_INTERVAL).
        "purge_s": round(purge_end - expire_at, 1) if purged else None,
        "purge_outlasted_window": purged < filled.records or purge_end >= window_end,
    }
    if ratio is not None:
        result["checks"]["purge_p99_with_over_without"] = {
            "value": ratio,
            "target": f"<= {TARGET_P99_RATIO}",
            "met": ratio <= TARGET_P99_RATIO,
        }
    if purged < filled.records:
        bench.problems.append(f"purge: the host logged {purged:,} of {filled.records:,} records purged")
    return result
