"""Lookups against liars next to the key: real `DhtCore`s on the in-memory simnet.

Every node runs p2pblog's validator and selector (`p2pblog.record_rules`).
An author's peer record (seq 2) is put into the DHT by an honest node; one
or more *liars*, real cores whose outgoing answers are rewritten, sit right
next to the record's key (their ids share its first 18 bytes), so they are
the first nodes a get asks and hold the record like any neighbour.  The
reader is a fresh core whose table holds the liars and a few honest nodes
far from the key: it can reach the honest holders only through answers.

What the design guarantees (`dht.lookup`, `dht.queries`): a get returns the
newest record whenever an honest holder is reachable, as long as fewer than
`READ_QUORUM` of the sources that answer with a value are liars.  Liars that
answer with no value (bogus contacts, nothing, a forged value) never count
towards the quorum, however many there are.
"""

from __future__ import annotations

from random import Random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dht import DhtCore, ValueFound, wire
from dht.ids import Contact, distance
from dht.lookup import READ_QUORUM
from identity.keys import Identity
from identity.records import PEER, create_record, peer_key
from p2pblog.record_rules import select_value, validate_value
from tests.dht.simnet import SimNetwork, SimNode, bootstrap_via, get_of, put_of

#: What a liar does with its answers to FIND_VALUE (and, for "bogus", FIND_NODE).
LIES = ("garbage", "forged", "old", "bogus", "made_up", "empty")
#: Lies that hand over a value the validator accepts (so it counts towards a quorum).
VALUE_LIES = ("garbage", "old")
UNREACHABLE_PORT = 7710


def _flip(raw: bytes) -> bytes:
    return bytes([raw[0] ^ 0x01]) + raw[1:]


class LyingCore(DhtCore):
    """A real core that stores and routes honestly but lies in its answers."""

    def __init__(self, *args: Any, lie: str, key: bytes, old: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lie = lie
        self.lie_key = key
        self.old = old
        self.lie_rng = Random(args[0])

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        return [(self._rewrite(data), addr) for data, addr in super().datagrams_to_send()]

    def _rewrite(self, data: bytes) -> bytes:
        message = wire.decode_datagram(data)
        if not isinstance(message, wire.Response):
            return data
        body = message.body
        value = body.get("value") if isinstance(body, dict) else None
        contacts = isinstance(body, list) and all(isinstance(c, list) and len(c) == 3 for c in body)
        if isinstance(value, bytes):
            if self.lie == "garbage":
                return wire.encode_response(message.msg_id, {"value": b"not a record at all"})
            if self.lie == "forged":
                return wire.encode_response(message.msg_id, {"value": _flip(value)})
            if self.lie == "old":
                return wire.encode_response(message.msg_id, {"value": self.old})
        if self.lie == "empty" and (value is not None or contacts):
            return wire.encode_response(message.msg_id, [])
        if self.lie in ("bogus", "made_up") and (value is not None or contacts):
            return wire.encode_response(message.msg_id, self._bogus())
        return data

    def _bogus(self) -> list[list[object]]:
        """Ids next to the key at dead addresses: the real neighbours' ("bogus") or made up."""
        rng = self.lie_rng
        if self.lie == "bogus":
            ids = [c.node_id for c in self.table.closest(self.lie_key)]
        else:
            ids = [self.lie_key[:18] + rng.randbytes(2) for _ in range(20)]
        return [[i, f"10.255.{rng.randrange(256)}.{rng.randrange(1, 255)}", UNREACHABLE_PORT] for i in ids]


def add_core(net: SimNetwork, core_type: type[DhtCore], node_id: bytes, **kwargs: Any) -> SimNode:
    """`SimNetwork.add_node` for a core class of our choosing."""
    rng = net.bed.rng(f"node:{len(net.nodes)}")
    core = core_type(node_id, rng, net.now, validator=validate_value, selector=select_value, **kwargs)
    node = SimNode(net.bed, core)
    net.nodes.append(node)
    return node


class Setup:
    """A network with liars next to an author's peer-record key, and a reader."""

    def __init__(self, seed: int, lies: list[str], *, size: int = 40) -> None:
        rng = Random(seed)
        author = Identity(rng.randbytes(32))
        self.key = key = peer_key(author.public_key)
        self.old = create_record(author, type=PEER, seq=1, expires=10**10, addrs=[("udp", "10.9.9.9", 1)]).raw
        self.new = create_record(author, type=PEER, seq=2, expires=10**10, addrs=[("udp", "10.9.9.9", 2)]).raw
        self.net = net = SimNetwork(seed, loss=0.0, latency=(0.05, 0.05))
        nodes: list[SimNode] = []
        self.liars: list[SimNode] = []
        joins = []
        for i in range(size):
            if i >= size - len(lies):  # the liars join last, into a working network
                lies_left = size - i
                liar_id = key[:18] + rng.randbytes(2)
                node = add_core(net, LyingCore, liar_id, lie=lies[-lies_left], key=key, old=self.old)
                self.liars.append(node)
            else:
                node = add_core(net, DhtCore, rng.randbytes(20))
            if nodes:
                joins.append((node, net.command(node, bootstrap_via(rng.choice(nodes).addr))))
            nodes.append(node)
            net.run_until(net.now + 0.2)
        net.run_until_done(joins)
        self.honest = [n for n in nodes if n not in self.liars]
        by_distance = sorted(self.honest, key=lambda n: distance(n.core.node_id, key))
        net.run_until_done([(by_distance[-1], net.command(by_distance[-1], put_of(key, self.new)))])
        self.holders = [n for n in self.honest if n.core.records.get(key, net.now) == self.new]
        # The reader knows the liars and three honest nodes far from the key, nobody else.
        far = rng.sample(by_distance[len(by_distance) // 2 :], 3)
        self.reader = add_core(net, DhtCore, rng.randbytes(20))
        for node in [*self.liars, *far]:
            self.reader.core.table.update(Contact(node.core.node_id, node.addr), net.now)

    def get(self) -> object:
        net, reader = self.net, self.reader
        return net.run_until_done([(reader, net.command(reader, get_of(self.key)))], limit=600.0)[0]

    def found_newest(self) -> bool:
        got = self.get()
        return isinstance(got, ValueFound) and got.value == self.new


def test_the_setup_puts_the_record_at_honest_holders_and_the_liars() -> None:
    setup = Setup(1, ["empty"])
    assert len(setup.holders) >= 10
    liar = setup.liars[0]
    assert liar.core.records.get(setup.key, setup.net.now) == setup.new  # it holds it, and lies
    assert setup.found_newest()


def test_garbage_value_from_one_liar_does_not_end_the_get() -> None:
    # Before: quorum 1 took the liar's non-record value ("found", not a peer record).
    assert Setup(2, ["garbage"]).found_newest()


def test_forged_value_from_one_liar_is_dropped() -> None:
    setup = Setup(3, ["forged"])
    assert setup.found_newest()
    assert setup.reader.core.stats["misbehaved.invalid returned value"] >= 1


def test_old_record_from_one_liar_loses_to_the_newest() -> None:
    # Before: quorum 1 took the replayed seq 1 record.
    assert Setup(4, ["old"]).found_newest()


def test_bogus_contacts_for_the_real_neighbours_do_not_hide_them() -> None:
    # Before: the liar named the honest holders' ids first, at dead addresses;
    # the lookup knew each id once, so their real addresses were never asked.
    assert Setup(5, ["bogus"]).found_newest()


def test_made_up_ids_beside_the_key_do_not_stop_the_get() -> None:
    assert Setup(8, ["made_up"]).found_newest()


def test_an_empty_answer_does_not_stop_the_get() -> None:
    assert Setup(6, ["empty"]).found_newest()


def test_same_seed_same_outcome() -> None:
    a, b = Setup(7, ["bogus", "old"]), Setup(7, ["bogus", "old"])
    got_a, got_b = a.get(), b.get()
    assert got_a == got_b
    assert a.reader.core.stats == b.reader.core.stats


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    lies=st.lists(st.sampled_from(LIES), min_size=1, max_size=5).filter(
        lambda lies: sum(lie in VALUE_LIES for lie in lies) < READ_QUORUM
    ),
)
def test_fewer_value_liars_than_the_read_quorum_never_hide_the_record(seed: int, lies: list[str]) -> None:
    setup = Setup(seed, lies, size=30)
    assert setup.holders  # an honest holder exists; the reader reaches it through honest answers
    assert setup.found_newest()
