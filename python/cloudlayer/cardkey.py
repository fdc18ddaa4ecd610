"""The card key: what identifies one EMV card transaction, whatever transactionId it is sent under.

An EMV card transaction is the card (PAN 5A + PAN sequence number 5F34) and its Application Transaction Counter
(9F36), which the card increments on every tap; its Application Cryptogram (9F26) seals it. The store holds a
second idempotency key over those, so that the same tap resubmitted under another transactionId is never sent
again. Without 9F36 the cryptogram stands in (a new tap makes a new one). Without a PAN, or with neither 9F36
nor 9F26, there is no card key and the transactionId alone decides, as before.

PCI DSS req. 3.5.1.1: a hash of the PAN must be keyed. This is HMAC-SHA256 with a 32-byte secret of ours
(server.card_key_file, 0600) over the client id too, so that two tenants never collide or learn of each
other's card transactions. The store sees 32 opaque bytes; `fingerprint()` is what operators are shown.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from .config import Config
from .emv import CardData
from .sealing import load_or_create_secret

KEY_BYTES: Final = 32
_VERSION: Final = b"cloudlayer-card-key-v1"


class CardKeys:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"card key secret must be {KEY_BYTES} bytes")
        # Keyed once: each card key then copies the inner/outer state (OpenSSL), about half the cost of
        # hmac.digest() from the raw secret on every call.
        self._hmac = hmac.new(secret, digestmod="sha256")

    @classmethod
    def from_file(cls, path: Path) -> CardKeys:
        """Load the secret, creating it (0600, parents 0700) on first use."""
        return cls(load_or_create_secret(path, KEY_BYTES))

    @classmethod
    def from_config(cls, cfg: Config) -> CardKeys:
        return cls.from_file(cfg.var_path(cfg.server.card_key_file))

    def key(self, client_id: str, card: CardData | None) -> bytes:
        """The 32-byte card key of this card transaction for this client, or b"" when there is none."""
        if card is None:
            return b""
        if card.atc is not None:
            counter_tag, counter = b"9F36", card.atc
        elif card.cryptogram is not None:
            counter_tag, counter = b"9F26", card.cryptogram
        else:
            return b""
        # Length-prefixed fields: no two different inputs give the same message.
        parts = (_VERSION, client_id.encode(), card.pan.encode(), (card.pan_sequence or "").encode(), counter_tag)
        h = self._hmac.copy()
        h.update(b"".join(len(p).to_bytes(2, "big") + p for p in (*parts, counter)))
        return h.digest()


def fingerprint(card_key: bytes) -> str:
    """A short, non-reversible name of a card key for operators (`txn show`): 8 hex digits of its SHA-256.
    It tells two records apart or together; it says nothing of the card."""
    if not card_key:
        return ""
    return hashlib.sha256(card_key).hexdigest()[:8]
