"""The card-data scan: any Luhn-valid PAN or track-2 data of the test cards in logs, files, LMDB, metrics.

Two detectors, because a PAN hides in two ways:
  - generic: a Luhn-valid run of 13-19 digits standing alone (not glued to letters, digits or '.', so hex
    strings, UUIDs and float digits do not fire), in text (logs, /metrics); LMDB records are covered by the
    store integrity scan, which checks each record's own bytes;
  - specific: the test cards' PANs anywhere, in ASCII (hex EMV data holds them as ASCII digits too) and in
    BCD bytes (tag 5A, field 2 packed), their track-2 data (PAN + 'D' or '=' separator) in ASCII and BCD, and an
    unkeyed SHA-256 of the PAN (what a card key must never be).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cloudlayer.store.integrity import luhn_valid

TEST_PANS = ("4761739001010119",)
TEST_TRACK2 = ("4761739001010119D27122011143804400000F",)
# Not glued to letters, digits or a decimal point: hex, UUIDs and float digits (metrics: 0.123456789012345)
# would otherwise fire on chance Luhn hits. The test cards are found anywhere by the needles below.
_STANDALONE = re.compile(rb"(?<![0-9A-Za-z.])[0-9]{13,19}(?![0-9A-Za-z.])")


@dataclass(frozen=True)
class Hit:
    where: str
    what: str
    offset: int


def _needles() -> list[tuple[str, bytes]]:
    needles: list[tuple[str, bytes]] = []
    for pan in TEST_PANS:
        needles.append(("test PAN (ASCII)", pan.encode()))
        needles.append(("test PAN (BCD)", bytes.fromhex(pan)))
        needles.append(("test PAN (UTF-16)", pan.encode("utf-16-le")))
        for sep in ("D", "="):
            needles.append((f"track 2 (ASCII, {sep})", (pan + sep).encode()))
        needles.append(("track 2 (hex text, lower)", (pan + "d").encode()))
        # The store's card key must be keyed (HMAC, PCI DSS 3.5.1.1): a plain SHA-256 of the PAN is card data too.
        plain = hashlib.sha256(pan.encode()).digest()
        needles.append(("unkeyed SHA-256 of a test PAN", plain))
        needles.append(("unkeyed SHA-256 of a test PAN (hex)", plain.hex().encode()))
    for track2 in TEST_TRACK2:
        needles.append(("track 2 (ASCII)", track2.encode()))
        needles.append(("track 2 (BCD)", bytes.fromhex(track2)))
        needles.append(("track 2 (BCD, first 10 bytes)", bytes.fromhex(track2[:20])))
    return needles


NEEDLES = _needles()


def scan_bytes(data: bytes, where: str) -> list[Hit]:
    hits = [Hit(where, what, data.find(needle)) for what, needle in NEEDLES if needle in data]
    if b"\0" in data[:8192]:
        # Binary (LMDB pages): digit runs meet stray page bytes at random (an RRN glued to a leftover digit),
        # so only the test-card needles apply here; the integrity scan checks each record's own bytes.
        return hits
    for m in _STANDALONE.finditer(data):
        if luhn_valid(m.group()):
            hits.append(Hit(where, f"Luhn-valid {len(m.group())}-digit run", m.start()))
    return hits


def scan_files(paths: Iterable[Path]) -> list[Hit]:
    hits: list[Hit] = []
    for path in paths:
        if path.is_file():
            hits.extend(scan_bytes(path.read_bytes(), str(path)))
    return hits


def scan_tree(root: Path) -> list[Hit]:
    return scan_files(p for p in root.rglob("*") if p.is_file())
