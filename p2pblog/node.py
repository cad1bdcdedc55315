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
  the feed, 4, 8, 16 ... seconds apart up to `SEARCH_EVERY`; while others
  serve it, from `SEARCH_EVERY` doubling up to `RESEARCH_MAX`), whose
  results become dial candidates; when a peer that connected to us
  disconnects and we do not know its listen address, its peer record is
  resolved (so the address book can redial it).  NodeCore announces itself
  as a provider of its own feed and of every followed feed it holds entries
  of, once it has an address to announce (`publish`) and DHT contacts to
  announce to.
* **Commands** `post`, `follow`, `unfollow`, `delete`, `set_profile` write
  signed entries to the own feed and tell the replicator (live push; start or
  stop replicating); `block` / `unblock` refuse a key everywhere.
* **Names.**  `claim_name` signs a name claim (an `identity.records` *name*
  record whose proof-of-work nonce the caller found) and adds it at the k
  nodes closest to ``name_key(name)`` in the provider store, one claim per
  signer; own claims are kept in the store and re-signed and re-added every
  `NAME_REPUBLISH` seconds (and after a restart).  `start_resolve_name`
  gathers every valid claim of a name and reports `NameResolved`, claimants
  in the documented order (most work, then earliest claim).
* **Mention notices.**  A post (or the delete of a post) that mentions
  other keys queues one notice per mentioned key in the store's outbox.  Each
  needs a proof-of-work stamp first, which the driver computes off the event
  loop (`stamps_to_make` / `stamp_made`).  Then NodeCore resolves the
  recipient's peer record, has the replicator connect, and sends the
  notice, retrying with backoff until the recipient acknowledges it (or
  `MENTION_ATTEMPTS` tries fail).  A notice we receive is admitted
  (`admit_mention`) if its sender and author are not blocked, the sender is
  within its rate limit, the entry is valid and mentions us, and its author is
  followed, within two follow hops, or paid the stamp's work; admitted
  entries are stored alone (``Store.add_loose``), without their feed.

Like the DHT core it never reads a clock: ``now`` is Unix seconds (the
runtime supplies a monotonic clock anchored to Unix time, because records
carry absolute expiry times).  Outputs are pulled with the same methods as
`DhtCore`'s (`datagrams_to_send`, `next_event`, `get_timer`) plus the
replicator's connection outputs (`dials_to_make`, `data_to_send`,
`connections_to_close`), and connection inputs are passed through to it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
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
from gossip.messages import MentionStatus
from gossip.noise import RandomBytes
from gossip.transport import ChannelConfig
from identity import Identity, SignatureError, verify
from identity.limits import MENTION_WORK
from identity.pow import NOTICE_DOMAIN, notice_subject, work_bits
from identity.records import (
    NAME,
    PEER,
    PROVIDER,
    Record,
    RecordError,
    create_name_claim,
    create_record,
    decode_record,
    name_key,
    order_claims,
    peer_key,
    provider_key,
)
from p2pblog import actions
from p2pblog.entry import DELETE, FOLLOW, POST, UNFOLLOW, Entry, decode_entry
from p2pblog.errors import EntryError
from p2pblog.replication import (
    EntriesStored,
    MentionAnswered,
    PeerConnected,
    PeerDisconnected,
    Replicator,
)
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
#: Seconds between provider searches for a followed feed no connected peer
#: replicates: FIRST_SEARCH_RETRY after the first, doubling up to SEARCH_EVERY.
SEARCH_EVERY: Final = 30.0
FIRST_SEARCH_RETRY: Final = 4.0
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
#: Seconds a name claim is valid after signing, and between re-signings.
NAME_TTL: Final = 24 * 3600
NAME_REPUBLISH: Final = 4 * 3600
#: Mention notices: delivery attempts before giving up, the first retry delay
#: (doubling up to the ceiling), and how long to wait for an acknowledgement.
MENTION_ATTEMPTS: Final = 10
MENTION_RETRY_FIRST: Final = 5.0
MENTION_RETRY_MAX: Final = 3600.0
MENTION_ACK_TIMEOUT: Final = 30.0
#: Most work bits we spend on a stamp when a recipient asks for more (2**24
#: hashes, about 8 s of one core).
MAX_STAMP_WORK: Final = 24
#: Per-sender rate limit on received mention notices: a burst, then one every
#: 1/MENTION_RATE seconds; senders tracked at most (least recently seen dropped).
MENTION_BURST: Final = 10.0
MENTION_RATE: Final = 1 / 6
MENTION_SENDERS: Final = 4096
#: Mention notices admitted from strangers (authors beyond two follow hops,
#: who paid a stamp) in any 24 hours, whatever keys they use: keys are free,
#: so the per-sender limit alone does not bound what strangers can store.
STRANGER_MENTIONS_PER_DAY: Final = 1000
#: Extra stamp bits asked of a stranger as that window fills: one more bit per
#: eighth of it (16 + 7 = 23 bits with the default work, below MAX_STAMP_WORK).
STRANGER_EXTRA_WORK: Final = 8
DAY: Final = 86_400.0


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


@dataclass(frozen=True, slots=True)
class NameClaimPublished:
    """Our claim of ``name`` was added at ``stored_at`` of the closest nodes."""

    query_id: int
    name: str
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class NameResolved:
    """Every valid claim of ``name`` found, one per claimant, in resolution order."""

    query_id: int
    name: str
    claims: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class MentionAdmitted:
    """A mention notice from ``sender`` was admitted: ``entry`` is stored."""

    sender: bytes
    entry: Entry


@dataclass(frozen=True, slots=True)
class MentionRefused:
    """A mention notice from ``sender`` was refused (``reason`` names the counter)."""

    sender: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class MentionDelivered:
    """Our notice of ``entry_id`` reached ``recipient``: ``admitted`` or refused with ``status``."""

    entry_id: bytes
    recipient: bytes
    admitted: bool
    status: int


@dataclass(slots=True)
class _Outgoing:
    """A mention notice waiting for delivery (mirrors a row of the store's outbox)."""

    raw: bytes
    #: The proof-of-work nonce; None until the driver made it.
    stamp: bytes | None
    work: int
    attempts: int
    next_at: float
    requested: bool = False


Event = (
    DhtEvent
    | PeerResolved
    | PeerNotResolved
    | RecordPublished
    | ProviderAnnounced
    | ProvidersResolved
    | NameClaimPublished
    | NameResolved
    | MentionAdmitted
    | MentionRefused
    | MentionDelivered
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
    """The DHT provider validator: a valid provider record or name claim under its own key
    -> its signer."""
    if not _looks_like_record(value):
        return None
    try:
        record = decode_record(value, now=now, key=key)
    except RecordError:
        return None
    return record.signer if record.type in (PROVIDER, NAME) else None


def rank_provider(key: bytes, value: bytes) -> int:
    """Eviction rank in a full provider key: a name claim's proof-of-work bits (else 0)."""
    del key
    try:
        record = decode_record(value, now=None, check_signature=False)
    except RecordError:
        return 0
    return record.work if record.type == NAME else 0


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
        mention_work: int = MENTION_WORK,
    ) -> None:
        self.identity = identity
        #: Work bits a mention notice from a stranger must carry.
        self.mention_work = mention_work
        self.stats: Counter[str] = Counter()
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
            provider_rank=rank_provider,
        )
        self.replicator.mention_handler = self.admit_mention
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
        #: Our name claims: the current signed record, and when to re-sign it.
        self.name_records: dict[str, Record] = {}
        self._claims: dict[str, tuple[int, bytes]] = {
            name: (claimed, nonce) for name, claimed, nonce, _ in self.store.name_claims()
        }
        self._claim_at: dict[str, float] = dict.fromkeys(self._claims, now)
        self._claim_publishes: dict[int, tuple[str, int]] = {}
        self._name_finds: dict[int, str] = {}
        #: Mention notices to deliver, by (entry id, recipient); see `_deliver_mentions`.
        self._outgoing: dict[tuple[bytes, bytes], _Outgoing] = {}
        self._mentions_at: float | None = None
        self._sync_outbox(now)
        #: Per-sender token buckets for received notices: sender -> (tokens, at).
        self._mention_buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        #: When each stranger's notice of the last DAY was admitted (in memory:
        #: a restart starts a new window, as it forgets the per-sender buckets).
        self._stranger_admits: deque[float] = deque()
        self.stranger_mentions_per_day = STRANGER_MENTIONS_PER_DAY

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
        # Asked after every input: plain comparisons, no temporary lists.
        at = self._maintain_at
        for t in (self.dht.get_timer(), self._republish_at, self.replicator.get_timer(), self._mentions_at):
            if t is not None and t < at:
                at = t
        for timers in (self._announce_at, self._claim_at):
            if timers:
                t = min(timers.values())
                if t < at:
                    at = t
        return at

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
            if isinstance(gossip, PeerDisconnected) and now is not None:
                # A peer that dialled us: learn its listen address now, so that
                # the address book can redial it.  (Not on connect: an author
                # with many followers would look up every one of them.)
                peer = gossip.peer
                if self.replicator.known_address(peer) is None and not self.replicator.refuses(peer, now):
                    self._internal.add(self.start_resolve(peer, now))
            elif isinstance(gossip, PeerConnected) and now is not None:
                for (_, recipient), outgoing in self._outgoing.items():
                    if recipient == gossip.peer:  # send its notices now, not at the next retry
                        outgoing.next_at = min(outgoing.next_at, now)
                        self._wake_mentions(now)
            elif isinstance(gossip, MentionAnswered) and now is not None:
                self._mention_answered(gossip, now)
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
                    if any(recipient == item.public_key for _, recipient in self._outgoing):
                        self.replicator.want_connection(item.public_key, now)
                    if item.public_key in self.replicator.wanted:
                        self.replicator.add_candidates(item.public_key, [(item.public_key, *addr)], now)
            elif isinstance(item, ProviderAnnounced) and not item.stored_at and item.feed in self._provided:
                self._announce_at[item.feed] = now + ANNOUNCE_RETRY
            elif isinstance(item, NameClaimPublished) and not item.stored_at and item.name in self._claims:
                self._claim_at[item.name] = min(self._claim_at[item.name], now + ANNOUNCE_RETRY)

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
        if qid is not None and qid in self._claim_publishes:
            name, seq = self._claim_publishes.pop(qid)
            stored = len(getattr(event, "stored_at", ()))
            self._events.append(NameClaimPublished(qid, name, seq, stored))
            return
        if qid is not None and qid in self._name_finds:
            name = self._name_finds.pop(qid)
            values = event.values if isinstance(event, ProvidersFound) else ()
            self._events.append(NameResolved(qid, name, self._verified_claims(name, values)))
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

    @staticmethod
    def _verified_claims(name: str, values: Sequence[bytes]) -> tuple[Record, ...]:
        key = name_key(name)
        records = []
        for value in values:
            try:
                record = decode_record(value, now=None, key=key)
            except RecordError:
                continue
            if record.type == NAME and record.name == name:
                records.append(record)
        return tuple(order_claims(records))

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
        for name, at in list(self._claim_at.items()):
            if now < at:
                continue
            if len(self.dht.table):
                self._internal.add(self._publish_claim(name, now))
            else:
                self._claim_at[name] = now + FIRST_CONTACT_POLL
        if self._mentions_at is not None and now >= self._mentions_at:
            self._deliver_mentions(now)
        if now >= self._maintain_at:
            self.replicator.maintain_now(now)  # one wake-up for both maintenance passes
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
                # While nobody serves the feed: 4, 8, 16 ... seconds apart, up to
                # SEARCH_EVERY (a walk takes about a second; the DHT's answer
                # seldom changes faster).  While others serve it but its author
                # is not connected: from SEARCH_EVERY doubling to RESEARCH_MAX.
                rounds = self._search_rounds.get(feed, 0)
                self._search_rounds[feed] = rounds + 1
                if self.replicator.sources(feed) == 0:
                    delay = min(SEARCH_EVERY, FIRST_SEARCH_RETRY * 2.0**rounds)
                else:
                    delay = min(RESEARCH_MAX, SEARCH_EVERY * 2.0 ** min(rounds, 8))
                self._search_at[feed] = now + delay
                self._internal.add(self.start_find_providers(feed, now))
                # The author itself serves its feed: its peer record names its
                # address.  (Resolved alongside the search, not after it: while
                # the author has not announced yet, e.g. as a network forms,
                # finding it at once saves dials to other providers.)
                self._internal.add(self.start_resolve(feed, now))

    # -- commands: the own feed -----------------------------------------------------

    def following(self) -> set[bytes]:
        return self.store.following(self.identity.public_key)

    def post(self, text: str, now: float, *, reply_to: bytes | None = None) -> Entry:
        """Append a post to the own feed, push it to connected peers, and send mention
        notices to the keys it mentions (a reply mentions the parent's author).

        Raises `p2pblog.errors.EntryError` for a post the protocol refuses (too long, ...).
        """
        return self._appended(
            actions.post(self.store, self.identity, text, int(now * 1000), reply_to=reply_to), now
        )

    def delete(self, target: bytes, now: float) -> Entry:
        """Retract one of our own posts (followers stop showing its text) and tell the
        keys it mentioned.  Raises `EntrySchemaError` for an entry that is not our own
        post or is already deleted."""
        return self._appended(actions.delete(self.store, self.identity, target, int(now * 1000)), now)

    def set_profile(self, fields: dict[str, str], now: float) -> Entry:
        """Append a profile entry setting ``fields`` (name, bio)."""
        return self._appended(actions.set_profile(self.store, self.identity, fields, int(now * 1000)), now)

    def _appended(self, entry: Entry, now: float) -> Entry:
        self.replicator.feed_appended(entry.author, now)
        self._sync_outbox(now)
        self._drain(now)
        return entry

    def block(self, key: bytes, now: float) -> tuple[bool, Entry | None]:
        """Refuse key's entries, mentions and connections; unfollow it if followed.

        Returns (newly blocked, the unfollow entry if one was written)."""
        if key == self.identity.public_key:
            raise ValueError("a node cannot block itself")
        unfollowed = self.unfollow(key, now)  # None if not followed
        new, _ = actions.block(self.store, self.identity, key, int(now * 1000))
        self.replicator.block(key, now)
        self._sync_outbox(now)
        self._drain(now)
        return new, unfollowed

    def unblock(self, key: bytes) -> bool:
        self.replicator.unblock(key)
        return self.store.unblock(key)

    # -- mention notices --------------------------------------------------------------

    def _sync_outbox(self, now: float) -> None:
        """Mirror the store's outbox (written by `p2pblog.actions`) in memory."""
        rows = {
            (eid, recipient): (stamp, attempts) for eid, recipient, stamp, attempts in self.store.outbox()
        }
        for pair in [pair for pair in self._outgoing if pair not in rows]:
            del self._outgoing[pair]
        for (eid, recipient), (stamp, attempts) in rows.items():
            if (eid, recipient) in self._outgoing:
                continue
            item = self.store.get(eid)
            if item is None:
                self.store.outbox_remove(eid, recipient)
                continue
            work = self._stamp_work(stamp, recipient, eid)
            self._outgoing[eid, recipient] = _Outgoing(item.entry.raw, stamp or None, work, attempts, now)
            self._mentions_at = now

    def pending_mentions(self) -> list[tuple[bytes, bytes, int]]:
        """Notices not yet acknowledged: ``(entry id, recipient, attempts)``."""
        return [(eid, recipient, item.attempts) for (eid, recipient), item in self._outgoing.items()]

    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]:
        """``(entry id, recipient, bits)`` of notices that need a proof-of-work stamp.

        The driver finds a nonce (`identity.pow.solve` over NOTICE_DOMAIN and
        ``notice_subject(recipient, entry id)``) and reports it with `stamp_made`."""
        out = []
        for (eid, recipient), item in self._outgoing.items():
            if item.stamp is None and not item.requested:
                item.requested = True
                out.append((eid, recipient, item.work))
        return out

    def stamp_made(self, entry_id: bytes, recipient: bytes, nonce: bytes, now: float) -> None:
        item = self._outgoing.get((entry_id, recipient))
        if item is None:
            return
        item.stamp, item.requested, item.next_at = nonce, False, now
        self.store.outbox_add(entry_id, recipient, nonce)
        self._mentions_at = now
        self._deliver_mentions(now)
        self._drain(now)

    @staticmethod
    def _stamp_work(stamp: bytes, recipient: bytes, eid: bytes) -> int:
        return (
            max(MENTION_WORK, work_bits(NOTICE_DOMAIN, notice_subject(recipient, eid), stamp))
            if stamp
            else MENTION_WORK
        )

    def _deliver_mentions(self, now: float) -> None:
        """Send due notices to connected recipients; connect to (or resolve) the others."""
        self._mentions_at = None
        resolving: set[bytes] = set()
        for pair, item in list(self._outgoing.items()):
            eid, recipient = pair
            if item.stamp is None:
                continue
            if now < item.next_at:
                self._wake_mentions(item.next_at)
                continue
            if item.attempts >= MENTION_ATTEMPTS:
                self.replicator.stats["mentions.undelivered"] += 1
                self._drop_outgoing(pair)
                continue
            item.attempts += 1
            self.store.outbox_attempted(eid, recipient, item.attempts)
            if self.replicator.send_mention(recipient, item.raw, item.stamp, now):
                item.next_at = now + MENTION_ACK_TIMEOUT
            else:
                self.replicator.want_connection(recipient, now)
                if self.replicator.known_address(recipient) is None and recipient not in resolving:
                    resolving.add(recipient)
                    self._internal.add(self.start_resolve(recipient, now))
                item.next_at = now + min(MENTION_RETRY_MAX, MENTION_RETRY_FIRST * 2.0 ** (item.attempts - 1))
            self._wake_mentions(item.next_at)

    def _wake_mentions(self, at: float) -> None:
        self._mentions_at = at if self._mentions_at is None else min(self._mentions_at, at)

    def _drop_outgoing(self, pair: tuple[bytes, bytes]) -> None:
        self._outgoing.pop(pair, None)
        self.store.outbox_remove(*pair)
        if not any(recipient == pair[1] for _, recipient in self._outgoing):
            self.replicator.release_connection(pair[1])

    def _mention_answered(self, answer: MentionAnswered, now: float) -> None:
        pair = (answer.entry_id, answer.peer)
        item = self._outgoing.get(pair)
        if item is None:
            return
        status = answer.status
        if status == MentionStatus.NEED_WORK and item.work < answer.need <= MAX_STAMP_WORK:
            # The recipient asks for more work than we paid: pay it once.
            item.stamp, item.work, item.next_at = None, answer.need, now
            self.store.outbox_add(answer.entry_id, answer.peer, b"")
            return
        admitted = status in (MentionStatus.ADMITTED, MentionStatus.DUPLICATE)
        if not admitted and status in (MentionStatus.RATE_LIMITED, MentionStatus.BUSY):
            item.next_at = now + min(MENTION_RETRY_MAX, MENTION_RETRY_FIRST * 2.0**item.attempts)
            self._wake_mentions(item.next_at)
            return
        self.replicator.stats["mentions.delivered" if admitted else "mentions.refused_by_peer"] += 1
        self._drop_outgoing(pair)
        self._events.append(MentionDelivered(answer.entry_id, answer.peer, admitted, status))

    def _take_mention_token(self, sender: bytes, now: float) -> bool:
        tokens, at = self._mention_buckets.pop(sender, (MENTION_BURST, now))
        tokens = min(MENTION_BURST, tokens + (now - at) * MENTION_RATE)
        ok = tokens >= 1.0
        self._mention_buckets[sender] = (tokens - 1.0 if ok else tokens, now)
        while len(self._mention_buckets) > MENTION_SENDERS:
            self._mention_buckets.popitem(last=False)
        return ok

    def admit_mention(self, sender: bytes, raw: bytes, stamp: bytes, now: float) -> tuple[int, int]:
        """Decide on a mention notice from ``sender`` (the replicator's handler).

        Returns ``(MentionStatus, work bits needed)``; every refusal is counted
        under ``mentions.refused_<reason>`` and reported as `MentionRefused`."""
        own = self.identity.public_key
        blocked = self.replicator.blocked

        def refuse(reason: str, status: int, need: int = 0) -> tuple[int, int]:
            self.replicator.stats[f"mentions.refused_{reason}"] += 1
            self._events.append(MentionRefused(sender, reason))
            return status, need

        if sender in blocked:
            return refuse("blocked", MentionStatus.BLOCKED)
        # The rate limit, then the cheap checks, then the stamp (one hash), and
        # the signature last: a flood of notices costs little to refuse.
        if not self._take_mention_token(sender, now):
            return refuse("rate", MentionStatus.RATE_LIMITED)
        try:
            entry = decode_entry(raw, check_signature=False)
        except EntryError:
            return refuse("invalid", MentionStatus.INVALID)
        if entry.author in blocked:
            return refuse("blocked", MentionStatus.BLOCKED)
        if self.store.has_entry(entry.id):  # the id covers the signature: the same bytes
            self.replicator.stats["mentions.duplicate"] += 1
            return MentionStatus.DUPLICATE, 0
        stranger = False
        if entry.kind == DELETE:
            # A retraction of a post we hold: no work needed, it only hides text.
            target = self.store.get(entry.target) if entry.target else None
            if target is None or target.entry.author != entry.author:
                return refuse("invalid", MentionStatus.INVALID)
        elif entry.kind != POST or own not in entry.mentions:
            return refuse("invalid", MentionStatus.INVALID)
        elif not self.store.within_follow_hops(own, entry.author):
            stranger = True
            admits = self._stranger_admits
            while admits and admits[0] <= now - DAY:
                admits.popleft()
            cap = self.stranger_mentions_per_day
            if len(admits) >= cap:
                return refuse("busy", MentionStatus.BUSY)  # the sender retries later
            # The fuller the day's window, the more work a stamp needs (up to
            # STRANGER_EXTRA_WORK bits more), so filling it is dear, not a minute of CPU.
            need = self.mention_work + len(admits) * STRANGER_EXTRA_WORK // cap
            if work_bits(NOTICE_DOMAIN, notice_subject(own, entry.id), stamp) < need:
                return refuse("work", MentionStatus.NEED_WORK, need)
        try:
            verify(entry.author, raw)
        except SignatureError:
            return refuse("invalid", MentionStatus.INVALID)
        if stranger:
            self._stranger_admits.append(now)
        self.store.add_loose(entry, int(now * 1000))
        self.replicator.stats["mentions.admitted"] += 1
        self._events.append(MentionAdmitted(sender, entry))
        return MentionStatus.ADMITTED, 0

    # -- names ------------------------------------------------------------------------

    def claim_name(self, name: str, claimed: int, nonce: bytes, now: float) -> int:
        """Claim ``name`` with a nonce found for ``name_subject(own key, name, claimed)``.

        Saves the claim (so it is republished, also after a restart) and adds
        it in the DHT; ends with `NameClaimPublished`.  Raises `RecordError`
        for a bad name or too little work (and then changes nothing)."""
        record = self._sign_claim(name, claimed, nonce, now)
        self.store.save_name_claim(name, claimed, nonce, record.work)
        self._claims[name] = (claimed, nonce)
        return self._add_claim(record, now)

    def _sign_claim(self, name: str, claimed: int, nonce: bytes, now: float) -> Record:
        # Above our last seq, and above any claim of ours a peer handed back
        # (signed by an earlier run whose clock was ahead), which would win.
        seqs = [int(now * 1000)]
        seqs += [r.seq + 1 for r in (self.name_records.get(name),) if r is not None]
        for signer, value in self.dht.providers.get_with_ids(name_key(name), now):
            if signer == self.identity.public_key:
                seqs.append(decode_record(value, now=None).seq + 1)
        return create_name_claim(
            self.identity, name=name, claimed=claimed, nonce=nonce, seq=max(seqs), expires=int(now) + NAME_TTL
        )

    def _publish_claim(self, name: str, now: float) -> int:
        """Re-sign our claim of name and add it in the DHT again."""
        return self._add_claim(self._sign_claim(name, *self._claims[name], now), now)

    def _add_claim(self, record: Record, now: float) -> int:
        assert record.name is not None
        self.name_records[record.name] = record
        self._claim_at[record.name] = now + NAME_REPUBLISH
        qid = self.dht.start_add_provider(name_key(record.name), record.raw, now)
        self._claim_publishes[qid] = (record.name, record.seq)
        return qid

    def start_resolve_name(self, name: str, now: float) -> int:
        """Find every valid claim of ``name``.  Ends with `NameResolved`."""
        qid = self.dht.start_get_providers(name_key(name), now, want=MAX_PROVIDERS_PER_KEY)
        self._name_finds[qid] = name
        return qid

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
