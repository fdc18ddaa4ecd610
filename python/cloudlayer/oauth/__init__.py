"""OAuth 2.0 authorization server (client_credentials) and RFC 6750 bearer protection.

The app uses: `OAuthService.from_config(cfg)`, `service.verify_bearer(header, scope)` (raises
`BearerError`), `service.ensure_dev_client()`, `service.close()` and `register_routes(app, service)`.
"""

from .routes import register_routes
from .service import OAuthService
from .tokens import BearerError, Principal

__all__ = ["BearerError", "OAuthService", "Principal", "register_routes"]
