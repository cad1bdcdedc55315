"""NodeCore: the sans-IO p2pblog node, a facade over parts that each own one job.

Theory of operation
-------------------
`NodeCore` composes the DHT (`dht.DhtCore`), the gossip connections
(`Replicator`) and the store, and routes every input to the part that owns
it.  Each part is readable on its own:

=========================  ==========================================================
part (module)              owns
=========================  ==========================================================
``lifecycle``              start-up (seeds, join, publish with retries), saving
                           contacts, shutdown (`p2pblog.lifecycle`)
``records``                our peer record, provider announcements and name claims,
                           and their republication (`p2pblog.own_records`)
``instances``              another node running with our key: noticed, reported,
                           our peer record kept winning (`p2pblog.instances`)
``discovery``              provider searches and peer-record resolutions for the
                           feeds we follow (`p2pblog.discovery`)
``outbox``, ``admission``  mention notices we send, and those we admit
                           (`p2pblog.mentions`)
``hashtags``, ``tracker``   our hashtag records; tracked tags' lookups, slice
                           fetches and answers (`p2pblog.hashtags`,
                           `p2pblog.track`; issue 19)
``queries``                the pending DHT queries and how each ends
                           (`p2pblog.queries`)
``replicator``             the gossip connections, sessions and dial policy
                           (`p2pblog.replication`, `p2pblog.dialing`)
=========================  ==========================================================

What a DHT value must be is `p2pblog.record_rules`; the events this core
reports are `p2pblog.events`.

**Routing.**  After every input, `_drain` turns the DHT's events into the
node's (a query the node started ends as the event of its kind, via the
pending table; others pass through), hands each replicator event to the part
that answers it (a mention notice to admission, an acknowledgement to the
outbox, a lost inbound peer to discovery), and then gives the results the
parts asked for back to them (providers found -> dial candidates, a failed
announce -> a retry, the join -> the first publish).  So whatever an input
causes (a dial, an announce) is among the outputs the driver collects next.

**Maintenance.**  One pass at least every `MAINTAIN_EVERY` seconds (the
replicator's constant: the two passes share one wake-up) (sooner
when a search is due, new entries arrived, or a followed author was lost:
`FIRST_SEARCH_RETRY` later, if the redial failed) runs the replicator's dial
maintenance, announces the feeds we hold, and searches for the ones nobody
serves us; the replicator's own wake-ups share it, so an idle node wakes
once per pass.

Like the DHT core it never reads a clock: ``now`` is Unix seconds (the
runtime supplies a monotonic clock anchored to Unix time, because records
carry absolute expiry times).  Outputs are pulled with `DhtCore`'s methods
(`datagrams_to_send`, `next_event`, `get_timer`) plus the replicator's
connection outputs (`dials_to_make`, `data_to_send`, `connections_to_close`),
the stamps to compute (`stamps_to_make`) and, once the driver called
`offload_verification`, the signatures to check (`verifications_to_make`,
answered with `entries_verified`: `p2pblog.ingest_queue`).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from random import Random
from typing import Final

from dht import BootstrapFinished, DhtConfig, DhtCore, node_id_from_public_key
from dht.events import Event as DhtEvent
from dht.events import RecordStored
from dht.ids import Address
from dht.providers import MAX_PROVIDERS_PER_KEY
from gossip.noise import RandomBytes
from gossip.transport import ChannelConfig
from identity import Identity
from identity.compile_hints import mypyc_attr
from identity.errors import LocalProtocolError
from identity.limits import MENTION_WORK
from identity.records import Record, RecordError, decode_record, peer_key, provider_key
from identity.sealed import dm_id
from p2pblog import actions
from p2pblog.devices import key_digest
from p2pblog.discovery import FIRST_SEARCH_RETRY, Discovery
from p2pblog.dms import DirectMessages
from p2pblog.entry import DEVICE, DEVICE_OF, FOLLOW, REVOKE, ROTATE, UNFOLLOW, Entry, decode_entry
from p2pblog.errors import EntryError, OwnFeedRefused, StorageFull, StoreDamaged
from p2pblog.events import (
    DevicePaired,
    Event,
    HashtagAnnounced,
    HashtagsFound,
    JoinFinished,
    KeyEventResolved,
    MentionAdmitted,
    MentionDelivered,
    MentionRefused,
    NameClaimPublished,
    NameResolved,
    OwnHeadKnown,
    PairingResolved,
    PeerNotResolved,
    PeerResolved,
    ProviderAnnounced,
    ProvidersResolved,
    RecordPublished,
    RootRotated,
    StartupFinished,
)
from p2pblog.hashtags import HashtagAnnouncer
from p2pblog.instances import SELF_CHECK_QUORUM, InstanceWatch, home_instance
from p2pblog.lifecycle import Lifecycle
from p2pblog.mentions import MentionAdmission, MentionOutbox
from p2pblog.own_head import OwnHead
from p2pblog.own_records import FIRST_CONTACT_POLL, PEER_REPUBLISH, OwnRecords
from p2pblog.pairing import (
    IDENTITY_SETTING,
    PENDING_SETTING,
    Approvals,
    KeptRecords,
    Pairing,
    PairingCode,
    identity_of_home,
)
from p2pblog.queries import PendingQueries, Result
from p2pblog.reachability import UNREACHABLE, Reachability, ReachabilityChanged, tcp_address
from p2pblog.record_rules import (
    hashtag_group,
    rank_provider,
    select_value,
    validate_provider,
    validate_value,
)
from p2pblog.relay import RelayClient
from p2pblog.replication import (
    MAINTAIN_EVERY,
    DialBackProbed,
    DialBackResult,
    DmAnswered,
    DmArrived,
    EntriesStored,
    MentionAnswered,
    MentionArrived,
    PeerConnected,
    PeerDisconnected,
    RelayReserved,
    Replicator,
    SliceArrived,
    SliceAsked,
)
from p2pblog.replication import Event as GossipEvent
from p2pblog.rotation import KeyEvents
from p2pblog.store import Store
from p2pblog.track import Tracker

__all__ = [
    "MAINTAIN_EVERY",
    "Event",
    "JoinFinished",
    "MentionAdmitted",
    "MentionDelivered",
    "MentionRefused",
    "NameClaimPublished",
    "NameResolved",
    "NodeCore",
    "PeerNotResolved",
    "PeerResolved",
    "ProviderAnnounced",
    "ProvidersResolved",
    "RecordPublished",
    "StartupFinished",
    "rank_provider",
    "select_value",
    "validate_provider",
    "validate_value",
]


#: Key-event records of one identity tried per lookup (any key may file one).
MAX_KEYEVENTS_TRIED: Final = 20
#: Peers we replicated with lately whose peer records the DHT stores keep first.
PRIORITY_PEERS: Final = 256


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's lying nodes subclass it
class NodeCore:
    """A p2pblog node, sans IO.  Drive it exactly like `dht.DhtCore`."""

    def __init__(
        self,
        identity: Identity,
        rng: Random,
        now: float,
        *,
        random_bytes: RandomBytes,
        dht_config: DhtConfig | None = None,
        store: Store | None = None,
        channel_config: ChannelConfig | None = None,
        mention_work: int = MENTION_WORK,
        check_reachability: bool = False,
        relay: bool = False,
        peer_republish: float = PEER_REPUBLISH,
        dht_factory: Callable[..., DhtCore] = DhtCore,
    ) -> None:
        """``dht_factory`` builds the DHT side (called as `DhtCore` is): the simulator's
        DHT model (`simulations.dhtmodel`, issue 17) is a `DhtCore` whose queries answer
        from a global view instead of the network."""
        self.identity = identity
        self.store = store if store is not None else Store(":memory:")
        self.replicator = Replicator(
            identity, self.store, rng, now, channel_config=channel_config, random_bytes=random_bytes
        )
        self.dht = dht_factory(
            node_id_from_public_key(identity.public_key),
            rng,
            now,
            config=dht_config,
            validator=validate_value,
            selector=select_value,
            provider_validator=validate_provider,
            provider_rank=rank_provider,
        )
        self.queries = PendingQueries()
        #: Other nodes running with our key (`p2pblog.instances`): our own peer record is
        #: checked three times per republication, and won back at most six times.
        self.instances = InstanceWatch(
            identity.public_key,
            home_instance(self.store, random_bytes),
            self.store,
            check_every=peer_republish / 3,
            respond_every=peer_republish / 6,
        )
        self._own_peer_key = peer_key(identity.public_key)
        self.records = OwnRecords(
            identity,
            self.store,
            self.dht,
            self.queries,
            now,
            watch=self.instances,
            peer_republish=peer_republish,
        )
        self.discovery = Discovery(identity.public_key, self.dht, self.queries, self.replicator, now)
        #: The mention counters (`status` shows them beside the replicator's, under ``gossip.``).
        self.mention_stats: Counter[str] = Counter()
        self.outbox = MentionOutbox(self.store, self.replicator, self.discovery, self.mention_stats, now)
        self.admission = MentionAdmission(
            identity, self.store, self.replicator, self.mention_stats, mention_work
        )
        self.dms = DirectMessages(
            identity,
            self.store,
            self.replicator,
            self.discovery,
            self.mention_stats,
            now,
            random_bytes=random_bytes,
            work=mention_work,
        )
        #: Devices: the pairing of this node with an identity, and approvals it gave.
        self.pairing = Pairing(identity.public_key, self.store, self.dht, self.queries)
        self.kept = KeptRecords(self.dht, self.records.stats)
        self.approvals = Approvals(identity, self.kept)
        self.key_events = KeyEvents(identity, self.store, self.dht, self.queries, self.kept)
        self._devices_seen = -1
        self.lifecycle = Lifecycle(self.store, self.dht, self.records, self.replicator)
        #: Track (issue 19): our hashtag records, and the tags this node tracks.
        self.dht.providers.group = hashtag_group
        self.hashtags = HashtagAnnouncer(identity, self.store, self.dht, self.queries, now)
        self.tracker = Tracker(
            identity, self.store, self.dht, self.queries, self.replicator, self.discovery, now, rng=rng
        )
        #: Whether others can dial us (dial-back); client mode when not (`_reachability_changed`).
        self.reachability = Reachability(self.replicator, now, enabled=check_reachability)
        #: Relaying: we relay for others (unless off, or in client mode); in client mode we
        #: keep reservations with relays (`p2pblog.relay`).
        self.relay = relay
        self.replicator.relay_enabled = relay
        self.relay_client = RelayClient(self.replicator)
        #: Whether we know our own feed's head; until then, catch up from the network.
        self.own_head = OwnHead(identity.public_key, self.store, self.replicator)
        self._set_catching_up(not self.own_head.known)
        #: The DHT keys this node cares about (`dht.records.Capacity`'s priority): a full
        #: store evicts strangers' values for them, never them for strangers' values.
        self._priority_records: frozenset[bytes] = frozenset()
        self._priority_providers: frozenset[bytes] = frozenset()
        self.dht.records.priority = self._priority_records_has
        self.dht.providers.priority = self._priority_providers_has
        self._refresh_priority()
        self._events: deque[Event] = deque()
        #: Results of queries a part started for itself, in order, to hand back at `_drain`.
        self._consumed: deque[Result | BootstrapFinished] = deque()
        self._maintain_at = now
        self._now = now
        self._devices_changed(now)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, addrs: Sequence[tuple[str, str, int]], bootstrap: Sequence[Address], now: float) -> None:
        """Start the node at ``addrs`` (our records' addresses): join through ``bootstrap``
        and the contacts saved by the last run, then publish the peer record (`p2pblog.lifecycle`)."""
        self.records.set_addresses(addrs)
        self._watch_address(addrs, now)
        own = [(host, port) for _, host, port in addrs]
        self.lifecycle.start(self.lifecycle.join_seeds(bootstrap, own), now)
        self._drain(now)

    def join_seeds(self, bootstrap: Sequence[Address]) -> list[Address]:
        """The addresses `start` would join through (the daemon reports them)."""
        return self.lifecycle.join_seeds(bootstrap)

    def close(self, now: float) -> None:
        """Shut down: save what the next start needs."""
        del now
        self.lifecycle.close()

    # -- inspection ---------------------------------------------------------------------

    @property
    def peer_record(self) -> Record | None:
        return self.records.peer_record

    @property
    def provider_records(self) -> dict[bytes, Record]:
        return self.records.provider_records

    @property
    def name_records(self) -> dict[str, Record]:
        return self.records.name_records

    def counters(self) -> Counter[str]:
        """The replication, mention and own-record counters (`status` shows them under ``gossip.``)."""
        merged = Counter(self.replicator.stats)
        merged.update(self.mention_stats)  # update, not +: keeps counters that are 0
        merged.update(self.records.stats)
        merged.update(self.instances.stats)
        merged.update(self.discovery.stats)
        return merged

    def track_counters(self) -> Counter[str]:
        """The track counters (`status` shows them under ``track.``)."""
        merged = Counter(self.tracker.stats)
        merged.update(self.hashtags.stats)
        return merged

    def following(self) -> set[bytes]:
        return self.store.following(self.identity.public_key)

    @property
    def own_identity(self) -> bytes:
        """The identity this node speaks for: the one it paired with, else its own key."""
        return identity_of_home(self.store, self.identity.public_key)

    def wanted_feeds(self) -> set[bytes]:
        """The feeds to replicate: those followed, and the devices of the identities
        followed and of our own (`p2pblog.devices`)."""
        identity = self.own_identity
        following = self.following()
        if (
            identity != self.identity.public_key
        ):  # a device (or a rotated root) follows what its identity does
            following |= self.store.following(identity) - {self.identity.public_key}
        return following | self.store.device_feeds({*following, identity})

    def _devices_changed(self, now: float) -> None:
        """Replicate the devices' feeds when the devices of some identity changed."""
        if self.store.devices_version != self._devices_seen:
            self._devices_seen = self.store.devices_version
            self.replicator.set_wanted(self.wanted_feeds(), now)
            self._refresh_priority()

    def _priority_records_has(self, key: bytes) -> bool:
        return key in self._priority_records

    def _priority_providers_has(self, key: bytes) -> bool:
        return key in self._priority_providers

    def _refresh_priority(self) -> None:
        """Recompute the priority keys: the peer records of the feeds we replicate and of
        peers we replicated with lately, and the provider keys of the feeds we replicate."""
        wanted = sorted(self.replicator.wanted)
        peers = self.replicator.book.recent(PRIORITY_PEERS)
        self._priority_records = frozenset(peer_key(k) for k in [*wanted, *peers])
        self._priority_providers = frozenset(provider_key(f) for f in wanted)

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
        # Asked after every input: plain comparisons, no temporary containers.
        at = self._maintain_at
        t = self.dht.get_timer()
        if t is not None and t < at:
            at = t
        t = self.replicator.get_timer()
        if t is not None and t < at:
            at = t
        t = self.outbox.due_at
        if t is not None and t < at:
            at = t
        t = self.dms.due_at
        if t is not None and t < at:
            at = t
        t = self.records.next_deadline()
        if t is not None and t < at:
            at = t
        t = self.lifecycle.publish_at
        if t is not None and t < at:
            at = t
        t = self.instances.check_at
        if t is not None and t < at:
            at = t
        t = self.reachability.wake_at()
        if t is not None and t < at:
            at = t
        t = self.hashtags.next_deadline()
        if t is not None and t < at:
            at = t
        t = self.tracker.next_deadline()
        if t is not None and t < at:
            at = t
        return at

    def next_event(self) -> Event | None:
        self._drain(self._now)
        return self._events.popleft() if self._events else None

    # -- routing ------------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        """Translate DHT events, answer replicator events, and hand results back to the
        parts that asked, until all is quiet; called after every input (see the module
        docstring).  Until quiet, because acting may start a query the DHT answers at
        once from its own store, or make the replicator report something."""
        self._now = now
        dht, replicator, consumed = self.dht, self.replicator, self._consumed
        while True:
            event = dht.next_event()
            while event is not None:
                self._dht_event(event)
                event = dht.next_event()
            gossip = replicator.next_event()
            while gossip is not None:
                self._gossip_event(gossip, now)
                gossip = replicator.next_event()
            if not consumed:
                break
            while consumed:
                self._consume(consumed.popleft(), now)
        if self.lifecycle.events:
            self._events.extend(self.lifecycle.events)
            self.lifecycle.events.clear()

    def _dht_event(self, event: DhtEvent) -> None:
        done = self.queries.finish(event)
        if done is None:
            self._events.append(event)
            if isinstance(event, RecordStored) and event.key == self._own_peer_key:
                self._own_record_seen(event.value)
            if isinstance(event, BootstrapFinished):
                self._consumed.append(event)  # the lifecycle's join, maybe
            return
        pending, result = done
        self._events.append(result)
        if isinstance(result, PeerResolved) and result.public_key == self.identity.public_key:
            self._own_record_seen(result.record.raw)
            return  # our own address (or a copy's): nothing to dial
        if isinstance(result, ProvidersResolved):
            self.discovery.providers_seen(result, self._now)
            self.dms.providers_found(result, self._now)
            self.tracker.providers_found(result, self._now)
        if pending.consume or isinstance(result, RecordPublished):
            self._consumed.append(result)

    def _own_record_seen(self, value: object) -> None:
        """A peer record of our key came by (stored here, or our check resolved it): warn of
        another node running with our key, and win our record back when theirs beats it."""
        if not isinstance(value, bytes):
            return
        try:  # the DHT validated it (signature, expiry, key) before handing it over
            record = decode_record(value, now=None, check_signature=False)
        except RecordError:
            return
        now = self._now
        respond = self.instances.observe(record, self.records.peer_record, now)
        self._events.extend(self.instances.events)
        self.instances.events.clear()
        if respond and self.records.publishing:
            # LocalProtocolError: counted, retried after REFUSED_RETRY.  RecordError: a seq we
            # cannot sign (the instance watch refuses to follow one so far ahead).
            with contextlib.suppress(LocalProtocolError, RecordError):
                self.records.publish_peer(now)

    def _gossip_event(self, gossip: GossipEvent, now: float) -> None:
        self._events.append(gossip)
        if isinstance(gossip, PeerDisconnected):
            self.discovery.peer_disconnected(gossip.peer, now)
            if gossip.peer in self.replicator.wanted:
                # A followed author is gone: if the redial (its backoff's own deadline)
                # has not brought it back by then, search for it, not at the next pass.
                self._maintain_at = min(self._maintain_at, now + FIRST_SEARCH_RETRY)
        elif isinstance(gossip, PeerConnected):
            self.outbox.peer_connected(gossip.peer, now)
            self.dms.peer_connected(gossip.peer, now)
            first = self.reachability.first_check_at()
            if first is not None:
                self._maintain_at = min(self._maintain_at, max(first, now))
        elif isinstance(gossip, MentionArrived):
            status, need = self.admission.arrived(gossip, now)
            self.replicator.answer_mention(gossip, status, need, now)
            self._events.extend(self.admission.events)
            self.admission.events.clear()
        elif isinstance(gossip, MentionAnswered):
            self.outbox.answered(gossip, now)
            self._events.extend(self.outbox.events)
            self.outbox.events.clear()
        elif isinstance(gossip, DmArrived):
            status, need = self.dms.arrived(gossip, now)
            self.replicator.answer_dm(gossip, dm_id(gossip.sealed), status, need, now)
            self._dm_events()
        elif isinstance(gossip, DmAnswered):
            self.dms.answered(gossip, now)
            self._dm_events()
        elif isinstance(gossip, EntriesStored):
            self._maintain_at = min(self._maintain_at, now)  # announce a newly held feed soon
            self._devices_changed(now)
            if gossip.feed == self.identity.public_key:
                self._check_own_head(now)
        elif isinstance(gossip, DialBackResult):
            self.reachability.result(gossip, now)
            self._reachability_events(now)
        elif isinstance(gossip, DialBackProbed):
            self.reachability.probed(gossip.peer, now)
            self._reachability_events(now)
        elif isinstance(gossip, RelayReserved) and self.relay_client.answered(gossip, now):
            self._relays_changed(now)
        elif isinstance(gossip, SliceAsked):
            self.tracker.slice_asked(gossip, now)
        elif isinstance(gossip, SliceArrived):
            self.tracker.slice_arrived(gossip, now)
            self._events.extend(self.tracker.events)
            self.tracker.events.clear()
        if isinstance(gossip, PeerConnected):
            self.tracker.peer_connected(gossip.peer, now)

    def _consume(self, result: Result | BootstrapFinished, now: float) -> None:
        if isinstance(result, ProvidersResolved):
            self.discovery.providers_found(result, now)
        elif isinstance(result, PeerResolved):
            if result.record.addr("tcp") is not None:
                self.outbox.recipient_found(result.public_key, now)
                self.dms.recipient_found(result.public_key, now)
                self.discovery.peer_found(result, now)
                self.tracker.peer_resolved(result.public_key, now)
        elif isinstance(result, PeerNotResolved):
            self.tracker.peer_not_resolved(result.public_key, now)
        elif isinstance(result, ProviderAnnounced | NameClaimPublished):
            self.records.stored(result, now)
        elif isinstance(result, RecordPublished):
            self.lifecycle.published(result, now)
        elif isinstance(result, BootstrapFinished):
            self.lifecycle.joined(result, now)
        elif isinstance(result, KeyEventResolved):
            self._key_event(result, now)
        elif isinstance(result, PairingResolved):
            identity = self.pairing.resolved(result.approvals)
            if identity is not None:
                self._become_device(identity, now)
        elif isinstance(result, HashtagsFound):
            self.tracker.found(result, now)
        elif isinstance(result, HashtagAnnounced):
            self.hashtags.stored(result, now)

    # -- inputs ---------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.dht.receive_datagram(data, addr, now)
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        self.dht.handle_timer(now)
        self.lifecycle.handle_timer(now)
        self.records.handle_timer(now)
        if self.instances.check_due(now) and len(self.dht.table):
            self.discovery.resolve(self.identity.public_key, now, consume=True, quorum=SELF_CHECK_QUORUM)
        self.hashtags.handle_timer(now)
        self.tracker.handle_timer(now)
        if self.outbox.due_at is not None and now >= self.outbox.due_at:
            self.outbox.deliver(now)
        if self.dms.due_at is not None and now >= self.dms.due_at:
            self.dms.deliver(now)
            self._dm_events()
        wake = self.reachability.wake_at()
        if wake is not None and now >= wake:
            self.reachability.maintain(now)
            self._reachability_events(now)
        maintain = now >= self._maintain_at
        if maintain:
            self._refresh_priority()
            self.replicator.maintain_now(now)  # one wake-up for both maintenance passes
        self.replicator.handle_timer(now)
        if maintain:
            self._maintain_at = now + MAINTAIN_EVERY
            self._maintain(now)
            due = self.discovery.next_search(self.replicator.wanted)
            self._maintain_at = min([self._maintain_at, *due])
        self._drain(now)

    def _maintain(self, now: float) -> None:
        """Check reachability when due; announce the feeds we hold; search providers for
        followed feeds nobody serves us."""
        self.reachability.maintain(now)
        self._reachability_events(now)
        if self.relay_client.maintain(self.client_mode, now):
            self._relays_changed(now)
        self._check_own_head(now)
        settle = self.own_head.wake_at()
        if settle is not None:
            self._maintain_at = min(self._maintain_at, settle)
        if len(self.dht.table) == 0:
            self._maintain_at = min(self._maintain_at, now + FIRST_CONTACT_POLL)
            return
        wanted = sorted(self.replicator.wanted)
        self.records.maintain(wanted, now)
        self.discovery.maintain(wanted, now)
        key_events = self.key_events.maintain(sorted(self.following()), self.own_identity, now)
        for due in (self.pairing.maintain(now), self.kept.maintain(now), key_events):
            if due is not None:
                self._maintain_at = min(self._maintain_at, due)

    def _set_catching_up(self, on: bool) -> None:
        self.discovery.catching_up = on
        self.replicator.dial_policy.catching_up = on

    def _check_own_head(self, now: float) -> None:
        """Mark our feed's head known once the peers that hold it are caught up with
        (`p2pblog.own_head`), and stop searching for it then."""
        if self.own_head.check(now):
            self._set_catching_up(False)
            self._events.append(OwnHeadKnown(self.store.latest_seq(self.identity.public_key)))

    def _relays_changed(self, now: float) -> None:
        """Our relays changed: the records name the new ones (the peer record at once, the
        feeds' provider records at a maintenance pass run now)."""
        self.records.set_relays(self.relay_client.addrs, now)
        self._maintain_at = min(self._maintain_at, now)

    def _reachability_events(self, now: float) -> None:
        events, self.reachability.events = self.reachability.events, []
        for event in events:
            self._reachability_changed(event, now)

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

    # -- signatures checked off the event loop (`p2pblog.ingest_queue`) -----------------

    def watch_send_backlog(self, backlog: Callable[[int], int]) -> None:
        """The driver tells how many bytes it still has to write on a connection: a relay
        cuts a circuit rather than queue more for a peer that does not read."""
        self.replicator.backlog = backlog

    def offload_verification(self) -> None:
        """The driver checks received entries' signatures on worker threads from now on."""
        self.replicator.offload_verification()

    def verifications_to_make(self) -> list[tuple[int, tuple[Entry, ...]]]:
        """``(token, entries)``: run `p2pblog.verify.first_forgery` on the entries and
        report the result with `entries_verified`."""
        return self.replicator.verifications_to_make()

    def entries_verified(self, token: int, forgery: int | None, now: float) -> None:
        self.replicator.entries_verified(token, forgery, now)
        self._drain(now)

    # -- commands: the DHT --------------------------------------------------------------

    def bootstrap(self, addrs: Sequence[Address], now: float) -> int:
        return self.dht.bootstrap(addrs, now)

    def set_addresses(self, addrs: Sequence[tuple[str, str, int]], now: float | None = None) -> None:
        """The addresses to put in our records (`start` sets them too); a new gossip
        address is checked for reachability at the next pass."""
        self.records.set_addresses(addrs)
        self._watch_address(addrs, self._now if now is None else now)

    def addresses_changed(self, addrs: Sequence[tuple[str, str, int]], now: float) -> None:
        """The node's addresses changed while it runs (a router mapped a port for it): its
        records name the new ones from now on (the peer record is re-signed at once, the
        feeds announced again at the next pass) and reachability is checked again."""
        self.records.set_addresses(addrs)
        self._watch_address(addrs, now)
        self.records.readvertise(now)
        self._maintain_at = min(self._maintain_at, now)
        self._drain(now)

    def _watch_address(self, addrs: Sequence[tuple[str, str, int]], now: float) -> None:
        tcp = tcp_address(addrs)
        if tcp is not None:
            self.reachability.set_address(*tcp, now)

    @property
    def client_mode(self) -> bool:
        return self.dht.client_mode

    def _reachability_changed(self, event: ReachabilityChanged, now: float) -> None:
        """Client mode when nobody can dial us: serve no DHT request and keep out of other
        tables, advertise no address, and dial our followers ourselves to push posts."""
        client = event.state == UNREACHABLE
        self.dht.client_mode = client
        self.records.set_client(client, now)
        self.replicator.dial_policy.client = client
        self.replicator.relay_enabled = self.relay and not client
        self.discovery.client = client
        if self.relay_client.maintain(client, now):
            self._relays_changed(now)
        self._events.append(event)
        if client:
            self._maintain_at = min(self._maintain_at, now)  # search our followers at once

    def publish(self, addrs: Sequence[tuple[str, str, int]], now: float) -> int:
        """Sign our peer record for addrs and store it in the DHT; keep it fresh.
        Ends with `RecordPublished`."""
        self.records.set_addresses(addrs)
        return self.records.publish_peer(now)

    def start_resolve(self, public_key: bytes, now: float) -> int:
        """Find and verify the peer record of public_key.  Ends with `PeerResolved` or
        `PeerNotResolved`."""
        return self.discovery.resolve(public_key, now)

    def announce(self, feed: bytes, addrs: Sequence[tuple[str, str, int]], now: float) -> int:
        """Announce that this node holds ``feed``, reachable at ``addrs``; keep it announced.

        Ends with `ProviderAnnounced`.  The caller announces only feeds it
        holds.  Raises `RecordError` for a bad feed or addresses."""
        return self.records.announce(feed, tuple(addrs), now)

    def withdraw(self, feed: bytes) -> None:
        """Stop announcing ``feed``; copies held elsewhere lapse with the record's expiry."""
        self.records.withdraw(feed)

    def replica_searches(self, now: float) -> int:
        """How many feeds' providers a user may have searched now to count replicas (0 when
        the last such round was too recent: `p2pblog.discovery.REPLICA_SEARCH_EVERY`)."""
        return self.discovery.replica_searches(now)

    def start_find_providers(self, feed: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY) -> int:
        """Find the nodes that hold ``feed``.  Ends with `ProvidersResolved`."""
        return self.discovery.find_providers(feed, now, want=want)

    def claim_name(self, name: str, claimed: int, nonce: bytes, now: float) -> int:
        """Claim ``name`` with a nonce found for ``name_subject(own key, name, claimed)``.

        Saves the claim (so it is republished, also after a restart) and adds
        it in the DHT; ends with `NameClaimPublished`.  Raises `RecordError`
        for a bad name or too little work (and then changes nothing)."""
        return self.records.claim_name(name, claimed, nonce, now)

    def start_resolve_name(self, name: str, now: float) -> int:
        """Find every valid claim of ``name``.  Ends with `NameResolved`."""
        return self.discovery.find_claims(name, now)

    # -- commands: the own feed -----------------------------------------------------

    def follow(self, feed: bytes, now: float) -> Entry | None:
        """Record a follow entry (None if already following) and start replicating feed."""
        if feed == self.identity.public_key:
            raise ValueError("a feed cannot follow itself")
        if feed in self.following():
            return None
        self.check_own_feed_writable(now)
        entry = self.store.append(self.identity, FOLLOW, {"feed": feed}, int(now * 1000))
        self.discovery.follow(feed, now)
        self._maintain_at = now
        self.replicator.set_wanted(self.wanted_feeds(), now)
        self._refresh_priority()
        self.replicator.feed_appended(entry.author, now)
        self._drain(now)
        return entry

    def unfollow(self, feed: bytes, now: float) -> Entry | None:
        """Record an unfollow entry (None if not following) and stop replicating feed."""
        if feed not in self.following():
            return None
        self.check_own_feed_writable(now)
        entry = self.store.append(self.identity, UNFOLLOW, {"feed": feed}, int(now * 1000))
        self.discovery.unfollow(feed)
        if feed in self.records.provided:
            self.records.withdraw(feed)
        self.replicator.set_wanted(self.wanted_feeds(), now)
        self.replicator.feed_appended(entry.author, now)
        self._drain(now)
        return entry

    def check_own_feed_writable(self, now: float) -> None:
        """Raise `OwnFeedRefused` while another node runs with our key: an entry both sign
        at one seq forks the feed, and followers would accept neither's later posts."""
        other = self.instances.running_elsewhere(now)
        if other is None:
            return
        where = ", ".join(f"{host}:{port}" for proto, host, port in other.addrs if proto == "tcp") or "?"
        raise OwnFeedRefused(
            f"another node runs with this identity's key (at {where}): a post from both would fork "
            "the feed and followers would lose posts, so nothing is written. Stop one of them; to "
            "post from two machines, make the second a device (`p2pblog device add` there)"
        )

    def post(self, text: str, now: float, *, reply_to: bytes | None = None) -> Entry:
        """Append a post to the own feed, push it to connected peers, and send mention
        notices to the keys it mentions (a reply mentions the parent's author).

        Raises `p2pblog.errors.EntryError` for a post the protocol refuses (too long, ...),
        `OwnFeedRefused` while another node runs with our key.
        """
        self.check_own_feed_writable(now)
        return self._appended(
            actions.post(self.store, self.identity, text, int(now * 1000), reply_to=reply_to), now
        )

    def delete(self, target: bytes, now: float) -> Entry:
        """Retract one of our own posts (followers stop showing its text) and tell the
        keys it mentioned.  Raises `EntrySchemaError` for an entry that is not our own
        post or is already deleted."""
        self.check_own_feed_writable(now)
        return self._appended(actions.delete(self.store, self.identity, target, int(now * 1000)), now)

    def set_profile(self, fields: dict[str, str], now: float) -> Entry:
        """Append a profile entry setting ``fields`` (name, bio)."""
        self.check_own_feed_writable(now)
        return self._appended(actions.set_profile(self.store, self.identity, fields, int(now * 1000)), now)

    def _appended(self, entry: Entry, now: float) -> Entry:
        self.replicator.feed_appended(entry.author, now)
        self.hashtags.changed(now, entry)
        self.outbox.sync(now)
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
        self.outbox.sync(now)
        self._drain(now)
        return new, unfollowed

    def unblock(self, key: bytes) -> bool:
        self.replicator.unblock(key)
        return self.store.unblock(key)

    # -- mention notices --------------------------------------------------------------

    def pending_mentions(self) -> list[tuple[bytes, bytes, int]]:
        """Notices not yet acknowledged: ``(entry id, recipient, attempts)``."""
        return self.outbox.pending()

    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]:
        """``(id, recipient, bits)`` of mention notices and direct messages that need a
        proof-of-work stamp.

        The driver finds a nonce (`identity.pow.solve` over NOTICE_DOMAIN and
        ``notice_subject(recipient, id)``) and reports it with `stamp_made`."""
        return self.outbox.stamps_to_make() + self.dms.stamps_to_make()

    def stamp_made(self, entry_id: bytes, recipient: bytes, nonce: bytes, now: float) -> None:
        self.outbox.stamp_made(entry_id, recipient, nonce, now)
        self.dms.stamp_made(entry_id, recipient, nonce, now)
        self._dm_events()
        self._drain(now)

    # -- devices (`p2pblog.devices`, `p2pblog.pairing`) ----------------------------------

    def approve_device(self, code: PairingCode, now: float, *, admin: bool = False) -> Entry | None:
        """Certify the device of a pairing code (a ``device`` entry; None if it is certified
        already) and publish the approval it is waiting for.  ValueError for our own key or
        a device of another identity."""
        own = self.identity.public_key
        identity = self.own_identity
        if code.device in (own, identity):
            raise ValueError("that pairing code is this node's own")
        if self.store.identity_of(code.device) not in (code.device, identity):
            raise ValueError("that device belongs to another identity")
        known = {d.key: d for d in self.store.devices_of(identity)}
        if identity != own and not (own in known and known[own].admin and known[own].after is None):
            raise ValueError("this device may not approve devices: approve on the identity's root device")
        entry = None
        if code.device not in known or known[code.device].after is not None:
            body = {"admin": admin, "device": code.device, "name": code.name or "device"}
            entry = self.store.append(self.identity, DEVICE, body, int(now * 1000))
        self.approvals.approve(code, now)
        if entry is not None:
            self._appended(entry, now)
        self._devices_changed(now)
        self._drain(now)
        return entry

    def revoke_device(self, device: bytes, now: float) -> Entry:
        """Revoke a device of our identity after the last entry of it we hold."""
        identity = self.own_identity
        known = {d.key: d for d in self.store.devices_of(identity)}
        if device not in known:
            raise ValueError("not a device of this identity")
        if known[device].after is not None:
            raise ValueError("that device is revoked already")
        body = {"after": self.store.latest_seq(device), "device": device}
        entry = self.store.append(self.identity, REVOKE, body, int(now * 1000))
        self._appended(entry, now)
        self._devices_changed(now)
        self._drain(now)
        return entry

    def _key_event(self, result: KeyEventResolved, now: float) -> None:
        """A followed identity's rotations from the DHT (any key may file one): store those
        that reveal the key the identity committed to (a forgery cannot), and replicate the
        new root."""
        identity = result.identity
        before = self.store.root_chain(identity)[-1][0]
        for raw in result.entries[:MAX_KEYEVENTS_TRIED]:
            try:
                entry = decode_entry(raw)
            except EntryError:
                self.records.stats["keyevents.invalid"] += 1
                continue
            body = entry.body
            if entry.kind != ROTATE or body.get("identity") != identity or entry.author != body.get("new"):
                self.records.stats["keyevents.invalid"] += 1
                continue
            if key_digest(body["new"]) != self.store.current_commitment(identity):
                continue  # not the committed key (or an old rotation, already applied)
            try:
                self.store.ingest_entries([entry], now_ms=int(now * 1000))
            except (StorageFull, StoreDamaged):
                return
        after = self.store.root_chain(identity)[-1][0]
        if after != before:
            self.records.stats["keyevents.rotated"] += 1
            self._events.append(RootRotated(identity, after))
        self._devices_changed(now)

    def _become_device(self, identity: bytes, now: float) -> None:
        """Our pending pairing was approved: consent, and follow the identity's feeds.  A
        store that refuses the write (full, damaged, head unknown) leaves the pairing pending:
        the next lookup tries again."""
        own = self.identity.public_key
        try:
            self.store.append(self.identity, DEVICE_OF, {"identity": identity}, int(now * 1000))
        except (StorageFull, StoreDamaged, EntryError) as exc:
            self.records.stats[f"pairing.refused_{type(exc).__name__}"] += 1
            return
        self.store.set_setting(IDENTITY_SETTING, identity.hex())
        self.store.set_setting(PENDING_SETTING, "")
        self.replicator.feed_appended(own, now)
        if identity != own and identity not in self.following():
            # As `follow`, without draining: this runs inside `_drain`.
            self.store.append(self.identity, FOLLOW, {"feed": identity}, int(now * 1000))
            self.discovery.follow(identity, now)
            self._maintain_at = now
        self._devices_seen = -1
        self._devices_changed(now)
        self._events.append(DevicePaired(identity))

    # -- direct messages ----------------------------------------------------------------

    def send_dm(self, recipient: bytes, text: str, now: float) -> bytes:
        """Seal ``text`` to ``recipient`` and deliver it (`p2pblog.dms`); returns its id.
        ValueError for a message the protocol refuses."""
        did = self.dms.send(recipient, text, now)
        self._dm_events()
        self._drain(now)
        return did

    def _dm_events(self) -> None:
        self._events.extend(self.dms.events)
        self.dms.events.clear()

    # -- track (issue 19) ---------------------------------------------------------------

    def track_changed(self, now: float) -> None:
        """The tracked terms in the store changed: look up new tags at once."""
        self.tracker.reload(now)
        self._drain(now)
