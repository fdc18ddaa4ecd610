"""The first request on a new TLS connection against the next ones, on the real host (`cloudlayer serve`, TLS
with a trustme certificate, embedded simulator), over loopback.

Each round opens a TCP connection, completes the TLS handshake, then times GET /healthz twice on it (HTTP/1.1
keep-alive): `first` is what Mypinpad pays on every new connection, `second` the steady state beside it in the
same run. The ratio first/second is the figure; absolute times depend on the machine.

    .venv/bin/python bench/bench_tls_first_request.py [--rounds 300] [--tls-version 1.3|1.2] [--json]
    .venv/bin/python bench/bench_tls_first_request.py --no-quickack    # the host without the fix, for before/after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

VENV_BIN = Path(sys.executable).parent
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def read_response(tls: ssl.SSLSocket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += tls.recv(65536)


def one_round(host: str, port: int, context: ssl.SSLContext) -> tuple[float, float]:
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                tls.sendall(REQUEST)
                read_response(tls)
                times.append(time.perf_counter() - t0)
    return times[0], times[1]


def start_host(workdir: Path, ca: trustme.CA, quickack: bool) -> tuple[subprocess.Popen[bytes], str, int]:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    (workdir / "host.toml").write_text(
        f'[server]\nbind = "127.0.0.1:0"\nvar_dir = "{workdir / "var"}"\ncertfile = "{workdir / "cert.pem"}"\n'
        f'keyfile = "{workdir / "key.pem"}"\n[metrics]\nenabled = false\n[logging]\nlevel = "WARNING"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}
    env["CLOUDLAYER_SERVER_TCP_QUICKACK"] = "true" if quickack else "false"
    out = open(workdir / "serve.out", "wb")  # lives as long as the process
    proc = subprocess.Popen(
        [str(VENV_BIN / "cloudlayer"), "serve", "--config", str(workdir / "host.toml")],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"listening on https://([\d.]+):(\d+)", (workdir / "serve.out").read_text())
        if found:
            return proc, found.group(1), int(found.group(2))
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {(workdir / 'serve.out').read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--tls-version", choices=("1.2", "1.3"), default="1.3")
    parser.add_argument("--no-quickack", action="store_true", help="run the host with server.tcp_quickack = false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    version = ssl.TLSVersion.TLSv1_3 if args.tls_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    with tempfile.TemporaryDirectory() as tmp:
        proc, host, port = start_host(Path(tmp), ca, quickack=not args.no_quickack)
        try:
            for _ in range(100):  # the worker is up once one round succeeds
                try:
                    one_round(host, port, context)
                    break
                except OSError:
                    time.sleep(0.1)
            for _ in range(20):
                one_round(host, port, context)  # warm-up
            rounds = [one_round(host, port, context) for _ in range(args.rounds)]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    first = sorted(r[0] * 1000 for r in rounds)
    second = sorted(r[1] * 1000 for r in rounds)

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))]

    result = {
        "quickack": not args.no_quickack,
        "tls": args.tls_version,
        "rounds": args.rounds,
        "first_ms": {"p50": pct(first, 0.5), "p90": pct(first, 0.9), "mean": statistics.fmean(first)},
        "second_ms": {"p50": pct(second, 0.5), "p90": pct(second, 0.9), "mean": statistics.fmean(second)},
    }
    result["first_over_second_p50"] = result["first_ms"]["p50"] / result["second_ms"]["p50"]  # type: ignore[index]
    if args.json:
        print(json.dumps(result))
    else:
        f, s = result["first_ms"], result["second_ms"]
        print(f"TLS {args.tls_version}, quickack {'on' if result['quickack'] else 'off'}, {args.rounds} connections")
        print(f"  first request   p50 {f['p50']:7.2f} ms  p90 {f['p90']:7.2f} ms  mean {f['mean']:7.2f} ms")  # type: ignore[index]
        print(f"  second request  p50 {s['p50']:7.2f} ms  p90 {s['p90']:7.2f} ms  mean {s['mean']:7.2f} ms")  # type: ignore[index]
        print(f"  first / second (p50) {result['first_over_second_p50']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
