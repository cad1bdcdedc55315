"""The NAT test bed (`tests.netns`) behaves like a home router with masquerade and no port
forwarding: home hosts reach public hosts, public hosts reach no home host, and a public
server sees the router's public address as the source."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Host, NatLab, Router, connect, lab_or_skip, listen, remove_stale_namespaces, wait_for

PORT = 4100


@pytest.fixture
def lab() -> Iterator[NatLab]:
    with lab_or_skip() as lab:
        yield lab


def _home(lab: NatLab) -> tuple[Router, Host]:
    router = lab.add_router()
    return router, lab.add_home_host(router)


def test_home_reaches_public_through_masquerade(lab: NatLab) -> None:
    public = lab.add_public_host()
    router, home = _home(lab)
    listen(public, PORT)
    # The public server sees the router's public address, not the home host's LAN address.
    assert connect(home, public.addr, PORT) == f"ok {router.addr}"


def test_public_cannot_reach_home(lab: NatLab) -> None:
    public = lab.add_public_host()
    router, home = _home(lab)
    listen(home, PORT)
    assert connect(home, "127.0.0.1", PORT) == "ok 127.0.0.1"  # it listens
    # The LAN address is not routed on the public network.
    assert connect(public, home.addr, PORT).startswith("failed OSError [Errno 101]")  # unreachable
    # The router forwards nothing inbound: the connect times out (dropped, not refused).
    assert connect(public, router.addr, PORT, timeout=0.5).startswith("failed TimeoutError")


def test_two_homes_and_teardown() -> None:
    with lab_or_skip() as lab:
        public = lab.add_public_host()
        (r1, h1), (r2, h2) = _home(lab), _home(lab)
        assert {h1.addr, h2.addr} == {"192.168.1.2", "192.168.2.2"}
        listen(public, PORT)
        assert connect(h1, public.addr, PORT) == f"ok {r1.addr}"
        assert connect(h2, public.addr, PORT) == f"ok {r2.addr}"
        listen(h2, PORT)
        # One home cannot reach the other (both NATed, no forwarding).
        assert connect(h1, r2.addr, PORT, timeout=0.5).startswith("failed")
        names = list(lab.namespaces)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listing.split() for name in names)
    assert remove_stale_namespaces() == []


def test_a_home_node_joins_a_public_node_through_the_nat(lab: NatLab, tmp_path: Path) -> None:
    public = lab.add_public_host()
    router, home = _home(lab)
    seed = lab.start_node(public, tmp_path / "seed", port=4400)
    node = lab.start_node(home, tmp_path / "home", "--bootstrap", seed.addr, port=4401)
    assert node.json("status")["handle"] == node.handle  # the control API answers in its namespace

    def seed_contacts() -> list[tuple[str, int]]:
        table = seed.json("peers")
        return [(c["host"], c["port"]) for b in table["buckets"] for c in b["contacts"]]

    # The public node sees the home node at the router's public address (masquerade keeps the port).
    assert wait_for(lambda: seed_contacts() == [(router.addr, 4401)], timeout=15), seed_contacts()
