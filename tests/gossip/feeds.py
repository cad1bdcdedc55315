"""Test helpers for gossip: feed sources, a node's glue, and an in-memory network.

`StoreSource` is the `FeedSource` a node gives its sessions, over a real
p2pblog `Store`.  `Node` is the glue the real node will need: it ingests
`EntriesReceived` into its store, acknowledges with `entries_stored`, tells
its other sessions (`feed_updated`, `fork_found`) and reports forged input
(`report_misbehaviour`).  `Network` links nodes' sessions with in-memory,
in-order links (h11's ``ConnectionPair``, aioquic's ``client_and_server``):
frames wait in a per-direction queue until the test delivers them, so tests
choose how much to deliver and when, and time only moves when they say.
After every step it checks the bounds every session must keep.

`Network` is a pair harness for the session state machine, not a second
network for cores: it works below the transport (frames between
`GossipSession`s, no channels, addresses, dials or sockets) so that a test,
or a hypothesis state machine, can pick the interleaving frame by frame,
which a network model that delivers by time does not offer.  Cores
(`Replicator`, `NodeCore`, `DhtCore`) meet on the one in-memory network,
`simulations.testbed` (through `tests.gossip.wire` for gossip).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from gossip.messages import Entries, ForkProof, decode_message
from gossip.session import (
    EntriesReceived,
    Event,
    ForkProofReceived,
    GossipConfig,
    GossipSession,
    PeerMisbehaved,
    SessionFailed,
)
from identity import Identity
from identity.limits import MAX_BATCHES_IN_FLIGHT, MAX_FRAME_BYTES
from p2pblog.entry import POST, decode_entry, post_body
from p2pblog.errors import ChainError, EntryError
from p2pblog.store import Store


class StoreSource:
    """A `FeedSource` over a p2pblog `Store`."""

    def __init__(self, store: Store, wanted: Iterable[bytes] = ()) -> None:
        self.store = store
        self.wanted = set(wanted)

    def wanted_feeds(self) -> Collection[bytes]:
        return set(self.wanted)

    def latest_seq(self, feed: bytes) -> int:
        return self.store.latest_seq(feed)

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        return [e.raw for e in self.store.feed_range(feed, first_seq, first_seq + limit - 1)]

    def fork_proofs(self, feed: bytes) -> Sequence[tuple[int, bytes, bytes]]:
        by_seq: dict[int, list[bytes]] = {}
        for entry in self.store.fork_proofs(feed):
            by_seq.setdefault(entry.seq, []).append(entry.raw)
        return [(seq, raws[0], raws[1]) for seq, raws in sorted(by_seq.items()) if len(raws) >= 2]


class MemorySource:
    """A `FeedSource` over plain lists (no verification): for fuzzing the session."""

    def __init__(self, feeds: dict[bytes, list[bytes]] | None = None, wanted: Iterable[bytes] = ()) -> None:
        self.feeds = feeds if feeds is not None else {}
        self.wanted = set(wanted)
        self.forks: dict[bytes, list[tuple[int, bytes, bytes]]] = {}

    def wanted_feeds(self) -> Collection[bytes]:
        return set(self.wanted)

    def latest_seq(self, feed: bytes) -> int:
        return len(self.feeds.get(feed, ()))

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        return self.feeds.get(feed, [])[first_seq - 1 : first_seq - 1 + limit]

    def fork_proofs(self, feed: bytes) -> Sequence[tuple[int, bytes, bytes]]:
        return self.forks.get(feed, [])


class Node:
    """One node: a store, its own identity, and one session per peer (by peer name)."""

    def __init__(self, name: str, store: Store, identity: Identity, wanted: Iterable[bytes] = ()) -> None:
        self.name = name
        self.store = store
        self.identity = identity
        self.source = StoreSource(store, wanted)
        self.sessions: dict[str, GossipSession] = {}
        #: Every event any session reported, with the peer's name.
        self.log: list[tuple[str, Event]] = []
        #: Entries ingested as duplicates, by peer (what Plumtree pruning looks at).
        self.duplicates: Counter[str] = Counter()
        #: Prune a peer's pushes of a feed when it sends entries we already hold.
        self.prune_duplicates = False
        self._timestamp = 1_700_000_000_000

    @property
    def feed(self) -> bytes:
        return self.identity.public_key

    def post(self, count: int, now: float) -> None:
        for _ in range(count):
            self._timestamp += 1
            self.store.append(
                self.identity, POST, post_body(f"{self.name} {self._timestamp}"), self._timestamp
            )
        for session in self.sessions.values():
            session.feed_updated(self.feed, now)

    def process(self, peer: str, now: float) -> bool:
        """Handle the events of the session with peer; True if there were any."""
        session = self.sessions[peer]
        any_events = False
        while (event := session.next_event()) is not None:
            any_events = True
            self.log.append((peer, event))
            if isinstance(event, EntriesReceived):
                self._ingest(peer, session, event, now)
            elif isinstance(event, ForkProofReceived):
                self._fork_proof(peer, session, event, now)
        return any_events

    def _ingest(self, peer: str, session: GossipSession, event: EntriesReceived, now: float) -> None:
        # The header claims (feed, first_seq); check every entry against it
        # before storing, then store the valid prefix.
        valid = 0
        for i, raw in enumerate(event.entries):
            try:
                entry = decode_entry(raw, check_signature=False)
            except EntryError:
                break
            if entry.author != event.feed or entry.seq != event.first_seq + i:
                break
            valid += 1
        report = self.store.ingest_many(event.entries[:valid])
        if valid < len(event.entries):
            session.report_misbehaviour("entries do not match their header", now)
        elif report.error is not None and not isinstance(report.error, ChainError):
            # Forged or malformed: the peer's fault.  A ChainError is not (an
            # honest peer can relay the other branch of a fork).
            session.report_misbehaviour("forged entry", now)
        session.entries_stored(event.feed, now)
        self.duplicates[peer] += report.duplicates
        if report.duplicates and self.prune_duplicates and event.feed in self.source.wanted:
            session.request_push(event.feed, False, now)
        if report.accepted:
            for other in self.sessions.values():
                other.feed_updated(event.feed, now)
        for feed, _ in report.fork_seqs:
            for other in self.sessions.values():
                other.fork_found(feed, now)

    def _fork_proof(self, peer: str, session: GossipSession, event: ForkProofReceived, now: float) -> None:
        try:
            first, second = decode_entry(event.first), decode_entry(event.second)
        except EntryError:
            session.report_misbehaviour("invalid fork proof", now)
            return
        if {first.author, second.author} != {event.feed} or {first.seq, second.seq} != {event.seq}:
            session.report_misbehaviour("invalid fork proof", now)
            return
        if first.id == second.id:
            session.report_misbehaviour("invalid fork proof", now)
            return
        for entry in (first, second):
            with contextlib.suppress(EntryError):  # e.g. we do not hold the feed up to that seq yet
                self.store.ingest(entry.raw)
        if self.store.feed_state(event.feed).forked_seq is not None:
            for other in self.sessions.values():
                other.fork_found(event.feed, now)

    def misbehaviour(self) -> list[tuple[str, Event]]:
        return [(p, e) for p, e in self.log if isinstance(e, PeerMisbehaved | SessionFailed)]


@dataclass
class Direction:
    """Frames from one node to another, in order, and what crossed so far."""

    src: Node
    dst: Node
    queue: deque[bytes] = field(default_factory=deque)
    frames: int = 0
    entries: int = 0
    entries_frames: int = 0
    fork_proofs: int = 0
    max_frame: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    #: Every (feed, seq) that crossed in an ENTRIES frame, with repeats.
    seqs: Counter[tuple[bytes, int]] = field(default_factory=Counter)


class Network:
    """Nodes linked by in-memory connections; the test drives delivery and time."""

    def __init__(self, config: GossipConfig | None = None) -> None:
        self.config = config if config is not None else GossipConfig()
        self.nodes: dict[str, Node] = {}
        self.directions: dict[tuple[str, str], Direction] = {}
        self.now = 0.0
        self.max_in_flight = 0
        self.max_unacknowledged = 0

    def add(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def link(self, a: str, b: str, *, eager_a: bool = True, eager_b: bool = True) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        na.sessions[b] = GossipSession(na.source, eager=eager_a, config=self.config, now=self.now)
        nb.sessions[a] = GossipSession(nb.source, eager=eager_b, config=self.config, now=self.now)
        self.directions[a, b] = Direction(na, nb)
        self.directions[b, a] = Direction(nb, na)
        na.sessions[b].connection_made(self.now)
        nb.sessions[a].connection_made(self.now)
        self.collect()

    def unlink(self, a: str, b: str) -> None:
        self.nodes[a].sessions.pop(b).connection_lost(self.now)
        self.nodes[b].sessions.pop(a).connection_lost(self.now)
        del self.directions[a, b], self.directions[b, a]

    def session(self, a: str, b: str) -> GossipSession:
        """a's session with b."""
        return self.nodes[a].sessions[b]

    def collect(self) -> None:
        """Process every pending event, then move every frame onto its link."""
        busy = True
        while busy:
            busy = False
            for node in self.nodes.values():
                for peer in list(node.sessions):
                    busy |= node.process(peer, self.now)
        for (a, b), direction in self.directions.items():
            for frame in self.nodes[a].sessions[b].frames_to_send():
                self._record(direction, frame)
                direction.queue.append(frame)
        self.check_bounds()

    def _record(self, direction: Direction, frame: bytes) -> None:
        assert len(frame) <= MAX_FRAME_BYTES
        direction.frames += 1
        direction.max_frame = max(direction.max_frame, len(frame))
        message = decode_message(frame)
        direction.kinds[type(message).__name__] += 1
        if isinstance(message, Entries):
            direction.entries_frames += 1
            direction.entries += len(message.entries)
            for i in range(len(message.entries)):
                direction.seqs[message.feed, message.first_seq + i] += 1
        elif isinstance(message, ForkProof):
            direction.fork_proofs += 1

    def check_bounds(self) -> None:
        for node in self.nodes.values():
            for session in node.sessions.values():
                cfg = session.config
                assert session.batches_in_flight <= cfg.window
                assert session.batches_unacknowledged <= MAX_BATCHES_IN_FLIGHT
                assert session.queued_fork_proofs <= cfg.max_queued_fork_proofs
                self.max_in_flight = max(self.max_in_flight, session.batches_in_flight)
                self.max_unacknowledged = max(self.max_unacknowledged, session.batches_unacknowledged)

    def deliver(self, src: str, dst: str, count: int | None = None) -> int:
        """Deliver up to count frames (all if None) from src to dst; how many were delivered."""
        direction = self.directions[src, dst]
        done = 0
        while direction.queue and (count is None or done < count):
            frame = direction.queue.popleft()
            self.nodes[dst].sessions[src].frame_received(frame, self.now)
            self.collect()
            done += 1
        return done

    def pending(self) -> bool:
        return any(d.queue for d in self.directions.values())

    def next_timer(self) -> float | None:
        timers = [
            t
            for node in self.nodes.values()
            for session in node.sessions.values()
            if (t := session.get_timer()) is not None
        ]
        return min(timers) if timers else None

    def advance(self, now: float) -> None:
        """Move time to now and run every timer that is due."""
        self.now = max(self.now, now)
        for node in self.nodes.values():
            for session in node.sessions.values():
                timer = session.get_timer()
                if timer is not None and timer <= self.now:
                    session.handle_timer(self.now)
        self.collect()

    def run(self, *, until: float | None = None, max_rounds: int = 100_000) -> None:
        """Deliver everything, firing timers as time passes, until nothing is left to do."""
        self.collect()
        for _ in range(max_rounds):
            if self.pending():
                for src, dst in list(self.directions):
                    if (src, dst) in self.directions:
                        self.deliver(src, dst)
                continue
            timer = self.next_timer()
            if timer is None or (until is not None and timer > until):
                return
            self.advance(timer)
        raise AssertionError("the network did not settle")

    def entries_sent(self) -> int:
        return sum(d.entries for d in self.directions.values())

    def duplicate_entries(self) -> int:
        """Entries that reached a node more than once, or that it already held."""
        return sum(sum(n.duplicates.values()) for n in self.nodes.values())


def store_with(path: str, *chains: Iterable[bytes]) -> Store:
    """A store at path (":memory:" or a file) holding the given signed entries."""
    store = Store(path)
    for chain in chains:
        report = store.ingest_many(chain)
        assert report.error is None, report.error
    return store
