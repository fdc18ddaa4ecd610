"""`cloudlayer serve` over real TLS sockets: HTTP/1.1 and HTTP/2, TLS versions, mTLS, metrics across workers."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import VENV_BIN, ServerProcess, TLSFiles, write_config


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _handshake(url: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    host, port = _host_port(url)
    raw = socket.create_connection((host, port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def _client_context(ca: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(*cert)
    return context


def _request_over(tls: ssl.SSLSocket, path: str = "/healthz") -> bytes:
    """A raw HTTP/1.1 request on an established TLS socket; the whole response (server closes)."""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    chunks = []
    while chunk := tls.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[ServerProcess]:
    """Two workers, a trustme certificate, client certificates optional."""
    directory = tmp_path_factory.mktemp("two-workers")
    config = write_config(
        directory / "cloudlayer.toml",
        {
            "server": {
                "workers": 2,
                "certfile": str(tls_files.server_cert),
                "keyfile": str(tls_files.server_key),
                "client_ca": str(tls_files.ca_pem),
            }
        },
    )
    server = ServerProcess.cloudlayer_serve(config)
    try:
        server.wait_until_serving(_client_context(tls_files.ca_pem))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mtls_required(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("mtls")
    config = write_config(
        directory / "cloudlayer.toml",
        {
            "server": {
                "certfile": str(tls_files.server_cert),
                "keyfile": str(tls_files.server_key),
                "client_ca": str(tls_files.ca_pem),
                "require_client_cert": True,
            },
            "metrics": {"enabled": False},
        },
    )
    server = ServerProcess.cloudlayer_serve(config)
    try:
        server.wait_until_serving(_client_context(tls_files.ca_pem, tls_files.client_cert(directory, "probe")))
        yield server
    finally:
        server.stop()


def test_http11_over_tls(two_workers: ServerProcess, tls_files: TLSFiles) -> None:
    with httpx.Client(verify=_client_context(tls_files.ca_pem), http2=False) as client:
        response = client.get(two_workers.url + "/healthz")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.json() == {"status": "ok"}
    assert "server" not in response.headers  # no version banner


def test_http2_over_tls_alpn(two_workers: ServerProcess, tls_files: TLSFiles) -> None:
    with httpx.Client(verify=_client_context(tls_files.ca_pem), http2=True) as client:
        responses = [client.get(two_workers.url + "/healthz") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert {r.http_version for r in responses} == {"HTTP/2"}


def test_tls12_accepted_with_forward_secret_aead(two_workers: ServerProcess, tls_files: TLSFiles) -> None:
    context = _client_context(tls_files.ca_pem)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with _handshake(two_workers.url, context) as tls:
        assert tls.version() == "TLSv1.2"
        cipher_name = tls.cipher()[0]
        assert cipher_name.startswith("ECDHE-") and ("GCM" in cipher_name or "CHACHA20" in cipher_name)
        assert _request_over(tls).startswith(b"HTTP/1.1 200")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_refused(two_workers: ServerProcess, tls_files: TLSFiles) -> None:
    context = _client_context(tls_files.ca_pem)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(two_workers.url, context).close()
    # The server's refusal, not a client unable to speak TLS 1.1 ("no protocols available").
    # The ClientHello went out (a client unable to offer TLS 1.1 fails locally with NO_PROTOCOLS_AVAILABLE);
    # the server refused it: with an alert, or (trio drops the pending alert) by closing the connection.
    accepted_refusals = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING"}
    assert refused.value.reason in accepted_refusals, refused.value


def test_optional_client_certificate(two_workers: ServerProcess, tls_files: TLSFiles, tmp_path: Path) -> None:
    cert = tls_files.client_cert(tmp_path)
    with httpx.Client(verify=_client_context(tls_files.ca_pem, cert)) as client:
        assert client.get(two_workers.url + "/healthz").status_code == 200
    with httpx.Client(verify=_client_context(tls_files.ca_pem)) as client:
        assert client.get(two_workers.url + "/healthz").status_code == 200


def test_banner_names_store_acquirer_and_metrics(two_workers: ServerProcess) -> None:
    banner = two_workers.stdout
    assert "listening on https://127.0.0.1:" in banner
    assert "store     lmdb at " in banner and str(Path("var") / "store") in banner
    assert "acquirer  built-in simulator" in banner
    assert "client certificates optional" in banner
    assert two_workers.metrics_url


def test_metrics_endpoint_aggregates_both_workers(two_workers: ServerProcess) -> None:
    # Both workers register as they start; the first /healthz answer proves only one of them is up.
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        response = httpx.get(two_workers.metrics_url + "/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        text = response.text
        if "\ncloudlayer_workers 2.0" in text:
            break
        time.sleep(0.1)
    assert "# TYPE cloudlayer_workers gauge" in text
    assert "\ncloudlayer_workers 2.0" in text, text
    assert "# TYPE cloudlayer_replays_total counter" in text
    assert httpx.get(two_workers.metrics_url + "/other", timeout=5).status_code == 404


def test_mtls_accepts_certificate_from_the_ca(
    mtls_required: ServerProcess, tls_files: TLSFiles, tmp_path: Path
) -> None:
    with httpx.Client(verify=_client_context(tls_files.ca_pem, tls_files.client_cert(tmp_path))) as client:
        response = client.get(mtls_required.url + "/healthz")
    assert response.status_code == 200


def _refused(url: str, context: ssl.SSLContext) -> bool:
    """True when the server rejects the client: in the handshake (TLS 1.2) or right after it (TLS 1.3)."""
    try:
        with _handshake(url, context) as tls:
            return not _request_over(tls).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, ConnectionError):
        return True


def test_mtls_refuses_without_certificate(mtls_required: ServerProcess, tls_files: TLSFiles) -> None:
    assert _refused(mtls_required.url, _client_context(tls_files.ca_pem))
    with pytest.raises(httpx.TransportError), httpx.Client(verify=_client_context(tls_files.ca_pem)) as client:
        client.get(mtls_required.url + "/healthz")


def test_mtls_refuses_certificate_from_another_ca(
    mtls_required: ServerProcess, tls_files: TLSFiles, tmp_path: Path
) -> None:
    foreign = TLSFiles(tmp_path / "foreign").client_cert(tmp_path, "intruder")
    assert _refused(mtls_required.url, _client_context(tls_files.ca_pem, foreign))
    # The same request with the right CA's certificate goes through: the refusal is about the certificate.
    assert not _refused(mtls_required.url, _client_context(tls_files.ca_pem, tls_files.client_cert(tmp_path)))


def test_missing_certificate_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "cloudlayer.toml",
        {"server": {"certfile": str(tmp_path / "nope.pem"), "keyfile": str(tmp_path / "nope-key.pem")}},
    )
    result = subprocess.run(
        [str(VENV_BIN / "cloudlayer"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert (
        last_line
        == f"cloudlayer: invalid config: `server.certfile` file not found or not readable: {tmp_path}/nope.pem"
    )
