"""The simulator as a separate process (`cloudlayer simulator`) and the independent peer in both directions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import trio

from iso_peer import PeerAcquirer, peer_request
from test_acquirer_support import request, running_connector


def _purchase(stan: str, amount: int) -> dict[str, str]:
    return {
        "t": "0200",
        "3": "000000",
        "4": f"{amount:012d}",
        "7": "1126120000",
        "11": stan,
        "12": "120000",
        "13": "1126",
        "22": "071",
        "32": "123456",
        "37": f"{int(stan):012d}",
        "41": "PEERTERM",
        "42": "MERCHANT0000001",
        "49": "978",
        "2": "4761739001010119",
        "55": "9F02060000000010009F2701",
    }


async def test_connector_interoperates_with_the_independent_peer(tmp_path: Path) -> None:
    peer = PeerAcquirer()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        async with running_connector(port, tmp_path / "saf") as connector:
            responses = []

            async def one(stan: int) -> None:
                responses.append((stan, await connector.send(request(stan))))

            async with trio.open_nursery() as senders:
                for stan in range(1, 51):
                    senders.start_soon(one, stan)
            repeat = await connector.inquire(request(1))
        nursery.cancel_scope.cancel()
    assert all(r.stan == f"{stan:06d}" and r.authorisation_code == "PEER01" for stan, r in responses)
    assert len(responses) == 50
    assert repeat is not None and repeat.response_code == "00"
    assert ("0800", peer.received[0][1], "") == peer.received[0]  # sign-on first
    assert ("0201", "000001", "TERM0001") in peer.received


async def test_simulator_process_answers_the_peer_and_exposes_ledger_and_faults(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text('[simulator]\nadmin_bind = "127.0.0.1:0"\n[simulator.latency]\nfixed_ms = 0\n')
    argv = [sys.executable, "-m", "cloudlayer.cli", "simulator", "--config", str(config), "--bind", "127.0.0.1:0"]
    proc = await trio.to_thread.run_sync(lambda: subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    try:
        assert proc.stdout is not None
        line = ""
        with trio.fail_after(10):
            while not line.startswith("simulator listening"):
                line = await trio.to_thread.run_sync(proc.stdout.readline)
        # "simulator listening on 127.0.0.1:PORT, admin http://127.0.0.1:ADMIN/ledger"
        port = int(line.split(",")[0].rsplit(":", 1)[1])
        admin = line.strip().split("admin ")[1].removesuffix("/ledger")
        approved = await peer_request("127.0.0.1", port, _purchase("000001", 1000))
        declined = await peer_request("127.0.0.1", port, _purchase("000002", 1051))
        repeat = await peer_request("127.0.0.1", port, {**_purchase("000001", 1000), "t": "0201"})
        unknown = await peer_request("127.0.0.1", port, {**_purchase("000003", 1000), "t": "0201"})
        async with httpx.AsyncClient() as client:
            faults = (await client.post(f"{admin}/faults", json={"drop_next": 1})).json()
            bad = await client.post(f"{admin}/faults", json={"drop_next": "many"})
            ledger = (await client.get(f"{admin}/ledger")).json()
    finally:
        proc.terminate()
        await trio.to_thread.run_sync(proc.wait)
    assert approved["t"] == "0210" and approved["39"] == "00" and len(approved["38"]) == 6
    assert "2" not in approved  # the PAN is never echoed
    assert declined["39"] == "51"
    assert (repeat["39"], repeat["38"]) == ("00", approved["38"])
    assert unknown["39"] == "25"
    assert faults["drop_next"] == 1 and bad.status_code == 400
    tx = ledger["transactions"]["PEERTERM:000001"]
    assert (tx["authorizations"], tx["repeats"], tx["rrn"]) == (1, 1, "000000000001")
    assert ledger["by_rrn"]["000000000002"] == "PEERTERM:000002"
    assert ledger["transactions"]["PEERTERM:000003"]["authorizations"] == 0
