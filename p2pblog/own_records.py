"""Our own signed DHT records: the peer record, provider announcements, name claims.

Theory of operation
-------------------
A node keeps three kinds of record of its own alive in the DHT, each
re-signed and stored again on a timer well inside its lifetime:

=================  ==========================  ============  ================
record             where                       lifetime      re-signed every
=================  ==========================  ============  ================
peer record        STORE at ``peer_key(own)``  `PEER_TTL`    `PEER_REPUBLISH`
provider record    ADD_PROVIDER, per feed      `PROVIDER_RECORD_TTL`  `PROVIDER_REPUBLISH`
name claim         ADD_PROVIDER, per name      `NAME_TTL`    `NAME_REPUBLISH`
=================  ==========================  ============  ================

Each kind has one `RepublishJob` (rust-libp2p kad's ``PutRecordJob`` /
``AddProviderJob``): when each of its records is next due, polled by
`OwnRecords.handle_timer`.  One rule picks every new record's ``seq``
(`_next_seq`): above our last one, above the milliseconds of ``now`` (so a
restarted node's record supersedes the old one), and above any record of
ours a peer handed back, which an earlier run with a clock ahead may have
signed and which would otherwise win.  The peer record's seq is also above
the last one this home signed and every one of our key seen
(`p2pblog.instances.InstanceWatch.seq_floor`), and names the home's node
instance, so another node running with our key is noticed.

Besides the timers:

* the peer record is published again when the routing table has doubled
  since it was (the k closest nodes to its key have changed: welcome stores,
  Kademlia paper section 2.5, re-home only some of it);
* `announce_held` announces, at each maintenance pass, every wanted feed we
  hold and have not announced yet; an announce or claim that reached no node
  is retried after `ANNOUNCE_RETRY` (`stored`);
* name claims wait for a first DHT contact (polled every `FIRST_CONTACT_POLL`).

Our own DHT store may refuse one of our records (`LocalProtocolError` from
``start_put`` / ``start_add_provider``: the provider or record store is
full, or holds a better value).  A republication or announcement the node
makes on its own (timers, maintenance) must not fail the node for it: the
refusal is counted in ``stats`` (``records.refused.<kind>``) and the record
is tried again after `REFUSED_RETRY`.  A command (`claim_name`, the
``announce`` / ``publish`` commands) still raises, after scheduling the
same retry, so its caller can say why.

Own name claims live in the store (so a restart republishes them); the
current records are in memory (``peer_record``, ``provider_records``,
``name_records``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final, Generic, TypeVar

from dht import DhtCore
from identity import Identity
from identity.errors import LocalProtocolError
from identity.records import (
    PEER,
    PROVIDER,
    Record,
    create_name_claim,
    create_record,
    decode_record,
    name_key,
    peer_key,
    provider_key,
)
from p2pblog.events import NameClaimPublished, ProviderAnnounced
from p2pblog.instances import InstanceWatch
from p2pblog.queries import AnnounceProvider, PendingQueries, PublishClaim, PublishPeerRecord
from p2pblog.store import Store

#: Seconds a peer record is valid after signing, and between re-signings.
PEER_TTL: Final = 2 * 3600
PEER_REPUBLISH: Final = 30 * 60
#: Seconds a provider record is valid after signing, and between re-signings.
#: Longer than a peer record's: a node announces every feed it holds, and a
#: stale provider costs a finder one failed dial, not a wrong identity.
PROVIDER_RECORD_TTL: Final = 6 * 3600
PROVIDER_REPUBLISH: Final = 2 * 3600
#: Seconds a name claim is valid after signing, and between re-signings.
NAME_TTL: Final = 24 * 3600
NAME_REPUBLISH: Final = 4 * 3600
#: Least seconds between two publishes of the peer record because the routing table grew.
REPUBLISH_GROWN_AFTER: Final = 30.0
#: Seconds before retrying an announce or claim that reached no node.
ANNOUNCE_RETRY: Final = 15.0
#: Seconds between attempts at something that needs a DHT contact while the table is empty.
FIRST_CONTACT_POLL: Final = 1.0
#: Seconds before trying again a record our own DHT store refused (full, or holds a better one).
REFUSED_RETRY: Final = 5 * 60.0

Addrs = tuple[tuple[str, str, int], ...]
K = TypeVar("K")


class RepublishJob(Generic[K]):
    """When each record of one kind is next due to be re-signed and stored again."""

    def __init__(self) -> None:
        self.due: dict[K, float] = {}

    def __contains__(self, key: K) -> bool:
        return key in self.due

    def schedule(self, key: K, at: float) -> None:
        self.due[key] = at

    def asap(self, key: K, at: float) -> None:
        """Due no later than ``at``."""
        self.due[key] = min(self.due.get(key, at), at)

    def cancel(self, key: K) -> None:
        self.due.pop(key, None)

    def poll(self, now: float) -> list[K]:
        """The keys due at ``now`` (their schedule is left to the caller)."""
        return [key for key, at in self.due.items() if now >= at]


class OwnRecords:
    """Signs, stores and keeps fresh the node's own peer record, provider records and name claims."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        dht: DhtCore,
        queries: PendingQueries,
        now: float,
        *,
        watch: InstanceWatch | None = None,
        peer_republish: float = PEER_REPUBLISH,
    ):
        self.identity = identity
        #: Our node instance and the seq floor of our peer records (`p2pblog.instances`).
        self.watch = watch
        #: Seconds between re-signings of the peer record (`PEER_REPUBLISH`; shorter in tests).
        self.peer_republish = peer_republish
        self.store = store
        self.dht = dht
        self.queries = queries
        self.addrs: Addrs = ()
        self.peer_record: Record | None = None
        #: Client mode (`set_client`): nobody can dial our addresses, so no record names them;
        #: the records name the relays that reach us instead (`set_relays`), if any.
        self.client = False
        self.relay_addrs: Addrs = ()
        #: Our current provider record per feed we announce, and the addresses it names.
        self.provider_records: dict[bytes, Record] = {}
        self.provided: dict[bytes, Addrs] = {}
        #: Our name claims: the current signed record, and (claimed, nonce) to re-sign it.
        self.name_records: dict[str, Record] = {}
        self.claims: dict[str, tuple[int, bytes]] = {
            name: (claimed, nonce) for name, claimed, nonce, _ in store.name_claims()
        }
        #: ``records.refused.<kind>``: own records our DHT store refused (retried later).
        self.stats: Counter[str] = Counter()
        self.peer_job: RepublishJob[None] = RepublishJob()
        self.provider_job: RepublishJob[bytes] = RepublishJob()
        self.claim_job: RepublishJob[str] = RepublishJob()
        for name in self.claims:
            self.claim_job.schedule(name, now)
        #: Routing-table size and time when the peer record was last published.
        self._published_table = 0
        self._published_at = 0.0

    def next_deadline(self) -> float | None:
        # Asked after every input: no temporary lists.
        at: float | None = None
        for due in (self.peer_job.due, self.provider_job.due, self.claim_job.due):
            if due:
                t = min(due.values())
                if at is None or t < at:
                    at = t
        return at

    def _next_seq(self, last: Record | None, now: float, key: bytes | None = None) -> int:
        seqs = [int(now * 1000)]
        if last is not None:
            seqs.append(last.seq + 1)
        if key is not None:
            for signer, value in self.dht.providers.get_with_ids(key, now):
                if signer == self.identity.public_key:
                    seqs.append(decode_record(value, now=None).seq + 1)
        return max(seqs)

    # -- the peer record --------------------------------------------------------------

    def publish_peer(self, now: float, *, consume: bool = False) -> int:
        """Sign our peer record for `addrs` and store it; re-signed every `PEER_REPUBLISH`."""
        seq = self._next_seq(self.peer_record, now)
        watch = self.watch
        if watch is not None:
            seq = max(seq, watch.seq_floor)
        self.peer_record = create_record(
            self.identity,
            type=PEER,
            seq=seq,
            expires=int(now) + PEER_TTL,
            addrs=self.advertised,
            instance=None if watch is None else watch.instance,
        )
        if watch is not None:
            watch.signed(self.peer_record, now)
        self.peer_job.schedule(None, now + self.peer_republish)
        self._published_table = len(self.dht.table)
        self._published_at = now
        try:
            qid = self.dht.start_put(peer_key(self.identity.public_key), self.peer_record.raw, now)
        except LocalProtocolError:
            self._refused("peer", self.peer_job, None, now)
            raise
        return self.queries.add(qid, PublishPeerRecord(seq, consume))

    # -- provider records -------------------------------------------------------------

    def announce(self, feed: bytes, addrs: Addrs, now: float, *, consume: bool = False) -> int:
        """Sign a provider record for feed at addrs and add it; re-signed every `PROVIDER_REPUBLISH`."""
        key = provider_key(feed)
        record = create_record(
            self.identity,
            type=PROVIDER,
            seq=self._next_seq(self.provider_records.get(feed), now, key),
            expires=int(now) + PROVIDER_RECORD_TTL,
            addrs=addrs,
            feed=feed,
        )
        self.provider_records[feed] = record
        self.provided[feed] = addrs
        self.provider_job.schedule(feed, now + PROVIDER_REPUBLISH)
        try:
            qid = self.dht.start_add_provider(key, record.raw, now)
        except LocalProtocolError:
            self._refused("provider", self.provider_job, feed, now)
            raise
        return self.queries.add(qid, AnnounceProvider(feed, record.seq, consume))

    def withdraw(self, feed: bytes) -> None:
        """Stop announcing feed; copies held elsewhere lapse with the record's expiry."""
        self.provided.pop(feed, None)
        self.provider_job.cancel(feed)
        self.provider_records.pop(feed, None)
        self.dht.providers.remove(provider_key(feed), self.identity.public_key)

    # -- name claims ------------------------------------------------------------------

    def claim_name(self, name: str, claimed: int, nonce: bytes, now: float) -> int:
        """Sign a claim of name (raises `RecordError` for a bad name or too little work), save
        it in the store, and add it in the DHT."""
        record = self._sign_claim(name, claimed, nonce, now)
        self.store.save_name_claim(name, claimed, nonce, record.work)
        self.claims[name] = (claimed, nonce)
        return self._add_claim(record, now, consume=False)

    def _sign_claim(self, name: str, claimed: int, nonce: bytes, now: float) -> Record:
        seq = self._next_seq(self.name_records.get(name), now, name_key(name))
        return create_name_claim(
            self.identity, name=name, claimed=claimed, nonce=nonce, seq=seq, expires=int(now) + NAME_TTL
        )

    def _add_claim(self, record: Record, now: float, *, consume: bool) -> int:
        assert record.name is not None
        self.name_records[record.name] = record
        self.claim_job.schedule(record.name, now + NAME_REPUBLISH)
        try:
            qid = self.dht.start_add_provider(name_key(record.name), record.raw, now)
        except LocalProtocolError:
            self._refused("claim", self.claim_job, record.name, now)
            raise
        return self.queries.add(qid, PublishClaim(record.name, record.seq, consume))

    def _refused(self, kind: str, job: RepublishJob[K], key: K, now: float) -> None:
        self.stats[f"records.refused.{kind}"] += 1
        job.schedule(key, now + REFUSED_RETRY)

    # -- timers and maintenance -------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Re-sign and store again every record that is due (a refused one: see the docstring)."""
        if self.peer_job.poll(now) and self.publishing:
            with contextlib.suppress(LocalProtocolError):  # counted, retried after REFUSED_RETRY
                self.publish_peer(now)
        for feed in self.provider_job.poll(now):
            with contextlib.suppress(LocalProtocolError):
                self.announce(feed, self.provided[feed], now)
        for name in self.claim_job.poll(now):
            if len(self.dht.table):
                with contextlib.suppress(LocalProtocolError):
                    self._add_claim(self._sign_claim(name, *self.claims[name], now), now, consume=True)
            else:
                self.claim_job.schedule(name, now + FIRST_CONTACT_POLL)

    def maintain(self, wanted: Iterable[bytes], now: float) -> None:
        """A maintenance pass (the table is not empty): republish a peer record the grown
        network no longer holds at the closest nodes; announce the ``wanted`` feeds we hold
        (our own, and those with entries in the store) that are not announced yet.
        In client mode without a relay, nothing."""
        if not self.publishing:
            return
        if (
            self.peer_record is not None
            and len(self.dht.table) >= 2 * max(1, self._published_table)
            and now >= self._published_at + REPUBLISH_GROWN_AFTER
        ):
            with contextlib.suppress(LocalProtocolError):  # counted, retried after REFUSED_RETRY
                self.publish_peer(now)
        if any(proto in ("tcp", "relay") for proto, _, _ in self.advertised):
            own = self.identity.public_key
            for feed in wanted:
                if feed not in self.provided and (feed == own or self.store.latest_seq(feed) > 0):
                    # Counted; `provided` holds it, so the provider job retries it.
                    with contextlib.suppress(LocalProtocolError):
                        self.announce(feed, self.advertised, now, consume=True)

    def stored(self, result: ProviderAnnounced | NameClaimPublished, now: float) -> None:
        """The end of an announce or claim we consume: retry one that reached no node."""
        if result.stored_at:
            return
        if isinstance(result, ProviderAnnounced):
            if result.feed in self.provided:
                self.provider_job.schedule(result.feed, now + ANNOUNCE_RETRY)
        elif result.name in self.claims:
            self.claim_job.asap(result.name, now + ANNOUNCE_RETRY)

    def set_addresses(self, addrs: Sequence[tuple[str, str, int]]) -> None:
        self.addrs = tuple(addrs)

    @property
    def advertised(self) -> Addrs:
        """The addresses our records name: ours, or in client mode the relays'."""
        return self.relay_addrs if self.client else self.addrs

    @property
    def publishing(self) -> bool:
        return bool(self.advertised)

    def set_relays(self, relays: Sequence[tuple[str, int]], now: float) -> None:
        """The relays that hold a reservation for us (client mode): our records name them;
        the peer record is re-signed now and the feeds announced again at the next pass."""
        addrs = tuple(("relay", host, port) for host, port in relays)
        if addrs == self.relay_addrs:
            return
        self.relay_addrs = addrs
        if not self.client:
            return
        for feed in list(self.provided):
            self.withdraw(feed)
        if addrs:
            with contextlib.suppress(LocalProtocolError):
                self.publish_peer(now)
        else:
            self.peer_job.cancel(None)

    def readvertise(self, now: float) -> None:
        """Our addresses changed: re-sign the peer record now (when we publish one) and
        announce the feeds again at the next pass, at the new addresses."""
        for feed in list(self.provided):
            self.withdraw(feed)
        if self.publishing and self.peer_record is not None:
            with contextlib.suppress(LocalProtocolError):  # counted, retried after REFUSED_RETRY
                self.publish_peer(now)

    def set_client(self, client: bool, now: float) -> None:
        """Client mode on: stop publishing our peer record and announcing feeds (they would
        name an address nobody can dial; the copies out there lapse at their expiry).  Off:
        publish the peer record again now; the next pass announces the feeds again."""
        if client == self.client:
            return
        self.client = client
        for feed in list(self.provided):
            self.withdraw(feed)  # the next pass announces them at the new addresses
        if client:
            self.stats["client_mode.entered"] += 1
        if self.advertised:
            with contextlib.suppress(LocalProtocolError):  # counted, retried after REFUSED_RETRY
                self.publish_peer(now)
        else:
            self.peer_job.cancel(None)
