"""The simulated network: latency, loss, duplication, reordering, bandwidth, partitions.

Theory of operation
-------------------
Every node has an address ``(host, PORT)`` and is reached through the
`Network`, which decides when (and whether) each datagram or stream chunk
arrives, by scheduling the delivery on the `Engine`.

*Datagrams* (the DHT) pay the sender's uplink serialisation (``bandwidth``,
bytes/s, one queue per node) and a one-way latency drawn from the `Latency`
model for the pair, then are lost with probability ``loss``, duplicated with
probability ``duplicate`` (a second copy with its own latency), and delayed
by up to one extra latency with probability ``reorder`` so that they overtake
each other.  A datagram to a node that is down or across a partition is
lost.

*Streams* (gossip over TCP) are reliable and in order: each direction of a
link delivers its chunks no earlier than the previous one; a "lost" segment
costs a retransmission delay (three latencies) instead of disappearing.  A
dial to a node that is down or across a partition fails after
`DIAL_TIMEOUT`, and one to a node that is up but does not listen
(`Network.refusing`) fails after a round trip, as a reset would; otherwise
the other end accepts after one latency and the dialler sees the connection
open after a round trip.  A link breaks when either node crashes or a
partition separates them: both ends that are still up learn it
(``connection_lost``) after one latency, as a TCP reset would tell them.
A node that loses power (``node_down(peers_notice=False)``) tells nobody:
the other ends keep half-open connections that swallow what they send.

For tests (`simulations.testbed`) a node can also be *firewalled*
(`Network.firewalled`: dials to it are rejected after a round trip,
datagrams to it are lost, its own links keep working), one link can be
`reset`, and every dial can be logged (`Network.dial_log`).

Every byte and message sent is counted per node, for the metrics.

*Many addresses on one machine* (the adversary's hosts,
`simulations.adversary`): `send_datagram` and `dial` take a ``src_addr``
that stands in for the node's own address, so one simulated node can speak
from rotating source ports on its host, or from every host of a /24, as a
real attacker with raw sockets or a block of addresses can.  The receiver
sees that address (and answers to it); an address the network does not know
(no `add`) is a host that drops what it gets, as `datagrams.unreachable`
counts.  Partitions and crashes still apply to the node behind it.

Nodes get addresses ``10.x.y.1:PORT``, a /24 each, by index (`Network.address`) unless
`Network.add` is given one.  Any object with the `Endpoint` inputs can be a
node: `simulations.endpoint.CoreEndpoint` around any sans-IO core (the
simulator's `SimNode` drives its `NodeCore` through one, as the tests do).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol

from identity.compile_hints import mypyc_attr
from simulations.engine import Engine

PORT = 7710
#: /24s `Network.address` hands out before it puts a second node in one:
#: ``10.0/16`` .. ``10.254/16`` without the attackers' ``10.66`` and ``10.67``.
NETWORKS_PER_HOST_ROUND = 253 * 256
_NO_GROUP: frozenset[int] = frozenset()
#: Seconds before a dial into the void (node down, partition) fails.
DIAL_TIMEOUT = 5.0


class Endpoint(Protocol):
    """What the network delivers to: a simulated node's sans-IO inputs."""

    up: bool
    region: int

    def receive_datagram(self, data: bytes, addr: tuple[str, int]) -> None: ...
    def connection_accepted(self, addr: tuple[str, int]) -> int: ...
    def connection_opened(self, conn_id: int) -> None: ...
    def connection_failed(self, conn_id: int) -> None: ...
    def data_received(self, conn_id: int, data: bytes) -> None: ...
    def connection_lost(self, conn_id: int) -> None: ...


#: `Latency.kind`s.  (Not a class attribute: mypyc, `simulations.compiled`, makes an unannotated
#: class attribute of a dataclass a field, which metrics.json would then echo.)
LATENCY_KINDS: Final = ("constant", "uniform", "lognormal", "regions")


@mypyc_attr(native_class=False)  # pickled to sweep workers (simulations.compiled)
@dataclass(frozen=True)
class Latency:
    """One-way latency model.  ``kind``: constant, uniform, lognormal or regions (milliseconds)."""

    kind: str = "constant"
    ms: float = 50.0
    low_ms: float = 10.0
    high_ms: float = 100.0
    median_ms: float = 50.0
    sigma: float = 0.5
    #: regions: matrix[i][j] = median one-way ms from region i to j (lognormal with ``sigma``).
    matrix_ms: tuple[tuple[float, ...], ...] = ()
    #: Floor of every draw (0: none).  A run sharded across processes
    #: (`simulations.shards`) needs one: it is the lookahead of its windows.
    min_ms: float = 0.0

    def __post_init__(self) -> None:
        # Messages start with the field's name (the scenario loader prefixes the table's).
        if self.kind not in LATENCY_KINDS:
            raise ValueError(f"kind: one of {', '.join(LATENCY_KINDS)}, not {self.kind!r}")
        for name in ("ms", "low_ms", "high_ms", "median_ms", "sigma", "min_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, not {getattr(self, name):g}")
        if self.high_ms < self.low_ms:
            raise ValueError(f"high_ms: must be >= low_ms ({self.low_ms:g}), not {self.high_ms:g}")
        if self.kind == "regions":
            n = len(self.matrix_ms)
            if n == 0 or any(len(row) != n for row in self.matrix_ms):
                raise ValueError("matrix_ms: the regions latency needs a square, non-empty matrix")

    @property
    def regions(self) -> int:
        return len(self.matrix_ms) if self.kind == "regions" else 1

    def sample(self, rng: random.Random, src_region: int = 0, dst_region: int = 0) -> float:
        """One draw, in seconds."""
        if self.kind == "constant":
            ms = self.ms
        elif self.kind == "uniform":
            ms = rng.uniform(self.low_ms, self.high_ms)
        elif self.kind == "lognormal":
            ms = self.median_ms * math.exp(rng.gauss(0.0, self.sigma))
        else:
            ms = self.matrix_ms[src_region][dst_region] * math.exp(rng.gauss(0.0, self.sigma))
        return max(ms, self.min_ms) / 1000.0

    @property
    def floor_ms(self) -> float:
        """The least one draw can be (milliseconds): the lookahead a sharded run may use."""
        if self.kind == "constant":
            return max(self.ms, self.min_ms)
        if self.kind == "uniform":
            return max(self.low_ms, self.min_ms)
        return self.min_ms


@mypyc_attr(native_class=False)  # pickled to sweep workers (simulations.compiled)
@dataclass(frozen=True)
class LinkModel:
    latency: Latency = Latency()
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    #: Uplink bytes per second of every node (0: unlimited).
    bandwidth: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: a probability 0 .. 1, not {getattr(self, name):g}")
        if self.bandwidth < 0:
            raise ValueError(f"bandwidth: must be >= 0 bytes per second, not {self.bandwidth:g}")


@dataclass
class _Direction:
    last_delivery: float = 0.0


@dataclass
class _Link:
    a: int
    a_conn: int
    b: int
    b_conn: int = 0
    alive: bool = True
    #: Closed by an end (`Network.close`): no new data, but what is in flight arrives,
    #: as a TCP FIN follows the data before it (a reset, `_break`, drops it).
    draining: bool = False
    accepted: bool = False
    #: The dialler's data written before the connection opened on its side.
    opened: bool = False
    pending: list[bytes] = field(default_factory=list)
    ab: _Direction = field(default_factory=_Direction)
    ba: _Direction = field(default_factory=_Direction)
    #: The address the acceptor sees (None: the dialler's own, `Network.node_addrs`).
    a_addr: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Dialled:
    """One dial, as `Network.dial_log` keeps it."""

    #: Engine time of the dial.
    at: float
    src: int
    conn_id: int
    addr: tuple[str, int]
    #: The node it reached, or None: refused or unreachable when dialled.
    dst: int | None


@dataclass
class NodeTraffic:
    datagrams: int = 0
    datagram_bytes: int = 0
    stream_chunks: int = 0
    stream_bytes: int = 0


@mypyc_attr(allow_interpreted_subclasses=True)  # a shard's worker subclasses it (simulations.shards)
class Network:
    def __init__(self, engine: Engine, model: LinkModel) -> None:
        self.engine = engine
        self.model = model
        self.rng = engine.rng("network")
        self.nodes: list[Endpoint] = []
        self.addrs: dict[tuple[str, int], int] = {}
        #: Node index -> its address (`address` unless `add` was given one).
        self.node_addrs: list[tuple[str, int]] = []
        #: Nodes that are up but refuse connections (no listener): a dial to
        #: one fails after a round trip, as a TCP reset tells the dialler.
        self.refusing: set[int] = set()
        #: Nodes behind a firewall that rejects what comes in: a dial to one
        #: fails after a round trip, a datagram to one is lost; links already
        #: open, and what the node dials itself, keep working.
        self.firewalled: set[int] = set()
        #: Every dial, in order, when a test asks for the log (None: not kept).
        self.dial_log: list[Dialled] | None = None
        #: Partitions in force, by key: node index -> the groups it is in; two
        #: nodes talk only if they share a group in every partition (a bridge
        #: node is in several groups).  Empty: no partition.
        self.partitions: dict[object, dict[int, frozenset[int]]] = {}
        #: Extra loss applied on top of the model (a fault window).
        self.extra_loss = 0.0
        self.traffic: list[NodeTraffic] = []
        self._busy_until: list[float] = []
        #: Per node, bumped when it crashes: connection news scheduled for an
        #: earlier incarnation is dropped (a rebooted core reuses connection ids).
        self._epoch: list[int] = []
        self._links: dict[tuple[int, int], _Link] = {}
        self.stats: dict[str, int] = {
            "datagrams.lost": 0,
            "datagrams.duplicated": 0,
            "datagrams.unreachable": 0,
            "dials.failed": 0,
            "links.broken": 0,
        }

    # -- topology ------------------------------------------------------------------

    @staticmethod
    def address(index: int) -> tuple[str, int]:
        """Node ``index``'s address: a /24 of its own, ``10.a.b.h``, while there are /24s left.

        The first 64,768 nodes get host .1 of /24s ``10.0.0`` .. ``10.254.255``,
        stepping over ``10.66/16`` and ``10.67/16`` (the attackers' hosts and
        the contacts they make up, `simulations.adversary`) and ``10.255/16``;
        the next ones host .2 of the same /24s, and so on.  Per-network rules
        (`identity.netaddr.network_key`) then see honest nodes as strangers
        to each other, as on the Internet.
        """
        host, rest = divmod(index, NETWORKS_PER_HOST_ROUND)
        second, third = divmod(rest, 256)
        if second >= 66:
            second += 2
        return f"10.{second}.{third}.{host % 254 + 1}", PORT

    def add(self, node: Endpoint, addr: tuple[str, int] | None = None) -> tuple[str, int]:
        """Attach node at addr (default: `address` of its index); return the address."""
        index = len(self.nodes)
        if addr is None:
            addr = self.address(index)
        elif addr in self.addrs:
            raise ValueError(f"address {addr} is taken")
        self.nodes.append(node)
        self.node_addrs.append(addr)
        self.addrs[addr] = index
        self.traffic.append(NodeTraffic())
        self._busy_until.append(0.0)
        self._epoch.append(0)
        return addr

    def move(self, index: int, addr: tuple[str, int]) -> None:
        """Give node ``index`` another address before it ever sends (e.g. Sybils that share
        a few /24s, `simulations.adversary.place_sybils`); the old one is free again."""
        if addr in self.addrs:
            raise ValueError(f"address {addr} is taken")
        del self.addrs[self.node_addrs[index]]
        self.node_addrs[index] = addr
        self.addrs[addr] = index

    def connected(self, a: int, b: int) -> bool:
        """Whether no partition separates a and b."""
        if not self.partitions:  # the common case: asked for every datagram
            return True
        return all(groups.get(a, _NO_GROUP) & groups.get(b, _NO_GROUP) for groups in self.partitions.values())

    def reachable(self, a: int, b: int) -> bool:
        return self.nodes[a].up and self.nodes[b].up and self.connected(a, b)

    def set_partition(self, groups: Sequence[Sequence[int]] | None, *, key: object = None) -> None:
        """Split the nodes into groups (None heals); links across groups break.

        A node listed in several groups bridges them; a node in none is cut off.
        Partitions with different keys overlap (both cut); healing one leaves
        the others in force.
        """
        if not groups:
            self.partitions.pop(key, None)
            return
        member: dict[int, set[int]] = {}
        for gid, members in enumerate(groups):
            for index in members:
                member.setdefault(index, set()).add(gid)
        self.partitions[key] = {
            index: frozenset(member.get(index, ())) or _NO_GROUP for index in range(len(self.nodes))
        }
        for link in list(self._links.values()):
            if link.alive and not self.reachable(link.a, link.b):
                self._break(link)

    def node_down(self, index: int, *, peers_notice: bool = True) -> None:
        """The node crashed: its links break.

        The other ends learn it after one latency, as a reset tells them; or,
        without ``peers_notice`` (a power cut), never: their ends stay half
        open, swallowing what they send, until they close them.
        """
        for link in list(self._links.values()):
            if link.alive and index in (link.a, link.b):
                if peers_notice:
                    self._break(link)
                else:
                    link.alive = False

    def reset(self, index: int, conn_id: int) -> None:
        """The network drops one connection: both ends learn it after one latency."""
        link = self._links.get((index, conn_id))
        if link is not None and link.alive:
            self._break(link)

    def open_links(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Each accepted, unbroken connection once: ``((dialler, conn id), (acceptor, conn id))``."""
        return [
            ((link.a, link.a_conn), (link.b, link.b_conn))
            for key, link in self._links.items()
            if link.alive and link.accepted and key == (link.a, link.a_conn)
        ]

    # -- datagrams -------------------------------------------------------------------

    def _latency(self, src: int, dst: int) -> float:
        return self.model.latency.sample(self.rng, self.nodes[src].region, self.nodes[dst].region)

    def _uplink(self, src: int, size: int) -> float:
        """When the last byte of size bytes leaves src (its uplink is a FIFO)."""
        now = self.engine.now
        if self.model.bandwidth <= 0:
            return now
        start = max(now, self._busy_until[src])
        self._busy_until[src] = done = start + size / self.model.bandwidth
        return done

    def send_datagram(
        self, src: int, data: bytes, addr: tuple[str, int], *, src_addr: tuple[str, int] | None = None
    ) -> None:
        """Send data from node src to addr (from src_addr, when given: see the module docstring)."""
        traffic = self.traffic[src]
        traffic.datagrams += 1
        traffic.datagram_bytes += len(data)
        dst = self.addrs.get(addr)
        if dst is None or not self.reachable(src, dst) or dst in self.firewalled:
            self.stats["datagrams.unreachable"] += 1
            return
        sent = self._uplink(src, len(data))
        rng = self._datagram_rng(src)
        model = self.model
        copies = 2 if model.duplicate and rng.random() < model.duplicate else 1
        if copies == 2:
            self.stats["datagrams.duplicated"] += 1
        loss = model.loss + self.extra_loss
        if src_addr is None:
            src_addr = self.node_addrs[src]
        for _ in range(copies):
            if loss and rng.random() < loss:
                self.stats["datagrams.lost"] += 1
                continue
            delay = self._latency(src, dst)
            if model.reorder and rng.random() < model.reorder:
                delay += rng.uniform(0.0, delay)
            self._schedule_datagram(sent + delay, dst, data, src, src_addr)

    def _datagram_rng(self, src: int) -> random.Random:
        """The generator that draws src's datagram fates (one for the whole network here)."""
        return self.rng

    def _schedule_datagram(
        self, at: float, dst: int, data: bytes, src: int, src_addr: tuple[str, int]
    ) -> None:
        """Deliver a datagram at ``at`` (a sharded network hands it to dst's process)."""
        self.engine.at(at, partial(self._deliver_datagram, dst, data, src, src_addr))

    def _deliver_datagram(self, dst: int, data: bytes, src: int, src_addr: tuple[str, int]) -> None:
        node = self.nodes[dst]
        if node.up and self.connected(src, dst):
            node.receive_datagram(data, src_addr)

    # -- streams ---------------------------------------------------------------------

    def dial(
        self, src: int, conn_id: int, addr: tuple[str, int], *, src_addr: tuple[str, int] | None = None
    ) -> None:
        """Node src connects to addr (from src_addr, when given: see the module docstring)."""
        dst = self.addrs.get(addr)
        if self.dial_log is not None:
            self._log_dial(src, conn_id, addr, dst)
        if dst is None or not self.reachable(src, dst):
            self.stats["dials.failed"] += 1
            self.engine.after(DIAL_TIMEOUT, partial(self._dial_failed, src, conn_id, self._epoch[src]))
            return
        if dst in self.refusing or dst in self.firewalled:
            self.stats["dials.failed"] += 1
            rtt = self._latency(src, dst) + self._latency(dst, src)
            self.engine.after(rtt, partial(self._dial_failed, src, conn_id, self._epoch[src]))
            return
        link = _Link(src, conn_id, dst, a_addr=src_addr)
        self._links[src, conn_id] = link
        latency = self._latency(src, dst)
        self.engine.after(latency, partial(self._accept, link, latency))

    def _log_dial(self, src: int, conn_id: int, addr: tuple[str, int], dst: int | None) -> None:
        assert self.dial_log is not None
        refused = dst in self.refusing or dst in self.firewalled
        reached = dst if dst is not None and not refused and self.reachable(src, dst) else None
        self.dial_log.append(Dialled(self.engine.now, src, conn_id, addr, reached))

    def _dial_failed(self, src: int, conn_id: int, epoch: int) -> None:
        if self.nodes[src].up and self._epoch[src] == epoch:
            self.nodes[src].connection_failed(conn_id)

    def _accept(self, link: _Link, latency: float) -> None:
        if not link.alive or not self.reachable(link.a, link.b):
            link.alive = False
            self._links.pop((link.a, link.a_conn), None)
            self.engine.after(latency, partial(self._dial_failed, link.a, link.a_conn, self._epoch[link.a]))
            return
        seen = link.a_addr if link.a_addr is not None else self.node_addrs[link.a]
        link.b_conn = self.nodes[link.b].connection_accepted(seen)
        link.accepted = True
        self._links[link.b, link.b_conn] = link
        link.ab.last_delivery = link.ba.last_delivery = self.engine.now
        self.engine.after(latency, partial(self._opened, link))

    def _opened(self, link: _Link) -> None:
        if link.alive and self.nodes[link.a].up:
            link.opened = True
            pending, link.pending = link.pending, []
            for data in pending:
                self.stream_send(link.a, link.a_conn, data)
            self.nodes[link.a].connection_opened(link.a_conn)

    def stream_send(self, src: int, conn_id: int, data: bytes) -> None:
        link = self._links.get((src, conn_id))
        if link is None or not link.alive:
            return
        if src == link.a and conn_id == link.a_conn and not link.opened:
            link.pending.append(data)  # the driver buffers until connect() completes
            return
        traffic = self.traffic[src]
        traffic.stream_chunks += 1
        traffic.stream_bytes += len(data)
        forward = src == link.a and conn_id == link.a_conn
        dst, dst_conn, direction = (
            (link.b, link.b_conn, link.ab) if forward else (link.a, link.a_conn, link.ba)
        )
        delay = self._latency(src, dst)
        loss = self.model.loss + self.extra_loss
        if loss and self.rng.random() < loss:
            delay += 3 * delay  # a retransmission
        at = max(self._uplink(src, len(data)) + delay, direction.last_delivery)
        direction.last_delivery = at
        self.engine.at(at, partial(self._deliver_stream, link, dst, dst_conn, data))

    def _deliver_stream(self, link: _Link, dst: int, dst_conn: int, data: bytes) -> None:
        if (link.alive or link.draining) and self.nodes[dst].up:
            self.nodes[dst].data_received(dst_conn, data)

    def close(self, src: int, conn_id: int) -> None:
        """src closed its end: it learns at once, the other end after the data in flight."""
        link = self._links.pop((src, conn_id), None)
        if link is None:
            self.engine.after(0.0, partial(self._lost, src, conn_id, self._epoch[src]))
            return
        link.alive = False
        link.draining = True
        other = (link.b, link.b_conn) if (src, conn_id) == (link.a, link.a_conn) else (link.a, link.a_conn)
        self._links.pop(other, None)
        self.engine.after(0.0, partial(self._lost, src, conn_id, self._epoch[src]))
        if link.accepted or other[0] == link.a:
            direction = link.ab if src == link.a else link.ba
            at = max(self.engine.now + self._latency(src, other[0]), direction.last_delivery)
            self.engine.at(at, partial(self._lost, other[0], other[1], self._epoch[other[0]]))

    def _lost(self, index: int, conn_id: int, epoch: int) -> None:
        if self.nodes[index].up and self._epoch[index] == epoch:
            self.nodes[index].connection_lost(conn_id)

    def _break(self, link: _Link) -> None:
        link.alive = link.draining = False
        self.stats["links.broken"] += 1
        self._links.pop((link.a, link.a_conn), None)
        ends = [(link.a, link.a_conn)]
        if link.accepted:
            self._links.pop((link.b, link.b_conn), None)
            ends.append((link.b, link.b_conn))
        latency = self._latency(link.a, link.b)
        for index, conn in ends:
            if link.accepted or index == link.a:
                epoch = self._epoch[index]
                self.engine.after(latency, partial(self._lost_or_failed, link, index, conn, epoch))

    def _lost_or_failed(self, link: _Link, index: int, conn_id: int, epoch: int) -> None:
        if not self.nodes[index].up or self._epoch[index] != epoch:
            return
        if index == link.a and not link.accepted:
            self.nodes[index].connection_failed(conn_id)
        else:
            self.nodes[index].connection_lost(conn_id)

    def drop_node_links(self, index: int) -> None:
        """Forget a crashed node's link ends without notifying it (its state is gone)."""
        self._epoch[index] += 1
        for key in [k for k in self._links if k[0] == index]:
            del self._links[key]
