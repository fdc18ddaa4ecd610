"""The bench harness, run for a second against the two baselines: it starts them, measures, reports and stops
everything it started. Checks behaviour (files, consistent counts, no process left), never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"


def _run_bench(out_dir: Path, *extra: str, scenario: str = "unique") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--scenario",
            scenario,
            "--targets",
            "bare-asgi,quart-trio",
            "--duration",
            "0.6",
            "--warmup",
            "0.2",
            "--connections",
            "4",
            "--open-connections",
            "8",
            "--sweep",
            "0.5",
            "--out-dir",
            str(out_dir),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _leftovers(run: dict[str, Any]) -> list[str]:
    """Live processes in any process group the harness started (each child leads its own), or naming its
    work dir: servers, their spawned workers, simulators, load generators."""
    groups = set(run["pids_started"])
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.info["cmdline"] or [])
            if os.getpgid(p.pid) in groups or run["work_dir"] in cmdline:
                found.append(f"{p.pid}: {cmdline}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def _check_measurement(m: dict[str, Any]) -> None:
    assert m["measured"] > 0
    assert m["errors_total"] == 0, m["errors"]
    assert m["reconnects"] == 0  # keep-alive held for the whole run
    # Every measured request has exactly one status, and its latency is in the histogram.
    statuses = sum(n for codes in m["status"].values() for n in codes.values())
    assert statuses == m["measured"]
    assert set(m["status"]["purchase"]) == {"200"}
    h = HdrHistogram.decode(m["histogram_all"])
    assert h.get_total_count() == m["measured"]
    lat = m["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert m["throughput"] == m["completed_in_window"] / m["window_s"]
    assert m["cpu_s_per_1000"] is not None and m["cpu_s_per_1000"] > 0


def test_bench_runs_measures_reports_and_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = _run_bench(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert {p.name for p in out.iterdir()} >= {"run.json", "summary.md", "unique.png", "logs"}
    assert (out / "unique.png").read_bytes().startswith(b"\x89PNG")
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["workers"] == 1 and run["settings"]["tls"] is False
    assert run["versions"]["hypercorn"] != "absent" and run["machine"]["cpus"]
    assert run["problems"] == []

    targets = run["scenarios"]["unique"]["targets"]
    assert set(targets) == {"bare-asgi", "quart-trio"}
    for name, t in targets.items():
        _check_measurement(t["closed"])
        assert t["closed"]["mode"] == "closed" and t["closed"]["connections"] == 4
        [half] = t["open"]
        assert half["mode"] == "open" and half["fraction"] == 0.5
        assert half["rate_target"] == 0.5 * t["closed"]["throughput"]
        _check_measurement(half)
        assert name in (out / "summary.md").read_text()

    # Everything started (2 servers, their spawned workers, 4 load generator runs) is gone, and so is the
    # temporary work dir.
    assert len(run["pids_started"]) == 6
    assert _leftovers(run) == []
    assert not Path(run["work_dir"]).exists()


def test_bench_over_tls(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = _run_bench(out, "--tls", "--no-sweep", "--targets", "bare-asgi")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["tls"] is True
    closed = run["scenarios"]["unique"]["targets"]["bare-asgi"]["closed"]
    _check_measurement(closed)
    assert run["scenarios"]["unique"]["targets"]["bare-asgi"]["open"] == []
    assert _leftovers(run) == []


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--targets", "nginx", "--out-dir", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--targets" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_workload_replays_only_answered_ids_byte_for_byte() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from loadgen_workload import RequestFactory, RequestKind, Workload
    finally:
        sys.path.remove(str(ROOT / "bench"))
    kind = RequestKind.from_json(
        {"name": "purchase", "path": "/t", "headers": [["x-a", "1"]], "body": '{"id":"{ID}"}', "replay_share": 0.5}
    )
    factory = RequestFactory(Workload("127.0.0.1", 1, (kind,)), id_prefix="p-", seed=7)
    fresh = [factory.next_request() for _ in range(20)]
    # Nothing answered yet: nothing to replay, so every request is fresh and unique.
    assert {label for label, _, _ in fresh} == {"purchase"}
    assert len({data for _, data, _ in fresh}) == 20
    head, _, body = fresh[0][1].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /t HTTP/1.1\r\nhost: 127.0.0.1:1\r\nx-a: 1\r\n")
    assert f"content-length: {len(body)}".encode() in head
    answered = {data for _, data, _ in fresh[:5]}
    for _, _, token in fresh[:5]:
        assert token is not None
        factory.succeeded(token)
    later = [factory.next_request() for _ in range(200)]
    replays = [data for label, data, _ in later if label == "purchase:replay"]
    assert 50 < len(replays) < 150  # replay_share 0.5 of 200, seeded
    assert set(replays) <= answered  # byte-identical resubmissions of answered requests only
    assert all(token is None for label, _, token in later if label == "purchase:replay")


def test_bench_drives_the_conventional_host(tmp_path: Path) -> None:
    """The conventional baseline as a target (~5 s): its own simulator and client, a token from its endpoint,
    fresh purchases and replays of answered ones (the retry storm), then everything it started is gone."""
    out = tmp_path / "results"
    proc = _run_bench(out, "--targets", "conventional", "--no-sweep", scenario="retry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["problems"] == []
    target = run["scenarios"]["retry"]["targets"]["conventional"]
    assert target["open"] == []
    closed = target["closed"]
    _check_measurement(closed)
    assert set(closed["status"]) == {"purchase", "purchase:replay"}
    assert set(closed["status"]["purchase:replay"]) == {"200"}
    assert len(run["pids_started"]) == 3  # a simulator, the server, one load generator run
    assert _leftovers(run) == []
    assert "conventional" in (out / "summary.md").read_text()


def test_bench_pg_scenario_measures_lmdb_one_and_two_pg_hosts(tmp_path: Path) -> None:
    """The pg scenario, tiny: the LMDB host, one host and two hosts on a throw-away PostgreSQL (load split over
    both), every purchase answered 200, the ratios and the CPU split reported, and nothing left running (hosts,
    their workers, simulators, load generators, PostgreSQL). Behaviour only: the figures are not judged."""
    out = tmp_path / "results"
    proc = _run_bench(out, "--targets", "host", "--no-sweep", scenario="pg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["problems"] == []
    sc = run["scenarios"]["pg"]
    assert set(sc["targets"]) == {"host", "host-pg", "two-hosts-pg"}
    for name, t in sc["targets"].items():
        _check_measurement(t["closed"])
        assert t["open"] == []
        if name != "host":
            split = t["cpu_split"]
            assert split["hosts_s"] > 0 and split["database_s"] > 0
    assert set(sc["ratios"]) == {"host-pg", "two-hosts-pg"}
    assert sc["ratios"]["host-pg"]["throughput"] > 0
    assert "pg_throughput_vs_lmdb" in sc["checks"]
    summary = (out / "summary.md").read_text()
    assert "host-pg / host (LMDB)" in summary and "two-hosts-pg" in summary
    # LMDB's simulator and host, then per PostgreSQL target a simulator and its hosts (1, then 2), and one load
    # generator per host for each closed loop (1, 1, 2).
    assert len(run["pids_started"]) == 2 + 2 + 3 + 1 + 1 + 2
    assert _leftovers(run) == []
    # PostgreSQL was stopped and its directory removed: no process names it any more.
    pg_dir = sc["postgres_dir"]
    assert not Path(pg_dir).exists()
    assert _leftovers({"pids_started": [], "work_dir": pg_dir}) == []
