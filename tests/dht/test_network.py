"""Many cores on a lossy in-memory network: exact lookups, and records that survive crashes.

Networks are built once per size and module (building 200 nodes, with the
paper's post-join bucket refreshes, is most of the cost); the crash test works
on a deep copy so the tests do not depend on each other's order.
"""

from __future__ import annotations

import copy
from random import Random

import pytest

from dht import LookupFinished, PutFinished, ValueFound
from dht.ids import distance, node_id_from_public_key
from identity import Identity
from tests.dht.simnet import SimNetwork, SimNode, bootstrap_via, get_of, lookup_of, put_of

LOSS = 0.05
RECORDS = 100


class Built:
    def __init__(self, net: SimNetwork, nodes: list[SimNode], records: dict[bytes, bytes]) -> None:
        self.net = net
        self.nodes = nodes
        self.records = records


_built: dict[int, Built] = {}


def build(size: int) -> Built:
    """``size`` nodes join one by one through a random earlier node, then RECORDS puts."""
    if size in _built:
        return _built[size]
    net = SimNetwork(seed=size, loss=LOSS)
    rng = Random(size)
    nodes: list[SimNode] = []
    joins = []
    for _ in range(size):
        # Real ids: derived from Ed25519 keys, as p2pblog nodes do.
        node = net.add_node(node_id_from_public_key(Identity(rng.randbytes(32)).public_key))
        if nodes:
            via = rng.choice(nodes).addr
            joins.append((node, net.command(node, bootstrap_via(via))))
        nodes.append(node)
        net.run_until(net.now + 0.2)
    net.run_until_done(joins)
    records = {rng.randbytes(20): rng.randbytes(rng.randrange(1, 200)) for _ in range(RECORDS)}
    puts = []
    for key, value in records.items():
        origin = rng.choice(nodes)
        puts.append((origin, net.command(origin, put_of(key, value))))
    for event in net.run_until_done(puts):
        assert isinstance(event, PutFinished) and event.ok
    net.run_until(net.now + 30)
    _built[size] = Built(net, nodes, records)
    return _built[size]


def true_closest(nodes: list[SimNode], target: bytes, exclude: SimNode, k: int = 20) -> list[bytes]:
    ids = [n.core.node_id for n in nodes if n.alive and n is not exclude]
    return sorted(ids, key=lambda i: distance(i, target))[:k]


SIZES = [pytest.param(60, id="60-nodes"), pytest.param(200, id="200-nodes", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
def test_every_lookup_finds_the_true_k_closest(size: int) -> None:
    built = build(size)
    net, nodes = built.net, built.nodes
    rng = Random(1000 + size)
    lookups = []
    for _ in range(50):
        source, target = rng.choice(nodes), rng.randbytes(20)
        lookups.append((source, target, net.command(source, lookup_of(target))))
    results = net.run_until_done([(s, q) for s, _, q in lookups])
    for (source, target, _), event in zip(lookups, results, strict=True):
        assert isinstance(event, LookupFinished)
        assert [c.node_id for c in event.closest] == true_closest(nodes, target, source)
    assert net.lost > 0  # the network really was lossy


@pytest.mark.parametrize("size", SIZES)
def test_records_survive_twenty_percent_crashed(size: int) -> None:
    built = copy.deepcopy(build(size))
    net, nodes = built.net, built.nodes
    rng = Random(2000 + size)
    for node in rng.sample(nodes, size // 5):
        net.crash(node)
    live = net.live_nodes()
    gets = []
    for key in built.records:
        reader = rng.choice(live)
        gets.append((reader, key, net.command(reader, get_of(key))))
    results = net.run_until_done([(r, q) for r, _, q in gets])
    found = sum(
        1
        for (_, key, _), event in zip(gets, results, strict=True)
        if isinstance(event, ValueFound) and event.value == built.records[key]
    )
    assert found >= 0.99 * len(gets)
