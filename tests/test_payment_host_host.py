"""The real host (`cloudlayer serve`, acquirer.kind = http) against the real payment host: a token endpoint that
fails shows in /readyz and declines fast without reversals, recovers by itself, and no secret reaches a log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from connector_kinds import Acquirer, start_acquirer
from payment_host_harness import SECRET
from txn_harness import Host

pytestmark = pytest.mark.slow


@pytest.fixture
def acquirer(tmp_path: Path) -> Iterator[Acquirer]:
    acq = start_acquirer("http", tmp_path / "acquirer")
    yield acq
    acq.stop()


def test_a_failing_token_endpoint_shows_in_readyz_declines_unsent_and_recovers(
    tmp_path: Path, acquirer: Acquirer
) -> None:
    sim = acquirer.simulator
    host = Host(tmp_path / "host", sim, acquirer_timeout=2.0, metrics=True, extra=acquirer.host_extra())
    host.start()
    try:
        token = host.token()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        url = host.url + "/transaction/process"
        assert httpx.post(url, json=sample_purchase("ok-1"), headers=headers, timeout=30).json()["approved"]
        sim.set_faults(token_error_next=1_000_000)
        sim.set_tokens(revoke_all=True)  # the next request meets a 401; its refresh fails, and keeps failing
        started = time.monotonic()
        declined = httpx.post(url, json=sample_purchase("no-token-1"), headers=headers, timeout=30).json()
        assert declined["responseCode"] == "91" and time.monotonic() - started < 2.0
        ready = httpx.get(host.url + "/readyz", timeout=5)
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["acquirer"] == "down"
        assert ready.json()["acquirer_reason"] == "token endpoint failing"
        metrics = httpx.get(host.metrics_url, timeout=5).text
        assert 'cloudlayer_acquirer_token_requests_total{outcome="error"}' in metrics
        sim.set_faults(token_error_next=0)
        deadline = time.monotonic() + 15
        while httpx.get(host.url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the connector did not recover"
            time.sleep(0.1)
        assert httpx.post(url, json=sample_purchase("ok-2"), headers=headers, timeout=30).json()["approved"]
        ledger = sim.ledger()["totals"]
        # The declined one never reached the host, so there was nothing to reverse.
        assert ledger["authorizations"] == 2 and ledger["reversal_messages"] == 0
    finally:
        host.stop()
    logs = host.log_text() + sim.log_path.read_text()
    assert SECRET not in logs
