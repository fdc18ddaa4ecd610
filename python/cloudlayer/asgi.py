"""ASGI entry point for Hypercorn workers: builds the app from the config named by CLOUDLAYER_CONFIG.

Hypercorn imports `cloudlayer.asgi:app` in each worker process, so the app is built per worker.
"""

from __future__ import annotations

import os

from .app import create_app
from .config import load_config

app = create_app(load_config(os.environ.get("CLOUDLAYER_CONFIG") or None))
