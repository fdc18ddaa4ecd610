"""What the load generator counts: per-label HDR latency histograms, statuses, errors, and the host's own
`Server-Timing` values (bench/loadgen.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

# Latencies are recorded in microseconds, 1 us .. 120 s, 3 significant digits.
HDR_LOW, HDR_HIGH, HDR_DIGITS = 1, 120_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HDR_LOW, HDR_HIGH, HDR_DIGITS)


@dataclass
class Stats:
    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    status: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    completed_in_window: int = 0
    sent: int = 0
    reconnects: int = 0
    max_backlog: int = 0
    # The host's `Server-Timing` metrics (app, acquirer), microseconds, of measured requests that carry one.
    server_timing: dict[str, HdrHistogram] = field(default_factory=dict)

    def record(self, label: str, status: int, latency_us: int) -> None:
        h = self.histograms.get(label)
        if h is None:
            h = self.histograms[label] = new_histogram()
        h.record_value(max(HDR_LOW, min(latency_us, HDR_HIGH)))
        by = self.status.setdefault(label, {})
        key = str(status)
        by[key] = by.get(key, 0) + 1

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def record_server_timing(self, head: bytes) -> None:
        """`server-timing: app;dur=0.42, acquirer;dur=0.31` (a lowercased response head) into histograms."""
        at = head.find(b"\r\nserver-timing:")
        if at < 0:
            return
        end = head.find(b"\r\n", at + 2)
        for metric in head[at + 17 : end if end >= 0 else len(head)].split(b","):
            name, _, params = metric.strip().partition(b";")
            _, found, dur = params.partition(b"dur=")
            if not found:
                continue
            try:
                us = int(float(dur.split(b";")[0]) * 1000)
            except ValueError:
                continue
            label = name.decode("latin-1")
            h = self.server_timing.get(label)
            if h is None:
                h = self.server_timing[label] = new_histogram()
            h.record_value(max(HDR_LOW, min(us, HDR_HIGH)))
