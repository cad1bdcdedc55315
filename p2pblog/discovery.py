"""Discovery: finding, through the DHT, the peers that serve the feeds we follow, and names.

Theory of operation
-------------------
The replicator dials what it is told about; this part tells it, from DHT
lookups it starts and whose results the node routes back to it:

* **Searches.**  At each maintenance pass, each followed feed whose author
  is not connected gets a provider search (`FindProviders`) and a
  resolution of its author's peer record (`ResolvePeer`), started together:
  while the author has not announced yet (as a network forms), finding the
  author at once saves dials to other providers.  A feed is searched at once
  after `follow`; then, while no connected peer can serve it, 4, 8, 16 ...
  seconds apart up to `SEARCH_EVERY` (a walk takes about a second; the
  DHT's answer seldom changes faster); while others serve it but its author
  is not connected, from `SEARCH_EVERY` doubling up to `RESEARCH_MAX`, to
  find the author again after it moved.  `next_search` tells the node when
  the next one is due, so its maintenance pass wakes for it.
* **Results.**  Providers found become dial candidates of their feed
  (`providers_found`); a resolved peer record teaches the replicator's
  address book the peer's address, and makes a followed author a candidate
  of its own feed (`peer_found`).
* **Names.**  `find_claims` gathers every claim of a name, with the times
  the DHT nodes say they first stored each (`NameResolved`; ranked for the
  user by `p2pblog.names`).
* **Inbound peers.**  When a peer that dialled us disconnects and we do not
  know its listen address, its peer record is resolved, so the address book
  can redial it (`peer_disconnected`; not on connect: an author with many
  followers would look up every one of them).  At most once per key per
  `INBOUND_RESOLVE_EVERY` and `INBOUND_RESOLVE_RATE` a second in all
  (counted: ``discovery.inbound_resolve_skipped``): strangers that connect
  and leave from fresh keys would otherwise make the node walk the DHT for
  each of them (the simulator's `hostile` scenario found that storm).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from typing import Final

from dht import DhtCore
from dht.providers import MAX_PROVIDERS_PER_KEY
from identity.pacing import KeyedTokenBuckets, TokenBucket, backoff
from identity.records import name_key, peer_key, provider_key
from p2pblog.events import PeerResolved, ProvidersResolved
from p2pblog.queries import FindClaims, FindProviders, PendingQueries, ResolvePeer
from p2pblog.replication import Replicator

#: Seconds between provider searches for a followed feed no connected peer
#: replicates: FIRST_SEARCH_RETRY after the first, doubling up to SEARCH_EVERY.
SEARCH_EVERY: Final = 30.0
FIRST_SEARCH_RETRY: Final = 4.0
#: Longest gap between searches for a feed that other peers serve but whose
#: author we are not connected to (to find the author again after it moved).
RESEARCH_MAX: Final = 600.0
#: Doublings of SEARCH_EVERY counted at most (SEARCH_EVERY * 2**8 > RESEARCH_MAX).
_RESEARCH_ROUNDS: Final = 8
#: Resolutions of peers that dialled us and left: once per key per INBOUND_RESOLVE_EVERY
#: seconds (INBOUND_RESOLVE_KEYS keys remembered), INBOUND_RESOLVE_RATE per second in
#: all with bursts of INBOUND_RESOLVE_BURST.
INBOUND_RESOLVE_EVERY: Final = 600.0
#: Provider searches a user's replica count (the web app's Node page) may run at once, at
#: most every REPLICA_SEARCH_EVERY seconds; feeds whose latest answer is remembered.
REPLICA_SEARCHES: Final = 50
REPLICA_SEARCH_EVERY: Final = 10.0
MAX_REMEMBERED_FEEDS: Final = 1024
INBOUND_RESOLVE_KEYS: Final = 1024
INBOUND_RESOLVE_RATE: Final = 0.2
INBOUND_RESOLVE_BURST: Final = 10.0


class Discovery:
    """Provider searches and peer-record resolutions for the feeds the node replicates."""

    def __init__(
        self, own: bytes, dht: DhtCore, queries: PendingQueries, replicator: Replicator, now: float
    ) -> None:
        self.own = own
        self.dht = dht
        self.queries = queries
        self.replicator = replicator
        self._search_at: dict[bytes, float] = {}
        self._search_rounds: dict[bytes, int] = {}
        #: Client mode (`p2pblog.reachability`): also search our own feed's providers.
        self.client = False
        #: Our feed's head is not known (`p2pblog.own_head`): search its providers too, to
        #: catch up from them.
        self.catching_up = False
        #: The latest provider search's answer per feed: (when, signers), for counting
        #: replicas; and when a user may next ask for a round of searches.
        self.last_providers: dict[bytes, tuple[float, frozenset[bytes]]] = {}
        self._replica_round_at = 0.0
        self.stats: Counter[str] = Counter()
        self._inbound_per_key = KeyedTokenBuckets(1 / INBOUND_RESOLVE_EVERY, 1, INBOUND_RESOLVE_KEYS)
        self._inbound_all = TokenBucket(INBOUND_RESOLVE_RATE, INBOUND_RESOLVE_BURST, now)

    # -- queries ----------------------------------------------------------------------

    def resolve(self, public_key: bytes, now: float, *, consume: bool = False, quorum: int = 1) -> int:
        """Find and verify the peer record of public_key (ends with `PeerResolved` or not);
        ``quorum``: values to gather first (a copy we hold counts as one)."""
        qid = self.dht.start_get(peer_key(public_key), now, quorum=quorum)
        return self.queries.add(qid, ResolvePeer(public_key, consume))

    def find_providers(
        self, feed: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY, consume: bool = False
    ) -> int:
        """Find the nodes that hold feed (ends with `ProvidersResolved`)."""
        qid = self.dht.start_get_providers(provider_key(feed), now, want=want)
        return self.queries.add(qid, FindProviders(feed, consume))

    def find_claims(self, name: str, now: float) -> int:
        """Find every valid claim of name (ends with `NameResolved`)."""
        qid = self.dht.start_get_providers(name_key(name), now, want=MAX_PROVIDERS_PER_KEY, seen=True)
        return self.queries.add(qid, FindClaims(name))

    # -- the search schedule ----------------------------------------------------------

    def follow(self, feed: bytes, now: float) -> None:
        """Search for a newly followed feed at the next maintenance pass."""
        self._search_at[feed] = now
        self._search_rounds.pop(feed, None)

    def unfollow(self, feed: bytes) -> None:
        self._search_at.pop(feed, None)

    def maintain(self, wanted: Iterable[bytes], now: float) -> None:
        """Search, for each wanted feed (in order) whose author is not connected, when due."""
        replicator = self.replicator
        for feed in wanted:
            if feed == self.own and (self.client or self.catching_up) and replicator.sources(feed) == 0:
                # Client mode: find our followers (providers of our feed) to push to;
                # catching up: find those that hold our feed, to fetch it from them.
                if now >= self._search_at.get(feed, 0.0):
                    self._search_at[feed] = now + SEARCH_EVERY
                    self.find_providers(feed, now, consume=True)
                continue
            if feed == self.own or replicator.is_connected(feed):
                self._search_rounds.pop(feed, None)
                continue
            if now >= self._search_at.get(feed, 0.0):
                rounds = self._search_rounds.get(feed, 0)
                self._search_rounds[feed] = rounds + 1
                if replicator.sources(feed) == 0:
                    delay = backoff(rounds, FIRST_SEARCH_RETRY, SEARCH_EVERY)
                else:
                    delay = backoff(min(rounds, _RESEARCH_ROUNDS), SEARCH_EVERY, RESEARCH_MAX)
                self._search_at[feed] = now + delay
                self.find_providers(feed, now, consume=True)
                self.resolve(feed, now, consume=True)

    def next_search(self, wanted: Collection[bytes]) -> list[float]:
        """When the searches in progress (feeds not yet served by their author) are due."""
        rounds = self._search_rounds
        return [at for feed, at in self._search_at.items() if feed in wanted and feed in rounds]

    # -- results ----------------------------------------------------------------------

    def providers_found(self, result: ProvidersResolved, now: float) -> None:
        peers = [(r.signer, *addr) for r in result.records if (addr := r.addr("tcp")) is not None]
        self.replicator.add_candidates(result.feed, peers, now)
        relayed = [
            (r.signer, *addr)
            for r in result.records
            if r.addr("tcp") is None and (addr := r.addr("relay")) is not None
        ]
        if relayed:
            self.replicator.add_relayed_candidates(result.feed, relayed, now)

    def providers_seen(self, result: ProvidersResolved, now: float) -> None:
        """Remember who the DHT said holds a feed (any provider search, ours or a user's)."""
        self.last_providers.pop(result.feed, None)
        self.last_providers[result.feed] = (now, frozenset(r.signer for r in result.records))
        while len(self.last_providers) > MAX_REMEMBERED_FEEDS:
            del self.last_providers[next(iter(self.last_providers))]

    def replica_searches(self, now: float) -> int:
        """Feeds a user may have searched now to count replicas: `REPLICA_SEARCHES`, at
        most once per `REPLICA_SEARCH_EVERY` (a page reloaded in a loop asks no more)."""
        if now < self._replica_round_at:
            return 0
        self._replica_round_at = now + REPLICA_SEARCH_EVERY
        return REPLICA_SEARCHES

    def peer_found(self, result: PeerResolved, now: float) -> None:
        addr = result.record.addr("tcp")
        key = result.public_key
        if addr is None:
            relay = result.record.addr("relay")
            if relay is not None:
                self.replicator.book.learn_relay(key, *relay)
                if key in self.replicator.wanted:
                    self.replicator.add_relayed_candidates(key, [(key, *relay)], now)
            return
        self.replicator.learn_address(key, *addr, now)
        if key in self.replicator.wanted:
            self.replicator.add_candidates(key, [(key, *addr)], now)

    def peer_disconnected(self, peer: bytes, now: float) -> None:
        """Learn the listen address of a peer that dialled us, so it can be redialled."""
        if self.replicator.known_address(peer) is not None or self.replicator.refuses(peer, now):
            return
        if not self._inbound_per_key.take(peer, now) or not self._inbound_all.take(now):
            self.stats["discovery.inbound_resolve_skipped"] += 1
            return
        self.resolve(peer, now, consume=True)
