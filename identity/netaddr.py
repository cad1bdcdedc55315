"""Which host, and which network, an address belongs to: the keys of every per-host
and per-network limit (DHT rate limits and stores, connection admission, peer
scores, the log limiter).

A *host* is an IPv4 address, or an IPv6 /64 (RFC 6177: one site gets a /64 or
more, so one host can hold any address in it); never a port, since one host
has 65,535 of them.  A *network* is an IPv4 /24 or an IPv6 /48 (what one
provider customer or one cheap server block gets).  An IPv4-mapped IPv6
address counts as its IPv4 address, and a zone (``%eth0``) is dropped.
Text that is not an address is its own key (drivers pass textual IPs; the
simulator may pass names), cut to `MAX_KEY_CHARS`.
"""

from __future__ import annotations

import ipaddress
from typing import Final

#: Leading bits of an IPv6 address that name one host.
IPV6_HOST_BITS: Final = 64
#: Leading bits that name one network.
IPV4_NETWORK_BITS: Final = 24
IPV6_NETWORK_BITS: Final = 48
#: Longest key made from text that is not an address.
MAX_KEY_CHARS: Final = 64

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(host: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_key(host: str) -> str:
    """The host behind ``host``: the IPv4 address, or the IPv6 /64."""
    ip = _parse(host)
    if ip is None:
        return host[:MAX_KEY_CHARS]
    if ip.version == 6:
        return str(ipaddress.ip_network((ip, IPV6_HOST_BITS), strict=False))
    return str(ip)


def network_key(host: str) -> str:
    """The network of ``host``: its IPv4 /24 or IPv6 /48."""
    ip = _parse(host)
    if ip is None:
        return host[:MAX_KEY_CHARS]
    bits = IPV4_NETWORK_BITS if ip.version == 4 else IPV6_NETWORK_BITS
    return str(ipaddress.ip_network((ip, bits), strict=False))


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT``; raise ValueError with a clear message."""
    value = text.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return (host or default_host), int(port)
