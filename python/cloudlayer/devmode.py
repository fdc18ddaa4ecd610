"""What `cloudlayer serve` does only in development: the in-process acquirer simulator, the dev OAuth
client and a ready-to-paste curl pair. Never active unless the config asks (configs/dev.toml does)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import msgspec
import trio

from .acquirer.simulator import serve_simulator
from .acquirer.simulator_config import SimulatorConfig, load_simulator_config
from .config import Config, ConfigError
from .samples import sample_purchase_json


def embedded_simulator_config(cfg: Config) -> SimulatorConfig:
    """The in-process simulator's rules; a bad rules file stops the start with one line (ConfigError)."""
    path = cfg.acquirer.simulator_config
    try:
        sim_cfg = load_simulator_config(Path(cfg.base_dir, path) if path else None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"invalid config: `acquirer.simulator_config` {e}") from None
    # The file's fixed admin port would clash with another dev host; any free port will do here. The workers
    # reach it over loopback in plain TCP (acquirer.tls needs mode = "tcp"), so its TLS settings do not apply.
    return msgspec.structs.replace(sim_cfg, admin_bind="127.0.0.1:0", tls_certfile="", tls_keyfile="", tls_client_ca="")


async def run_embedded_simulator(
    sim_cfg: SimulatorConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """The simulator on an ephemeral loopback port, in the serving parent so that every worker shares
    one simulator (and one ledger). Workers are pointed at it through the environment."""
    await serve_simulator(sim_cfg, "127.0.0.1", 0, task_status=task_status)


def point_workers_at(port: int) -> None:
    os.environ["CLOUDLAYER_ACQUIRER_MODE"] = '"tcp"'
    os.environ["CLOUDLAYER_ACQUIRER_HOST"] = '"127.0.0.1"'
    os.environ["CLOUDLAYER_ACQUIRER_PORT"] = str(port)


def dev_client_banner(cfg: Config, base_url: str) -> str:
    """The dev client's credentials and a curl pair that gets a token and sends a sample purchase."""
    from .oauth import OAuthService

    service = OAuthService.from_config(cfg)
    try:
        creds = service.ensure_dev_client()
    finally:
        service.close()
    if creds is None:
        return ""
    client_id, secret = creds
    insecure = " -k" if cfg.server.tls and not cfg.server.certfile else ""
    body = sample_purchase_json(printable=True).decode()
    token_cmd = (
        f"TOKEN=$(curl -s{insecure} {base_url}/oauth/token -d grant_type=client_credentials "
        f"-d client_id={client_id} -d client_secret={secret} | python3 -c 'import json,sys; "
        f'print(json.load(sys.stdin)["access_token"])\')'
    )
    txn_cmd = (
        f'curl -s{insecure} {base_url}{cfg.server.transaction_path} -H "Authorization: Bearer $TOKEN" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    return "\n".join(
        [
            "",
            "Development mode (never in production):",
            f"  dev client id      {client_id}",
            f"  dev client secret  {secret}",
            "  get a token and send a sample purchase:",
            f"    {token_cmd}",
            f"    {txn_cmd}",
            f"  or: .venv/bin/cloudlayer try {base_url}{' --insecure' if insecure else ''}",
            "",
        ]
    )
