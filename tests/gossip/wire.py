"""An in-memory "TCP" for gossip endpoints, driven by a fake clock.

`Wire` plays the part of the trio runtime (`p2pblog.runtime.NodeDriver`) for
any number of endpoints: `Replicator`, `NodeCore`, or a `ChannelPeer` the
test drives by hand.  Each endpoint listens at one ``(host, port)``.  When an
endpoint asks to dial (`dials_to_make`), the wire looks the address up: a
listening, reachable endpoint gets ``connection_accepted`` and the dialler
``connection_opened``; anything else gets ``connection_failed``.  Bytes from
`data_to_send` are handed to the other end at once (in order, whole), and a
connection in `connections_to_close` is reported lost to both ends after the
closing end's pending bytes went out, as a socket close does.  Endpoints
with a DHT (`DatagramEndpoint`) also get their datagrams at once, on the same
address (as `NodeDriver.bind_both` binds UDP and TCP to one port).

Time moves only in `run`: it fires every endpoint's timer in order up to a
deadline, settling the wire after each step, so a test is deterministic and
takes no wall-clock time.  Events (`next_event`) are collected per endpoint
in `events`, every dial in `dials`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gossip.messages import Message, decode_message, encode_message
from gossip.noise import RandomBytes
from gossip.transport import ChannelFailed, FrameReceived, HandshakeCompleted, SecureChannel
from identity import Identity
from identity.pow import NOTICE_DOMAIN, notice_subject, solve

#: Where the fake clock starts (Unix seconds, as NodeCore expects).
T0 = 1_800_000_000.0
#: The port every endpoint listens on (hosts tell them apart).
PORT = 7000


class Endpoint(Protocol):
    """What the runtime's TCP side sees of a core (`p2pblog.runtime.StreamCore`)."""

    def dials_to_make(self) -> list[tuple[int, str, int]]: ...
    def data_to_send(self) -> list[tuple[int, bytes]]: ...
    def connections_to_close(self) -> list[int]: ...
    def connection_accepted(self, addr: tuple[str, int], now: float) -> int: ...
    def connection_opened(self, conn_id: int, now: float) -> None: ...
    def connection_failed(self, conn_id: int, now: float) -> None: ...
    def data_received(self, conn_id: int, data: bytes, now: float) -> None: ...
    def connection_lost(self, conn_id: int, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> object | None: ...


@runtime_checkable
class DatagramEndpoint(Protocol):
    """A core that also speaks UDP (`NodeCore`'s DHT): it listens on the same port."""

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]: ...
    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Dial:
    """One dial an endpoint asked for, and where it led (``target`` None: it failed)."""

    time: float
    source: str
    conn_id: int
    addr: tuple[str, int]
    target: str | None


@dataclass(slots=True)
class Link:
    """One open in-memory connection."""

    id: int
    dialler: tuple[str, int]
    acceptor: tuple[str, int]
    opened: float


class Wire:
    """Endpoints linked by in-memory connections; see the module docstring."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.nodes: dict[str, Endpoint] = {}
        self.listening: dict[tuple[str, int], str] = {}
        #: Names whose listener refuses connections (dials to them fail).
        self.unreachable: set[str] = set()
        self.dials: list[Dial] = []
        self.events: dict[str, list[object]] = {}
        self.links: dict[int, Link] = {}
        #: (name, conn id) -> link id, for both ends; None: a half-open end whose peer vanished.
        self._ends: dict[tuple[str, int], int | None] = {}
        self._next_link = 0
        self._next_port = 50_000
        #: Bytes that went to a connection that no longer exists.
        self.dropped_bytes = 0
        self.bytes_sent: Counter[str] = Counter()

    # ------------------------------------------------------------------ set-up

    def add(self, name: str, node: Endpoint, host: str) -> Endpoint:
        """Attach node under name, listening at ``(host, PORT)``."""
        self.nodes[name] = node
        self.listening[host, PORT] = name
        self.events.setdefault(name, [])
        return node

    def addr(self, name: str) -> tuple[str, int]:
        for addr, owner in self.listening.items():
            if owner == name:
                return addr
        raise KeyError(name)

    def crash(self, name: str, *, peers_notice: bool = True) -> None:
        """The endpoint vanishes.  Its peers see their connections lost, or (not
        ``peers_notice``: a power cut) keep half-open connections that swallow bytes."""
        del self.nodes[name]
        for link in [link for link in self.links.values() if name in (link.dialler[0], link.acceptor[0])]:
            del self.links[link.id]
            for end in (link.dialler, link.acceptor):
                if end[0] == name:
                    del self._ends[end]
                elif peers_notice:
                    del self._ends[end]
                    self.nodes[end[0]].connection_lost(end[1], self.now)
                else:
                    self._ends[end] = None
        self._ends = {end: lid for end, lid in self._ends.items() if end[0] != name}
        self.settle()

    def restart(self, name: str, node: Endpoint) -> None:
        """A crashed endpoint comes back (a new core) at its old address."""
        self.nodes[name] = node
        self.settle()

    def reset(self, link_id: int) -> None:
        """The network drops one connection: both ends see it lost."""
        link = self.links.pop(link_id)
        for end in (link.dialler, link.acceptor):
            del self._ends[end]
            self.nodes[end[0]].connection_lost(end[1], self.now)
        self.settle()

    # ------------------------------------------------------------------ inspection

    def links_between(self, a: str, b: str) -> list[Link]:
        return [link for link in self.links.values() if {link.dialler[0], link.acceptor[0]} == {a, b}]

    def dials_to(self, target_addr: tuple[str, int], source: str | None = None) -> list[Dial]:
        return [d for d in self.dials if d.addr == target_addr and (source is None or d.source == source)]

    def events_of(self, name: str, kind: type[object]) -> list[object]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    # ------------------------------------------------------------------ running

    def settle(self, max_rounds: int = 100_000) -> None:
        """Move dials, bytes and closes around until nobody has anything to say."""
        for _ in range(max_rounds):
            busy = False
            for name in list(self.nodes):
                if name in self.nodes:
                    busy |= self._step(name, self.nodes[name])
            if not busy:
                return
        raise AssertionError("the wire did not settle")

    def run(self, until: float, max_steps: int = 100_000) -> None:
        """Fire timers in time order up to ``until`` (settling after each); then now = until."""
        self.settle()
        for _ in range(max_steps):
            timers = [(t, name) for name, node in self.nodes.items() if (t := node.get_timer()) is not None]
            if not timers or min(timers)[0] > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, min(timers)[0])
            for t, name in timers:
                if t <= self.now and name in self.nodes:
                    self.nodes[name].handle_timer(self.now)
            self.settle()
        raise AssertionError(f"timers did not advance past {self.now}")

    def advance(self, seconds: float) -> None:
        self.run(self.now + seconds)

    def _step(self, name: str, node: Endpoint) -> bool:
        busy = False
        for conn_id, host, port in node.dials_to_make():
            busy = True
            self._dial(name, node, conn_id, (host, port))
        for conn_id, data in node.data_to_send():
            busy = True
            self.bytes_sent[name] += len(data)
            other = self._other(name, conn_id)
            if other is None:
                self.dropped_bytes += len(data)
            else:
                self.nodes[other[0]].data_received(other[1], data, self.now)
        if isinstance(node, DatagramEndpoint):
            for data, addr in node.datagrams_to_send():
                busy = True
                target = self.listening.get(addr, "")
                receiver: object = None if target in self.unreachable else self.nodes.get(target)
                if isinstance(receiver, DatagramEndpoint):
                    receiver.receive_datagram(data, self.addr(name), self.now)
        for conn_id in node.connections_to_close():
            busy = True
            other = self._other(name, conn_id)
            lid = self._ends.pop((name, conn_id), None)
            if lid is not None:
                del self.links[lid]
            node.connection_lost(conn_id, self.now)
            if other is not None:
                del self._ends[other]
                self.nodes[other[0]].connection_lost(other[1], self.now)
        stamps = getattr(node, "stamps_to_make", None)
        for entry_id, recipient, bits in stamps() if stamps is not None else ():
            # The runtime makes proof-of-work stamps in a worker thread; here, at once.
            busy = True
            nonce = solve(NOTICE_DOMAIN, notice_subject(recipient, entry_id), bits)
            node.stamp_made(entry_id, recipient, nonce, self.now)  # type: ignore[attr-defined]
        while (event := node.next_event()) is not None:
            self.events[name].append(event)
        return busy

    def _other(self, name: str, conn_id: int) -> tuple[str, int] | None:
        lid = self._ends.get((name, conn_id))
        if lid is None:
            return None
        link = self.links[lid]
        return link.acceptor if link.dialler == (name, conn_id) else link.dialler

    def _dial(self, name: str, node: Endpoint, conn_id: int, addr: tuple[str, int]) -> None:
        target = self.listening.get(addr)
        if target is None or target not in self.nodes or target in self.unreachable:
            self.dials.append(Dial(self.now, name, conn_id, addr, None))
            node.connection_failed(conn_id, self.now)
            return
        self.dials.append(Dial(self.now, name, conn_id, addr, target))
        self._next_port += 1
        source_addr = (self.addr(name)[0] if name in self.listening.values() else "10.9.9.9", self._next_port)
        accepted = self.nodes[target].connection_accepted(source_addr, self.now)
        self._next_link += 1
        link = Link(self._next_link, (name, conn_id), (target, accepted), self.now)
        self.links[link.id] = link
        self._ends[link.dialler] = self._ends[link.acceptor] = link.id
        node.connection_opened(conn_id, self.now)


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
