"""The framework ceiling: a bare Quart-Trio app whose one route (any path, GET or POST) returns a fixed JSON.

Reads the request body like the host's route does; BENCH_BASELINE_DELAY_MS adds a trio sleep (the
acquirer-latency scenario's ceiling).
"""

from __future__ import annotations

import os

import trio
from quart import Response, request
from quart_trio import QuartTrio

BODY = b'{"status":"ok","source":"quart-trio"}'
DELAY = float(os.environ.get("BENCH_BASELINE_DELAY_MS", "0")) / 1000.0

app = QuartTrio("bench-baseline")


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
async def fixed(path: str) -> Response:
    await request.get_data()
    if DELAY:
        await trio.sleep(DELAY)
    return Response(BODY, status=200, content_type="application/json")
