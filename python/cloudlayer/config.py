"""Typed configuration: TOML file, then `CLOUDLAYER_<SECTION>_<KEY>` environment overrides.

Every key has a default here; `configs/production.example.toml` documents them all. Unknown keys and
wrong types stop the start with one line naming the key (ConfigError).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from .http.client_address import parse_networks


class ConfigError(Exception):
    """A configuration problem, phrased for an operator: names the key and what is wrong."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    bind: str = "127.0.0.1:8443"
    workers: int = 1
    # TLS: with tls=true and no cert/key, a self-signed dev certificate is generated under var/.
    tls: bool = True
    certfile: str = ""
    keyfile: str = ""
    # mTLS: a CA bundle makes Hypercorn ask for (and with require_client_cert, demand) a client certificate.
    client_ca: str = ""
    require_client_cert: bool = False
    http2: bool = True
    keep_alive_timeout: float = 75.0
    # Hypercorn closes a keep-alive connection after 1,000 requests by default: each close costs
    # Mypinpad a TLS handshake, so we raise it.
    keep_alive_max_requests: int = 1_000_000
    # Hypercorn applies read_timeout to every read, idle keep-alive waits included: keep it above
    # keep_alive_timeout or idle connections close early. It also bounds a slow sender.
    read_timeout: int = 90
    graceful_timeout: float = 20.0
    # TCP_QUICKACK after each TLS handshake: without it the first request on a new TLS 1.3 connection waits
    # ~40 ms on a delayed ACK (hypercorn_fixes.py). Linux only; off only to measure the difference.
    tcp_quickack: bool = True
    # Hung workers: each worker's event loop ticks a heartbeat every interval; a worker silent for timeout
    # seconds (or not ticking within start_timeout of its spawn: importing, opening the store) is killed and
    # replaced, and its PENDING transactions recover as after a crash.
    worker_heartbeat_interval: float = 1.0
    worker_heartbeat_timeout: float = 10.0
    worker_start_timeout: float = 60.0
    max_body_bytes: int = 16_384
    # Balancers whose X-Forwarded-For is believed (CIDRs or addresses, e.g. ["127.0.0.1/32"] behind `make
    # cluster`'s HAProxy): the token endpoint's per-address throttling then keys the client's address, the
    # rightmost hop not in these networks (http/client_address.py). Empty: the header is ignored.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    transaction_path: str = "/transaction/process"
    # Directory for generated state (dev cert, keys, client registry, LMDB) when paths are relative.
    var_dir: str = "var"
    # The AES-256 data key that seals card data at rest (pending requests, SAF reversals); 0600, relative
    # to var_dir. Back it up apart from the store: without it, pending recoveries and SAF entries are lost.
    sealing_key_file: str = "keys/sealing.key"
    # A retired sealing key is dropped (by `keys rotate-sealing` / `keys retire-sealing`) only when no stored
    # entry uses it and it was retired at least this many seconds ago (every worker has picked up the rotation).
    sealing_retire_grace: float = 300.0
    # The HMAC secret of the card key (one card transaction = PAN, sequence and ATC, never stored in clear; see
    # cloudlayer.cardkey); 0600, relative to var_dir. Back it up with the store: a new secret forgets which card
    # transactions the store has already seen (their records stay, their duplicates are no longer caught).
    card_key_file: str = "keys/card.key"
    dev_mode: bool = False


class OAuthConfig(_Section):
    issuer: str = "https://cloudlayer.local"
    audience: str = "cloudlayer-transactions"
    token_lifetime: int = 3600
    algorithm: Literal["ES256", "EdDSA"] = "ES256"
    leeway: int = 30
    keys_file: str = "oauth/keys.json"
    clients_file: str = "oauth/clients.lmdb"
    # The pepper keys the client-secret hashes; it lives outside the client store (file or env).
    pepper_file: str = "oauth/pepper"
    default_scope: str = "transactions:process"
    # Dev only: create a client on first start and print its id and secret once.
    dev_client: bool = False
    token_cache_size: int = 10_000
    # Failed client authentications: after `slowdown_after` failures in `failure_window` seconds per
    # client id or source address, answers slow down; after `lockout_after`, 429 with Retry-After.
    failure_window: float = 300.0
    slowdown_after: int = 5
    lockout_after: int = 20
    # store.backend = "postgres": clients and signing keys are read from the database into memory on every
    # change (NOTIFY) and at least this often (s), the bound for a missed notification (docs/postgres.md).
    shared_refresh: float = 30.0


class StoreConfig(_Section):
    # "lmdb": the embedded store under var/ (one machine). "postgres": a shared PostgreSQL (docs/postgres.md).
    backend: Literal["lmdb", "postgres"] = "lmdb"
    path: str = "store"
    map_size_mb: int = 1024
    # Grow the map by this factor when it fills, up to max_map_size_mb; past that: a clear error.
    max_map_size_mb: int = 65_536
    # Group commit: up to this many writes share one LMDB transaction and one fsync.
    group_commit_max: int = 64
    retention_days: float = 90.0
    purge_interval: float = 3600.0
    # backend = "lmdb": a PENDING record whose owner has not refreshed its heartbeat for this long is orphaned.
    owner_timeout: float = 10.0
    # backend = "postgres": each worker's lease on its claims, by the database's clock (docs/postgres.md, "Leases
    # and fencing"): renewed every lease_renew seconds to now() + lease_ttl. Another host takes a claim over only
    # once its owner's lease has run out. At least 3 x acquirer.timeout + lease_renew.
    lease_ttl: float = 40.0
    lease_renew: float = 2.0
    # backend = "postgres" (store/pg/settings.py checks these): a libpq DSN without a password, e.g.
    # "host=db.internal port=5432 dbname=cloudlayer user=cloudlayer sslmode=verify-full"; the password is read
    # from postgres_password_file (0600, relative to the working directory), never from the TOML.
    postgres_dsn: str = ""
    postgres_password_file: str = ""
    postgres_pool_min: int = 2  # connections per worker process kept open
    postgres_pool_max: int = 16  # ... and at most
    postgres_connect_timeout: float = 5.0  # seconds for one connection attempt
    postgres_pool_timeout: float = 5.0  # seconds to wait for a free pooled connection
    postgres_statement_timeout: float = 5.0  # seconds, server-side, for every statement
    # Claims and completions go through one batching database thread per worker (store/pg/pipeline.py);
    # false: one pooled connection and one thread hop per statement, as everything else.
    postgres_pipeline: bool = True


class HttpAcquirerConfig(_Section):
    """`[acquirer.http]`: the HTTPS/JSON payment host (docs/payment-host.md) behind OAuth 2.0 client credentials."""

    base_url: str = ""  # https://host[:port][/prefix]; the API's paths (/v1/...) go below it
    token_url: str = ""  # the OAuth 2.0 token endpoint (https)
    client_id: str = ""
    # RFC 6749 2.3.1 (secret in the form body / HTTP Basic) or RFC 7523 (a JWT signed with our private key).
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    client_secret_file: str = ""  # client_secret_*: a file holding the secret (never inline in the TOML)
    private_key_file: str = ""  # private_key_jwt: PEM, EC P-256 (ES256), RSA (RS256) or Ed25519 (EdDSA)
    private_key_id: str = ""  # `kid` of the assertion's header ("" = none)
    assertion_audience: str = ""  # `aud` of the assertion ("" = token_url)
    assertion_lifetime: int = 60  # seconds
    scope: str = ""  # requested scope ("" = none sent)
    tls_ca: str = ""  # CA bundle for the host and the token endpoint ("" = the system's)
    client_cert_file: str = ""  # mutual TLS (RFC 8705): our certificate and its key, for both endpoints
    client_key_file: str = ""
    max_connections: int = 64  # keep-alive connections to the host per worker (HTTP/1.1: one request each)
    http2: bool = False  # offer h2 through ALPN
    token_timeout: float = 10.0  # seconds for one token request
    refresh_at: float = 0.8  # refresh the token at this fraction of its lifetime
    default_token_lifetime: int = 300  # seconds, when the token answer carries no expires_in
    token_retry_min: float = 0.5  # token endpoint failures back off from this ...
    token_retry_max: float = 30.0  # ... to this (seconds, jittered)
    probe_interval: float = 30.0  # seconds: an idle host is probed (GET /v1/ping) this often


class AcquirerConfig(_Section):
    # Which connector (docs/connectors.md): ISO 8583 over TCP, the HTTPS/JSON payment host, or your own.
    kind: Literal["iso8583", "http", "custom"] = "iso8583"
    # kind = "custom": "package.module:function", called with (Config, Sealer), returning a Connector.
    connector_factory: str = ""
    # "simulator" starts the built-in simulator in-process on an ephemeral loopback port.
    mode: Literal["simulator", "tcp"] = "simulator"
    host: str = "127.0.0.1"
    port: int = 9583
    tls: bool = False
    # TLS files; relative paths are under server.var_dir, like server.certfile. tls_ca: the CA bundle the
    # acquirer's certificate must chain to ("" = the system's). tls_certfile/keyfile: ours, for mutual TLS.
    tls_ca: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    connections: int = 1
    timeout: float = 10.0
    connect_timeout: float = 5.0
    max_in_flight: int = 1024
    length_prefix: Literal["2B", "4B", "4A"] = "2B"
    purchase_mti: Literal["0100", "0200"] = "0200"
    echo_interval: float = 30.0
    reconnect_min: float = 0.1
    reconnect_max: float = 10.0
    saf_path: str = "saf"
    saf_retry_min: float = 1.0
    saf_retry_max: float = 60.0
    acquirer_institution_id: str = "123456"
    # Rules for the in-process simulator (mode = "simulator"); "" = the simulator's built-in defaults.
    simulator_config: str = ""
    http: HttpAcquirerConfig = msgspec.field(default_factory=HttpAcquirerConfig)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class MetricsConfig(_Section):
    enabled: bool = True
    bind: str = "127.0.0.1:9464"


class AuditConfig(_Section):
    # The append-only, hash-chained log of administrative actions (JSON lines, 0600), relative to var_dir.
    path: str = "audit/audit.jsonl"


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    oauth: OAuthConfig = msgspec.field(default_factory=OAuthConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    acquirer: AcquirerConfig = msgspec.field(default_factory=AcquirerConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)
    # Where a relative server.var_dir is anchored: the working directory at load time (not a file key).
    base_dir: str = "."

    def var_path(self, relative: str) -> Path:
        """Resolve a state path: absolute paths stay, relative ones go under server.var_dir."""
        p = Path(relative)
        if p.is_absolute():
            return p
        var = Path(self.server.var_dir)
        if not var.is_absolute():
            var = Path(self.base_dir) / var
        return var / p


ENV_PREFIX = "CLOUDLAYER_"


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> None:
    """Overlay CLOUDLAYER_<SECTION>_<KEY>=value onto the raw TOML dict (values typed later)."""
    sections = {f.name for f in msgspec.structs.fields(Config) if f.name != "base_dir"}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            continue  # other CLOUDLAYER_* variables (e.g. CLOUDLAYER_CONFIG) are not overrides
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        table, key = _subtable(raw[section], section, key)
        table[key] = _parse_env_value(value)


def _subtable(table: dict[str, Any], section: str, key: str) -> tuple[dict[str, Any], str]:
    """CLOUDLAYER_ACQUIRER_HTTP_BASE_URL sets [acquirer.http] base_url: a key that starts with the name of a
    sub-table of its section goes into that sub-table."""
    section_type = next(f.type for f in msgspec.structs.fields(Config) if f.name == section)
    for f in msgspec.structs.fields(section_type):
        if isinstance(f.type, type) and issubclass(f.type, _Section) and key.startswith(f.name + "_"):
            sub = table.setdefault(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"[{section}.{f.name}] must be a table")
            return sub, key[len(f.name) + 1 :]
    return table, key


def _parse_env_value(value: str) -> Any:
    # TOML scalar syntax first (numbers, booleans, quoted strings, arrays); else the bare string.
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load and validate a config. Raises ConfigError with one operator-readable line."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
    # A relative var_dir is taken from the directory the command runs in, fixed now so that worker
    # processes agree whatever their own working directory.
    base_dir = os.getcwd()
    _apply_env(raw, dict(os.environ) if environ is None else environ)
    if "base_dir" in raw:
        raise ConfigError("invalid config: `base_dir` is not a configuration key")
    raw["base_dir"] = base_dir
    try:
        cfg = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config: {_describe(e)}") from None
    _check(cfg)
    return cfg


def _describe(e: msgspec.ValidationError) -> str:
    # msgspec says e.g. "Object contains unknown field `x` - at `$.server`"; turn `$.a.b` into `a.b`.
    return str(e).replace("`$.", "`").replace("at `$`", "at top level")


def _check(cfg: Config) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"invalid config: `{key}` {why}")

    if cfg.server.workers < 1:
        raise bad("server.workers", "must be at least 1")
    _check_heartbeat(cfg.server, bad)
    if cfg.server.sealing_retire_grace < 0:
        raise bad("server.sealing_retire_grace", "must not be negative")
    if cfg.server.max_body_bytes < 256:
        raise bad("server.max_body_bytes", "must be at least 256")
    if not cfg.server.transaction_path.startswith("/"):
        raise bad("server.transaction_path", "must start with /")
    try:
        parse_networks(cfg.server.trusted_proxies)
    except ValueError as e:
        raise bad("server.trusted_proxies", f"has {e}") from None
    for key, value in (("server.bind", cfg.server.bind), ("metrics.bind", cfg.metrics.bind)):
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise bad(key, f"must be HOST:PORT, got {value!r}")
    if cfg.server.require_client_cert and not cfg.server.client_ca:
        raise bad("server.require_client_cert", "needs server.client_ca")
    if cfg.oauth.token_lifetime < 60:
        raise bad("oauth.token_lifetime", "must be at least 60 seconds")
    if not 0 <= cfg.oauth.leeway <= 60:
        raise bad("oauth.leeway", "must be between 0 and 60 seconds")
    if not 1 <= cfg.oauth.shared_refresh <= 3600:
        raise bad("oauth.shared_refresh", "must be between 1 and 3600 seconds")
    if cfg.store.map_size_mb < 1 or cfg.store.max_map_size_mb < cfg.store.map_size_mb:
        raise bad("store.map_size_mb", "must be >= 1 and <= store.max_map_size_mb")
    if cfg.store.group_commit_max < 1:
        raise bad("store.group_commit_max", "must be at least 1")
    if cfg.store.backend == "postgres":
        from .store.pg.settings import check_config

        check_config(cfg, bad)
    if cfg.acquirer.timeout <= 0 or cfg.acquirer.connect_timeout <= 0:
        raise bad("acquirer.timeout", "timeouts must be positive")
    acq = cfg.acquirer
    if bool(acq.tls_certfile) != bool(acq.tls_keyfile):
        raise bad("acquirer.tls_certfile", "and acquirer.tls_keyfile must be set together")
    if (acq.tls_ca or acq.tls_certfile) and not acq.tls:
        raise bad("acquirer.tls_ca" if acq.tls_ca else "acquirer.tls_certfile", "needs acquirer.tls = true")
    if acq.tls and acq.mode == "simulator":
        raise bad("acquirer.tls", 'needs mode = "tcp" (the in-process simulator is plain loopback TCP)')
    if cfg.acquirer.echo_interval <= 0:  # 0 would echo back to back, for ever
        raise bad("acquirer.echo_interval", "must be positive")
    sim = cfg.acquirer.simulator_config
    if cfg.acquirer.mode == "simulator" and sim and not Path(cfg.base_dir, sim).is_file():
        raise bad("acquirer.simulator_config", f"file not found: {sim}")
    aiid = cfg.acquirer.acquirer_institution_id
    if not (aiid.isascii() and aiid.isdigit() and len(aiid) <= 11):
        raise bad("acquirer.acquirer_institution_id", "must be 1 to 11 digits (ISO 8583 field 32)")
    if cfg.acquirer.connections < 1 or cfg.acquirer.max_in_flight < 1:
        raise bad("acquirer.connections", "connections and max_in_flight must be at least 1")
    if cfg.acquirer.kind == "custom" and ":" not in cfg.acquirer.connector_factory:
        raise bad("acquirer.connector_factory", 'must be "package.module:function" for kind = "custom"')
    if cfg.acquirer.kind == "http":
        _check_http_acquirer(cfg, bad)


# The supervisor looks once per interval and a busy loop may tick up to an interval late: below three
# intervals a healthy worker could be killed for a tick that was merely late.
HEARTBEAT_MARGIN = 3.0


def _check_heartbeat(server: ServerConfig, bad: Callable[[str, str], ConfigError]) -> None:
    interval, timeout = server.worker_heartbeat_interval, server.worker_heartbeat_timeout
    if not 0.05 <= interval <= 60:
        raise bad("server.worker_heartbeat_interval", "must be between 0.05 and 60 seconds")
    if timeout < HEARTBEAT_MARGIN * interval:
        raise bad(
            "server.worker_heartbeat_timeout",
            f"must be at least {HEARTBEAT_MARGIN:g} x server.worker_heartbeat_interval "
            f"({HEARTBEAT_MARGIN * interval:g} s)",
        )
    if server.worker_start_timeout < timeout:
        raise bad("server.worker_start_timeout", "must be at least server.worker_heartbeat_timeout")


def _check_http_acquirer(cfg: Config, bad: Callable[[str, str], ConfigError]) -> None:
    h = cfg.acquirer.http
    if cfg.acquirer.mode == "simulator":
        raise bad("acquirer.mode", 'must be "tcp" with kind = "http" (the in-process simulator speaks ISO 8583)')
    for key, url in (("base_url", h.base_url), ("token_url", h.token_url)):
        if not url.startswith("https://") or len(url) <= len("https://"):
            raise bad(f"acquirer.http.{key}", "must be an https:// URL")
    if not h.client_id:
        raise bad("acquirer.http.client_id", "is required")
    needed = "private_key_file" if h.auth_method == "private_key_jwt" else "client_secret_file"
    files = [needed, "tls_ca", "client_cert_file", "client_key_file"]
    for key in files:
        path = getattr(h, key)
        if (key == needed or path) and not Path(cfg.base_dir, path).is_file():
            why = f"file not found: {path!r}" if path else f"is required for {h.auth_method}"
            raise bad(f"acquirer.http.{key}", why)
    if bool(h.client_cert_file) != bool(h.client_key_file):
        raise bad("acquirer.http.client_cert_file", "needs acquirer.http.client_key_file (and the other way round)")
    if not 0.1 <= h.refresh_at < 1.0:
        raise bad("acquirer.http.refresh_at", "must be at least 0.1 and below 1.0")
    if h.max_connections < 1 or h.token_timeout <= 0 or h.probe_interval <= 0 or h.token_retry_min <= 0:
        raise bad("acquirer.http.max_connections", "max_connections >= 1; token_timeout, probe_interval, retries > 0")
    if h.default_token_lifetime < 1 or not 10 <= h.assertion_lifetime <= 3600:
        raise bad("acquirer.http.assertion_lifetime", "must be 10..3600 s (default_token_lifetime >= 1)")
