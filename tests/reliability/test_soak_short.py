"""Soak, short form (~15 s at 40 tx/s over 2 workers): zero errors; RSS, fds and store growth within loose
bounds after warm-up; no card data in logs, var/ or /metrics afterwards. The long form: tests/reliability/run.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.scan import scan_bytes, scan_tree
from reliability.soak import run_soak, slope_per_min

pytestmark = pytest.mark.slow


async def test_soak_short(tmp_path: Path) -> None:
    figures = await run_soak(tmp_path, seconds=15.0, rate=40.0)
    assert figures.requests >= 500 and figures.errors == 0, figures.table_row()
    # Loose: a leak of a request's worth of memory or an fd per request would blow these at once.
    assert figures.rss_mb_per_min < 60, figures.table_row()
    assert figures.fds_per_min < 30, figures.table_row()
    assert 0 < figures.store_bytes_per_txn < 16_384, figures.table_row()
    assert scan_tree(tmp_path / "host") + scan_bytes(figures.metrics_text, "/metrics") == []
    assert figures.metrics_text.startswith(b"#") or b"cloudlayer" in figures.metrics_text


def test_slope_is_least_squares_per_minute() -> None:
    assert slope_per_min([(0.0, 1.0), (30.0, 2.0), (60.0, 3.0)]) == pytest.approx(2.0)
    assert slope_per_min([(0.0, 5.0), (10.0, 5.0)]) == 0.0
