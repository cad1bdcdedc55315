"""Reachability (dial-back) and client mode, sans IO: `NodeCore`s over the in-memory wire.

`tests.gossip.wire.Wire.unreachable` is a firewall: dials to a name in it
fail, as dials to a node behind a NAT router do, while its own dials go out.
"""

from __future__ import annotations

from random import Random

from dht.core import CLIENT_NODE_ID
from gossip.messages import DialMe, DialResult, DialStatus
from identity import Identity
from p2pblog import reachability
from p2pblog.entry import FOLLOW
from p2pblog.node import NodeCore
from p2pblog.reachability import REACHABLE, UNREACHABLE, ReachabilityChanged
from p2pblog.replication import MAINTAIN_EVERY, MAX_PROBES, PROBE_BURST, DialBackResult
from p2pblog.store import Store
from tests.gossip.wire import PORT, T0, ChannelPeer, Wire
from tests.wire_nodes import OpenStore, add_core, open_store
from tests.wire_nodes import follow as follow_one

A, B, C = (Identity(bytes([i]) * 32) for i in (51, 52, 53))
HOST = {"a": "10.1.0.1", "b": "10.2.0.2", "c": "10.3.0.3"}


def core(identity: Identity, store: Store, seed: int, wire: Wire, name: str) -> NodeCore:
    return add_core(identity, store, seed, wire, name, HOST[name])


def follow(node: NodeCore, wire: Wire, *who: tuple[Identity, str]) -> None:
    for identity, name in who:
        follow_one(node, wire, identity, name)


def changes(wire: Wire, name: str) -> list[ReachabilityChanged]:
    return [e for e in wire.events[name] if isinstance(e, ReachabilityChanged)]


def test_a_node_others_can_dial_learns_it_is_reachable(open_store: OpenStore) -> None:
    wire = Wire()
    a = core(A, open_store("a"), 1, wire, "a")
    b = core(B, open_store("b"), 2, wire, "b")
    follow(a, wire, (B, "b"))
    wire.run(wire.now + 3 * MAINTAIN_EVERY)
    assert a.reachability.state == REACHABLE and b.reachability.state == REACHABLE
    assert [c.state for c in changes(wire, "a")] == [REACHABLE]
    assert a.reachability.observed_address == (HOST["a"], PORT) or a.reachability.observed_address is not None
    # The probes were extra connections, closed after their handshake: the session stays, alone.
    assert a.replicator.is_connected(B.public_key) and len(wire.links_between("a", "b")) == 1
    assert a.replicator.stats["dialback.probe_received"] == 1 and b.replicator.stats["dialback.ok"] == 1
    assert not a.client_mode and not a.dht.client_mode


def test_a_node_behind_a_nat_goes_client_and_its_posts_still_reach_followers(open_store: OpenStore) -> None:
    wire = Wire()
    a = core(A, open_store("a"), 1, wire, "a")
    b = core(B, open_store("b"), 2, wire, "b")
    c = core(C, open_store("c"), 3, wire, "c")
    wire.unreachable.add("a")  # nobody can dial A; A can dial out
    follow(a, wire, (B, "b"), (C, "c"))
    follow(b, wire, (A, "a"))
    wire.run(wire.now + 4 * MAINTAIN_EVERY)

    assert a.reachability.state == UNREACHABLE
    [change] = changes(wire, "a")
    assert change.state == UNREACHABLE and "could not dial" in change.reason
    assert a.client_mode and a.dht.client_mode and a.records.client
    assert a.replicator.dial_policy.client and a.discovery.client
    # Its dials back failed: the peers' dials to A are the probes and B's own attempts.
    assert all(d.target is None for d in wire.dials_to(wire.addr("a")))
    # B and C are reachable.
    assert b.reachability.state == REACHABLE and c.reachability.state == REACHABLE

    # A posts: B (a follower A dialled, as an author A follows) gets it at once.
    entry = a.post("from behind the router", wire.now)
    wire.settle()
    assert b.store.get(entry.id) is not None

    # In client mode the DHT answers pings as nobody and serves no request.
    assert a.dht.client_mode
    a.dht.stats.clear()
    from dht import wire as dht_wire

    ping = dht_wire.Ping(b"m" * 20, b"\x07" * 20)
    a.dht.receive_datagram(dht_wire.encode_request(ping), ("10.9.9.9", 4000), wire.now)
    [(answer, _)] = a.dht.datagrams_to_send()
    assert dht_wire.parse_ping_response(dht_wire.decode_datagram(answer).body) == CLIENT_NODE_ID  # type: ignore[union-attr]
    find = dht_wire.FindNode(b"n" * 20, b"\x07" * 20, b"\x01" * 20)
    a.dht.receive_datagram(dht_wire.encode_request(find), ("10.9.9.9", 4000), wire.now)
    assert a.dht.datagrams_to_send() == [] and a.dht.stats["drop.client mode"] == 1


def test_the_peer_record_is_not_republished_in_client_mode(open_store: OpenStore) -> None:
    wire = Wire()
    a = core(A, open_store("a"), 1, wire, "a")
    core(B, open_store("b"), 2, wire, "b")
    wire.unreachable.add("a")
    follow(a, wire, (B, "b"))
    wire.run(wire.now + 4 * MAINTAIN_EVERY)
    assert a.client_mode
    assert None not in a.records.peer_job.due and not a.records.provided
    # The router learns to forward (a port mapping): the next check finds A reachable again.
    wire.unreachable.discard("a")
    wire.run(wire.now + reachability.RECHECK_UNREACHABLE + 2 * MAINTAIN_EVERY)
    assert a.reachability.state == REACHABLE and not a.client_mode
    assert [c.state for c in changes(wire, "a")] == [UNREACHABLE, REACHABLE]


def test_dial_backs_go_only_to_the_requester_and_are_bounded(open_store: OpenStore) -> None:
    """A stranger's DIAL_MEs: each is dialled at the address its connection comes from,
    at most `MAX_PROBES` at once and `PROBE_BURST` in a burst; the rest are refused."""
    wire = Wire()
    b = core(B, open_store("b"), 2, wire, "b")
    peers = []
    for i in range(PROBE_BURST + 3):
        identity = Identity(bytes([90 + i]) * 32)
        peer = ChannelPeer(identity, Random(i).randbytes)
        name = f"m{i}"
        HOST[name] = f"10.66.{i}.1"
        wire.add(name, peer, HOST[name])  # type: ignore[arg-type]
        conn = peer.dial(*wire.addr("b"), B.public_key, wire.now)
        peers.append((peer, conn, name))
    wire.settle()
    for peer, conn, _ in peers:
        peer.send(conn, DialMe(PORT), wire.now)
    wire.settle()
    wire.run(wire.now + 1)
    answers = []
    for peer, conn, name in peers:
        results = [m for m in peer.received.get(conn, []) if isinstance(m, DialResult)]
        assert len(results) == 1
        answers.append(results[0].status)
        assert bytes(results[0].ip) == bytes(int(x) for x in HOST[name].split("."))
    assert answers.count(DialStatus.OK) == PROBE_BURST
    assert answers.count(DialStatus.REFUSED) == 3
    # Every dial B made went to a requester's own address.
    requesters = {wire.addr(name)[0] for _, _, name in peers}
    assert {d.addr[0] for d in wire.dials if d.source == "b"} <= requesters
    assert b.replicator.stats["dialback.refused"] == 3
    assert len(b.replicator._live("probe")) <= MAX_PROBES


def test_an_unasked_dial_result_is_misbehaviour(open_store: OpenStore) -> None:
    wire = Wire()
    b = core(B, open_store("b"), 2, wire, "b")
    peer = ChannelPeer(C, Random(7).randbytes)
    wire.add("c", peer, HOST["c"])  # type: ignore[arg-type]
    conn = peer.dial(*wire.addr("b"), B.public_key, wire.now)
    wire.settle()
    peer.send(conn, DialResult(PORT, DialStatus.OK, bytes(4), 1), wire.now)
    wire.settle()
    assert b.replicator.stats["misbehaved.dial result for nothing"] == 1
    assert not [e for e in wire.events["b"] if isinstance(e, DialBackResult)]
    assert b.reachability.state == reachability.UNKNOWN


def test_store_follow_entries_do_not_matter_to_reachability(open_store: OpenStore) -> None:
    """A node with no session yet stays unknown (it asks nobody) and keeps looking."""
    wire = Wire()
    a = core(A, open_store("a"), 1, wire, "a")
    a.store.append(A, FOLLOW, {"feed": B.public_key}, int(T0 * 1000))
    wire.run(wire.now + 3 * MAINTAIN_EVERY)
    assert a.reachability.state == reachability.UNKNOWN and not a.client_mode
    assert a.reachability.stats["rounds"] == 0


__all__ = ["open_store"]
