"""TLS and mutual TLS on the acquirer link, over real sockets with trustme certificates: the connector against
the simulator's TLS listener in-process, then `cloudlayer serve` against `cloudlayer simulator --tls-*`.

Certificate checks are on and not ignorable: a certificate from another CA, or for another name, means the
link never comes up (nothing reaches the acquirer, /readyz says the acquirer is down); with mutual TLS the
simulator refuses a host without a client certificate or with one from another CA."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cloudlayer.samples import sample_purchase
from conftest import TLSFiles
from test_acquirer_support import acquirer_config, request, running_connector, running_simulator, sim_config
from txn_harness import CLOUDLAYER, Host, SimulatorProcess

# Long enough for several connection attempts (reconnect_max 0.2 s): a refused link stays down throughout.
REFUSED_FOR = 1.5


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Another CA with its own server certificate for 127.0.0.1/localhost: nothing we trust."""
    return TLSFiles(tmp_path_factory.mktemp("other-ca"))


def tls_sim(tls: TLSFiles, *, client_ca: str = "", certfile: str = "", keyfile: str = "") -> Any:
    certfile, keyfile = certfile or str(tls.server_cert), keyfile or str(tls.server_key)
    return sim_config(tls_certfile=certfile, tls_keyfile=keyfile, tls_client_ca=client_ca)


def tls_host(ca: Path | str, cert: tuple[str, str] | None = None) -> Any:
    extra = {"tls_certfile": cert[0], "tls_keyfile": cert[1]} if cert else {}
    return acquirer_config(tls=True, tls_ca=str(ca), **extra)


async def stays_down(tmp_path: Path, sim_cfg: Any, host_cfg: Any) -> int:
    """Run a connector against a simulator for REFUSED_FOR seconds; assert the link never came up and return
    how many messages the simulator decoded."""
    async with running_simulator(sim_cfg) as sim:
        async with running_connector(sim.port, tmp_path / "saf", host_cfg, wait=False) as connector:
            with trio.move_on_after(REFUSED_FOR):
                await connector.wait_ready()
                pytest.fail("the link came up")
            assert not connector.ready and connector.links_up == 0
        return sim.ledger.messages


async def test_tls_end_to_end(tmp_path: Path, tls_files: TLSFiles) -> None:
    async with running_simulator(tls_sim(tls_files)) as sim:
        async with running_connector(sim.port, tmp_path / "saf", tls_host(tls_files.ca_pem)) as connector:
            response = await connector.send(request(1))
            repeat = await connector.inquire(request(1))
    assert response.response_code == "00" and response.authorisation_code
    assert repeat is not None and repeat.authorisation_code == response.authorisation_code
    assert sim.ledger.snapshot()["totals"]["authorizations"] == 1


async def test_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, tls_files: TLSFiles, other_ca: TLSFiles
) -> None:
    assert await stays_down(tmp_path, tls_sim(other_ca), tls_host(tls_files.ca_pem)) == 0


async def test_without_a_ca_bundle_the_system_cas_are_used_and_a_private_ca_is_refused(
    tmp_path: Path, tls_files: TLSFiles
) -> None:
    assert await stays_down(tmp_path, tls_sim(tls_files), acquirer_config(tls=True)) == 0


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, tls_files: TLSFiles) -> None:
    """Hostname checks are on: the right CA, but a certificate for other.example, not 127.0.0.1."""
    issued = tls_files.ca.issue_cert("other.example")
    cert, key = tmp_path / "other-cert.pem", tmp_path / "other-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    sim_cfg = tls_sim(tls_files, certfile=str(cert), keyfile=str(key))
    assert await stays_down(tmp_path, sim_cfg, tls_host(tls_files.ca_pem)) == 0


async def test_a_plain_host_does_not_reach_a_tls_acquirer(tmp_path: Path, tls_files: TLSFiles) -> None:
    assert await stays_down(tmp_path, tls_sim(tls_files), acquirer_config()) == 0


async def test_mutual_tls_with_the_right_client_certificate(tmp_path: Path, tls_files: TLSFiles) -> None:
    client = tls_files.client_cert(tmp_path, "cloudlayer-host")
    sim_cfg = tls_sim(tls_files, client_ca=str(tls_files.ca_pem))
    async with running_simulator(sim_cfg) as sim:
        async with running_connector(sim.port, tmp_path / "saf", tls_host(tls_files.ca_pem, client)) as connector:
            assert (await connector.send(request(2))).response_code == "00"
    assert sim.ledger.snapshot()["totals"]["authorizations"] == 1


async def test_mutual_tls_refuses_a_host_without_a_client_certificate(tmp_path: Path, tls_files: TLSFiles) -> None:
    sim_cfg = tls_sim(tls_files, client_ca=str(tls_files.ca_pem))
    assert await stays_down(tmp_path, sim_cfg, tls_host(tls_files.ca_pem)) == 0


async def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    tmp_path: Path, tls_files: TLSFiles, other_ca: TLSFiles
) -> None:
    client = other_ca.client_cert(tmp_path, "impostor")
    sim_cfg = tls_sim(tls_files, client_ca=str(tls_files.ca_pem))
    assert await stays_down(tmp_path, sim_cfg, tls_host(tls_files.ca_pem, client)) == 0


# ---- the host and the simulator as processes -----------------------------------------------------------------


def sim_args(tls: TLSFiles, client_ca: Path | None = None) -> list[str]:
    args = ["--tls-certfile", str(tls.server_cert), "--tls-keyfile", str(tls.server_key)]
    return [*args, "--tls-client-ca", str(client_ca)] if client_ca else args


@pytest.mark.slow
def test_host_over_mutual_tls_end_to_end(tmp_path: Path, tls_files: TLSFiles) -> None:
    client_cert, client_key = tls_files.client_cert(tmp_path, "cloudlayer-host")
    sim = SimulatorProcess(tmp_path / "sim", args=sim_args(tls_files, client_ca=tls_files.ca_pem))
    acquirer = {"tls": True, "tls_ca": str(tls_files.ca_pem), "tls_certfile": client_cert, "tls_keyfile": client_key}
    host = Host(tmp_path / "host", sim, extra={"acquirer": acquirer})
    try:
        host.start()
        body = sample_purchase("tls-1", amount=1000)
        resp = httpx.post(
            host.url + "/transaction/process",
            content=json.dumps(body),
            headers={"Authorization": f"Bearer {host.token()}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 200 and resp.json()["approved"], resp.text
        assert sim.entry("TERM0001", resp.json()["stan"])["authorizations"] == 1
    finally:
        host.stop()
        sim.stop()


@pytest.mark.slow
def test_host_with_the_wrong_ca_never_brings_the_link_up(
    tmp_path: Path, tls_files: TLSFiles, other_ca: TLSFiles
) -> None:
    sim = SimulatorProcess(tmp_path / "sim", args=sim_args(tls_files))
    host = Host(tmp_path / "host", sim, extra={"acquirer": {"tls": True, "tls_ca": str(other_ca.ca_pem)}})
    try:
        host.start(wait_ready=False)
        trio.run(trio.sleep, REFUSED_FOR)
        ready = httpx.get(host.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["checks"]["acquirer"] == "down", ready.text
        assert sim.ledger()["totals"]["messages"] == 0
        assert "acquirer_connect_failed" in host.log_text() and "SSLCertVerificationError" in host.log_text()
    finally:
        host.stop()
        sim.stop()


@pytest.mark.slow
def test_unusable_acquirer_tls_files_stop_the_start_with_one_line(tmp_path: Path, tls_files: TLSFiles) -> None:
    sim = SimulatorProcess(tmp_path / "sim", args=sim_args(tls_files))
    missing = str(tmp_path / "missing-ca.pem")
    host = Host(tmp_path / "host", sim, extra={"acquirer": {"tls": True, "tls_ca": missing}})
    try:
        with pytest.raises(AssertionError, match="TLS material unusable"):
            host.start()
    finally:
        host.stop()
        sim.stop()


@pytest.mark.parametrize("case", ["missing", "not a PEM", "certificate only", "client CA only"])
def test_the_simulator_refuses_unusable_tls_flags_in_one_line(tmp_path: Path, tls_files: TLSFiles, case: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    flags = {
        "missing": ["--tls-certfile", str(tmp_path / "none.pem"), "--tls-keyfile", str(tmp_path / "none.key")],
        "not a PEM": ["--tls-certfile", str(garbage), "--tls-keyfile", str(garbage)],
        "certificate only": ["--tls-certfile", str(tls_files.server_cert)],
        "client CA only": ["--tls-client-ca", str(tls_files.ca_pem)],
    }[case]
    done = subprocess.run(
        [CLOUDLAYER, "simulator", "--bind", "127.0.0.1:0", *flags], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("cloudlayer simulator: ") and "tls" in done.stdout and not done.stderr
    assert len(done.stdout.splitlines()) == 1
