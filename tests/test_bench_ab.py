"""bench/ab.py, the paired before/after of two checkouts' hosts: refuses what is not a checkout or a sane round
count before starting anything, and runs for real on this checkout against itself, leaving no process behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
AB = ROOT / "bench" / "ab.py"


def _ab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AB), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_what_is_not_a_checkout_is_refused_by_name(tmp_path: Path) -> None:
    proc = _ab("--before", str(tmp_path), "--after", str(ROOT))
    assert proc.returncode != 0
    assert str(tmp_path) in proc.stderr and "not a checkout" in proc.stderr


def test_round_counts_out_of_range_are_refused() -> None:
    for bad in ("0", "51", "many"):
        proc = _ab("--before", str(ROOT), "--after", str(ROOT), "--rounds", bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "--rounds" in proc.stderr


def test_a_checkout_against_itself_runs_every_round_and_stops_everything() -> None:
    before = {p.pid for p in psutil.process_iter()}
    proc = _ab("--before", str(ROOT), "--after", str(ROOT), "--rounds", "2", "--duration", "1", "--warmup", "0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("round ") for line in lines) == 4  # 2 rounds x 2 hosts
    assert any(line.startswith("before: median ") for line in lines)
    assert any(line.startswith("after: median ") for line in lines)
    assert any(line.startswith("after faster in ") and line.endswith(" of 2 rounds") for line in lines)
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid not in before and "cloudlayer-ab-" in " ".join(p.info["cmdline"] or []):
            left.append(p.pid)
    assert not left, f"left running: {left}"
