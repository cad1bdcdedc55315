"""One simulation run sharded across processes: conservative windows from the latency floor.

Theory of operation
-------------------
`run_sharded(scenario, shards)` starts ``shards`` worker processes.  Worker
``s`` owns the nodes with ``index % shards == s`` (round robin, so the
joins, the bootstrap node's neighbours and the authors spread evenly) and
runs a `ShardWorker`: the ordinary `Simulation` whose nodes of other shards
are `_Remote` stand-ins, with a `ShardNetwork` in place of the `Network`.

*Replicated control, owned traffic.*  Every worker builds the same
identities, roles and follow graph and runs the whole schedule of joins,
crashes, churn, partitions and loss windows: for a node it does not own
that only flips an up/down flag.  Whether a node is up never depends on
traffic (a fault, a join or a restart decides it), so every worker knows
every node's state at every virtual time, and the fault draws (victims of a
crash, churn sessions) come out the same everywhere.  Posts, follows and
lookups run only in the owner's worker.

*Conservative windows (Chandy-Misra / YAWNS).*  Everything one node does to
another goes through the network and costs at least one latency, which has
a floor ``L`` (`Latency.floor_ms`, at least `MIN_LOOKAHEAD_MS`).  A message
for a node in another shard is not scheduled but put in an outbox with its
delivery time.  At each barrier every worker sends every other one its
outbox, its next event's time and the earliest message it sends to each
shard, so all know ``E_i``, the earliest event shard ``i`` can run in the
coming window (its next one, or a message due there).  Worker ``j`` then
inserts what it received and runs its events before
``T_j = min(min over the others of E_i + L, E_j + 2 L)``: another worker
sends nothing in this window that arrives before its ``E_i + L``, and what
it does in the next window because of ``j``'s messages arrives after
``E_j + 2 L``.  So no event ever runs early (a message due before the
receiver's clock is an `AssertionError`, never a silent reordering), a
quiet stretch is skipped in one window, and a worker far behind the others
lets them run up to two lookaheads ahead.  A
step of `Simulation.run` (a hundredth of the run) ends a window too, so all
workers cross the same step boundaries.  Received messages are inserted in
the order ``(time, source node, sender's counter)``, and every draw that
decides traffic comes from the sending node's own stream
(``rng("network:{src}")``), so a run depends only on the seed and the shard
count.  Barriers are pairwise exchanges over `multiprocessing` pipes in a
fixed order (lower shard sends first), which cannot deadlock.

*Streams across shards.*  A connection is two halves (`_Half`), one per end,
each in its owner's worker, tied by a token (dialler, connection id,
dialler's incarnation).  A dial sends ACCEPT; the acceptor answers OPENED or
FAILED; data goes as DATA, in order per direction (each half keeps the
last delivery time of what it sends); a close or a crash sends LOST after
the data in flight.  A partition, replicated, breaks each worker's own
halves.  Refusal is decided at the acceptor.

*Oracles and metrics.*  At every prefix check, convergence probe and the
convergence deadline, and at the end, each worker sends the coordinator a
`_Snapshot`: what changed since its last one in its honest nodes' feeds of
the authors (latest seq, forked seq, and a digest of each new entry) and in
its nodes' up state.  The coordinator keeps those in a `MergedView` (a
`Simulation` whose nodes are views over the snapshots) and runs the
unmodified prefix and convergence oracles and `Simulation._metrics` on it;
the workers' final reports give posts, deliveries, lookups, counters and
traffic.  The validity oracle runs in the worker of the node that stored an
entry; the author's signature check against its own store needs the author
in the same shard (elsewhere the prefix oracle compares the replicas).

Scope: scenarios with ``[[attacks]]``, ``[dms]`` or ``[devices]`` are
refused (`ShardError`): their traffic and oracles read every node at once.
One shard is the ordinary single-process `run_scenario`.
"""

from __future__ import annotations

import faulthandler
import hashlib
import math
import multiprocessing
import pickle
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection, wait
from random import Random
from typing import Any, Final, cast

from dht.ids import Contact
from dht.wire import Value
from identity import Identity
from p2pblog.replication import EntriesStored
from p2pblog.store import FeedState
from simulations.dhtmodel import DhtView
from simulations.engine import Engine
from simulations.network import DIAL_TIMEOUT, Endpoint, LinkModel, Network
from simulations.node import SimNode
from simulations.savings import idle_collect
from simulations.scenario import Scenario
from simulations.shard_boot import boot
from simulations.simulation import Result, Simulation, Violation

#: Latency floor a sharded run gets when its scenario sets none (``network.latency.min_ms = 0``):
#: below 0.1% of the bundled lognormal draws (median 40 ms, sigma 0.4) fall under it.
DEFAULT_FLOOR_MS: Final = 10.0
#: Smallest lookahead accepted: below it the windows are too short to pay for their barriers.
MIN_LOOKAHEAD_MS: Final = 1.0
#: Most worker processes for one run.
MAX_SHARDS: Final = 64
#: Bytes of an entry's digest in a snapshot (enough to tell two entries apart).
DIGEST_SIZE: Final = 16

# Message kinds between shards (`ShardNetwork._receive`).
DATAGRAM: Final = 0
ACCEPT: Final = 1
OPENED: Final = 2
FAILED: Final = 3
DATA: Final = 4
LOST: Final = 5
INJECT: Final = 6
#: A write to the DHT model's global view (`_ShardedView`), applied in every shard.
VIEW: Final = 7

#: A message for another shard: (delivery time, source node, sender's counter, kind, arguments).
Message = tuple[float, int, int, int, tuple[Any, ...]]
#: A shard's bound at a barrier: its next event's time, and per shard the earliest message it sends there.
Bound = tuple[float, list[float]]
#: Ties the two halves of one connection: (dialler, its connection id, its incarnation epoch).
Token = tuple[int, int, int]


class ShardError(ValueError):
    """A scenario or shard count a sharded run cannot take (one line for the CLI)."""


def prepare(scenario: Scenario, shards: int) -> tuple[Scenario, float]:
    """The scenario as the shards run it (with a latency floor) and the lookahead, seconds."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ShardError(f"--shards: 1 .. {MAX_SHARDS}, not {shards}")
    if shards > scenario.nodes:
        raise ShardError(f"--shards: at most one shard per node ({scenario.nodes}), not {shards}")
    unsupported = [
        name
        for name, used in (
            ("[[attacks]]", bool(scenario.attacks)),
            ("[dms]", scenario.dms.per_hour > 0),
            ("[devices]", scenario.devices.identities > 0),
            ("[sybil]", scenario.sybil.fraction > 0),
            ("[names]", scenario.names.claims > 0),
        )
        if used
    ]
    if unsupported:
        raise ShardError(
            f"--shards {shards}: scenario {scenario.name} uses {', '.join(unsupported)}, "
            "which a sharded run does not support; run it with --shards 1"
        )
    latency = scenario.network.latency
    if latency.min_ms == 0 and latency.floor_ms == 0:
        latency = replace(latency, min_ms=DEFAULT_FLOOR_MS)
    if latency.floor_ms < MIN_LOOKAHEAD_MS:
        raise ShardError(
            f"--shards {shards}: the latency floor {latency.floor_ms:g} ms is below the least lookahead "
            f"({MIN_LOOKAHEAD_MS:g} ms); set network.latency.min_ms"
        )
    sharded = replace(scenario, network=replace(scenario.network, latency=latency))
    return sharded, latency.floor_ms / 1000.0


def digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=DIGEST_SIZE).digest()


# ============================================================ the network of one shard


@dataclass(slots=True)
class _Half:
    """One end of a connection, in the worker of the node at that end."""

    node: int
    remote: int
    token: Token
    dialler: bool
    remote_conn: int = 0
    opened: bool = False
    #: The dialler's data written before the connection opened on its side.
    pending: list[bytes] = field(default_factory=list)
    #: When the last chunk this end sent arrives (a direction delivers in order).
    last_out: float = 0.0


class ShardNetwork(Network):
    """The `Network` of one shard: messages for other shards' nodes go to an outbox."""

    def __init__(
        self, engine: Engine, model: LinkModel, *, shard: int, shards: int, lookahead: float
    ) -> None:
        super().__init__(engine, model)
        self.shard = shard
        self.shards = shards
        self.lookahead = lookahead
        #: Per destination shard, the messages sent since the last barrier.
        self.outbox: list[list[Message]] = [[] for _ in range(shards)]
        self.sent = 0
        #: Of those, the messages for other shards.
        self.crossed = 0
        self._halves: dict[tuple[int, int], _Half] = {}
        self._rngs: dict[int, Random] = {}
        self._handlers: dict[int, Callable[..., None]] = {
            DATAGRAM: self._deliver_datagram,
            ACCEPT: self._on_accept,
            OPENED: self._on_opened,
            FAILED: self._on_failed,
            DATA: self._on_data,
            LOST: self._on_lost,
        }

    def owns(self, index: int) -> bool:
        return index % self.shards == self.shard

    def _rng(self, src: int) -> Random:
        rng = self._rngs.get(src)
        if rng is None:
            rng = self._rngs[src] = self.engine.rng(f"network:{src}")
        return rng

    def _latency(self, src: int, dst: int) -> float:
        return self.model.latency.sample(self._rng(src), self.nodes[src].region, self.nodes[dst].region)

    def _send(self, at: float, src: int, dst: int, kind: int, args: tuple[Any, ...]) -> None:
        self.sent += 1
        shard = dst % self.shards
        if shard == self.shard:
            self.engine.at(at, partial(self._receive, kind, args))
        else:
            self.crossed += 1
            self.outbox[shard].append((at, src, self.sent, kind, args))

    def _receive(self, kind: int, args: tuple[Any, ...]) -> None:
        self._handlers[kind](*args)

    def on_inject(self, handler: Callable[..., None]) -> None:
        self._handlers[INJECT] = handler

    def on_view(self, handler: Callable[..., None]) -> None:
        self._handlers[VIEW] = handler

    def broadcast_view(self, src: int, args: tuple[Any, ...]) -> None:
        """A write to the DHT model's view, applied in every shard (this one too) one lookahead later."""
        at = self.engine.now + self.lookahead
        for shard in range(self.shards):
            self._send(at, src, shard, VIEW, args)  # node ``shard`` lives in shard ``shard``

    def inject(self, src: int, dst: int, args: tuple[Any, ...]) -> None:
        """A simulation-level hand-over (the equivocator's second branch), one lookahead later."""
        self._send(self.engine.now + self.lookahead, src, dst, INJECT, args)

    def insert(self, messages: list[Message]) -> None:
        """Schedule what other shards sent, in the order that does not depend on who sent first."""
        messages.sort(key=lambda m: (m[0], m[1], m[2]))
        if messages and messages[0][0] < self.engine.now:  # a window ran too far: a bug, not a run
            raise AssertionError(
                f"shard {self.shard}: a message due at {messages[0][0]} came at {self.engine.now}"
            )
        for at, _, _, kind, args in messages:
            self.engine.at(at, partial(self._receive, kind, args))

    # -- datagrams -----------------------------------------------------------------

    def _datagram_rng(self, src: int) -> Random:
        return self._rng(src)

    def _schedule_datagram(
        self, at: float, dst: int, data: bytes, src: int, src_addr: tuple[str, int]
    ) -> None:
        self._send(at, src, dst, DATAGRAM, (dst, data, src, src_addr))

    # -- streams: two halves -----------------------------------------------------------

    def dial(
        self, src: int, conn_id: int, addr: tuple[str, int], *, src_addr: tuple[str, int] | None = None
    ) -> None:
        dst = self.addrs.get(addr)
        epoch = self._epoch[src]
        if dst is None or not self.reachable(src, dst):
            self.stats["dials.failed"] += 1
            self.engine.after(DIAL_TIMEOUT, partial(self._dial_failed, src, conn_id, epoch))
            return
        token = (src, conn_id, epoch)
        self._halves[src, conn_id] = _Half(src, dst, token, dialler=True)
        seen = src_addr if src_addr is not None else self.node_addrs[src]
        self._send(
            self.engine.now + self._latency(src, dst), src, dst, ACCEPT, (dst, src, conn_id, seen, token)
        )

    def _on_accept(self, b: int, a: int, a_conn: int, seen: tuple[str, int], token: Token) -> None:
        back = self.engine.now + self._latency(b, a)
        if b in self.refusing or b in self.firewalled or not self.reachable(a, b):
            self.stats["dials.failed"] += 1
            self._send(back, b, a, FAILED, (a, a_conn, token))
            return
        b_conn = self.nodes[b].connection_accepted(seen)
        half = _Half(b, a, token, dialler=False, remote_conn=a_conn, opened=True, last_out=self.engine.now)
        self._halves[b, b_conn] = half
        self._send(back, b, a, OPENED, (a, a_conn, b, b_conn, token))

    def _on_opened(self, a: int, a_conn: int, b: int, b_conn: int, token: Token) -> None:
        half = self._halves.get((a, a_conn))
        if half is None or half.token != token:
            # Closed (or crashed) before it opened: the acceptor's end is reset.
            self._send(self.engine.now + self._latency(a, b), a, b, LOST, (b, b_conn, token))
            return
        half.remote_conn = b_conn
        half.opened = True
        half.last_out = max(half.last_out, self.engine.now)
        pending, half.pending = half.pending, []
        for data in pending:
            self.stream_send(a, a_conn, data)
        if self.nodes[a].up:
            self.nodes[a].connection_opened(a_conn)

    def _on_failed(self, a: int, a_conn: int, token: Token) -> None:
        half = self._halves.get((a, a_conn))
        if half is not None and half.token == token:
            del self._halves[a, a_conn]
            if self.nodes[a].up:
                self.nodes[a].connection_failed(a_conn)

    def stream_send(self, src: int, conn_id: int, data: bytes) -> None:
        half = self._halves.get((src, conn_id))
        if half is None:
            return
        if not half.opened:
            half.pending.append(data)  # the driver buffers until connect() completes
            return
        traffic = self.traffic[src]
        traffic.stream_chunks += 1
        traffic.stream_bytes += len(data)
        delay = self._latency(src, half.remote)
        loss = self.model.loss + self.extra_loss
        if loss and self._rng(src).random() < loss:
            delay += 3 * delay  # a retransmission
        at = max(self._uplink(src, len(data)) + delay, half.last_out)
        half.last_out = at
        self._send(at, src, half.remote, DATA, (half.remote, half.remote_conn, data, half.token))

    def _on_data(self, dst: int, dst_conn: int, data: bytes, token: Token) -> None:
        half = self._halves.get((dst, dst_conn))
        if half is not None and half.token == token and self.nodes[dst].up:
            self.nodes[dst].data_received(dst_conn, data)

    def close(self, src: int, conn_id: int) -> None:
        half = self._halves.pop((src, conn_id), None)
        self.engine.after(0.0, partial(self._lost, src, conn_id, self._epoch[src]))
        if half is None or not half.opened:
            return  # not open yet: OPENED finds no half and resets the acceptor
        at = max(self.engine.now + self._latency(src, half.remote), half.last_out)
        self._send(at, src, half.remote, LOST, (half.remote, half.remote_conn, half.token))

    def _on_lost(self, dst: int, dst_conn: int, token: Token) -> None:
        half = self._halves.get((dst, dst_conn))
        if half is None or half.token != token:
            return
        del self._halves[dst, dst_conn]
        self.stats["links.broken"] += 1
        if self.nodes[dst].up:
            self._end(dst, dst_conn, half)

    def _end(self, index: int, conn_id: int, half: _Half) -> None:
        if half.opened:
            self.nodes[index].connection_lost(conn_id)
        else:
            self.nodes[index].connection_failed(conn_id)

    def node_down(self, index: int, *, peers_notice: bool = True) -> None:
        if not peers_notice:
            return  # the other ends stay half open; what they send finds no half
        for (node, _), half in list(self._halves.items()):
            if node == index and half.opened:
                at = self.engine.now + self._latency(index, half.remote)
                self._send(at, index, half.remote, LOST, (half.remote, half.remote_conn, half.token))

    def drop_node_links(self, index: int) -> None:
        self._epoch[index] += 1
        for key in [k for k in self._halves if k[0] == index]:
            del self._halves[key]

    def set_partition(self, groups: Any, *, key: object = None) -> None:
        """Every shard applies the same partition and breaks its own ends across it."""
        super().set_partition(groups, key=key)
        for (index, conn_id), half in list(self._halves.items()):
            if not self.connected(index, half.remote):
                del self._halves[index, conn_id]
                self.stats["links.broken"] += 1
                at = self._latency(index, half.remote)
                self.engine.after(at, partial(self._broken, index, conn_id, half, self._epoch[index]))

    def _broken(self, index: int, conn_id: int, half: _Half, epoch: int) -> None:
        if self.nodes[index].up and self._epoch[index] == epoch:
            self._end(index, conn_id, half)


# ============================================================ one worker's simulation


class _Remote(SimNode):
    """A node of another shard, as this shard's schedule sees it: identity, address, up or down."""

    def __init__(self, index: int, identity: Identity, network: Network, region: int) -> None:
        # No core and no store here: the owner's worker has them.
        self.index = index
        self.identity = identity
        self.region = region
        self.incarnation = 0
        self.crashed_stats = Counter()
        self._up = False
        self.addr = network.add(cast(Endpoint, self))

    @property
    def up(self) -> bool:
        return self._up

    @property
    def core(self) -> None:
        return None

    def start(self, seeds: list[tuple[str, int]]) -> None:
        self._up = True
        self.incarnation += 1

    def crash(self) -> None:
        self._up = False


@dataclass
class _Snapshot:
    """What changed in one shard's feeds and nodes since its last snapshot."""

    label: str
    time: float
    #: Node index -> up, for the owned nodes whose state changed.
    up: dict[int, bool]
    #: (author, holder, latest seq, forked seq, digests of the entries after the last reported seq).
    feeds: list[tuple[int, int, int, int | None, list[bytes]]]
    equivocated: dict[int, int]


class _ShardedView(DhtView):
    """The DHT model's global view in one shard (`simulations.dhtmodel`, issue 17).

    Every shard holds the whole view.  A write (a node joins, a record is put, a
    provider announced) is made in the owner's shard and applied in every shard,
    its own included, one lookahead later, in the order messages are inserted:
    a model query's walk takes far longer than the lookahead, so a write is seen
    as a single process would see it, and the same in every shard.  Reads stay
    local.
    """

    def __init__(self, network: ShardNetwork) -> None:
        super().__init__(network)
        self._shard_network = network
        network.on_view(self._apply)

    def join(self, index: int, contact: Contact) -> None:
        # Fields, not the Contact: a compiled frozen dataclass does not unpickle.
        self._shard_network.broadcast_view(index, ("join", index, contact.node_id, contact.addr))

    def put(self, key: bytes, value: Value, publisher: int, expires_at: float) -> None:
        self._shard_network.broadcast_view(publisher, ("put", key, value, publisher, expires_at))

    def add_provider(
        self, key: bytes, pid: bytes, value: bytes, publisher: int, now: float, ttl: float
    ) -> None:
        self._shard_network.broadcast_view(publisher, ("provider", key, pid, value, publisher, now, ttl))

    def _apply(self, op: str, *args: Any) -> None:
        if op == "join":
            index, node_id, addr = args
            DhtView.join(self, index, Contact(node_id, addr))
        elif op == "put":
            DhtView.put(self, *args)
        else:
            DhtView.add_provider(self, *args)


class ShardWorker(Simulation):
    """The simulation in worker ``shard``: owned nodes run, the others are `_Remote`."""

    def __init__(self, scenario: Scenario, shard: int, shards: int, lookahead: float) -> None:
        self.shard = shard
        self.shards = shards
        self.lookahead = lookahead
        self.mesh: _Mesh | None = None
        self.report: Callable[[tuple[Any, ...]], None] = lambda message: None
        self.windows = 0
        self.barrier_wall = 0.0
        #: (feed, seq, node, time) of every entry an owned node stored.
        self.deliveries: list[tuple[bytes, int, int, float]] = []
        self._reported: dict[tuple[int, int], tuple[int, int | None]] = {}
        self._reported_up: dict[int, bool] = {}
        self._pairs: list[tuple[int, int, bytes]] | None = None
        #: (author, holder) pairs whose feed an owned node stored into since the last snapshot: a
        #: convergence probe (every 5 s) reads only those, and the equivocators' (a fork stores nothing).
        self._changed: set[tuple[int, int]] = set()
        super().__init__(scenario)
        self.network.on_inject(self._injected)
        if self.dht_view is not None:  # the DHT model: a view kept whole in every shard
            self.dht_view = _ShardedView(self.network)

    @property
    def network(self) -> ShardNetwork:
        return self._network

    @network.setter
    def network(self, value: Network) -> None:
        # Simulation.__init__ makes a Network: the shard's takes its place.
        self._network = ShardNetwork(
            value.engine, value.model, shard=self.shard, shards=self.shards, lookahead=self.lookahead
        )

    def owns(self, index: int) -> bool:
        return index % self.shards == self.shard

    def _schedule_reliability(self) -> None:
        """Nothing: its probes read every node's store, and a sharded run leaves the reliability
        section out (`MergedView.finish`; `prepare` refuses names and Sybils)."""

    def _make_node(self, index: int, identity: Identity, region: int) -> SimNode:
        if self.owns(index):
            return super()._make_node(index, identity, region)
        return _Remote(index, identity, self.network, region)

    # -- the schedule: only owned nodes act ------------------------------------------

    def _follow(self, node: SimNode) -> None:
        if self.owns(node.index):
            super()._follow(node)

    def _post(self, index: int) -> None:
        if self.owns(index):
            super()._post(index)
            self._changed.add((index, index))

    def _lookup(self, index: int, target: int) -> None:
        if self.owns(index):
            super()._lookup(index, target)

    def _equivocate(self, index: int) -> None:
        """`simulations.adversary.equivocate`, handing the second branch to other shards by message."""
        from p2pblog.entry import POST, create_entry, post_body

        if not self.owns(index):
            return
        author = self.nodes[index]
        state = author.store.feed_state(author.identity.public_key)
        if state.forked_seq is not None:
            return
        seq, prev = state.latest_seq + 1, state.latest_id
        self.equivocated[index] = seq
        when = int(author.now * 1000)
        body = post_body("the other branch")
        other = create_entry(author.identity, seq=seq, prev=prev, timestamp=when, kind=POST, body=body)
        if author.core is not None:
            author.core.post("the first branch", author.now)
            author.flush()
        else:
            author.store.append(author.identity, POST, post_body("the first branch"), when)
        rng = self.engine.rng("equivocation")
        followers = [i for i in self.followers[index] if self.nodes[i].up]
        for i in sorted(rng.sample(followers, len(followers) // 2)):
            self.network.inject(index, i, (i, author.identity.public_key, seq, other.raw))

    def _injected(self, index: int, feed: bytes, seq: int, raw: bytes) -> None:
        follower = self.nodes[index]
        self._changed.add((self.by_key[feed].index, index))
        if follower.core is not None and follower.store.latest_seq(feed) == seq - 1:
            follower.store.ingest(raw)
            follower.core.replicator.feed_appended(feed, follower.now)
            follower.flush()

    # -- oracles: the worker records, the coordinator judges ------------------------------

    def _entries_stored(self, node: SimNode, event: EntriesStored) -> None:
        now = self.engine.now
        author_node = self.by_key.get(event.feed)
        if author_node is not None:
            self._changed.add((author_node.index, node.index))
        for seq in range(event.latest - event.count + 1, event.latest + 1):
            self.deliveries.append((event.feed, seq, node.index, now))
        author = self.by_key.get(event.feed)
        if author is None or self.owns(author.index):
            super()._entries_stored(node, event)
            return
        # The author's store is in another worker: the fork part of the validity oracle only.
        fork_key = (node.index, event.feed)
        if node.index in self.honest_set:
            if fork_key in self.fork_seen and event.latest > self.fork_seen[fork_key]:
                self._violate(
                    "validity", f"node {node.index} stored {event.feed.hex()[:8]} past a known fork"
                )
            state = node.store.feed_state(event.feed)
            if state.forked_seq is not None and fork_key not in self.fork_seen:
                self.fork_seen[fork_key] = node.store.latest_seq(event.feed)

    def _check_prefixes(self) -> None:
        self._snapshot("check")

    def _probe_convergence(self) -> None:
        self._snapshot("probe")

    def _convergence_oracle(self) -> None:
        self._snapshot("converge")

    def _snapshot(self, label: str) -> None:
        up = {}
        for i in range(self.shard, self.scenario.nodes, self.shards):
            now_up = self.nodes[i].up
            if self._reported_up.get(i) != now_up:
                up[i] = self._reported_up[i] = now_up
        if self._pairs is None:  # the feeds the oracles read that this shard holds, found once
            self._pairs = [
                (author, i, self.nodes[author].identity.public_key)
                for author in self.authors
                for i in (author, *self.followers[author])
                if self.owns(i) and i in self.honest_set
            ]
        feeds = []
        changed, self._changed = self._changed, set()
        probe = label == "probe"
        for author, i, feed in self._pairs:
            if probe and (author, i) not in changed and self.roles.get(author) != "equivocator":
                continue  # unchanged since the last snapshot: nothing to read
            state = self.nodes[i].store.feed_state(feed)
            if state.forked_seq is not None and i != author:
                self.fork_seen.setdefault((i, feed), state.latest_seq)
            before, forked = self._reported.get((author, i), (0, None))
            if (before, forked) == (state.latest_seq, state.forked_seq):
                continue
            self._reported[author, i] = (state.latest_seq, state.forked_seq)
            new = self.nodes[i].store.raw_range(feed, before + 1, max(0, state.latest_seq - before))
            feeds.append((author, i, state.latest_seq, state.forked_seq, [digest(r) for r in new]))
        self.report(("snapshot", _Snapshot(label, self.engine.now, up, feeds, dict(self.equivocated))))

    # -- running in windows --------------------------------------------------------------

    def _run_until(self, t: float) -> bool:
        engine, network, mesh = self.engine, self.network, self.mesh
        assert mesh is not None
        shards, lookahead = self.shards, self.lookahead
        while True:
            nxt = engine.next_time()
            # This shard's bound: its next event, and the earliest message it sends each shard.
            due = [min((m[0] for m in box), default=math.inf) for box in network.outbox]
            bound = (math.inf if nxt is None else nxt, due)
            started = time.perf_counter()
            bounds, received = mesh.exchange(bound, network.outbox)
            self.barrier_wall += time.perf_counter() - started
            self.windows += 1
            network.outbox = [[] for _ in range(shards)]
            network.insert(received)
            bounds[self.shard] = bound
            # Shard i's earliest event in this window: its own next one, or a message sent to it.
            earliest = [min(bounds[i][0], *(bounds[k][1][i] for k in range(shards))) for i in range(shards)]
            # What another shard runs in this window reaches shard j no earlier than its earliest
            # event + L; what it runs in the next because of j, no earlier than j's earliest + 2 L.
            horizons = [
                min(
                    min(earliest[i] for i in range(shards) if i != j) + lookahead, earliest[j] + 2 * lookahead
                )
                for j in range(shards)
            ]
            if horizons[self.shard] > t:
                engine.run(t)
                if min(horizons) > t:  # every shard is through t: all leave at the same barrier
                    self.report(("progress", t, engine.events_run))
                    return True
            else:
                _run_before(engine, horizons[self.shard])

    def _metrics(self) -> dict[str, Any]:
        self._snapshot("final")
        stats: Counter[str] = Counter()
        traffic = {}
        for i in range(self.shard, self.scenario.nodes, self.shards):
            node = self.nodes[i]
            stats.update(node.crashed_stats)
            if node.core is not None:
                stats.update(node.core.counters())
            traffic[i] = self.network.traffic[i]
        return {
            "posts": [(self.posts[key], self.by_key[key[0]].index, key) for key in self.post_order],
            "deliveries": self.deliveries,
            "skipped_posts": self.skipped_posts,
            "lookup_results": self.lookup_results,
            "refused": self.refused,
            "fork_seen": self.fork_seen,
            "stats": stats,
            "traffic": traffic,
            "network": self.network.stats,
            "events": self.engine.events_run,
            "violations": [(v.oracle, v.time, v.detail) for v in self.violations],
            "windows": self.windows,
            "barrier_wall": self.barrier_wall,
            "idle_collections": 0 if self.mesh is None else self.mesh.idle_collections,
            "cpu": time.process_time(),
            "crossed": self.network.crossed,
            "sent": self.network.sent,
            "census": self.dht_census,
            "connections": [
                self.nodes[i].core.replicator.connection_count  # type: ignore[union-attr]
                for i in range(self.shard, self.scenario.nodes, self.shards)
                if i in self.honest_set and self.nodes[i].core is not None
            ],
        }


def _run_before(engine: Engine, horizon: float) -> None:
    """`Engine.run` for the actions due strictly before horizon (now stays at the last one run)."""
    while True:
        when = engine.next_time()
        if when is None or when >= horizon:
            return
        engine.step()


class _Mesh:
    """Pipes to every other worker; `exchange` is one barrier."""

    def __init__(self, shard: int, peers: dict[int, Connection]) -> None:
        self.shard = shard
        self.peers = dict(sorted(peers.items()))
        #: Collections made while waiting for a peer (`idle_collect`).
        self.idle_collections = 0

    def exchange(self, bound: Bound, outbox: list[list[Message]]) -> tuple[dict[int, Bound], list[Message]]:
        """Send each peer its messages and this shard's bound; the peers' bounds and the messages
        received.  The lower shard of a pair sends first, so no two wait on each other."""
        received: list[Message] = []
        bounds: dict[int, Bound] = {}
        for peer, conn in self.peers.items():
            if self.shard < peer:
                conn.send((bound, outbox[peer]))
                bounds[peer], messages = self._recv(conn)
            else:
                bounds[peer], messages = self._recv(conn)
                conn.send((bound, outbox[peer]))
            received.extend(messages)
        return bounds, received

    def _recv(self, conn: Connection) -> Any:
        """The peer's half of the exchange; while it is still running its window, this worker
        collects its young garbage (`idle_collect`), which would otherwise interrupt a window."""
        while not conn.poll() and idle_collect():
            self.idle_collections += 1
        return conn.recv()


def _worker(
    scenario: Scenario,
    shard: int,
    shards: int,
    lookahead: float,
    peers: dict[int, Connection],
    up: Connection,
) -> None:
    """The body of worker process ``shard``: run, reporting to the coordinator through up."""
    faulthandler.enable()  # a crash below Python (SQLite, a C extension) still says where
    faulthandler.register(signal.SIGTERM, chain=True)  # and so does a worker the coordinator ends
    try:
        sim = ShardWorker(scenario, shard, shards, lookahead)
        sim.mesh = _Mesh(shard, peers)
        sim.report = up.send
        result = sim.run()
        up.send(("final", result.metrics))
    except BaseException as exc:  # the coordinator raises it, naming the shard
        why = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        print(f"shard {shard}: {why}", file=sys.stderr, flush=True)
        up.send(("error", why))
    finally:
        up.close()


# ============================================================ the coordinator


class _ViewStore:
    """A node's feeds as its worker's snapshots told them (the calls the oracles make)."""

    def __init__(self) -> None:
        self.feeds: dict[bytes, tuple[int, int | None, list[bytes]]] = {}

    def feed_state(self, author: bytes) -> FeedState:
        latest, forked, digests = self.feeds.get(author, (0, None, []))
        return FeedState(author, latest, digests[-1] if digests else None, forked)

    def latest_seq(self, author: bytes) -> int:
        return self.feeds.get(author, (0, None, []))[0]

    def raw_range(self, author: bytes, first: int, limit: int) -> list[bytes]:
        digests = self.feeds.get(author, (0, None, []))[2]
        return digests[first - 1 : first - 1 + limit]


class _View(_Remote):
    """A node as the coordinator sees it: up or down, and its feeds' digests."""

    def __init__(self, index: int, identity: Identity, network: Network, region: int) -> None:
        super().__init__(index, identity, network, region)
        self.store = cast(Any, _ViewStore())

    def set_up(self, up: bool) -> None:
        self._up = up


class MergedView(Simulation):
    """The whole run as the coordinator assembles it, for the unmodified oracles and metrics."""

    #: Every honest node's open connections at the end, as the workers reported them.
    connections: list[int]

    def _connection_counts(self) -> list[int]:
        return self.connections

    def _make_node(self, index: int, identity: Identity, region: int) -> SimNode:
        return _View(index, identity, self.network, region)

    def apply(self, snapshots: list[_Snapshot]) -> None:
        """One labelled snapshot from every worker: merge, then run what the label stands for."""
        label, when = snapshots[0].label, snapshots[0].time
        for snap in snapshots:
            for i, up in snap.up.items():
                cast(_View, self.nodes[i]).set_up(up)
            for author, i, latest, forked, new in snap.feeds:
                store = cast(_ViewStore, self.nodes[i].store)
                feed = self.nodes[author].identity.public_key
                digests = store.feeds.get(feed, (0, None, []))[2]
                store.feeds[feed] = (latest, forked, digests + new)
            self.equivocated.update(snap.equivocated)
        self.engine.now = when
        if label == "check":
            Simulation._check_prefixes(self)
        elif label == "probe":
            Simulation._probe_convergence(self)
        elif label == "converge":
            Simulation._convergence_oracle(self)

    def finish(self, reports: list[dict[str, Any]]) -> Result:
        """Merge the workers' final reports and compute the metrics as one process would."""
        posts = sorted(p for r in reports for p in r["posts"])
        for when, _, key in posts:
            self.posts[key] = when
            self.post_order.append(key)
            self.delivered[key] = {}
        for feed, seq, node, when in sorted(
            (d for r in reports for d in r["deliveries"]), key=lambda d: (d[3], d[2], d[0], d[1])
        ):
            got = self.delivered.get((feed, seq))
            if got is not None and node not in got:
                got[node] = when
        self.engine.events_run = sum(r["events"] for r in reports)
        stats: Counter[str] = Counter()
        for r in reports:
            self.skipped_posts += r["skipped_posts"]
            self.lookup_results += r["lookup_results"]
            self.refused.update(r["refused"])
            for key, seq in r["fork_seen"].items():
                self.fork_seen.setdefault(key, seq)
            stats.update(r["stats"])
            for i, traffic in r["traffic"].items():
                self.network.traffic[i] = traffic
            for name, count in r["network"].items():
                self.network.stats[name] = self.network.stats.get(name, 0) + count
        self.lookup_results.sort()
        self.connections = []
        for r in reports:
            self.dht_census.merge(r["census"])
            self.connections += r["connections"]
        self.nodes[0].crashed_stats = stats  # the counters of every node, summed
        self.engine.now = self.scenario.duration
        metrics = self._metrics()
        # The reliability section needs each post's live followers and the stores at every
        # fork probe, which only the workers saw: a sharded run leaves it out (docs/simulations.md).
        del metrics["reliability"]
        shards = len(reports)
        metrics["sharding"] = {
            "shards": shards,
            "lookahead_s": round(self.network.model.latency.floor_ms / 1000.0, 6),
            "windows": reports[0]["windows"],
        }
        found = [Violation(o, t, d) for r in reports for o, t, d in r["violations"]]
        violations = sorted(self.violations + found, key=lambda v: v.time)
        return Result(self.scenario, metrics, violations, self.engine.events_run, latencies=self.latencies)


@dataclass
class ShardRun:
    """What a sharded run shows beside its metrics: where the wall time went (not deterministic,
    so not in metrics.json) and who got each post (for tests)."""

    windows: int = 0
    #: Per worker, wall seconds spent in barriers (waiting for the others, and the pipes).
    barrier_wall: list[float] = field(default_factory=list)
    #: Per worker, garbage collections made while waiting at barriers (`idle_collect`).
    idle_collections: list[int] = field(default_factory=list)
    #: Per worker, CPU seconds (building its simulation, running, barriers).
    worker_cpu: list[float] = field(default_factory=list)
    #: Per worker, messages between nodes, and those that went to another shard.
    messages: list[tuple[int, int]] = field(default_factory=list)
    wall: float = 0.0
    #: (author key, seq) -> node index -> virtual time it stored the post.
    delivered: dict[tuple[bytes, int], dict[int, float]] = field(default_factory=dict)


def run_sharded(
    scenario: Scenario,
    shards: int,
    *,
    progress: Callable[[float, int], None] | None = None,
    timing: ShardRun | None = None,
) -> Result:
    """Run scenario on ``shards`` worker processes (one: the ordinary single process)."""
    from simulations.simulation import run_scenario

    sharded, lookahead = prepare(scenario, shards)
    if shards == 1:
        return run_scenario(scenario, progress=progress)
    started = time.perf_counter()
    result = _run_processes(sharded, shards, lookahead, progress, timing)
    if scenario.name == "flood" and scenario.protocol == "gossip":
        flood = _run_processes(replace(sharded, protocol="flood"), shards, lookahead, progress, None)
        result.compare["flood"] = flood.metrics
        result.violations += flood.violations
    if timing is not None:
        timing.wall = time.perf_counter() - started
    return result


def _run_processes(
    scenario: Scenario,
    shards: int,
    lookahead: float,
    progress: Callable[[float, int], None] | None,
    timing: ShardRun | None,
) -> Result:
    ctx = multiprocessing.get_context("spawn")
    peers: list[dict[int, Connection]] = [{} for _ in range(shards)]
    for a in range(shards):
        for b in range(a + 1, shards):
            peers[a][b], peers[b][a] = ctx.Pipe()
    ups = [ctx.Pipe(duplex=False) for _ in range(shards)]
    from simulations import compiled

    build = compiled.active()
    blob = pickle.dumps(scenario)  # unpickled once the worker chose its build (`simulations.shard_boot`)
    processes = [
        ctx.Process(
            target=boot,
            args=(None if build is None else str(build), blob, s, shards, lookahead, peers[s], ups[s][1]),
            name=f"p2pblog-shard-{s}",
            daemon=True,
        )
        for s in range(shards)
    ]
    for process in processes:
        process.start()
    for s in range(shards):  # the workers hold these now; closed here, a dead worker's pipes end
        ups[s][1].close()
        for conn in peers[s].values():
            conn.close()
    try:
        return _coordinate(scenario, [r for r, _ in ups], progress, timing)
    except RuntimeError as exc:
        for process in processes:
            process.join(timeout=5.0)
        codes = ", ".join(f"shard {s}: {p.exitcode}" for s, p in enumerate(processes))
        raise RuntimeError(f"{exc}\n(exit codes, negative for a signal: {codes})") from None
    finally:
        for process in processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
                process.join()


def _coordinate(
    scenario: Scenario,
    ups: list[Connection],
    progress: Callable[[float, int], None] | None,
    timing: ShardRun | None,
) -> Result:
    view = MergedView(scenario)
    shards = len(ups)
    snapshots: list[list[_Snapshot]] = [[] for _ in range(shards)]
    steps: list[list[tuple[float, int]]] = [[] for _ in range(shards)]
    finals: dict[int, dict[str, Any]] = {}
    #: Shard -> why it stopped without a report (its peers then stop on a closed pipe).
    failed: dict[int, str] = {}
    index = {id(conn): s for s, conn in enumerate(ups)}
    while len(finals) + len(failed) < shards:
        live = [c for s, c in enumerate(ups) if s not in finals and s not in failed]
        ready = wait(live, timeout=30.0 if failed else None)
        if not ready:
            break  # one failed and the others hang: report what is known
        for conn in ready:
            shard = index[id(conn)]
            try:
                message = cast(Connection, conn).recv()
            except EOFError:
                message = ("error", "died without a report")
            if message[0] == "snapshot":
                snapshots[shard].append(message[1])
            elif message[0] == "progress":
                steps[shard].append(message[1:])
            elif message[0] == "final":
                finals[shard] = message[1]
            else:
                failed[shard] = message[1]
        if failed:
            continue
        while all(snapshots):  # every worker has its next snapshot: same label, same time
            view.apply([queue.pop(0) for queue in snapshots])
        while all(steps):
            done = [queue.pop(0) for queue in steps]
            if progress is not None:
                progress(done[0][0], sum(events for _, events in done))
    if failed:
        # The first cause, not the peers that then found its pipe closed.
        causes = sorted(failed.items(), key=lambda item: ("EOFError" in item[1], item[0]))
        shard, why = causes[0]
        raise RuntimeError(f"shard {shard} of {scenario.name} (of {shards}) failed: {why}")
    reports = [finals[s] for s in range(shards)]
    if timing is not None:
        timing.windows = reports[0]["windows"]
        timing.barrier_wall = [r["barrier_wall"] for r in reports]
        timing.idle_collections = [r["idle_collections"] for r in reports]
        timing.worker_cpu = [r["cpu"] for r in reports]
        timing.messages = [(r["sent"], r["crossed"]) for r in reports]
    result = view.finish(reports)
    if timing is not None:
        timing.delivered = view.delivered
    return result


__all__ = ["DEFAULT_FLOOR_MS", "MIN_LOOKAHEAD_MS", "ShardError", "ShardRun", "prepare", "run_sharded"]
