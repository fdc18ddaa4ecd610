"""deploy/systemd/cloudlayer.service: systemd itself accepts it (`systemd-analyze verify`, exposure score from
`systemd-analyze security`), and it carries the hardening and timings docs/deploy.md promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from cloudlayer.server import LIFESPAN_SHUTDOWN_TIMEOUT
from conftest import REPO

UNIT = REPO / "deploy/systemd/cloudlayer.service"
SYSUSERS = REPO / "deploy/systemd/cloudlayer.sysusers.conf"
INSTALLED_BINARY = "/opt/cloudlayer/venv/bin/cloudlayer"
PRODUCTION = tomllib.loads((REPO / "configs/production.example.toml").read_text())

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (the structured checks still run)"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=value (repeatable), # and ; comments, backslash continuation."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for number, raw in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        assert current and "=" in line, f"line {number}: not Key=value inside a section: {raw!r}"
        key, value = line.split("=", 1)
        sections[current][key.strip()].append(value.strip())
    return sections


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's cloudlayer: verify checks that the binary exists."""
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(Path(sys.executable).parent / "cloudlayer")))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and misplaced settings but names them: any word from it is a finding.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


@needs_systemd_analyze
def test_systemd_analyze_rates_the_exposure_low(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for cloudlayer\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout  # systemd calls up to 2.0 "OK"; a default service is 9.6


def test_the_unit_is_hardened_as_documented() -> None:
    service = parse_unit(UNIT.read_text())["Service"]

    def one(key: str) -> str:
        assert len(service[key]) == 1, f"{key}: {service[key]}"
        return service[key][0]

    assert one("User") == "cloudlayer" and one("Group") == "cloudlayer"
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    # The var dir, and nothing else, is writable: the one production.example.toml names.
    assert service["ReadWritePaths"] == [PRODUCTION["server"]["var_dir"]] == ["/var/lib/cloudlayer"]
    assert one("StateDirectory") == "cloudlayer" and one("StateDirectoryMode") == "0700"
    assert int(one("LimitNOFILE")) >= 65536
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID", "LockPersonality"):
        assert one(key) == "yes", key
    assert one("UMask") == "0077"
    assert one("ExecStart") == f"{INSTALLED_BINARY} serve --config /etc/cloudlayer/cloudlayer.toml"


def test_systemd_waits_for_the_graceful_shutdown() -> None:
    """SIGTERM to the supervisor only (it stops its workers), and no SIGKILL before its own deadline."""
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["KillMode"] == ["mixed"] and service["KillSignal"] == ["SIGTERM"]
    own_deadline = PRODUCTION["server"]["graceful_timeout"] + LIFESPAN_SHUTDOWN_TIMEOUT + 1.0
    assert float(service["TimeoutStopSec"][0]) > own_deadline + 5
    assert service["Restart"] == ["on-failure"]


def test_sysusers_creates_the_unit_user() -> None:
    (line,) = [x for x in SYSUSERS.read_text().splitlines() if x and not x.startswith("#")]
    kind, name, ident, _gecos_and_home = line.split(maxsplit=3)
    assert (kind, name, ident) == ("u", "cloudlayer", "-")
    assert line.endswith(PRODUCTION["server"]["var_dir"])


def test_the_unit_parser_refuses_garbage() -> None:
    with pytest.raises(AssertionError, match="not Key=value"):
        parse_unit("[Service]\nProtectSystem strict\n")
    with pytest.raises(AssertionError, match="not Key=value"):
        parse_unit("User=cloudlayer\n")
