"""The ISO 8583:1987 dialect we speak with the acquirer: one pyiso8583 spec, documented in docs/iso8583.md.

Every field is ASCII text except the bitmaps (8 raw bytes each), field 52 (8 raw bytes) and field 55
(raw BER-TLV bytes behind a 3-digit ASCII length). pyiso8583 handles binary fields as hex strings.
"""

from __future__ import annotations

from typing import Any, Final

# Network management information codes (field 70).
SIGN_ON: Final = "001"
ECHO: Final = "301"

# Response codes we give meaning to.
APPROVED: Final = "00"
UNABLE_TO_LOCATE: Final = "25"  # answer to a repeat (0101/0201/0401) whose original was never seen
# An 0410 with one of these did not reverse anything: the issuer or switch was unavailable (91) or failed (96),
# and most acquirers say "repeat it". Store-and-forward keeps repeating (0401); a direct REVERSAL so answered is
# stored for forwarding. Every other 0410 acknowledges (00 reversed, 25 never saw the original: nothing to undo).
REVERSAL_NOT_ACKNOWLEDGED: Final = frozenset({"91", "96"})
ISSUER_INOPERATIVE: Final = "91"  # what the host answers when the outcome is unknown

PROCESSING_PURCHASE: Final = "000000"
PROCESSING_REFUND: Final = "200000"

MAX_FRAME: Final = 8192  # no message of ours comes near this; a larger length prefix means garbage


def _fixed(length: int, desc: str, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": 0, "max_len": length, "desc": desc}


def _var(len_digits: int, max_len: int, desc: str, enc: str = "ascii") -> dict[str, Any]:
    return {"data_enc": enc, "len_enc": "ascii", "len_type": len_digits, "max_len": max_len, "desc": desc}


SPEC: Final[dict[str, dict[str, Any]]] = {
    "h": _fixed(0, "Message Header"),
    "t": _fixed(4, "Message Type Indicator"),
    "p": _fixed(8, "Bitmap, Primary", "b"),
    "1": _fixed(8, "Bitmap, Secondary", "b"),
    "2": _var(2, 19, "Primary Account Number"),
    "3": _fixed(6, "Processing Code"),
    "4": _fixed(12, "Amount, Transaction"),
    "7": _fixed(10, "Transmission Date and Time"),
    "11": _fixed(6, "System Trace Audit Number"),
    "12": _fixed(6, "Time, Local Transaction"),
    "13": _fixed(4, "Date, Local Transaction"),
    "14": _fixed(4, "Date, Expiration"),
    "22": _fixed(3, "POS Entry Mode"),
    "23": _fixed(3, "Card Sequence Number"),
    "32": _var(2, 11, "Acquiring Institution ID Code"),
    "35": _var(2, 37, "Track 2 Data"),
    "37": _fixed(12, "Retrieval Reference Number"),
    "38": _fixed(6, "Authorization ID Response"),
    "39": _fixed(2, "Response Code"),
    "41": _fixed(8, "Card Acceptor Terminal ID"),
    "42": _fixed(15, "Card Acceptor ID Code"),
    "49": _fixed(3, "Currency Code, Transaction"),
    "52": _fixed(8, "PIN Data", "b"),
    "55": _var(3, 999, "ICC Data", "b"),
    "70": _fixed(3, "Network Management Information Code"),
    "90": _fixed(42, "Original Data Elements"),
}

# What the fields fed by Mypinpad's request can hold: the JSON contract (transactions/models.py, decoding.py)
# takes its bounds from here, so that whatever the route accepts, the connector can encode.
PAN_MAX_DIGITS: Final[int] = SPEC["2"]["max_len"]  # field 2, from EMV 5A (or the PAN in 57)
TRACK2_MAX_CHARS: Final[int] = SPEC["35"]["max_len"]  # field 35, from EMV 57
PIN_BLOCK_BYTES: Final[int] = SPEC["52"]["max_len"]  # field 52: ISO 9564 formats 0-3 only
ICC_MAX_BYTES: Final[int] = SPEC["55"]["max_len"]  # field 55

REQUEST_TO_RESPONSE: Final = {
    "0100": "0110",
    "0101": "0110",
    "0200": "0210",
    "0201": "0210",
    "0400": "0410",
    "0401": "0410",
    "0800": "0810",
}
REPEAT_OF: Final = {"0100": "0101", "0200": "0201", "0400": "0401"}


def is_response(mti: str) -> bool:
    """Third MTI digit odd: 0110, 0210, 0410, 0810 (and the 1987 advice responses 0x30)."""
    return len(mti) == 4 and mti[2] in "13"


def match_key(mti: str, stan: str, terminal_id: str) -> tuple[str, str, str]:
    """The key a response is matched on: message class (2nd MTI digit) + field 11 + field 41.

    The class keeps a 0410 from ever matching a 0110 with the same STAN and terminal.
    """
    return (mti[1:2], stan, terminal_id)


def original_data(mti: str, stan: str, transmission_datetime: str, acquirer_id: str) -> str:
    """Field 90: original MTI (4) + STAN (6) + field 7 (10) + acquirer id (11, zero-padded) + forwarder (11 zeros)."""
    return f"{mti}{stan}{transmission_datetime}{acquirer_id.rjust(11, '0')}{'0' * 11}"


def parse_original_data(value: str) -> tuple[str, str, str, str]:
    """Split field 90 into (mti, stan, transmission datetime, acquirer id without padding)."""
    if len(value) != 42 or not value.isdigit():
        raise ValueError("field 90 must be 42 digits")
    return value[0:4], value[4:10], value[10:20], value[20:31].lstrip("0") or "0"
