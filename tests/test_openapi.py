"""The OpenAPI document: its model schemas are msgspec's, every problem type the code raises is listed,
and schemathesis finds the live server (real `cloudlayer serve` + simulator) true to it: no 500, no
undocumented status, content type or response body."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import cloudlayer
from cloudlayer.http import openapi
from cloudlayer.samples import sample_purchase
from cloudlayer.transactions.route import SCOPE
from txn_harness import Host, SimulatorProcess

PACKAGE = Path(cloudlayer.__file__).parent
DOC: dict[str, Any] = json.loads((PACKAGE / "openapi.json").read_text(encoding="utf-8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# The token endpoint locks out an address after this many failed client authentications; kept low so
# schemathesis also meets the 429 answer (and no slowdown makes the run slow).
LOCKOUT_AFTER = 12


# ---- the document itself ---------------------------------------------------------------------------


def test_model_schemas_are_msgspecs_own() -> None:
    """Change transactions/models.py, then run `python -m cloudlayer.http.openapi` to update the file."""
    schemas = DOC["components"]["schemas"]
    for name, schema in openapi.model_schemas().items():
        assert schemas.get(name) == schema, f"{name} differs from msgspec's schema"
    request = schemas["TransactionRequest"]
    assert set(request["properties"]) >= {"transactionId", "transactionType", "amount", "emvData", "pinBlock"}
    assert "additionalProperties" not in request  # unknown fields are tolerated
    ref = DOC["paths"]["/transaction/process"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert ref["allOf"][0] == {"$ref": "#/components/schemas/TransactionRequest"}


def test_cross_field_rules_are_in_the_document() -> None:
    """The rules between fields (emvData for purchases and refunds, an original for reversals) are schema."""
    import jsonschema_rs  # schemathesis brings it

    body_schema = DOC["paths"]["/transaction/process"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**body_schema, "components": DOC["components"]})
    purchase = sample_purchase("rules-1")
    assert validator.is_valid(purchase)
    assert not validator.is_valid({k: v for k, v in purchase.items() if k != "emvData"})
    assert not validator.is_valid({**purchase, "originalTransactionId": "x"})
    reversal = {**purchase, "transactionType": "REVERSAL"}
    assert not validator.is_valid(reversal)
    assert validator.is_valid({**reversal, "originalTransactionId": "rules-0"})


def _raised_problem_slugs() -> set[str]:
    """Every `Problem(<status>, "<slug>", ...)` in the package, and the bearer errors the route maps."""
    pattern = re.compile(r"Problem\(\s*(\d{3}),\s*\"([a-z-]+)\"")
    slugs = set()
    for path in PACKAGE.rglob("*.py"):
        slugs |= {slug for _, slug in pattern.findall(path.read_text(encoding="utf-8"))}
    # route.bearer_problem: RFC 6750 error codes with '-' for '_', or missing-token; werkzeug's by name.
    return slugs | {"missing-token", "invalid-token", "invalid-request", "insufficient-scope"}


def test_every_problem_type_is_listed_and_described() -> None:
    listed = set(DOC["components"]["schemas"]["ProblemType"]["enum"])
    assert listed == set(DOC["x-problem-types"])
    missing = {f"/problems/{s}" for s in _raised_problem_slugs()} - listed
    assert not missing, f"problem types raised in code but not in openapi.json: {sorted(missing)}"
    for uri, meta in DOC["x-problem-types"].items():
        assert meta["title"] and meta["description"] and 400 <= meta["status"] <= 599, uri
    # Each response narrows `type` to listed URIs whose status is the response's own.
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                content = resp.get("content", {}).get("application/problem+json")
                if content is None:
                    continue
                narrowed = content["schema"]["allOf"][1]["properties"]
                assert narrowed["status"] == {"const": int(status)}, (path, method, status)
                for uri in narrowed["type"]["enum"]:
                    assert DOC["x-problem-types"][uri]["status"] == int(status), (path, method, status, uri)


def test_security_schemes() -> None:
    schemes = DOC["components"]["securitySchemes"]
    flow = schemes["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth/token" and SCOPE in flow["scopes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    op = DOC["paths"]["/transaction/process"]["post"]
    assert {"oauth2": [SCOPE]} in op["security"] and {"bearerAuth": []} in op["security"]


def test_request_example_is_valid_for_the_server() -> None:
    from cloudlayer.transactions.models import decode_request

    media = DOC["paths"]["/transaction/process"]["post"]["requestBody"]["content"]["application/json"]
    for example in media["examples"].values():
        decode_request(json.dumps(example["value"]).encode())


# ---- against the live server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Host]:
    h = Host(
        tmp_path_factory.mktemp("host"),
        simulator,
        acquirer_timeout=1.0,
        extra={"oauth": {"slowdown_after": LOCKOUT_AFTER, "lockout_after": LOCKOUT_AFTER}},
    )
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def token(host: Host) -> str:
    return host.token()  # before schemathesis locks the test address out of the token endpoint


def test_served_document_is_the_packaged_file(host: Host) -> None:
    resp = httpx.get(host.url + "/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.content == (PACKAGE / "openapi.json").read_bytes()


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response (Content-Length framed): its status line; b"" if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(
        int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:]) if k.lower() == b"content-length"
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b"\r\n")[0]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/transaction/process", b"401"), ("PUT", "/transaction/process", b"405"), ("POST", "/nope", b"404")],
)
def test_answer_before_the_body_never_hangs_the_connection(host: Host, method: str, path: str, status: bytes) -> None:
    """Found by schemathesis: answered before its body arrived (here: without a token), the connection was
    neither closed nor reused, and the next request on it hung. Now the server closes it."""
    port = int(host.url.rsplit(":", 1)[1])
    body = json.dumps({"transactionId": "early-answer"}).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    for _ in range(5):  # the hang needed the body and the next request to arrive in separate reads
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head.encode() + b"\r\n\r\n")
            assert status in _read_response(sock)  # answered from the headers alone
            try:
                sock.sendall(body)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                after = _read_response(sock)
            except (ConnectionResetError, BrokenPipeError):
                after = b""
            except TimeoutError:
                pytest.fail("the connection hung after an answer sent before the request body")
            assert after in (b"", b"HTTP/1.1 200 ")  # closed, or reused correctly


# Built from the packaged file (the test above proves the server serves exactly it). schemathesis's lazy
# `from_fixture` does not work with pytest 9 (it sets Node._nodeid), so the base URL is given per call.
schema = schemathesis.openapi.from_dict(
    DOC,
    config=schemathesis.Config.from_dict(
        {"request-timeout": 15, "generation": {"mode": "all", "max-examples": 25, "deterministic": True}}
    ),
)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_live_server_matches_the_document(case: schemathesis.Case, host: Host, token: str) -> None:
    headers = None
    if case.path == "/transaction/process":
        headers = {"Authorization": f"Bearer {token}"}
    resp = case.call_and_validate(base_url=host.url, headers=headers, checks=CHECKS)
    print(
        "DBG",
        case.method,
        case.path,
        resp.status_code,
        resp.headers.get("content-type"),
        resp.text[:100].replace("\n", " "),
    )
