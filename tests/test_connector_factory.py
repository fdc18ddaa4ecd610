"""The connector extension point: `acquirer.kind` picks the connector, a customer's factory is loaded by name,
the `[acquirer.http]` keys are checked at load time, and the transaction key a host dedups by is stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.acquirer.factory import build_connector
from cloudlayer.config import Config, ConfigError, load_config
from cloudlayer.sealing import Sealer
from cloudlayer.transactions.mapping import transaction_key

SEALER = Sealer(bytes(32))
BUILT: list[Config] = []


def build(cfg: Config, sealer: Sealer) -> Iso8583Connector:
    """A 'customer' factory, loaded by acquirer.connector_factory below."""
    BUILT.append(cfg)
    return Iso8583Connector(cfg.acquirer, cfg.var_path("custom-saf"), sealer)


def _config(tmp_path: Path, toml: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\nvar_dir = "{tmp_path / "var"}"\n' + toml)
    return load_config(path, environ={})


def test_a_custom_factory_is_loaded_by_name_and_given_the_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[acquirer]\nkind = "custom"\nconnector_factory = "test_connector_factory:build"\n')
    connector = build_connector(cfg, SEALER)
    assert isinstance(connector, Iso8583Connector) and BUILT[-1] is cfg


@pytest.mark.parametrize("spec", ["test_connector_factory:nope", "no_such_module_x:build"])
def test_a_custom_factory_that_cannot_be_loaded_stops_the_start_naming_the_key(tmp_path: Path, spec: str) -> None:
    cfg = _config(tmp_path, f'[acquirer]\nkind = "custom"\nconnector_factory = "{spec}"\n')
    with pytest.raises(ConfigError, match=r"acquirer\.connector_factory"):
        build_connector(cfg, SEALER)


def test_kind_custom_needs_a_factory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"acquirer\.connector_factory"):
        _config(tmp_path, '[acquirer]\nkind = "custom"\n')


def test_the_default_is_iso8583(tmp_path: Path) -> None:
    assert isinstance(build_connector(_config(tmp_path, ""), SEALER), Iso8583Connector)


def _http(tmp_path: Path, **keys: str) -> str:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    values = {
        "base_url": "https://127.0.0.1:9443",
        "token_url": "https://127.0.0.1:9443/oauth/token",
        "client_id": "cloudlayer",
        "client_secret_file": str(secret),
    } | keys
    body = "\n".join(f'{k} = "{v}"' for k, v in values.items())
    return f'[acquirer]\nkind = "http"\nmode = "tcp"\n[acquirer.http]\n{body}\n'


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"base_url": "http://127.0.0.1:9443"}, "acquirer.http.base_url"),
        ({"token_url": "ftp://x"}, "acquirer.http.token_url"),
        ({"token_url": "https://"}, "acquirer.http.token_url"),
        ({"client_id": ""}, "acquirer.http.client_id"),
        ({"client_secret_file": "/nonexistent/secret"}, "acquirer.http.client_secret_file"),
        ({"auth_method": "private_key_jwt"}, "acquirer.http.private_key_file"),
        ({"tls_ca": "/nonexistent/ca.pem"}, "acquirer.http.tls_ca"),
        ({"auth_method": "client_secret_jwt"}, "acquirer.http.auth_method"),
    ],
)
def test_bad_http_acquirer_keys_stop_the_start_naming_the_key(tmp_path: Path, keys: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _config(tmp_path, _http(tmp_path, **keys))


def test_the_in_process_simulator_is_iso_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"acquirer\.mode"):
        _config(tmp_path, _http(tmp_path).replace('mode = "tcp"', 'mode = "simulator"'))


def test_http_keys_take_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_http(tmp_path))
    cfg = load_config(path, environ={"CLOUDLAYER_ACQUIRER_HTTP_MAX_CONNECTIONS": "7"})
    assert cfg.acquirer.http.max_connections == 7
    with pytest.raises(ConfigError, match=r"acquirer\.http"):
        load_config(path, environ={"CLOUDLAYER_ACQUIRER_HTTP_NO_SUCH_KEY": "1"})


def test_the_transaction_key_is_stable_url_safe_and_separates_its_parts() -> None:
    key = transaction_key("client-1", "txn-1")
    assert key == transaction_key("client-1", "txn-1") and len(key) == 43
    assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert transaction_key("a", "b:c") != transaction_key("a:b", "c") != transaction_key("client-2", "txn-1")
