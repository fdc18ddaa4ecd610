"""`[simulator.http]` of the simulator's rules file: the payment-host side of `cloudlayer simulator`."""

from __future__ import annotations

from typing import Literal

import msgspec

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
ALL_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post", "private_key_jwt")


class SimulatedClient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One OAuth client the simulated token endpoint knows. Secrets and keys come from files."""

    client_id: str
    secret_file: str = ""  # client_secret_basic / client_secret_post
    public_key_file: str = ""  # private_key_jwt: PEM public (or private) key of the client
    auth_methods: list[AuthMethod] = msgspec.field(default_factory=lambda: list(ALL_METHODS))


class HttpSimulatorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    bind: str = ""  # HOST:PORT of the HTTPS listener ("" = off unless --http-bind)
    certfile: str = ""  # "" = a throw-away self-signed certificate (its path is printed)
    keyfile: str = ""
    client_ca: str = ""  # set: mutual TLS required, client certificates checked against this bundle
    token_lifetime: int = 300  # seconds (change at run time: POST /tokens {"lifetime": N})
    # Accepted `aud` of client assertions besides the token endpoint's own URL as the request reached it.
    token_audiences: list[str] = msgspec.field(default_factory=list)
    clients: list[SimulatedClient] = msgspec.field(default_factory=list)
