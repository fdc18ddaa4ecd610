"""The `cloudlayer` command: one entry point for serving, the simulator and operator tasks."""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if args.bind:
        os.environ["CLOUDLAYER_SERVER_BIND"] = f'"{args.bind}"'
    cfg = load_config(args.config)
    return serve(cfg, args.config)


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand; SUPPRESS keeps the subcommand's copy from
    # overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="TOML config file (default: $CLOUDLAYER_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(prog="cloudlayer", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("CLOUDLAYER_CONFIG"), help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the transaction host (Hypercorn, trio worker)")
    p.add_argument("--bind", help="HOST:PORT to listen on (overrides server.bind)")
    p.set_defaults(func=_cmd_serve)

    # Each package owns its operator commands.
    from . import try_command
    from .acquirer import commands as acquirer_commands
    from .oauth import commands as oauth_commands
    from .store import commands as store_commands
    from .store.pg import commands as db_commands

    oauth_commands.register(sub, common)
    acquirer_commands.register(sub, common)
    store_commands.register(sub, common)
    db_commands.register(sub, common)
    try_command.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
