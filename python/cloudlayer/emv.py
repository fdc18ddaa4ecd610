"""EMV field 55 (BER-TLV, EMV 4.x Book 3 Annex B) and the request fingerprint.

A thin face over the Rust extension: the hot-path functions are the native ones themselves (no
Python frame in between). Rules, as the native code applies them:

- ``decode(data)`` takes bytes or a hex string (either case) and returns ``[(tag, value), ...]``
  with upper-case hex tags (shared str objects) and ``bytes`` values, or a nested list for a
  constructed tag (bit 6 of the first tag byte). Tags are 1-4 bytes; lengths are short form or
  ``81 xx`` / ``82 xx xx`` (non-minimal accepted, ``80`` and ``83``+ rejected); ``00`` padding
  between objects is skipped (``FF`` is not padding); templates nest at most ``MAX_DEPTH`` deep.
- Malformed input raises :class:`TLVError` (a ``ValueError``) with ``.offset`` (byte offset in the
  decoded bytes; for hex errors, the offset in the string) and ``.reason`` (a stable code). No
  error message ever contains the data.
- ``encode(items)`` is the inverse with minimal lengths: ``decode(encode(x)) == x``. A constructed
  tag needs a list value and a primitive tag a bytes value.
- ``redact(data, tags=SENSITIVE)`` removes the listed tags everywhere (templates included) and
  masks 5A to first 6 / last 4 digits: the hidden digits become the nibble ``A`` (not a digit, so
  a masked PAN can never pass for a real one, and not the ``F`` padding nibble). 9F6B is always
  removed: the TLV alone cannot tell whether it is Mastercard track 2, so we assume it is.
- ``card_data(data)`` reads PAN (5A, else the PAN in 57), expiry (5F24, YYMMDD), PAN sequence
  (5F34) and track 2 (57, ``D`` separator) in one pass; ``None`` when there is no PAN. Its repr
  shows only the masked PAN.
- ``build_response_emv(code, issuer_icc)``: 8A first, then every other object the issuer sent,
  byte for byte. If the issuer sent 8A, the issuer's is kept (its ARPC in 91 is computed over that
  ARC); otherwise 8A carries the field 39 response code.
- ``fingerprint(fields)``: SHA-256 over the (name, value) pairs sorted by name, each name and value
  length-prefixed and type-tagged (``None``, ``bool``, ``int``, ``str``, ``bytes`` all distinct).
  Names must be unique.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

from cloudlayer import _native
from cloudlayer._native import (
    MAX_DEPTH,
    CardData,
    TLVError,
    build_response_emv,
    card_data,
    decode,
    encode,
    fingerprint,
    masked_pan,
)

__all__ = [
    "MAX_DEPTH",
    "SENSITIVE",
    "TAGS",
    "CardData",
    "EncodableValue",
    "FieldValue",
    "TLVError",
    "TLVValue",
    "build_response_emv",
    "card_data",
    "decode",
    "encode",
    "fingerprint",
    "masked_pan",
    "redact",
    "tag_name",
]

#: A decoded value: bytes (primitive) or the children of a constructed object.
TLVValue: TypeAlias = "bytes | list[tuple[str, TLVValue]]"
#: What ``encode`` accepts as a value.
EncodableValue: TypeAlias = "bytes | bytearray | Sequence[tuple[str, EncodableValue]]"
#: A fingerprint field's value.
FieldValue: TypeAlias = str | int | bytes | bool | None

#: Tags removed (or, for 5A, masked) by :func:`redact`: track data 57/56/9F1F/9F20/9F6B, PIN data 99,
#: cardholder name 5F20/9F0B, PAN 5A. The set is defined once, in the native module.
SENSITIVE: Final[frozenset[str]] = frozenset(_native.SENSITIVE_TAGS)


def redact(data: bytes | bytearray | str, tags: Iterable[str] = SENSITIVE) -> bytes:
    """The same TLV with ``tags`` removed (5A masked 6 + 4), for storage and logs."""
    return _native.redact(data, None if tags is SENSITIVE else tags)


#: Names of common EMV tags (EMV Book 3 Annex A, scheme kernels), for display.
TAGS: Final[dict[str, str]] = {
    "42": "Issuer Identification Number (IIN)",
    "4F": "Application Identifier (AID) - card",
    "50": "Application Label",
    "56": "Track 1 Data",
    "57": "Track 2 Equivalent Data",
    "5A": "Application Primary Account Number (PAN)",
    "5F20": "Cardholder Name",
    "5F24": "Application Expiration Date",
    "5F25": "Application Effective Date",
    "5F28": "Issuer Country Code",
    "5F2A": "Transaction Currency Code",
    "5F2D": "Language Preference",
    "5F30": "Service Code",
    "5F34": "Application PAN Sequence Number",
    "61": "Application Template",
    "6F": "File Control Information (FCI) Template",
    "70": "READ RECORD Response Message Template",
    "71": "Issuer Script Template 1",
    "72": "Issuer Script Template 2",
    "77": "Response Message Template Format 2",
    "80": "Response Message Template Format 1",
    "82": "Application Interchange Profile",
    "84": "Dedicated File (DF) Name",
    "86": "Issuer Script Command",
    "87": "Application Priority Indicator",
    "8A": "Authorisation Response Code",
    "8C": "Card Risk Management Data Object List 1 (CDOL1)",
    "8D": "Card Risk Management Data Object List 2 (CDOL2)",
    "8E": "Cardholder Verification Method (CVM) List",
    "8F": "Certification Authority Public Key Index",
    "91": "Issuer Authentication Data",
    "94": "Application File Locator (AFL)",
    "95": "Terminal Verification Results",
    "99": "Transaction Personal Identification Number (PIN) Data",
    "9A": "Transaction Date",
    "9B": "Transaction Status Information",
    "9C": "Transaction Type",
    "9F02": "Amount, Authorised (Numeric)",
    "9F03": "Amount, Other (Numeric)",
    "9F06": "Application Identifier (AID) - terminal",
    "9F07": "Application Usage Control",
    "9F09": "Application Version Number - terminal",
    "9F0B": "Cardholder Name Extended",
    "9F0D": "Issuer Action Code - Default",
    "9F0E": "Issuer Action Code - Denial",
    "9F0F": "Issuer Action Code - Online",
    "9F10": "Issuer Application Data",
    "9F11": "Issuer Code Table Index",
    "9F12": "Application Preferred Name",
    "9F18": "Issuer Script Identifier",
    "9F1A": "Terminal Country Code",
    "9F1E": "Interface Device (IFD) Serial Number",
    "9F1F": "Track 1 Discretionary Data",
    "9F20": "Track 2 Discretionary Data",
    "9F21": "Transaction Time",
    "9F24": "Payment Account Reference (PAR)",
    "9F26": "Application Cryptogram",
    "9F27": "Cryptogram Information Data",
    "9F33": "Terminal Capabilities",
    "9F34": "Cardholder Verification Method (CVM) Results",
    "9F35": "Terminal Type",
    "9F36": "Application Transaction Counter (ATC)",
    "9F37": "Unpredictable Number",
    "9F39": "Point-of-Service (POS) Entry Mode",
    "9F40": "Additional Terminal Capabilities",
    "9F41": "Transaction Sequence Counter",
    "9F53": "Transaction Category Code",
    "9F5B": "Issuer Script Results",
    "9F66": "Terminal Transaction Qualifiers (TTQ)",
    "9F6B": "Track 2 Data (Mastercard)",
    "9F6C": "Card Transaction Qualifiers (CTQ)",
    "9F6E": "Form Factor Indicator / Third Party Data",
    "9F7C": "Customer Exclusive Data",
    "BF0C": "File Control Information (FCI) Issuer Discretionary Data",
    "DF8129": "Outcome Parameter Set",
    "FF8105": "Data Record",
}


def tag_name(tag: str) -> str:
    """The display name of a tag, or ``"Unknown"``."""
    return TAGS.get(tag.upper(), "Unknown")
