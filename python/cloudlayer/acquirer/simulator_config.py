"""The acquirer simulator's configuration (configs/simulator.toml), typed and validated."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from .payment_host.sim_config import HttpSimulatorConfig


class LatencyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    distribution: Literal["fixed", "uniform", "exponential"] = "fixed"
    fixed_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0


class FaultConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Faults; the same keys can be changed at run time with POST /faults (plus the *_next counters)."""

    drop_answers: bool = False  # answer nothing at all (the acquirer is "down" but the socket is open)
    drop_rate: float = 0.0  # probability an answer is dropped
    drop_next: int = 0  # drop the next N answers
    delay_seconds: float = 0.0  # extra delay on every answer
    delay_next: int = 0  # ...or only on the next N answers (when > 0)
    close_next: int = 0  # close the connection instead of the next N answers
    close_rate: float = 0.0
    garbage_next: int = 0  # send a garbage frame instead of the next N answers
    garbage_rate: float = 0.0
    # Answer reversals (0400/0401) with this response code, reversing nothing (e.g. "96": the acquirer's switch
    # failed, repeat it); reversal_code_next > 0 limits it to the next N reversals. "" = answer as usual.
    reversal_code: str = ""
    reversal_code_next: int = 0
    # Payment host (HTTPS) only: answer 500 after processing the next N requests / this share of them, and
    # answer 503 from the token endpoint to the next N token requests.
    http_error_next: int = 0
    http_error_rate: float = 0.0
    token_error_next: int = 0


class SimulatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    length_prefix: Literal["2B", "4B", "4A"] = "2B"
    # TLS listener (PEM files; "" = plain TCP). With tls_client_ca, a client certificate from it is required.
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_client_ca: str = ""
    # Loopback HTTP/JSON admin port (GET /ledger, GET|POST /faults); "" disables it, port 0 picks one.
    admin_bind: str = "127.0.0.1:0"
    default_response: str = "00"
    # Last two digits of the amount (minor units) -> response code (field 39).
    responses: dict[str, str] = msgspec.field(
        default_factory=lambda: {"05": "05", "14": "14", "51": "51", "54": "54", "55": "55", "61": "61", "91": "91"}
    )
    no_answer_amount: int = 9999  # an authorization for exactly this amount is never answered
    issuer_authentication_data: str = "1A2B3C4D5E6F70800012"  # tag 91 value (hex) sent with approvals
    scripts: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)  # amount -> {"71"|"72": hex}
    latency: LatencyConfig = msgspec.field(default_factory=LatencyConfig)
    faults: FaultConfig = msgspec.field(default_factory=FaultConfig)
    http: HttpSimulatorConfig = msgspec.field(default_factory=HttpSimulatorConfig)  # docs/payment-host.md


def load_simulator_config(path: str | Path | None) -> SimulatorConfig:
    """Read the `[simulator]` table (or the whole file) of a TOML file; None gives the defaults."""
    if path is None:
        return SimulatorConfig()
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    table = raw.get("simulator", raw)
    try:
        cfg = msgspec.convert(table, SimulatorConfig, strict=True)
    except msgspec.ValidationError as e:
        raise ValueError(f"{path}: invalid simulator config: {e}") from None
    check_tls(cfg, str(path))
    for code in [
        cfg.default_response,
        *cfg.responses.values(),
        *([cfg.faults.reversal_code] if cfg.faults.reversal_code else []),
    ]:
        if len(code) != 2:
            raise ValueError(f"{path}: response codes must be 2 characters, got {code!r}")
    for value in [cfg.issuer_authentication_data, *(v for s in cfg.scripts.values() for v in s.values())]:
        bytes.fromhex(value)  # ValueError names the bad hex
    return cfg


def check_tls(cfg: SimulatorConfig, where: str) -> None:
    if bool(cfg.tls_certfile) != bool(cfg.tls_keyfile):
        raise ValueError(f"{where}: tls_certfile and tls_keyfile must be set together")
    if cfg.tls_client_ca and not cfg.tls_certfile:
        raise ValueError(f"{where}: tls_client_ca needs tls_certfile and tls_keyfile")
