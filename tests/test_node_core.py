"""NodeCore, sans IO: p2pblog's record rules on the DHT, publishing and resolving peer records.

Three cores are linked by a tiny in-memory network with explicit ``now``
(h11's ConnectionPair, scaled to three); no sockets, no sleeps.
"""

from __future__ import annotations

import os
from random import Random
from typing import Any

import pytest

from dht import wire
from dht.records import accept_any
from identity import Identity
from identity.records import PEER, create_record, peer_key
from p2pblog.errors import LocalProtocolError
from p2pblog.node import (
    PEER_REPUBLISH,
    NodeCore,
    PeerNotResolved,
    PeerResolved,
    RecordPublished,
    select_value,
    validate_value,
)

T0 = 1_800_000_000.0
A, B, C = (Identity(bytes([i]) * 32) for i in (21, 22, 23))
ADDRS = [("udp", "127.0.0.1", 4000)]


class Net:
    """Delivers every datagram after 1 ms; runs timers in time order."""

    def __init__(self, identities: list[Identity]) -> None:
        self.now = T0
        self.cores = {
            ("127.0.0.1", 4000 + i): NodeCore(ident, Random(i), T0) for i, ident in enumerate(identities)
        }
        self.events: dict[tuple[str, int], list[Any]] = {addr: [] for addr in self.cores}
        self.in_flight: list[tuple[float, bytes, tuple[str, int], tuple[str, int]]] = []

    def addr(self, index: int) -> tuple[str, int]:
        return ("127.0.0.1", 4000 + index)

    def core(self, index: int) -> NodeCore:
        return self.cores[self.addr(index)]

    def _collect(self) -> None:
        for src, core in self.cores.items():
            for data, dst in core.datagrams_to_send():
                self.in_flight.append((self.now + 0.001, data, src, dst))
            while (event := core.next_event()) is not None:
                self.events[src].append(event)

    def run(self, until: float) -> None:
        self._collect()
        while True:
            timers = [(t, a) for a, c in self.cores.items() if (t := c.get_timer()) is not None]
            next_packet = min((p[0] for p in self.in_flight), default=None)
            next_timer = min(timers, default=None)
            candidates = [t for t in (next_packet, next_timer[0] if next_timer else None) if t is not None]
            if not candidates or min(candidates) > until:
                self.now = until
                return
            self.now = max(self.now, min(candidates))
            if next_packet is not None and next_packet <= self.now:
                due = [p for p in self.in_flight if p[0] <= self.now]
                self.in_flight = [p for p in self.in_flight if p[0] > self.now]
                for _, data, src, dst in due:
                    if dst in self.cores:
                        self.cores[dst].receive_datagram(data, src, self.now)
            else:
                for t, a in timers:
                    if t <= self.now:
                        self.cores[a].handle_timer(self.now)
            self._collect()

    def result(self, index: int, qid: int) -> Any:
        for event in self.events[self.addr(index)]:
            if getattr(event, "query_id", None) == qid:
                return event
        return None


def test_validator_accepts_own_key_records_and_opaque_values() -> None:
    record = create_record(A, type=PEER, seq=1, expires=int(T0) + 100, addrs=ADDRS)
    key = peer_key(A.public_key)
    assert validate_value(key, record.raw, T0)
    assert not validate_value(peer_key(B.public_key), record.raw, T0)  # not its own key
    assert not validate_value(key, record.raw, T0 + 100)  # expired
    forged = record.raw[:70] + bytes([record.raw[70] ^ 1]) + record.raw[71:]
    assert not validate_value(key, forged, T0)
    # Values that are not p2pblog records follow kademlia's rules (interop).
    for opaque in (b"hello", "text", 42, 1.5, b"\x00" * 1024):
        assert validate_value(key, opaque, T0) == accept_any(key, opaque, T0)
    assert not validate_value(key, b"\x00" * 1025, T0)


def test_selector_prefers_the_highest_valid_seq() -> None:
    old = create_record(A, type=PEER, seq=5, expires=int(T0) + 100, addrs=ADDRS)
    new = create_record(A, type=PEER, seq=9, expires=int(T0) + 100, addrs=ADDRS)
    assert select_value(b"k" * 20, [old.raw, new.raw, b"opaque"]) == 1
    assert select_value(b"k" * 20, [new.raw, old.raw]) == 0
    assert select_value(b"k" * 20, [b"one", b"two"]) == 1  # last write wins, as in kademlia


def test_publish_and_resolve_across_three_nodes() -> None:
    net = Net([A, B, C])
    for i in (1, 2):
        net.core(i).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 10)
    qid = net.core(0).publish(ADDRS, net.now)
    net.run(net.now + 10)
    published = net.result(0, qid)
    assert isinstance(published, RecordPublished) and published.stored_at >= 1

    qid = net.core(2).start_resolve(A.public_key, net.now)
    net.run(net.now + 10)
    resolved = net.result(2, qid)
    assert isinstance(resolved, PeerResolved)
    assert resolved.record.signer == A.public_key and resolved.record.addrs == (("udp", "127.0.0.1", 4000),)

    stranger = Identity(bytes([99]) * 32)
    qid = net.core(2).start_resolve(stranger.public_key, net.now)
    net.run(net.now + 30)
    assert isinstance(net.result(2, qid), PeerNotResolved)


def test_the_peer_record_is_republished_with_a_higher_seq() -> None:
    net = Net([A, B])
    net.core(1).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 5)
    net.core(0).publish(ADDRS, net.now)
    net.run(net.now + 5)
    first = net.core(0).peer_record
    assert first is not None
    net.run(net.now + PEER_REPUBLISH + 1)
    second = net.core(0).peer_record
    assert second is not None and second.seq > first.seq and second.expires > first.expires
    qid = net.core(1).start_resolve(A.public_key, net.now)
    net.run(net.now + 10)
    resolved = net.result(1, qid)
    assert isinstance(resolved, PeerResolved) and resolved.record.seq == second.seq


def test_a_forged_record_stored_by_a_peer_is_not_resolved() -> None:
    """B stores a record claiming to be A's, signed by B: nobody accepts it."""
    net = Net([A, B, C])
    for i in (1, 2):
        net.core(i).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 10)
    fake = create_record(B, type=PEER, seq=10**15, expires=int(T0) + 1000, addrs=[("udp", "127.0.0.66", 1)])
    # B's own core refuses to publish it; B sends raw STOREs to every node instead.
    with pytest.raises(LocalProtocolError):
        net.core(1).dht.start_put(peer_key(A.public_key), fake.raw, net.now)
    b_id = net.core(1).dht.node_id
    for target in (0, 2):
        request = wire.Store(os.urandom(20), b_id, peer_key(A.public_key), fake.raw)
        net.in_flight.append((net.now, wire.encode_request(request), net.addr(1), net.addr(target)))
    net.run(net.now + 5)
    for index in (0, 2):
        assert net.core(index).dht.records.get(peer_key(A.public_key), net.now) is None
        assert net.core(index).dht.stats["store.invalid"] == 1
    qid = net.core(2).start_resolve(A.public_key, net.now)
    net.run(net.now + 30)
    assert isinstance(net.result(2, qid), PeerNotResolved)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 70, b"\x96\x01" * 40])
def test_garbage_values_are_refused_or_opaque(bad: bytes) -> None:
    key = peer_key(A.public_key)
    assert validate_value(key, bad, T0) in (True, False)  # never raises
