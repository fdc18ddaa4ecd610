"""server.trusted_proxies: the token endpoint's per-address throttling keys the client's address from
X-Forwarded-For only when the peer is a trusted proxy (rightmost untrusted hop); garbage never fails a request.
Real Hypercorn over real sockets, the real token routes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from cloudlayer.config import ConfigError, load_config
from cloudlayer.http.client_address import ClientAddress, parse_networks
from cloudlayer.oauth import OAuthService
from test_oauth import make_app, make_config

LOOPBACK = ClientAddress(parse_networks(["127.0.0.1/32", "10.0.0.0/8"]))

GARBAGE = [
    "",
    ",,,",
    "not-an-address",
    "999.1.1.1",
    "1.2.3.4/24",
    "[::1",
    "::1]:80",
    "unknown",
    "\t 198.51.100.1 \t",  # whitespace is fine, the address stands
    "x" * 8000,
    ", ".join(["10.1.1.1"] * 500),
    "1.2.3.4%eth0",
    "\u00e9\u00ff\u0080",
    "fe80::1%25eth0",
]


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("127.0.0.1", [], "127.0.0.1"),  # a trusted peer that sent no header is the client
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # the client's own entry is ignored
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7, 10.2.3.4"], "198.51.100.7"),  # two lines, two proxies
        ("127.0.0.1", ["198.51.100.7:5555"], "198.51.100.7"),
        ("127.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("127.0.0.1", ["::ffff:198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["junk, 10.0.0.9"], "10.0.0.9"),  # garbage past the trusted chain: the last proxy
        ("192.0.2.50", ["198.51.100.7"], "192.0.2.50"),  # untrusted peer: its header is not believed
        ("::ffff:127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        (None, ["198.51.100.7"], "unknown"),
    ],
)
def test_the_client_is_the_rightmost_hop_not_a_trusted_proxy(peer: str | None, xff: list[str], client: str) -> None:
    assert LOOPBACK.resolve(peer, xff) == client


def test_no_trusted_proxies_ignores_the_header_and_garbage_never_raises() -> None:
    assert ClientAddress(()).resolve("127.0.0.1", ["198.51.100.7"]) == "127.0.0.1"
    for junk in GARBAGE:
        assert LOOPBACK.resolve("127.0.0.1", [junk])  # some address, never an exception


def test_a_bad_trusted_proxies_entry_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\ntrusted_proxies = ["127.0.0.1/32", "lan"]\n')
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies.*'lan'"):
        load_config(path, environ={})
    ok = tmp_path / "d.toml"
    ok.write_text('[server]\ntrusted_proxies = ["127.0.0.1", "::1/128"]\n')
    assert load_config(ok, environ={}).server.trusted_proxies == ["127.0.0.1", "::1/128"]


async def _failures_then_probe(tmp_path: Path, nursery: trio.Nursery, trusted: list[str]) -> list[int]:
    """Three failed authentications, each from 198.51.100.7 per X-Forwarded-For and under a new client id (so
    only the address can lock), then a probe from that address, one from another, and garbage headers."""
    cfg = make_config(tmp_path / "var", slowdown_after=100, lockout_after=3, failure_window=60.0)
    cfg = msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, trusted_proxies=trusted))
    service = OAuthService.from_config(cfg)
    try:
        hc = HypercornConfig()
        hc.bind, hc.accesslog, hc.errorlog = ["127.0.0.1:0"], None, None
        binds = await nursery.start(partial(serve, make_app(service), hc))

        async def attempt(n: int, xff: str | bytes) -> int:
            form = {"grant_type": "client_credentials", "client_id": f"cl_guess{n}", "client_secret": "guess"}
            r = await http.post("/oauth/token", data=form, headers={"X-Forwarded-For": xff})
            assert r.status_code in (401, 429), r.text
            return r.status_code

        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as http:
            statuses = [await attempt(i, "6.6.6.6, 198.51.100.7") for i in range(3)]
            statuses.append(await attempt(10, "198.51.100.7"))
            statuses.append(await attempt(11, "198.51.100.8"))
            for i, junk in enumerate(g[:6000] for g in GARBAGE):  # within h11's 16 KiB of headers
                await attempt(100 + i, junk.strip().encode())  # h11 sends no edge whitespace
            # Raw garbage bytes on the wire (not valid UTF-8 or latin-1 text as httpx would send it).
            r = await http.post(
                "/oauth/token",
                content=b"grant_type=client_credentials&client_id=cl_raw&client_secret=guess",
                headers=[
                    (b"Content-Type", b"application/x-www-form-urlencoded"),
                    (b"X-Forwarded-For", b"\xff\xfe\x80, 1.2.3.4, \xc3("),
                    (b"X-Forwarded-For", b"::::, [1.2.3.4]"),
                ],
            )
            assert r.status_code in (401, 429), r.text
        nursery.cancel_scope.cancel()
        return statuses
    finally:
        service.close()


async def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    statuses = await _failures_then_probe(tmp_path, nursery, ["127.0.0.1/32"])
    assert statuses == [401, 401, 401, 429, 401]  # 198.51.100.7 locked; 198.51.100.8 still answered


async def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path, nursery: trio.Nursery) -> None:
    statuses = await _failures_then_probe(tmp_path, nursery, [])
    assert statuses == [401, 401, 401, 429, 429]  # every request is the peer's: 127.0.0.1 locked
