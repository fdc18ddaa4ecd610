"""The JSON contract as pydantic models: the same fields and limits as python/cloudlayer/openapi.json.

Patterns end in `$`: pydantic's default engine is Rust's regex crate, where `$` (without multiline) is the
end of the text, so "TERM001\\n" is refused as it is by the host. PURCHASE and REFUND only: the bench
sends no REVERSAL, and a baseline that accepted one without implementing it would answer a made-up decline.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic.alias_generators import to_camel

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class TransactionRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    transaction_id: Identifier
    transaction_type: Literal["PURCHASE", "REFUND"]
    amount: Annotated[StrictInt, Field(ge=1, le=999_999_999_999)]
    currency: Annotated[str, Field(pattern=r"^[0-9]{3}$")]
    merchant_id: Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[\x20-\x7e]+$")]
    terminal_id: Annotated[str, Field(min_length=1, max_length=8, pattern=r"^[\x20-\x7e]+$")]
    pos_entry_mode: Annotated[str, Field(pattern=r"^[0-9]{2,3}$")]
    emv_data: Annotated[str, Field(min_length=2, max_length=2048, pattern=r"^(?:[0-9A-Fa-f]{2})+$")]
    pin_block: Annotated[str | None, Field(pattern=r"^(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})$")] = None
    local_date_time: Annotated[
        str | None,
        Field(pattern=r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?$"),
    ] = None

    @field_validator("local_date_time")
    @classmethod
    def _real_date(cls, value: str | None) -> str | None:
        if value is not None:
            datetime.fromisoformat(value[:19])  # ValueError -> 422 naming the field
        return value

    def __repr__(self) -> str:  # emvData and pinBlock are card data: keep them out of reprs and tracebacks
        return f"TransactionRequest(transaction_id={self.transaction_id!r})"


class TransactionResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    transaction_id: str
    response_code: str
    approved: bool
    authorisation_code: str | None
    rrn: str
    stan: str
    emv_data: str
    message: str


APPROVED_CODES = frozenset({"00", "08", "10", "11"})
MESSAGES = {
    "00": "Approved",
    "05": "Do not honour",
    "08": "Honour with identification",
    "10": "Approved for partial amount",
    "11": "Approved (VIP)",
    "12": "Invalid transaction",
    "13": "Invalid amount",
    "14": "Invalid card number",
    "51": "Insufficient funds",
    "54": "Expired card",
    "55": "Incorrect PIN",
    "91": "Issuer or switch inoperative",
    "94": "Duplicate transmission",
    "96": "System malfunction",
}
