"""Hosts and networks: the keys of every per-host and per-network limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from identity.netaddr import MAX_KEY_CHARS, host_key, network_key


def test_a_host_is_an_ipv4_address_or_an_ipv6_slash_64() -> None:
    assert host_key("192.0.2.1") == "192.0.2.1"
    assert host_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert host_key("2001:db8:1:2:aaaa::1") == host_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert host_key("2001:db8:1:3::1") != host_key("2001:db8:1:2::1")
    assert host_key("fe80::1%eth0") == "fe80::/64"
    assert host_key("not an address") == "not an address"


def test_a_network_is_an_ipv4_slash_24_or_an_ipv6_slash_48() -> None:
    assert network_key("192.0.2.9") == network_key("::ffff:192.0.2.200") == "192.0.2.0/24"
    assert network_key("192.0.3.9") != network_key("192.0.2.9")
    assert network_key("2001:db8:1:ff::6") == "2001:db8:1::/48"


@given(st.text(max_size=300))
def test_any_text_gives_a_short_key(text: str) -> None:
    assert len(host_key(text)) <= max(MAX_KEY_CHARS, 43)
    assert len(network_key(text)) <= max(MAX_KEY_CHARS, 43)


@given(st.ip_addresses())
def test_every_address_is_inside_its_network(ip: object) -> None:
    import ipaddress

    text = str(ip)
    host, net = host_key(text), network_key(text)
    assert ipaddress.ip_network(net).version in (4, 6)
    if "/" not in host:
        assert ipaddress.ip_address(host) in ipaddress.ip_network(net)
