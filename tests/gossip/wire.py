"""An in-memory "TCP" and UDP for gossip endpoints: the simulator's network at zero latency.

`Wire` plays the part of the trio runtime (`p2pblog.runtime.NodeDriver`) for
any number of endpoints: `Replicator`, `NodeCore`, or a `ChannelPeer` the
test drives by hand.  It is a thin layer over `simulations.testbed.Testbed`,
the engine and network model the simulator and the DHT and NodeCore tests
run on: each endpoint is a `CoreEndpoint` at ``(host, PORT)``, for streams
and datagrams both (as `NodeDriver.bind_both` binds UDP and TCP to one
port), on a lossless, zero-latency, unlimited-bandwidth link model.  So a
dial to a listening endpoint is accepted and opened, bytes arrive whole and
in order, and a close reaches the other end after the bytes sent before it,
all at the instant they were sent (the engine runs the actions of one
instant in the order they were scheduled).  A dial to an address where
nobody is up fails after the network's `DIAL_TIMEOUT`, as a dial into the
void does; one to a firewalled endpoint (`Wire.unreachable`) fails at once.

Time moves only in `run` and `advance`: the engine fires every endpoint's
timer in time order up to a deadline; `settle` runs what is due now.  A
test may call cores directly between them (post, follow, a `ChannelPeer`'s
frame): the testbed flushes every endpoint first.  Events (`next_event`)
are collected per endpoint in `events`, every dial in `dials`, open
connections in `links`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, MutableSet
from dataclasses import dataclass
from typing import Any, TypeVar

from gossip.messages import Message, decode_message, encode_message
from gossip.noise import RandomBytes
from gossip.transport import ChannelFailed, FrameReceived, HandshakeCompleted, SecureChannel
from identity import Identity
from simulations.endpoint import CoreEndpoint, TimedCore
from simulations.network import Latency, LinkModel
from simulations.testbed import Testbed

#: Where the fake clock starts (Unix seconds, as NodeCore expects).
T0 = 1_800_000_000.0
#: The port every endpoint listens on (hosts tell them apart).
PORT = 7000

C = TypeVar("C", bound=TimedCore)
#: A connection's id: its dialler's network index and connection id.
LinkId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Dial:
    """One dial an endpoint asked for, and where it led (``target`` None: it failed)."""

    time: float
    source: str
    conn_id: int
    addr: tuple[str, int]
    target: str | None


@dataclass(frozen=True, slots=True)
class Link:
    """One open in-memory connection: each end as (name, connection id)."""

    id: LinkId
    dialler: tuple[str, int]
    acceptor: tuple[str, int]


class Wire:
    """Endpoints linked by in-memory connections; see the module docstring."""

    def __init__(self, now: float = T0) -> None:
        self.bed = Testbed(LinkModel(Latency(ms=0.0)), epoch=now)
        self.network = self.bed.network
        #: Name -> its core, while it is up.
        self.nodes: dict[str, TimedCore] = {}
        self.endpoints: dict[str, CoreEndpoint[Any]] = {}
        #: Name -> the events its cores reported (kept across restarts).
        self.events: dict[str, list[object]] = {}
        #: Names whose firewall rejects what comes in: dials to them fail, datagrams are lost.
        self.unreachable: MutableSet[str] = _Firewalled(self)
        self._names: list[str] = []  # by network index

    @property
    def now(self) -> float:
        return self.bed.now

    # ------------------------------------------------------------------ set-up

    def add(self, name: str, node: C, host: str) -> C:
        """Attach node under name, listening at ``(host, PORT)``."""
        endpoint = self.bed.attach(node, addr=(host, PORT))
        assert endpoint.index == len(self._names)
        self._names.append(name)
        self.endpoints[name] = endpoint
        self.nodes[name] = node
        self.events[name] = endpoint.events
        return node

    def addr(self, name: str) -> tuple[str, int]:
        return self.endpoints[name].addr

    def crash(self, name: str, *, peers_notice: bool = True) -> None:
        """The endpoint vanishes.  Its peers see their connections lost, or (not
        ``peers_notice``: a power cut) keep half-open connections that swallow bytes."""
        self.endpoints[name].crash(peers_notice=peers_notice)
        del self.nodes[name]
        self.settle()

    def restart(self, name: str, node: TimedCore) -> None:
        """A crashed endpoint comes back (a new core) at its old address."""
        self.endpoints[name].restart(node)
        self.nodes[name] = node
        self.settle()

    def reset(self, link_id: LinkId) -> None:
        """The network drops one connection: both ends see it lost."""
        self.network.reset(*link_id)
        self.settle()

    # ------------------------------------------------------------------ inspection

    @property
    def links(self) -> dict[LinkId, Link]:
        """The open connections, oldest first."""
        names = self._names
        return {
            (a, a_conn): Link((a, a_conn), (names[a], a_conn), (names[b], b_conn))
            for (a, a_conn), (b, b_conn) in self.network.open_links()
        }

    @property
    def dials(self) -> list[Dial]:
        """Every dial so far, at the cores' time."""
        assert self.network.dial_log is not None
        names, epoch = self._names, self.bed.epoch
        return [
            Dial(epoch + d.at, names[d.src], d.conn_id, d.addr, None if d.dst is None else names[d.dst])
            for d in self.network.dial_log
        ]

    @property
    def bytes_sent(self) -> Counter[str]:
        """Stream bytes each endpoint sent on open connections."""
        return Counter({name: self.network.traffic[i].stream_bytes for i, name in enumerate(self._names)})

    def links_between(self, a: str, b: str) -> list[Link]:
        return [link for link in self.links.values() if {link.dialler[0], link.acceptor[0]} == {a, b}]

    def dials_to(self, target_addr: tuple[str, int], source: str | None = None) -> list[Dial]:
        return [d for d in self.dials if d.addr == target_addr and (source is None or d.source == source)]

    def events_of(self, name: str, kind: type[object]) -> list[object]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    # ------------------------------------------------------------------ running

    def settle(self) -> None:
        """Flush every endpoint and run what is due now, until nobody has anything to say."""
        self.bed.settle()

    def run(self, until: float) -> None:
        """Fire timers (and what they cause) in time order up to ``until``; then now = until."""
        self.bed.run(until)

    def advance(self, seconds: float) -> None:
        self.bed.advance(seconds)


class _Firewalled(MutableSet[str]):
    """`Wire.unreachable`: names, kept as the network's firewalled node indices."""

    def __init__(self, wire: Wire) -> None:
        self._endpoints = wire.endpoints
        self._firewalled = wire.network.firewalled

    def __contains__(self, name: object) -> bool:
        endpoint = self._endpoints.get(name) if isinstance(name, str) else None
        return endpoint is not None and endpoint.index in self._firewalled

    def __iter__(self) -> Iterator[str]:
        return (name for name, endpoint in self._endpoints.items() if endpoint.index in self._firewalled)

    def __len__(self) -> int:
        return len(self._firewalled)

    def add(self, value: str) -> None:
        self._firewalled.add(self._endpoints[value].index)

    def discard(self, value: str) -> None:
        self._firewalled.discard(self._endpoints[value].index)


class ChannelPeer:
    """A peer that speaks the secure channel but whose gossip frames the test writes.

    It accepts connections (as a responder) and dials when told (`dial`);
    frames it receives are decoded into `received`; with ``hang_up`` it closes
    every connection as soon as the handshake is done.  With it a test can say
    what an honest `GossipSession` never would: forged or malformed entries.
    """

    def __init__(self, identity: Identity, random_bytes: RandomBytes, *, hang_up: bool = False) -> None:
        self.identity = identity
        self.random_bytes = random_bytes
        #: Close every connection once its handshake is done (as a node that refuses us does).
        self.hang_up = hang_up
        self.channels: dict[int, SecureChannel] = {}
        #: conn id -> the peer key its handshake proved.
        self.peers: dict[int, bytes] = {}
        self.received: dict[int, list[Message]] = {}
        self.failed: dict[int, str] = {}
        self.lost: set[int] = set()
        self._dials: list[tuple[int, str, int]] = []
        self._closes: list[int] = []
        self._next_id = 0

    def dial(self, host: str, port: int, expected: bytes, now: float) -> int:
        channel = SecureChannel.initiator(
            self.identity, now=now, expected_peer=expected, random_bytes=self.random_bytes
        )
        conn_id = self._new(channel)
        self._dials.append((conn_id, host, port))
        return conn_id

    def send(self, conn_id: int, message: Message, now: float) -> None:
        self.send_payload(conn_id, encode_message(message), now)

    def send_payload(self, conn_id: int, payload: bytes, now: float) -> None:
        self.channels[conn_id].send_frame(payload, now)

    def open_connections(self) -> list[int]:
        return [cid for cid in self.peers if cid not in self.lost and cid not in self.failed]

    # -- the Endpoint contract

    def dials_to_make(self) -> list[tuple[int, str, int]]:
        out, self._dials = self._dials, []
        return out

    def data_to_send(self) -> list[tuple[int, bytes]]:
        return [(cid, data) for cid, ch in self.channels.items() if (data := ch.data_to_send())]

    def connections_to_close(self) -> list[int]:
        out, self._closes = self._closes, []
        return out

    def connection_accepted(self, addr: tuple[str, int], now: float) -> int:
        channel = SecureChannel.responder(self.identity, now=now, random_bytes=self.random_bytes)
        return self._new(channel)

    def connection_opened(self, conn_id: int, now: float) -> None:
        pass

    def connection_failed(self, conn_id: int, now: float) -> None:
        self.failed[conn_id] = "dial failed"
        self.channels.pop(conn_id, None)

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        channel = self.channels[conn_id]
        channel.receive_data(data, now)
        while (event := channel.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.peers[conn_id] = event.peer_key
                if self.hang_up:
                    channel.close()
                    self._closes.append(conn_id)
            elif isinstance(event, FrameReceived):
                self.received[conn_id].append(decode_message(event.payload))
            elif isinstance(event, ChannelFailed):
                self.failed[conn_id] = event.reason

    def connection_lost(self, conn_id: int, now: float) -> None:
        self.lost.add(conn_id)
        channel = self.channels.pop(conn_id, None)
        if channel is not None:
            channel.close()

    def get_timer(self) -> float | None:
        return None  # the test moves this peer by hand; its channels never time out

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> object | None:
        return None

    def _new(self, channel: SecureChannel) -> int:
        self._next_id += 1
        self.channels[self._next_id] = channel
        self.received[self._next_id] = []
        return self._next_id
