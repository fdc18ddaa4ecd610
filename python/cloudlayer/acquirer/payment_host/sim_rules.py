"""The simulated payment host's rules: each API call is applied to the ISO 8583 simulator as the message it
stands for (authorization 0200, lookup 0201, reversal 0400/0401), so both sides share one set of rules and one
Ledger; on top, what makes the HTTP API idempotent: one record per Idempotency-Key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec

from .. import spec
from ..codec import Message
from ..simulator import Simulator
from . import wire

_ACQUIRER_ID = "000000"


class Refused(Exception):
    """Not processed: answered with a problem (status, slug, detail)."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail


@dataclass
class _Record:
    fingerprint: bytes
    ledger_key: tuple[str, str]  # (terminal as in field 41, STAN)
    answer: wire.Authorization | None = None
    blocked: bool = False  # reversed before it was ever authorized: a late create is refused
    reversal: wire.Reversal | None = None


@dataclass
class Outcome:
    status: int  # 201 processed now, 200 replayed
    body: bytes
    answered: bool = True  # False: processed, but the rules say "never answer" (simulator.no_answer_amount)


_encoder = msgspec.json.Encoder()


def _fingerprint(doc: msgspec.Struct) -> bytes:
    return hashlib.sha256(_encoder.encode(doc)).digest()


class PaymentHostRules:
    def __init__(self, simulator: Simulator) -> None:
        self.sim = simulator
        self.records: dict[str, _Record] = {}

    def authorize(self, key: str, doc: wire.AuthorizationRequest) -> Outcome:
        fp = _fingerprint(doc)
        terminal = doc.terminal_id.ljust(8)
        rec = self.records.get(key)
        if rec is not None:
            if rec.blocked:
                raise Refused(409, "authorization-reversed", "this key was reversed before it was authorized")
            if rec.fingerprint != fp:
                raise Refused(422, "idempotency-key-reused", "Idempotency-Key: used before with a different body")
            if rec.answer is None:
                raise Refused(409, "idempotency-key-in-use", "the first request with this key is being processed")
            entry = self.sim.ledger.get(*rec.ledger_key)
            if entry is not None:
                entry.repeats += 1
            return Outcome(200, _encoder.encode(rec.answer))
        rec = self.records[key] = _Record(fp, (terminal, doc.stan))
        msg: Message = {
            "t": "0200",
            "3": spec.PROCESSING_REFUND if doc.type == "refund" else spec.PROCESSING_PURCHASE,
            "4": f"{doc.amount:012d}",
            "7": doc.transmitted_at,
            "11": doc.stan,
            "12": doc.local_time,
            "13": doc.local_date,
            "22": doc.pos_entry_mode,
            "32": _ACQUIRER_ID,
            "37": doc.rrn,
            "41": terminal,
            "42": doc.merchant_id.ljust(15),
            "49": doc.currency,
        }
        if doc.icc_data:
            msg["55"] = doc.icc_data
        self.sim.ledger.messages += 1
        answer = self.sim.process(msg)  # the ledger first: the host "did it" even if the answer is lost
        entry = self.sim.ledger.get(terminal, doc.stan)
        iso = answer if answer is not None else (entry.answer if entry is not None else None)
        assert iso is not None, "the ISO rules record every authorization they process"
        rec.answer = wire.Authorization(
            key=key,
            response_code=iso["39"],
            approval_code=iso.get("38") or None,
            icc_data=iso.get("55", "").upper(),
            stan=doc.stan,
            rrn=doc.rrn,
        )
        return Outcome(201, _encoder.encode(rec.answer), answered=answer is not None)

    def lookup(self, key: str) -> Outcome | None:
        """The stored answer (with `reversed` as of now), or None: never seen (a lookup creates nothing)."""
        rec = self.records.get(key)
        if rec is None or rec.answer is None:
            return None
        entry = self.sim.ledger.get(*rec.ledger_key)
        if entry is not None:
            entry.repeats += 1
        current = msgspec.structs.replace(rec.answer, reversed=bool(entry and entry.reversed))
        return Outcome(200, _encoder.encode(current))

    def reverse(self, key: str, doc: wire.ReversalRequest) -> Outcome:
        rec = self.records.get(key)
        if rec is None:  # never authorized under this key: record it so a late create is refused
            rec = self.records[key] = _Record(b"", (doc.terminal_id.ljust(8), doc.stan), blocked=True)
        replay = rec.reversal is not None
        msg: Message = {
            "t": "0401" if replay else "0400",
            "3": spec.PROCESSING_REFUND if doc.type == "refund" else spec.PROCESSING_PURCHASE,
            "4": f"{doc.amount:012d}",
            "7": doc.transmitted_at,
            "11": doc.stan,
            "37": doc.rrn,
            "41": doc.terminal_id.ljust(8),
            "42": doc.merchant_id.ljust(15),
            "49": doc.currency,
            "90": spec.original_data("0200", doc.stan, doc.original_transmitted_at, _ACQUIRER_ID),
        }
        self.sim.ledger.messages += 1
        answer = self.sim.process(msg)  # idempotent per original in the ISO rules: the same 0410 again
        assert answer is not None
        if rec.reversal is None:
            code = answer["39"]
            rec.reversal = wire.Reversal(
                key=wire.reversal_key(key), authorization_key=key, response_code=code, reversed=code == spec.APPROVED
            )
        return Outcome(200 if replay else 201, _encoder.encode(rec.reversal))
