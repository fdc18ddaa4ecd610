"""A dead acquirer link is found whatever acquirer.echo_interval and acquirer.timeout are, busy or idle.

Against the real simulator over TCP with its `drop_answers` fault (the socket stays open, nothing is answered).
The link used to count our own sends as signs of life: with traffic (transactions timing out one after another,
reversals retried from the SAF queue) the link never looked idle, no echo went out, and the dead link stayed
'up' for as long as the traffic lasted. With echo_interval equal to timeout that was a race, lost or won on
each timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cloudlayer.acquirer.types import AcquirerUnavailable, OutcomeUnknown
from test_acquirer_support import acquirer_config, request, running_connector, running_simulator, wait_until

SETTINGS = [(0.3, 0.3), (0.5, 0.5), (0.2, 0.5), (0.5, 0.2), (0.05, 0.4)]
SETTING_IDS = [f"echo{e}-timeout{t}" for e, t in SETTINGS]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize(("echo_interval", "answer_timeout"), SETTINGS, ids=SETTING_IDS)
async def test_a_silent_acquirer_drops_the_link_within_echo_interval_plus_timeout(
    tmp_path: Path, echo_interval: float, answer_timeout: float, busy: bool
) -> None:
    cfg = acquirer_config(echo_interval=echo_interval, timeout=answer_timeout, reconnect_min=0.05, reconnect_max=0.1)
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf", cfg) as connector:
        sent = 0

        async def traffic() -> None:
            # Mypinpad keeps sending: each purchase times out (a reversal is queued and retried) or, once the
            # link is down, is refused at once.
            nonlocal sent
            stan = 100
            while True:
                stan += 1
                sent += 1
                try:
                    await connector.send(request(stan))
                except (OutcomeUnknown, AcquirerUnavailable):
                    pass
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            sim.set_faults({"drop_answers": True})
            if busy:
                for _ in range(4):
                    nursery.start_soon(traffic)
            # Detection takes at most echo_interval (nothing heard) + timeout (the echo unanswered); the margin
            # is for a loaded machine, not for the protocol.
            await wait_until(lambda: not connector.ready, within=2 * (echo_interval + answer_timeout) + 2.0)
            nursery.cancel_scope.cancel()
        assert not busy or sent > 4
        sim.set_faults({"drop_answers": False})
        await wait_until(lambda: connector.ready, within=5.0)  # and it comes back when the acquirer does
        assert (await connector.send(request(99))).response_code == "00"


async def test_a_link_that_answers_traffic_sends_no_echo(tmp_path: Path) -> None:
    """Answers are signs of life: a busy, healthy link is not echoed every interval."""
    cfg = acquirer_config(echo_interval=0.3, timeout=1.0)
    async with running_simulator() as sim, running_connector(sim.port, tmp_path / "saf", cfg) as connector:
        before = sim.ledger.messages
        with trio.move_on_after(1.5):
            stan = 200
            while True:
                stan += 1
                assert (await connector.send(request(stan))).response_code == "00"
                await trio.sleep(0.05)
        transactions = stan - 200
        assert sim.ledger.messages - before <= transactions  # every message was a purchase: no 0800 among them
        assert connector.ready
