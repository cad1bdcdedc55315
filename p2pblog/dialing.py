"""Who the node dials: the address book and the dial policy, apart from the connections.

Theory of operation
-------------------
`AddressBook` is what the node knows of each peer: where it listens, when we
last had a session with it (saved in the store, so a restarted node
reconnects without a lookup), how often dialling it failed in a row, and
until when it is not to be dialled:

* a failed dial or a lost connection backs off exponentially (`FIRST_BACKOFF`
  doubling to `MAX_BACKOFF`, times a jitter of 0.5..1 drawn from the node's
  injected RNG, so peers that lost each other do not redial in lockstep);
  the count resets only when the peer's first frame arrives (a peer that
  accepts and hangs up at once is still backed off);
* whether a peer is banned is not the book's business but the score
  table's (`p2pblog.scoring`): the replicator skips banned keys.

The book is bounded (`MAX_BOOK` peers): when it is full, the eighth of it
connected least recently (peers never connected first, oldest first) is
forgotten in one pass, so a flood of provider records or inbound strangers
cannot grow it, and the peers we had sessions with stay.

`DialPolicy` decides whom to dial at a maintenance pass, in this order, and
the replicator dials them while it has outbound slots (`MAX_OUTBOUND`):

1. the most recent `BOOK_DIALS` peers of the book (our followers and
   sources before a restart);
2. peers we must reach for another reason (`want`: a mention notice);
3. for each followed feed, its author (the root of its push tree), and, if
   no connected peer can serve the feed, up to `DIALS_PER_FEED` of its
   providers found in the DHT (`add_candidates`, at most `MAX_CANDIDATES`
   remembered per feed, newest kept; only for feeds we still follow), best
   standing (`p2pblog.scoring.PeerScores.standing`) first.

The policy only names peers; the replicator skips those connected, being
dialled, backed off or without an address.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from random import Random
from typing import Final

from identity.pacing import backoff
from p2pblog.store import Store

#: Address-book peers we keep dialling (most recently connected first).
BOOK_DIALS: Final = 8
#: Providers dialled per wanted feed that no connected peer replicates.
DIALS_PER_FEED: Final = 3
#: Candidate providers remembered per feed.
MAX_CANDIDATES: Final = 20
#: Peers loaded from the address book at start.
BOOK_LOAD: Final = 64
#: Reconnection backoff: first delay and ceiling, in seconds.
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 60.0
#: Failures counted at most (the delay stops growing long before).
MAX_FAILURES: Final = 16
#: Peers the address book holds at most.
MAX_BOOK: Final = 1024


@dataclass(slots=True)
class Peer:
    """What the address book knows of a peer."""

    host: str | None = None
    port: int | None = None
    last_connected: float = 0.0
    failures: int = 0
    next_try: float = 0.0
    #: A relay that reaches the peer (from its records), when it has no address of its own.
    relay: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        if self.host is None or self.port is None:
            return None
        return self.host, self.port


class AddressBook:
    """Every peer's listen address, session history and backoff."""

    def __init__(self, store: Store, own: bytes, rng: Random, *, max_peers: int = MAX_BOOK) -> None:
        self.store = store
        self.rng = rng
        self.max_peers = max_peers
        self.peers: dict[bytes, Peer] = {}
        for key, host, port, when in store.load_peers(min(BOOK_LOAD, max_peers)):
            if key != own:
                self.peers[key] = Peer(host, port, when)

    def get(self, peer: bytes) -> Peer | None:
        return self.peers.get(peer)

    def entry(self, peer: bytes) -> Peer:
        """The peer's entry, made empty if it has none."""
        entry = self.peers.get(peer)
        if entry is None:
            if len(self.peers) >= self.max_peers:
                self._shrink()
            entry = self.peers[peer] = Peer()
        return entry

    def __len__(self) -> int:
        return len(self.peers)

    def address(self, peer: bytes) -> tuple[str, int] | None:
        entry = self.peers.get(peer)
        return None if entry is None else entry.address

    def learn(self, peer: bytes, host: str, port: int) -> Peer:
        entry = self.entry(peer)
        entry.host, entry.port = host, port
        entry.relay = None
        return entry

    def learn_relay(self, peer: bytes, host: str, port: int) -> Peer:
        """The peer cannot be dialled (its records say so now), but the relay at host:port
        reaches it: its old address is forgotten, and its backoff starts again."""
        entry = self.entry(peer)
        if entry.relay != (host, port):
            entry.failures, entry.next_try = 0, 0.0
        entry.relay = (host, port)
        entry.host = entry.port = None
        return entry

    def connected(self, peer: bytes, now: float) -> None:
        """A session with peer opened (or its address was learned while connected): save it."""
        entry = self.entry(peer)
        if entry.host is not None and entry.port is not None:
            entry.last_connected = now
            self.store.save_peer(peer, entry.host, entry.port, now)

    def set_aside(self, peer: bytes, until: float) -> None:
        """Do not dial peer before ``until`` (a connection we closed because it served us nothing)."""
        entry = self.entry(peer)
        entry.next_try = max(entry.next_try, until)

    def back_off(self, peer: bytes, now: float) -> float:
        """Count a failure of peer; returns when it may be dialled again."""
        entry = self.entry(peer)
        delay = backoff(entry.failures, FIRST_BACKOFF, MAX_BACKOFF)
        entry.failures = min(entry.failures + 1, MAX_FAILURES)
        entry.next_try = now + delay * (0.5 + 0.5 * self.rng.random())
        return entry.next_try

    def recent(self, count: int) -> list[bytes]:
        """The ``count`` peers we had a session with most recently."""
        # Runs every maintenance pass: the most recent few without sorting the book.
        best = heapq.nlargest(
            count,
            (p for p in self.peers.items() if p[1].last_connected > 0),
            key=lambda item: item[1].last_connected,
        )
        return [key for key, _ in best]

    def _shrink(self) -> None:
        """Forget the eighth of the book connected least recently (never connected: oldest first)."""
        order = sorted(enumerate(self.peers.items()), key=lambda item: (item[1][1].last_connected, item[0]))
        for _, (key, _) in order[: max(1, self.max_peers // 8)]:
            del self.peers[key]


class DialPolicy:
    """Whom to dial at a maintenance pass (see the module docstring)."""

    def __init__(self, own: bytes, book: AddressBook) -> None:
        self.own = own
        self.book = book
        #: Providers found in the DHT, per feed (newest last).
        self.candidates: dict[bytes, dict[bytes, None]] = {}
        #: Peers to keep dialling until released (mention notices to deliver).
        self.wanted_peers: dict[bytes, None] = {}
        #: Client mode (`p2pblog.reachability`): dial providers (followers) of our own feed.
        self.client = False
        #: Catching up with our own feed (`p2pblog.own_head`): dial its providers too.
        self.catching_up = False

    def add_candidates(self, feed: bytes, peers: Iterable[tuple[bytes, str, int]]) -> None:
        """Providers of feed: ``(public key, tcp host, tcp port)``; their addresses go in the book."""
        known = self.candidates.setdefault(feed, {})
        for key, host, port in peers:
            if key == self.own:
                continue
            self.book.learn(key, host, port)
            known[key] = None
            while len(known) > MAX_CANDIDATES:
                del known[next(iter(known))]

    def add_relayed_candidates(self, feed: bytes, peers: Iterable[tuple[bytes, str, int]]) -> None:
        """Providers of feed reached through a relay: ``(public key, relay host, relay port)``."""
        known = self.candidates.setdefault(feed, {})
        for key, host, port in peers:
            if key == self.own:
                continue
            self.book.learn_relay(key, host, port)
            known[key] = None
            while len(known) > MAX_CANDIDATES:
                del known[next(iter(known))]

    def drop(self, peer: bytes) -> None:
        """peer is no provider of any feed we follow (a session showed it holds none of them):
        forget it as a candidate of every feed, until a new search names it again."""
        for known in self.candidates.values():
            known.pop(peer, None)

    def want(self, peer: bytes) -> None:
        self.wanted_peers[peer] = None

    def release(self, peer: bytes) -> None:
        self.wanted_peers.pop(peer, None)

    def targets(
        self,
        feeds: Collection[bytes],
        served: Callable[[bytes], bool],
        standing: Callable[[bytes], float] | None = None,
    ) -> dict[bytes, None]:
        """The peers to dial, in order of preference (``served(feed)``: a connected peer can
        serve it; ``standing(key)``: its score, best first among a feed's providers)."""
        for feed in [f for f in self.candidates if f not in feeds]:
            del self.candidates[feed]  # unfollowed: its providers are no longer wanted
        targets: dict[bytes, None] = dict.fromkeys(self.book.recent(BOOK_DIALS))
        for key in self.wanted_peers:
            targets[key] = None
        targets.update(self._for_feeds(feeds, served, standing, unserved_only=False))
        return targets

    def needed(
        self,
        feeds: Collection[bytes],
        served: Callable[[bytes], bool],
        standing: Callable[[bytes], float] | None = None,
    ) -> dict[bytes, None]:
        """The targets that can give us a feed no connected peer serves: its author and its
        best providers (what a full set of outbound slots makes room for)."""
        return self._for_feeds(feeds, served, standing, unserved_only=True)

    def _for_feeds(
        self,
        feeds: Collection[bytes],
        served: Callable[[bytes], bool],
        standing: Callable[[bytes], float] | None,
        *,
        unserved_only: bool,
    ) -> dict[bytes, None]:
        targets: dict[bytes, None] = {}
        for feed in sorted(feeds):
            if feed == self.own:
                if (self.client or self.catching_up) and not served(feed):
                    # Nobody can dial us: reach a few of our followers ourselves, so that
                    # our posts leave (they pass them on to the others).
                    for key in list(self.candidates.get(feed, {}))[:DIALS_PER_FEED]:
                        targets[key] = None
                continue
            if served(feed):
                if not unserved_only:
                    # The author is the root of its feed's push tree: keep a connection to it.
                    targets[feed] = None
                continue
            targets[feed] = None
            providers = list(self.candidates.get(feed, {}))
            if standing is not None:
                providers.sort(key=lambda key: -standing(key))  # stable: else in the order found
            for key in providers[:DIALS_PER_FEED]:
                targets[key] = None
        return targets
