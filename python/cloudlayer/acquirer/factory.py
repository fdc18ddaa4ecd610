"""The connector `acquirer.kind` names (docs/connectors.md): built here, so that nothing else knows one by name."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..config import Config, ConfigError
from ..sealing import Sealer
from ..store.types import ALWAYS_SEND, SendGuard
from .saf_store import SafStore, open_saf
from .types import Connector


def build_connector(cfg: Config, sealer: Sealer, *, guard: SendGuard = ALWAYS_SEND) -> Connector:
    """`guard`: the store's send guard (store.types.SendGuard), checked before each write to the acquirer. A custom
    connector is not handed it: the flow checks it before calling `send` or `inquire`."""
    # The LMDB queue is opened by the connector from its path; PostgreSQL's (store.backend) is built here.
    saf_path = cfg.var_path(cfg.acquirer.saf_path)
    saf: Path | SafStore = open_saf(cfg, sealer) if cfg.store.backend == "postgres" else saf_path
    kind = cfg.acquirer.kind
    if kind == "http":
        from .payment_host.connector import HttpConnector

        return HttpConnector.from_config(cfg, saf, sealer, guard=guard)
    if kind == "custom":
        return _custom(cfg, sealer)
    from .connector import Iso8583Connector
    from .tls import client_context

    # The TLS context is checked once at start (server.serve), so a bad file stops the start with one line.
    tls = client_context(cfg.acquirer, cfg.var_path)
    return Iso8583Connector(cfg.acquirer, saf, sealer, tls_context=tls, guard=guard)


def _custom(cfg: Config, sealer: Sealer) -> Connector:
    """A customer's connector: `acquirer.connector_factory = "package.module:function"`, called (cfg, sealer)."""
    spec = cfg.acquirer.connector_factory
    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"invalid config: `acquirer.connector_factory` cannot load {spec!r}: {e}") from None
    connector: Connector = factory(cfg, sealer)
    return connector
