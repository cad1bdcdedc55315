"""The own feed's head (`p2pblog.own_head`), sans IO: `NodeCore`s over the in-memory wire.

A restored node (its store marked "head unknown") refuses to sign, finds the
peers that hold its feed through the DHT, catches up, and only then signs the
next seq; a peer that declares nothing of the feed does not make the head
known; a forged entry of the own feed from a peer is refused like any other.
"""

from __future__ import annotations

from random import Random

import pytest

from gossip.messages import Clock, Entries, Note
from identity import Identity
from p2pblog.entry import FOLLOW, POST, create_entry, encode_content, post_body
from p2pblog.errors import HeadUnknownError
from p2pblog.events import OwnHeadKnown
from p2pblog.node import NodeCore
from p2pblog.own_head import SETTLE, STALLED_AFTER
from p2pblog.store import Store
from tests.gossip.wire import PORT, T0, ChannelPeer, Wire
from tests.wire_nodes import OpenStore, open_store

__all__ = ["open_store"]

A, B, C, D, M = (Identity(bytes([i]) * 32) for i in (51, 52, 53, 54, 55))
HOST = {"a": "10.0.1.1", "b": "10.0.1.2", "c": "10.0.1.3", "d": "10.0.1.4", "m": "10.0.1.66"}


def make_core(identity: Identity, store: Store, seed: int, wire: Wire, name: str) -> NodeCore:
    core = NodeCore(identity, Random(seed), wire.now, store=store, random_bytes=Random(seed + 1000).randbytes)
    wire.add(name, core, HOST[name])
    return core


def a_feed(count: int) -> list[bytes]:
    """A's first count entries, as the old node signed them."""
    out: list[bytes] = []
    prev = None
    for seq in range(1, count + 1):
        entry = create_entry(
            A, seq=seq, prev=prev, timestamp=int(T0 * 1000) + seq, kind=POST, body=post_body(f"old {seq}")
        )
        out.append(entry.raw)
        prev = entry.id
    return out


def restored_store(open_store: OpenStore) -> Store:
    store = open_store("a")
    store.mark_head_unknown(A.public_key)
    return store


def test_a_restored_node_catches_up_from_a_follower_then_posts_the_next_seq(open_store: OpenStore) -> None:
    wire = Wire()
    b_store = open_store("b")
    b_store.append(B, FOLLOW, {"feed": A.public_key}, int(T0 * 1000))
    b_store.ingest_many(a_feed(5))
    a = make_core(A, restored_store(open_store), 1, wire, "a")
    b = make_core(B, b_store, 2, wire, "b")
    c = make_core(C, open_store("c"), 3, wire, "c")  # only a DHT node
    a.bootstrap([wire.addr("c")], wire.now)  # no peer record: B cannot find A, A must find B
    b.bootstrap([wire.addr("c")], wire.now)
    b.publish([("udp", HOST["b"], PORT), ("tcp", HOST["b"], PORT)], wire.now)
    del c
    assert not a.own_head.known
    with pytest.raises(HeadUnknownError, match="not known here"):
        a.post("too early", wire.now)

    wire.advance(30)  # B announces A's feed; A searches its providers, dials B, catches up
    assert a.replicator.is_connected(B.public_key)
    assert a.store.latest_seq(A.public_key) == 5
    assert a.own_head.known and a.own_head.doc() == {"state": "known", "held": 5}
    assert OwnHeadKnown(5) in wire.events_of("a", OwnHeadKnown)
    entry = a.post("back from a backup", wire.now)
    assert entry.seq == 6
    wire.settle()
    assert b.store.latest_seq(A.public_key) == 6
    assert b.store.feed_state(A.public_key).forked_seq is None and b.store.verify().ok


def test_a_peer_that_holds_nothing_of_the_feed_does_not_make_its_head_known(open_store: OpenStore) -> None:
    """D follows A but has received nothing: its CLOCK says 0, which proves nothing."""
    wire = Wire()
    d_store = open_store("d")
    d_store.append(D, FOLLOW, {"feed": A.public_key}, int(T0 * 1000))
    a = make_core(A, restored_store(open_store), 1, wire, "a")
    d = make_core(D, d_store, 4, wire, "d")
    d.replicator.add_candidates(A.public_key, [(A.public_key, *wire.addr("a"))], wire.now)
    wire.advance(30)
    assert a.replicator.is_connected(D.public_key)
    assert a.own_head.doc() == {"state": "catching up", "held": 0, "reported": 0}
    with pytest.raises(HeadUnknownError):
        a.set_profile({"name": "A"}, wire.now)
    with pytest.raises(HeadUnknownError):
        a.follow(D.public_key, wire.now)
    assert a.store.latest_seq(A.public_key) == 0


def test_a_forged_entry_of_the_own_feed_is_refused(open_store: OpenStore) -> None:
    """M claims A's feed and sends an "entry 1" signed with M's key: not stored, the head
    stays unknown, and M is counted as a forger."""
    wire = Wire()
    a = make_core(A, restored_store(open_store), 1, wire, "a")
    m = ChannelPeer(M, Random(66).randbytes)
    wire.add("m", m, HOST["m"])
    a.replicator.add_candidates(A.public_key, [(M.public_key, *wire.addr("m"))], wire.now)
    a.replicator.maintain_now(wire.now)
    wire.advance(11)
    [conn] = m.open_connections()
    content = encode_content(A.public_key, 1, None, int(T0 * 1000), POST, post_body("A never said this"))
    m.send(conn, Entries(A.public_key, 1, (M.sign(content),)), wire.now)
    wire.settle()
    assert a.store.latest_seq(A.public_key) == 0
    assert a.replicator.stats["entries.forged"] >= 1
    assert not a.own_head.known


def test_a_peer_that_claims_a_head_it_never_delivers_stops_counting(open_store: OpenStore) -> None:
    """M declares A's feed at seq 1,000,000 and sends nothing; honest B serves all 5 entries:
    after `STALLED_AFTER` M's claim no longer holds the head back (found by a review)."""
    wire = Wire()
    b_store = open_store("b")
    b_store.append(B, FOLLOW, {"feed": A.public_key}, int(T0 * 1000))
    b_store.ingest_many(a_feed(5))
    a = make_core(A, restored_store(open_store), 1, wire, "a")
    b = make_core(B, b_store, 2, wire, "b")
    m = ChannelPeer(M, Random(66).randbytes)
    wire.add("m", m, HOST["m"])
    a.replicator.add_candidates(A.public_key, [(M.public_key, *wire.addr("m"))], wire.now)
    a.replicator.maintain_now(wire.now)
    wire.advance(11)
    [conn] = m.open_connections()
    m.send(conn, Clock({A.public_key: Note(10**6)}), wire.now)
    wire.settle()
    b.replicator.add_candidates(A.public_key, [(A.public_key, *wire.addr("a"))], wire.now)
    wire.advance(30)
    assert a.store.latest_seq(A.public_key) == 5 and not a.own_head.known  # M's claim holds it, for now
    wire.advance(STALLED_AFTER + SETTLE + 15)
    assert a.replicator.is_connected(M.public_key) and a.own_head.known
    assert a.post("back", wire.now).seq == 6


def test_a_holder_that_is_behind_does_not_decide_the_head(open_store: OpenStore) -> None:
    """B holds A's entries 1..3, D holds 1..5; both announce themselves in the DHT.  The
    restored A must not mark its head known at 3 (its next post would fork the feed at D)."""
    wire = Wire()
    stores = {}
    for name, identity, count in (("b", B, 3), ("d", D, 5)):
        store = stores[name] = open_store(name)
        store.append(identity, FOLLOW, {"feed": A.public_key}, int(T0 * 1000))
        store.ingest_many(a_feed(count))
    a = make_core(A, restored_store(open_store), 1, wire, "a")
    b = make_core(B, stores["b"], 2, wire, "b")
    d = make_core(D, stores["d"], 4, wire, "d")
    c = make_core(C, open_store("c"), 3, wire, "c")
    for core, name in ((a, "a"), (b, "b"), (d, "d")):
        core.bootstrap([wire.addr("c")], wire.now)
        if core is not a:
            core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
    del c
    wire.advance(60)
    assert a.own_head.known and a.store.latest_seq(A.public_key) == 5
    entry = a.post("back", wire.now)
    assert entry.seq == 6
    wire.settle()
    assert d.store.feed_state(A.public_key).forked_seq is None
