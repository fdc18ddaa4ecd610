"""Backups that restore: taken from a real host under load, restored into a fresh var dir, then `txn check`
passes, every completed transaction replays byte-identically and a queued reversal is still forwarded."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import lmdb
import pytest
import trio

from cloudlayer.samples import sample_purchase
from cloudlayer.store.integrity import iter_records
from cloudlayer.store.types import State
from conftest import ServerProcess, write_config
from txn_harness import CLOUDLAYER, Host, SimulatorProcess


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLOUDLAYER, *args, "--config", str(config)], capture_output=True, text=True, timeout=120, check=False
    )


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _saf_entries(config: Path) -> list[dict[str, object]]:
    done = cli(config, "saf", "list")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.mark.slow
def test_backup_under_load_restores_a_host_that_replays_and_forwards(tmp_path: Path) -> None:
    simulator = SimulatorProcess(tmp_path / "sim")
    # Reversals retry only after 30 s here, so the one we queue is still queued when the backup is taken.
    host = Host(
        tmp_path / "host",
        simulator,
        workers=2,
        acquirer_timeout=1.0,
        extra={"acquirer": {"saf_retry_min": 30.0, "saf_retry_max": 60.0}},
    )
    restored_server: ServerProcess | None = None
    try:
        host.start()
        host.wait_links_up(2)  # both workers signed on before the acquirer's answers are dropped
        token = host.token()
        # 1. A reversal queued: the acquirer's answer to a purchase and to its reversal are lost.
        simulator.set_faults(drop_answers=True)
        lost = httpx.post(
            host.url + "/transaction/process",
            json=sample_purchase("lost-1", amount=1500),
            headers=headers(token),
            timeout=30,
        )
        assert lost.json()["responseCode"] == "91"
        deadline = time.monotonic() + 20
        while not any(int(str(e["attempts"])) >= 1 for e in _saf_entries(host.config)) and time.monotonic() < deadline:
            time.sleep(0.2)
        simulator.set_faults(drop_answers=False)
        queued = _saf_entries(host.config)
        assert len(queued) == 1 and int(str(queued[0]["attempts"])) >= 1

        # 2. Load, and a backup in the middle of it.
        answers, (started, ended) = trio.run(_load_with_backup, host, token, tmp_path)
        during = [t for *_, t in answers.values() if started <= t <= ended]
        assert during, "no transaction completed while the backup ran: it was not taken under load"
        host.stop()
        simulator_sent_at_stop = simulator.entry("TERM0001", lost.json()["stan"])["reversal_messages"]

        # 3. The backup: every LMDB store, keys apart, digests in the manifest.
        manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
        assert {i["path"] for i in manifest["items"] if i["kind"] == "lmdb"} == {"store", "saf", "oauth/clients.lmdb"}
        keys = json.loads((tmp_path / "bk-keys" / "keys-manifest.json").read_text())
        assert {"keys/sealing.key", "oauth/keys.json", "oauth/pepper"} <= {f["path"] for f in keys["files"]}
        assert not any((tmp_path / "bk").rglob("sealing.key")) and not any((tmp_path / "bk").rglob("pepper"))

        # 4. Restore into a fresh var dir; txn check passes.
        fresh = tmp_path / "restored"
        restored_cfg = write_config(
            tmp_path / "restored.toml",
            {
                "server": {"tls": False, "workers": 1, "graceful_timeout": 5.0, "var_dir": str(fresh / "var")},
                "acquirer": {
                    "mode": "tcp",
                    "port": simulator.port,
                    "timeout": 1.0,
                    "saf_retry_min": 0.2,
                    "saf_retry_max": 1.0,
                },
                "metrics": {"enabled": False},
            },
        )
        done = cli(
            restored_cfg,
            "restore",
            str(tmp_path / "bk"),
            "--keys-dir",
            str(tmp_path / "bk-keys"),
            "--var",
            str(fresh / "var"),
        )
        assert done.returncode == 0, done.stderr
        check = cli(restored_cfg, "txn", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert cli(restored_cfg, "audit", "verify").returncode == 0
        restored_records = {r.transaction_id: r for r in iter_records(fresh / "var" / "store")}
        assert len(_saf_entries(restored_cfg)) == 1

        # 5. A host on the restored dir: same client, same keys; completed transactions replay byte for byte.
        restored_server = ServerProcess.cloudlayer_serve(restored_cfg)
        restored_server.wait_for_banner()
        url = restored_server.url
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        r = httpx.post(
            url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": host.client_id, "client_secret": host.client_secret},
            timeout=10,
        )
        r.raise_for_status()
        token2 = r.json()["access_token"]
        authorizations = simulator.ledger()["totals"]["authorizations"]
        checked = 0
        with httpx.Client(timeout=30) as client:
            for tid, (body, first, when) in answers.items():
                rec = restored_records.get(tid)
                if when > started and (rec is None or rec.state is not State.COMPLETED):
                    continue  # answered while the backup ran, after its snapshot of the store
                assert rec is not None and rec.state is State.COMPLETED, tid
                again = client.post(url + "/transaction/process", content=body, headers=headers(token2))
                assert again.headers.get("Idempotent-Replayed") == "true", tid
                assert again.content == first, tid
                checked += 1
        assert checked >= len([t for *_, t in answers.values() if t < started]) > 0
        assert simulator.ledger()["totals"]["authorizations"] == authorizations  # replays never reach the acquirer

        # 6. The queued reversal is forwarded by the restored host.
        assert cli(restored_cfg, "saf", "retry").returncode == 0
        deadline = time.monotonic() + 30
        while _saf_entries(restored_cfg) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _saf_entries(restored_cfg) == []
        assert simulator.entry("TERM0001", lost.json()["stan"])["reversal_messages"] > simulator_sent_at_stop
    finally:
        if restored_server is not None:
            restored_server.stop()
        host.stop()
        simulator.stop()


async def _load_with_backup(
    host: Host, token: str, tmp_path: Path
) -> tuple[dict[str, tuple[bytes, bytes, float]], tuple[float, float]]:
    """Four clients send purchases (bounded) while `cloudlayer backup` runs; what each got, and when."""
    answers: dict[str, tuple[bytes, bytes, float]] = {}  # id -> (body, answer, when answered)
    window: list[float] = []
    stop = trio.Event()
    enough = trio.Event()  # 40 answers in: the backup starts

    async def load(worker: int, client: httpx.AsyncClient) -> None:
        for i in range(400):
            if stop.is_set():
                return
            tid = f"load-{worker}-{i}"
            body = json.dumps(sample_purchase(tid, amount=1000 + i)).encode()
            r = await client.post(host.url + "/transaction/process", content=body, headers=headers(token))
            assert r.status_code == 200, r.text
            answers[tid] = (body, r.content, time.monotonic())
            if len(answers) >= 40:
                enough.set()

    async def take_backup() -> None:
        # Wait for answers, not for a fixed time: on a slow machine the first second may answer nothing,
        # and the test needs transactions completed before the backup (replayed) as well as during it.
        with trio.fail_after(60):
            await enough.wait()
        window.append(time.monotonic())
        done = await trio.to_thread.run_sync(
            lambda: cli(host.config, "backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "bk-keys"))
        )
        window.append(time.monotonic())
        assert done.returncode == 0, done.stderr
        await trio.sleep(0.5)
        stop.set()

    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(load, w, client)
        nursery.start_soon(take_backup)
    return answers, (window[0], window[1])


def _quiet_var(tmp_path: Path) -> Path:
    """A var dir made by the CLI alone (client, keys), plus what a later version might add."""
    config = write_config(tmp_path / "host.toml", {"server": {"tls": False}})
    assert cli(config, "client", "add", "mypinpad").returncode == 0
    assert cli(config, "keys", "rotate").returncode == 0
    assert cli(config, "keys", "rotate-sealing").returncode == 0
    return config


def test_backup_takes_every_lmdb_environment_and_key_file_it_finds(tmp_path: Path) -> None:
    config = _quiet_var(tmp_path)
    var = tmp_path / "var"
    # What a later version adds: a named database in an existing store, a new environment, a new key file.
    env = lmdb.open(str(var / "store"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"k1", b"v1", db=env.open_db(b"card_keys", txn=txn))
    env.close()
    (var / "newstore").mkdir()
    extra = lmdb.open(str(var / "newstore" / "env"), max_dbs=2)
    with extra.begin(write=True) as txn:
        txn.put(b"a", b"b")
    extra.close()
    (var / "keys" / "card.key").write_bytes(os.urandom(32))
    done = cli(config, "backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    items = {i["path"]: i for i in manifest["items"]}
    assert items["store"]["databases"]["card_keys"] == 1
    assert items["newstore/env"]["kind"] == "lmdb"
    assert (tmp_path / "keys" / "keys" / "card.key").read_bytes() == (var / "keys" / "card.key").read_bytes()
    assert not list((tmp_path / "bk").rglob("card.key"))
    fresh = tmp_path / "fresh"
    assert (
        cli(
            config, "restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys"), "--var", str(fresh)
        ).returncode
        == 0
    )
    env = lmdb.open(str(fresh / "store"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"k1", db=env.open_db(b"card_keys", txn=txn)) == b"v1"
    env.close()
    assert (fresh / "keys" / "card.key").read_bytes() == (var / "keys" / "card.key").read_bytes()
    assert oct((fresh / "keys" / "card.key").stat().st_mode & 0o777) == "0o600"


def test_keys_never_beside_the_data_and_restore_checks_before_writing(tmp_path: Path) -> None:
    config = _quiet_var(tmp_path)
    for dest, keys in (("bk", "bk"), ("bk", "bk/keys"), ("bk/inner", "bk"), ("var/bk", "keys")):
        done = cli(config, "backup", str(tmp_path / dest), "--keys-dir", str(tmp_path / keys))
        assert done.returncode == 1 and "cloudlayer:" in done.stderr, (dest, keys)
    assert cli(config, "backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys")).returncode == 0
    # A damaged backup: nothing is written.
    data = tmp_path / "bk" / "data" / "oauth" / "clients.lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    done = cli(
        config, "restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys"), "--var", str(tmp_path / "r1")
    )
    assert done.returncode == 1 and "digest" in done.stderr
    assert not (tmp_path / "r1").exists() or not any(p.name != "host.lock" for p in (tmp_path / "r1").rglob("*"))
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    # Keys of another backup.
    assert cli(config, "backup", str(tmp_path / "bk2"), "--keys-dir", str(tmp_path / "keys2")).returncode == 0
    done = cli(
        config, "restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys2"), "--var", str(tmp_path / "r2")
    )
    assert done.returncode == 1 and "keys of backup" in done.stderr
    # Existing data is never overwritten.
    done = cli(
        config, "restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys"), "--var", str(tmp_path / "var")
    )
    assert done.returncode == 1 and "already exists" in done.stderr


def test_restore_refuses_a_running_hosts_var_dir(tmp_path: Path, server_processes: list[ServerProcess]) -> None:
    config = _quiet_var(tmp_path)
    assert cli(config, "backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys")).returncode == 0
    target = tmp_path / "target"
    running = write_config(
        tmp_path / "running.toml", {"server": {"tls": False, "var_dir": str(target)}, "acquirer": {"mode": "simulator"}}
    )
    server = ServerProcess.cloudlayer_serve(running)
    server_processes.append(server)
    server.wait_for_banner()
    deadline = time.monotonic() + 30
    while not (target / "oauth" / "pepper").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pepper = (target / "oauth" / "pepper").read_bytes()
    done = cli(config, "restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "keys"), "--var", str(target))
    assert done.returncode == 1 and "a host is running" in done.stderr
    assert (target / "oauth" / "pepper").read_bytes() == pepper != (tmp_path / "keys" / "oauth" / "pepper").read_bytes()
