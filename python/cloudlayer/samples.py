"""A realistic sample transaction (public Visa test card 4761 7390 0101 0119), for `make run`'s curl
example, `cloudlayer try` and the bench. Never a real card."""

from __future__ import annotations

import itertools
import os
import secrets
import time
import uuid

import msgspec

# A Visa contactless authorisation request's field 55: 24 tags, 173 bytes (decoded in tests/emv_samples.py).
SAMPLE_EMV_HEX = (
    "9F0206000000001000"
    "9F0306000000000000"
    "9F26088E19ED4F2A1A4D2B"
    "82022000"
    "9F36020013"
    "9F100706011203A00000"
    "9F3303E0F8C8"
    "9F1A020826"
    "95050000000000"
    "5F2A020826"
    "9A03260315"
    "9C0100"
    "9F37043D8B2C11"
    "9F270180"
    "9F34031F0302"
    "9F350122"
    "9F0902008C"
    "8407A0000000031010"
    "9F1E083132333435363738"
    "9F410400000042"
    "5A084761739001010119"
    "5F340101"
    "5F2403271231"
    "57134761739001010119D27122011143804400000F"
)


# The same field 55 without the card's identity (5A PAN, 57 track 2, 5F24 expiry, 5F34 sequence): what we
# print (the dev banner's curl example), since no log may carry a PAN or track data, test cards included.
SAMPLE_EMV_HEX_PRINTABLE = SAMPLE_EMV_HEX.split("5A08")[0]


_ATC, _CRYPTOGRAM, _SEQUENCE = "9F36020013", "9F26088E19ED4F2A1A4D2B", "5F340101"
# Taps of the test card: its ATC (2 bytes) and PAN sequence number (00-99) from one counter, starting at a random
# point so that processes sending to one host (tests, load generators) hardly ever meet.
_taps = itertools.count(int.from_bytes(os.urandom(4), "big") % (100 * 65_536))


def new_tap(emv_hex: str = SAMPLE_EMV_HEX) -> str:
    """`emv_hex` (a sample field 55) as a new tap of the same card: the next ATC (9F36), its sequence number
    (5F34) and a fresh cryptogram (9F26). The same card transaction twice is a duplicate (the store's card key)."""
    seq, atc = divmod(next(_taps) % (100 * 65_536), 65_536)
    out = emv_hex.replace(_ATC, f"9F3602{atc:04X}").replace(_CRYPTOGRAM, "9F2608" + secrets.token_hex(8).upper())
    return out.replace(_SEQUENCE, f"5F3401{seq:02d}")


def sample_purchase(
    transaction_id: str | None = None,
    *,
    amount: int = 1000,
    terminal_id: str = "TERM0001",
    merchant_id: str = "MERCHANT0000001",
    printable: bool = False,
) -> dict[str, object]:
    """A PURCHASE request body as Mypinpad sends it (amounts ending in 00 are approved by the simulator), each
    call a new tap of the test card (new_tap): send the same dict again to resubmit the same transaction."""
    return {
        "transactionId": transaction_id or f"try-{uuid.uuid4().hex[:16]}",
        "transactionType": "PURCHASE",
        "amount": amount,
        "currency": "826",
        "merchantId": merchant_id,
        "terminalId": terminal_id,
        "posEntryMode": "071",
        "emvData": new_tap(SAMPLE_EMV_HEX_PRINTABLE if printable else SAMPLE_EMV_HEX),
        "localDateTime": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def sample_purchase_json(transaction_id: str | None = None, *, printable: bool = False) -> bytes:
    return msgspec.json.encode(sample_purchase(transaction_id, printable=printable))
