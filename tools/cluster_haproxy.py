"""The HAProxy side of `make cluster` (tools/cluster.py): the config it writes and its stats, read back.

Why each setting is what it is: docs/deploy.md, "Two hosts behind HAProxy on one machine".
"""

from __future__ import annotations

import csv
import io
import urllib.request
from dataclasses import dataclass

# Health check: a host is taken out after FALL failed /readyz checks INTER_MS apart, and back after RISE good ones.
INTER_MS = 1000
FALL = 2
RISE = 2


@dataclass(frozen=True)
class Backend:
    name: str
    port: int


def render(*, port: int, stats_port: int, pem: str, backends: list[Backend]) -> str:
    """haproxy.cfg: TLS on 127.0.0.1:port (the dev certificate), plain HTTP/1.1 to each host on loopback."""
    servers = "\n".join(f"    server {b.name} 127.0.0.1:{b.port} check" for b in backends)
    return f"""\
# Written by tools/cluster.py (`make cluster`) at every start; docs/deploy.md explains each line.
global
    log stdout format raw local0 info
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    log global
    option httplog
    # Mypinpad keeps connections open: as the host does (server.keep_alive_timeout), 75 s idle.
    timeout client 75s
    timeout http-keep-alive 75s
    timeout http-request 10s
    timeout connect 2s
    timeout queue 5s
    # Longer than the host's own worst case for one transaction (acquirer.connect_timeout + acquirer.timeout
    # for a recovery after a restart, then the reversal), so that the host, not HAProxy, answers it.
    timeout server 30s
    # Retry only a connection that failed before the request was sent (refused, reset during connect), on
    # another server (redispatch). Never a request already sent: a POST that reached a host may have been
    # claimed and sent to the acquirer; resubmitting it is Mypinpad's decision, answered exactly once by us.
    retries 2
    retry-on conn-failure
    option redispatch 1

frontend mypinpad
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend cloudlayer

backend cloudlayer
    balance roundrobin
    # The client's address for the hosts' per-address token throttling (they trust 127.0.0.1:
    # server.trusted_proxies); HAProxy appends it after any X-Forwarded-For the client sent itself.
    option forwardfor
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter {INTER_MS}ms fastinter {INTER_MS // 2}ms downinter {INTER_MS}ms fall {FALL} rise {RISE}
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    stats refresh 2s
"""


def _rows(stats_port: int, timeout: float) -> list[dict[str, str]]:
    url = f"http://127.0.0.1:{stats_port}/stats;csv"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [r for r in rows if r["pxname"] == "cloudlayer" and r["svname"] not in ("FRONTEND", "BACKEND")]


def server_states(stats_port: int, timeout: float = 2.0) -> dict[str, str]:
    """{server name: status} of the cloudlayer backend ("UP", "DOWN", "UP 1/2", ...)."""
    return {r["svname"]: r["status"] for r in _rows(stats_port, timeout)}


def server_answers(stats_port: int, timeout: float = 2.0) -> dict[str, int]:
    """{server name: 2xx answers it has given through HAProxy} (`hrsp_2xx`): which host took the requests."""
    return {r["svname"]: int(r["hrsp_2xx"] or 0) for r in _rows(stats_port, timeout)}
