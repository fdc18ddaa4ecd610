"""Encryption at rest for the few records that must hold card data for a while (see sealer.py), under a key
ring that can be rotated (ring.py) and whose retired keys are dropped once nothing uses them (usage.py)."""

from .ring import SealingRing
from .sealer import Sealer, SealError, blob_kid
from .secrets import load_or_create_secret

__all__ = ["SealError", "Sealer", "SealingRing", "blob_kid", "load_or_create_secret"]
