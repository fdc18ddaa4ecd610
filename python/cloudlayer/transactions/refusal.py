"""The answer stored when a claimed request turns out not to be encodable for the acquirer.

Decoding refuses every value the dialect cannot carry before anything is claimed (decoding.py, with bounds
from acquirer/spec.py; tests/test_dialect_properties.py holds them to it), so this is a bug made harmless:
nothing was sent, so there is no 'sent' event, no reversal and no made-up decline. The record is completed
with the problem decoding should have raised (422 naming the field), or a 500 when the value is one of ours,
and every resubmission gets that same answer.
"""

from __future__ import annotations

import time
from typing import Final

from ..acquirer.types import RequestNotEncodable
from ..http.problems import Problem
from ..store.types import Completion, Event
from .mapping import REQUEST_FIELD_OF

OUTCOME: Final = "refused-not-encodable"


def not_encodable(error: RequestNotEncodable) -> Completion:
    name = REQUEST_FIELD_OF.get(error.field)
    where = f"ISO 8583 field {error.field}" if error.field else "the frame"
    if name is not None:
        problem = Problem(
            422,
            "invalid-field",
            "Invalid request field",
            f"{name}: a value the acquirer message cannot carry ({where}); not sent",
            field=name,
        )
    else:
        problem = Problem(500, "internal-error", "Internal error", f"request not encodable ({where}); not sent")
    now = time.time()
    return Completion(
        response_status=problem.status,
        response_body=problem.body(),
        response_code="",
        approved=False,
        authorisation_code=None,
        outcome=OUTCOME,
        events=(Event(now, "not-sent", f"cannot encode {where}"), Event(now, "completed", OUTCOME)),
    )
