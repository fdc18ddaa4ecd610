"""Entry point of the conventional baseline.

    python serve.py add-client --var-dir DIR          # prints {"client_id": ..., "client_secret": ...}
    python serve.py serve --var-dir DIR --bind 127.0.0.1:PORT --acquirer 127.0.0.1:PORT
                    [--workers N] [--certfile F --keyfile F] [--issuer URL] [--acquirer-timeout S]

`serve` makes the pepper, signing key and SQLite schema (once, before any worker), then runs uvicorn with
uvloop and httptools: one process by default, N worker processes sharing the socket with --workers N.
Keep-alive connections stay open for 75 s idle, like the host's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `conventional` package's parent

from conventional.auth import add_client, init_var_dir
from conventional.store import create_schema


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-client")
    add.add_argument("--var-dir", required=True, type=Path)
    run = sub.add_parser("serve")
    run.add_argument("--var-dir", required=True, type=Path)
    run.add_argument("--bind", required=True, help="HOST:PORT")
    run.add_argument("--acquirer", required=True, help="HOST:PORT of the acquirer (2-byte length prefix)")
    run.add_argument("--acquirer-timeout", type=float, default=10.0)
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--certfile", default="")
    run.add_argument("--keyfile", default="")
    run.add_argument("--issuer", default="")
    run.add_argument("--log-level", default="info")
    args = p.parse_args(argv)

    if args.command == "add-client":
        print(json.dumps(add_client(args.var_dir)))
        return 0

    host, _, port = args.bind.rpartition(":")
    init_var_dir(args.var_dir)
    create_schema(args.var_dir / "transactions.sqlite3")
    if not (args.var_dir / "clients.json").exists():
        print("serve.py: no clients yet: run `serve.py add-client` first", file=sys.stderr)
        return 2
    scheme = "https" if args.certfile else "http"
    # Workers are spawned processes: they read their settings from the environment they inherit (and get
    # this sys.path from multiprocessing's spawn).
    os.environ.update(
        CONVENTIONAL_VAR_DIR=str(args.var_dir.resolve()),
        CONVENTIONAL_ACQUIRER=args.acquirer,
        CONVENTIONAL_ACQUIRER_TIMEOUT=str(args.acquirer_timeout),
        CONVENTIONAL_ISSUER=args.issuer or f"{scheme}://{args.bind}",
    )
    uvicorn.run(
        "conventional.app:app",
        host=host,
        port=int(port),
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=2,
        ssl_certfile=args.certfile or None,
        ssl_keyfile=args.keyfile or None,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
