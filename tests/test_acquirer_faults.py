"""Adversarial acquirer behaviour: the connector must survive it, and never leave an outcome unreversed."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.messages import build_request
from cloudlayer.acquirer.saf import SafQueue
from cloudlayer.acquirer.types import AcquirerRequest, MessageKind, OriginalData, OutcomeUnknown
from iso_peer import frame, read_frame
from test_acquirer_support import SEALER, acquirer_config, request, running_connector, running_simulator, wait_until


def saf_len(path: Path) -> int:
    q = SafQueue(path, SEALER)
    try:
        return len(q)
    finally:
        q.close()


class FloodingPeer:
    """Signs the host on, then (first connection only) floods it with 0800s and never reads its answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.sign_ons = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        # A tiny receive window, so the host's answers back up into its send buffer.
        listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(listeners[0].socket.getsockname()[1])

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        first = self.connections == 1
        buf = bytearray()
        sign_on = await read_frame(stream, buf)
        assert sign_on is not None and sign_on["70"] == "001"
        await stream.send_all(frame({"t": "0810", "7": sign_on["7"], "11": sign_on["11"], "70": "001", "39": "00"}))
        self.sign_ons += 1
        if not first:
            while await read_frame(stream, buf) is not None:
                pass
            return
        echo = {"t": "0800", "7": "1126120000", "11": "000001", "32": "12345", "70": "301"}
        try:
            while True:  # until the host gives up on this connection
                await stream.send_all(frame(echo) * 200)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def test_answering_the_acquirers_0800_on_a_stalled_link_drops_it_and_the_connector_survives(
    tmp_path: Path,
) -> None:
    peer = FloodingPeer()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        async with running_connector(port, tmp_path / "saf", acquirer_config(timeout=0.3)) as connector:
            # The host's 0810s stall (the peer never reads): the link is dropped, re-established, signed on.
            await wait_until(lambda: peer.sign_ons >= 2 and connector.ready, within=20)
        nursery.cancel_scope.cancel()


async def test_stopping_the_connector_with_requests_in_flight_still_queues_their_reversals(tmp_path: Path) -> None:
    outcomes: list[BaseException] = []

    async def send_unanswered(connector: Iso8583Connector, stan: int) -> None:
        with trio.CancelScope(shield=True):  # as the flow runs it
            try:
                await connector.send(request(stan, 9999))  # the simulator never answers this amount
            except Exception as e:
                outcomes.append(e)

    async with running_simulator() as sim:
        async with running_connector(sim.port, tmp_path / "saf", acquirer_config(timeout=5.0)) as connector:
            async with trio.open_nursery() as nursery:
                for stan in range(1, 51):
                    nursery.start_soon(send_unanswered, connector, stan)
                await wait_until(lambda: sim.ledger.snapshot()["totals"]["authorizations"] == 50)
                await connector.aclose()  # shutdown while the authorizations are on the wire
    assert len(outcomes) == 50
    assert all(isinstance(e, OutcomeUnknown) for e in outcomes), {repr(e) for e in outcomes}
    assert saf_len(tmp_path / "saf") == 50


def reversal_of(original: AcquirerRequest, stan: int) -> AcquirerRequest:
    """A reversal Mypinpad asked for: its own STAN, the original quoted in field 90 (as the flow builds it)."""
    return msgspec.structs.replace(
        request(stan, original.amount),
        kind=MessageKind.REVERSAL,
        icc_data=b"",
        original=OriginalData(mti="0200", stan=original.stan, transmission_datetime=original.transmission_datetime),
    )


async def test_a_timed_out_reversal_is_retried_as_a_repeat_0401_never_a_second_0400(tmp_path: Path) -> None:
    async with running_simulator() as sim:
        async with running_connector(sim.port, tmp_path / "saf") as connector:
            original = request(1)
            assert (await connector.send(original)).response_code == "00"
            sim.set_faults({"drop_next": 1})  # the 0400 goes through, its 0410 is lost
            with pytest.raises(OutcomeUnknown):
                await connector.send(reversal_of(original, 2))
            await wait_until(lambda: connector.reversals_acknowledged == 1)
    entry = sim.ledger.snapshot()["transactions"]["TERM0001:000001"]
    assert entry["reversal_messages"] == 2
    assert entry["repeats"] == 1  # the SAF's retry of an 0400 that already went out is its repeat


async def test_a_reversal_never_carries_or_stores_the_pin_block(tmp_path: Path) -> None:
    reversal = reversal_of(request(1), 2)
    assert reversal.pin_block is not None  # Mypinpad may send pinBlock with a REVERSAL
    assert "52" not in build_request(reversal, "0400", "12345")
    async with running_connector(1, tmp_path / "saf", wait=False) as connector:  # no acquirer needed
        await connector.queue_reversal(reversal, "test")
    q = SafQueue(tmp_path / "saf", SEALER)
    try:
        [item] = q.claim_due("test", 60.0)
    finally:
        q.close()
    assert item.request.pin_block is None
