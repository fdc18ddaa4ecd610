"""Issue 13's targets, each read from the run's own figures (baselines measured in the same run), with a verdict.

Reported by `make bench` in summary.md and run.json ("targets"), never asserted: a target not met is a finding,
not a failure. Each row also gives the conventional host's figure where the comparison means something; where
it does not (it has no retention purge; its SQLite store is not the store under test) the row says so.
"""

from __future__ import annotations

from typing import Any

UNIQUE_THROUGHPUT = 0.70  # of Quart-Trio's fixed route, i.e. host CPU per request <= 1 / 0.70 = 1.4x
UNIQUE_CPU = 1.4
TOKEN_THROUGHPUT = 0.85
REPLAY_CPU = 0.25  # of a fresh transaction's host CPU
LOW_LOAD_FRACTION = 0.25  # of saturation, open loop
LOW_LOAD_P50_DELTA_MS = 1.0  # our p50 minus Quart-Trio's
LOW_LOAD_P99_OVER_P50 = 3.0
SERVER_TIMING_APP_P50_MS = 1.0
STORE_SCALE = 1.3  # 10M records vs an empty store
STORE_SCALE_RECORDS = 10_000_000
PURGE_P99 = 2.0  # p99 with a purge over without
WORKERS_CPU = 1.1  # CPU per request, 2 workers over 1


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, dict):
            d = d.get(p)
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def _row(
    number: str, target: str, value: float | None, want: str, met: bool | None, unit: str = "", **more: str
) -> dict[str, Any]:
    return {"number": number, "target": target, "value": value, "unit": unit, "want": want, "met": met, **more}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_fraction(target: dict[str, Any] | None, fraction: float) -> dict[str, Any] | None:
    for m in (target or {}).get("open", []):
        if abs(m.get("fraction", 0.0) - fraction) < 1e-9:
            return m
    return None


def _fmt(v: float | None, unit: str = "") -> str:
    return "not measured" if v is None else f"{v:,.2f}{unit}"


def evaluate(run: dict[str, Any]) -> list[dict[str, Any]]:
    sc = run.get("scenarios", {})
    rows: list[dict[str, Any]] = []

    def vs_conv(scenario: str, key: str) -> str:
        return f"host / conventional {_fmt(_get(sc, scenario, 'ratios', 'conventional', key))}"

    # 1. Unique purchases against the Quart-Trio fixed route.
    q = _get(sc, "unique", "ratios", "quart-trio") or {}
    thr, cpu = q.get("throughput"), q.get("cpu_per_request")
    rows.append(
        _row(
            "1",
            "unique: throughput / Quart-Trio's",
            thr,
            f">= {UNIQUE_THROUGHPUT}",
            _ge(thr, UNIQUE_THROUGHPUT),
            conventional=vs_conv("unique", "throughput"),
        )
    )
    rows.append(
        _row(
            "1",
            "unique: host CPU per request / Quart-Trio's",
            cpu,
            f"<= {UNIQUE_CPU}",
            _le(cpu, UNIQUE_CPU),
            conventional=vs_conv("unique", "cpu_per_request"),
        )
    )
    # 2. The token endpoint.
    t = _get(sc, "token", "ratios", "quart-trio", "throughput")
    rows.append(
        _row(
            "2",
            "token: throughput / Quart-Trio's",
            t,
            f">= {TOKEN_THROUGHPUT}",
            _ge(t, TOKEN_THROUGHPUT),
            conventional=vs_conv("token", "throughput"),
        )
    )
    # 3. A replay against a fresh transaction, same server, same run.
    r = _get(sc, "replay", "targets", "host", "replay_cpu_over_unique")
    conv_r = _get(sc, "replay", "targets", "conventional", "replay_cpu_over_unique")
    rows.append(
        _row(
            "3",
            "replay: host CPU per replay / per fresh transaction",
            r,
            f"<= {REPLAY_CPU}",
            _le(r, REPLAY_CPU),
            conventional=f"its own replay / fresh {_fmt(conv_r)}",
        )
    )
    # 4. Latency at low load: open loop at 25% of each target's own saturation.
    targets = _get(sc, "unique", "targets") or {}
    host_low = _at_fraction(targets.get("host"), LOW_LOAD_FRACTION)
    quart_low = _at_fraction(targets.get("quart-trio"), LOW_LOAD_FRACTION)
    conv_low = _at_fraction(targets.get("conventional"), LOW_LOAD_FRACTION)
    h50, h99 = _get(host_low, "latency_ms", "p50"), _get(host_low, "latency_ms", "p99")
    q50, c50 = _get(quart_low, "latency_ms", "p50"), _get(conv_low, "latency_ms", "p50")
    delta = h50 - q50 if h50 is not None and q50 is not None else None
    conv_delta = (
        f"host p50 - conventional p50 {_fmt(h50 - c50 if h50 is not None and c50 is not None else None, ' ms')}"
    )
    rows.append(
        _row(
            "4",
            "25% load: host p50 - Quart-Trio p50",
            delta,
            f"<= {LOW_LOAD_P50_DELTA_MS} ms",
            _le(delta, LOW_LOAD_P50_DELTA_MS),
            unit=" ms",
            conventional=conv_delta,
        )
    )
    p99_50 = _ratio(h99, h50)
    conv_tail = _ratio(_get(conv_low, "latency_ms", "p99"), c50)
    rows.append(
        _row(
            "4",
            "25% load: host p99 / host p50",
            p99_50,
            f"<= {LOW_LOAD_P99_OVER_P50}",
            _le(p99_50, LOW_LOAD_P99_OVER_P50),
            conventional=f"its own p99 / p50 {_fmt(conv_tail)}",
        )
    )
    app = _get(host_low, "server_timing_ms", "app", "p50")
    rows.append(
        _row(
            "4",
            "25% load: Server-Timing app p50",
            app,
            f"< {SERVER_TIMING_APP_P50_MS} ms",
            None if app is None else app < SERVER_TIMING_APP_P50_MS,
            unit=" ms",
            conventional="n/a (sends no Server-Timing)",
        )
    )
    # 5. Cost as work grows.
    rows.append(_store_scale(sc))
    purge = _get(sc, "purge", "checks", "purge_p99_with_over_without", "value")
    outlasted = _get(sc, "purge", "purge", "purge_outlasted_window")
    purged = _get(sc, "purge", "purge", "records_purged")
    note = (
        ""
        if purged is None
        else f"{purged:,} records purged"
        + (", the purge lasted the whole window" if outlasted else ", the purge ENDED INSIDE the window")
    )
    rows.append(
        _row(
            "5",
            "purge under load: p99 with / without",
            purge,
            f"<= {PURGE_P99}",
            _le(purge, PURGE_P99),
            conventional="n/a (no retention purge)",
            note=note,
        )
    )
    w = _get(sc, "workers", "targets", "host", "cpu_2_over_1")
    conv_w = _get(sc, "workers", "targets", "conventional", "cpu_2_over_1")
    rows.append(
        _row(
            "5",
            "2 workers: host CPU per request / 1 worker's",
            w,
            f"<= {WORKERS_CPU}",
            _le(w, WORKERS_CPU),
            conventional=f"its own 2 / 1 workers {_fmt(conv_w)}",
        )
    )
    return rows


def _store_scale(sc: dict[str, Any]) -> dict[str, Any]:
    found = [
        j for j in _get(sc, "micro", "benches", "bench_store_scale", "json") or [] if j.get("bench") == "store_scale"
    ]
    conventional = "n/a (its SQLite store is not the store under test)"
    if not found:
        return _row(
            "5",
            "store of 10M records: claim + complete / empty store's",
            None,
            f"<= {STORE_SCALE}",
            None,
            conventional=conventional,
        )
    s = found[-1]
    worst = max(s["time_per_pair_large_over_empty"], s["cpu_per_pair_large_over_empty"])
    t, c = s["time_per_pair_large_over_empty"], s["cpu_per_pair_large_over_empty"]
    note = f"{s['records']:,} records (time {t:.2f}x, CPU {c:.2f}x)"
    if s["records"] < STORE_SCALE_RECORDS:
        note += f": FEWER than {STORE_SCALE_RECORDS:,} (--store-records, --quick or the build budget)"
    return _row(
        "5",
        "store of 10M records: claim + complete / empty store's (worse of time, CPU)",
        worst,
        f"<= {STORE_SCALE}",
        worst <= STORE_SCALE,
        conventional=conventional,
        note=note,
    )


def _ge(v: float | None, bound: float) -> bool | None:
    return None if v is None else v >= bound


def _le(v: float | None, bound: float) -> bool | None:
    return None if v is None else v <= bound


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Issue 13 targets",
        "",
        "Each figure from this run, baselines measured in the same run (reported, never asserted).",
        "",
        "| # | target | figure | want | verdict | conventional host | note |",
        "|---|---|---:|---|---|---|---|",
    ]
    for r in rows:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
        lines.append(
            f"| {r['number']} | {r['target']} | {_fmt(r['value'], r['unit'])} | {r['want']} | {verdict} | "
            f"{r.get('conventional', '')} | {r.get('note', '')} |"
        )
    return [*lines, ""]


def scenario_notes(sc: dict[str, Any]) -> list[str]:
    """The extra figures of the replay, workers and purge scenarios, for their summary.md section."""
    lines: list[str] = []
    for name, t in sc.get("targets", {}).items():
        if t.get("unique"):
            u, r = t["unique"], t["closed"]
            lines.append(
                f"\n{name}: unique {u['throughput']:,.0f} req/s at {_fmt(u['cpu_s_per_1000'])} CPU s/1000, then "
                f"replays only {r['throughput']:,.0f} req/s at {_fmt(r['cpu_s_per_1000'])} (same server): "
                f"replay / fresh CPU {_fmt(t.get('replay_cpu_over_unique'))}; fresh requests in the replay window: "
                f"{t.get('fresh_in_replay_window')}"
            )
        for workers, m in sorted(t.get("by_workers", {}).items()):
            if m.get("throughput"):
                lines.append(
                    f"\n{name} with {workers} worker(s): {m['throughput']:,.0f} req/s, "
                    f"{_fmt(m['cpu_s_per_1000'])} CPU s/1000 req"
                )
        if "cpu_2_over_1" in t:
            lines.append(f"\n{name}: CPU per request 2 workers / 1: {_fmt(t['cpu_2_over_1'])}")
    if sc.get("purge"):
        p = sc["purge"]
        lines.append(
            f"\nOpen loop rows: the first without a purge, the second while {p['records_filled']:,} expired records "
            f"were purged ({p['records_purged']:,} logged as purged, {p['purge_s']} s from expiry to the last "
            f"store_purged line; lasted the whole window: {p['purge_outlasted_window']})."
        )
    return lines
