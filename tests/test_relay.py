"""Circuit relays, sans IO: `NodeCore`s over the in-memory wire (see `tests/test_reachability.py`).

C and F are behind NAT routers (`Wire.unreachable`): neither can dial the
other.  R is reachable and relays.  C goes to client mode, reserves R, and
its records name R; F reaches C through R, and replicates C's feed."""

from __future__ import annotations

import pytest

from identity import Identity
from p2pblog import replication
from p2pblog.node import NodeCore
from p2pblog.reachability import UNREACHABLE
from p2pblog.replication import MAINTAIN_EVERY, PeerConnected
from p2pblog.store import Store
from tests.gossip.wire import Wire
from tests.wire_nodes import OpenStore, add_core, follow, open_store

C, R, F = (Identity(bytes([i]) * 32) for i in (61, 62, 63))
HOST = {"c": "10.11.0.1", "r": "10.22.0.2", "f": "10.33.0.3"}


def core(identity: Identity, store: Store, seed: int, wire: Wire, name: str, *, relay: bool) -> NodeCore:
    return add_core(identity, store, seed, wire, name, HOST[name], relay=relay)


def setup(open_store: OpenStore, *, relay: bool = True) -> tuple[Wire, NodeCore, NodeCore, NodeCore]:
    wire = Wire()
    c = core(C, open_store("c"), 1, wire, "c", relay=True)
    r = core(R, open_store("r"), 2, wire, "r", relay=relay)
    f = core(F, open_store("f"), 3, wire, "f", relay=True)
    wire.unreachable.add("c")
    wire.unreachable.add("f")
    follow(c, wire, R, "r")  # C dials R (it follows R)
    follow(f, wire, R, "r")  # and so does F
    wire.run(wire.now + 4 * MAINTAIN_EVERY)
    return wire, c, r, f


def test_two_nodes_behind_nats_replicate_through_a_relay(open_store: OpenStore) -> None:
    wire, c, r, f = setup(open_store)
    assert c.reachability.state == UNREACHABLE and f.reachability.state == UNREACHABLE
    # C reserved R, and its records name R instead of its own address.
    assert c.relay_client.addrs == [wire.addr("r")]
    assert C.public_key in r.replicator.reservations
    assert c.records.advertised == (("relay", *wire.addr("r")),)
    assert c.peer_record is not None and c.peer_record.addr("relay") == wire.addr("r")
    assert c.peer_record.addr("tcp") is None
    # A client node does not relay for others.
    assert not c.replicator.relay_enabled and r.replicator.relay_enabled

    # F follows C, and learns (from C's record) that R reaches it.
    f.follow(C.public_key, wire.now)
    f.replicator.add_relayed_candidates(C.public_key, [(C.public_key, *wire.addr("r"))], wire.now)
    wire.run(wire.now + 2 * MAINTAIN_EVERY)
    assert f.replicator.is_connected(C.public_key) and c.replicator.is_connected(F.public_key)
    assert not wire.links_between("c", "f")  # no direct connection: none is possible
    assert r.replicator.circuit_count == 1 and r.replicator.stats["relay.circuits.opened"] == 1

    posts = [c.post(f"relayed {i}", wire.now) for i in range(3)]
    wire.settle()
    assert [f.store.get(p.id) is not None for p in posts] == [True] * 3
    assert f.store.verify(C.public_key).ok
    assert r.replicator.stats["relay.bytes"] > 0
    # R read nothing: it holds no entry of C's feed it did not replicate itself.
    assert r.store.latest_seq(C.public_key) == 0
    connected = [e for e in wire.events["f"] if isinstance(e, PeerConnected) and e.peer == C.public_key]
    assert connected and connected[0].addr == wire.addr("r")


def test_a_relay_refuses_a_circuit_to_a_node_without_a_reservation(open_store: OpenStore) -> None:
    wire, c, r, f = setup(open_store, relay=False)
    assert c.reachability.state == UNREACHABLE
    assert c.relay_client.addrs == [] and not r.replicator.reservations
    assert r.replicator.stats["relay.reserve.refused"] >= 1
    f.follow(C.public_key, wire.now)
    f.replicator.add_relayed_candidates(C.public_key, [(C.public_key, *wire.addr("r"))], wire.now)
    wire.run(wire.now + 2 * MAINTAIN_EVERY)
    assert not f.replicator.is_connected(C.public_key)
    assert r.replicator.stats["relay.connect.refused.off"] >= 1
    assert f.replicator.stats["relay.circuit.refused"] >= 1


def test_a_circuit_over_its_byte_budget_is_cut(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire, c, r, f = setup(open_store)
    monkeypatch.setattr(replication, "CIRCUIT_BYTES", 20_000)
    f.follow(C.public_key, wire.now)
    f.replicator.add_relayed_candidates(C.public_key, [(C.public_key, *wire.addr("r"))], wire.now)
    wire.run(wire.now + 2 * MAINTAIN_EVERY)
    for i in range(40):
        c.post("x" * 400 + str(i), wire.now)
        wire.settle()
    assert r.replicator.stats["relay.circuits.cut"] >= 1
    assert r.replicator.circuit_count == 0 or r.replicator.stats["relay.circuits.opened"] > 1
    # The cut is not a fault of either end: nobody is penalized for it.
    assert not f.replicator.scores.banned(C.public_key, wire.now)


def test_circuits_end_with_the_relay(open_store: OpenStore) -> None:
    wire, c, _r, f = setup(open_store)
    f.follow(C.public_key, wire.now)
    f.replicator.add_relayed_candidates(C.public_key, [(C.public_key, *wire.addr("r"))], wire.now)
    wire.run(wire.now + 2 * MAINTAIN_EVERY)
    assert f.replicator.is_connected(C.public_key)
    wire.crash("r")
    assert not f.replicator.is_connected(C.public_key) and not c.replicator.is_connected(F.public_key)
    assert not f.replicator._virtual and not c.replicator._virtual
    # C's reservation went with R: its records advertise no relay until it finds another.
    wire.run(wire.now + MAINTAIN_EVERY)
    assert c.relay_client.addrs == []


__all__ = ["open_store"]
