"""What our per-request extras cost on the loop: the JSON log line, the request id, the Prometheus writes (in
multi-process mode, as `cloudlayer serve` runs them) and the Server-Timing header. Each is timed alone (median of
R repetitions of N calls, thread CPU time), so a change to one shows up in its own line. Prints one JSON line
for bench/run.py.

    .venv/bin/python bench/bench_request_extras.py [--n 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# prometheus_client picks its storage at first import: the multi-process directory must be set before.
_METRICS_DIR = tempfile.mkdtemp(prefix="cloudlayer-bench-extras-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR

import structlog  # noqa: E402

from cloudlayer.config import LoggingConfig  # noqa: E402
from cloudlayer.observability import metrics  # noqa: E402
from cloudlayer.observability.logging import bind_request_id, configure_logging  # noqa: E402


def _per_call_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.thread_time()  # CPU time: a shared machine's preemption does not count
        for _ in range(n):
            fn()
        runs.append((time.thread_time() - t0) / n * 1e6)
    return round(statistics.median(runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:  # a real file write per line, as to the host's log file
        configure_logging(LoggingConfig(level="INFO", format="json"), stream=sink)
        log = structlog.get_logger("cloudlayer.transactions.route")
        metrics.initialise()
        bind_request_id(None)

        def log_line() -> None:
            log.info(
                "transaction",
                client_id="cl_0123456789abcdef01234567",
                transaction_id="b163806-uni-hoc-0-000012345",
                stan="001234",
                rrn="633012001234",
                outcome="approved",
                response_code="00",
                replay=False,
                app_ms=1.234,
                acquirer_ms=0.456,
            )

        def dropped_line() -> None:
            log.debug("transaction_debug", transaction_id="b163806-uni-hoc-0-000012345", stan="001234")

        def request_id() -> None:
            bind_request_id(None)

        def request_metrics() -> None:
            metrics.IN_FLIGHT.inc()
            if hasattr(metrics, "observe_transaction"):  # main's route made these two calls itself
                metrics.observe_transaction("00", 0.0004)
            else:
                metrics.TRANSACTION_RESPONSES.labels(metrics.response_code_label("00")).inc()
                metrics.ACQUIRER_DURATION.labels("authorization").observe(0.0004)
            metrics.observe_request("/transaction/process", 200, "approved", 0.0012)
            metrics.IN_FLIGHT.dec()

        def server_timing() -> str:
            total, acquirer = 0.0012345, 0.000456
            return f"app;dur={(total - acquirer) * 1000:.2f}, acquirer;dur={acquirer * 1000:.2f}"

        figures = {
            "log_line_us": _per_call_us(log_line, args.n, args.repeat),
            "dropped_debug_line_us": _per_call_us(dropped_line, args.n, args.repeat),
            "request_id_us": _per_call_us(request_id, args.n, args.repeat),
            "metrics_per_transaction_us": _per_call_us(request_metrics, args.n, args.repeat),
            "server_timing_us": _per_call_us(server_timing, args.n, args.repeat),
        }
    for f in Path(_METRICS_DIR).glob("*"):
        f.unlink()
    Path(_METRICS_DIR).rmdir()
    sys.stdout.write(
        "per-request extras (us per call): "
        + ", ".join(f"{k.removesuffix('_us')} {v}" for k, v in figures.items())
        + "\n"
        + json.dumps({"bench": "request_extras", **figures})
        + "\n"
    )


if __name__ == "__main__":
    main()
