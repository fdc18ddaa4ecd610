"""Paired before/after of two checkouts' hosts on this machine: both started once, side by side, then closed-loop
rounds alternate between them (the order flipped every round), so that the other users of a shared 2-core
machine hit both alike. Each host runs the `python/` of its checkout (via PYTHONPATH, native module included);
the simulator, token and load generator are bench/run.py's own.

    .venv/bin/python bench/ab.py --before /work/main --after /work/wt/branch [--scenario unique] [--rounds 8]

Prints each round and the medians; a change smaller than the spread of the rounds is not shown by them (say so).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import run as benchrun
from processes import BenchError, Processes, terminate_on_signals
from scenarios import scenario_kinds


def _checkout(path: str) -> Path:
    python = Path(path).resolve() / "python"
    if not (python / "cloudlayer" / "__init__.py").is_file():
        raise SystemExit(f"bench/ab.py: {path} is not a checkout (no python/cloudlayer)")
    if not any((python / "cloudlayer").glob("_native*.so")):
        raise SystemExit(f"bench/ab.py: {path}: no native module in python/cloudlayer (run maturin develop there)")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout whose host is 'before'")
    parser.add_argument("--after", required=True, help="checkout whose host is 'after'")
    parser.add_argument("--scenario", default="unique", choices=("unique", "retry", "token", "mix"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per round and host")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 1 <= args.duration <= 120:
        parser.error("--rounds 1..50, --duration 1..120 s")
    paths = {"before": _checkout(args.before), "after": _checkout(args.after)}
    settings, _ = benchrun.parse_args(
        ["--scenario", args.scenario, "--no-sweep", "--duration", str(args.duration), "--warmup", str(args.warmup)]
    )
    work = Path(tempfile.mkdtemp(prefix="cloudlayer-ab-"))
    procs = Processes(work / "logs")
    bench = benchrun.Bench(settings, work, work, procs)
    saved = os.environ.get("PYTHONPATH")
    try:
        with terminate_on_signals():
            hosts = {}
            for name, python in paths.items():
                os.environ["PYTHONPATH"] = str(python)  # inherited by this host's processes only
                target, creds, _ = bench.start_host(f"{args.scenario}-{name}", 0.0)
                hosts[name] = (target, scenario_kinds(args.scenario, settings, creds))
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in hosts}
            for r in range(args.rounds):
                order = list(hosts) if r % 2 == 0 else list(reversed(hosts))
                for name in order:
                    target, kinds = hosts[name]
                    m = bench.loadgen(target, args.scenario, kinds, settings.connections, 0.0, f"{name[0]}{r}")
                    rounds[name].append((m["throughput"], m["cpu_s_per_1000"]))
                    print(f"round {r} {name}: {m['throughput']:,.0f} req/s, {m['cpu_s_per_1000']:.3f} ms CPU/request")
            wins = sum(a[0] > b[0] for a, b in zip(rounds["after"], rounds["before"], strict=True))
            for name, xs in rounds.items():
                rps, cpu = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
                spread = max(x[0] for x in xs) - min(x[0] for x in xs)
                print(f"{name}: median {rps:,.0f} req/s (spread {spread:,.0f}), {cpu:.3f} ms CPU/request")
            print(f"after faster in {wins} of {args.rounds} rounds")
    except BenchError as e:
        print(f"bench/ab.py: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
