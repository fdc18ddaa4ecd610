"""The simulator's ledger: what it saw, per transaction (terminal + STAN of the original), and its answers."""

from __future__ import annotations

from typing import Any

import msgspec

from .codec import Message


class LedgerEntry(msgspec.Struct, kw_only=True):
    terminal_id: str
    stan: str
    rrn: str = ""
    amount: int = 0
    mti: str = ""  # MTI of the original authorization/financial message
    response_code: str = ""
    authorizations: int = 0  # originals (0100/0200) received: more than 1 means a double authorization
    repeats: int = 0  # 0101/0201/0401 received
    reversals: int = 0  # effective reversals (the first 0400/0401 that undid it): 0 or 1
    reversal_messages: int = 0  # every 0400/0401 received for it
    reversed: bool = False
    answer: Message | None = None  # the answer to the original, replayed for a repeat
    reversal_answer: Message | None = None


class Ledger:
    """In memory; share one object across simulator restarts in a test to keep the history."""

    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}
        self.by_rrn: dict[str, str] = {}
        self.messages = 0

    @staticmethod
    def key(terminal_id: str, stan: str) -> str:
        return f"{terminal_id}:{stan}"

    def entry(self, terminal_id: str, stan: str) -> LedgerEntry:
        k = self.key(terminal_id, stan)
        e = self.entries.get(k)
        if e is None:
            e = self.entries[k] = LedgerEntry(terminal_id=terminal_id, stan=stan)
        return e

    def get(self, terminal_id: str, stan: str) -> LedgerEntry | None:
        return self.entries.get(self.key(terminal_id, stan))

    def snapshot(self) -> dict[str, Any]:
        """The JSON served at GET /ledger: counts only, no card data."""
        tx: dict[str, dict[str, Any]] = {
            k: {
                "terminal_id": e.terminal_id,
                "stan": e.stan,
                "rrn": e.rrn,
                "amount": e.amount,
                "mti": e.mti,
                "response_code": e.response_code,
                "authorizations": e.authorizations,
                "repeats": e.repeats,
                "reversals": e.reversals,
                "reversal_messages": e.reversal_messages,
                "reversed": e.reversed,
            }
            for k, e in self.entries.items()
        }
        totals = {
            name: sum(int(t[name]) for t in tx.values())
            for name in ("authorizations", "repeats", "reversals", "reversal_messages")
        }
        totals["messages"] = self.messages
        return {"transactions": tx, "by_rrn": dict(self.by_rrn), "totals": totals}
