"""Sealing key rotation: new data under the new key, old blobs open until nothing uses their key, then the key
is dropped; a running host picks up a rotation without a restart; the pre-rotation raw key file still works."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudlayer.config import load_config
from cloudlayer.samples import sample_purchase
from cloudlayer.sealing import Sealer, SealError, blob_kid
from cloudlayer.sealing.commands import retire_unused
from cloudlayer.sealing.ring import LEGACY_KID, read_ring, rotate
from cloudlayer.store.integrity import iter_records
from txn_harness import CLOUDLAYER, Host, SimulatorProcess


def test_rotation_seals_new_data_with_the_new_key_and_still_opens_the_old(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sealing.key"
    sealer = Sealer.from_file(path)
    old_kid = sealer.active_kid
    old_blob = sealer.seal(b"pending request", b"ctx")
    assert blob_kid(old_blob) == old_kid
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    _, new_kid = rotate(path)
    other_worker = Sealer.from_file(path)  # a worker started after the rotation
    new_blob = other_worker.seal(b"next request", b"ctx")
    assert blob_kid(new_blob) == new_kid != old_kid
    assert other_worker.open(old_blob, b"ctx") == b"pending request"
    # The first worker opens the new blob at once (an unknown kid makes it reload) ...
    assert sealer.open(new_blob, b"ctx") == b"next request"
    # ... and seals with the new key within a second.
    time.sleep(1.1)
    assert blob_kid(sealer.seal(b"x", b"ctx")) == new_kid
    with pytest.raises(SealError):
        sealer.open(new_blob, b"other context")
    tampered = bytearray(new_blob)
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        sealer.open(bytes(tampered), b"ctx")
    with pytest.raises(SealError, match="not in the sealing key ring"):
        sealer.open(new_blob[:4] + b"\x01" * 8 + new_blob[12:], b"ctx")


def test_a_raw_key_file_from_before_rotation_is_converted_and_its_blobs_open(tmp_path: Path) -> None:
    path = tmp_path / "sealing.key"
    key = os.urandom(32)
    path.write_bytes(key)
    nonce = os.urandom(12)
    legacy_blob = nonce + AESGCM(key).encrypt(nonce, b"queued reversal", b"k")  # the old format: no head
    sealer = Sealer.from_file(path)
    assert sealer.active_kid == LEGACY_KID
    assert sealer.open(legacy_blob, b"k") == b"queued reversal"
    doc = json.loads(path.read_bytes())
    assert base64.b64decode(doc["keys"][LEGACY_KID]["key"]) == key
    rotate(path)
    assert Sealer.from_file(path).open(legacy_blob, b"k") == b"queued reversal"


def test_retire_drops_only_unused_keys_past_the_grace(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text(f'[server]\nvar_dir = "{tmp_path / "var"}"\nsealing_retire_grace = 0.5\n')
    cfg = load_config(config)
    path = cfg.var_path(cfg.server.sealing_key_file)
    first = Sealer.from_file(path).active_kid
    rotate(path)
    dropped, kept = retire_unused(cfg)
    assert dropped == [] and "grace" in kept[first]
    time.sleep(0.6)
    dropped, kept = retire_unused(cfg)
    assert dropped == [first] and kept == {}
    assert first not in read_ring(path).keys


@pytest.mark.slow
def test_a_running_host_seals_with_a_rotated_key_and_the_old_key_goes_when_unused(tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path / "sim")
    host = Host(
        tmp_path / "host",
        simulator,
        acquirer_timeout=1.0,
        extra={"server": {"sealing_retire_grace": 1.0}, "acquirer": {"saf_retry_min": 30.0, "saf_retry_max": 60.0}},
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLOUDLAYER, *args, "--config", str(host.config)], capture_output=True, text=True, timeout=60, check=False
        )

    def hdrs(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    try:
        host.start()
        token = host.token()
        # A reversal queued under the first key (the acquirer's answers are lost).
        simulator.set_faults(drop_answers=True)
        lost = httpx.post(
            host.url + "/transaction/process",
            json=sample_purchase("seal-1", amount=1200),
            headers=hdrs(token),
            timeout=30,
        )
        assert lost.json()["responseCode"] == "91"
        simulator.set_faults(drop_answers=False)
        keys = json.loads(cli("keys", "list", "--json").stdout)
        old = next(k for k in keys if k["kind"] == "sealing" and k["active"])
        assert old["in_use"] == 1
        rotated = cli("keys", "rotate-sealing", "--json")
        assert rotated.returncode == 0, rotated.stderr
        new_kid = json.loads(rotated.stdout)["active"]
        assert json.loads(rotated.stdout)["kept"][old["kid"]].startswith("still seals 1")
        time.sleep(1.2)  # the worker's once-a-second look at the ring
        # A transaction in flight now is PENDING under the new key.
        simulator.set_faults(delay_seconds=0.8, delay_next=1)  # answered within the 1 s timeout, slowly
        trio.run(_pending_sealed_with, host, token, new_kid, tmp_path / "host" / "var" / "store")
        # The old key still opens the queued reversal: forwarded.
        assert cli("saf", "retry").returncode == 0
        deadline = time.monotonic() + 30
        while json.loads(cli("saf", "list").stdout) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(cli("saf", "list").stdout) == []
        # Nothing uses it any more: retired.
        retired = cli("keys", "retire-sealing", "--json")
        assert retired.returncode == 0 and json.loads(retired.stdout)["dropped"] == [old["kid"]]
        kids = {k["kid"] for k in json.loads(cli("keys", "list", "--json").stdout) if k["kind"] == "sealing"}
        assert kids == {new_kid}
        approved = httpx.post(
            host.url + "/transaction/process",
            json=sample_purchase("seal-3", amount=1000),
            headers=hdrs(token),
            timeout=30,
        )
        assert approved.json()["approved"]
    finally:
        host.stop()
        simulator.stop()


async def _pending_sealed_with(host: Host, token: str, kid: str, store: Path) -> None:
    """Send a purchase that the acquirer answers slowly and look at its PENDING record meanwhile."""
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: client.post(
                host.url + "/transaction/process",
                json=sample_purchase("seal-2", amount=1100),
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        for _ in range(100):
            await trio.sleep(0.02)
            recs = [r for r in iter_records(store) if r.transaction_id == "seal-2" and r.sealed_request]
            if recs:
                assert blob_kid(recs[0].sealed_request or b"") == kid
                return
        raise AssertionError("never saw seal-2 PENDING")
