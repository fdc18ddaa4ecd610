"""Exponential backoff with jitter, shared by reconnects and SAF retries."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, minimum: float, maximum: float) -> float:
    """minimum * 2**attempt capped at maximum, scaled by a random factor in [0.5, 1] so peers spread out."""
    base = min(maximum, minimum * float(1 << min(attempt, 30)))
    return base * random.uniform(0.5, 1.0)
