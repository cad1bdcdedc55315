"""Two nodes, one key (issue 15), between NodeCores, sans IO.

``b`` is a node; ``b2`` runs with a copy of ``b``'s key from another home (its
own store, so its own instance id) at another address.  Nodes have real SQLite
stores on disk and meet over `tests.gossip.wire.Wire` (in-memory UDP and TCP,
fake clock).  What a user cares about: each copy is warned of the other, a
stale or foreign record does not replace a newer one, and once the copy stops,
lookups find the live node again within one republication period.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from random import Random

import msgpack
import pytest

from dht.events import PutFinished
from identity import Identity
from identity.errors import LocalProtocolError
from identity.records import (
    INSTANCE_BYTES,
    PEER,
    PROVIDER,
    Record,
    RecordError,
    create_record,
    decode_record,
    peer_key,
)
from p2pblog.errors import OwnFeedRefused
from p2pblog.events import DuplicateInstanceSeen, PeerNotResolved, PeerResolved
from p2pblog.instances import FORGET_AFTER, INSTANCE_SETTING, SEQ_SETTING
from p2pblog.node import NodeCore
from p2pblog.own_records import PEER_REPUBLISH
from p2pblog.store import Store
from tests.gossip.wire import PORT, T0, Wire

A, B, C, D = (Identity(bytes([i]) * 32) for i in (61, 62, 63, 64))
KEYS = {"a": A, "b": B, "b2": B, "c": C, "d": D, "x": Identity(bytes([65]) * 32)}
HOST = {
    "a": "10.0.2.1",
    "b": "10.0.2.2",
    "b2": "10.0.2.22",
    "c": "10.0.2.3",
    "d": "10.0.2.4",
    "x": "10.0.2.9",
}


def addrs(name: str) -> list[tuple[str, str, int]]:
    return [("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)]


class Net:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.wire = Wire()
        self.cores: dict[str, NodeCore] = {}
        self.stores: list[Store] = []

    def start(self, name: str, seed: int) -> NodeCore:
        store = Store(self.tmp_path / f"{name}.db")
        self.stores.append(store)
        core = NodeCore(
            KEYS[name], Random(seed), self.wire.now, store=store, random_bytes=Random(seed + 100).randbytes
        )
        self.cores[name] = core
        self.wire.add(name, core, HOST[name])
        if name != "c":
            core.bootstrap([self.wire.addr("c")], self.wire.now)
        core.publish(addrs(name), self.wire.now)
        self.wire.advance(5)
        return core

    def lookup(self, by: str, key: bytes) -> Record | None:
        core = self.cores[by]
        qid = core.start_resolve(key, self.wire.now)
        self.wire.advance(5)
        ends = [
            e
            for e in self.wire.events[by]
            if isinstance(e, PeerResolved | PeerNotResolved) and e.query_id == qid
        ]
        assert len(ends) == 1
        end = ends[0]
        return end.record if isinstance(end, PeerResolved) else None

    def warnings(self, name: str) -> list[DuplicateInstanceSeen]:
        return [e for e in self.wire.events[name] if isinstance(e, DuplicateInstanceSeen)]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    built = Net(tmp_path)
    for seed, name in enumerate("cadb", start=1):
        built.start(name, seed)
    yield built
    for store in built.stores:
        store.close()


def tcp(record: Record | None) -> tuple[str, int] | None:
    return None if record is None else record.addr("tcp")


def test_a_peer_record_names_the_homes_instance_and_its_seq_rises_across_restarts(net: Net) -> None:
    b = net.cores["b"]
    record = b.peer_record
    assert record is not None and record.instance is not None and len(record.instance) == INSTANCE_BYTES
    store = net.stores[-1]
    assert store.setting(INSTANCE_SETTING) == record.instance.hex()
    assert store.setting(SEQ_SETTING) == str(record.seq)
    # A later run of the same home keeps the instance, and signs above the last seq even
    # with a clock an hour behind.
    again = NodeCore(B, Random(9), T0 - 3600, store=store, random_bytes=Random(99).randbytes)
    again.publish(addrs("b"), T0 - 3600)
    assert again.peer_record is not None
    assert again.peer_record.instance == record.instance
    assert again.peer_record.seq == record.seq + 1


def test_two_nodes_with_one_key_are_each_warned_of_the_other(net: Net) -> None:
    net.start("b2", 5)
    net.wire.advance(PEER_REPUBLISH / 3 + 30)  # one self-check, at most
    for name, other in (("b", "b2"), ("b2", "b")):
        warnings = net.warnings(name)
        assert len(warnings) == 1, name  # once per instance, not once per record
        other_record = net.cores[other].peer_record
        assert other_record is not None and other_record.instance is not None
        assert warnings[0].instance == other_record.instance
        assert warnings[0].addrs == other_record.addrs
        assert [d["instance"] for d in net.cores[name].instances.doc()] == [other_record.instance.hex()]
    # Other nodes' lookups never stop working meanwhile: both answers are live addresses.
    assert tcp(net.lookup("d", B.public_key)) in {("10.0.2.2", PORT), ("10.0.2.22", PORT)}
    # The nodes take turns at most once per sixth of a period each, not in a storm.
    net.wire.advance(PEER_REPUBLISH)
    for name in ("b", "b2"):
        assert len(net.warnings(name)) == 1
        assert net.cores[name].peer_record is not None


def test_a_single_node_is_not_warned_about_itself_after_a_restart(net: Net) -> None:
    net.wire.advance(PEER_REPUBLISH + 60)  # republished, and checked its own record three times
    assert net.warnings("b") == []
    assert net.cores["b"].instances.doc() == []


def test_an_older_or_foreign_record_does_not_replace_the_newest(net: Net) -> None:
    b = net.cores["b"]
    assert b.peer_record is not None
    stale = create_record(
        B,
        type=PEER,
        seq=b.peer_record.seq - 1,
        expires=int(net.wire.now) + 3600,
        addrs=[("tcp", "10.0.2.99", PORT)],
        instance=bytes(INSTANCE_BYTES),
    )
    key = peer_key(B.public_key)
    holders = [
        name for name in "acd" if net.cores[name].dht.records.get(key, net.wire.now) == b.peer_record.raw
    ]
    assert holders
    # A stranger (a node that holds no record of B's) stores it at the closest nodes: those
    # holding the newer record refuse it.
    x = net.start("x", 6)
    x.dht.start_put(key, stale.raw, net.wire.now)
    net.wire.advance(5)
    for name in holders:
        assert net.cores[name].dht.records.get(key, net.wire.now) == b.peer_record.raw, name
    assert tcp(net.lookup("d", B.public_key)) == ("10.0.2.2", PORT)


def test_after_the_copy_stops_lookups_find_the_live_node_within_one_republication(net: Net) -> None:
    b2 = net.start("b2", 5)
    net.wire.advance(120)
    # The copy signs last (as when it is the one restarted), then stops for good.
    b2.publish(addrs("b2"), net.wire.now)
    net.wire.advance(1)
    assert tcp(net.lookup("d", B.public_key)) == ("10.0.2.22", PORT)
    stopped = net.wire.now
    net.wire.crash("b2")
    answers: list[tuple[float, tuple[str, int] | None]] = []
    while net.wire.now < stopped + PEER_REPUBLISH + 120:
        answers.append((net.wire.now - stopped, tcp(net.lookup("d", B.public_key))))
        net.wire.advance(55)
    dead = [at for at, addr in answers if addr != ("10.0.2.2", PORT)]
    assert dead, "the lookup right after the stop must still name the copy (else this tests nothing)"
    assert max(dead) <= PEER_REPUBLISH
    assert answers[-1][1] == ("10.0.2.2", PORT)
    # The warning stays while the copy's last record may live, then status forgets it.
    assert net.cores["b"].instances.doc()
    net.wire.advance(FORGET_AFTER + PEER_REPUBLISH / 3)
    assert net.cores["b"].instances.doc() == []


def test_a_stopped_copy_with_a_clock_ahead_does_not_keep_its_dead_address(net: Net) -> None:
    """The copy signed its last record with a clock an hour ahead, so its seq beats every
    record the original signs by its own clock: without the seq floor and the check, the
    dead address would be the answer until the record expired (`PEER_TTL`, two hours)."""
    ahead = create_record(
        B,
        type=PEER,
        seq=int((net.wire.now + 3600) * 1000),
        expires=int(net.wire.now) + 7200,
        addrs=addrs("b2"),
        instance=bytes(range(INSTANCE_BYTES)),
    )
    x = net.start("x", 6)  # hands the copy's record over, as the copy did before it stopped
    qid = x.dht.start_put(peer_key(B.public_key), ahead.raw, net.wire.now)
    net.wire.advance(5)
    put = [
        e for e in net.wire.events_of("x", PutFinished) if isinstance(e, PutFinished) and e.query_id == qid
    ]
    assert put and put[0].stored_at  # the network took it: it beats every record b signed
    # b held a record of its own key that lost: it signed a better one at once.
    assert tcp(net.lookup("d", B.public_key)) == ("10.0.2.2", PORT)
    net.wire.advance(PEER_REPUBLISH)
    assert tcp(net.lookup("d", B.public_key)) == ("10.0.2.2", PORT)
    assert net.cores["b"].peer_record is not None and net.cores["b"].peer_record.seq > ahead.seq
    assert [w.instance for w in net.warnings("b")] == [ahead.instance]


def both_post(net: Net) -> tuple[list[bytes], list[bytes]]:
    """b posts, then a copy of b starts and posts too; a follows b.  The posts' ids."""
    a, b = net.cores["a"], net.cores["b"]
    a.follow(B.public_key, net.wire.now)
    originals = [b.post("from the original", net.wire.now).id]
    net.wire.advance(60)
    b2 = net.start("b2", 5)
    copies = [b2.post("from the copy", net.wire.now).id]
    net.wire.advance(2 * PEER_REPUBLISH / 3 + 60)  # two self-checks each
    for core in (b, b2):  # each is warned now, and refuses to fork the feed further
        with pytest.raises(OwnFeedRefused):
            core.post("again", net.wire.now)
    net.wire.advance(120)
    return originals, copies


def test_when_both_copies_post_each_user_is_warned(net: Net) -> None:
    originals, _ = both_post(net)
    assert len(net.warnings("b")) == 1 and len(net.warnings("b2")) == 1
    a = net.cores["a"]
    assert all(a.store.has_entry(post) for post in originals)


def test_neither_copy_posts_while_both_run_so_nothing_posted_is_lost(net: Net) -> None:
    """Once a copy is seen, both refuse to append to the feed (saying why) instead of
    forking it: a post is refused, never accepted and then lost."""
    a, b = net.cores["a"], net.cores["b"]
    a.follow(B.public_key, net.wire.now)
    first = b.post("from the original", net.wire.now).id
    net.wire.advance(60)
    b2 = net.start("b2", 5)
    net.wire.advance(2 * PEER_REPUBLISH / 3 + 60)  # two self-checks each: both are warned
    for core in (b, b2):
        with pytest.raises(OwnFeedRefused, match="another node runs with this identity's key"):
            core.post("refused", net.wire.now)
        with pytest.raises(OwnFeedRefused):
            core.follow(A.public_key, net.wire.now)
    assert a.store.has_entry(first) and a.store.feed_state(B.public_key).forked_seq is None
    # The copy stops: after FORGET_AFTER the original posts again, and it arrives.
    net.wire.crash("b2")
    net.wire.advance(FORGET_AFTER + PEER_REPUBLISH)
    again = b.post("the original again", net.wire.now).id
    net.wire.advance(60)
    assert a.store.has_entry(again)


# --- the record field ----------------------------------------------------------------------------


def _signed_peer_body(body: dict[str, object]) -> bytes:
    content = msgpack.packb([1, PEER, B.public_key, 7, 2_000_000_000, body])
    return B.sign(content)


def test_peer_records_of_earlier_versions_still_decode() -> None:
    old = _signed_peer_body({"addrs": [["tcp", "10.0.0.1", 7000]]})
    record = decode_record(old, now=None)
    assert record.instance is None and record.addr("tcp") == ("10.0.0.1", 7000)
    new = _signed_peer_body({"addrs": [["tcp", "10.0.0.1", 7000]], "instance": bytes(INSTANCE_BYTES)})
    assert decode_record(new, now=None).instance == bytes(INSTANCE_BYTES)


@pytest.mark.parametrize(
    "body",
    [
        {"addrs": [["tcp", "10.0.0.1", 7000]], "instance": bytes(INSTANCE_BYTES - 1)},
        {"addrs": [["tcp", "10.0.0.1", 7000]], "instance": "x" * INSTANCE_BYTES},
        {"addrs": [["tcp", "10.0.0.1", 7000]], "instance": None},
        {"instance": bytes(INSTANCE_BYTES)},
        {"instance": bytes(INSTANCE_BYTES), "addrs": [["tcp", "10.0.0.1", 7000]]},  # keys unsorted
        {"addrs": [["tcp", "10.0.0.1", 7000]], "instance": bytes(INSTANCE_BYTES), "other": 1},
    ],
)
def test_a_bad_instance_field_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        decode_record(_signed_peer_body(body), now=None)


def test_only_a_peer_record_names_an_instance() -> None:
    with pytest.raises(RecordError):
        create_record(
            B,
            type=PROVIDER,
            seq=1,
            expires=2_000_000_000,
            addrs=[("tcp", "10.0.0.1", 7000)],
            feed=A.public_key,
            instance=bytes(INSTANCE_BYTES),
        )
    content = msgpack.packb(
        [
            1,
            PROVIDER,
            B.public_key,
            1,
            2_000_000_000,
            {"addrs": [["tcp", "10.0.0.1", 7000]], "feed": A.public_key, "instance": bytes(INSTANCE_BYTES)},
        ]
    )
    with pytest.raises(RecordError):
        decode_record(B.sign(content), now=None)


def test_a_record_of_our_key_signed_at_the_top_seq_is_not_followed(net: Net) -> None:
    """Whoever holds our key (a copied home, a thief) signs a peer record at seq 2**63 - 1: the
    node does not follow it out of the seq range, and keeps publishing its own (review)."""
    b = net.cores["b"]
    record = create_record(
        B,
        type=PEER,
        seq=2**63 - 1,
        expires=int(net.wire.now) + 3600,
        addrs=addrs("b2"),
        instance=b"\x07" * INSTANCE_BYTES,
    )
    x = net.start("x", 6)
    with pytest.raises(LocalProtocolError):  # our own DHT store refuses it: signed ahead of any clock
        x.dht.start_put(peer_key(B.public_key), record.raw, net.wire.now)
    # Handed to b directly, as a DHT answer could: b does not follow it (it raised before).
    b.instances.observe(decode_record(record.raw, now=None), b.records.peer_record, net.wire.now)
    assert b.instances.seq_floor < 2**62
    b.records.publish_peer(net.wire.now)
    net.wire.advance(PEER_REPUBLISH)
    assert b.peer_record is not None and b.peer_record.seq < 2**62
    assert tcp(net.lookup("d", B.public_key)) == ("10.0.2.2", PORT)


def test_the_lingering_record_of_a_stopped_home_does_not_stop_posting(net: Net) -> None:
    """A home restored elsewhere sees the old home's peer record until it expires (two
    hours): it is warned of it, but the record is not re-signed, so posting goes on (review)."""
    b = net.cores["b"]
    old = create_record(
        B,
        type=PEER,
        seq=int((net.wire.now - 3 * PEER_REPUBLISH) * 1000),  # last re-signed 1.5 hours ago
        expires=int(net.wire.now) + 1800,
        addrs=addrs("b2"),
        instance=b"\x09" * INSTANCE_BYTES,
    )
    b.instances.observe(decode_record(old.raw, now=None), b.records.peer_record, net.wire.now)
    assert [d["instance"] for d in b.instances.doc()] == [(b"\x09" * INSTANCE_BYTES).hex()]  # warned
    assert b.post("still posting", net.wire.now).seq >= 1
