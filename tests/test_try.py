"""`cloudlayer try` against a running host over real TLS (trustme certificate), with the real simulator:
token, purchase, retry replayed; and one clear line (exit 1, no traceback) for what goes wrong."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess, TLSFiles
from txn_harness import CLOUDLAYER, Host, SimulatorProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess, tls_files: TLSFiles) -> Iterator[Host]:
    """HTTPS with a trustme certificate, dev mode (so a dev client is written under var/)."""
    h = Host(
        tmp_path_factory.mktemp("host"),
        simulator,
        extra={
            "server": {
                "tls": True,
                "certfile": str(tls_files.server_cert),
                "keyfile": str(tls_files.server_key),
                "dev_mode": True,
            },
            "oauth": {"dev_client": True},
        },
    )
    h.server = ServerProcess.cloudlayer_serve(h.config)
    try:
        h.server.wait_until_serving(ssl.create_default_context(cafile=str(tls_files.ca_pem)))
        yield h
    finally:
        h.stop()


def cloudlayer_try(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}
    if secret is not None:
        env["CLOUDLAYER_CLIENT_SECRET"] = secret
    return subprocess.run([CLOUDLAYER, "try", *args], capture_output=True, text=True, timeout=60, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudlayer try: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_approved_purchase_and_its_retry_replay(host: Host, tls_files: TLSFiles, simulator: SimulatorProcess) -> None:
    out = cloudlayer_try(
        host.url, "--cacert", str(tls_files.ca_pem), "--client-id", host.client_id, secret=host.client_secret
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "APPROVED" in text
    assert '8A          "00" = Approved' in text
    assert "Authorisation Response Code" in text and "Issuer Authentication Data" in text
    assert "replayed the same response (byte-identical, Idempotent-Replayed: true)" in text
    assert "476173******0119" in text and "4761739001010119" not in text
    assert host.client_secret not in text + out.stderr  # never printed
    stan = text.split("STAN ")[1].split()[0]
    assert simulator.entry("TERM0001", stan)["authorizations"] == 1  # the retry was not processed again


def test_json_decline_names_every_tag(host: Host, tls_files: TLSFiles) -> None:
    out = cloudlayer_try(
        host.url,
        "--cacert",
        str(tls_files.ca_pem),
        "--client-id",
        host.client_id,
        "--client-secret",
        host.client_secret,
        "--amount",
        "1051",
        "--transaction-id",
        "try-decline-1",
        "--json",
    )
    assert out.returncode == 0, out.stderr  # a decline is processed: success for `try`
    doc = json.loads(out.stdout)
    assert doc["status"] == 200 and doc["approved"] is False
    assert doc["responseCode"] == "51" and doc["arc"] == "51" and doc["arcMeaning"] == "Insufficient funds"
    assert doc["request"]["transactionId"] == "try-decline-1" and doc["request"]["amount"] == 1051
    assert doc["emv"][0] == {"tag": "8A", "name": "Authorisation Response Code", "value": "3531"}
    assert all(t["name"] != "Unknown" for t in doc["emv"])
    assert doc["retry"] == {"status": 200, "identical": True, "idempotentReplayedHeader": True, "replayed": True}


def test_issuer_script_template_is_decoded_with_children(host: Host, tls_files: TLSFiles) -> None:
    # 4242: the simulator adds issuer script template 71.
    out = cloudlayer_try(host.url, "--insecure", "--config", str(host.config), "--amount", "4242", "--json")
    assert out.returncode == 0, out.stderr  # the dev client, read from var/ through --config
    tags = {t["tag"]: t for t in json.loads(out.stdout)["emv"]}
    assert tags["71"]["name"] == "Issuer Script Template 1"
    assert {c["tag"] for c in tags["71"]["children"]} >= {"9F18", "86"}


def test_untrusted_certificate_is_a_clear_tls_error(host: Host) -> None:
    out = cloudlayer_try(host.url, "--client-id", host.client_id, secret=host.client_secret)
    assert_one_line_error(out, "TLS handshake", "CERTIFICATE_VERIFY_FAILED", "--cacert")


def test_wrong_secret_is_refused(host: Host, tls_files: TLSFiles) -> None:
    wrong = "clsec_this-is-not-the-secret"
    out = cloudlayer_try(host.url, "--cacert", str(tls_files.ca_pem), "--client-id", host.client_id, secret=wrong)
    assert_one_line_error(out, "token request refused", "HTTP 401", "invalid_client")
    assert wrong not in out.stderr


def test_unreachable_url() -> None:
    out = cloudlayer_try(f"https://127.0.0.1:{free_port()}", "--client-id", "cl_x", "--client-secret", "s")
    assert_one_line_error(out, "cannot connect to https://127.0.0.1:")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ftp://127.0.0.1", "--client-id", "a", "--client-secret", "b"], "URL must start with https://"),
        (["https://127.0.0.1:1", "--client-id", "a"], "give both --client-id and --client-secret"),
        (
            ["https://127.0.0.1:1", "--cacert", "/nonexistent/ca.pem", "--client-id", "a", "--client-secret", "b"],
            "cacert",
        ),
    ],
)
def test_bad_arguments(args: list[str], fragment: str) -> None:
    assert_one_line_error(cloudlayer_try(*args), fragment)


def test_no_dev_client_without_credentials(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text(f'[server]\nvar_dir = "{tmp_path / "var"}"\n')
    out = cloudlayer_try("https://127.0.0.1:1", "--config", str(config))
    assert_one_line_error(out, "no client credentials", "--client-id")
