"""The TOML each bench target starts with: the host (and the baselines, which read the same file), the
acquirer simulator, and the payment-host (HTTPS/JSON) setup of the http scenario."""

from __future__ import annotations

import json
from pathlib import Path

from processes import Tls, free_port
from scenarios import Settings


def server_toml(settings: Settings, port: int, var_dir: Path, tls: Tls, acquirer_port: int | None) -> str:
    """One TOML for host and baselines alike (baselines ignore the acquirer and OAuth sections)."""
    lines = [
        "[server]",
        f'bind = "127.0.0.1:{port}"',
        f"workers = {settings.workers}",
        f"tls = {'true' if tls.enabled else 'false'}",
        f"certfile = {json.dumps(tls.certfile)}",
        f"keyfile = {json.dumps(tls.keyfile)}",
        f"var_dir = {json.dumps(str(var_dir))}",
        # Hypercorn's default closes a keep-alive connection after 1,000 requests: the bench must not
        # measure reconnects. The host's own default is raised too; stated here so no default can change it.
        "keep_alive_max_requests = 1000000",
        "graceful_timeout = 2.0",
        f"transaction_path = {json.dumps(settings.transaction_path)}",
        "",
        "[oauth]",
        f'issuer = "https://127.0.0.1:{port}"',
        "",
        "[acquirer]",
        'mode = "tcp"',
        'host = "127.0.0.1"',
        f"port = {acquirer_port or 9}",
        'length_prefix = "2B"',
        "",
        "[logging]",
        f'level = "{settings.log_level}"',
        'format = "json"',
        "",
        "[metrics]",
        'bind = "127.0.0.1:0"',
        "",
    ]
    return "\n".join(lines)


def simulator_toml(latency_ms: float) -> str:
    return "\n".join(
        [
            "[simulator]",
            'length_prefix = "2B"',
            'admin_bind = ""',
            'default_response = "00"',
            "",
            "[simulator.latency]",
            'distribution = "fixed"',
            f"fixed_ms = {float(latency_ms)}",
            "",
        ]
    )


def payment_host_setup(directory: Path, sim_toml: str) -> tuple[str, list[str], str]:
    """For the http scenario: a trustme CA and certificate, a client secret file; the simulator's [simulator.http]
    section and --http-bind, and the host's [acquirer.http] section."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    secret = directory / "client-secret"
    secret.write_text("bench-payment-host-secret\n")
    http_port = free_port()
    sim = sim_toml + "\n".join(
        [
            "",
            "[simulator.http]",
            f"certfile = {json.dumps(str(paths['cert']))}",
            f"keyfile = {json.dumps(str(paths['key']))}",
            "token_lifetime = 3600",
            "[[simulator.http.clients]]",
            'client_id = "cloudlayer-bench"',
            f"secret_file = {json.dumps(str(secret))}",
            "",
        ]
    )
    base = f"https://127.0.0.1:{http_port}"
    host = "\n".join(
        [
            "",
            "[acquirer.http]",
            f'base_url = "{base}"',
            f'token_url = "{base}/oauth/token"',
            'client_id = "cloudlayer-bench"',
            f"client_secret_file = {json.dumps(str(secret))}",
            f"tls_ca = {json.dumps(str(paths['ca']))}",
            "",
        ]
    )
    return sim, ["--http-bind", f"127.0.0.1:{http_port}"], host
