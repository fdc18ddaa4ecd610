"""One exactly-once suite, every connector: `connector_kind` (a fixture in conftest.py, parametrized over
CONNECTOR_KINDS) picks ISO 8583 or the HTTPS payment host; `start_acquirer` starts the matching simulator and
says which `[acquirer]` keys point a `txn_harness.Host` at it. The chaos suite (tests/reliability) uses it too."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from payment_host_harness import PaymentHostFiles, PaymentHostProcess
from txn_harness import SimulatorProcess

CONNECTOR_KINDS = ("iso8583", "http")


@dataclass
class Acquirer:
    kind: str
    simulator: SimulatorProcess
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def host_extra(self, extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """`extra` for a Host: the connector's keys, then the test's own on top."""
        merged = {name: dict(values) for name, values in self.keys.items()}
        for name, values in (extra or {}).items():
            merged.setdefault(name, {}).update(values)
        return merged

    def stop(self) -> None:
        self.simulator.stop()


def start_acquirer(
    kind: str,
    workdir: Path,
    *,
    latency_ms: int = 0,
    auth_method: str = "client_secret_basic",
    mutual_tls: bool = False,
    token_lifetime: int = 300,
    port: int | None = None,
) -> Acquirer:
    if kind == "iso8583":
        return Acquirer(kind, SimulatorProcess(workdir / "sim", latency_ms=latency_ms, port=port))
    files = PaymentHostFiles(workdir / "payment-host-files", mutual_tls=mutual_tls)
    sim = PaymentHostProcess(workdir / "sim", files, latency_ms=latency_ms, token_lifetime=token_lifetime, port=port)
    return Acquirer(kind, sim, sim.acquirer_keys(auth_method))
