"""Network diversity of the k closest: real `DhtCore`s on the in-memory simnet.

Censors (the ``hostile`` scenario's attack, `simulations.adversary.Censor`)
are k colluding nodes in one /24 whose ids sit right next to a key: they
acknowledge every STORE without keeping it and answer FIND_VALUE with
contacts ("not found").  Without a per-network rule they *are* the k
closest, so a put stores only at them and every get ends at them.  The
table names and a lookup counts at most `MAX_CLOSEST_PER_NETWORK` of one
network among its k closest (`dht.routing`, `dht.lookup`), so honest nodes
of other networks are stored at and read.  The rule is soft: when every
node is on one network the k closest are exactly as before.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from random import Random

import pytest

from dht import DhtCore, LookupFinished, PutFinished, ValueFound, ValueNotFound, wire
from dht.ids import Address, Contact, K, distance
from dht.lookup import ClosestPeersLookup
from dht.routing import MAX_CLOSEST_PER_NETWORK, RoutingTable, diverse_first
from identity.keys import Identity
from identity.netaddr import network_key
from identity.records import PEER, create_record, peer_key
from p2pblog.record_rules import select_value, validate_value
from tests.dht.simnet import SimNetwork, SimNode, bootstrap_via, get_of, lookup_of, put_of

#: Where a censor puts what it is handed: a key nobody asks for.
SWALLOWED = hashlib.sha1(b"swallowed").digest()


class CensorCore(DhtCore):
    """A real core that routes honestly, acknowledges a STORE without keeping it, and
    answers FIND_VALUE as FIND_NODE (contacts: "not found")."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        try:
            message = wire.decode_datagram(data)
        except wire.WireError:
            message = None
        if isinstance(message, wire.Store):
            request: wire.Request = wire.Store(message.msg_id, message.sender_id, SWALLOWED, b"swallowed")
            data = wire.encode_request(request)
        elif isinstance(message, wire.FindValue):
            data = wire.encode_request(wire.FindNode(message.msg_id, message.sender_id, message.key))
        super().receive_datagram(data, addr, now)


def add_core(
    net: SimNetwork, node_id: bytes, *, core_type: type[DhtCore] = DhtCore, addr: Address | None = None
) -> SimNode:
    """`SimNetwork.add_node` with p2pblog's record rules, a core class and an address of our choosing."""
    rng = net.bed.rng(f"node:{len(net.nodes)}")
    core = core_type(node_id, rng, net.now, validator=validate_value, selector=select_value)
    node = PlacedNode(net, core, addr)
    net.nodes.append(node)
    return node


class PlacedNode(SimNode):
    """A `SimNode` at an address of our choosing (None: the network's next)."""

    def __init__(self, net: SimNetwork, core: DhtCore, addr: Address | None) -> None:
        self.results = {}
        self.notices = Counter()
        self.other_events = []
        self.endpoint = net.bed.attach(core, addr=addr, on_event=self.record)


class Censored:
    """40 honest nodes (a /24 each), then k censors in ``10.66.0.0/24`` next to an author's
    peer-record key; every honest node has met every censor."""

    def __init__(self, seed: int, *, honest: int = 40) -> None:
        rng = Random(seed)
        self.author = Identity(rng.randbytes(32))
        self.key = key = peer_key(self.author.public_key)
        self.record = create_record(
            self.author, type=PEER, seq=1, expires=10**10, addrs=[("udp", "10.9.9.9", 1)]
        ).raw
        self.net = net = SimNetwork(seed, loss=0.0, latency=(0.02, 0.08))
        self.honest: list[SimNode] = []
        joins = []
        for _ in range(honest):
            node = add_core(net, rng.randbytes(20))
            if self.honest:
                joins.append((node, net.command(node, bootstrap_via(rng.choice(self.honest).addr))))
            self.honest.append(node)
            net.run_until(net.now + 0.2)
        net.run_until_done(joins)
        self.censors = [
            add_core(net, key[:3] + rng.randbytes(17), core_type=CensorCore, addr=(f"10.66.0.{i + 1}", 7710))
            for i in range(K)
        ]
        joins = [(c, net.command(c, bootstrap_via(rng.choice(self.honest).addr))) for c in self.censors]
        net.run_until_done(joins)
        # As the scenario's censors do: make sure every honest node knows them all.
        for node in self.honest:
            for censor in self.censors:
                node.core.table.update(Contact(censor.core.node_id, censor.addr), net.now)

    def put_then_get(self) -> tuple[PutFinished, ValueFound | ValueNotFound]:
        net = self.net
        writer, reader = self.honest[0], self.honest[-1]
        put = net.run_until_done([(writer, net.command(writer, put_of(self.key, self.record)))])[0]
        assert isinstance(put, PutFinished)
        got = net.run_until_done([(reader, net.command(reader, get_of(self.key)))], limit=600.0)[0]
        assert isinstance(got, ValueFound | ValueNotFound)
        return put, got


def _without_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's k closest: as many of one network as are near (a cap of k is no cap)."""
    monkeypatch.setattr("dht.routing.MAX_CLOSEST_PER_NETWORK", K)
    monkeypatch.setattr("dht.lookup.MAX_CLOSEST_PER_NETWORK", K)


def test_censors_in_one_network_do_not_hide_a_record() -> None:
    setup = Censored(1)
    put, got = setup.put_then_get()
    networks = [network_key(c.addr[0]) for c in put.stored_at]
    assert networks.count("10.66.0.0/24") <= MAX_CLOSEST_PER_NETWORK
    assert len(put.stored_at) == K
    assert isinstance(got, ValueFound) and got.value == setup.record
    holders = [n for n in setup.honest if n.core.records.get(setup.key, setup.net.now) == setup.record]
    assert len(holders) >= K - MAX_CLOSEST_PER_NETWORK


def test_without_the_rule_the_censors_hide_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    # The setup is a real attack: before the rule the put stored only at censors
    # and the get ended at them.
    _without_the_rule(monkeypatch)
    setup = Censored(1)
    put, got = setup.put_then_get()
    assert all(network_key(c.addr[0]) == "10.66.0.0/24" for c in put.stored_at)
    assert isinstance(got, ValueNotFound)


def _one_network(seed: int) -> tuple[SimNetwork, list[SimNode]]:
    """30 honest nodes, every one on 127.0.0.1 (the process tests' deployment)."""
    rng = Random(seed)
    net = SimNetwork(seed, loss=0.0, latency=(0.02, 0.08))
    nodes: list[SimNode] = []
    joins = []
    for i in range(30):
        node = add_core(net, rng.randbytes(20), addr=("127.0.0.1", 4000 + i))
        if nodes:
            joins.append((node, net.command(node, bootstrap_via(rng.choice(nodes).addr))))
        nodes.append(node)
        net.run_until(net.now + 0.2)
    net.run_until_done(joins)
    return net, nodes


def _lookups_on_one_network(seed: int) -> list[tuple[tuple[Contact, ...], int, int]]:
    net, nodes = _one_network(seed)
    rng = Random(seed + 1)
    out = []
    for node in nodes[::5]:
        got = net.run_until_done([(node, net.command(node, lookup_of(rng.randbytes(20))))])[0]
        assert isinstance(got, LookupFinished)
        out.append((got.closest, got.queried, got.hops))
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_on_one_network_the_k_closest_are_as_before(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with_rule = _lookups_on_one_network(seed)
    with monkeypatch.context() as patched:
        _without_the_rule(patched)
        before = _lookups_on_one_network(seed)
    assert with_rule == before
    assert all(len(closest) == K for closest, _, _ in with_rule)


def test_the_table_names_two_of_a_network_then_the_nearest_others() -> None:
    rng = Random(5)
    own = rng.randbytes(20)
    table = RoutingTable(own, 0.0)
    target = rng.randbytes(20)
    crowd = [Contact(target[:4] + rng.randbytes(16), (f"10.66.0.{i + 1}", 7710)) for i in range(K)]
    # One per bucket, so the table holds them all.
    mine = int.from_bytes(own, "big")
    others = [
        Contact((mine ^ 1 << (159 - i) ^ rng.getrandbits(159 - i)).to_bytes(20, "big"), (f"10.{i}.0.1", 7710))
        for i in range(K)
    ]
    for contact in crowd + others:
        table.update(contact, 0.0)
    held = [c for c in crowd + others if c in list(table.contacts())]
    assert sum(c in crowd for c in held) >= K - 1
    ranked = sorted(held, key=lambda c: distance(c.node_id, target))
    got = table.closest(target)
    held_others = sum(c in others for c in held)
    assert sum(c in crowd for c in got) == max(MAX_CLOSEST_PER_NETWORK, K - held_others)
    assert got == diverse_first(ranked, K, MAX_CLOSEST_PER_NETWORK)[0]
    assert got == sorted(got, key=lambda c: distance(c.node_id, target))
    # Two or three other networks for eighteen slots: the crowd's nearest fill the rest.
    few = RoutingTable(own, 0.0)
    for contact in crowd + others[:3]:
        few.update(contact, 0.0)
    held_crowd = [c for c in crowd if c in list(few.contacts())]
    held_others = [c for c in others[:3] if c in list(few.contacts())]
    got = few.closest(target)
    assert held_others and set(held_others) <= set(got)
    nearest_crowd = sorted(held_crowd, key=lambda c: distance(c.node_id, target))[: K - len(held_others)]
    assert [c for c in got if c in crowd] == nearest_crowd
    assert got == sorted(got, key=lambda c: distance(c.node_id, target))


def test_a_lookup_counts_two_of_a_network_and_walks_past_the_rest() -> None:
    rng = Random(6)
    target = rng.randbytes(20)
    crowd = [Contact(target[:4] + rng.randbytes(16), (f"10.66.0.{i + 1}", 7710)) for i in range(K)]
    others = [Contact(rng.randbytes(20), (f"10.{i}.0.1", 7710)) for i in range(K)]
    lookup = ClosestPeersLookup(target, crowd + others)
    now = 0.0
    asked: list[Contact] = []
    while not lookup.finished:
        batch = lookup.next(now)
        assert batch or lookup.finished or lookup.in_flight
        for contact in batch:
            asked.append(contact)
            lookup.on_success(contact.node_id, [], now)
        now += 0.1
    result = lookup.result()
    nearest_others = sorted(others, key=lambda c: distance(c.node_id, target))[: K - MAX_CLOSEST_PER_NETWORK]
    assert sum(c in crowd for c in result) == MAX_CLOSEST_PER_NETWORK
    assert set(result) - set(crowd) == set(nearest_others)
    # Past the first answers of the crowd, its other members are not needed.
    assert sum(c in crowd for c in asked) < K


def test_rules_are_checked() -> None:
    with pytest.raises(Exception, match="max_per_network"):
        ClosestPeersLookup(bytes(20), [], max_per_network=0)


def _walk(seed: int, per_network: int, hosts: list[str]) -> tuple[list[Contact], list[Contact], int]:
    """A lookup among 300 peers on ``hosts`` that answer with random peers, fail or stay
    silent (answering late), seeded: what it asked, its result and hops."""
    rng = Random(seed)
    peers = [Contact(rng.randbytes(20), (rng.choice(hosts), 4000 + i)) for i in range(300)]
    target = rng.randbytes(20)
    fate = {p.node_id: rng.choice(["ok", "ok", "ok", "fail", "silent"]) for p in peers}
    lookup = ClosestPeersLookup(target, peers[:8], max_per_network=per_network)
    answers = Random(seed + 1)
    now = 0.0
    pending: list[tuple[float, int, Contact]] = []
    asked: list[Contact] = []
    while not lookup.finished:
        for peer in lookup.next(now):
            asked.append(peer)
            delay = 30.0 if fate[peer.node_id] == "silent" else answers.uniform(0.01, 0.3)
            pending.append((now + delay, len(asked), peer))
        pending.sort()
        wakeups = [t for t in (lookup.next_deadline(), pending[0][0] if pending else None) if t is not None]
        if lookup.finished or not wakeups:
            break
        now = min(wakeups)
        while pending and pending[0][0] <= now:
            _, _, peer = pending.pop(0)
            if fate[peer.node_id] == "fail":
                lookup.on_failure(peer.node_id, now)
            else:
                lookup.on_success(peer.node_id, answers.sample(peers, 8), now)
    return asked, lookup.result(), lookup.hops


@pytest.mark.parametrize("seed", range(8))
def test_a_walk_on_one_network_is_the_walk_without_the_rule(seed: int) -> None:
    loopback = ["127.0.0.1"]
    assert _walk(seed, MAX_CLOSEST_PER_NETWORK, loopback) == _walk(seed, K, loopback)


@pytest.mark.parametrize("seed", range(4))
def test_a_walk_over_few_networks_still_returns_k(seed: int) -> None:
    asked, result, _ = _walk(seed, MAX_CLOSEST_PER_NETWORK, ["10.1.1.1", "10.2.2.2", "10.3.3.3"])
    assert len(result) == K
    networks = [network_key(c.addr[0]) for c in result]
    assert len(set(networks)) == 3
    assert asked
