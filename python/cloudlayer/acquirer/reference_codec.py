"""The oracle for the native ISO 8583 codec: pyiso8583 with the same spec, behind codec.py's API.

Nothing on the hot path uses it. tests/test_iso8583_native.py holds the native codec (codec.encode /
codec.decode) to it, byte for byte, and bench/bench_iso8583.py times the two side by side.

Where the native codec is deliberately stricter: it refuses keys outside the dialect that pyiso8583
silently drops (a key that is not a field number, "p", "h"), and on decode it takes only canonical frames:
pyiso8583 also reads a length prefix through Python's int() (so "+5", " 5", "1_0" pass), a secondary bitmap
with no field in it, and a tertiary bitmap behind bit 65 with no field in it. The differential test checks
that a frame refused by the native codec and decoded here never encodes back to its own bytes.
"""

from __future__ import annotations

import iso8583

from .codec import EncodeError, FrameError, Message
from .spec import SPEC


def encode(message: Message) -> bytes:
    """pyiso8583's encode; raises codec.EncodeError naming the field."""
    try:
        raw, _ = iso8583.encode(dict(message), SPEC)  # a copy: pyiso8583 writes the bitmaps into its input
    except iso8583.EncodeError as e:
        raise EncodeError(f"cannot encode ISO 8583 message: {e.msg}", str(e.field)) from None
    except KeyError as e:
        # A numeric key with no entry in the spec (pyiso8583 looks it up and fails).
        raise EncodeError("cannot encode ISO 8583 message: field outside our dialect", str(e.args[0])) from None
    return bytes(raw)


def decode(payload: bytes) -> Message:
    """pyiso8583's decode plus the dialect's MTI check; raises codec.FrameError."""
    try:
        doc, _ = iso8583.decode(payload, SPEC)
    except iso8583.DecodeError as e:
        raise FrameError(f"undecodable message: {e.msg}: field {e.field}", payload) from None
    except (KeyError, ValueError, TypeError):
        # A bitmap naming a field our dialect does not define (pyiso8583 raises KeyError there).
        raise FrameError("message uses fields outside our dialect", payload) from None
    mti = doc.get("t", "")
    if not (mti.isdigit() and len(mti) == 4):
        raise FrameError("message type is not 4 digits", payload)
    return {k: v for k, v in doc.items() if k not in ("p", "1", "h")}
