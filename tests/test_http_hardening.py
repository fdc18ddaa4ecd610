"""What a hostile client found, over raw sockets (an HTTP library would tidy these requests): a request with
both Content-Length and Transfer-Encoding closes its connection (RFC 9112 6.1), hang-ups mid-body leave the
in-flight gauge at its true value, the token endpoint's body limit is a 413 problem as openapi.json says, and
two Authorization headers are refused (RFC 6750 3.1) with nothing processed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from cloudlayer.samples import sample_purchase
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    s = SimulatorProcess(tmp_path_factory.mktemp("sim"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, sim: SimulatorProcess) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("host"), sim, metrics=True, extra={"server": {"read_timeout": 10}})
    h.start()
    yield h
    h.stop()


def connect(host: Host) -> socket.socket:
    address, _, port = host.url.removeprefix("http://").rpartition(":")
    return socket.create_connection((address, int(port)), timeout=10)


def exchange(host: Host, data: bytes, *, until_closed: bool = True, wait: float = 10.0) -> bytes:
    """Send raw bytes; read until the server closes (or `wait` seconds pass without it)."""
    with connect(host) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it
        s.settimeout(wait)
        chunks: list[bytes] = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if not until_closed and one_response(b"".join(chunks)):
                    break
        except TimeoutError:
            chunks.append(b"<still open>")
        except ConnectionResetError:
            chunks.append(b"<reset>")
        return b"".join(chunks)


def one_response(raw: bytes) -> bool:
    """A whole response (headers and its Content-Length of body) has arrived."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def status_and_body(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def form_request(body: bytes, *, extra: str = "") -> bytes:
    return (
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + extra.encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


# ---- Content-Length with Transfer-Encoding ------------------------------------------------------------


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_content_length_with_transfer_encoding_closes_the_connection(host: Host, order: str) -> None:
    form = b"grant_type=client_credentials"
    chunked = f"{len(form):x}\r\n".encode() + form + b"\r\n0\r\n\r\n"
    framing = ["Content-Length: 3", "Transfer-Encoding: chunked"]
    if order == "te-first":
        framing.reverse()
    first = (
        "POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + "".join(h + "\r\n" for h in framing)
        + "\r\n"
    ).encode() + chunked
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = exchange(host, first + pipelined)
    assert not raw.endswith(b"<still open>"), raw
    assert raw.count(b"HTTP/1.1 ") == 1, raw  # the pipelined request is not answered
    status, headers, body = status_and_body(raw)
    assert status == 401 and json.loads(body)["error"] == "invalid_client"  # handled by Transfer-Encoding
    assert headers["connection"] == "close"


def test_a_request_without_both_keeps_its_connection(host: Host) -> None:
    raw = exchange(host, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait=1)
    assert raw.count(b"HTTP/1.1 200") == 2 and raw.endswith(b"<still open>")


# ---- the in-flight gauge ------------------------------------------------------------------------------


def in_flight(host: Host) -> float:
    for line in httpx.get(host.metrics_url, timeout=10).text.splitlines():
        if line.startswith("cloudlayer_http_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("gauge not exported")


def test_300_hang_ups_mid_body_leave_the_in_flight_gauge_at_zero(host: Host) -> None:
    token = host.token()
    heads = [
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 500\r\n\r\ngrant_type=client_",
        b"POST /transaction/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: 900\r\n\r\n".encode()
        + b'{"transactionId": "hang',
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n10\r\ngrant_type=clie",  # a chunk cut short
    ]
    for batch in range(10):
        sockets = []
        for i in range(30):
            s = connect(host)
            s.sendall(heads[(batch * 30 + i) % len(heads)])
            sockets.append(s)
        deadline = time.monotonic() + 10
        while in_flight(host) < 30 and time.monotonic() < deadline:  # every one is inside the app, mid-body
            time.sleep(0.02)
        for s in sockets:
            s.close()
    deadline = time.monotonic() + 15
    while (value := in_flight(host)) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value == 0
    assert httpx.get(host.url + "/healthz", timeout=10).status_code == 200


# ---- the token endpoint's body limit ------------------------------------------------------------------


def assert_413_problem(raw: bytes) -> None:
    status, headers, body = status_and_body(raw)
    assert status == 413, raw[:300]
    assert headers["content-type"] == "application/problem+json"
    doc = json.loads(body[: int(headers["content-length"])])
    assert doc["type"] == "/problems/request-entity-too-large" and doc["status"] == 413


def test_token_endpoint_declared_terabyte_is_413(host: Host) -> None:
    raw = exchange(
        host,
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 1000000000000\r\n\r\ngrant_type=",
        until_closed=False,
    )
    assert_413_problem(raw)


def test_token_endpoint_megabyte_form_is_413(host: Host) -> None:
    raw = exchange(host, form_request(b"grant_type=client_credentials&x=" + b"a" * 1_000_000), until_closed=False)
    assert_413_problem(raw)


def test_token_endpoint_ten_thousand_parameters_is_413(host: Host) -> None:
    body = "&".join(f"p{i}=1" for i in range(10_000)).encode()
    assert_413_problem(exchange(host, form_request(body), until_closed=False))


@pytest.mark.parametrize("size", [10_000, 100_000])  # above the token endpoint's 8 KiB; above max_body_bytes
def test_token_endpoint_chunked_over_limit_is_413(host: Host, size: int) -> None:
    chunk = b"x=" + b"a" * (size - 2)
    data = (
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    )
    assert_413_problem(exchange(host, data, until_closed=False))


def test_token_endpoint_too_many_parameters_within_the_limit_is_invalid_request(host: Host) -> None:
    body = "&".join(f"p{i}=1" for i in range(200)).encode()  # 1.5 KB: within the limit, past 32 parameters
    raw = exchange(host, form_request(body), until_closed=False)
    status, headers, payload = status_and_body(raw)
    assert status == 400 and headers["content-type"] == "application/json"
    doc = json.loads(payload)
    assert doc["error"] == "invalid_request" and "parameters" in doc["error_description"]


# ---- two Authorization headers ------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["same", "garbage"])
def test_two_authorization_headers_are_invalid_request_and_nothing_is_processed(
    host: Host, sim: SimulatorProcess, second: str
) -> None:
    token = host.token()
    purchase = json.dumps(sample_purchase(f"two-auth-{second}", amount=1200)).encode()
    other = f"Bearer {token}" if second == "same" else "Bearer nonsense"
    before = sim.ledger()["totals"]["authorizations"]
    raw = exchange(
        host,
        b"POST /transaction/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token}\r\nAuthorization: {other}\r\n".encode()
        + f"Content-Length: {len(purchase)}\r\n\r\n".encode()
        + purchase,
    )
    status, headers, body = status_and_body(raw)
    assert status == 400, raw[:400]
    assert headers["content-type"] == "application/problem+json"
    assert 'error="invalid_request"' in headers["www-authenticate"]
    assert json.loads(body[: int(headers["content-length"])])["error"] == "invalid_request"
    assert sim.ledger()["totals"]["authorizations"] == before  # nothing reached the acquirer
    # Nothing was stored either: the same transaction, properly sent, is processed now (not a replay).
    ok = httpx.post(
        host.url + "/transaction/process",
        content=purchase,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert ok.status_code == 200 and "Idempotent-Replayed" not in ok.headers
    assert sim.ledger()["totals"]["authorizations"] == before + 1


def test_two_authorization_headers_at_the_token_endpoint_are_invalid_request(host: Host) -> None:
    raw = exchange(
        host,
        form_request(
            f"grant_type=client_credentials&client_id={host.client_id}&client_secret={host.client_secret}".encode(),
            extra="Connection: close\r\nAuthorization: Basic eA==\r\nAuthorization: Basic eQ==\r\n",
        ),
    )
    status, _, body = status_and_body(raw)
    assert status == 400 and json.loads(body)["error"] == "invalid_request"
