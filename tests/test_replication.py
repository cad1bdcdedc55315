"""Replication between nodes, sans IO: `Replicator` and `NodeCore` over an in-memory TCP.

Each node has a real SQLite store on disk (``tmp_path``) and a seeded RNG;
`tests.gossip.wire.Wire` links them like the trio runtime would, with a fake
clock that only moves when a test says so.  Every test asserts what a user
sees: which entries end up in whose store (verified), who is connected to
whom, and what was refused and counted.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from pathlib import Path
from random import Random

import pytest

from gossip.messages import Clock, Entries
from gossip.session import BATCH_ENTRIES, MISBEHAVIOUR_LIMIT, WANT_DELAY
from gossip.transport import DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL
from identity import Identity
from p2pblog import replication
from p2pblog.dialing import FIRST_BACKOFF, MAX_BACKOFF
from p2pblog.entry import FOLLOW, POST, Entry, create_entry, encode_content, post_body
from p2pblog.errors import StorageFull
from p2pblog.node import NodeCore
from p2pblog.replication import (
    MAINTAIN_EVERY,
    SPACE_CHECK_EVERY,
    EntriesStored,
    InputRefused,
    PeerConnected,
    PeerDisconnected,
    Replicator,
)
from p2pblog.scoring import BAN_SECONDS
from p2pblog.store import IngestReport, Store
from tests.gossip.wire import PORT, T0, ChannelPeer, Wire
from tests.wire_nodes import OpenStore, open_store

A, B, C, D, M, X = (Identity(bytes([i]) * 32) for i in (41, 42, 43, 44, 45, 46))
HOST = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4", "m": "10.0.0.66", "x": "10.0.0.9"}


def make_replicator(identity: Identity, store: Store, seed: int, now: float = T0) -> Replicator:
    return Replicator(identity, store, Random(seed), now, random_bytes=Random(seed + 1000).randbytes)


def make_core(identity: Identity, store: Store, seed: int, now: float = T0) -> NodeCore:
    return NodeCore(identity, Random(seed), now, store=store, random_bytes=Random(seed + 1000).randbytes)


def follow(store: Store, identity: Identity, *feeds: bytes) -> None:
    for feed in feeds:
        store.append(identity, FOLLOW, {"feed": feed}, int(T0 * 1000))


@functools.cache
def chain(seed: int, count: int) -> tuple[Entry, ...]:
    """The first count entries of the feed of ``Identity(bytes([seed]) * 32)`` (signed once per run)."""
    identity = Identity(bytes([seed]) * 32)
    out: list[Entry] = []
    prev = None
    for seq in range(1, count + 1):
        entry = create_entry(
            identity,
            seq=seq,
            prev=prev,
            timestamp=int(T0 * 1000) + seq,
            kind=POST,
            body=post_body(f"entry {seq} of a long feed"),
        )
        out.append(entry)
        prev = entry.id
    return tuple(out)


def a_chain(count: int) -> tuple[Entry, ...]:
    return chain(41, count)


def holding(store: Store, entries: tuple[Entry, ...]) -> Store:
    report = store.ingest_many(e.raw for e in entries)
    assert report.error is None and report.accepted == len(entries)
    return store


def ids(store: Store, feed: bytes) -> list[bytes]:
    return [e.id for e in store.feed_range(feed, 1)]


def post(rep: Replicator, identity: Identity, text: str, now: float) -> Entry:
    """What NodeCore.post does, for a bare Replicator: append, then push."""
    entry = rep.store.append(identity, POST, post_body(text), int(now * 1000))
    rep.feed_appended(identity.public_key, now)
    return entry


def candidate(wire: Wire, name: str, identity: Identity) -> list[tuple[bytes, str, int]]:
    return [(identity.public_key, *wire.addr(name))]


def stored_events(wire: Wire, name: str) -> list[EntriesStored]:
    return [e for e in wire.events[name] if isinstance(e, EntriesStored)]


# ----------------------------------------------------------------------------- follow, push, catch-up


def test_a_follower_gets_each_new_post_at_once(open_store: OpenStore) -> None:
    wire = Wire()
    a = make_core(A, open_store("a"), seed=1)
    b = make_core(B, open_store("b"), seed=2)
    wire.add("a", a, HOST["a"])
    wire.add("b", b, HOST["b"])
    assert b.follow(A.public_key, wire.now) is not None
    b.replicator.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()
    assert b.replicator.is_connected(A.public_key) and a.replicator.is_connected(B.public_key)
    connected = [e for e in wire.events["b"] if isinstance(e, PeerConnected)]
    assert connected == [PeerConnected(A.public_key, wire.addr("a"), outbound=True)]

    posts = []
    for i in range(3):
        posts.append(a.post(f"hello {i}", wire.now))
        wire.settle()  # no time passes: the post is pushed, not polled for
        assert ids(b.store, A.public_key) == [p.id for p in posts]

    assert b.store.latest_seq(A.public_key) == 3
    assert b.store.verify(A.public_key).ok and b.store.verify().ok
    assert [e.text for e in b.store.feed_range(A.public_key, 1)] == ["hello 0", "hello 1", "hello 2"]
    events = stored_events(wire, "b")
    assert [(e.feed, e.peer, e.count, e.latest) for e in events] == [
        (A.public_key, A.public_key, 1, seq) for seq in (1, 2, 3)
    ]
    assert b.replicator.stats["entries.received"] == 3 and b.replicator.stats["entries.duplicate"] == 0
    # A does not follow B: B's feed (its follow entry) stays with B.
    assert a.store.latest_seq(B.public_key) == 0
    assert not stored_events(wire, "a")


@pytest.mark.parametrize("already_held", [0, 600])
def test_a_long_feed_is_caught_up_in_batches(open_store: OpenStore, already_held: int) -> None:
    feed = a_chain(1200)
    wire = Wire()
    a = make_replicator(A, holding(open_store("a"), feed), seed=1)
    b_store = holding(open_store("b"), feed[:already_held])
    follow(b_store, B, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    wire.add("a", a, HOST["a"])
    wire.add("b", b, HOST["b"])
    b.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()

    assert ids(b_store, A.public_key) == [e.id for e in feed]
    assert b_store.verify(A.public_key).ok
    # Only what B lacked crossed, in several batches, each stored once.
    missing = 1200 - already_held
    assert b.stats["entries.received"] == missing and b.stats["entries.duplicate"] == 0
    events = stored_events(wire, "b")
    assert len(events) == -(-missing // BATCH_ENTRIES) and sum(e.count for e in events) == missing
    assert events[-1].latest == 1200
    assert all(e.peer == A.public_key for e in events)


class DiskThatFills(Store):
    """A real store whose disk a test can fill: while ``no_room``, entry writes are refused
    as a full disk refuses them (`StorageFull`, ``full``) and no byte is free.
    tests/test_disk_full.py does this with a real tmpfs, in processes."""

    no_room = False

    def ingest_entries(self, entries: Iterable[Entry], *, now_ms: int | None = None) -> IngestReport:
        if self.no_room:
            self.full = True
            self.refused_writes += 1
            raise StorageFull(f"the disk is full: cannot write to {self.path}")
        return super().ingest_entries(entries, now_ms=now_ms)

    def free_bytes(self) -> int | None:
        return 0 if self.no_room else super().free_bytes()


def test_a_catch_up_refused_by_a_full_disk_resumes_within_seconds_of_room(tmp_path: Path) -> None:
    feed = a_chain(30)
    wire = Wire()
    with Store(tmp_path / "a.db") as a_store, DiskThatFills(tmp_path / "b.db") as b_store:
        a = make_replicator(A, holding(a_store, feed), seed=1)
        follow(b_store, B, A.public_key)
        b_store.no_room = True
        b = make_replicator(B, b_store, seed=2)
        wire.add("a", a, HOST["a"])
        wire.add("b", b, HOST["b"])
        b.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
        wire.settle()
        assert b.stats["entries.refused_storage_full"] == len(feed)
        assert b_store.latest_seq(A.public_key) == 0 and b.is_connected(A.public_key)
        assert not [k for k in b.stats if k.startswith("misbehaved")]  # not the peer's fault
        # Still full: the node looks again and waits, without asking for what it cannot store.
        wire.advance(2 * SPACE_CHECK_EVERY)
        assert b.stats["entries.refused_storage_full"] == len(feed)
        # Room again: the catch-up resumes at the next look, long before a maintenance pass.
        b_store.no_room = False
        wire.advance(SPACE_CHECK_EVERY)
        assert ids(b_store, A.public_key) == [e.id for e in feed]
        assert SPACE_CHECK_EVERY < MAINTAIN_EVERY / 2
        # Nothing waits any more: no more looks (the timer is the maintenance pass's).
        assert b.get_timer() is not None and b.get_timer() > wire.now + SPACE_CHECK_EVERY


def test_a_follower_reads_an_offline_author_through_another_follower(open_store: OpenStore) -> None:
    """C follows A but only B (which follows A too) is reachable: C gets A's feed from B.
    When A comes back and connects to B alone, A's new posts reach C through B."""
    feed = a_chain(40)
    wire = Wire()
    a_store = holding(open_store("a"), feed)
    b_store = holding(open_store("b"), feed)
    follow(b_store, B, A.public_key)
    c_store = open_store("c")
    follow(c_store, C, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    c = make_replicator(C, c_store, seed=3)
    wire.add("b", b, HOST["b"])
    wire.add("c", c, HOST["c"])
    a_host = HOST["a"]  # A's stale address: nobody listens there
    c.add_candidates(A.public_key, [(A.public_key, a_host, PORT), (B.public_key, *wire.addr("b"))], wire.now)
    wire.run(wire.now + 5)

    assert wire.dials_to((a_host, PORT), "c") and all(d.target is None for d in wire.dials_to((a_host, PORT)))
    assert ids(c_store, A.public_key) == [e.id for e in feed]
    assert c_store.verify().ok
    assert {e.peer for e in stored_events(wire, "c")} == {B.public_key}

    # A comes online at a new address and dials B, a peer from its address book;
    # its live posts are relayed to C at once.
    a_store.save_peer(B.public_key, *wire.addr("b"), T0 - 3600)
    a = make_replicator(A, a_store, seed=1, now=wire.now)
    wire.add("a", a, "10.0.0.11")
    wire.advance(MAINTAIN_EVERY)
    assert a.is_connected(B.public_key) and not a.is_connected(C.public_key)
    new = [post(a, A, f"back online {i}", wire.now) for i in range(2)]
    wire.settle()
    assert ids(c_store, A.public_key)[-2:] == [e.id for e in new]
    assert c_store.latest_seq(A.public_key) == 42 and c_store.verify().ok
    assert stored_events(wire, "c")[-1].peer == B.public_key


# ----------------------------------------------------------------------------- bad peers


def forged_entry() -> bytes:
    """An entry that claims to be A's first, signed by M."""
    content = encode_content(A.public_key, 1, None, int(T0 * 1000), POST, post_body("A never said this"))
    return M.sign(content)


def connect_attacker(open_store: OpenStore) -> tuple[Wire, Replicator, ChannelPeer, int]:
    """B follows A; its only candidate for A's feed is M, a hand-driven peer."""
    wire = Wire()
    b_store = open_store("b")
    follow(b_store, B, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    m = ChannelPeer(M, Random(66).randbytes)
    wire.add("b", b, HOST["b"])
    wire.add("m", m, HOST["m"])
    b.add_candidates(A.public_key, candidate(wire, "m", M), wire.now)
    wire.settle()
    assert b.is_connected(M.public_key)
    [conn] = m.open_connections()
    assert any(isinstance(msg, Clock) and A.public_key in msg.notes for msg in m.received[conn])
    return wire, b, m, conn


@pytest.mark.parametrize(
    ("case", "counter"),
    [
        ("signed by another key", "entries.forged"),
        ("bad signature bytes", "entries.forged"),
        ("seq does not match the header", "entries.malformed"),
        ("another author's entry", "entries.malformed"),
    ],
)
def test_bad_entries_are_not_stored_and_the_sender_is_banned(
    open_store: OpenStore, case: str, counter: str
) -> None:
    genuine = a_chain(2)
    raw = {
        "signed by another key": forged_entry(),
        "bad signature bytes": bytes([genuine[0].raw[0] ^ 1]) + genuine[0].raw[1:],
        "seq does not match the header": genuine[1].raw,
        "another author's entry": chain(45, 1)[0].raw,
    }[case]
    wire, b, m, conn = connect_attacker(open_store)
    m.send(conn, Entries(A.public_key, 1, (raw,)), wire.now)
    wire.settle()
    assert b.store.latest_seq(A.public_key) == 0
    assert b.stats[counter] == 1
    assert [e.reason for e in wire.events["b"] if isinstance(e, InputRefused)] == [counter]
    assert b.is_connected(M.public_key)  # one mistake is not enough to drop a peer

    for _ in range(MISBEHAVIOUR_LIMIT - 1):
        m.send(conn, Entries(A.public_key, 1, (raw,)), wire.now)
        wire.settle()
    assert b.store.latest_seq(A.public_key) == 0 and b.store.verify().ok
    assert b.stats[counter] == MISBEHAVIOUR_LIMIT and b.stats["session.failed"] == 1
    assert not b.is_connected(M.public_key) and b.connection_count == 0
    assert conn in m.lost
    assert [e.peer for e in wire.events["b"] if isinstance(e, PeerDisconnected)] == [M.public_key]

    # Banned: B keeps wanting A's feed, but does not dial M again ...
    wire.advance(BAN_SECONDS / 2)
    assert len(wire.dials_to(wire.addr("m"), "b")) == 1
    # ... and refuses M when M dials in.
    m.dial(*wire.addr("b"), B.public_key, wire.now)
    wire.settle()
    assert b.stats["refused.banned"] == 1 and b.connection_count == 0 and not m.open_connections()
    # An honest holder of A's feed is still welcome.
    honest = make_replicator(C, holding(open_store("c"), genuine), seed=3, now=wire.now)
    wire.add("c", honest, HOST["c"])
    b.add_candidates(A.public_key, candidate(wire, "c", C), wire.now)
    wire.settle()
    assert ids(b.store, A.public_key) == [e.id for e in genuine]
    # The ban lapses.
    wire.crash("c")
    wire.advance(BAN_SECONDS / 2 + 2 * MAINTAIN_EVERY)
    assert len(wire.dials_to(wire.addr("m"), "b")) == 2


def test_a_tampered_entry_keeps_the_valid_prefix_of_its_batch(open_store: OpenStore) -> None:
    genuine = a_chain(3)
    raw = genuine[1].raw
    tampered = raw[:5] + bytes([raw[5] ^ 1]) + raw[6:]  # a signature byte
    wire, b, m, conn = connect_attacker(open_store)
    m.send(conn, Entries(A.public_key, 1, (genuine[0].raw, tampered, genuine[2].raw)), wire.now)
    wire.settle()
    assert ids(b.store, A.public_key) == [genuine[0].id]
    assert b.stats["entries.forged"] == 1 and b.stats["entries.received"] == 1
    assert b.store.verify().ok


# ----------------------------------------------------------------------------- connections


@pytest.mark.parametrize("first", ["p", "q"])
@pytest.mark.parametrize("keys", [(A, B), (B, A)])
def test_simultaneous_dials_leave_one_connection(
    open_store: OpenStore, keys: tuple[Identity, Identity], first: str
) -> None:
    p_id, q_id = keys
    wire = Wire()
    p_store, q_store = open_store("p"), open_store("q")
    follow(p_store, p_id, q_id.public_key)
    follow(q_store, q_id, p_id.public_key)
    p = make_replicator(p_id, p_store, seed=1)
    q = make_replicator(q_id, q_store, seed=2)
    for name, rep in sorted([("p", p), ("q", q)], key=lambda item: item[0] != first):
        wire.add(name, rep, HOST["a" if name == "p" else "b"])
    p.add_candidates(q_id.public_key, candidate(wire, "q", q_id), wire.now)
    q.add_candidates(p_id.public_key, candidate(wire, "p", p_id), wire.now)
    assert len(wire.dials) == 0
    wire.settle()

    assert len(wire.dials) == 2  # both dialled
    [link] = wire.links.values()
    smaller = "p" if p_id.public_key < q_id.public_key else "q"
    assert link.dialler[0] == smaller  # both ends kept the connection the smaller key dialled
    assert p.connection_count == 1 and q.connection_count == 1
    assert len(p.sessions()) == 1 and len(q.sessions()) == 1

    # Replication works over the survivor, both ways, and it stays the only one.
    p_post, q_post = post(p, p_id, "from p", wire.now), post(q, q_id, "from q", wire.now)
    wire.advance(60)
    assert ids(q_store, p_id.public_key) == ids(p_store, p_id.public_key)
    assert ids(p_store, q_id.public_key) == ids(q_store, q_id.public_key)
    assert ids(q_store, p_id.public_key)[-1] == p_post.id and ids(p_store, q_id.public_key)[-1] == q_post.id
    assert list(wire.links.values()) == [link] and len(wire.dials) == 2


def test_failed_dials_back_off_and_a_handshake_resets_the_backoff(open_store: OpenStore) -> None:
    wire = Wire()
    b_store = open_store("b")
    follow(b_store, B, X.public_key)
    b = make_replicator(B, b_store, seed=2)
    x = make_replicator(X, open_store("x"), seed=9)
    wire.add("b", b, HOST["b"])
    wire.add("x", x, HOST["x"])
    wire.unreachable.add("x")
    b.add_candidates(X.public_key, candidate(wire, "x", X), wire.now)
    wire.run(T0 + 400)

    times = [d.time for d in wire.dials_to(wire.addr("x"), "b")]
    assert all(d.target is None for d in wire.dials)
    assert times[0] == T0 and b.stats["dial.failed"] == len(times)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for failures, gap in enumerate(gaps):
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2**failures)
        assert delay / 2 <= gap <= delay + MAINTAIN_EVERY, (failures, gaps)
    assert gaps[-1] >= MAX_BACKOFF / 2  # at the ceiling: about one dial a minute

    # X comes up: the next attempt connects (within the current delay) ...
    wire.unreachable.clear()
    wire.advance(MAX_BACKOFF + MAINTAIN_EVERY)
    [link] = wire.links.values()
    assert b.is_connected(X.public_key)
    # ... and once the network drops the connection, B redials after the first delay, not a minute.
    dropped_at = wire.now
    wire.reset(link.id)
    wire.advance(FIRST_BACKOFF + MAINTAIN_EVERY)
    assert b.is_connected(X.public_key)
    assert wire.dials[-1].time - dropped_at <= FIRST_BACKOFF + MAINTAIN_EVERY


def test_inbound_connections_over_capacity_are_refused(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replication, "MAX_INBOUND", 2)
    wire = Wire()
    hub = make_replicator(A, open_store("a"), seed=1)
    wire.add("a", hub, HOST["a"])
    peers: dict[str, Replicator] = {}
    for seed, (name, identity) in enumerate(zip("bcdm", (B, C, D, M), strict=True), start=2):
        store = open_store(name)
        follow(store, identity, A.public_key)
        peers[name] = make_replicator(identity, store, seed=seed)
        wire.add(name, peers[name], HOST[name])
    for rep in peers.values():
        rep.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()

    assert hub.connection_count == 2 and len(hub.sessions()) == 2 and len(wire.links) == 2
    assert hub.stats["refused.capacity"] == 2
    inside = {name for name, rep in peers.items() if rep.is_connected(A.public_key)}
    assert len(inside) == 2
    first = post(hub, A, "for those connected", wire.now)
    wire.advance(10)  # the others keep retrying, and are refused each time
    assert hub.stats["refused.capacity"] > 2 and len(hub.sessions()) == 2
    for name, rep in peers.items():
        assert ids(rep.store, A.public_key) == ([first.id] if name in inside else [])

    # One connected follower leaves: a waiting one takes its place and catches up.
    wire.crash(sorted(inside)[0])
    wire.advance(MAX_BACKOFF)
    assert len(hub.sessions()) == 2
    newcomers = {name for name, rep in peers.items() if rep.is_connected(A.public_key)} - inside
    assert len(newcomers) == 1
    assert ids(peers[newcomers.pop()].store, A.public_key) == [first.id]


def test_a_node_does_not_connect_to_itself(open_store: OpenStore) -> None:
    wire = Wire()
    b_store = open_store("b")
    follow(b_store, B, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    wire.add("b", b, HOST["b"])
    # Our own key among the providers (our own provider record): never dialled.
    b.add_candidates(A.public_key, candidate(wire, "b", B), wire.now)
    wire.run(wire.now + 10)
    assert wire.dials == [] and b.connection_count == 0

    # A stale record of another key points at our own address: the handshake
    # shows it is us, and nothing comes of it but a backed-off dial.
    b.add_candidates(A.public_key, [(A.public_key, *wire.addr("b"))], wire.now)
    wire.settle()
    assert [(d.source, d.target) for d in wire.dials] == [("b", "b")]
    assert b.stats["handshake.failed"] == 1 and b.connection_count == 0 and wire.links == {}
    # Retried as any unreachable peer is, with growing delays, and never a session.
    wire.advance(60)
    assert 2 <= len(wire.dials) <= 7 and b.stats["handshake.failed"] == len(wire.dials)
    assert not b.sessions() and not [e for e in wire.events["b"] if isinstance(e, PeerConnected)]

    # Someone holding our own key (our node, started twice) dials in: refused.
    twin = ChannelPeer(B, Random(7).randbytes)
    wire.add("twin", twin, "10.0.0.77")
    twin.dial(*wire.addr("b"), B.public_key, wire.now)
    wire.settle()
    assert b.stats["refused.self"] == 1 and b.connection_count == 0 and not twin.open_connections()
    assert not b.sessions()


def b_follows_a(open_store: OpenStore) -> tuple[Wire, Replicator, Replicator, Store]:
    """B follows A and has connected to it (bare replicators); returns B's store too."""
    wire = Wire()
    a = make_replicator(A, open_store("a"), seed=1)
    b_store = open_store("b")
    follow(b_store, B, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    wire.add("a", a, HOST["a"])
    wire.add("b", b, HOST["b"])
    b.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()
    return wire, a, b, b_store


def test_a_restarted_node_reconnects_from_its_address_book(open_store: OpenStore) -> None:
    wire, a, _b, b_store = b_follows_a(open_store)
    first = post(a, A, "before the restart", wire.now)
    wire.settle()

    wire.crash("b")
    b_store.close()
    missed = post(a, A, "while B was down", wire.now)
    wire.advance(30)
    b2 = make_replicator(B, open_store("b"), seed=22, now=wire.now)  # no candidates, no DHT
    wire.restart("b", b2)
    wire.advance(MAINTAIN_EVERY)
    assert b2.is_connected(A.public_key)
    assert ids(b2.store, A.public_key) == [first.id, missed.id]


def test_a_restarted_peer_is_not_locked_out_by_its_stale_connection(open_store: OpenStore) -> None:
    """B loses power; A still holds B's old, silent connection when B is back and redials."""
    wire, a, _b, b_store = b_follows_a(open_store)
    wire.crash("b", peers_notice=False)
    b_store.close()
    wire.advance(5)
    b2 = make_replicator(B, open_store("b"), seed=22, now=wire.now)
    wire.restart("b", b2)
    news = post(a, A, "after B came back", wire.now)
    wire.advance(10)
    assert b2.is_connected(A.public_key)
    assert ids(b2.store, A.public_key) == [news.id]


def test_a_half_open_connection_is_dropped_at_the_idle_timeout(open_store: OpenStore) -> None:
    """B loses power for good: A's end of the connection stays (no reset arrives)
    until nothing has come from B for the idle timeout, then A drops it."""
    wire, a, _b, b_store = b_follows_a(open_store)
    wire.advance(3 * DEFAULT_KEEPALIVE_INTERVAL)  # keepalives flow both ways
    assert a.is_connected(B.public_key)
    wire.crash("b", peers_notice=False)
    b_store.close()
    down = wire.now
    # B's last keepalive left at most a keepalive interval plus its slack before the cut.
    wire.advance(DEFAULT_IDLE_TIMEOUT - DEFAULT_KEEPALIVE_INTERVAL - MAINTAIN_EVERY - 1)
    assert a.is_connected(B.public_key)
    wire.advance(down + DEFAULT_IDLE_TIMEOUT + 1 - wire.now)
    assert not a.is_connected(B.public_key)


def test_a_peer_that_hangs_up_after_the_handshake_is_redialled_less_and_less(open_store: OpenStore) -> None:
    """X completes the handshake and closes at once, as a node that banned us, or that
    keeps another connection with us, does."""
    wire = Wire()
    b_store = open_store("b")
    follow(b_store, B, X.public_key)
    b = make_replicator(B, b_store, seed=2)
    x = ChannelPeer(X, Random(9).randbytes, hang_up=True)
    wire.add("b", b, HOST["b"])
    wire.add("x", x, HOST["x"])
    b.add_candidates(X.public_key, candidate(wire, "x", X), wire.now)
    wire.run(T0 + 300)
    assert len(x.peers) >= 2  # it was redialled ...
    assert len(x.peers) <= 15  # ... with growing delays, as for a dial that fails


def test_a_post_reaches_a_follower_when_its_push_path_breaks(open_store: OpenStore) -> None:
    """C gets A's feed from A and from B: the duplicate path is pruned to lazy notices,
    and when the push path breaks the notices bring the posts (Plumtree repair)."""
    wire = Wire()
    a = make_replicator(A, open_store("a"), seed=1)
    reps = {"a": a}
    for seed, (name, identity) in enumerate(zip("bc", (B, C), strict=True), start=2):
        store = open_store(name)
        follow(store, identity, A.public_key)
        reps[name] = make_replicator(identity, store, seed=seed)
    for name, rep in reps.items():
        wire.add(name, rep, HOST[name])
    b, c = reps["b"], reps["c"]
    b.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()
    c.add_candidates(A.public_key, candidate(wire, "a", A) + candidate(wire, "b", B), wire.now)
    wire.settle()
    assert c.connection_count == 2
    for i in range(5):
        post(a, A, f"both paths {i}", wire.now)
        wire.settle()
    assert c.store.latest_seq(A.public_key) == 5
    assert c.stats["entries.duplicate"] == 1  # after the first, B only announces

    wire.unreachable.add("a")
    [link] = wire.links_between("a", "c")
    wire.reset(link.id)
    late = post(a, A, "after the break", wire.now)
    wire.advance(WANT_DELAY + 0.01)
    assert ids(c.store, A.public_key)[-1] == late.id
    assert stored_events(wire, "c")[-1].peer == B.public_key
    later = post(a, A, "pushed again", wire.now)  # the repair grafted B back: no delay
    wire.settle()
    assert ids(c.store, A.public_key)[-1] == later.id
    assert c.stats["entries.duplicate"] == 1 and c.store.verify().ok


# ----------------------------------------------------------------------------- NodeCore commands


def test_unfollowed_feeds_are_no_longer_stored(open_store: OpenStore) -> None:
    wire = Wire()
    a = make_core(A, open_store("a"), seed=1)
    b = make_core(B, open_store("b"), seed=2)
    wire.add("a", a, HOST["a"])
    wire.add("b", b, HOST["b"])
    b.follow(A.public_key, wire.now)
    b.replicator.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()
    kept = [a.post(f"kept {i}", wire.now) for i in range(2)]
    wire.settle()
    assert ids(b.store, A.public_key) == [e.id for e in kept]

    # B unfollows; A posts before B's notice reaches it (the entry is in flight) and after.
    assert b.unfollow(A.public_key, wire.now) is not None
    a.post("in flight", wire.now)
    wire.settle()
    for i in range(3):
        a.post(f"after {i}", wire.now)
    wire.advance(60)
    assert A.public_key not in b.following()
    assert ids(b.store, A.public_key) == [e.id for e in kept]
    assert b.store.verify().ok

    # Following again catches up with everything missed.
    b.follow(A.public_key, wire.now)
    wire.advance(MAINTAIN_EVERY)
    assert b.store.latest_seq(A.public_key) == 6 and ids(b.store, A.public_key) == ids(a.store, A.public_key)
    assert b.store.verify().ok


def test_a_follower_finds_the_author_and_other_followers_through_the_dht(open_store: OpenStore) -> None:
    """The whole path: providers announced and searched in the DHT, dials, replication.
    Then the author goes offline and a new follower reads it from a follower."""
    wire = Wire()
    cores: dict[str, NodeCore] = {}
    for seed, (name, identity) in enumerate(zip("abcd", (A, B, C, D), strict=True), start=1):
        cores[name] = make_core(identity, open_store(name), seed=seed)
        wire.add(name, cores[name], HOST[name])
    for name, core in cores.items():
        if name != "c":
            core.bootstrap([wire.addr("c")], wire.now)  # C is only a DHT node here
        core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
    wire.advance(5)
    posts = [cores["a"].post(f"A's post {i}", wire.now) for i in range(5)]

    cores["b"].follow(A.public_key, wire.now)
    wire.advance(10)
    assert ids(cores["b"].store, A.public_key) == [p.id for p in posts]
    assert A.public_key in cores["b"].provider_records  # B now serves A's feed too

    wire.crash("a")
    cores["d"].follow(A.public_key, wire.now)
    wire.advance(20)
    assert ids(cores["d"].store, A.public_key) == [p.id for p in posts]
    assert cores["d"].store.verify().ok
    assert {e.peer for e in stored_events(wire, "d") if e.feed == A.public_key} == {B.public_key}


def test_an_idle_node_sends_its_keepalives_at_its_maintenance_passes(open_store: OpenStore) -> None:
    """Timer coalescing: three followers connect to A at different moments; once
    idle, A wakes only for its maintenance passes (one per MAINTAIN_EVERY) and
    sends every connection's keepalive at one of them, not at a wake-up of its
    own; no connection idles out."""
    wire = Wire()
    a = make_replicator(A, open_store("a"), seed=1)
    wire.add("a", a, HOST["a"])
    followers = []
    for seed, (name, identity) in enumerate((("b", B), ("c", C), ("d", D)), start=2):
        store = open_store(name)
        follow(store, identity, A.public_key)
        rep = make_replicator(identity, store, seed=seed, now=wire.now)
        followers.append(rep)
        wire.add(name, rep, HOST[name])
        rep.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
        wire.advance(7.0)  # connections opened 7 s apart: different keepalive phases
    assert all(a.is_connected(i.public_key) for i in (B, C, D))
    wakeups: list[float] = []
    handle_timer = a.handle_timer

    def counting(now: float) -> None:
        wakeups.append(now)
        handle_timer(now)

    a.handle_timer = counting  # type: ignore[method-assign]
    sent_before = wire.bytes_sent["a"]
    quiet = 2 * DEFAULT_IDLE_TIMEOUT  # without keepalives every connection would idle out
    wire.advance(quiet)
    # 960 s of idling: 32 maintenance passes and nothing else (without
    # coalescing, ~7 keepalives per connection would add ~20 wake-ups).
    assert len(wakeups) <= quiet / MAINTAIN_EVERY + 1
    assert wire.bytes_sent["a"] > sent_before  # keepalives did go out
    assert all(a.is_connected(i.public_key) for i in (B, C, D))
    assert all(rep.is_connected(A.public_key) for rep in followers)


def test_a_failure_reported_for_an_open_connection_frees_the_peer(open_store: OpenStore) -> None:
    """A driver that reports `connection_failed` for a connection past its handshake
    (the simulator did, for a rebooted node reusing a connection id) must not leave it
    as the peer's connection: the next connection to that peer works."""
    wire, a, b, _b_store = b_follows_a(open_store)
    assert b.is_connected(A.public_key)
    (link,) = wire.links_between("a", "b")
    b.connection_failed(link.dialler[1], wire.now)
    assert not b.is_connected(A.public_key)
    wire.settle()
    assert [e.peer for e in wire.events["b"] if isinstance(e, PeerDisconnected)] == [A.public_key]
    wire.advance(MAX_BACKOFF + MAINTAIN_EVERY)
    assert b.is_connected(A.public_key) and a.is_connected(B.public_key)
    entry = post(a, A, "after the reconnect", wire.now)
    wire.settle()
    assert entry.id in ids(b.store, A.public_key)


def test_an_entry_from_the_future_waits_and_its_relay_is_not_blamed(open_store: OpenStore) -> None:
    """A's feed holds an entry stamped two days ahead of B's clock: B keeps the
    entries before it, refuses that one without blaming A, and takes it once
    its clock is within a day of the timestamp."""
    now_ms = int(T0 * 1000)
    store_a = open_store("a")
    first = store_a.append(A, POST, post_body("now"), now_ms)
    ahead = store_a.append(A, POST, post_body("later"), now_ms + 2 * 86_400_000)
    wire = Wire()
    a = make_core(A, store_a, seed=1)
    b = make_core(B, open_store("b"), seed=2)
    wire.add("a", a, HOST["a"])
    wire.add("b", b, HOST["b"])
    assert b.follow(A.public_key, wire.now) is not None
    b.replicator.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()
    assert ids(b.store, A.public_key) == [first.id]
    assert b.replicator.stats["entries.refused_future"] >= 1
    assert b.replicator.stats["entries.forged"] == 0
    assert b.replicator.is_connected(A.public_key)
    wire.advance(86_400 + 60)
    wire.settle()
    assert ids(b.store, A.public_key) == [first.id, ahead.id]


__all__ = ["open_store"]


# ----------------------------------------------------------------------------- full outbound slots

LEECHES = [Identity(bytes([60 + i]) * 32) for i in range(3)]


@pytest.mark.parametrize("one_holds_the_feed", [False, True])
def test_dialled_peers_that_hold_nothing_make_room_for_the_author(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, one_holds_the_feed: bool
) -> None:
    """Found in `sybil-cold-1000`: C's outbound slots were all taken by peers that announced
    A's feed and follow it, but hold none of it (Sybils); A's address was known, and C never
    dialled A.  With the slots full and A's feed served by nobody connected, C closes the
    oldest dialled session that serves none of its feeds, sets that peer aside, and dials A.
    A peer that does hold the feed is never closed for it (the feed is served: no room needed)."""
    monkeypatch.setattr(replication, "MAX_OUTBOUND", len(LEECHES))
    feed = a_chain(5)
    wire = Wire()
    c_store = open_store("c")
    follow(c_store, C, A.public_key)
    c = make_replicator(C, c_store, seed=3)
    wire.add("c", c, HOST["c"])
    providers = []
    for i, leech in enumerate(LEECHES):
        store = open_store(f"l{i}")
        follow(store, leech, A.public_key)
        if one_holds_the_feed and i == 1:
            holding(store, feed)
        wire.add(f"l{i}", make_replicator(leech, store, seed=10 + i), f"10.0.{1 + i}.5")
        providers += candidate(wire, f"l{i}", leech)
    c.add_candidates(A.public_key, providers, wire.now)
    wire.run(wire.now + 5)
    assert all(c.is_connected(leech.public_key) for leech in LEECHES)

    # A's peer record is found (as a resolution does): the author becomes a dial candidate.
    a_store = holding(open_store("a"), feed)
    wire.add("a", make_replicator(A, a_store, seed=1), HOST["a"])
    c.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.run(wire.now + replication.PRUNE_GRACE + 2 * MAINTAIN_EVERY)

    assert ids(c_store, A.public_key) == [e.id for e in feed]
    if one_holds_the_feed:
        assert not c.is_connected(A.public_key)  # served by the holder: nobody was closed
        assert c.stats["pruned.serves_nothing"] == 0
        assert all(c.is_connected(leech.public_key) for leech in LEECHES)
        return
    assert c.is_connected(A.public_key)
    assert c.stats["pruned.serves_nothing"] == 1
    closed = [leech for leech in LEECHES if not c.is_connected(leech.public_key)]
    assert closed == [LEECHES[0]]  # the oldest session, and it stays set aside
    wire.run(wire.now + 5 * MAINTAIN_EVERY)
    assert not c.is_connected(LEECHES[0].public_key) and c.stats["pruned.serves_nothing"] == 1
