"""No log level leaks a secret: the real host at `logging.level = "DEBUG"` over TLS (trustme), asked for
tokens (client secret in the form body and in HTTP Basic) and sent a transaction with its Bearer token, over
HTTP/1.1 and over h2, writes neither the secret, nor its Basic encoding, nor the token into its log."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from conftest import VENV_BIN, ServerProcess, TLSFiles, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debug_host(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
) -> Iterator[tuple[ServerProcess, str, str]]:
    directory = tmp_path_factory.mktemp("debug-host")
    config = write_config(
        directory / "cloudlayer.toml",
        {
            "server": {"certfile": str(tls_files.server_cert), "keyfile": str(tls_files.server_key)},
            "logging": {"level": "DEBUG", "format": "json"},
            "metrics": {"enabled": False},
        },
    )
    added = subprocess.run(
        [str(VENV_BIN / "cloudlayer"), "client", "add", "mypinpad", "--json", "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    client = json.loads(added.stdout)
    server = ServerProcess.cloudlayer_serve(config)
    try:
        server.wait_until_serving(httpx.create_ssl_context(verify=str(tls_files.ca_pem)))
        yield server, str(client["client_id"]), str(client["client_secret"])
    finally:
        server.stop()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_debug_log_holds_no_secret_or_token(
    debug_host: tuple[ServerProcess, str, str], tls_files: TLSFiles, http2: bool
) -> None:
    server, client_id, secret = debug_host
    with httpx.Client(verify=str(tls_files.ca_pem), http2=http2, timeout=30) as client:
        form = client.post(
            server.url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        )
        assert form.status_code == 200, form.text
        assert form.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        basic = client.post(
            server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
        )
        assert basic.status_code == 200, basic.text
        token = form.json()["access_token"]
        answer = client.post(
            server.url + "/transaction/process",
            json=sample_purchase(f"debug-log-{http2}", amount=1000),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        refused = client.post(  # a wrong secret is as secret as a right one
            server.url + "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret[::-1]},
        )
        assert refused.status_code == 401
    time.sleep(0.5)  # the worker's lines reach the file
    text = server.stdout + server.stderr
    assert '"level":"debug"' in text or "transaction" in text  # the host did log about these requests
    basic_value = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    for leaked in (secret, secret[::-1], basic_value, token, basic.json()["access_token"]):
        assert leaked not in text
    # What the signature of a leaked token would look like, even cut short: no JWT at all in the log.
    assert "eyJ" not in text
