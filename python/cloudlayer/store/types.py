"""The transaction store's contract: exactly-once claims, durable completion, lookups.

`transactions/flow.py` uses only this interface; `store/lmdb_store.py` is the embedded default and
another backend (e.g. PostgreSQL for several hosts) implements the same Protocol.

Durability promises every implementation keeps:
  - `claim` returns NEW only after the PENDING record is on disk (fsync'd).
  - `complete` returns only after the COMPLETED record with the exact response bytes is on disk.
  - `claim` is one atomic step for every key a transaction takes: its transactionId, its card key (the same
    card transaction under another transactionId is refused, DUPLICATE_CARD) and, for a REVERSAL, its original
    (checked by store.reversals.refusal and held, ORIGINAL_REFUSED otherwise); `complete` of a REVERSAL settles
    the hold on its original in the same step (store.reversals.settle). One effective reversal per original.
Records never hold a full PAN, track data or a PIN block: `sealed_request` is the only copy of the
acquirer request, encrypted (cloudlayer.sealing) and erased on completion.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import msgspec
import trio


class State(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"


class Event(msgspec.Struct, frozen=True, array_like=True):
    """One step of a transaction's timeline: received, claimed, sent, answered, reversed, replayed..."""

    at: float  # unix time
    what: str
    detail: str = ""


class TransactionRecord(msgspec.Struct, kw_only=True):
    client_id: str
    transaction_id: str
    fingerprint: bytes  # 32 bytes, from cloudlayer.emv.fingerprint
    state: State = State.PENDING
    owner: str = ""  # worker identity that holds the PENDING claim (see store.owner)
    transaction_type: str = ""
    original_transaction_id: str | None = None
    amount: int = 0
    currency: str = ""
    merchant_id: str = ""
    terminal_id: str = ""
    masked_pan: str | None = None  # 6+4 only
    card_key: bytes = b""  # 32 bytes from cloudlayer.cardkey (keyed HMAC of PAN, sequence, ATC), b"" if none
    # On an original: the transactionId of the REVERSAL holding it (while that one is PENDING) or that reversed
    # it (once COMPLETED with an effective outcome, store.reversals.effective). "" when not reversed.
    reversed_by: str = ""
    emv_redacted: bytes = b""  # cloudlayer.emv.redact() of the request's emvData
    stan: str = ""
    rrn: str = ""
    transmission_datetime: str = ""  # field 7 as sent (reversals and repeats quote it)
    acquirer_mti: str = ""
    sealed_request: bytes | None = None  # encrypted AcquirerRequest, only while PENDING
    response_status: int = 0  # HTTP status of the stored answer
    response_body: bytes = b""  # the exact bytes sent (and replayed)
    response_code: str = ""
    approved: bool = False
    authorisation_code: str | None = None
    outcome: str = ""  # approved | declined | reversed | timeout-declined | recovered ...
    created_at: float = 0.0
    completed_at: float = 0.0
    replays: int = 0
    events: list[Event] = msgspec.field(default_factory=list)


class ClaimOutcome(StrEnum):
    NEW = "NEW"  # PENDING stored durably for us: go on to the acquirer
    REPLAY = "REPLAY"  # COMPLETED with the same fingerprint: answer with record.response_body
    CONFLICT = "CONFLICT"  # same key, different fingerprint: refuse, never process
    IN_FLIGHT = "IN_FLIGHT"  # PENDING, owner alive: wait_completed() then replay
    ORPHANED = "ORPHANED"  # PENDING, owner dead: take_over() then recover
    # The record's card key is already held by another transactionId of this client (record is that one's):
    # refuse, never send. Nothing was written.
    DUPLICATE_CARD = "DUPLICATE_CARD"
    # A REVERSAL whose original may not be reversed (Claim.refusal says why; record is the original, or the
    # claimed record itself for UNKNOWN). Nothing was written.
    ORIGINAL_REFUSED = "ORIGINAL_REFUSED"


class OriginalRefusal(StrEnum):
    """Why a REVERSAL's original cannot be reversed (store.reversals.refusal decides; every backend the same)."""

    UNKNOWN = "UNKNOWN"  # no transaction with this id for this client
    IN_PROGRESS = "IN_PROGRESS"  # the original, or a reversal holding it, is still PENDING: retry
    IS_REVERSAL = "IS_REVERSAL"  # a reversal cannot be reversed
    ALREADY_REVERSED = "ALREADY_REVERSED"  # another transactionId reversed it (original.reversed_by)
    NOT_APPROVED = "NOT_APPROVED"  # nothing to reverse
    AMOUNT = "AMOUNT"  # more than the original's amount, or another currency
    TERMINAL = "TERMINAL"  # sent from another terminal than the original's


class Claim(msgspec.Struct, frozen=True):
    outcome: ClaimOutcome
    record: TransactionRecord
    refusal: OriginalRefusal | None = None  # with ORIGINAL_REFUSED only


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    response_status: int
    response_body: bytes
    response_code: str
    approved: bool
    authorisation_code: str | None
    outcome: str
    events: tuple[Event, ...] = ()


class StoreFull(Exception):
    """The store cannot grow any further (map at store.max_map_size_mb): an operator must act."""


class StoreUnavailable(Exception):
    """The store cannot be reached right now (a database server down or too slow): nothing was decided;
    the request may be retried (the host answers 503 with Retry-After)."""


class InvalidRecord(ValueError):
    """claim/complete/add_events refused bad input. The message names the field, never its value."""


class NotOwner(Exception):
    """complete() on a record that is not PENDING under our owner id (missing, completed, or taken over)."""


class LeaseLost(NotOwner):
    """complete() fenced: the record was taken over (its epoch moved on) or this owner's lease ran out, so the
    completion was not recorded. The record's current owner decides the outcome (docs/postgres.md)."""


class SendGuard(Protocol):
    """What a connector asks right before each write to the acquirer (docs/postgres.md "Leases and fencing").
    The store offers it: PostgreSQL's is its lease's local bound; LMDB (one host) always allows."""

    def may_send(self) -> bool: ...


class AlwaysSend:
    """The guard of a store that no other host can take a claim from (LMDB), or of a connector without a store."""

    def may_send(self) -> bool:
        return True


ALWAYS_SEND: SendGuard = AlwaysSend()


class OwnerDied(Exception):
    """wait_completed(): the PENDING record's owner died while we waited; claim again (-> ORPHANED)."""


class TransactionStore(Protocol):
    owner_id: str  # this worker's identity, written into the PENDING records it claims
    send_guard: SendGuard  # checked by the connector before every acquirer write

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer and the retention purger; runs in the app's nursery."""
        ...

    async def next_ids(self) -> tuple[str, str]:
        """A fresh (STAN, RRN) pair, unique across every worker sharing the store."""
        ...

    async def claim(self, record: TransactionRecord) -> Claim:
        """Atomically claim record's (client_id, transaction_id). NEW means the record (owner set to
        us) is durably PENDING; otherwise the existing record is returned unchanged."""
        ...

    async def complete(self, client_id: str, transaction_id: str, completion: Completion) -> TransactionRecord:
        """Durably mark COMPLETED with the exact response bytes; erases sealed_request."""
        ...

    async def add_events(self, client_id: str, transaction_id: str, *events: Event, replays: int = 0) -> None:
        """Append timeline events (and count `replays` more replays); batched with other writes."""
        ...

    async def wait_completed(self, client_id: str, transaction_id: str) -> TransactionRecord:
        """Wait until the record is COMPLETED (by any worker). Callers bound it with a cancel scope."""
        ...

    async def take_over(self, client_id: str, transaction_id: str, dead_owner: str) -> TransactionRecord | None:
        """Atomically move an orphaned PENDING record from dead_owner to us; None if someone else won."""
        ...

    def abandon(self, client_id: str, transaction_id: str) -> None:
        """This process gave up on a PENDING it owns (an error after the claim): treat it as orphaned, so that
        the next resubmission recovers it rather than waiting on an owner that is alive but will never finish."""
        ...

    def owner_alive(self, owner: str) -> bool: ...

    async def get(self, client_id: str, transaction_id: str) -> TransactionRecord | None: ...

    async def find_by_rrn(self, rrn: str) -> list[TransactionRecord]: ...

    async def find_by_terminal_stan(self, terminal_id: str, stan: str) -> list[TransactionRecord]: ...

    async def list_since(self, since: float, limit: int = 100) -> list[TransactionRecord]: ...

    async def purge(self, older_than: float) -> int:
        """Delete COMPLETED records completed before `older_than` (unix time); returns how many."""
        ...

    def writable(self) -> bool:
        """For /readyz: the writer is running and its last commit succeeded."""
        ...

    def map_usage(self) -> tuple[int, int] | None:
        """(bytes in use, the most it may use) for a store with a fixed-size map (the near-limit alert); None
        for a store without one. Blocking: call it in a thread."""
        ...

    def close(self) -> None: ...
