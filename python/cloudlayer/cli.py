"""The `cloudlayer` command: one entry point for serving, the simulator and operator tasks."""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config


def _cmd_serve(args: argparse.Namespace) -> int:
    from .audit.commands import note, record
    from .server import serve

    if args.bind:
        os.environ["CLOUDLAYER_SERVER_BIND"] = f'"{args.bind}"'
    cfg = load_config(args.config)

    def started(digest: str) -> None:
        # One entry per start, once the host is bound and about to serve; a start that fails before is one
        # failed entry instead (run_audited). The host's own exit is in its logs, not here.
        detail = {"config_digest": digest, "config": args.config or "", "var_dir": str(cfg.var_path(""))}
        note(args, obj=f"host:{cfg.server.bind}", detail=detail)
        args.audit_done = True
        if record(args, "host start", 0) != 0:
            raise ConfigError("the audit log is not writable (audit.path): not starting an unaudited host")

    return serve(cfg, args.config, on_started=started)


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
    from .audit import commands as audit_commands
    from .backup import commands as backup_commands
    from .oauth import commands as oauth_commands
    from .store import commands as store_commands
    from .store.pg import commands as db_commands

    audit_commands.mark(p, "host start")

    oauth_commands.register(sub, common)
    acquirer_commands.register(sub, common)
    store_commands.register(sub, common)
    db_commands.register(sub, common)
    try_command.register(sub, common)
    audit_commands.register(sub, common)
    backup_commands.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .audit.commands import audit_usage_error, run_audited

    parser = build_parser()
    raw = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(raw)
    except SystemExit as e:
        if e.code not in (0, None):
            audit_usage_error(raw, int(e.code) if isinstance(e.code, int) else 2)
        raise
    try:
        if getattr(args, "audit_action", None):
            return run_audited(args, args.func)
        return int(args.func(args))
    except ConfigError as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
