"""The conventional bench baseline (bench/baselines/conventional/) keeps the contract the bench drives: real
uvicorn subprocess, real `cloudlayer simulator` over TCP, real SQLite file. A baseline that skipped a step
would make the bench's ratio meaningless, so each step it claims is checked here; never its speed."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import iso8583
import pytest

from conftest import REPO
from txn_harness import SimulatorProcess, free_port

sys.path.insert(0, str(REPO / "bench" / "baselines"))
sys.path.insert(0, str(REPO / "bench"))
from conventional import spec as conventional_spec
from conventional.flow import card_from_emv, iso_request
from conventional.models import TransactionRequest
from conventional.store import Claimed, connect

from loadgen_workload import fill
from scenarios import purchase_body

SERVE = REPO / "bench" / "baselines" / "conventional" / "serve.py"
PATH = "/transaction/process"


class Baseline:
    def __init__(self, workdir: Path, simulator: SimulatorProcess) -> None:
        self.var = workdir / "var"
        add = subprocess.run(
            [sys.executable, str(SERVE), "add-client", "--var-dir", str(self.var)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        client = json.loads(add.stdout)
        self.client_id, self.secret = client["client_id"], client["client_secret"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "conventional.log", "wb")
        argv = [sys.executable, str(SERVE), "serve", "--var-dir", str(self.var), "--bind", f"127.0.0.1:{self.port}"]
        argv += ["--acquirer", f"127.0.0.1:{simulator.port}", "--acquirer-timeout", "1"]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert self.proc.poll() is None, (workdir / "conventional.log").read_text()
                time.sleep(0.05)
        self.token = self.get_token().json()["access_token"]

    def get_token(self, **form: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.secret}
        return httpx.post(self.url + "/oauth/token", data={**data, **form}, timeout=5)

    def post(self, body: str | bytes, token: str | None = None) -> httpx.Response:
        headers = {"content-type": "application/json", "authorization": f"Bearer {token or self.token}"}
        return httpx.post(self.url + PATH, content=body, headers=headers, timeout=10)

    def rows(self) -> dict[str, tuple[Any, ...]]:
        with sqlite3.connect(self.var / "transactions.sqlite3") as db:
            rows = db.execute("SELECT transaction_id, state, response_code, response_body, stan FROM transactions")
            return {r[0]: r[1:] for r in rows}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    s = SimulatorProcess(tmp_path_factory.mktemp("conv-sim"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, sim: SimulatorProcess) -> Iterator[Baseline]:
    b = Baseline(tmp_path_factory.mktemp("conventional"), sim)
    yield b
    b.stop()


def body(txn: str, **changes: Any) -> str:
    fields = json.loads(fill(purchase_body(), txn)) | changes
    return json.dumps({k: v for k, v in fields.items() if v is not None})


def test_token_is_an_es256_at_jwt_and_bad_credentials_are_refused(baseline: Baseline) -> None:
    ok = baseline.get_token()
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
    header = json.loads(base64.urlsafe_b64decode(ok.json()["access_token"].split(".")[0] + "=="))
    assert header == {"alg": "ES256", "kid": "conventional-1", "typ": "at+jwt"}
    assert baseline.get_token(client_secret=baseline.secret + "x").json()["error"] == "invalid_client"
    assert baseline.get_token(client_id="cl_000000000000000000000000").status_code == 401
    assert baseline.get_token(client_secret="").status_code == 401
    assert baseline.get_token(grant_type="password").json()["error"] == "unsupported_grant_type"
    assert baseline.get_token(scope="admin").json()["error"] == "invalid_scope"


def test_a_purchase_is_sent_once_stored_completed_and_replayed_byte_for_byte(
    baseline: Baseline, sim: SimulatorProcess
) -> None:
    first = baseline.post(body("conv-1"))
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["approved"] is True and answer["emvData"].startswith("8A023030")
    assert len(answer["authorisationCode"]) == 6  # the simulator's, so the 0200 went out and came back
    again = baseline.post(json.dumps(json.loads(body("conv-1")), indent=2))  # same content, other spacing
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    conflict = baseline.post(body("conv-1", amount=1300))
    assert conflict.status_code == 409 and conflict.json()["type"] == "/problems/transaction-id-conflict"
    entry = sim.entry("BENCH001", answer["stan"])
    assert entry["authorizations"] == 1  # neither the replay nor the conflict reached the acquirer
    state, code, stored, stan = baseline.rows()["conv-1"]
    assert (state, code, stored, stan) == ("COMPLETED", "00", first.content, answer["stan"])


def test_the_store_is_wal_with_a_full_sync(baseline: Baseline) -> None:
    conn = connect(baseline.var / "transactions.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


def test_no_answer_in_time_is_a_stored_91_and_a_dropped_link_is_reopened(
    baseline: Baseline, sim: SimulatorProcess
) -> None:
    sim.set_faults(drop_next=1)
    lost = baseline.post(body("conv-timeout"))
    assert lost.status_code == 200 and lost.json()["responseCode"] == "91"
    assert baseline.rows()["conv-timeout"][:2] == ("COMPLETED", "91")
    sim.set_faults(close_next=1)
    assert baseline.post(body("conv-closed")).json()["responseCode"] == "91"
    after = baseline.post(body("conv-after-close"))
    assert after.json()["responseCode"] == "00"


def test_pending_is_committed_before_the_answer_and_a_duplicate_meanwhile_is_told_to_retry(
    baseline: Baseline, sim: SimulatorProcess
) -> None:
    # The acquirer holds the answer long enough for a loaded machine to look while it waits.
    sim.set_faults(delay_seconds=3.0, delay_next=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(baseline.post, body("conv-dup"))
        deadline = time.monotonic() + 2.5
        while "conv-dup" not in baseline.rows() and time.monotonic() < deadline:
            time.sleep(0.02)
        # Committed (visible to another connection) while the acquirer still holds the answer.
        assert baseline.rows()["conv-dup"][0] == "PENDING"
        assert not first.done()
        second = baseline.post(body("conv-dup"))
        assert first.result().status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "2"


def test_bearer_tokens_are_verified_every_time(baseline: Baseline) -> None:
    head, payload, signature = baseline.token.split(".")
    forged_signature = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    for token in (f"{head}.{payload}.{forged_signature}", "not-a-jwt", f"{head}.{payload}."):
        refused = baseline.post(body("conv-bearer"), token=token)
        assert refused.status_code == 401 and "invalid_token" in refused.headers["www-authenticate"]
    no_header = httpx.post(baseline.url + PATH, content=body("conv-bearer"), timeout=5)
    assert no_header.status_code == 401
    assert "conv-bearer" not in baseline.rows()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "1200"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": 10**12}, "amount"),
        ({"transactionId": ""}, "transactionId"),
        ({"transactionId": "a b"}, "transactionId"),
        ({"transactionType": "REVERSAL"}, "transactionType"),
        ({"currency": "82"}, "currency"),
        ({"merchantId": "M" * 16}, "merchantId"),
        ({"terminalId": "TERM001\n"}, "terminalId"),
        ({"posEntryMode": "7"}, "posEntryMode"),
        ({"emvData": "ABC"}, "emvData"),
        ({"emvData": None}, "emvData"),
        ({"pinBlock": "12"}, "pinBlock"),
        ({"localDateTime": "2026-02-30T10:00:00"}, "localDateTime"),
        ({"localDateTime": "2026-11-26 14:05:09"}, "localDateTime"),
    ],
)
def test_bad_fields_are_a_422_naming_the_field_without_echoing_it(
    baseline: Baseline, changes: dict[str, Any], field: str
) -> None:
    refused = baseline.post(body("conv-bad", **changes))
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert refused.headers["content-type"] == "application/problem+json" and problem["field"] == field
    assert "4761739001010119" not in refused.text and "input" not in problem


def test_malformed_json_and_malformed_emv_are_4xx(baseline: Baseline) -> None:
    assert baseline.post(b"{not json").status_code == 400
    assert baseline.post(b"[1, 2]").status_code == 422
    bad_emv = baseline.post(body("conv-emv", emvData="9F0206000000"))  # length runs past the data
    assert bad_emv.status_code == 422 and bad_emv.json()["field"] == "emvData"
    assert "conv-emv" not in baseline.rows()


def test_the_spec_is_our_dialect_and_the_0200_is_the_one_the_host_sends() -> None:
    """The baseline copies docs/iso8583.md rather than importing cloudlayer: it must still be the same dialect
    and carry the same fields, or the bench would compare different work."""
    from cloudlayer import emv
    from cloudlayer.acquirer.codec import encode
    from cloudlayer.acquirer.messages import build_request
    from cloudlayer.acquirer.spec import SPEC
    from cloudlayer.transactions.mapping import build_acquirer_request
    from cloudlayer.transactions.models import decode_request

    def shape(spec: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {k: (v["data_enc"], v["len_enc"], v["len_type"], v["max_len"]) for k, v in spec.items()}

    assert shape(conventional_spec.SPEC) == shape(SPEC)
    for extra in ({}, {"pinBlock": "0123456789ABCDEF", "transactionType": "REFUND"}):
        raw = body("conv-diff", **extra)
        host_req = decode_request(raw.encode())
        icc = bytes.fromhex(host_req.emv_data or "")
        ours = build_request(
            build_acquirer_request(
                host_req, icc, emv.card_data(icc), stan="000042", rrn="633600000042", now=time.time()
            ),
            "0200",
            "123456",
        )
        req = TransactionRequest.model_validate_json(raw)
        theirs = iso_request(req, card_from_emv(icc), icc, Claimed(42, "000042", "633600000042"))
        theirs["7"] = ours["7"]  # the transmission time: the same clock, maybe another second
        assert iso8583.encode(theirs, conventional_spec.SPEC)[0] == encode(ours)  # the same bytes on the wire
