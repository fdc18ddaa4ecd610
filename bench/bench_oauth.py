"""OAuth micro benchmarks, in one run so the ratios are fair.

    .venv/bin/python bench/bench_oauth.py [--n 20000]

Reports: bearer verification per call with the cache (hit) and without it (full ES256/Ed25519 check +
claims + client lookup), their ratio; token issue per second in-process (form parse + client auth + sign)
and over HTTP (Hypercorn trio worker on loopback, one sequential httpx client).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from cloudlayer.config import Config, OAuthConfig, ServerConfig
from cloudlayer.oauth import OAuthService, register_routes
from cloudlayer.oauth.token_endpoint import TokenRequest

SCOPE = "transactions:process"


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(1000, n)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def http_rates(service: OAuthService, client_id: str, secret: str, n: int) -> tuple[float, float]:
    """(token issue/s, metadata GET/s): the GET is the HTTP stack's own cost, for comparison."""
    app = QuartTrio("bench")
    register_routes(app, service)
    hc = HypercornConfig()
    hc.bind, hc.accesslog, hc.errorlog = ["127.0.0.1:0"], None, None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, hc))
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        async with httpx.AsyncClient(base_url=binds[0]) as http:
            for _ in range(50):
                await http.post("/oauth/token", data=form)
            t0 = time.perf_counter()
            for _ in range(n):
                r = await http.post("/oauth/token", data=form)
                assert r.status_code == 200
            issue = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(n):
                r = await http.get("/.well-known/oauth-authorization-server")
                assert r.status_code == 200
            baseline = n / (time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    return issue, baseline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--http-n", type=int, default=1_000)
    parser.add_argument("--algorithm", choices=["ES256", "EdDSA"], default="ES256")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # WARNING: no per-call logs

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(
            server=ServerConfig(var_dir=str(Path(tmp) / "var")),
            oauth=OAuthConfig(algorithm=args.algorithm, slowdown_after=10**9, lockout_after=10**9),
        )
        service = OAuthService.from_config(cfg)
        client, secret = service.clients.add("bench", [SCOPE])
        token = service.issuer.issue(client.client_id, (SCOPE,))
        header = f"Bearer {token}"
        verifier = service.verifier

        cached = per_call_us(lambda: service.verify_bearer(header, SCOPE), args.n)
        full = per_call_us(lambda: verifier.verify(token, use_cache=False), max(args.n // 10, 1000))
        enabled = per_call_us(lambda: service.clients.is_enabled(client.client_id), args.n)
        sign = per_call_us(lambda: service.issuer.issue(client.client_id, (SCOPE,)), max(args.n // 10, 1000))

        body = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}".encode()
        req = TokenRequest(
            content_type="application/x-www-form-urlencoded",
            body=body,
            query_string=b"",
            authorization=[],
            remote_addr="127.0.0.1",
        )

        async def endpoint_loop(n: int) -> float:
            for _ in range(200):
                await service.token_endpoint.handle(req)
            t0 = time.perf_counter()
            for _ in range(n):
                answer = await service.token_endpoint.handle(req)
                assert answer.status == 200
            return n / (time.perf_counter() - t0)

        endpoint_rate = trio.run(endpoint_loop, max(args.n // 10, 1000))
        http_rate, http_baseline = trio.run(http_rates, service, client.client_id, secret, args.http_n)
        service.close()

    print(f"algorithm {args.algorithm}; joserfc verify path vs cached path, one process, one run")
    print(f"verify_bearer, cached (hit)        {cached:8.2f} us/call")
    print(f"  of which LMDB client check       {enabled:8.2f} us/call")
    print(f"verify, no cache (full check)      {full:8.2f} us/call")
    print(f"ratio full / cached                {full / cached:8.1f} x")
    print(f"token sign only                    {sign:8.2f} us/token  ({1e6 / sign:,.0f}/s)")
    print(f"token endpoint in-process          {endpoint_rate:8,.0f} tokens/s (form + HMAC auth + sign)")
    print(f"token endpoint over HTTP           {http_rate:8,.0f} tokens/s (Hypercorn trio, 1 sequential client)")
    print(f"  baseline: metadata GET over HTTP {http_baseline:8,.0f} req/s (same server and client)")


if __name__ == "__main__":
    main()
