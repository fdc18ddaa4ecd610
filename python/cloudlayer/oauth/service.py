"""OAuthService: everything the app needs from OAuth, loaded once per worker process."""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio
from joserfc.errors import SecurityWarning

from ..config import Config
from ..http.client_address import ClientAddress, parse_networks
from .backends import open_registry, open_runtime
from .clients import ClientStore
from .keys import SigningKeys
from .ratelimit import FailureLimiter
from .token_endpoint import TokenEndpoint
from .tokens import BearerError, Principal, TokenIssuer, TokenVerifier

if TYPE_CHECKING:
    from .pg_sync import OAuthSync

__all__ = ["BearerError", "OAuthService", "Principal", "open_registry"]

log = structlog.get_logger(__name__)

DEV_CLIENT_FILE = "oauth/dev_client.json"


class OAuthService:
    def __init__(self, cfg: Config, clients: ClientStore, keyring: SigningKeys, sync: OAuthSync | None = None) -> None:
        o = cfg.oauth
        self.cfg = cfg
        self.clients = clients
        self.keyring = keyring
        self.sync = sync  # PostgreSQL: keeps clients and keys equal to the database's (oauth/pg_sync.py)
        self.issuer = TokenIssuer(keyring, o.issuer, o.audience, o.token_lifetime)
        self.verifier = TokenVerifier(keyring, clients, o.issuer, o.audience, o.leeway, o.token_cache_size)
        self.limiter = FailureLimiter(o.failure_window, o.slowdown_after, o.lockout_after)
        self.token_endpoint = TokenEndpoint(clients, self.issuer, self.limiter)
        self.client_address = ClientAddress(parse_networks(cfg.server.trusted_proxies))

    @classmethod
    def from_config(cls, cfg: Config) -> OAuthService:
        # joserfc reports insecure choices as SecurityWarning; here they are errors.
        warnings.filterwarnings("error", category=SecurityWarning)
        return cls(cfg, *open_runtime(cfg))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """In the app's nursery, before the first request: PostgreSQL's clients and keys loaded, then kept
        current. Files: nothing to run (each read looks at the file)."""
        if self.sync is None:
            task_status.started()
            return
        await self.sync.run(task_status=task_status)

    def verify_bearer_headers(self, headers: list[str], required_scope: str) -> Principal:
        """verify_bearer for every Authorization header of a request: more than one is invalid_request (RFC 6750
        3.1), refused before anything is processed whichever of them is valid."""
        if len(headers) > 1:
            raise BearerError(400, "invalid_request", "more than one Authorization header")
        return self.verify_bearer(headers[0] if headers else None, required_scope)

    def verify_bearer(self, authorization: str | None, required_scope: str) -> Principal:
        """The principal of a valid bearer token holding `required_scope`; else BearerError (RFC 6750 §3)."""
        if authorization is None:
            raise BearerError(401, None, "bearer token required")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise BearerError(401, None, "bearer token required")
        token = token.strip(" ")
        if not token or " " in token or "\t" in token:
            raise BearerError(400, "invalid_request", "malformed Authorization header")
        principal = self.verifier.verify(token)
        if required_scope not in principal.scopes:
            raise BearerError(403, "insufficient_scope", "the access token lacks the required scope", required_scope)
        return principal

    def ensure_dev_client(self) -> tuple[str, str] | None:
        """Dev only: the dev client's id and secret, created on first start and kept in a 0600 file."""
        if not self.cfg.oauth.dev_client:
            return None
        if not self.cfg.server.dev_mode:
            log.warning("oauth_dev_client_refused", reason="oauth.dev_client needs server.dev_mode")
            return None
        path = self.cfg.var_path(DEV_CLIENT_FILE)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # several workers may start at once: one creates
            if self.sync is not None:
                self.sync.refresh_sync()  # the serving parent, at start: the shared registry as it is now
            existing = _read_dev_client(path)
            if existing is not None and self.clients.authenticate(*existing) is not None:
                return existing
            scopes = self.cfg.oauth.default_scope.split()
            client, secret = self.clients.add("dev", scopes)
            _write_private_json(path, {"client_id": client.client_id, "client_secret": secret})
            log.info("oauth_dev_client_created", client_id=client.client_id)
            return client.client_id, secret
        finally:
            os.close(lock_fd)

    def close(self) -> None:
        self.clients.close()


def _read_dev_client(path: Path) -> tuple[str, str] | None:
    try:
        doc = json.loads(path.read_text())
        return str(doc["client_id"]), str(doc["client_secret"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_private_json(path: Path, doc: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
