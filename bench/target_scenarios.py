"""The scenarios issue 13's targets need beyond throughput (bench/run.py dispatches here):

- `replay`: on one server, a closed loop of unique purchases, then a closed loop of replays only (resubmissions
  of answered transactions): CPU per replay over CPU per fresh transaction, same server, same minute.
- `workers`: unique purchases on a server with 1 worker, then on one with 2: CPU per request as workers grow.
- `purge`: bench/scenario_purge.py.

Each runs the host and the conventional host (the ceilings do no work a replay or a second worker could save).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from processes import BenchError
from scenarios import DESCRIPTIONS, scenario_kinds

if TYPE_CHECKING:
    from run import Bench

TARGETS = ("host", "conventional")
REPLAY_WARMUP = 1.0  # seconds at least: REPLAY_SEED fresh requests answered before the replay window


def _start(bench: Bench, name: str, scenario: str) -> tuple[Any, Any, list[Any]]:
    if name == "host":
        return bench.start_host(scenario, 0.0)
    return bench.start_conventional(scenario, 0.0)


def _closed(bench: Bench, target: Any, scenario: str, kinds: list[Any], tag: str) -> dict[str, Any]:
    print(f"  {scenario} / {target.name} ({tag}): closed loop, {bench.s.connections} connections", flush=True)
    m = bench.loadgen(target, scenario, kinds, bench.s.connections, 0.0, tag)
    print(f"    {m['throughput']:,.0f} req/s, {m['cpu_s_per_1000'] or 0:.3f} CPU s/1000 req", flush=True)
    return m


def _cpu_ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    x, y = a.get("cpu_s_per_1000"), b.get("cpu_s_per_1000")
    return x / y if x is not None and y else None


def run_replay(bench: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {"description": DESCRIPTIONS["replay"], "targets": {}, "own_checks": True}
    for name in TARGETS:
        if name not in bench.s.targets:
            continue
        try:
            target, creds, started = _start(bench, name, "replay")
        except BenchError as e:
            bench.problems.append(f"replay: {name} unavailable: {e}")
            result["targets"][name] = {"error": str(e)[:500]}
            continue
        saved = bench.s
        try:
            unique = _closed(bench, target, "replay", scenario_kinds("unique", bench.s, creds), "u")
            # The seed of fresh requests must fit in the warm-up, whatever --warmup says.
            bench.s = dataclasses.replace(saved, warmup=max(saved.warmup, REPLAY_WARMUP))
            replay = _closed(bench, target, "replay", scenario_kinds("replay", bench.s, creds), "r")
        finally:
            bench.s = saved
            for p in reversed(started):
                bench.procs.stop(p)
        fresh_in_window = replay["latency_ms_by_label"].get("purchase", {}).get("count", 0)
        result["targets"][name] = {
            "closed": replay,
            "unique": unique,
            # The seed of fresh requests belongs in the warm-up; any in the window would mix the two costs.
            "fresh_in_replay_window": fresh_in_window,
            "replay_cpu_over_unique": _cpu_ratio(replay, unique),
        }
        if fresh_in_window:
            bench.problems.append(f"replay: {name}: {fresh_in_window} fresh requests in the replay window")
    return result


def run_workers(bench: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {"description": DESCRIPTIONS["workers"], "targets": {}, "own_checks": True}
    saved = bench.s
    try:
        for name in TARGETS:
            if name not in saved.targets:
                continue
            by: dict[str, Any] = {}
            for workers in (1, 2):
                bench.s = dataclasses.replace(saved, workers=workers)
                scenario = f"workers{workers}"
                try:
                    target, creds, started = _start(bench, name, scenario)
                except BenchError as e:
                    bench.problems.append(f"workers: {name} with {workers} unavailable: {e}")
                    by[str(workers)] = {"error": str(e)[:500]}
                    continue
                try:
                    by[str(workers)] = _closed(
                        bench, target, "workers", scenario_kinds("unique", bench.s, creds), scenario
                    )
                finally:
                    for p in reversed(started):
                        bench.procs.stop(p)
            one, two = by.get("1", {}), by.get("2", {})
            entry: dict[str, Any] = {"by_workers": by}
            if one.get("throughput") and two.get("throughput"):
                entry["cpu_2_over_1"] = _cpu_ratio(two, one)
                entry["throughput_2_over_1"] = two["throughput"] / one["throughput"]
                entry["closed"] = two  # the plot and the closed-loop table show the 2-worker figures
            else:
                entry["error"] = "not measured with both 1 and 2 workers"
            result["targets"][name] = entry
    finally:
        bench.s = saved
    return result
