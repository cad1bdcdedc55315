"""Reachability, client mode, relays and port mapping through real NAT routers.

The network namespaces of `tests.netns` (root only; `.ci/run` runs them):
a public network with reachable nodes, and home networks behind routers
that masquerade and drop what nobody inside asked for.  Every node is a real
``p2pblog run`` process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import ROUTABLE_NET, LabNode, NatLab, lab_or_skip, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def lab() -> Iterator[NatLab]:
    with lab_or_skip(ROUTABLE_NET) as made:
        yield made


def reach(node: LabNode) -> dict[str, Any]:
    doc: dict[str, Any] = node.json("status")
    return doc


def texts(node: LabNode) -> list[str]:
    return [p["text"] for p in node.json("timeline")]


def test_home_nodes_go_client_deliver_directly_and_replicate_through_a_relay(
    lab: NatLab, tmp_path: Path
) -> None:
    """Two home nodes behind two routers, and a public node.  Each home node finds it is not
    reachable, goes to client mode and reserves the public node as its relay; A's posts reach
    the public node over the connection A opened, and reach B (which nobody can dial either)
    through a circuit across the relay."""
    public = lab.add_public_host()
    first, second = lab.add_router(), lab.add_router()
    home_a, home_b = lab.add_home_host(first), lab.add_home_host(second)
    seed = lab.start_node(
        public, tmp_path / "public", "--no-port-mapping", "--advertise", public.addr, port=4600
    )
    a = lab.start_node(home_a, tmp_path / "a", "--no-port-mapping", "--bootstrap", seed.addr, port=4601)
    b = lab.start_node(home_b, tmp_path / "b", "--no-port-mapping", "--bootstrap", seed.addr, port=4602)
    for node in (a, b):  # each dials the public node (it follows it), which then relays for both
        assert node.cli("follow", seed.handle).returncode == 0
    for node in (a, b):
        assert wait_for(lambda n=node: reach(n)["relay"]["via"] == [f"{public.addr}:4600"], 90), reach(node)
    status = reach(a)
    assert status["reachability"]["state"] == "unreachable" and status["reachability"]["client_mode"] is True
    # Peers see it at the router's public address, not at its LAN address.
    assert status["reachability"]["observed"][0] == first.addr
    assert reach(seed)["reachability"]["state"] == "reachable"
    out = a.cli("status").stdout
    assert "not reachable from outside" in out and "client mode" in out

    assert a.cli("post", "through the relay").returncode == 0
    # B finds A's record in the DHT (it names the relay) and opens a circuit through it.
    assert b.cli("follow", a.handle).returncode == 0
    assert wait_for(lambda: "through the relay" in texts(b), 90), b.log.read_text()[-3000:]
    relay = reach(seed)["relay"]
    assert relay["serving"] is True and relay["reservations"] == 2
    counters = reach(seed)["counters"]
    assert counters.get("gossip.relay.circuits.opened", 0) >= 1 and counters.get("gossip.relay.bytes", 0) > 0
    # Live: a new post crosses the relay at once.
    assert a.cli("post", "live across two NATs").returncode == 0
    assert wait_for(lambda: "live across two NATs" in texts(b), 30)
    # A public follower gets A's posts over the connection A opened to it (nobody can dial A).
    assert seed.cli("follow", a.handle).returncode == 0
    assert a.cli("post", "straight to the public node").returncode == 0
    assert wait_for(lambda: "straight to the public node" in texts(seed), 30)


def test_a_port_mapping_makes_a_home_node_reachable(lab: NatLab, tmp_path: Path) -> None:
    if shutil.which("miniupnpd") is None:
        pytest.fail("miniupnpd is missing: apt-get install miniupnpd-nftables (.ci/run does)")
    pytest.importorskip("miniupnpc")
    public = lab.add_public_host()
    router = lab.add_router()
    home = lab.add_home_host(router)
    lab.start_miniupnpd(router)
    seed = lab.start_node(
        public, tmp_path / "public", "--no-port-mapping", "--advertise", public.addr, port=4700
    )
    node = lab.start_node(home, tmp_path / "home", "--bootstrap", seed.addr, port=4701)
    assert node.cli("follow", seed.handle).returncode == 0
    assert wait_for(lambda: reach(node)["port_mapping"]["state"] == "mapped", 30), reach(node)["port_mapping"]
    assert reach(node)["port_mapping"]["external"] == [router.addr, 4701]
    assert wait_for(lambda: reach(node)["reachability"]["state"] == "reachable", 60), reach(node)
    status = reach(node)
    assert status["reachability"]["client_mode"] is False
    # It advertises the mapped address: the public node can dial it there.
    assert ["tcp", router.addr, 4701] in status["addrs"]
    lookup = seed.json("lookup", node.handle)
    assert wait_for(lambda: ["tcp", router.addr, 4701] in seed.json("lookup", node.handle)["addrs"], 60), (
        lookup
    )
