"""What the contract accepts, the ISO 8583 dialect can carry: the inputs an independent client found that passed
the JSON contract but could not be encoded into our own 0200 (and were answered with a made-up 91) are refused
as 422 naming the field, over real sockets against the real host and simulator, before any claim, STAN or store
write; and a 2-digit posEntryMode reaches the wire as the document says."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer import emv
from cloudlayer.samples import SAMPLE_EMV_HEX, sample_purchase
from iso_peer import PeerAcquirer
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

pytestmark = pytest.mark.slow

PAN = "4761739001010119"
TRACK2 = f"{PAN}D27122011143804400000"  # 37 characters: the most field 35 holds


def emv_with(*replace: tuple[str, bytes | None], pad_to: int = 0) -> str:
    """The sample field 55 with some top-level tags replaced (None: removed), padded with a 9F7C object to
    `pad_to` bytes in all."""
    replacements = dict(replace)
    items: list[tuple[str, emv.EncodableValue]] = []
    for tag, value in emv.decode(SAMPLE_EMV_HEX):
        if tag in replacements:
            continue
        assert isinstance(value, bytes)
        items.append((tag, value))
    items += [(tag, value) for tag, value in replacements.items() if value is not None]
    data = emv.encode(items)
    if pad_to:
        n = pad_to - len(data) - 5  # 9F7C + 82 xx xx
        data += emv.encode([("9F7C", b"\x00" * n)])
        assert len(data) == pad_to
    return data.hex().upper()


def bcd(digits: str) -> bytes:
    return bytes.fromhex(digits + "F" * (len(digits) % 2))


# The inputs of issue 11, each with the field the problem must name.
SEEN: list[tuple[str, dict[str, Any], str]] = [
    ("pin block format 4 (16 bytes)", {"pinBlock": "0123456789ABCDEF" * 2}, "pinBlock"),
    ("emvData of 1000 bytes", {"emvData": emv_with(pad_to=1000)}, "emvData"),
    ("emvData of 1024 bytes", {"emvData": emv_with(pad_to=1024)}, "emvData"),
    ("5A of 20 digits", {"emvData": emv_with(("5A", bcd(PAN + "0000")))}, "emvData"),
    (
        "57 with an '=' separator (track 2 in ASCII)",
        {"emvData": emv_with(("5A", None), ("57", TRACK2.replace("D", "=").encode()))},
        "emvData",
    ),
    ("57 of 38 characters", {"emvData": emv_with(("57", bcd(TRACK2 + "1")))}, "emvData"),
    ("57 without expiry and service code", {"emvData": emv_with(("57", bcd(f"{PAN}D2712")))}, "emvData"),
    ("57 with a 20-digit PAN", {"emvData": emv_with(("5A", None), ("57", bcd(f"{PAN}0000D2712201")))}, "emvData"),
]


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("host"), simulator, acquirer_timeout=1.5)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def token(host: Host) -> str:
    return host.token()


def post(host: Host, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        host.url + "/transaction/process",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )


def stored(host: Host, transaction_id: str) -> bool:
    shown = subprocess.run(
        [CLOUDLAYER, "txn", "show", transaction_id, "--json", "--config", str(host.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return shown.returncode == 0


@pytest.mark.parametrize(("name", "change", "field"), SEEN, ids=[s[0] for s in SEEN])
def test_what_the_dialect_cannot_carry_is_a_422_naming_the_field_and_nothing_happens(
    host: Host, token: str, simulator: SimulatorProcess, name: str, change: dict[str, Any], field: str
) -> None:
    tid = "limit-" + "".join(c if c.isalnum() else "-" for c in name)
    before = post(host, token, sample_purchase(tid + "-before", amount=1000))
    assert before.status_code == 200, before.text
    messages = simulator.ledger()["totals"]["messages"]

    resp = post(host, token, {**sample_purchase(tid, amount=1000), **change})
    assert resp.status_code == 422, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc = resp.json()
    assert doc["field"] == field and doc["detail"].startswith(field + ":"), doc
    assert PAN not in resp.text and "2712201" not in resp.text  # never echoes card data
    assert not stored(host, tid)  # no claim, no record
    assert simulator.ledger()["totals"]["messages"] == messages  # nothing sent

    after = post(host, token, sample_purchase(tid + "-after", amount=1000))
    # No STAN was spent on the refused request: one worker hands them out in sequence.
    assert int(after.json()["stan"]) == int(before.json()["stan"]) + 1


def test_the_largest_field_55_and_track_2_are_carried(host: Host, token: str, simulator: SimulatorProcess) -> None:
    """The bounds themselves are inside: 999 bytes of ICC data and a 37-character track 2 reach the acquirer."""
    body = sample_purchase("limit-largest", amount=1000)
    body["emvData"] = emv_with(("57", bcd(TRACK2)), pad_to=999)
    resp = post(host, token, body)
    assert resp.status_code == 200 and resp.json()["approved"], resp.text
    assert simulator.entry("TERM0001", resp.json()["stan"])["authorizations"] == 1


async def test_a_two_digit_pos_entry_mode_reaches_the_wire_with_0_appended(tmp_path: Path) -> None:
    """Field 22 is PAN entry mode (2 digits) then PIN entry capability (1 digit): "07" goes out as 070."""
    peer = PeerAcquirer()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(peer.serve)
        host = Host(tmp_path / "host", _Port(port), acquirer_timeout=2.0)
        await trio.to_thread.run_sync(host.start)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                token = await trio.to_thread.run_sync(host.token)
                headers = {"Authorization": f"Bearer {token}"}
                for tid, mode in (("pos-2", "07"), ("pos-3", "071")):
                    body = {**sample_purchase(tid), "posEntryMode": mode}
                    resp = await client.post(host.url + "/transaction/process", json=body, headers=headers)
                    assert resp.status_code == 200, resp.text
        finally:
            await trio.to_thread.run_sync(host.stop)
        nursery.cancel_scope.cancel()
    sent = [m["22"] for m in peer.messages if m["t"] == "0200"]
    assert sent == ["070", "071"]


class _Port:
    """What Host needs of an acquirer: its port (here the independent peer's)."""

    def __init__(self, port: int) -> None:
        self.port = port
