"""The bench harness, run for a second against the two baselines: it starts them, measures, reports and stops
everything it started. Checks behaviour (files, consistent counts, no process left), never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


# -- issue 13's target scenarios (behaviour only: figures are bench/run.py's, never asserted here) --------------


def _bench_modules() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import loadgen_stats
        import loadgen_workload
        import store_fill
        import targets
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return loadgen_stats, loadgen_workload, store_fill, targets


def test_replay_only_workload_seeds_then_replays_answered_ids_only() -> None:
    _, wl, _, _ = _bench_modules()
    kind = wl.RequestKind.from_json({"name": "purchase", "path": "/t", "body": '{"id":"{ID}"}', "replay_share": 1.0})
    factory = wl.RequestFactory(wl.Workload("127.0.0.1", 1, (kind,)), id_prefix="p-", seed=3)
    seed = [factory.next_request() for _ in range(wl.REPLAY_SEED)]
    assert {label for label, _, _ in seed} == {"purchase"}
    # Until REPLAY_SEED first attempts are answered, requests stay fresh (a replay needs an answered id).
    for _, _, token in seed[:-1]:
        factory.succeeded(token)
    assert factory.next_request()[0] == "purchase"
    factory.succeeded(seed[-1][2])
    later = [factory.next_request() for _ in range(100)]
    assert {label for label, _, _ in later} == {"purchase:replay"}
    assert {data for _, data, _ in later} <= {data for _, data, _ in seed}


def test_server_timing_values_are_collected_per_metric() -> None:
    stats_mod, _, _, _ = _bench_modules()
    stats = stats_mod.Stats()
    stats.record_server_timing(b"http/1.1 200\r\nserver-timing: app;dur=0.42, acquirer;dur=1.50\r\ncontent-length: 2")
    stats.record_server_timing(b"http/1.1 200\r\nserver-timing: app;desc=x;dur=0.60\r\ncontent-length: 2")
    stats.record_server_timing(b"http/1.1 200\r\ncontent-length: 2")  # a baseline: no header, nothing recorded
    stats.record_server_timing(b"http/1.1 200\r\nserver-timing: app;dur=oops, miss\r\ncontent-length: 2")
    assert sorted(stats.server_timing) == ["acquirer", "app"]
    app = stats.server_timing["app"]
    assert app.get_total_count() == 2
    assert 415 <= app.get_min_value() <= 425 and 595 <= app.get_max_value() <= 605  # microseconds
    assert stats.server_timing["acquirer"].get_total_count() == 1


def test_store_fill_writes_what_claim_and_complete_would_and_purge_removes_it(tmp_path: Path) -> None:
    """The fast fill is only worth its figures if the real store reads, refuses and purges its records like its
    own: records, the RRN, terminal+STAN and card indexes, and the completion time index the purge walks."""
    import trio

    from cloudlayer.store.types import ClaimOutcome, State

    _, _, store_fill, _ = _bench_modules()
    n, at = 2500, time.time() - 86_400.0  # inside the 90-day retention: the store's own housekeeping keeps them
    store = store_fill.open_store(tmp_path / "store", n)
    try:
        filled = store_fill.fill(store, n, client_id="c", answered_at=lambda i: at + i, budget_s=60)
        assert (filled.records, filled.stopped_by_budget) == (n, False)

        async def check() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                rec = store_fill.record_at(1234, n, "c", at + 1234)
                got = await store.get("c", rec.transaction_id)
                assert got is not None and got.state is State.COMPLETED and got.response_body == rec.response_body
                assert [r.transaction_id for r in await store.find_by_rrn(rec.rrn)] == [rec.transaction_id]
                by_stan = await store.find_by_terminal_stan(rec.terminal_id, rec.stan)
                assert [r.transaction_id for r in by_stan] == [rec.transaction_id]
                # The same card transaction under another transactionId: refused through the filled by_card index.
                twin = store_fill.record_at(1234, n, "c", at)
                twin.transaction_id, twin.state, twin.response_body, twin.completed_at = (
                    "other",
                    State.PENDING,
                    b"",
                    0.0,
                )
                twin.response_status, twin.approved, twin.outcome, twin.authorisation_code = 0, False, "", None
                twin.response_code, twin.created_at, twin.events = "", 0.0, []
                assert (await store.claim(twin)).outcome is ClaimOutcome.DUPLICATE_CARD
                assert await store.purge(at + 1000) == 1000  # answered before at + 1000: records 0..999
                assert await store.get("c", store_fill.record_at(999, n, "c", at).transaction_id) is None
                assert await store.get("c", store_fill.record_at(1000, n, "c", at).transaction_id) is not None
                assert await store.purge(at + n) == n - 1000
                assert await store.find_by_rrn(rec.rrn) == []
                nursery.cancel_scope.cancel()

        trio.run(check)
    finally:
        store.close()
    # A budget already spent: nothing written, and the result says so.
    other = store_fill.open_store(tmp_path / "budget", n)
    try:
        spent = store_fill.fill(other, n, client_id="c", answered_at=lambda i: at, budget_s=-1)
        assert (spent.records, spent.requested, spent.stopped_by_budget) == (0, n, True)
    finally:
        other.close()


def test_bench_store_scale_reports_a_verdict_and_its_real_size(tmp_path: Path) -> None:
    args = ["--records", "3000", "--ops", "40", "--rounds", "1", "--claimers", "4", "--dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_store_scale.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "store_scale" and result["records"] == result["records_requested"] == 3000
    assert result["met"] == (
        max(result["time_per_pair_large_over_empty"], result["cpu_per_pair_large_over_empty"]) <= 1.3
    )
    assert result["empty"]["pairs_per_s"] > 0 and result["large"]["cpu_us_per_pair"] > 0
    assert list(tmp_path.iterdir()) == []  # the stores are removed

    _, _, _, targets = _bench_modules()
    run = {"scenarios": {"micro": {"benches": {"bench_store_scale": {"json": [result]}}}}}
    [row] = [r for r in targets.evaluate(run) if r["target"].startswith("store of 10M")]
    assert row["met"] == result["met"] and "FEWER than 10,000,000" in row["note"]


def test_bench_replay_scenario_measures_replays_beside_unique(tmp_path: Path) -> None:
    """Host and conventional host: a unique closed loop, then replays only on the same server."""
    out = tmp_path / "results"
    proc = _run_bench(out, "--targets", "host,conventional", "--no-sweep", scenario="replay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["problems"] == []
    for name in ("host", "conventional"):
        t = run["scenarios"]["replay"]["targets"][name]
        _check_measurement(t["unique"])
        assert set(t["unique"]["status"]) == {"purchase"}
        assert set(t["closed"]["status"]) == {"purchase:replay"}  # the fresh seed stayed in the warm-up
        assert set(t["closed"]["status"]["purchase:replay"]) == {"200"} and t["fresh_in_replay_window"] == 0
        assert t["replay_cpu_over_unique"] == t["closed"]["cpu_s_per_1000"] / t["unique"]["cpu_s_per_1000"]
    [row] = [r for r in run["targets"] if r["target"].startswith("replay")]
    assert row["value"] == run["scenarios"]["replay"]["targets"]["host"]["replay_cpu_over_unique"]
    assert row["met"] == (row["value"] <= 0.25)
    assert "Issue 13 targets" in (out / "summary.md").read_text()
    assert _leftovers(run) == []


def test_bench_workers_and_purge_scenarios(tmp_path: Path) -> None:
    """workers: the host with 1 then 2 workers. purge: the host's own housekeeping purges pre-filled records that
    expire in the second of two open-loop windows; all of them, and both windows measured."""
    out = tmp_path / "results"
    proc = _run_bench(out, "--targets", "host", "--scenario", "purge", "--purge-records", "3000", scenario="workers")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["problems"] == []
    host = run["scenarios"]["workers"]["targets"]["host"]
    for workers in ("1", "2"):
        _check_measurement(host["by_workers"][workers])
    assert host["cpu_2_over_1"] == host["by_workers"]["2"]["cpu_s_per_1000"] / host["by_workers"]["1"]["cpu_s_per_1000"]
    purge = run["scenarios"]["purge"]
    assert purge["purge"]["records_filled"] == purge["purge"]["records_purged"] == 3000
    without, with_purge = purge["targets"]["host"]["open"]
    for m in (without, with_purge):
        _check_measurement(m)
    assert with_purge["window_start_unix"] > without["window_start_unix"] + without["window_s"]
    check = purge["checks"]["purge_p99_with_over_without"]
    assert check["value"] == with_purge["latency_ms"]["p99"] / without["latency_ms"]["p99"]
    # Every server (2 workers scenarios + 1 purge host) had its simulator; all gone.
    assert _leftovers(run) == []
