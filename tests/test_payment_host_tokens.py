"""The HTTP connector's OAuth client and token cache, over real sockets: `cloudlayer simulator --http-bind` as a
subprocess (HTTPS, trustme CA) and the connector in this process with a real SAF file. Counts come from the
simulator's own token endpoint (GET /tokens on its admin port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from prometheus_client import REGISTRY

from cloudlayer.acquirer.payment_host.connector import HttpConnector
from cloudlayer.acquirer.payment_host.wire import reversal_for
from cloudlayer.acquirer.types import AcquirerUnavailable
from cloudlayer.config import AcquirerConfig, HttpAcquirerConfig
from payment_host_harness import SECRET, PaymentHostFiles, PaymentHostProcess
from test_acquirer_support import SEALER, request, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def files(tmp_path: Path) -> PaymentHostFiles:
    return PaymentHostFiles(tmp_path / "files")


@pytest.fixture
def host(tmp_path: Path, files: PaymentHostFiles) -> Iterator[PaymentHostProcess]:
    sim = PaymentHostProcess(tmp_path / "sim", files)
    yield sim
    sim.stop()


def http_config(
    sim: PaymentHostProcess, method: str = "client_secret_basic", *, timeout: float = 3.0, **overrides: Any
) -> AcquirerConfig:
    keys = sim.acquirer_keys(method, **overrides)["acquirer.http"]
    return AcquirerConfig(
        kind="http",
        mode="tcp",
        timeout=timeout,
        connect_timeout=1.0,
        reconnect_min=0.05,
        reconnect_max=0.3,
        saf_retry_min=0.05,
        saf_retry_max=0.3,
        http=msgspec.convert(keys, HttpAcquirerConfig),
    )


@asynccontextmanager
async def running(config: AcquirerConfig, tmp_path: Path, *, wait: bool = True) -> AsyncIterator[HttpConnector]:
    connector = HttpConnector(config, tmp_path / "saf", SEALER)
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.run)
        if wait:
            with trio.fail_after(10):
                await connector.wait_ready()
        yield connector
        nursery.cancel_scope.cancel()


async def tokens(sim: PaymentHostProcess) -> dict[str, Any]:
    return await trio.to_thread.run_sync(sim.tokens)


def keyed(stan: int, amount: int = 1000) -> Any:
    return msgspec.structs.replace(request(stan, amount), key=f"txn-key-{stan:038d}")


async def send_all(connector: HttpConnector, stans: range, *, concurrency: int = 50) -> list[str]:
    codes: list[str] = []
    limit = trio.Semaphore(concurrency)

    async def one(stan: int) -> None:
        async with limit:
            codes.append((await connector.send(keyed(stan))).response_code)

    async with trio.open_nursery() as nursery:
        for stan in stans:
            nursery.start_soon(one, stan)
    return codes


async def test_one_token_request_for_1000_transactions(host: PaymentHostProcess, tmp_path: Path) -> None:
    # A generous deadline: on a loaded shared machine a request must not time out; tokens are what is counted.
    async with running(http_config(host, timeout=15.0), tmp_path) as connector:
        codes = await send_all(connector, range(1, 1001))
    assert codes == ["00"] * 1000
    assert (await tokens(host))["requests"] == 1 and connector.token_requests == 1
    assert (await trio.to_thread.run_sync(host.ledger))["totals"]["authorizations"] == 1000


async def test_the_token_is_refreshed_ahead_of_expiry_so_no_request_meets_an_expired_one(
    host: PaymentHostProcess, tmp_path: Path
) -> None:
    await trio.to_thread.run_sync(lambda: host.set_tokens(lifetime=2))
    async with running(http_config(host), tmp_path) as connector:
        started = trio.current_time()
        stan = 0
        while trio.current_time() - started < 4.5:  # over two lifetimes, a transaction every 50 ms
            stan += 1
            assert (await connector.send(keyed(stan))).response_code == "00"
            await trio.sleep(0.05)
    seen = await tokens(host)
    # Refreshed at 80% (1.6 s): 3 or 4 tokens in 4.5 s, and never one presented after it expired.
    assert 3 <= seen["requests"] <= 4, seen
    assert seen["rejected_tokens"] == 0 and connector.token_resends == 0


async def test_50_requests_during_a_refresh_make_one_token_request_and_none_fails(
    host: PaymentHostProcess, tmp_path: Path
) -> None:
    """The host revokes every token: 50 concurrent requests all meet a 401, share one refresh, resend once."""
    async with running(http_config(host, timeout=10.0), tmp_path) as connector:
        assert await send_all(connector, range(1, 11)) == ["00"] * 10
        await trio.to_thread.run_sync(lambda: host.set_tokens(revoke_all=True))
        codes = await send_all(connector, range(11, 61), concurrency=50)
    assert codes == ["00"] * 50
    seen = await tokens(host)
    assert seen["requests"] == 2, seen  # the first token and one refresh
    assert connector.token_resends == 50 and seen["rejected_tokens"] == 50
    ledger = await trio.to_thread.run_sync(host.ledger)
    assert ledger["totals"]["authorizations"] == 60 and ledger["totals"]["reversals"] == 0


async def test_a_revocation_mid_run_costs_one_refresh_and_no_failed_transaction(
    host: PaymentHostProcess, tmp_path: Path
) -> None:
    async with running(http_config(host, timeout=10.0), tmp_path) as connector:
        async with trio.open_nursery() as nursery:

            async def revoke_midway() -> None:
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(lambda: host.set_tokens(revoke_all=True))

            nursery.start_soon(revoke_midway)
            codes = await send_all(connector, range(1, 401), concurrency=8)
    assert codes == ["00"] * 400
    assert (await tokens(host))["requests"] == 2 and connector.token_resends >= 1


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
async def test_each_client_authentication_method_gets_a_token(
    host: PaymentHostProcess, tmp_path: Path, method: str
) -> None:
    async with running(http_config(host, method), tmp_path) as connector:
        assert (await connector.send(keyed(1))).response_code == "00"
    seen = await tokens(host)
    assert seen["by_method"] == {method: 1} and seen["refused"] == 0


@pytest.mark.parametrize(
    ("method", "wrong"),
    [
        ("client_secret_basic", {"client_secret_file": "wrong_secret"}),
        ("client_secret_post", {"client_secret_file": "wrong_secret"}),
        ("private_key_jwt", {"private_key_file": "other_private_key"}),
        ("private_key_jwt", {"assertion_audience": "https://elsewhere.example/token"}),
        ("client_secret_basic", {"client_id": "someone-else"}),
    ],
)
async def test_a_wrong_secret_or_key_is_refused_and_requests_fail_fast_unsent(
    host: PaymentHostProcess, files: PaymentHostFiles, tmp_path: Path, method: str, wrong: dict[str, str]
) -> None:
    overrides = {k: str(getattr(files, v)) if hasattr(files, v) else v for k, v in wrong.items()}
    async with running(http_config(host, method, **overrides), tmp_path, wait=False) as connector:
        await wait_until(lambda: connector.not_ready_reason == "token endpoint failing")
        assert not connector.ready and connector.not_ready_reason == "token endpoint failing"
        with trio.fail_after(1):  # no waiting for a token that will not come: declined at once, unsent
            with pytest.raises(AcquirerUnavailable, match="no access token"):
                await connector.send(keyed(1))
        await trio.sleep(1.0)
    seen = await tokens(host)
    assert seen["issued"] == 0 and seen["refused"] >= 2
    assert seen["requests"] <= 12, f"token requests must back off, not spin: {seen}"
    assert (await trio.to_thread.run_sync(host.ledger))["totals"]["messages"] == 0


async def test_token_endpoint_failures_back_off_show_in_readiness_and_metrics_then_recover(
    host: PaymentHostProcess, tmp_path: Path
) -> None:
    def errors() -> float:
        return REGISTRY.get_sample_value("cloudlayer_acquirer_token_requests_total", {"outcome": "error"}) or 0.0

    before = errors()
    await trio.to_thread.run_sync(lambda: host.set_faults(token_error_next=3))
    async with running(http_config(host), tmp_path, wait=False) as connector:
        await wait_until(lambda: connector.not_ready_reason == "token endpoint failing")
        assert connector.not_ready_reason == "token endpoint failing"
        with trio.fail_after(10):
            await connector.wait_ready()
        assert (await connector.send(keyed(1))).response_code == "00"
    assert errors() - before == 3
    assert REGISTRY.get_sample_value("cloudlayer_acquirer_token_held") == 0  # the connector has stopped
    assert (await tokens(host))["issued"] == 1


async def test_mutual_tls_presents_our_certificate_and_is_refused_without_it(tmp_path: Path) -> None:
    files = PaymentHostFiles(tmp_path / "mtls-files", mutual_tls=True)
    sim = PaymentHostProcess(tmp_path / "mtls-sim", files)
    try:
        async with running(http_config(sim), tmp_path / "with") as connector:
            assert (await connector.send(keyed(1))).response_code == "00"
        no_cert = http_config(sim, client_cert_file="", client_key_file="")
        async with running(no_cert, tmp_path / "without", wait=False) as connector:
            await trio.sleep(1.0)
            assert not connector.ready and connector.not_ready_reason == "token endpoint failing"
        assert (await tokens(sim))["issued"] == 1
    finally:
        sim.stop()


def test_secrets_and_tokens_stay_out_of_the_simulator_log(host: PaymentHostProcess) -> None:
    assert SECRET not in host.log_path.read_text()


async def test_a_reversal_delivered_through_the_saf_is_keyed_by_the_original(
    host: PaymentHostProcess, tmp_path: Path
) -> None:
    """A purchase whose answer is lost (drop): reversal queued before OutcomeUnknown, delivered by the SAF loop to
    the authorization it undoes; a REVERSAL sent later for it gets the same (idempotent) answer."""
    async with running(http_config(host), tmp_path) as connector:
        await trio.to_thread.run_sync(lambda: host.set_faults(drop_next=1))
        original = keyed(7)
        with pytest.raises(Exception, match="reversal queued"):
            await connector.send(original)
        await wait_until(lambda: connector.saf_depth == 0, within=10)
        entry = (await trio.to_thread.run_sync(host.ledger))["transactions"]["TERM0001:000007"]
        assert entry["authorizations"] == 1 and entry["reversed"] and entry["reversals"] == 1
        again = await connector.send(reversal_for(original))
    assert again.response_code == "00"
