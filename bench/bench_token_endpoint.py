"""The token endpoint's own logic (form, limiter, client lookup, HMAC, ES256 sign, JSON, the real JSON log
line to /dev/null), in thread CPU time per call so that preemption by neighbours does not count.

    .venv/bin/python bench/bench_token_endpoint.py [--n 1000] [--rounds 11]

Before/after: run it alternately with PYTHONPATH=<a main checkout>/python and without (bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

import cloudlayer
from cloudlayer.config import Config, LoggingConfig, OAuthConfig, ServerConfig
from cloudlayer.oauth import OAuthService
from cloudlayer.oauth.token_endpoint import TokenRequest
from cloudlayer.observability.logging import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory() as tmp:
        configure_logging(LoggingConfig(level="INFO", format="json"), stream=devnull)
        cfg = Config(server=ServerConfig(var_dir=str(Path(tmp) / "var")), oauth=OAuthConfig())
        service = OAuthService.from_config(cfg)
        client, secret = service.clients.add("bench", ["transactions:process"])
        body = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}".encode()
        req = TokenRequest(
            content_type="application/x-www-form-urlencoded",
            body=body,
            query_string=b"",
            authorization=[],
            remote_addr="127.0.0.1",
        )

        async def rounds() -> list[float]:
            for _ in range(300):
                await service.token_endpoint.handle(req)
            out = []
            for _ in range(args.rounds):
                t0 = time.thread_time()
                for _ in range(args.n):
                    answer = await service.token_endpoint.handle(req)
                    assert answer.status == 200
                out.append((time.thread_time() - t0) / args.n * 1e6)
            return out

        res = trio.run(rounds)
        service.close()
    print(
        f"{Path(cloudlayer.__file__).parent}: TokenEndpoint.handle, thread CPU per call over {args.rounds} rounds"
        f" of {args.n}: median {statistics.median(res):.1f} us, min {min(res):.1f} us"
    )


if __name__ == "__main__":
    main()
