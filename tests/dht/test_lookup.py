"""Iterative lookups as pure state machines, driven by a scripted oracle network."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.ids import Contact, distance
from dht.lookup import ClosestPeersLookup, LookupState, PeerState, ValueLookup
from dht.routing import RoutingTable
from identity.errors import LocalProtocolError

K = 20
ALPHA = 3


def make_peers(rng: Random, n: int) -> list[Contact]:
    return [Contact(rng.randbytes(20), (f"10.0.{i // 250}.{i % 250}", 4000)) for i in range(n)]


def nearest(peers: list[Contact], target: bytes, count: int = K) -> list[Contact]:
    return sorted(peers, key=lambda c: distance(c.node_id, target))[:count]


# An answer: ("ok", closer peers) / ("value", value) / ("fail", None) / ("silent", None).
Answer = tuple[str, object]


def drive(
    lookup: ClosestPeersLookup,
    respond: Callable[[Contact], Answer],
    rng: Random,
    *,
    late_after: float | None = None,
) -> list[Contact]:
    """Run ``lookup`` to completion against ``respond``; returns every peer queried.

    Checks the iterator's contract on the way: no peer is queried twice, and
    no more than alpha (k when stalled) peers are in flight.
    """
    now = 0.0
    pending: list[tuple[float, int, Contact, Answer]] = []
    queried: list[Contact] = []
    seq = 0
    while not lookup.finished:
        before = lookup.in_flight
        for peer in lookup.next(now):
            assert peer not in queried, "a peer was queried twice"
            queried.append(peer)
            answer = respond(peer)
            seq += 1
            if answer[0] == "silent":
                if late_after is not None:
                    heapq.heappush(pending, (now + late_after, seq, peer, ("ok", [])))
                continue
            heapq.heappush(pending, (now + rng.uniform(0.01, 0.2), seq, peer, answer))
        # Leaving the stalled state does not cancel requests, so the bound is on
        # what next() adds, not on what is already out.
        limit = max(lookup.k, lookup.alpha) if lookup.state is LookupState.STALLED else lookup.alpha
        assert lookup.in_flight <= max(limit, before)
        if lookup.state is LookupState.FINISHED:
            break
        wakeups = [t for t in (lookup.next_deadline(), pending[0][0] if pending else None) if t is not None]
        assert wakeups, "lookup waits for nothing but is not finished"
        now = max(now, min(wakeups))
        while pending and pending[0][0] <= now:
            _, _, peer, (kind, payload) = heapq.heappop(pending)
            if kind == "ok":
                lookup.on_success(peer.node_id, payload, now)  # type: ignore[arg-type]
            elif kind == "value":
                assert isinstance(lookup, ValueLookup)
                lookup.on_value(peer.node_id, payload, now)  # type: ignore[arg-type]
            else:
                lookup.on_failure(peer.node_id, now)
    return queried


def test_perfect_knowledge_finds_true_k_closest() -> None:
    rng = Random(1)
    peers = make_peers(rng, 500)
    target = rng.randbytes(20)
    lookup = ClosestPeersLookup(target, peers[:5], peer_timeout=5.0)
    queried = drive(lookup, lambda p: ("ok", nearest(peers, target)), rng)
    assert lookup.result() == nearest(peers, target)
    # Perfect answers: the first round names the k closest; only they get asked.
    assert len(queried) <= 5 + K


def test_local_id_is_never_queried() -> None:
    rng = Random(2)
    peers = make_peers(rng, 100)
    me = peers[0]
    lookup = ClosestPeersLookup(me.node_id, peers[1:4], local_id=me.node_id)
    queried = drive(lookup, lambda p: ("ok", nearest(peers, me.node_id)), rng)
    assert me not in queried and me not in lookup.result()
    assert lookup.result() == nearest(peers[1:], me.node_id)


def test_no_seeds_finishes_at_once() -> None:
    lookup = ClosestPeersLookup(bytes(20), [])
    assert lookup.next(0.0) == []
    assert lookup.finished and lookup.result() == []


def test_alpha_in_flight_then_unresponsive_frees_the_slot() -> None:
    rng = Random(3)
    peers = make_peers(rng, 10)
    target = bytes(20)
    lookup = ClosestPeersLookup(target, peers, k=K, alpha=ALPHA, peer_timeout=2.0)
    first = lookup.next(0.0)
    assert first == nearest(peers, target, ALPHA)
    assert lookup.next(1.0) == []  # at capacity
    # Nobody answers: at the deadline the three are unresponsive, three more go out.
    assert lookup.next_deadline() == 2.0
    second = lookup.next(2.0)
    assert second == nearest(peers, target, 2 * ALPHA)[ALPHA:]
    assert all(lookup.peer_state(p.node_id) is PeerState.UNRESPONSIVE for p in first)
    # A late answer from an unresponsive peer still counts.
    assert lookup.on_success(first[0].node_id, [], 2.5)
    assert lookup.peer_state(first[0].node_id) is PeerState.SUCCEEDED
    # ... but not twice, and not from strangers.
    assert not lookup.on_success(first[0].node_id, [], 2.6)
    assert not lookup.on_failure(first[0].node_id, 2.6)
    assert not lookup.on_success(b"\x01" * 20, [], 2.6)


def test_stall_widens_to_k() -> None:
    rng = Random(4)
    peers = make_peers(rng, 60)
    target = bytes(20)
    lookup = ClosestPeersLookup(target, peers, k=K, alpha=ALPHA)
    for peer in lookup.next(0.0):
        lookup.on_success(peer.node_id, [], 0.1)  # no progress, alpha times
    assert lookup.state is LookupState.STALLED
    # Section 2.3 resends to all of the k closest not yet queried; closest.rs
    # (which we follow) lets k requests be in flight while stalled.
    widened = lookup.next(0.2)
    assert len(widened) == K and lookup.in_flight == K
    assert widened == nearest(peers, target, K + ALPHA)[ALPHA:]
    # Progress returns the lookup to alpha.
    closer = Contact(b"\x00" * 19 + b"\x01", ("10.9.9.9", 1))
    lookup.on_success(widened[0].node_id, [closer], 0.3)
    assert state_of(lookup) is LookupState.ITERATING


def state_of(lookup: ClosestPeersLookup) -> LookupState:
    return lookup.state  # a call, so the type checker forgets earlier narrowing


def test_silent_peers_are_skipped_and_late_answers_accepted() -> None:
    rng = Random(5)
    peers = make_peers(rng, 300)
    target = rng.randbytes(20)
    silent = set(p.node_id for p in rng.sample(peers, 60))
    live = [p for p in peers if p.node_id not in silent]

    def respond(p: Contact) -> Answer:
        if p.node_id in silent:
            return ("silent", None)
        return ("ok", nearest(live, target) + nearest(peers, target, 3))

    lookup = ClosestPeersLookup(target, peers[:10], peer_timeout=1.0)
    drive(lookup, respond, rng)
    assert lookup.result() == nearest(live, target)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 150),
    dead_fraction=st.floats(0, 0.5),
    k=st.integers(1, 20),
    alpha=st.integers(1, 5),
)
def test_lookup_properties(seed: int, n: int, dead_fraction: float, k: int, alpha: int) -> None:
    rng = Random(seed)
    peers = make_peers(rng, n)
    target = rng.randbytes(20)
    dead = [p for p in peers if rng.random() < dead_fraction]
    dead_ids = {p.node_id for p in dead}
    live = [p for p in peers if p.node_id not in dead_ids]
    # Each live peer has complete k-buckets over the live peers (what Kademlia
    # maintains), and also names a few dead peers, as stale tables do.
    views: dict[bytes, RoutingTable] = {}
    for p in live:
        table = RoutingTable(p.node_id, 0.0, k=k)
        for q in rng.sample(live, len(live)):
            table.update(q, 0.0)
        views[p.node_id] = table

    def respond(p: Contact) -> Answer:
        if p.node_id in dead_ids:
            return ("fail", None) if rng.random() < 0.5 else ("silent", None)
        stale = rng.sample(dead, min(3, len(dead)))
        return ("ok", views[p.node_id].closest(target, k) + stale)

    seeds = rng.sample(peers, max(1, n // 10))
    lookup = ClosestPeersLookup(target, seeds, k=k, alpha=alpha, peer_timeout=1.0)
    drive(lookup, respond, rng)
    result = lookup.result()
    assert lookup.finished
    assert result == sorted(result, key=lambda c: distance(c.node_id, target))
    assert not any(p.node_id in dead_ids for p in result)
    if any(s.node_id not in dead_ids for s in seeds):
        # A live seed: the lookup reaches exactly the k closest live peers.
        assert result == nearest(live, target, k)


# ----------------------------------------------------------------------------- FIND_VALUE


def test_value_lookup_stops_on_first_value() -> None:
    rng = Random(6)
    peers = make_peers(rng, 200)
    key = rng.randbytes(20)
    holders = set(p.node_id for p in nearest(peers, key, 5))

    def respond(p: Contact) -> Answer:
        return ("value", b"v") if p.node_id in holders else ("ok", nearest(peers, key))

    lookup = ValueLookup(key, peers[:3], quorum=1)
    drive(lookup, respond, rng)
    assert lookup.finished
    assert [v for _, v in lookup.found] == [b"v"]
    # The nearest peer that answered without the value is where it gets cached.
    without = lookup.peers_without_value()
    assert without == sorted(without, key=lambda c: distance(c.node_id, key))
    assert not holders & {c.node_id for c in without}


def test_value_lookup_quorum_and_not_found() -> None:
    rng = Random(7)
    peers = make_peers(rng, 200)
    key = rng.randbytes(20)
    holders = set(p.node_id for p in nearest(peers, key, 6))

    def respond(p: Contact) -> Answer:
        return ("value", p.node_id) if p.node_id in holders else ("ok", nearest(peers, key))

    lookup = ValueLookup(key, peers[:3], quorum=3)
    lookup.add_local_value(b"mine")
    drive(lookup, respond, rng)
    assert len(lookup.found) == 3 and lookup.found[0] == (None, b"mine")

    nobody = ValueLookup(key, peers[:3], quorum=1)
    drive(nobody, lambda p: ("ok", nearest(peers, key)), rng)
    assert nobody.found == [] and nobody.result() == nearest(peers, key)


def test_misuse_raises() -> None:
    with pytest.raises(LocalProtocolError):
        ClosestPeersLookup(b"short", [])
    with pytest.raises(LocalProtocolError):
        ClosestPeersLookup(bytes(20), [], alpha=0)
    with pytest.raises(LocalProtocolError):
        ValueLookup(bytes(20), [], quorum=0)


def test_hops_count_the_chain_of_referrals() -> None:
    """A seed names a peer, which names the target's neighbour: three RPCs in sequence."""
    rng = Random(9)
    target = rng.randbytes(20)
    chain = [Contact(bytes([i]) * 20, (f"10.0.0.{i}", 4000)) for i in (1, 2, 3)]
    near = Contact(target[:-1] + bytes([target[-1] ^ 1]), ("10.0.0.9", 4000))
    # seed -> chain[1] -> near; everyone else names nobody new.
    referrals = {chain[0].node_id: [chain[1]], chain[1].node_id: [near]}
    lookup = ClosestPeersLookup(target, [chain[0]], k=3, alpha=1)
    drive(lookup, lambda p: ("ok", referrals.get(p.node_id, [])), rng)
    assert lookup.finished
    assert lookup.hops == 3

    value_lookup = ValueLookup(target, [chain[0]], k=3, alpha=1)
    drive(value_lookup, lambda p: ("value", b"v") if p == near else ("ok", referrals.get(p.node_id, [])), rng)
    assert value_lookup.value_hops == 3


def test_value_lookup_keeps_no_more_in_flight_than_values_missing() -> None:
    # Seeded with 8 holders: 3 requests go out (alpha); after the first value
    # 2 values are missing and 2 are in flight, so nothing more is sent, and the
    # quorum of 3 costs exactly 3 requests (it cost 5 when every answer freed a slot).
    rng = Random(8)
    peers = make_peers(rng, 50)
    key = rng.randbytes(20)
    holders = nearest(peers, key, 8)
    lookup = ValueLookup(key, holders, quorum=3)
    first = lookup.next(0.0)
    assert len(first) == 3
    assert lookup.on_value(first[0].node_id, b"v", 0.1)
    assert lookup.next(0.1) == []
    # An answer without a value frees its slot for the next peer.
    assert lookup.on_success(first[1].node_id, [], 0.2)
    assert len(lookup.next(0.2)) == 1
    assert lookup.in_flight == 2
    # A timeout frees it too.
    assert len(lookup.next(10.0)) == 2
    # Before any value the walk is alpha wide, even when our own copy counts.
    mine = ValueLookup(key, holders, quorum=3)
    mine.add_local_value(b"mine")
    assert len(mine.next(0.0)) == 3
