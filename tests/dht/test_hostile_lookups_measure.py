"""Cost and success of gets in a 200-node simnet, honest and with liars next to the key.

Run the numbers (docs/design.md quotes them)::

    PYTHONPATH=. python -m tests.dht.test_hostile_lookups_measure [nodes] [readers] [liar_nodes]

For an honest network it reports FIND_VALUE requests (``ValueFound.queried``)
and all datagrams a reader sent (requests, retransmits, cache stores) per
successful get; then, for 1, 2 and 5 liars right next to the key telling
each lie of `tests.dht.test_hostile_lookups.LIES`, how many gets by random
honest readers returned the newest record.  Readers bootstrapped normally:
unlike the unit tests, they may know honest neighbours of the key first.
The pytest entry point runs a small network so the module stays importable
and correct; the full run is a script.
"""

from __future__ import annotations

import sys
from random import Random

import pytest

from dht import DhtCore, ValueFound
from identity.keys import Identity
from identity.records import PEER, create_record, peer_key
from tests.dht.simnet import SimNetwork, SimNode, bootstrap_via, get_of, put_of
from tests.dht.test_hostile_lookups import LIES, LyingCore, add_core

LIAR_COUNTS = (1, 2, 5)


def build(seed: int, size: int, liars: list[tuple[bytes, str, bytes]]) -> tuple[SimNetwork, list[SimNode]]:
    """``size`` honest nodes, then one liar per (key, lie, old record) with an id next to its key.

    Returns the network and its honest nodes.
    """
    rng = Random(seed)
    net = SimNetwork(seed, loss=0.0, latency=(0.01, 0.1))
    honest: list[SimNode] = []
    joins = []
    for i in range(size + len(liars)):
        if i < size:
            node = add_core(net, DhtCore, rng.randbytes(20))
            honest.append(node)
        else:
            key, lie, old = liars[i - size]
            node = add_core(net, LyingCore, key[:18] + rng.randbytes(2), lie=lie, key=key, old=old)
        if i:
            joins.append((node, net.command(node, bootstrap_via(rng.choice(net.nodes[:-1]).addr))))
        net.run_until(net.now + 0.2)
    net.run_until_done(joins)
    return net, honest


def sent(node: SimNode) -> int:
    stats = node.core.stats
    return sum(v for name, v in stats.items() if name.startswith("tx.")) + stats["records.cache_stores"]


def run_gets(
    net: SimNetwork, honest: list[SimNode], key: bytes, newest: bytes, readers: int, rng: Random
) -> tuple[int, int, int]:
    """(gets that returned ``newest``, FIND_VALUE requests, datagrams sent) over ``readers`` gets."""
    ok = queried = datagrams = 0
    # Readers that hold no copy: a held copy answers a get without the network.
    others = [n for n in honest if n.core.records.get(key, net.now) is None]
    for reader in rng.sample(others, readers):
        before = sent(reader)
        got = net.run_until_done([(reader, net.command(reader, get_of(key)))], limit=600.0)[0]
        net.run_until(net.now + 1.0)  # cache stores go out after the result
        if isinstance(got, ValueFound) and got.value == newest:
            ok += 1
            queried += got.queried
            datagrams += sent(reader) - before
    return ok, queried, datagrams


def records(rng: Random) -> tuple[bytes, bytes, bytes]:
    author = Identity(rng.randbytes(32))
    old = create_record(author, type=PEER, seq=1, expires=10**10, addrs=[("udp", "10.9.9.9", 1)]).raw
    new = create_record(author, type=PEER, seq=2, expires=10**10, addrs=[("udp", "10.9.9.9", 2)]).raw
    return peer_key(author.public_key), old, new


def measure(size: int, readers: int, keys: int = 5, liar_size: int | None = None) -> list[str]:
    """The report's lines: honest cost on ``size`` nodes, then liars among ``liar_size`` honest ones."""
    lines = []
    rng = Random(2026)
    # Honest network: cost per successful get.
    net, honest = build(1, size, [])
    ok = queried = datagrams = total = 0
    for _ in range(keys):
        key, _old, new = records(rng)
        net.run_until_done([(honest[0], net.command(honest[0], put_of(key, new)))])
        got = run_gets(net, honest, key, new, readers, rng)
        ok, queried, datagrams, total = ok + got[0], queried + got[1], datagrams + got[2], total + readers
    lines.append(
        f"honest {size} nodes: {ok}/{total} found; per successful get "
        f"{queried / max(ok, 1):.1f} FIND_VALUE requests, {datagrams / max(ok, 1):.1f} datagrams sent"
    )
    # Liars next to a key, one key per lie (all in one network per number of liars).
    for count in LIAR_COUNTS:
        targets = {lie: records(rng) for lie in LIES}
        liars = [(key, lie, old) for lie, (key, old, _new) in targets.items() for _ in range(count)]
        net, honest = build(10 + count, liar_size or size, liars)
        row = []
        for lie, (key, _old, new) in targets.items():
            net.run_until_done([(honest[-1], net.command(honest[-1], put_of(key, new)))])
            got = run_gets(net, honest, key, new, readers, rng)
            row.append(f"{lie} {got[0]}/{readers}")
        lines.append(f"{count} liar(s) next to the key: " + ", ".join(row))
    return lines


@pytest.mark.soak  # a measurement (75 s); test_hostile_lookups.py holds the properties
def test_measurement_runs_and_honest_gets_succeed() -> None:
    lines = measure(30, 2, keys=2)
    assert lines[0].startswith("honest 30 nodes: 4/4 found")


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    readers = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    liar_size = int(sys.argv[3]) if len(sys.argv) > 3 else size
    for line in measure(size, readers, liar_size=liar_size):
        print(line, flush=True)
