"""After a restart, recovery of an orphaned transaction waits (bounded) for a signed-on link before it asks
the acquirer, so an approval that can be recovered is recovered rather than reversed.

Real host (`cloudlayer serve`), real simulator process, a worker SIGKILLed by the test-only fault hook after
the acquirer answered; the restarted host's sign-on is answered late, and the resubmission arrives before it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow

SIGN_ON_DELAY = 2.0  # within the host's acquirer timeout (3 s), so the sign-on succeeds, late


def test_recovery_after_restart_waits_for_the_link_and_recovers_the_approval(
    tmp_path: Path, simulator: SimulatorProcess
) -> None:
    host = Host(tmp_path / "host", simulator)
    body = json.dumps(sample_purchase("recover-late-link", amount=8000)).encode()

    def post() -> httpx.Response:
        headers = {"Authorization": f"Bearer {host.token()}", "Content-Type": "application/json"}
        return httpx.post(host.url + "/transaction/process", content=body, headers=headers, timeout=60)

    try:
        host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": "after_acquirer"})
        with pytest.raises(httpx.TransportError):
            post()  # the acquirer approved; the worker died before storing the answer
        host.wait_replaced_worker()
        host.stop()
        simulator.set_faults(delay_seconds=SIGN_ON_DELAY, delay_next=1)  # the next answer is the sign-on
        host.start(wait_ready=False)
        ready = httpx.get(host.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and "acquirer" in ready.text  # the case under test: no link yet
        answer = post()
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["responseCode"] == "00" and doc["approved"] is True, doc
        assert post().content == answer.content  # and it is the stored answer from now on
        entry = simulator.entry("TERM0001", doc["stan"])
        # One authorization, recovered by one repeat (0201), never reversed.
        assert (entry["authorizations"], entry["repeats"], entry["reversal_messages"]) == (1, 1, 0), entry
        assert entry["reversed"] is False
        assert simulator.ledger()["totals"]["reversal_messages"] == 0
    finally:
        host.stop()
