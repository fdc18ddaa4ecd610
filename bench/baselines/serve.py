"""Serve a baseline app exactly as the host is served: `python serve.py {bare-asgi|quart-trio} CONFIG`.

`cloudlayer.server.serve` is called with the same TOML the host gets (workers, keep-alive limits, timeouts,
TLS, the supervisor and its spawned trio workers); only the application path differs, so the baselines and
the host differ in nothing but the app.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloudlayer.config import ConfigError, load_config
from cloudlayer.server import serve

APPS = {"bare-asgi": "bare_asgi:app", "quart-trio": "quart_app:app"}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in APPS:
        print(f"usage: serve.py {{{'|'.join(APPS)}}} CONFIG", file=sys.stderr)
        return 2
    name, config_path = argv
    # The spawned workers import the app by module name; spawn hands them this sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        return serve(load_config(config_path), config_path, application_path=APPS[name])
    except ConfigError as e:
        print(f"serve.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
