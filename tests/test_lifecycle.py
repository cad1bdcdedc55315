"""The node's lifecycle (`p2pblog.lifecycle`), run by the core for every driver.

Nodes are real `NodeCore`s over SQLite stores on disk, on the simulator's
network (`simulations.testbed`, 1 ms one way, lossless), started the way the
daemon and the simulator start them: `NodeCore.start(addrs, bootstrap, now)`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from identity import Identity
from p2pblog.lifecycle import PUBLISH_RETRY, REJOIN_CONTACTS, SAVE_CONTACTS_EVERY
from p2pblog.node import JoinFinished, NodeCore, PeerResolved, RecordPublished, StartupFinished
from p2pblog.replication import MAINTAIN_EVERY
from p2pblog.store import Store
from simulations.endpoint import CoreEndpoint
from simulations.network import Latency, LinkModel
from simulations.testbed import Testbed

T0 = 1_800_000_000.0
A, B, C, D = (Identity(bytes([i]) * 32) for i in (31, 32, 33, 34))


class Nodes:
    def __init__(self, tmp_path: Path) -> None:
        self.bed = Testbed(LinkModel(Latency(ms=1.0)), epoch=T0)
        self.tmp_path = tmp_path
        self.log: list[tuple[float, str, Any]] = []
        self.endpoints: dict[str, CoreEndpoint[NodeCore]] = {}
        self.stores: dict[str, Store] = {}
        self.incarnation = 0

    def core(self, name: str, identity: Identity) -> NodeCore:
        self.incarnation += 1
        rng = self.bed.rng(f"{name}:{self.incarnation}")
        store = self.stores.setdefault(name, Store(self.tmp_path / f"{name}.sqlite3"))
        return NodeCore(identity, rng, self.bed.now, store=store, random_bytes=rng.randbytes)

    def start(
        self, name: str, identity: Identity, bootstrap: list[tuple[str, int]]
    ) -> CoreEndpoint[NodeCore]:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            endpoint = self.bed.attach(self.core(name, identity), on_event=lambda e: self._log(name, e))
            self.endpoints[name] = endpoint
        else:
            endpoint.restart(self.core(name, identity))
        addrs = [("udp", *endpoint.addr), ("tcp", *endpoint.addr)]
        endpoint.command(lambda core, now: core.start(addrs, bootstrap, now))
        return endpoint

    def _log(self, name: str, event: object) -> None:
        self.log.append((self.bed.now, name, event))

    def events(self, name: str, kind: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, n, e in self.log if n == name and isinstance(e, kind)]


def test_a_node_started_alone_retries_publishing_then_stops(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    nodes.start("a", A, [])
    nodes.bed.run(T0 + 600)
    published = nodes.events("a", RecordPublished)
    # The first publish at start, then one after each retry delay: nobody holds it.
    assert [e.stored_at for _, e in published] == [0] * (len(PUBLISH_RETRY) + 1)
    gaps = [round(later - earlier, 6) for (earlier, _), (later, _) in itertools.pairwise(published)]
    assert gaps == list(PUBLISH_RETRY)
    ((_, finished),) = nodes.events("a", StartupFinished)
    assert (finished.stored_at, finished.attempts) == (0, len(PUBLISH_RETRY) + 1)
    assert not nodes.events("a", JoinFinished)  # no seeds: nothing to join


def test_a_joining_node_publishes_after_its_join_and_the_first_node_stops_retrying(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    a = nodes.start("a", A, [])
    nodes.bed.run(T0 + 3)  # a's first retry (at 2 s) has failed too
    nodes.start("b", B, [a.addr])
    nodes.bed.run(T0 + 120)
    ((joined_at, joined),) = nodes.events("b", JoinFinished)
    assert (joined.seeds, joined.answered) == (1, 1) and joined.contacts >= 1
    ((published_at, published),) = nodes.events("b", RecordPublished)
    assert published_at >= joined_at and published.stored_at >= 1  # at a
    ((_, b_done),) = nodes.events("b", StartupFinished)
    assert (b_done.stored_at, b_done.attempts) == (published.stored_at, 1)
    # a's next retry (5 s after its second attempt) finds b and stops there.
    a_published = nodes.events("a", RecordPublished)
    assert [e.stored_at for _, e in a_published][:2] == [0, 0] and a_published[2][1].stored_at >= 1
    ((_, a_done),) = nodes.events("a", StartupFinished)
    assert a_done.attempts == 3
    # Both resolve each other through the DHT afterwards.
    qid = nodes.endpoints["b"].command(lambda core, now: core.start_resolve(A.public_key, now))
    nodes.bed.advance(5)
    resolved = [e for _, e in nodes.events("b", PeerResolved) if e.query_id == qid]
    assert resolved and resolved[0].record.addr("tcp") == a.addr


def test_contacts_are_saved_and_a_restarted_node_rejoins_without_bootstrap(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    a = nodes.start("a", A, [])
    nodes.start("c", C, [a.addr])
    b = nodes.start("b", B, [a.addr])
    nodes.bed.run(T0 + 5)
    # Saved once the join ended, so a crash soon after the start keeps seeds.
    assert a.addr in {(host, port) for _, host, port, _ in nodes.stores["b"].load_contacts()}
    # d joins later: b learns it (d's join asks b) and the periodic save keeps it.
    d = nodes.start("d", D, [a.addr])
    nodes.bed.run(T0 + 10)
    assert d.addr not in {(host, port) for _, host, port, _ in nodes.stores["b"].load_contacts()}
    nodes.bed.run(T0 + SAVE_CONTACTS_EVERY + MAINTAIN_EVERY + 1)
    saved = {(host, port) for _, host, port, _ in nodes.stores["b"].load_contacts()}
    assert {a.addr, nodes.endpoints["c"].addr, d.addr} <= saved
    # A crash loses the core; the store on disk keeps the contacts.  The new
    # core starts with no bootstrap address and rejoins through them.
    b.crash()
    nodes.bed.advance(30)
    nodes.start("b", B, [])
    nodes.bed.advance(30)
    (_, _), (_, rejoined) = nodes.events("b", JoinFinished)
    assert rejoined.seeds == len(saved) and rejoined.answered == len(saved)
    assert nodes.events("b", StartupFinished)[-1][1].stored_at >= 1


def test_close_saves_contacts_and_the_seeds_leave_out_our_own_address(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    a = nodes.start("a", A, [])
    b = nodes.start("b", B, [a.addr])
    nodes.bed.run(T0 + 5)  # b's join ended and saved a; c joins after, through b
    c = nodes.start("c", C, [b.addr])
    nodes.bed.run(T0 + 10)  # well before the first periodic save
    assert c.addr not in {(host, port) for _, host, port, _ in nodes.stores["b"].load_contacts()}
    b.command(lambda core, now: core.close(now))
    assert {a.addr, c.addr} <= {(host, port) for _, host, port, _ in nodes.stores["b"].load_contacts()}
    # Seeds: bootstrap first, then saved contacts, without duplicates or ourselves.
    seeds = b.core.lifecycle.join_seeds([a.addr, b.addr, a.addr], own=[b.addr])
    assert seeds[0] == a.addr and b.addr not in seeds and len(seeds) == len(set(seeds)) <= 1 + REJOIN_CONTACTS
