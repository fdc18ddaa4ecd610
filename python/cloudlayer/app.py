"""The Quart-Trio app factory: routes wiring and the lifespan that owns background tasks."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from .config import Config


def create_app(cfg: Config) -> QuartTrio:
    app = QuartTrio("cloudlayer")
    app.config["MAX_CONTENT_LENGTH"] = cfg.server.max_body_bytes
    app.extensions["cloudlayer.config"] = cfg

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', status=200, content_type="application/json")

    return app
