"""ISO 8583 pack/unpack of our messages: the native codec (acquirer/codec.py, rust/iso8583.rs) against
pyiso8583 with the same spec (acquirer/reference_codec.py, the oracle, what codec.py used before), with a
floor in the same run: msgspec JSON of the same field dict, the cheapest serialisation of the same data here.

    .venv/bin/python bench/bench_iso8583.py                 # pack/unpack per call
    .venv/bin/python bench/bench_iso8583.py --flow 3        # also bench_flow.py, 3 interleaved rounds per codec

Reports min / median per call over repeats (noisy 2-core machine) and the ratios; prints one JSON line.
`--flow` runs bench/bench_flow.py (the transaction flow without HTTP) in subprocesses, alternating the host's
codec between native and pyiso8583 (the simulator, not metered, keeps the native one), and reports the median
host CPU per transaction of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import msgspec

from cloudlayer.acquirer import reference_codec
from cloudlayer.acquirer.codec import decode, encode
from cloudlayer.acquirer.messages import build_request, request_mti
from cloudlayer.acquirer.types import AcquirerRequest, MessageKind
from cloudlayer.samples import SAMPLE_EMV_HEX

REQUEST = AcquirerRequest(
    kind=MessageKind.PURCHASE,
    stan="000042",
    rrn="633000000042",
    transmission_datetime="1126120000",
    local_time="120000",
    local_date="1126",
    amount=1000,
    currency="826",
    terminal_id="TERM0001",
    merchant_id="MERCHANT0000001",
    pos_entry_mode="071",
    pan="4761739001010119",
    expiry="2712",
    pan_sequence="001",
    track2="4761739001010119D27122011143804400000",
    icc_data=bytes.fromhex(SAMPLE_EMV_HEX),
)


def _per_call(fn: Callable[[], object], number: int = 2000, repeat: int = 15) -> tuple[float, float]:
    times = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return min(times), statistics.median(times)


def codec_rows() -> dict[str, object]:
    fields = build_request(REQUEST, request_mti(REQUEST, "0200"), "123456")
    answer = {k: fields[k] for k in ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")}
    answer |= {"t": "0210", "38": "T81GIJ", "39": "00", "55": "910A1A2B3C4D5E6F70800012"}
    packed_request, packed_answer = encode(fields), encode(answer)
    assert packed_request == reference_codec.encode(fields) and decode(packed_answer) == reference_codec.decode(
        packed_answer
    )
    as_json = msgspec.json.encode(fields)
    json_decoder = msgspec.json.Decoder(dict[str, str])
    ref_encode, ref_decode = reference_codec.encode, reference_codec.decode
    rows = {
        "pack 0200 (native)": _per_call(lambda: encode(fields), number=20000),
        "pack 0200 (pyiso8583)": _per_call(lambda: ref_encode(fields)),
        "pack 0200 as JSON (msgspec)": _per_call(lambda: msgspec.json.encode(fields), number=20000),
        "unpack 0210 (native)": _per_call(lambda: decode(packed_answer), number=20000),
        "unpack 0210 (pyiso8583)": _per_call(lambda: ref_decode(packed_answer)),
        "unpack 0200 (native)": _per_call(lambda: decode(packed_request), number=20000),
        "unpack 0200 (pyiso8583)": _per_call(lambda: ref_decode(packed_request)),
        "unpack 0200 as JSON (msgspec)": _per_call(lambda: json_decoder.decode(as_json), number=20000),
    }
    print(
        f"ISO 8583 messages: 0200 of {len(packed_request)} bytes ({len(fields) - 1} fields), 0210 of "
        f"{len(packed_answer)} bytes  (min / median per call)"
    )
    for name, (lo, med) in rows.items():
        print(f"  {name:32s} {lo:8.2f} us / {med:8.2f} us")

    def med(name: str) -> float:
        return rows[name][1]

    pack_speedup = med("pack 0200 (pyiso8583)") / med("pack 0200 (native)")
    unpack_speedup = med("unpack 0210 (pyiso8583)") / med("unpack 0210 (native)")
    pack_vs_json = med("pack 0200 (native)") / med("pack 0200 as JSON (msgspec)")
    print(
        f"  native is {pack_speedup:.0f}x faster to pack, {unpack_speedup:.0f}x to unpack the 0210; native pack costs "
        f"{pack_vs_json:.1f}x msgspec JSON of the same fields (medians)"
    )
    return {
        "pack_us": round(med("pack 0200 (native)"), 2),
        "unpack_us": round(med("unpack 0210 (native)"), 2),
        "pack_us_pyiso8583": round(med("pack 0200 (pyiso8583)"), 2),
        "unpack_us_pyiso8583": round(med("unpack 0210 (pyiso8583)"), 2),
        "pack_speedup": round(pack_speedup, 1),
        "unpack_speedup": round(unpack_speedup, 1),
        "pack_vs_msgspec_json": round(pack_vs_json, 1),
    }


# bench_flow.py with the host's codec swapped for pyiso8583 before the connector imports it.
_WITH_PYISO8583 = """
import runpy, sys
from cloudlayer.acquirer import codec, reference_codec
codec.encode, codec.decode = reference_codec.encode, reference_codec.decode
sys.argv = sys.argv[1:]  # drop "-c": bench_flow.py sees its own path and arguments
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def flow_rounds(rounds: int, n: int) -> dict[str, object]:
    script = str(Path(__file__).with_name("bench_flow.py"))
    cpu: dict[str, list[float]] = {"native": [], "pyiso8583": []}
    tps: dict[str, list[float]] = {"native": [], "pyiso8583": []}
    for _ in range(rounds):
        for codec_name in ("native", "pyiso8583"):
            head = (
                [sys.executable, script] if codec_name == "native" else [sys.executable, "-c", _WITH_PYISO8583, script]
            )
            out = subprocess.run([*head, "--n", str(n)], check=True, capture_output=True, text=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            cpu[codec_name].append(figures["cpu_us_per_transaction"])
            tps[codec_name].append(figures["transactions_per_second"])
            print(
                f"  flow, {codec_name:9s}: {figures['transactions_per_second']:7.0f} txn/s, "
                f"{figures['cpu_us_per_transaction']:5.0f} us CPU per txn",
                flush=True,
            )
    native, before = statistics.median(cpu["native"]), statistics.median(cpu["pyiso8583"])
    print(
        f"  flow medians over {rounds} rounds: {before:.0f} us CPU per txn with pyiso8583, {native:.0f} us native "
        f"({native / before:.2f}x); {statistics.median(tps['pyiso8583']):.0f} vs "
        f"{statistics.median(tps['native']):.0f} txn/s"
    )
    return {
        "flow_cpu_us_native": native,
        "flow_cpu_us_pyiso8583": before,
        "flow_cpu_ratio": round(native / before, 3),
        "flow_tps_native": statistics.median(tps["native"]),
        "flow_tps_pyiso8583": statistics.median(tps["pyiso8583"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow", type=int, default=0, metavar="ROUNDS", help="also run bench_flow.py per codec")
    parser.add_argument("--flow-n", type=int, default=3000, help="purchases per bench_flow.py run")
    args = parser.parse_args()
    figures = codec_rows()
    if args.flow:
        figures |= flow_rounds(args.flow, args.flow_n)
    print(json.dumps({"bench": "iso8583", **figures}))


if __name__ == "__main__":
    main()
