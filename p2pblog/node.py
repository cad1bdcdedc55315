"""NodeCore: the sans-IO p2pblog node that composes the DHT, gossip and the store.

Theory of operation
-------------------
`NodeCore` owns a `dht.DhtCore` and adds what p2pblog means by its values:

* **Record rules.**  A DHT value that begins like a p2pblog record (a
  64-byte signature, then a 6-element msgpack array of version 1) must *be*
  a valid one: signed by its signer, unexpired, and filed under its own key
  (`identity.records`).  Anything else is an opaque value, accepted as the
  ``kademlia`` package would, so real ``kademlia`` peers can use our nodes.
  Among values for one key, valid records beat opaque values and the highest
  ``seq`` wins; opaque values keep ``kademlia``'s last-write-wins.
* **Own peer record.**  `publish(addrs, now)` signs "this key is reachable
  here" with ``seq`` = milliseconds of ``now`` (so a restarted node's record
  supersedes the old one) and stores it at the k nodes closest to
  ``peer_key(own key)``; it is re-signed and republished every
  `PEER_REPUBLISH` seconds, well inside its `PEER_TTL`.
* **Resolution.**  `start_resolve(public_key, now)` runs a FIND_VALUE for the
  peer record and reports `PeerResolved` (verified record) or
  `PeerNotResolved`.
* **Providers.**  A key in the DHT's provider store holds one value per
  provider (`dht.providers`).  `validate_provider` is its validator: a value
  must be a valid, unexpired *provider* record filed under
  ``provider_key(record.feed)``, and the provider it speaks for is the
  record's signer (so one key has one entry per feed, highest seq winning).
  `announce(feed, addrs, now)` signs "this node holds feed F, reachable
  here" and adds it at the k nodes closest to ``provider_key(F)``
  (`ProviderAnnounced`); like the peer record it is re-signed and re-announced
  every `PROVIDER_REPUBLISH` seconds, inside its `PROVIDER_TTL`, until
  `withdraw(feed)`.  `start_find_providers(feed, now)` gathers the providers
  of a feed and reports `ProvidersResolved` with the verified records
  (possibly none, possibly our own).

* **Replication** (`p2pblog.replication.Replicator`, owned here as
  ``replicator``): the gossip connections.  NodeCore feeds it from the DHT:
  every `MAINTAIN_EVERY` seconds, each followed feed whose author is not
  connected gets a provider search and a resolution of its author's peer
  record (at once after `follow`; then, while no connected peer can serve
  the feed, 1, 2, 4, ... seconds apart up to `SEARCH_EVERY`; while others
  serve it, from `SEARCH_EVERY` doubling up to `RESEARCH_MAX`), whose
  results become dial candidates; a peer that
  connected to us and whose listen address we do not know is resolved
  through its peer record.  NodeCore announces itself as a provider of its
  own feed and of every followed feed it holds entries of, once it has an
  address to announce (`publish`) and DHT contacts to announce to.
* **Commands** `post`, `follow`, `unfollow` write signed entries to the own
  feed and tell the replicator (live push; start or stop replicating).

Like the DHT core it never reads a clock: ``now`` is Unix seconds (the
runtime supplies a monotonic clock anchored to Unix time, because records
carry absolute expiry times).  Outputs are pulled with the same methods as
`DhtCore`'s (`datagrams_to_send`, `next_event`, `get_timer`) plus the
replicator's connection outputs (`dials_to_make`, `data_to_send`,
`connections_to_close`), and connection inputs are passed through to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from random import Random
from typing import Final

from dht import DhtConfig, DhtCore, ProvidersFound, ValueFound, node_id_from_public_key
from dht.events import Event as DhtEvent
from dht.ids import Address
from dht.providers import MAX_PROVIDERS_PER_KEY
from dht.records import accept_any
from dht.wire import Value
from gossip.noise import RandomBytes
from gossip.transport import ChannelConfig
from identity import Identity
from identity.records import (
    PEER,
    PROVIDER,
    Record,
    RecordError,
    create_record,
    decode_record,
    peer_key,
    provider_key,
)
from p2pblog.entry import FOLLOW, POST, UNFOLLOW, Entry, post_body
from p2pblog.replication import EntriesStored, PeerConnected, Replicator
from p2pblog.replication import Event as GossipEvent
from p2pblog.store import Store

#: Seconds a peer record is valid after signing, and between re-signings.
PEER_TTL: Final = 2 * 3600
PEER_REPUBLISH: Final = 30 * 60
#: Seconds a provider record is valid after signing, and between re-signings.
#: Longer than a peer record's: a node announces every feed it holds, and a
#: stale provider costs a finder one failed dial, not a wrong identity.
PROVIDER_TTL: Final = 6 * 3600
PROVIDER_REPUBLISH: Final = 2 * 3600
#: Least seconds between two publishes of the peer record because the routing table grew.
REPUBLISH_GROWN_AFTER: Final = 30.0
#: Seconds between provider searches for a followed feed no connected peer replicates.
SEARCH_EVERY: Final = 30.0
#: Longest gap between searches for a feed that other peers serve but whose
#: author we are not connected to (to find the author again after it moved).
RESEARCH_MAX: Final = 600.0
#: Longest gap between NodeCore's maintenance passes (announces, searches); a
#: pass also runs when a search is due and after new entries arrive.
MAINTAIN_EVERY: Final = 10.0
#: Seconds between maintenance passes while the DHT routing table is empty.
FIRST_CONTACT_POLL: Final = 1.0
#: Seconds before retrying an announce that reached no node.
ANNOUNCE_RETRY: Final = 15.0


@dataclass(frozen=True, slots=True)
class PeerResolved:
    """A key's peer record was found and verified."""

    query_id: int
    public_key: bytes
    record: Record
    #: Sequential DHT RPCs that reached the record (0: held locally).
    hops: int = 0


@dataclass(frozen=True, slots=True)
class PeerNotResolved:
    """No valid peer record for the key was found."""

    query_id: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class RecordPublished:
    """Our own peer record was stored at ``stored_at`` of the closest nodes."""

    query_id: int
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class ProviderAnnounced:
    """Our provider record for ``feed`` was added at ``stored_at`` of the closest nodes."""

    query_id: int
    feed: bytes
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class ProvidersResolved:
    """The verified provider records found for ``feed`` (one per provider; may be empty)."""

    query_id: int
    feed: bytes
    records: tuple[Record, ...]


Event = (
    DhtEvent
    | PeerResolved
    | PeerNotResolved
    | RecordPublished
    | ProviderAnnounced
    | ProvidersResolved
    | GossipEvent
)


def _looks_like_record(value: Value) -> bool:
    # signature (64) || fixarray-6 (0x96) || version 1 (0x01)
    return isinstance(value, bytes) and len(value) > 66 and value[64] == 0x96 and value[65] == 0x01


def validate_value(key: bytes, value: Value, now: float) -> bool:
    """The DHT validator: p2pblog records must verify; other values as ``kademlia`` allows."""
    if _looks_like_record(value):
        assert isinstance(value, bytes)
        try:
            decode_record(value, now=now, key=key)
        except RecordError:
            return False
        return True
    return accept_any(key, value, now)


def validate_provider(key: bytes, value: bytes, now: float) -> bytes | None:
    """The DHT provider validator: a valid provider record under its own key -> its signer."""
    if not _looks_like_record(value):
        return None
    try:
        record = decode_record(value, now=now, key=key)
    except RecordError:
        return None
    return record.signer if record.type == PROVIDER else None


def select_value(key: bytes, values: Sequence[Value]) -> int:
    """The DHT selector: the valid record with the highest seq, else the newest value.

    The DHT core hands the selector only values `validate_value` accepted
    (stores, held values and lookup answers alike), so signatures are not
    checked a second time here.
    """
    del key
    best: tuple[int, bytes] | None = None
    best_index = len(values) - 1
    for index, value in enumerate(values):
        if not _looks_like_record(value):
            continue
        assert isinstance(value, bytes)
        try:
            record = decode_record(value, now=None, check_signature=False)
        except RecordError:
            continue
        rank = (record.seq, record.raw)
        if best is None or rank > best:
            best, best_index = rank, index
    return best_index


class NodeCore:
    """A p2pblog node, sans IO.  Drive it exactly like `dht.DhtCore`."""

    def __init__(
        self,
        identity: Identity,
        rng: Random,
        now: float,
        *,
        dht_config: DhtConfig | None = None,
        store: Store | None = None,
        channel_config: ChannelConfig | None = None,
        random_bytes: RandomBytes | None = None,
    ) -> None:
        self.identity = identity
        self.store = store if store is not None else Store(":memory:")
        self.replicator = Replicator(
            identity, self.store, rng, now, channel_config=channel_config, random_bytes=random_bytes
        )
        self.dht = DhtCore(
            node_id_from_public_key(identity.public_key),
            rng,
            now,
            config=dht_config,
            validator=validate_value,
            selector=select_value,
            provider_validator=validate_provider,
        )
        self.peer_record: Record | None = None
        #: Our current provider record per feed we announce.
        self.provider_records: dict[bytes, Record] = {}
        self._provided: dict[bytes, tuple[tuple[str, str, int], ...]] = {}
        self._announce_at: dict[bytes, float] = {}
        self._announces: dict[int, tuple[bytes, int]] = {}
        self._finds: dict[int, bytes] = {}
        self._addrs: tuple[tuple[str, str, int], ...] = ()
        self._republish_at: float | None = None
        #: Routing-table size when the peer record was last published (see `_maintain`).
        self._published_table = 0
        self._published_at = 0.0
        self._resolves: dict[int, bytes] = {}
        self._publishes: dict[int, int] = {}
        self._events: deque[Event] = deque()
        #: Query ids whose results NodeCore consumes itself (they are still reported).
        self._internal: set[int] = set()
        self._search_at: dict[bytes, float] = {}
        self._search_rounds: dict[bytes, int] = {}
        self._maintain_at = now

    # -- outputs (DhtCore's contract) ---------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return self.dht.datagrams_to_send()

    def dials_to_make(self) -> list[tuple[int, str, int]]:
        return self.replicator.dials_to_make()

    def data_to_send(self) -> list[tuple[int, bytes]]:
        return self.replicator.data_to_send()

    def connections_to_close(self) -> list[int]:
        return self.replicator.connections_to_close()

    def get_timer(self) -> float | None:
        announce_at = min(self._announce_at.values(), default=None)
        timers = [
            t
            for t in (
                self.dht.get_timer(),
                self._republish_at,
                announce_at,
                self.replicator.get_timer(),
                self._maintain_at,
            )
            if t is not None
        ]
        return min(timers) if timers else None

    def next_event(self) -> Event | None:
        self._drain(None)
        return self._events.popleft() if self._events else None

    def _drain(self, now: float | None) -> None:
        """Translate DHT events and act on those NodeCore consumes itself.

        Called after every input, so that what they cause (a dial, an
        announce) is among the outputs the driver collects next.
        """
        while (event := self.dht.next_event()) is not None:
            self._translate(event)
        while (gossip := self.replicator.next_event()) is not None:
            self._events.append(gossip)
            if isinstance(gossip, PeerConnected) and now is not None:
                if self.replicator.known_address(gossip.peer) is None:
                    self._internal.add(self.start_resolve(gossip.peer, now))
            elif isinstance(gossip, EntriesStored) and now is not None:
                self._maintain_at = min(self._maintain_at, now)  # announce a newly held feed soon
        if now is None:
            return
        for item in self._events:
            qid = getattr(item, "query_id", None)
            if qid is None or qid not in self._internal:
                continue
            self._internal.discard(qid)
            if isinstance(item, ProvidersResolved):
                peers = [(r.signer, *addr) for r in item.records if (addr := r.addr("tcp")) is not None]
                self.replicator.add_candidates(item.feed, peers, now)
            elif isinstance(item, PeerResolved):
                addr = item.record.addr("tcp")
                if addr is not None:
                    self.replicator.learn_address(item.public_key, *addr, now)
                    if item.public_key in self.replicator.wanted:
                        self.replicator.add_candidates(item.public_key, [(item.public_key, *addr)], now)
            elif isinstance(item, ProviderAnnounced) and not item.stored_at and item.feed in self._provided:
                self._announce_at[item.feed] = now + ANNOUNCE_RETRY

    def _translate(self, event: DhtEvent) -> None:
        qid = getattr(event, "query_id", None)
        if qid is not None and qid in self._resolves:
            key = self._resolves.pop(qid)
            if isinstance(event, ValueFound) and isinstance(event.value, bytes):
                try:
                    record = decode_record(event.value, now=None, key=peer_key(key))
                except RecordError:
                    record = None
                if record is not None and record.type == PEER and record.signer == key:
                    self._events.append(PeerResolved(qid, key, record, event.hops))
                    return
            self._events.append(PeerNotResolved(qid, key))
            return
        if qid is not None and qid in self._publishes:
            seq = self._publishes.pop(qid)
            stored = len(getattr(event, "stored_at", ()))
            self._events.append(RecordPublished(qid, seq, stored))
            return
        if qid is not None and qid in self._announces:
            feed, seq = self._announces.pop(qid)
            stored = len(getattr(event, "stored_at", ()))
            self._events.append(ProviderAnnounced(qid, feed, seq, stored))
            return
        if qid is not None and qid in self._finds:
            feed = self._finds.pop(qid)
            values = event.values if isinstance(event, ProvidersFound) else ()
            self._events.append(ProvidersResolved(qid, feed, self._verified_providers(feed, values)))
            return
        self._events.append(event)

    @staticmethod
    def _verified_providers(feed: bytes, values: Sequence[bytes]) -> tuple[Record, ...]:
        # The DHT validated each value on arrival; check again that each is a
        # provider record of this very feed, one per signer.
        key = provider_key(feed)
        records: dict[bytes, Record] = {}
        for value in values:
            try:
                record = decode_record(value, now=None, key=key)
            except RecordError:
                continue
            if record.type == PROVIDER and record.feed == feed and record.signer not in records:
                records[record.signer] = record
        return tuple(records.values())

    # -- inputs ---------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.dht.receive_datagram(data, addr, now)
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        self.dht.handle_timer(now)
        if self._republish_at is not None and now >= self._republish_at:
            self._publish(now)
        for feed, at in list(self._announce_at.items()):
            if now >= at:
                self._announce(feed, self._provided[feed], now)
        self.replicator.handle_timer(now)
        if now >= self._maintain_at:
            self._maintain_at = now + MAINTAIN_EVERY
            self._maintain(now)
            wanted = self.replicator.wanted
            due = [
                at for feed, at in self._search_at.items() if feed in wanted and feed in self._search_rounds
            ]
            self._maintain_at = min([self._maintain_at, *due])
        self._drain(now)

    # -- gossip connections (passed through to the replicator) ----------------------

    def connection_accepted(self, addr: Address, now: float) -> int:
        conn_id = self.replicator.connection_accepted(addr, now)
        self._drain(now)
        return conn_id

    def connection_opened(self, conn_id: int, now: float) -> None:
        self.replicator.connection_opened(conn_id, now)
        self._drain(now)

    def connection_failed(self, conn_id: int, now: float) -> None:
        self.replicator.connection_failed(conn_id, now)
        self._drain(now)

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        self.replicator.data_received(conn_id, data, now)
        self._drain(now)

    def connection_lost(self, conn_id: int, now: float) -> None:
        self.replicator.connection_lost(conn_id, now)
        self._drain(now)

    def _maintain(self, now: float) -> None:
        """Announce the feeds we hold; search providers for followed feeds nobody serves us."""
        if len(self.dht.table) == 0:
            self._maintain_at = min(self._maintain_at, now + FIRST_CONTACT_POLL)
            return
        # A record published while the network (as we see it) was much smaller
        # sits at nodes that are no longer the k closest to its key (welcome
        # stores, paper 2.5, re-home only some of it): publish again.
        if (
            self.peer_record is not None
            and len(self.dht.table) >= 2 * max(1, self._published_table)
            and now >= self._published_at + REPUBLISH_GROWN_AFTER
        ):
            self._publish(now)
        own = self.identity.public_key
        if self._addrs and any(proto == "tcp" for proto, _, _ in self._addrs):
            for feed in sorted(self.replicator.wanted):
                if feed not in self._provided and (feed == own or self.store.latest_seq(feed) > 0):
                    self._internal.add(self._announce(feed, self._addrs, now))
        for feed in sorted(self.replicator.wanted):
            if feed == own or self.replicator.is_connected(feed):
                self._search_rounds.pop(feed, None)
                continue
            if now >= self._search_at.get(feed, 0.0):
                # While nobody serves the feed: 1, 2, 4, ... seconds apart, up to
                # SEARCH_EVERY.  While others serve it but its author is not
                # connected: from SEARCH_EVERY doubling to RESEARCH_MAX.
                rounds = self._search_rounds.get(feed, 0)
                self._search_rounds[feed] = rounds + 1
                if self.replicator.sources(feed) == 0:
                    delay = min(SEARCH_EVERY, 2.0**rounds)
                else:
                    delay = min(RESEARCH_MAX, SEARCH_EVERY * 2.0 ** min(rounds, 8))
                self._search_at[feed] = now + delay
                self._internal.add(self.start_find_providers(feed, now))
                # The author itself serves its feed: its peer record names its address.
                self._internal.add(self.start_resolve(feed, now))

    # -- commands: the own feed -----------------------------------------------------

    def following(self) -> set[bytes]:
        return self.store.following(self.identity.public_key)

    def post(self, text: str, now: float, *, reply_to: bytes | None = None) -> Entry:
        """Append a post to the own feed and push it to connected peers.

        Raises `p2pblog.errors.EntryError` for a post the protocol refuses (too long, ...).
        """
        entry = self.store.append(self.identity, POST, post_body(text, reply_to), int(now * 1000))
        self.replicator.feed_appended(entry.author, now)
        self._drain(now)
        return entry

    def follow(self, feed: bytes, now: float) -> Entry | None:
        """Record a follow entry (None if already following) and start replicating feed."""
        if feed == self.identity.public_key:
            raise ValueError("a feed cannot follow itself")
        if feed in self.following():
            return None
        entry = self.store.append(self.identity, FOLLOW, {"feed": feed}, int(now * 1000))
        self._search_at[feed] = now
        self._search_rounds.pop(feed, None)
        self._maintain_at = now
        self.replicator.set_wanted(self.following(), now)
        self.replicator.feed_appended(entry.author, now)
        self._drain(now)
        return entry

    def unfollow(self, feed: bytes, now: float) -> Entry | None:
        """Record an unfollow entry (None if not following) and stop replicating feed."""
        if feed not in self.following():
            return None
        entry = self.store.append(self.identity, UNFOLLOW, {"feed": feed}, int(now * 1000))
        self._search_at.pop(feed, None)
        if feed in self._provided:
            self.withdraw(feed)
        self.replicator.set_wanted(self.following(), now)
        self.replicator.feed_appended(entry.author, now)
        self._drain(now)
        return entry

    # -- commands -------------------------------------------------------------------

    def bootstrap(self, addrs: Sequence[Address], now: float) -> int:
        return self.dht.bootstrap(addrs, now)

    def set_addresses(self, addrs: Sequence[tuple[str, str, int]]) -> None:
        """The addresses to put in our records (before the first `publish`)."""
        self._addrs = tuple(addrs)

    def publish(self, addrs: Sequence[tuple[str, str, int]], now: float) -> int:
        """Sign our peer record for addrs and store it in the DHT; keep it fresh."""
        self._addrs = tuple(addrs)
        return self._publish(now)

    def _publish(self, now: float) -> int:
        seq = int(now * 1000)
        if self.peer_record is not None and seq <= self.peer_record.seq:
            seq = self.peer_record.seq + 1
        self.peer_record = create_record(
            self.identity, type=PEER, seq=seq, expires=int(now) + PEER_TTL, addrs=self._addrs
        )
        self._republish_at = now + PEER_REPUBLISH
        self._published_table = len(self.dht.table)
        self._published_at = now
        qid = self.dht.start_put(peer_key(self.identity.public_key), self.peer_record.raw, now)
        self._publishes[qid] = seq
        return qid

    def start_resolve(self, public_key: bytes, now: float) -> int:
        """Find and verify the peer record of public_key."""
        qid = self.dht.start_get(peer_key(public_key), now)
        self._resolves[qid] = public_key
        return qid

    def announce(self, feed: bytes, addrs: Sequence[tuple[str, str, int]], now: float) -> int:
        """Announce that this node holds ``feed``, reachable at ``addrs``; keep it announced.

        Signs a provider record and adds it at the k nodes closest to
        ``provider_key(feed)``; ends with `ProviderAnnounced`.  The caller
        announces only feeds it holds.  Raises `RecordError` for a bad feed
        or addresses.
        """
        return self._announce(feed, tuple(addrs), now)

    def withdraw(self, feed: bytes) -> None:
        """Stop announcing ``feed``; copies held elsewhere lapse with the record's expiry."""
        self._provided.pop(feed, None)
        self._announce_at.pop(feed, None)
        self.provider_records.pop(feed, None)
        self.dht.providers.remove(provider_key(feed), self.identity.public_key)

    def _announce(self, feed: bytes, addrs: tuple[tuple[str, str, int], ...], now: float) -> int:
        key = provider_key(feed)
        # Above our last seq, and above any record of ours a peer handed back
        # (signed by an earlier run whose clock was ahead), which would win.
        seqs = [int(now * 1000)]
        seqs += [r.seq + 1 for r in (self.provider_records.get(feed),) if r is not None]
        for signer, value in self.dht.providers.get_with_ids(key, now):
            if signer == self.identity.public_key:
                seqs.append(decode_record(value, now=None).seq + 1)
        record = create_record(
            self.identity,
            type=PROVIDER,
            seq=max(seqs),
            expires=int(now) + PROVIDER_TTL,
            addrs=addrs,
            feed=feed,
        )
        self.provider_records[feed] = record
        self._provided[feed] = addrs
        self._announce_at[feed] = now + PROVIDER_REPUBLISH
        qid = self.dht.start_add_provider(key, record.raw, now)
        self._announces[qid] = (feed, record.seq)
        return qid

    def start_find_providers(self, feed: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY) -> int:
        """Find the nodes that hold ``feed``.  Ends with `ProvidersResolved`."""
        qid = self.dht.start_get_providers(provider_key(feed), now, want=want)
        self._finds[qid] = feed
        return qid
