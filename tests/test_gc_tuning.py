"""The worker's garbage-collector settings (gc_tuning): imports frozen, gen 0 every 7,000 net allocations, and
reference cycles still collected. In a subprocess, so that this test run keeps CPython's defaults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(
    """
    import gc, weakref
    from cloudlayer import gc_tuning

    gc_tuning.tune()
    assert gc.get_threshold() == gc_tuning.GC_THRESHOLD, gc.get_threshold()
    assert gc.get_freeze_count() > 1000, gc.get_freeze_count()  # the imports are out of every collection

    class Node:
        pass

    # Cycles only the collector can free, made the way a request makes garbage: many, each small.
    alive = []
    for i in range(200_000):
        a, b = Node(), Node()
        a.other, b.other = b, a
        if i % 1000 == 0:
            alive.append(weakref.ref(a))
    collected = sum(ref() is None for ref in alive)
    assert collected >= len(alive) - 2, (collected, len(alive))  # all but the newest
    print("ok")
    """
)


def test_the_worker_gc_freezes_imports_and_still_collects_cycles() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
