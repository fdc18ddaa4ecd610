"""Findings of the chaos suite, each pinned by a deterministic test: the crash that found it, reproduced."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from reliability.hostile_http import raw_exchange
from reliability.hosts import AttackedHost, SimulatorProcess

pytestmark = pytest.mark.slow


def test_simulator_survives_a_peer_reset_mid_frame(simulator: SimulatorProcess) -> None:
    """A host SIGKILLed mid-exchange resets its acquirer connection; that must end one connection, not the
    simulator (it did: the reset escaped the per-connection handler inside an ExceptionGroup)."""
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", simulator.port), timeout=5) as s:
            s.sendall(struct.pack(">H", 200) + b"0100")  # a frame header promising more than it sends
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    time.sleep(0.2)
    assert simulator.proc.poll() is None, "simulator died"
    assert simulator.ledger()["totals"]["messages"] == 0


def _post(host: AttackedHost, body: bytes, token: str) -> httpx.Response:
    return httpx.post(
        host.url + "/transaction/process",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )


def _time_out_crash_and_resubmit(
    tmp_path: Path, simulator: SimulatorProcess, transaction_id: str, restart_env: dict[str, str] | None = None
) -> tuple[httpx.Response, dict[str, Any]]:
    """A purchase whose answer comes late (timeout: reversal queued), the worker killed before COMPLETED, a
    restart (with `restart_env`), the resubmission; returns its answer and the simulator's ledger entry once
    the reversal queue has drained."""
    host = AttackedHost(tmp_path / "host", simulator, acquirer_timeout=0.5)
    body = json.dumps(sample_purchase(transaction_id, amount=1000)).encode()
    host.start(env={"CLOUDLAYER_TESTING": "1", "CLOUDLAYER_TESTING_CRASH_AT": "after_acquirer"})
    try:
        token = host.token()
        # Only the original's answer is late (past our timeout); a repeat later is answered at once.
        simulator.set_faults(delay_seconds=1.0, delay_next=1)
        with pytest.raises(httpx.TransportError):
            _post(host, body, token)
        host.wait_replaced_worker()
        host.stop()
        host.start(env=restart_env)
        answer = _post(host, body, host.token())
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 20
        while host.saf_depth() and time.monotonic() < deadline:
            time.sleep(0.2)
        return answer, simulator.entry("TERM0001", answer.json()["stan"])
    finally:
        host.stop()


def test_crash_after_timeout_reversal_is_not_answered_approved(tmp_path: Path, simulator: SimulatorProcess) -> None:
    """Timeout -> reversal queued (SAF) -> worker dies before COMPLETED. On resubmission the recovery sent a
    repeat (0101); the issuer answered it with the original approval; the host answered APPROVED while the
    queued reversal (delivered after the restart) cancelled the money: merchant told 'paid', nothing taken."""
    answer, entry = _time_out_crash_and_resubmit(tmp_path, simulator, "reversed-then-recovered")
    assert entry["authorizations"] == 1
    # Whatever the host chose, the two sides must agree: reversed <=> declined to Mypinpad.
    assert entry["reversed"] is (not answer.json()["approved"]), (entry, answer.json())


def test_bad_chunk_header_cannot_kill_the_host(tmp_path: Path, simulator: SimulatorProcess) -> None:
    """One unauthenticated request, repeated a few times, took the whole host down (seen within 1-9 tries)."""
    host = AttackedHost(tmp_path / "host", simulator)
    host.start()
    attack = b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    try:
        for _ in range(30):
            try:
                result = raw_exchange(host.port, attack, wait=2.0)
            except ConnectionRefusedError:
                pytest.fail("the host stopped listening")
            assert result.status is None or result.status < 500
        assert host.server is not None and host.server.proc.poll() is None
        assert httpx.get(host.url + "/healthz", timeout=5).status_code == 200
        # Not merely survived by replacing a dead worker: no worker died at all.
        assert "worker_exited" not in host.log_text()
    finally:
        host.stop()


def test_recovery_quotes_the_mti_that_was_sent_even_after_a_config_change(
    tmp_path: Path, simulator: SimulatorProcess
) -> None:
    """As above, but the operator switches acquirer.purchase_mti (0200 -> 0100) before the restart: recovery
    must still find the reversal queued for the 0200 that went out, and decline."""
    answer, entry = _time_out_crash_and_resubmit(
        tmp_path, simulator, "mti-changed", restart_env={"CLOUDLAYER_ACQUIRER_PURCHASE_MTI": '"0100"'}
    )
    assert answer.json()["responseCode"] == "91" and not answer.json()["approved"]
    assert entry["authorizations"] == 1 and entry["mti"] == "0200" and entry["reversed"] is True
    # Recovery knew from the SAF that it had reversed: it did not even ask the acquirer (no repeat).
    assert entry["repeats"] == 0
