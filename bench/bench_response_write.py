"""What writing an HTTP/1.1 response costs Hypercorn's trio server, with and without cloudlayer.hypercorn_send
(one write per response instead of head, body and an empty end of message). Hypercorn's real TCPServer and h11
protocol serve a keep-alive loopback connection; a client in the same trio run sends N sequential requests. CPU
time of the process per request (both ends: the client's share is the same in both variants), median of R
rounds; each variant in its own subprocess (the change is a patch of Hypercorn's classes), rounds alternated.
Prints one JSON line for bench/run.py.

    .venv/bin/python bench/bench_response_write.py [--n 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

BODY = b'{"transactionId":"b163806-uni-hoc-0-000012345","responseCode":"00","emvData":"' + b"8A023030" * 20 + b'"}'
REQUEST = (
    b"POST /transaction/process HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def _serve_and_drive(n: int) -> float:
    """CPU seconds per request over n sequential requests on one connection."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    config = HypercornConfig()
    config.keep_alive_max_requests = n + 1000  # Hypercorn closes after 1,000 by default
    async with trio.open_nursery() as nursery:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = TCPServer(
            wrap_app(_app, config.wsgi_max_body_size, "asgi"), config, WorkerContext(None), {}, await listener.accept()
        )  # type: ignore[arg-type]
        nursery.start_soon(server.run)
        t0 = 0.0
        for i in range(n + 200):
            if i == 200:  # warmed up
                t0 = time.process_time()
            await client.send_all(REQUEST)
            got = b""
            while not got.endswith(BODY):
                data = await client.receive_some(65536)
                if not data:
                    raise RuntimeError(f"the server closed the connection after {i} requests")
                got += data
        spent = time.process_time() - t0
        await client.aclose()
        nursery.cancel_scope.cancel()
    return spent / n


def _child(variant: str, n: int) -> None:
    if variant == "joined":
        from cloudlayer import hypercorn_send

        hypercorn_send.apply()
    print(trio.run(_serve_and_drive, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=("plain", "joined"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n)
        return
    runs: dict[str, list[float]] = {"plain": [], "joined": []}
    for _ in range(args.rounds):
        for variant in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--n", str(args.n)],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            runs[variant].append(float(out.stdout.strip().splitlines()[-1]) * 1e6)
    plain, joined = statistics.median(runs["plain"]), statistics.median(runs["joined"])
    result = {
        "bench": "response_write",
        "cpu_us_per_request_three_writes": round(plain, 1),
        "cpu_us_per_request_one_write": round(joined, 1),
        "saved_us": round(plain - joined, 1),
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
