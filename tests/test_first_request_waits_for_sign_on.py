"""A worker that has just started must not answer a made-up 91 because its link is still signing on: the first
request waits (bounded by acquirer.connect_timeout, within the acquirer timeout) for the sign-on, then is sent.
Seen with two workers: the first request of the second worker, a few milliseconds after start, was answered 91
by us while the acquirer was there all along. A link that was up and went down still answers at once.

Real parts: the connector over TCP to the simulator, whose sign-on answer is held back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cloudlayer.acquirer.types import AcquirerUnavailable
from test_acquirer_support import acquirer_config, request, running_connector, running_simulator, wait_until


async def test_a_request_before_the_first_sign_on_waits_for_it_and_is_sent(tmp_path: Path) -> None:
    async with running_simulator() as sim:
        sim.set_faults({"delay_seconds": 0.5, "delay_next": 1})  # the 0810 comes half a second late
        cfg = acquirer_config(timeout=3.0, connect_timeout=2.0)
        async with running_connector(sim.port, tmp_path / "saf", cfg, wait=False) as connector:
            assert not connector.ready
            response = await connector.send(request(101))
            assert response.response_code == "00"
            assert connector.ready


async def test_a_link_that_went_down_still_answers_at_once(tmp_path: Path) -> None:
    """The wait is for a worker that never signed on: a link lost later is an outage, answered without waiting
    (the bound below is far under the 3 s the wait would take; it keeps a regression from passing, not a timing)."""
    cfg = acquirer_config(timeout=3.0, connect_timeout=10.0, echo_interval=0.2, reconnect_min=30.0, reconnect_max=30.0)
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf", cfg) as connector:
        sim.set_faults({"drop_answers": True})  # the echo goes unanswered: the link is dropped
        await wait_until(lambda: not connector.ready, within=10.0)
        with trio.fail_after(2.0), pytest.raises(AcquirerUnavailable):
            await connector.send(request(102))
