"""Acquirer settings that could never work stop the start with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlayer.acquirer.simulator_config import load_simulator_config
from cloudlayer.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        # Field 32 (LLVAR n..11) is in every message, sign-on included: a bad id means no link at all.
        ('[acquirer]\nacquirer_institution_id = "ABC123"\n', "acquirer.acquirer_institution_id"),
        ('[acquirer]\nacquirer_institution_id = "123456789012"\n', "acquirer.acquirer_institution_id"),
        ('[acquirer]\nacquirer_institution_id = ""\n', "acquirer.acquirer_institution_id"),
        # fullwidth digits: isdigit() but not ASCII
        ('[acquirer]\nacquirer_institution_id = "\\uFF11\\uFF12"\n', "acquirer.acquirer_institution_id"),
        ("[acquirer]\necho_interval = 0\n", "acquirer.echo_interval"),
        ("[acquirer]\necho_interval = -1.0\n", "acquirer.echo_interval"),
        # TLS settings that would be silently ignored, or half a client certificate.
        ('[acquirer]\nmode = "tcp"\ntls_ca = "/etc/ca.pem"\n', "acquirer.tls_ca"),
        ('[acquirer]\nmode = "tcp"\ntls_certfile = "c.pem"\ntls_keyfile = "k.pem"\n', "acquirer.tls_certfile"),
        ('[acquirer]\nmode = "tcp"\ntls = true\ntls_certfile = "c.pem"\n', "acquirer.tls_certfile"),
        ('[acquirer]\nmode = "tcp"\ntls = true\ntls_keyfile = "k.pem"\n', "acquirer.tls_certfile"),
        ('[acquirer]\nmode = "simulator"\ntls = true\n', "acquirer.tls"),
    ],
)
def test_unworkable_acquirer_settings_are_named(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"`{key}`" in str(info.value)


def test_the_shipped_institution_ids_are_accepted(tmp_path: Path) -> None:
    for value in ("1", "123456", "12345678901"):
        path = tmp_path / "c.toml"
        path.write_text(f'[acquirer]\nacquirer_institution_id = "{value}"\n')
        assert load_config(path, environ={}).acquirer.acquirer_institution_id == value


@pytest.mark.parametrize(
    "toml",
    [
        '[simulator]\ntls_certfile = "c.pem"\n',
        '[simulator]\ntls_keyfile = "k.pem"\n',
        '[simulator]\ntls_client_ca = "ca.pem"\n',
    ],
)
def test_half_a_simulator_tls_setup_is_refused(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match="tls_"):
        load_simulator_config(path)
