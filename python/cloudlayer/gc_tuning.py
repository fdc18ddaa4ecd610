"""The cyclic garbage collector's settings in a worker process.

A purchase allocates thousands of short-lived objects (h11 events, Quart's request context, trio's scopes and
tasks, our records), nearly all freed by reference counting the moment they are done with. CPython's default
threshold (a gen-0 collection every 700 net container allocations) still ran ~1,150 gen-0, ~105 gen-1 and ~9
full collections in one bench window (`bench/run.py --scenario unique --targets host --no-sweep --duration 10`,
a worker's lifetime: ~0.9 s of its CPU, ~120 us a request, measured with gc.callbacks), each full one walking every
object the imports left behind. With everything imported frozen (never walked again) and gen 0 collected every
7,000 net allocations, the same run collected 22 + 2 + 0 times in 0.08 s (whole-path figures, paired: bench/README.md).

Cycles are still collected (trio's exceptions and their tracebacks make some): 7,000 net allocations is a few
requests' worth, so nothing builds up; only how often the collector looks changes.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (7000, 10, 10)  # gen 0 every 7,000 net allocations (default 700); gens 1 and 2 as CPython's


def tune() -> None:
    """Freeze what exists now (imported modules, the code) out of every collection, then set the threshold."""
    gc.collect()  # what the imports left as garbage goes now, not into the frozen generation
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
