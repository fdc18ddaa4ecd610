"""Bodies for GET /healthz (the process answers) and GET /readyz (it can take transactions now).

Load balancers and orchestrators send traffic only to a ready instance: the store must accept writes
(a PENDING claim is durable before the acquirer sees a request) and the acquirer link must be up.
"""

from __future__ import annotations

import msgspec

CONTENT_TYPE = "application/json"


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    store_writable: bool
    acquirer_link_up: bool
    acquirer_reason: str = ""  # the connector's words for what is missing (e.g. "token endpoint failing")

    @property
    def ready(self) -> bool:
        return self.store_writable and self.acquirer_link_up


_LIVE_BODY = msgspec.json.encode({"status": "ok"})


def liveness() -> tuple[int, bytes]:
    """(status, JSON body) for /healthz: alive as long as the worker can answer at all."""
    return 200, _LIVE_BODY


def readiness(flags: Readiness) -> tuple[int, bytes]:
    """(status, JSON body) for /readyz: 200 when every check passes, else 503 naming the failing checks."""
    body = {
        "status": "ready" if flags.ready else "not_ready",
        "checks": {
            "store": "ok" if flags.store_writable else "not_writable",
            "acquirer": "up" if flags.acquirer_link_up else "down",
        },
    }
    if not flags.acquirer_link_up and flags.acquirer_reason:
        body["acquirer_reason"] = flags.acquirer_reason
    return (200 if flags.ready else 503), msgspec.json.encode(body)
