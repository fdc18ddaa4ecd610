"""Mapping between our AcquirerRequest/AcquirerResponse and ISO 8583 field dicts (see docs/iso8583.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from . import spec
from .codec import EncodeError, Message
from .types import AcquirerRequest, AcquirerResponse, MessageKind, OriginalData


def request_mti(request: AcquirerRequest, purchase_mti: str) -> str:
    """The original (non-repeat) MTI: as fixed in the request, else purchases per config, refunds 0200,
    reversals 0400."""
    if request.mti:
        return request.mti
    if request.kind is MessageKind.PURCHASE:
        return purchase_mti
    if request.kind is MessageKind.REFUND:
        return "0200"
    return "0400"


def build_request(request: AcquirerRequest, mti: str, acquirer_id: str) -> Message:
    """Field dict for a 0100/0101/0200/0201/0400/0401. Raises EncodeError naming a bad field (never its value)."""
    pos = request.pos_entry_mode
    if len(pos) == 2:
        pos += "0"  # 2-digit PAN entry mode, then the PIN entry capability: 0 = unspecified
    if len(pos) != 3 or not pos.isdigit():
        raise EncodeError("pos_entry_mode must be 2 or 3 digits", "22")
    if not 0 <= request.amount < 10**12:
        raise EncodeError("amount out of range", "4")
    msg: Message = {
        "t": mti,
        "3": _processing_code(request),
        "4": f"{request.amount:012d}",
        "7": request.transmission_datetime,
        "11": request.stan,
        "12": request.local_time,
        "13": request.local_date,
        "22": pos,
        "32": acquirer_id,
        "37": request.rrn,
        # ans 8 and ans 15 are fixed length: shorter ids are padded with spaces on the right.
        "41": request.terminal_id.ljust(8),
        "42": request.merchant_id.ljust(15),
        "49": request.currency,
    }
    if request.pan:
        msg["2"] = request.pan
    if request.expiry:
        msg["14"] = request.expiry
    if request.pan_sequence:
        msg["23"] = request.pan_sequence.zfill(3)
    if request.track2:
        msg["35"] = request.track2
    if request.pin_block and request.kind is not MessageKind.REVERSAL:  # a reversal needs no PIN
        msg["52"] = request.pin_block.hex()
    if request.icc_data:
        msg["55"] = request.icc_data.hex()
    if request.kind is MessageKind.REVERSAL:
        if request.original is None:
            raise EncodeError("a reversal needs the original data elements", "90")
        o = request.original
        msg["90"] = spec.original_data(o.mti, o.stan, o.transmission_datetime, o.acquirer_institution_id or acquirer_id)
    return msg


def _processing_code(request: AcquirerRequest) -> str:
    """Field 3: a reversal repeats its original's (so a refund's reversal says 'refund')."""
    if request.kind is MessageKind.REVERSAL and request.original is not None and request.original.processing_code:
        return request.original.processing_code
    return spec.PROCESSING_REFUND if request.kind is MessageKind.REFUND else spec.PROCESSING_PURCHASE


def reversal_for(request: AcquirerRequest, purchase_mti: str, acquirer_id: str) -> AcquirerRequest:
    """The 0400 that reverses `request` (itself if it already is a reversal).

    It keeps the original STAN, RRN and terminal (its key differs by message class) and quotes the
    original in field 90; field 7 is the reversal's own transmission time.
    """
    if request.kind is MessageKind.REVERSAL:
        # Mypinpad may send a pinBlock with its REVERSAL: it must not reach the SAF queue.
        return msgspec.structs.replace(request, pin_block=None) if request.pin_block else request
    now = datetime.now(UTC)
    return msgspec.structs.replace(
        request,
        kind=MessageKind.REVERSAL,
        mti="",  # a reversal is an 0400 whatever the original was
        transmission_datetime=now.strftime("%m%d%H%M%S"),
        pin_block=None,  # a reversal needs no PIN
        original=OriginalData(
            mti=request_mti(request, purchase_mti),
            stan=request.stan,
            transmission_datetime=request.transmission_datetime,
            acquirer_institution_id=acquirer_id,
            processing_code=_processing_code(request),
            key=request.key,
        ),
    )


def parse_response(msg: Message, *, late: bool = False) -> AcquirerResponse:
    icc = msg.get("55", "")
    return AcquirerResponse(
        response_code=msg.get("39", ""),
        authorisation_code=msg.get("38") or None,
        icc_data=bytes.fromhex(icc) if icc else b"",
        rrn=msg.get("37"),
        stan=msg.get("11"),
        late=late,
    )


def network_request(code: str, stan: str, acquirer_id: str) -> Message:
    """An 0800: sign-on (001) or echo (301)."""
    return {
        "t": "0800",
        "7": datetime.now(UTC).strftime("%m%d%H%M%S"),
        "11": stan,
        "32": acquirer_id,
        "70": code,
    }
