"""Runs Hypercorn (trio worker) for our app, configured from our Config."""

from __future__ import annotations

import os

from hypercorn.config import Config as HypercornConfig
from hypercorn.run import run as hypercorn_run

from .config import Config


def hypercorn_config(cfg: Config, config_path: str | None) -> HypercornConfig:
    hc = HypercornConfig()
    hc.application_path = "cloudlayer.asgi:app"
    hc.worker_class = "trio"
    hc.bind = [cfg.server.bind]
    hc.workers = cfg.server.workers
    hc.keep_alive_timeout = cfg.server.keep_alive_timeout
    hc.keep_alive_max_requests = cfg.server.keep_alive_max_requests
    hc.read_timeout = int(cfg.server.read_timeout)
    hc.graceful_timeout = cfg.server.graceful_timeout
    hc.accesslog = None
    if config_path:
        os.environ["CLOUDLAYER_CONFIG"] = os.path.abspath(config_path)
    return hc


def serve(cfg: Config, config_path: str | None) -> int:
    return int(hypercorn_run(hypercorn_config(cfg, config_path)) or 0)
