"""Relays and dial-back against peers that lie: hand-driven channels speaking raw messages to a
real `Replicator` (each case was a bug found in review, reproduced, then fixed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from random import Random

import pytest

from gossip.messages import (
    Circuit,
    Connect,
    DialMe,
    DialResult,
    Incoming,
    Message,
    Relay,
    RelayStatus,
    Reservation,
    Reserve,
    decode_message,
    encode_message,
)
from gossip.transport import FrameReceived, SecureChannel
from identity import Identity
from identity.limits import MAX_ENTRY_BYTES
from p2pblog import replication
from p2pblog.replication import Replicator
from p2pblog.store import Store

T0 = 1_800_000_000.0


@pytest.fixture
def make(tmp_path: Path) -> Iterator[object]:
    stores: list[Store] = []

    def replicator(identity: Identity, seed: int) -> Replicator:
        store = Store(tmp_path / f"{seed}.sqlite3")
        stores.append(store)
        return Replicator(identity, store, Random(seed), T0, random_bytes=Random(seed + 1000).randbytes)

    yield replicator
    for store in stores:
        store.close()


class Peer:
    """A peer that dialled the replicator and says what a test makes it say."""

    def __init__(
        self, identity: Identity, node: Replicator, addr: tuple[str, int], peers: list[Peer]
    ) -> None:
        self.identity, self.node, self.peers = identity, node, peers
        self.channel = SecureChannel.initiator(
            identity, now=T0, expected_peer=node.own, random_bytes=Random(len(peers) + 7).randbytes
        )
        self.conn = node.connection_accepted(addr, T0)
        self.received: list[Message] = []
        self.inner: dict[int, SecureChannel] = {}
        peers.append(self)
        self.pump()

    def send(self, message: Message) -> None:
        self.channel.send_frame(encode_message(message), T0)

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            for peer in self.peers:
                for circuit, channel in peer.inner.items():
                    if data := channel.data_to_send():
                        peer.send(Relay(circuit, data))
                if data := peer.channel.data_to_send():
                    self.node.data_received(peer.conn, data, T0)
                    moved = True
            for conn, data in self.node.data_to_send():
                for peer in self.peers:
                    if peer.conn == conn:
                        peer.channel.receive_data(data, T0)
                        moved = True
            for peer in self.peers:
                while (event := peer.channel.next_event()) is not None:
                    if isinstance(event, FrameReceived):
                        message = decode_message(event.payload)
                        peer.received.append(message)
                        if isinstance(message, Relay) and message.circuit in peer.inner:
                            peer.inner[message.circuit].receive_data(message.data, T0)
                    moved = True
            if not moved:
                return


def test_a_peer_posing_as_itself_through_a_circuit_it_invented_is_refused(make: object) -> None:
    """Was: the duplicate rule closed the carrier, `_by_peer` pointed at a dead connection,
    and the peer's next connection raised KeyError."""
    node = make(Identity(bytes([1]) * 32), 1)  # type: ignore[operator]
    me = Identity(bytes([2]) * 32)
    peers: list[Peer] = []
    x = Peer(me, node, ("10.9.9.9", 4000), peers)
    x.send(Incoming(bytes(32), 1))  # nobody we reserved with: refused
    x.inner[1] = SecureChannel.initiator(me, now=T0, expected_peer=node.own, random_bytes=Random(9).randbytes)
    x.pump()
    assert Circuit(1, RelayStatus.REFUSED) in x.received
    assert node.is_connected(me.public_key) and node._by_peer[me.public_key] in node._conns
    again = Peer(me, node, ("10.9.9.9", 4001), peers)  # no KeyError
    assert node.is_connected(me.public_key)
    del again


def test_circuit_numbers_of_the_two_directions_never_collide(make: object) -> None:
    relay = make(Identity(bytes([3]) * 32), 3)  # type: ignore[operator]
    relay.relay_enabled = True
    peers: list[Peer] = []
    a = Peer(Identity(bytes([4]) * 32), relay, ("10.1.0.1", 1), peers)
    b = Peer(Identity(bytes([5]) * 32), relay, ("10.2.0.1", 1), peers)
    c = Peer(Identity(bytes([6]) * 32), relay, ("10.3.0.1", 1), peers)
    for peer in (b, c):
        peer.send(Reserve())
        peer.pump()
        assert Reservation(RelayStatus.OK, replication.RESERVATION_SECONDS) in peer.received
    b.send(Connect(c.identity.public_key, 2))  # B opens circuit 2 to C
    a.send(Connect(b.identity.public_key, 4))  # A opens one to B: the relay numbers it odd on B's session
    a.send(Connect(b.identity.public_key, 3))  # odd numbers are the relay's: refused
    a.pump()
    assert Circuit(3, RelayStatus.REFUSED) in a.received
    incoming = [m for m in b.received if isinstance(m, Incoming)]
    assert incoming and all(m.circuit % 2 == 1 for m in incoming)
    b.send(Relay(2, b"for C"))
    b.pump()
    to_c = next(m for m in c.received if isinstance(m, Incoming))
    assert Relay(to_c.circuit, b"for C") in c.received
    assert not [m for m in a.received if isinstance(m, Relay)]


def test_a_relay_holds_at_most_its_backlog_for_a_peer_that_does_not_read(make: object) -> None:
    relay = make(Identity(bytes([7]) * 32), 7)  # type: ignore[operator]
    relay.relay_enabled = True
    peers: list[Peer] = []
    sender = Peer(Identity(bytes([8]) * 32), relay, ("10.1.0.1", 1), peers)
    sleeper = Peer(Identity(bytes([9]) * 32), relay, ("10.2.0.1", 1), peers)
    sleeper.send(Reserve())
    sleeper.pump()
    sender.send(Connect(sleeper.identity.public_key, 2))
    sender.pump()
    held: dict[int, int] = {}
    relay.backlog = lambda conn: held.get(conn, 0)  # the driver's unwritten bytes: the sleeper reads none
    for _ in range(12 * 1024 * 1024 // MAX_ENTRY_BYTES):
        sender.channel.send_frame(encode_message(Relay(2, bytes(MAX_ENTRY_BYTES))), T0)
        relay.data_received(sender.conn, sender.channel.data_to_send(), T0)
        for conn, data in relay.data_to_send():
            held[conn] = held.get(conn, 0) + len(data)
    assert held[sleeper.conn] <= replication.RELAY_BACKLOG + 2 * MAX_ENTRY_BYTES
    assert relay.stats["relay.circuits.cut"] == 1 and relay.circuit_count == 0


def test_a_circuits_last_bytes_arrive_before_its_close(make: object) -> None:
    relay = make(Identity(bytes([10]) * 32), 10)  # type: ignore[operator]
    relay.relay_enabled = True
    peers: list[Peer] = []
    s = Peer(Identity(bytes([11]) * 32), relay, ("10.1.0.1", 1), peers)
    t = Peer(Identity(bytes([12]) * 32), relay, ("10.2.0.1", 1), peers)
    t.send(Reserve())
    t.pump()
    s.send(Connect(t.identity.public_key, 2))
    s.pump()
    start = len(t.received)
    s.send(Relay(2, b"the last bytes"))
    s.send(Circuit(2, RelayStatus.CLOSED))
    s.pump()
    kinds = [type(m).__name__ for m in t.received[start:]]
    assert kinds == ["Relay", "Circuit"]


@pytest.mark.parametrize(
    ("addr", "dialled"),
    [
        (("2001:db8::5", 40000), "2001:db8::5"),
        (("::ffff:192.0.2.9", 40000), "192.0.2.9"),
        (("0.0.0.0", 1), None),
    ],
)
def test_a_dial_back_goes_to_the_askers_exact_address_or_nowhere(
    make: object, addr: tuple[str, int], dialled: str | None
) -> None:
    """Was: an IPv6 asker's /64 key did not parse, and we dialled 0.0.0.0 (ourselves)."""
    node = make(Identity(bytes([13]) * 32), 13)  # type: ignore[operator]
    peers: list[Peer] = []
    asker = Peer(Identity(bytes([14]) * 32), node, addr, peers)
    asker.send(DialMe(22))
    asker.pump()
    dials = node.dials_to_make()
    if dialled is None:
        assert dials == []
        assert [m.status for m in asker.received if isinstance(m, DialResult)] == [2]  # REFUSED
    else:
        assert [(host, port) for _, host, port in dials] == [(dialled, 22)]


def test_a_relay_is_rate_limited_in_circuits_and_bytes(make: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replication, "RELAY_BURST", 64 * 1024)
    relay = make(Identity(bytes([15]) * 32), 15)  # type: ignore[operator]
    relay.relay_enabled = True
    peers: list[Peer] = []
    opener = Peer(Identity(bytes([16]) * 32), relay, ("10.1.0.1", 1), peers)
    target = Peer(Identity(bytes([17]) * 32), relay, ("10.2.0.1", 1), peers)
    target.send(Reserve())
    target.pump()
    for n in range(replication.CONNECT_BURST + 2):
        opener.send(Connect(target.identity.public_key, 2 * (n + 1)))
    opener.pump()
    answers = [m.status for m in opener.received if isinstance(m, Circuit)]
    assert answers.count(RelayStatus.OK) == replication.CONNECT_BURST
    assert answers.count(RelayStatus.REFUSED) == 2 and relay.stats["relay.connect.refused.rate"] == 2
    # Bytes: past the burst, the circuit carrying them is cut.
    for _ in range(20):
        opener.send(Relay(2, bytes(MAX_ENTRY_BYTES)))
    opener.pump()
    assert relay.stats["relay.circuits.cut"] >= 1
    assert relay.stats["relay.bytes"] <= 64 * 1024
