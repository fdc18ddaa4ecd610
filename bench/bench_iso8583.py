"""ISO 8583 pack/unpack of our messages (pyiso8583 with the spec in acquirer/spec.py), with a baseline in the
same run: msgspec JSON of the same field dict, the cheapest serialisation of the same data in this process.

    .venv/bin/python bench/bench_iso8583.py

Reports min / median per call over repeats (noisy 2-core machine) and the ratios; prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import timeit
from collections.abc import Callable

import msgspec

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


def main() -> None:
    fields = build_request(REQUEST, request_mti(REQUEST, "0200"), "123456")
    answer = {k: fields[k] for k in ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")}
    answer |= {"t": "0210", "38": "T81GIJ", "39": "00", "55": "910A1A2B3C4D5E6F70800012"}
    packed_request, packed_answer = encode(fields), encode(answer)
    as_json = msgspec.json.encode(fields)
    json_decoder = msgspec.json.Decoder(dict[str, str])
    rows = {
        "pack 0200 (pyiso8583)": _per_call(lambda: encode(fields)),
        "pack 0200 as JSON (msgspec)": _per_call(lambda: msgspec.json.encode(fields)),
        "unpack 0210 (pyiso8583)": _per_call(lambda: decode(packed_answer)),
        "unpack 0200 as JSON (msgspec)": _per_call(lambda: json_decoder.decode(as_json)),
    }
    print(
        f"ISO 8583 messages: 0200 of {len(packed_request)} bytes ({len(fields) - 1} fields), 0210 of "
        f"{len(packed_answer)} bytes  (min / median per call)"
    )
    for name, (lo, med) in rows.items():
        print(f"  {name:32s} {lo:8.2f} us / {med:8.2f} us")
    pack_ratio = rows["pack 0200 (pyiso8583)"][1] / rows["pack 0200 as JSON (msgspec)"][1]
    print(f"  pyiso8583 pack costs {pack_ratio:.0f}x msgspec JSON of the same fields (median)")
    print(
        json.dumps(
            {
                "bench": "iso8583",
                "pack_us": round(rows["pack 0200 (pyiso8583)"][1], 2),
                "unpack_us": round(rows["unpack 0210 (pyiso8583)"][1], 2),
                "pack_vs_msgspec_json": round(pack_ratio, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
