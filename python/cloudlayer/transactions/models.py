"""The JSON wire contract with Mypinpad: the one place it lives (documented in openapi.json).

Unknown request fields are tolerated (Mypinpad may add some); known fields are strictly typed and
range-checked here, so the flow only ever sees valid values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec
from msgspec import Meta

from ..acquirer.spec import ICC_MAX_BYTES, PAN_MAX_DIGITS, PIN_BLOCK_BYTES, TRACK2_MAX_CHARS

# Patterns end with (?![\s\S]) rather than $: Python's $ also matches before a final newline, so
# "TERM001\n" would pass; this lookahead means "end of string" alike in Python and in JSON Schema.
# Identifiers Mypinpad sends: printable ASCII, no spaces, bounded.
Identifier = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+(?![\s\S])")]
# Field 4 is n12: at most 999,999,999,999 minor units; zero-amount purchases are not authorizations.
Amount = Annotated[int, Meta(ge=1, le=999_999_999_999)]
CurrencyCode = Annotated[str, Meta(pattern=r"^[0-9]{3}(?![\s\S])")]
# Fields 42 and 41 are ans 15 and ans 8: printable ASCII, shorter ids padded with spaces on the right.
MerchantId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=15,
        pattern=r"^[\x20-\x7e]+(?![\s\S])",
        description="ISO 8583 field 42 (ans 15): printable ASCII, sent padded with spaces to 15.",
    ),
]
TerminalId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=8,
        pattern=r"^[\x20-\x7e]+(?![\s\S])",
        description="ISO 8583 field 41 (ans 8): printable ASCII, sent padded with spaces to 8.",
    ),
]
PosEntryMode = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{2,3}(?![\s\S])",
        description="ISO 8583 field 22: PAN entry mode (2 digits), then PIN entry capability (1 digit). "
        "A 2-digit mode is sent with 0 (unspecified) appended: 07 goes out as 070.",
    ),
]
# Field 55 (LLLVAR binary) holds at most 999 bytes of ICC data: the contract allows no more than it carries.
EmvHex = Annotated[
    str,
    Meta(
        min_length=2,
        max_length=2 * ICC_MAX_BYTES,
        pattern=r"^(?:[0-9A-Fa-f]{2})+(?![\s\S])",
        description=f"BER-TLV, hex: ISO 8583 field 55, at most {ICC_MAX_BYTES} bytes. The card data in it must fit "
        f"the message: 5A at most {PAN_MAX_DIGITS} digits; 57 as EMV sends it (nibbles, D separator) and per "
        f"ISO/IEC 7813 (PAN, D, YYMM, service code, discretionary data), at most {TRACK2_MAX_CHARS} characters; "
        "5F24 YYMMDD; 5F34 2 digits. Otherwise 422 invalid-emv.",
    ),
]
# Field 52 is 8 bytes: ISO 9564 formats 0-3. Format 4 (AES, 16 bytes) needs a dialect we do not speak.
PinBlockHex = Annotated[
    str,
    Meta(
        pattern=rf"^[0-9A-Fa-f]{{{2 * PIN_BLOCK_BYTES}}}(?![\s\S])",
        description=f"ISO 9564 PIN block, hex: ISO 8583 field 52 is {PIN_BLOCK_BYTES} bytes (formats 0-3). "
        "Format 4 (16 bytes) cannot be carried and is refused.",
    ),
]
# Local date and time at the terminal, ISO 8601 without zone: 2026-11-26T14:05:09.
LocalDateTime = Annotated[
    str, Meta(pattern=r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?![\s\S])")
]


class TransactionType(StrEnum):
    PURCHASE = "PURCHASE"
    REFUND = "REFUND"
    REVERSAL = "REVERSAL"


class TransactionRequest(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    transaction_id: Identifier
    transaction_type: TransactionType
    amount: Amount
    currency: CurrencyCode
    merchant_id: MerchantId
    terminal_id: TerminalId
    pos_entry_mode: PosEntryMode
    emv_data: EmvHex | None = None
    original_transaction_id: Identifier | None = None
    pin_block: PinBlockHex | None = None
    local_date_time: LocalDateTime | None = None

    def __repr__(self) -> str:
        # emvData and pinBlock are card data: never let a repr carry them into a log or traceback.
        return f"TransactionRequest(transaction_id={self.transaction_id!r}, type={self.transaction_type.value})"


class TransactionResponse(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=False):
    transaction_id: str
    response_code: str
    approved: bool
    authorisation_code: str | None
    rrn: str
    stan: str
    emv_data: str  # hex; 8A always present, then 91/71/72 when the issuer sent them
    message: str


_request_decoder = msgspec.json.Decoder(TransactionRequest)
_response_encoder = msgspec.json.Encoder()


def decode_request(body: bytes) -> TransactionRequest:
    """Raises msgspec.ValidationError / msgspec.DecodeError (turned into problem+json by the route)."""
    return _request_decoder.decode(body)


def encode_response(response: TransactionResponse) -> bytes:
    return _response_encoder.encode(response)


# ISO 8583 field 39 codes: which approve, and the text we put in `message`.
APPROVED_CODES = frozenset({"00", "08", "10", "11"})
RESPONSE_MESSAGES = {
    "00": "Approved",
    "01": "Refer to card issuer",
    "03": "Invalid merchant",
    "04": "Pick up card",
    "05": "Do not honour",
    "08": "Honour with identification",
    "10": "Approved for partial amount",
    "11": "Approved (VIP)",
    "12": "Invalid transaction",
    "13": "Invalid amount",
    "14": "Invalid card number",
    "25": "Unable to locate record",
    "30": "Format error",
    "41": "Lost card, pick up",
    "43": "Stolen card, pick up",
    "51": "Insufficient funds",
    "54": "Expired card",
    "55": "Incorrect PIN",
    "57": "Transaction not permitted to cardholder",
    "58": "Transaction not permitted to terminal",
    "61": "Exceeds withdrawal amount limit",
    "62": "Restricted card",
    "65": "Exceeds withdrawal frequency limit",
    "75": "Allowable number of PIN tries exceeded",
    "91": "Issuer or switch inoperative",
    "94": "Duplicate transmission",
    "96": "System malfunction",
}


def response_message(code: str) -> str:
    return RESPONSE_MESSAGES.get(code, f"Declined (response code {code})")
