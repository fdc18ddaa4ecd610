"""Micro benchmark: native EMV decode and request fingerprint against their baselines.

Run: .venv/bin/python bench/bench_emv.py [--repeat N]

Compares, in one run and on the same blobs, `cloudlayer.emv.decode` with `pyemv.tlv.decode` and a
plain-Python BER-TLV loop (a realistic contactless field 55 request of 24 tags, and a response with
8A/91/71/72), and `cloudlayer.emv.fingerprint` of a ~1 KB request with `hashlib.sha256` over its raw
body. Each figure is the min and median over `--repeat` timeit runs (the machine is noisy: the
min is the least disturbed run, the median what to expect); ratios use the minimum.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

import pyemv.tlv

from cloudlayer import emv
from cloudlayer.samples import SAMPLE_EMV_HEX as REQUEST_HEX

# A Visa contactless authorisation request's field 55 (24 tags, 173 bytes): the one copy is in
# cloudlayer/samples.py; the expectations below are decoded by hand, independently of it.
# The issuer's answer as we return it: 8A, 91 (ARPC + ARC), 71 and 72 issuer scripts (9F18 + 86).
RESPONSE_HEX = (
    "8A023030"
    "910A3BA9C4B7A1F2E0D03030"
    "71129F1804000000018609841E000004A1B2C3D4"
    "72169F180400000002860D04DA9F580801020304A1B2C3D4"
)


def plain_python_decode(data: bytes, offset: int = 0, end: int | None = None) -> list[tuple[str, Any]]:
    """The straightforward BER-TLV loop one would write in Python (minimal checks)."""
    end = len(data) if end is None else end
    out: list[tuple[str, Any]] = []
    i = offset
    while i < end:
        if data[i] == 0:
            i += 1
            continue
        start = i
        first = data[i]
        i += 1
        if first & 0x1F == 0x1F:
            while data[i] & 0x80:
                i += 1
            i += 1
        tag = data[start:i].hex().upper()
        length = data[i]
        i += 1
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        if i + length > end:
            raise ValueError("value overruns")
        if first & 0x20:
            out.append((tag, plain_python_decode(data, i, i + length)))
        else:
            out.append((tag, data[i : i + length]))
        i += length
    return out


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(min, median) seconds per call."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    runs = [t / number for t in timer.repeat(repeat=repeat, number=number)]
    return min(runs), statistics.median(runs)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.3f} us"


def request_body() -> tuple[bytes, list[tuple[str, emv.FieldValue]]]:
    """A ~1 KB transaction request body and the fields the flow fingerprints from it."""
    emv_hex = REQUEST_HEX + "9F10" + "20" + "1F4201" * 10 + "00" + "DF8129" + "08" + "1122334455667788"
    emv_hex += "9F7C" + "81" + "C8" + "00" * 200
    body: dict[str, str | int | None] = {
        "transactionId": "7c1f4a36-9d9e-4f0b-9a55-0c3b7f1d2e4a",
        "transactionType": "PURCHASE",
        "amount": 1000,
        "currency": "826",
        "merchantId": "MERCHANT0000001",
        "terminalId": "TERM0001",
        "posEntryMode": "072",
        "localDateTime": "2026-03-15T12:34:56",
        "emvData": emv_hex,
        "pinBlock": None,
        "originalTransactionId": None,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    fields: list[tuple[str, emv.FieldValue]] = [
        (k, bytes.fromhex(v) if k == "emvData" and isinstance(v, str) else v) for k, v in body.items()
    ]
    return raw, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="timeit runs per figure (default 15)")
    args = parser.parse_args()

    for name, blob_hex in (("request", REQUEST_HEX), ("response", RESPONSE_HEX)):
        blob = bytes.fromhex(blob_hex)
        tags = len(emv.decode(blob))
        assert [t for t, _ in plain_python_decode(blob)] == [t for t, _ in emv.decode(blob)]
        native = measure(partial(emv.decode, blob), args.repeat)
        native_hex = measure(partial(emv.decode, blob_hex), args.repeat)
        pyemv_t = measure(partial(pyemv.tlv.decode, blob), args.repeat)
        plain = measure(partial(plain_python_decode, blob), args.repeat)
        print(f"decode {name}: {len(blob)} bytes, {tags} top-level tags  (min / median per call)")
        print(f"  cloudlayer.emv.decode(bytes) {us(native[0])} / {us(native[1])}")
        print(f"  cloudlayer.emv.decode(hex)   {us(native_hex[0])} / {us(native_hex[1])}")
        print(f"  pyemv.tlv.decode             {us(pyemv_t[0])} / {us(pyemv_t[1])}")
        print(f"  plain Python loop            {us(plain[0])} / {us(plain[1])}")
        print(
            f"  native is {pyemv_t[0] / native[0]:5.1f}x faster than pyemv (median {pyemv_t[1] / native[1]:.1f}x), "
            f"{plain[0] / native[0]:5.1f}x faster than the plain loop"
        )

    raw, fields = request_body()
    fp = measure(lambda: emv.fingerprint(fields), args.repeat)
    sha = measure(lambda: hashlib.sha256(raw).digest(), args.repeat)
    print(f"fingerprint of a {len(raw)}-byte request ({len(fields)} fields)  (min / median per call)")
    print(f"  cloudlayer.emv.fingerprint   {us(fp[0])} / {us(fp[1])}")
    print(f"  hashlib.sha256(raw body)     {us(sha[0])} / {us(sha[1])}")
    print(f"  fingerprint costs {fp[0] / sha[0]:.2f}x sha256 (median {fp[1] / sha[1]:.2f}x; goal <= 3x)")


if __name__ == "__main__":
    main()
