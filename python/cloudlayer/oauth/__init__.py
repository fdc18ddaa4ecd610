"""OAuth 2.0 authorization server (client_credentials) and RFC 6750 bearer protection.

The app uses: `OAuthService.from_config(cfg)`, `service.verify_bearer(header, scope)` (raises
`BearerError`), `service.ensure_dev_client()`, `service.close()` and `register_routes(app, service)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .service import OAuthService
from .tokens import BearerError, Principal

if TYPE_CHECKING:
    from quart_trio import QuartTrio

__all__ = ["BearerError", "OAuthService", "Principal", "register_routes"]


def register_routes(app: QuartTrio, service: OAuthService) -> None:
    """POST /oauth/token, GET /.well-known/jwks.json, GET /.well-known/oauth-authorization-server."""
    # Imported here so the CLI (`cloudlayer client ...`) does not pay for importing Quart.
    from .routes import register_routes as _register

    _register(app, service)
