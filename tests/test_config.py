"""Config: TOML + CLOUDLAYER_* overrides, validated with one clear line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudlayer.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_shipped_configs_load() -> None:
    for name in ("dev.toml", "production.example.toml"):
        cfg = load_config(REPO / "configs" / name, environ={})
        assert cfg.server.transaction_path == "/transaction/process"
    dev = load_config(REPO / "configs" / "dev.toml", environ={})
    assert dev.server.dev_mode and dev.oauth.dev_client and dev.acquirer.mode == "simulator"
    prod = load_config(REPO / "configs" / "production.example.toml", environ={})
    assert not prod.server.dev_mode and not prod.oauth.dev_client


def test_defaults_without_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg.store.group_commit_max >= 1 and cfg.server.keep_alive_max_requests > 1000


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown field `bogus`.*server"):
        load_config(write(tmp_path, "[server]\nbogus = 1\n"), environ={})


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field `nonsense`"):
        load_config(write(tmp_path, "[nonsense]\na = 1\n"), environ={})


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str`.*server\.workers"):
        load_config(write(tmp_path, '[server]\nworkers = "two"\n'), environ={})


def test_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_env_overrides_typed_values(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[server]\nworkers = 1\n"),
        environ={
            "CLOUDLAYER_SERVER_WORKERS": "3",
            "CLOUDLAYER_ACQUIRER_HOST": "acq.example",
            "CLOUDLAYER_ACQUIRER_TIMEOUT": "2.5",
            "CLOUDLAYER_SERVER_TLS": "false",
            "CLOUDLAYER_CONFIG": "ignored.toml",
            "OTHER": "x",
        },
    )
    assert cfg.server.workers == 3
    assert cfg.acquirer.host == "acq.example"
    assert cfg.acquirer.timeout == 2.5
    assert cfg.server.tls is False


def test_env_override_with_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_config(None, environ={"CLOUDLAYER_SERVER_WORKERS": "lots"})


def test_env_override_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown field `wrokers`"):
        load_config(None, environ={"CLOUDLAYER_SERVER_WROKERS": "2"})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nworkers = 0\n", "server.workers"),
        ('[server]\nbind = "nohostport"\n', "server.bind"),
        ('[server]\nbind = "127.0.0.1:99999"\n', "server.bind"),
        ('[server]\ntransaction_path = "tx"\n', "server.transaction_path"),
        ("[server]\nrequire_client_cert = true\n", "server.require_client_cert"),
        ("[oauth]\nleeway = 600\n", "oauth.leeway"),
        ("[oauth]\ntoken_lifetime = 5\n", "oauth.token_lifetime"),
        ('[oauth]\nalgorithm = "HS256"\n', "oauth.algorithm"),
        ("[store]\ngroup_commit_max = 0\n", "store.group_commit_max"),
        ("[acquirer]\ntimeout = 0\n", "acquirer.timeout"),
        ('[metrics]\nbind = ":"\n', "metrics.bind"),
        ('[acquirer]\nsimulator_config = "/nonexistent/sim.toml"\n', "acquirer.simulator_config"),
        # A heartbeat timeout within three intervals would kill a healthy worker whose tick is merely late.
        (
            "[server]\nworker_heartbeat_interval = 1.0\nworker_heartbeat_timeout = 2.0\n",
            "server.worker_heartbeat_timeout",
        ),
        ("[server]\nworker_heartbeat_interval = 5.0\n", "server.worker_heartbeat_timeout"),
        ("[server]\nworker_heartbeat_interval = 0\n", "server.worker_heartbeat_interval"),
        ("[server]\nworker_heartbeat_timeout = 30.0\nworker_start_timeout = 20.0\n", "server.worker_start_timeout"),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), environ={})
    assert key.split(".")[-1] in str(info.value)


def test_relative_state_paths_go_under_var_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f'[server]\nvar_dir = "{tmp_path}/state"\n'), environ={})
    assert cfg.var_path("store") == tmp_path / "state" / "store"
    assert cfg.var_path("/abs/x") == Path("/abs/x")


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nworkers = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cloudlayer.cli", "serve", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.workers" in lines[0]


def test_heartbeat_keys_at_their_margin_load(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[server]\nworker_heartbeat_interval = 0.5\nworker_heartbeat_timeout = 1.5\n"), environ={}
    )
    assert cfg.server.worker_heartbeat_timeout == 1.5 and cfg.server.worker_start_timeout == 60.0
