"""`cloudlayer simulator` and `cloudlayer saf list|retry`: the acquirer package's operator commands."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING

from ..audit import commands as audit

if TYPE_CHECKING:
    from ..config import Config
    from .saf_store import SafStore


def _cmd_simulator(args: argparse.Namespace) -> int:
    import msgspec
    import trio

    from .simulator import Simulator
    from .simulator_config import check_tls, load_simulator_config

    try:
        config = load_simulator_config(args.simulator_config or args.config)
        overrides = {k: v for k in ("tls_certfile", "tls_keyfile", "tls_client_ca") if (v := getattr(args, k))}
        config = msgspec.structs.replace(config, **overrides)
        check_tls(config, "--tls-*")
    except (OSError, ValueError) as e:
        print(f"cloudlayer simulator: {e}")
        return 2
    try:
        simulator = Simulator(config)  # reads the TLS files
    except OSError as e:  # ssl.SSLError included
        print(f"cloudlayer simulator: TLS files unusable (tls_certfile/tls_keyfile/tls_client_ca): {e.strerror or e}")
        return 2
    host, _, port = args.bind.rpartition(":")
    if not host or not port.isdigit():
        print(f"cloudlayer simulator: --bind must be HOST:PORT, got {args.bind!r}")
        return 2
    http_bind = args.http_bind or config.http.bind
    http_host, _, http_port = http_bind.rpartition(":")
    if http_bind and (not http_host or not http_port.isdigit()):
        print(f"cloudlayer simulator: --http-bind must be HOST:PORT, got {http_bind!r}")
        return 2
    payment_host = None
    if http_bind:
        from pathlib import Path

        from .payment_host.sim_server import PaymentHostSimulator

        # Relative paths in [simulator.http] are the rules file's neighbours; its files are read now, not in trio.
        rules_file = args.simulator_config or args.config
        base_dir = Path(rules_file).resolve().parent if rules_file else Path.cwd()
        try:
            payment_host = PaymentHostSimulator(simulator, config.http, base_dir)
        except (OSError, ValueError) as e:
            print(f"cloudlayer simulator: [simulator.http]: {e}")
            return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if payment_host is not None:
                await nursery.start(payment_host.serve, http_host, int(http_port))
            await nursery.start(simulator.serve, host, int(port))
            print(
                f"simulator listening on {host}:{simulator.port}, admin http://{host}:{simulator.admin_port}/ledger",
                flush=True,
            )
            print(f"  ISO 8583 over {simulator.tls}", flush=True)
            if payment_host is not None:
                print(
                    f"payment host listening on https://{http_host}:{payment_host.port} "
                    f"(token endpoint /oauth/token; certificate {payment_host.ca_file})",
                    flush=True,
                )

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    return 0


def _saf_name(cfg: Config) -> str:
    if cfg.store.backend == "postgres":
        return "saf:postgres"
    return f"saf:{cfg.var_path(cfg.acquirer.saf_path)}"


def _cmd_saf(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..sealing import Sealer
    from .saf_store import open_saf

    cfg = load_config(args.config)
    unavailable: tuple[type[Exception], ...] = ()
    if cfg.store.backend == "postgres":  # psycopg is imported only then
        from ..store.pg.database import DatabaseUnavailable

        unavailable = (DatabaseUnavailable,)
    queue = open_saf(cfg, Sealer.from_config(cfg), application_name="cloudlayer-saf-command")
    try:
        return _saf_command(args, cfg, queue)
    except unavailable as e:
        print(f"cloudlayer: {e}", file=sys.stderr)
        return 1
    finally:
        queue.close()


def _saf_command(args: argparse.Namespace, cfg: Config, queue: SafStore) -> int:
    if args.saf_command == "retry":
        n = queue.make_all_due()
        audit.note(args, obj=_saf_name(cfg), detail={"made_due": n})
        print(f"{n} reversal(s) made due now; a running host retries them on its next pass")
        return 0
    rows = [
        {
            "terminal_id": e.terminal_id,
            "stan": e.stan,
            "rrn": e.rrn,
            "amount": e.amount,
            "original_mti": e.original_mti,
            "reason": e.reason,
            "attempts": e.attempts,
            "queued": datetime.datetime.fromtimestamp(e.created, datetime.UTC).isoformat(timespec="seconds"),
            "next_attempt": datetime.datetime.fromtimestamp(e.next_attempt, datetime.UTC).isoformat(timespec="seconds"),
            "last_error": e.last_error,
        }
        for _, e in queue.entries()
    ]
    print(json.dumps(rows, indent=2))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands. Each sets `func(args) -> int` and takes `parents=[common]`."""
    p = sub.add_parser(
        "simulator", parents=[common], help="run the acquirer simulator (ISO 8583, and the HTTPS payment host)"
    )
    p.add_argument("--bind", default="127.0.0.1:9583", help="HOST:PORT for ISO 8583 (default 127.0.0.1:9583)")
    p.add_argument(
        "--simulator-config",
        default=None,
        help="simulator rules TOML (default: the --config file itself if given, else built-in defaults)",
    )
    p.add_argument("--tls-certfile", default="", help="serve TLS with this certificate (PEM); overrides the config")
    p.add_argument("--tls-keyfile", default="", help="the certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", default="", help="require client certificates from this CA (mutual TLS)")
    p.add_argument(
        "--http-bind",
        default="",
        help="HOST:PORT to also serve the HTTPS/JSON payment-host API and its token endpoint (docs/payment-host.md)",
    )
    p.set_defaults(func=_cmd_simulator)

    s = sub.add_parser("saf", parents=[common], help="inspect or retry the store-and-forward reversal queue")
    ssub = s.add_subparsers(dest="saf_command", required=True)
    p = ssub.add_parser("list", parents=[common], help="the reversals waiting for the acquirer (no card data)")
    p.set_defaults(func=_cmd_saf)
    p = ssub.add_parser("retry", parents=[common], help="make every queued reversal due now")
    p.set_defaults(func=_cmd_saf)
    audit.mark(p, "saf retry")
