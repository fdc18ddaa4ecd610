"""The audit log: one entry per admin command (the real CLI, as a subprocess), a hash chain that names the
first edited, removed, reordered or cut-off entry, appends atomic across processes, no secret in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlayer.audit.log import GENESIS, append
from cloudlayer.audit.verify import verify
from conftest import write_config
from txn_harness import CLOUDLAYER


def cli(config: Path, *args: str, actor: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--actor", actor] if actor else []
    return subprocess.run(
        [CLOUDLAYER, *args, "--config", str(config), *extra], capture_output=True, text=True, timeout=60, check=False
    )


def entries(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "host.toml", {"server": {"tls": False, "sealing_retire_grace": 0.0}})


def test_every_admin_command_leaves_exactly_one_entry(tmp_path: Path, config: Path) -> None:
    log = tmp_path / "var" / "audit" / "audit.jsonl"
    added = cli(config, "client", "add", "mypinpad", "--json", actor="change-4711")
    assert added.returncode == 0
    client_id, secret = json.loads(added.stdout)["client_id"], json.loads(added.stdout)["client_secret"]
    steps: list[tuple[tuple[str, ...], str, str, str | None]] = [
        (("client", "rotate-secret", client_id), "client rotate-secret", "ok", f"client:{client_id}"),
        (("client", "disable", client_id), "client disable", "ok", f"client:{client_id}"),
        (("client", "disable", "cl_nosuchclient"), "client disable", "failed", "client:cl_nosuchclient"),
        (("keys", "rotate"), "keys rotate", "ok", None),
        (("keys", "rotate-sealing"), "keys rotate-sealing", "ok", None),
        (("keys", "retire-sealing"), "keys retire-sealing", "ok", "sealing-keys"),
        (("saf", "retry"), "saf retry", "ok", None),
        (("client", "add"), "client add", "failed", None),  # argparse refuses it: still one failed entry
        (("backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "bk" / "keys")), "backup", "failed", None),
        (("backup", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "bk-keys")), "backup", "ok", None),
    ]
    for argv, action, outcome, obj in steps:
        before = len(entries(log))
        done = cli(config, *argv)
        assert (done.returncode == 0) == (outcome == "ok"), (argv, done.stderr)
        after = entries(log)
        assert len(after) == before + 1, argv
        last = after[-1]
        assert (last["action"], last["outcome"]) == (action, outcome), argv
        if obj is not None:
            assert last["object"] == obj
        assert last["user"] and last["host"] and str(last["time"]).endswith("Z")
    # Read-only commands leave nothing.
    count = len(entries(log))
    for argv in (("client", "list"), ("keys", "list"), ("saf", "list"), ("audit", "list"), ("audit", "verify")):
        assert cli(config, *argv).returncode == 0, argv
    assert len(entries(log)) == count
    restored = tmp_path / "restored"
    back = ("restore", str(tmp_path / "bk"), "--keys-dir", str(tmp_path / "bk-keys"), "--var", str(restored))
    assert cli(config, *back).returncode == 0
    assert len(entries(log)) == count  # the restore's entry went into the restored var dir's log ...
    restored_log = entries(restored / "audit" / "audit.jsonl")
    # ... after the history the backup holds (everything before the backup's own entry, written once it was done).
    assert restored_log[:-1] == entries(log)[:-1] and restored_log[-1]["action"] == "restore"
    assert verify(restored / "audit" / "audit.jsonl").ok
    first = entries(log)[0]
    assert first["action"] == "client add" and first["actor"] == "change-4711" and first["prev"] == GENESIS
    text = log.read_text()
    assert secret not in text and json.loads(added.stdout)["client_secret"] not in text
    for path in (tmp_path / "var" / "oauth").iterdir():  # no key or pepper bytes either
        if path.is_file() and path.suffix != ".lock":
            assert path.read_bytes()[:16].hex() not in text
    assert cli(config, "audit", "verify").returncode == 0
    listed = json.loads(cli(config, "audit", "list", "--json").stdout)
    assert [e["seq"] for e in listed] == list(range(1, count + 1))


def test_a_host_start_is_recorded_with_its_config_digest(tmp_path: Path, server_processes: list[object]) -> None:
    from cloudlayer.config import load_config
    from cloudlayer.server import config_digest
    from conftest import ServerProcess

    config = write_config(tmp_path / "host.toml", {"server": {"tls": False}, "acquirer": {"mode": "simulator"}})
    server = ServerProcess.cloudlayer_serve(config)
    server_processes.append(server)
    server.wait_for_banner()
    log = entries(tmp_path / "var" / "audit" / "audit.jsonl")
    assert [e["action"] for e in log] == ["host start"]
    detail = log[0]["detail"]
    assert isinstance(detail, dict)
    assert detail["config_digest"] == config_digest(load_config(config))
    server.stop()
    assert len(entries(tmp_path / "var" / "audit" / "audit.jsonl")) == 1  # one entry per start, none on stop
    missing = str(tmp_path / "missing.pem")
    bad = write_config(tmp_path / "bad.toml", {"server": {"certfile": missing, "keyfile": missing}})
    failed = subprocess.run([CLOUDLAYER, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0
    log = entries(tmp_path / "var" / "audit" / "audit.jsonl")
    assert [(e["action"], e["outcome"]) for e in log] == [("host start", "ok"), ("host start", "failed")]


def _small_log(path: Path, n: int = 3) -> bytes:
    for i in range(n):
        append(path, action="client add", outcome="ok", obj=f"client:cl_{i}", actor=None, detail={"n": i})
    return path.read_bytes()


def test_editing_any_byte_makes_verify_fail_and_name_the_entry(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    original = _small_log(log)
    assert verify(log).ok and verify(log).entries == 3
    starts = [0]
    for i, byte in enumerate(original):
        if byte == 0x0A:
            starts.append(i + 1)
    assert len(original) < 4000  # bounded: one verify per byte of a three-entry log
    for pos in range(len(original)):
        entry = max(n for n, start in enumerate(starts, 1) if start <= pos)
        for replacement in {original[pos] ^ 0x01, 0x0A if original[pos] != 0x0A else 0x20}:
            damaged = bytearray(original)
            damaged[pos] = replacement
            log.write_bytes(bytes(damaged))
            result = verify(log)
            assert not result.ok, (pos, replacement)
            assert result.bad_entry == entry, (pos, replacement, result)


def test_verify_names_a_removed_reordered_or_cut_off_entry(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _small_log(log, 4).splitlines(keepends=True)
    cases = {
        "removed": (lines[0] + lines[2] + lines[3], 2),
        "reordered": (lines[0] + lines[2] + lines[1] + lines[3], 2),
        "cut off": (lines[0] + lines[1] + lines[2], 4),
        "torn": (lines[0] + lines[1] + lines[2] + lines[3][:-10], 4),
        "first removed": (lines[1] + lines[2] + lines[3], 1),
    }
    for name, (data, bad) in cases.items():
        log.write_bytes(data)
        result = verify(log)
        assert not result.ok and result.bad_entry == bad, (name, result)
    log.write_bytes(b"".join(lines))
    assert verify(log).ok


def test_appends_from_many_processes_keep_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    code = (
        "import sys; from pathlib import Path; from cloudlayer.audit.log import append\n"
        "for i in range(15): append(Path(sys.argv[1]), action='keys rotate', outcome='ok', obj=f'{sys.argv[2]}:{i}')"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(log), f"p{n}"]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    result = verify(log)
    assert result.ok and result.entries == 60, result
    assert sorted(e["object"] for e in entries(log)) == sorted(f"p{n}:{i}" for n in range(4) for i in range(15))
    assert stat_mode(log) == 0o600


def stat_mode(path: Path) -> int:
    import os
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_unwritable_log_fails_the_command_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    config = write_config(tmp_path / "host.toml", {"audit": {"path": str(target / "audit.jsonl")}})
    done = cli(config, "keys", "rotate")
    assert done.returncode == 1
    assert "audit log" in done.stderr and "was done" in done.stderr
