"""One transaction, end to end: decode, EMV, claim, acquirer, complete. Exactly once.

The order of durable steps is the whole point (DESIGN.md, "One transaction, end to end"):
  PENDING (with the sealed acquirer request) is on disk before the acquirer sees the message;
  COMPLETED (with the exact response bytes) is on disk before the caller sees the answer.
Once a claim is NEW the rest runs shielded from cancellation (a client hanging up must not leave an
authorization unrecorded); the acquirer wait inside it has its own deadline.
With a store shared by hosts, this worker's lease can run out mid-way (docs/postgres.md "Leases and fencing"):
then nothing more is sent (the store's send guard), its completion is fenced, and the answer is 503 Retry-After
or the record's new owner's answer, never a decline made up here.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Final

import msgspec
import structlog
import trio

from .. import emv
from ..acquirer.spec import REVERSAL_NOT_ACKNOWLEDGED
from ..acquirer.types import (
    AcquirerRequest,
    AcquirerResponse,
    AcquirerUnavailable,
    ClaimFence,
    Connector,
    LeaseExpired,
    MessageKind,
    OutcomeUnknown,
    RequestNotEncodable,
)
from ..cardkey import CardKeys
from ..http.problems import Problem
from ..sealing import Sealer
from ..store.reversals import STORED_FOR_FORWARDING
from ..store.types import (
    Claim,
    ClaimOutcome,
    Completion,
    Event,
    LeaseLost,
    OwnerDied,
    State,
    TransactionRecord,
    TransactionStore,
)
from . import fencing
from .decoding import conflict, decode, duplicate_card, parse_emv
from .mapping import build_acquirer_request, fingerprint, transaction_key
from .models import APPROVED_CODES, TransactionResponse, TransactionType, encode_response, response_message
from .originals import original_data, original_for, refusal_problem
from .refusal import not_encodable
from .replays import ReplayNotes

log = structlog.get_logger(__name__)

# Declines we make ourselves when the issuer's answer is unknown or unreachable.
ISSUER_UNAVAILABLE: Final = "91"
_CLAIM_ATTEMPTS: Final = 4

# Test-only fault hook: SIGKILL ourselves at a named point, to prove crash recovery. Read once; inert
# unless both variables are set (never in a real deployment).
_CRASH_AT: Final = os.environ.get("CLOUDLAYER_TESTING_CRASH_AT", "") if os.environ.get("CLOUDLAYER_TESTING") else ""


def _crash_point(name: str) -> None:
    if _CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif _CRASH_AT == f"stop:{name}":  # a pause there (SIGSTOP): the test continues us with SIGCONT
        os.kill(os.getpid(), signal.SIGSTOP)
    elif _CRASH_AT == f"raise:{name}":  # a bug or a store error at that point, the process living on
        raise RuntimeError(f"test fault at {name}")


class Answer(msgspec.Struct, kw_only=True):
    status: int
    body: bytes
    transaction_id: str
    replayed: bool = False
    outcome: str = ""
    response_code: str = ""
    stan: str = ""
    rrn: str = ""
    acquirer_seconds: float = 0.0


_request_codec = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AcquirerRequest)


class TransactionFlow:
    def __init__(
        self,
        store: TransactionStore,
        connector: Connector,
        sealer: Sealer,
        *,
        card_keys: CardKeys,
        acquirer_timeout: float,
        link_wait: float | None = None,
    ) -> None:
        self._store = store
        self._connector = connector
        self._sealer = sealer
        self._card_keys = card_keys
        # A duplicate waits for the first attempt at most this long (the first is bounded by the acquirer
        # timeout, plus the time to queue a reversal and store the answer).
        self._wait_for_owner = acquirer_timeout * 2 + 5.0
        self._link_wait = acquirer_timeout if link_wait is None else link_wait  # recovery's wait for a link
        self.replays = ReplayNotes(store)

    async def attach(self, nursery: trio.Nursery) -> None:
        """Bookkeeping (the batched `replayed` timeline entries) runs in the app's nursery."""
        await nursery.start(self.replays.run)

    # ---- entry point -------------------------------------------------------------------------------

    async def process(self, client_id: str, body: bytes) -> Answer:
        req = decode(body)
        icc, card = parse_emv(req)
        fp = fingerprint(req, icc)
        # Fast path for resubmissions: a completed transaction replays from one read on the event loop (LMDB: a
        # read transaction on the memory map), spending no STAN, entering no writer and waiting on no fsync.
        existing = await self._store.get(client_id, req.transaction_id)
        if existing is not None and existing.state is State.COMPLETED:
            if existing.fingerprint != fp:
                raise conflict()
            return self._replay(existing)
        original = None
        if req.transaction_type is TransactionType.REVERSAL:
            # One rule for every 0400 (docs/iso8583.md): it quotes the original's STAN, RRN and terminal, as our
            # own timeout reversals do, and spends no STAN of its own.
            original = await original_for(self._store, client_id, req)
            stan, rrn = original.stan, original.rrn
        else:
            stan, rrn = await self._store.next_ids()
        now = time.time()
        key = transaction_key(client_id, req.transaction_id)
        acq_req = build_acquirer_request(
            req,
            icc,
            card,
            stan=stan,
            rrn=rrn,
            now=now,
            key=key,
            original=original_data(client_id, original) if original is not None else None,
        )
        # The connector fixes now what recovery and reversals must quote as sent, whatever the config says later.
        acq_req = self._connector.prepare(acq_req)
        record = TransactionRecord(
            client_id=client_id,
            transaction_id=req.transaction_id,
            fingerprint=fp,
            transaction_type=req.transaction_type.value,
            original_transaction_id=req.original_transaction_id,
            amount=req.amount,
            currency=req.currency,
            merchant_id=req.merchant_id,
            terminal_id=req.terminal_id,
            masked_pan=card.masked_pan if card else None,
            # A REVERSAL carries its original's tap, if any: its own key is its original (held by the claim).
            card_key=self._card_keys.key(client_id, card) if original is None else b"",
            emv_redacted=emv.redact(icc) if icc else b"",
            stan=stan,
            rrn=rrn,
            transmission_datetime=acq_req.transmission_datetime,
            acquirer_mti=acq_req.mti,
            sealed_request=self._seal(acq_req, client_id),
            created_at=now,
            events=[Event(now, "received"), Event(now, "claimed", f"stan={stan} rrn={rrn}")],
        )
        for _ in range(_CLAIM_ATTEMPTS):
            # Shielded from the claim on: a client hanging up while the claim commits must not leave a PENDING
            # record that this live process never sends (its resubmissions would wait on us forever).
            with trio.CancelScope(shield=True):
                claim = await self._store.claim(record)
                if claim.outcome is ClaimOutcome.NEW:
                    try:
                        _crash_point("after_pending")
                        return await self._authorize(claim.record)
                    except Exception:
                        self._store.abandon(client_id, req.transaction_id)
                        raise
            answer = await self._on_claim(claim)
            if answer is not None:
                return answer
        raise Problem(
            503,
            "busy",
            "Transaction busy",
            "transaction is being recovered by another worker; retry",
            headers={"Retry-After": "1"},
        )

    async def _on_claim(self, claim: Claim) -> Answer | None:
        """Act on a claim that someone else made first; None means 'claim again' (it changed under us)."""
        rec = claim.record
        match claim.outcome:
            case ClaimOutcome.REPLAY:
                return self._replay(rec)
            case ClaimOutcome.CONFLICT:
                raise conflict()
            case ClaimOutcome.DUPLICATE_CARD:
                raise duplicate_card(rec.transaction_id)
            case ClaimOutcome.ORIGINAL_REFUSED:
                assert claim.refusal is not None
                raise refusal_problem(claim.refusal, rec)  # rec: the original (the claim itself if UNKNOWN)
            case ClaimOutcome.IN_FLIGHT:
                with trio.move_on_after(self._wait_for_owner):
                    try:
                        done = await self._store.wait_completed(rec.client_id, rec.transaction_id)
                    except OwnerDied:
                        return None
                    return self._replay(done)
                raise Problem(
                    503,
                    "in-progress",
                    "Transaction in progress",
                    "the first attempt of this transaction is still being processed; retry",
                    headers={"Retry-After": "2"},
                )
            case ClaimOutcome.ORPHANED:
                with trio.CancelScope(shield=True):
                    taken = await self._store.take_over(rec.client_id, rec.transaction_id, rec.owner)
                    if taken is None:
                        return None
                    try:
                        return await self._recover(taken)
                    except Exception:
                        self._store.abandon(rec.client_id, rec.transaction_id)
                        raise
        return None  # NEW is handled by the caller

    # ---- the three ways to an answer ---------------------------------------------------------------

    def _fence(self, rec: TransactionRecord) -> ClaimFence:
        """A reversal queued for this claim is written only while the claim is still ours (acquirer.types)."""
        return ClaimFence(rec.client_id, rec.transaction_id, self._store.owner_id)

    async def _authorize(self, rec: TransactionRecord) -> Answer:
        acq_req = self._unseal(rec)
        sent_at = time.time()
        t0 = trio.current_time()
        sent: tuple[Event, ...] = (Event(sent_at, "sent", rec.acquirer_mti),)  # the timeline says so only if so
        try:
            self._check_guard()
            resp = await self._connector.send(acq_req, fence=self._fence(rec))
            outcome = "approved" if resp.response_code in APPROVED_CODES else "declined"
            last = Event(time.time(), "answered", resp.response_code)
            if acq_req.kind is MessageKind.REVERSAL and resp.response_code in REVERSAL_NOT_ACKNOWLEDGED:
                resp, outcome = await self._forward_unacknowledged(rec, acq_req, resp.response_code)
        except RequestNotEncodable as e:
            return await self._refuse(rec, e)
        except LeaseExpired as e:
            raise fencing.lease_expired(rec, e) from None
        except AcquirerUnavailable as e:
            log.warning("acquirer_unavailable", transaction_id=rec.transaction_id, stan=rec.stan, reason=str(e))
            if acq_req.kind is MessageKind.REVERSAL:
                # A reversal is owed whatever the link's state: store and forward it, never drop it.
                await self._connector.queue_reversal(
                    acq_req, reason=f"acquirer unavailable: {e}", fence=self._fence(rec)
                )
                resp, outcome = AcquirerResponse(response_code="00"), STORED_FOR_FORWARDING
            else:
                resp, outcome = _our_decline(), "unavailable-declined"
            sent, last = (), Event(sent_at, "not-sent", str(e))
        except OutcomeUnknown as e:
            # The connector queued a reversal before raising: the outcome is now 'reversed'.
            log.warning("acquirer_outcome_unknown", transaction_id=rec.transaction_id, stan=rec.stan, reason=str(e))
            if acq_req.kind is MessageKind.REVERSAL:
                resp, outcome = AcquirerResponse(response_code="00"), STORED_FOR_FORWARDING
            else:
                resp, outcome = _our_decline(), "timeout-reversed"
            last = Event(time.time(), "no-answer", str(e))
        acquirer_seconds = trio.current_time() - t0
        _crash_point("after_acquirer")
        return await self._finish(rec, resp, outcome, (*sent, last), acquirer_seconds)

    async def _recover(self, rec: TransactionRecord) -> Answer:
        """A previous owner died between PENDING and COMPLETED: ask the acquirer what happened."""
        acq_req = self._unseal(rec)
        log.warning("recovering_orphan", transaction_id=rec.transaction_id, stan=rec.stan, dead_owner=rec.owner)
        t0 = trio.current_time()
        if await self._connector.reversal_recorded(acq_req):
            # The dead owner timed out and reversed it before dying: that is the outcome, whatever an
            # inquiry would say about the original authorization.
            if acq_req.kind is MessageKind.REVERSAL:
                resp, outcome = AcquirerResponse(response_code="00"), STORED_FOR_FORWARDING
            else:
                resp, outcome = _our_decline(), "timeout-reversed"
            events = (Event(time.time(), "recovered", outcome),)
            return await self._finish(rec, resp, outcome, events, trio.current_time() - t0)
        with trio.move_on_after(self._link_wait):  # after a restart the link may not be signed on yet: an
            await self._connector.wait_ready()  # inquiry without it would reverse an approval it could recover
        try:
            self._check_guard()
            found = await self._connector.inquire(acq_req)
        except RequestNotEncodable as e:
            return await self._refuse(rec, e)
        except LeaseExpired as e:
            raise fencing.lease_expired(rec, e) from None
        except (AcquirerUnavailable, OutcomeUnknown) as e:
            log.warning("inquiry_failed", transaction_id=rec.transaction_id, reason=str(e))
            found = None
        if (
            found is not None
            and acq_req.kind is MessageKind.REVERSAL
            and found.response_code in REVERSAL_NOT_ACKNOWLEDGED
        ):
            resp, outcome = await self._forward_unacknowledged(rec, acq_req, found.response_code)
        elif found is not None:
            outcome = "recovered-" + ("approved" if found.response_code in APPROVED_CODES else "declined")
            resp = found
        else:
            # Unknown outcome: reverse (the original may yet arrive late) and decline. Never authorize twice.
            await self._connector.queue_reversal(
                acq_req, reason="orphaned: outcome unknown after crash", fence=self._fence(rec)
            )
            if acq_req.kind is MessageKind.REVERSAL:
                # The queued message is this reversal itself, forwarded until acknowledged: as in _authorize,
                # it counts as done (a 91 here would let a second reversal of the original through).
                resp, outcome = AcquirerResponse(response_code="00"), STORED_FOR_FORWARDING
            else:
                resp, outcome = _our_decline(), "orphan-reversed"
        events = (Event(time.time(), "recovered", outcome),)
        return await self._finish(rec, resp, outcome, events, trio.current_time() - t0)

    async def _forward_unacknowledged(
        self, rec: TransactionRecord, acq_req: AcquirerRequest, code: str
    ) -> tuple[AcquirerResponse, str]:
        """A reversal answered 91/96 reversed nothing yet (spec.REVERSAL_NOT_ACKNOWLEDGED): store and forward it
        (repeated as 0401 until acknowledged), and count it done, as when the link is down."""
        await self._connector.queue_reversal(
            acq_req, reason=f"reversal answered {code}: not acknowledged", fence=self._fence(rec)
        )
        return AcquirerResponse(response_code="00"), STORED_FOR_FORWARDING

    async def _refuse(self, rec: TransactionRecord, e: RequestNotEncodable) -> Answer:
        log.error("request_not_encodable", transaction_id=rec.transaction_id, stan=rec.stan, reason=str(e))
        done = not_encodable(e)  # a bug made harmless: nothing was sent (refusal.py)
        fenced = await self._record(rec, done)
        if fenced is not None:
            return fenced
        return Answer(status=done.response_status, body=done.response_body, transaction_id=rec.transaction_id)

    def _replay(self, rec: TransactionRecord) -> Answer:
        self.replays.note(rec.client_id, rec.transaction_id)  # its timeline entry, written in a batch
        return Answer(
            transaction_id=rec.transaction_id,
            status=rec.response_status,
            body=rec.response_body,
            replayed=True,
            outcome=rec.outcome,
            response_code=rec.response_code,
            stan=rec.stan,
            rrn=rec.rrn,
        )

    async def _finish(
        self,
        rec: TransactionRecord,
        resp: AcquirerResponse,
        outcome: str,
        events: tuple[Event, ...],
        acquirer_seconds: float,
    ) -> Answer:
        code = resp.response_code
        approved = code in APPROVED_CODES
        try:
            response_emv = emv.build_response_emv(code, resp.icc_data)
        except emv.TLVError:
            # The issuer's field 55 is malformed: still answer (the authorization happened), with 8A alone.
            log.warning("issuer_emv_malformed", transaction_id=rec.transaction_id, stan=rec.stan)
            response_emv = emv.build_response_emv(code, b"")
        body = encode_response(
            TransactionResponse(
                transaction_id=rec.transaction_id,
                response_code=code,
                approved=approved,
                authorisation_code=resp.authorisation_code,
                rrn=rec.rrn,
                stan=rec.stan,
                emv_data=response_emv.hex().upper(),
                message=response_message(code),
            )
        )
        completion = Completion(
            response_status=200,
            response_body=body,
            response_code=code,
            approved=approved,
            authorisation_code=resp.authorisation_code,
            outcome=outcome,
            events=(*events, Event(time.time(), "completed", outcome)),
        )
        # For a REVERSAL the store marks (or releases) its original in this same step (store.reversals.settle).
        fenced = await self._record(rec, completion)
        if fenced is not None:
            return fenced
        _crash_point("after_completed")
        return Answer(
            transaction_id=rec.transaction_id,
            status=200,
            body=body,
            outcome=outcome,
            response_code=code,
            stan=rec.stan,
            rrn=rec.rrn,
            acquirer_seconds=acquirer_seconds,
        )

    # ---- a lease that ran out (docs/postgres.md "Leases and fencing") ---------------------------------

    def _check_guard(self) -> None:
        """The store's send guard, for any connector (the built-in ones check it again at the write itself)."""
        if not self._store.send_guard.may_send():
            raise LeaseExpired("not sent: this worker's store lease may have run out", sent=False)

    async def _record(self, rec: TransactionRecord, completion: Completion) -> Answer | None:
        """Complete; None once recorded, else (fenced: taken over, or our lease ran out) the answer to give."""
        try:
            await self._store.complete(rec.client_id, rec.transaction_id, completion)
        except LeaseLost:
            current = await fencing.after_fenced(self._store, self._connector, rec, completion, self._unseal)
            if current is None:
                raise fencing.handed_over() from None
            return self._replay(current)
        return None

    # ---- helpers -----------------------------------------------------------------------------------

    def _seal(self, acq_req: AcquirerRequest, client_id: str) -> bytes:
        return self._sealer.seal(_request_codec.encode(acq_req), _aad(client_id, acq_req))

    def _unseal(self, rec: TransactionRecord) -> AcquirerRequest:
        if rec.sealed_request is None:
            raise RuntimeError(f"PENDING transaction {rec.transaction_id!r} has no sealed request")
        plain = self._sealer.open(rec.sealed_request, _aad_for_record(rec))
        return _request_decoder.decode(plain)


def _aad(client_id: str, acq_req: AcquirerRequest) -> bytes:
    return f"{client_id}\0{acq_req.stan}\0{acq_req.rrn}".encode()


def _aad_for_record(rec: TransactionRecord) -> bytes:
    return f"{rec.client_id}\0{rec.stan}\0{rec.rrn}".encode()


def _our_decline() -> AcquirerResponse:
    return AcquirerResponse(response_code=ISSUER_UNAVAILABLE)
