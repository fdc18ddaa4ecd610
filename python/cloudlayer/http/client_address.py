"""The client's address as a balancer in front of us saw it (server.trusted_proxies, docs/deploy.md §7).

Behind HAProxy every request comes from the balancer's address, so per-address throttling (the token
endpoint's failed-authentication limiter) would see one client. The peer's own X-Forwarded-For is believed
only when the peer is a trusted proxy, and then only as far as the chain of trusted proxies goes: the hops
are read right to left and the first one not in a trusted network is the client. Anything to its left was
written by the client itself and is ignored. An unparseable hop ends the walk at the last trusted address
seen (never an error: the header is input like any other).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A longer chain than any real deployment has: past it, the walk stops (bounded work per request).
MAX_HOPS = 16


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The networks of server.trusted_proxies; ValueError names the entry that is not a CIDR or address."""
    nets: list[Network] = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network (CIDR) or address") from None
    return tuple(nets)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443", as some proxies write it
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientAddress:
    """Resolves the client's address of one request from its peer and X-Forwarded-For headers."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)

    def _trusted(self, addr: Address) -> bool:
        return any(addr.version == net.version and addr in net for net in self.trusted)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        peer = peer or "unknown"
        if not self.trusted:
            return peer
        last = _address(peer)
        if last is None or not self._trusted(last):
            return peer  # a direct client: what it writes in the header is not believed
        # Several header lines are one list, in order (RFC 9110 §5.3).
        hops = [h for line in forwarded_for for h in line.split(",")]
        for text in reversed(hops[-MAX_HOPS:]):
            addr = _address(text)
            if addr is None:
                break
            last = addr
            if not self._trusted(addr):
                break
        return str(last)
