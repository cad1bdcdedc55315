"""`NodeCore`s on the in-memory wire with reachability checks on: the helpers the
reachability and relay tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import pytest

from identity import Identity
from p2pblog.node import NodeCore
from p2pblog.store import Store
from tests.gossip.wire import PORT, Wire

OpenStore = Callable[[str], Store]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[OpenStore]:
    """Stores on disk by name, closed when the test ends."""
    stores: list[Store] = []

    def make(name: str) -> Store:
        store = Store(tmp_path / f"{name}.sqlite3")
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def add_core(
    identity: Identity, store: Store, seed: int, wire: Wire, name: str, host: str, *, relay: bool = False
) -> NodeCore:
    """A node that checks its reachability, attached to the wire as ``name`` at host."""
    node = NodeCore(
        identity,
        Random(seed),
        wire.now,
        store=store,
        random_bytes=Random(seed + 1000).randbytes,
        check_reachability=True,
        relay=relay,
    )
    wire.add(name, node, host)
    node.set_addresses([("udp", host, PORT), ("tcp", host, PORT)], wire.now)
    return node


def follow(node: NodeCore, wire: Wire, identity: Identity, name: str) -> None:
    """node follows identity, whose node is ``name`` on the wire (and dials it)."""
    node.follow(identity.public_key, wire.now)
    peers = [(identity.public_key, *wire.addr(name))]
    node.replicator.add_candidates(identity.public_key, peers, wire.now)


def wire_net(
    tmp_path: Path,
    identities: dict[str, Identity],
    hosts: dict[str, str],
    *,
    hub: str,
    seed_offset: int = 100,
    default: str | None = None,
) -> Iterator[Callable[..., tuple[Wire, dict[str, NodeCore]]]]:
    """A fixture body: yields ``build(names)``, which puts one NodeCore per name (a store on
    disk each) on a new in-memory wire, all joined through ``hub``, and closes the stores."""
    stores: list[Store] = []

    def build(names: str = default or "".join(identities)) -> tuple[Wire, dict[str, NodeCore]]:
        wire = Wire()
        cores: dict[str, NodeCore] = {}
        for seed, name in enumerate(names, start=1):
            store = Store(tmp_path / f"{name}.db")
            stores.append(store)
            cores[name] = NodeCore(
                identities[name],
                Random(seed),
                wire.now,
                store=store,
                random_bytes=Random(seed + seed_offset).randbytes,
            )
            wire.add(name, cores[name], hosts[name])
        for name, core in cores.items():
            if name != hub:
                core.bootstrap([wire.addr(hub)], wire.now)
            core.publish([("udp", hosts[name], PORT), ("tcp", hosts[name], PORT)], wire.now)
        wire.advance(5)
        return wire, cores

    yield build
    for store in stores:
        store.close()
