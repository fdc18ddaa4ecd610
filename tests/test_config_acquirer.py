"""Acquirer settings that could never work stop the start with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

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
