"""NodeCore, sans IO: p2pblog's record rules on the DHT, peer records and provider records.

A few cores are linked by the simulator's network model in virtual time
(`simulations.testbed`; h11's ConnectionPair, scaled to four); no sockets,
no sleeps.
"""

from __future__ import annotations

import os
from random import Random
from typing import Any

import pytest

from dht import DhtConfig, wire
from dht.ids import Contact
from dht.records import accept_any
from identity import Identity
from identity.records import PEER, PROVIDER, RecordError, create_record, peer_key, provider_key
from p2pblog.errors import LocalProtocolError
from p2pblog.node import (
    NodeCore,
    PeerNotResolved,
    PeerResolved,
    ProviderAnnounced,
    ProvidersResolved,
    RecordPublished,
    select_value,
    validate_provider,
    validate_value,
)
from p2pblog.own_records import PEER_REPUBLISH, PROVIDER_RECORD_TTL, PROVIDER_REPUBLISH
from p2pblog.store import Store
from simulations.endpoint import CoreEndpoint
from simulations.network import Latency, LinkModel
from simulations.testbed import Testbed

T0 = 1_800_000_000.0
A, B, C, D = (Identity(bytes([i]) * 32) for i in (21, 22, 23, 24))
ADDRS = [("udp", "127.0.0.1", 4000)]
FEED = bytes([77]) * 32
FEED2 = bytes([78]) * 32


class Net:
    """NodeCores on the simulator's network (`simulations.testbed`): 1 ms one way, lossless."""

    def __init__(self, identities: list[Identity]) -> None:
        self.bed = Testbed(LinkModel(Latency(ms=1.0)), epoch=T0)
        self.nodes: list[CoreEndpoint[NodeCore]] = []
        for i, ident in enumerate(identities):
            rng = self.bed.rng(f"node:{i}")
            self.nodes.append(self.bed.attach(NodeCore(ident, rng, T0, random_bytes=rng.randbytes)))

    @property
    def now(self) -> float:
        return self.bed.now

    def addr(self, index: int) -> tuple[str, int]:
        return self.nodes[index].addr

    def core(self, index: int) -> NodeCore:
        return self.nodes[index].core

    def run(self, until: float) -> None:
        self.bed.run(until)

    def send(self, src: int, dst: int, data: bytes) -> None:
        """A datagram the test made, sent from node src's address."""
        self.bed.send_datagram(self.addr(src), data, self.addr(dst))

    def result(self, index: int, qid: int) -> Any:
        for event in self.nodes[index].events:
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
        net.send(1, target, wire.encode_request(request))
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


# ----------------------------------------------------------------------------- provider records


def provider_record(
    identity: Identity, feed: bytes = FEED, seq: int = 1, expires: int = int(T0) + 100
) -> bytes:
    tcp = [("tcp", "127.0.0.1", 4100)]
    return create_record(identity, type=PROVIDER, seq=seq, expires=expires, addrs=tcp, feed=feed).raw


def test_provider_validator_names_the_signer_of_a_valid_provider_record() -> None:
    key = provider_key(FEED)
    good = provider_record(A)
    assert validate_provider(key, good, T0) == A.public_key
    assert validate_provider(provider_key(FEED2), good, T0) is None  # another feed's key
    assert validate_provider(key, good, T0 + 100) is None  # expired
    assert validate_provider(key, good[:70] + bytes([good[70] ^ 1]) + good[71:], T0) is None
    peer = create_record(A, type=PEER, seq=1, expires=int(T0) + 100, addrs=ADDRS).raw
    assert validate_provider(peer_key(A.public_key), peer, T0) is None  # not a provider record
    for opaque in (b"", b"hello", b"\x00" * 1024, b"\x96\x01" * 40):
        assert validate_provider(key, opaque, T0) is None
    # Versions by one signer: the highest seq wins.
    assert select_value(key, [provider_record(A, seq=2), provider_record(A, seq=3)]) == 1


def test_three_nodes_announce_a_feed_and_a_fourth_finds_them_all() -> None:
    net = Net([A, B, C, D])
    for i in (1, 2, 3):
        net.core(i).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 10)
    tcp = {i: [("tcp", "127.0.0.1", 4100 + i)] for i in range(3)}
    qids = {i: net.core(i).announce(FEED, tcp[i], net.now) for i in range(3)}
    net.run(net.now + 10)
    for i, qid in qids.items():
        announced = net.result(i, qid)
        assert isinstance(announced, ProviderAnnounced) and announced.feed == FEED
        assert announced.stored_at >= 2 and announced.seq == net.core(i).provider_records[FEED].seq

    qid = net.core(3).start_find_providers(FEED, net.now)
    net.run(net.now + 10)
    resolved = net.result(3, qid)
    assert isinstance(resolved, ProvidersResolved) and resolved.feed == FEED
    assert {r.signer for r in resolved.records} == {A.public_key, B.public_key, C.public_key}
    by_signer = {r.signer: r for r in resolved.records}
    for i, ident in enumerate((A, B, C)):
        record = by_signer[ident.public_key]
        assert (
            record.type == PROVIDER and record.feed == FEED and record.addr("tcp") == ("127.0.0.1", 4100 + i)
        )

    qid = net.core(3).start_find_providers(FEED2, net.now)
    net.run(net.now + 10)
    nobody = net.result(3, qid)
    assert isinstance(nobody, ProvidersResolved) and nobody.records == ()


def test_provider_records_are_reannounced_and_withdrawn() -> None:
    net = Net([A, B, C])
    for i in (1, 2):
        net.core(i).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 5)
    announced_at = net.now
    net.core(0).announce(FEED, ADDRS, announced_at)
    net.run(net.now + 5)
    first = net.core(0).provider_records[FEED]
    assert first.seq == int(announced_at * 1000) and first.expires == int(announced_at) + PROVIDER_RECORD_TTL
    net.run(net.now + PROVIDER_REPUBLISH + 1)
    second = net.core(0).provider_records[FEED]
    assert second.seq > first.seq and second.expires > first.expires
    qid = net.core(2).start_find_providers(FEED, net.now)
    net.run(net.now + 10)
    resolved = net.result(2, qid)
    assert isinstance(resolved, ProvidersResolved) and [r.seq for r in resolved.records] == [second.seq]
    # Withdrawn: no more re-signing; the copies held elsewhere lapse with the record.
    net.core(0).withdraw(FEED)
    net.run(second.expires + 1.0)
    assert FEED not in net.core(0).provider_records
    qid = net.core(2).start_find_providers(FEED, net.now)
    net.run(net.now + 10)
    lapsed = net.result(2, qid)
    assert isinstance(lapsed, ProvidersResolved) and lapsed.records == ()
    with pytest.raises(RecordError):
        net.core(0).announce(b"short feed", ADDRS, net.now)


def test_forged_provider_records_are_refused_by_remote_nodes() -> None:
    """B sends raw p2pb_add_provider requests carrying forged records: nobody keeps them."""
    net = Net([A, B, C, D])
    for i in (1, 2, 3):
        net.core(i).bootstrap([net.addr(0)], net.now)
    net.run(T0 + 10)
    key = provider_key(FEED)
    genuine = provider_record(A)
    forgeries = {
        # A's record content, signed by B's key: the signature does not verify.
        "signed by another key": B.sign(genuine[64:]),
        # B's valid record for another feed, filed under FEED's key.
        "another feed's record": provider_record(B, feed=FEED2),
        # A's record with one byte of the feed changed (filed under the old key).
        "tampered": genuine[:-1] + bytes([genuine[-1] ^ 1]),
        # A peer record is no provider record.
        "a peer record": create_record(B, type=PEER, seq=1, expires=int(T0) + 100, addrs=ADDRS).raw,
        "expired": provider_record(B, expires=int(T0)),
    }
    # B's own core refuses to announce any of them.
    for forged in forgeries.values():
        with pytest.raises(LocalProtocolError):
            net.core(1).dht.start_add_provider(key, forged, net.now)
    b_id = net.core(1).dht.node_id
    for target in (0, 2, 3):
        for forged in forgeries.values():
            request = wire.AddProvider(os.urandom(20), b_id, key, forged)
            net.send(1, target, wire.encode_request(request))
    net.run(net.now + 5)
    for index in (0, 2, 3):
        dht = net.core(index).dht
        assert dht.providers.get(key, net.now) == []
        assert dht.stats["providers.invalid"] == len(forgeries)
        assert dht.stats["misbehaved.invalid provider value"] == len(forgeries)
    # The genuine record, relayed by B, is kept: the signature is what counts.
    request = wire.AddProvider(os.urandom(20), b_id, key, genuine)
    net.send(1, 0, wire.encode_request(request))
    net.run(net.now + 5)
    qid = net.core(3).start_find_providers(FEED, net.now)
    net.run(net.now + 10)
    resolved = net.result(3, qid)
    assert isinstance(resolved, ProvidersResolved)
    assert [r.raw for r in resolved.records] == [genuine]


def test_a_flooded_dht_store_keeps_the_records_of_feeds_we_follow() -> None:
    """Strangers fill the provider and record stores; a provider record of a feed we
    follow, and the peer record of its author, still get in (strangers' go out)."""
    core = NodeCore(
        A,
        Random(1),
        T0,
        store=Store(":memory:"),
        random_bytes=Random(2).randbytes,
        dht_config=DhtConfig(max_provider_values=32, max_records=32),
    )
    core.follow(B.public_key, T0)
    expires = int(T0) + 3600
    addrs = [("tcp", "192.0.2.1", 7)]
    for i in range(64):
        sybil = Identity(bytes([100, i]) * 16)
        host = f"198.51.100.{i}"
        feed = bytes([i]) * 32
        rec = create_record(sybil, type=PROVIDER, seq=1, expires=expires, addrs=addrs, feed=feed)
        core.dht.providers.add(provider_key(feed), rec.raw, T0, source=host)
        peer = create_record(sybil, type=PEER, seq=1, expires=expires, addrs=addrs)
        core.dht.records.put(peer_key(sybil.public_key), peer.raw, T0, source=host)
    assert core.dht.providers.received == 32 and len(core.dht.records) == 32
    ours = create_record(C, type=PROVIDER, seq=1, expires=expires, addrs=addrs, feed=B.public_key)
    assert (
        core.dht.providers.add(provider_key(B.public_key), ours.raw, T0, source="203.0.113.5").value
        == "stored"
    )
    author = create_record(B, type=PEER, seq=1, expires=expires, addrs=addrs)
    assert (
        core.dht.records.put(peer_key(B.public_key), author.raw, T0, source="203.0.113.5").value == "stored"
    )
    # A stranger's new value is still refused: it is the newest stranger.
    late = Identity(bytes([7]) * 32)
    other = create_record(late, type=PEER, seq=1, expires=expires, addrs=addrs)
    assert (
        core.dht.records.put(peer_key(late.public_key), other.raw, T0, source="203.0.113.6").value == "full"
    )


def test_strangers_that_dial_in_and_leave_cannot_make_the_node_walk_the_dht_for_each() -> None:
    """The simulator's hostile scenario: fresh keys connecting and leaving made a node
    resolve each of them; now a burst of 10, then 0.2 a second, once per key per 10 min."""
    core = NodeCore(A, Random(1), T0, store=Store(":memory:"), random_bytes=Random(2).randbytes)
    core.dht.table.update(Contact(bytes(20), ("192.0.2.1", 7)), T0)
    started: list[bytes] = []
    original = core.discovery.resolve

    def resolve(key: bytes, now: float, *, consume: bool = False) -> int:
        started.append(key)
        return original(key, now, consume=consume)

    core.discovery.resolve = resolve  # type: ignore[method-assign]
    for i in range(100):
        core.discovery.peer_disconnected(bytes([i]) * 32, T0)
    assert len(started) == 10 and core.counters()["discovery.inbound_resolve_skipped"] == 90
    core.discovery.peer_disconnected(bytes([200]) * 32, T0 + 5)  # 5 s later: one more token
    core.discovery.peer_disconnected(bytes([0]) * 32, T0 + 60)  # the same key again, too soon
    assert len(started) == 11
