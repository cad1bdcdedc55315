"""The kinds of DHT query, one class each: what it asks, what it keeps, how it ends.

Theory of operation
-------------------
A query is what one command (or one internal job) of the `DhtCore` is doing
on the network.  Every query is a *walk* towards a target (an iterative
lookup from `dht.lookup`); some have a phase before or after it:

===================  ===================================================  ======================
class                phases                                               result event
===================  ===================================================  ======================
`LookupQuery`        walk (FIND_NODE)                                     LookupFinished
`BootstrapQuery`     PINGING seeds -> LOOKING_UP own id -> REFRESHING     BootstrapFinished
`RefreshQuery`       walk to a random id in a stale bucket (paper 2.3)    none
`GetQuery`           walk (FIND_VALUE) to a quorum of sources, then       ValueFound / -NotFound
                     cache the selector's pick (2.3)
`PutQuery`           walk -> STORING: STORE at the k closest              PutFinished
`RepublishQuery`     as PutQuery (paper 2.5 replication)                  none
`AddProviderQuery`   walk -> STORING: ``p2pb_add_provider`` at the k      ProvidersAdded
                     closest
`ReannounceQuery`    as AddProviderQuery, for our own provider values     none
`GetProvidersQuery`  walk (``p2pb_get_providers``)                        ProvidersFound
===================  ===================================================  ======================

The STORING kinds (`StoreQuery` and its subclasses) skip the walk when the
core remembers a recent walk to the same key (`DhtConfig.walk_reuse`).

(This is rust-libp2p kad's ``QueryInfo``: per-kind state, each kind with its
own request and completion.)  Every class answers the same questions for
its walk: `Query.new_lookup` (which lookup machine, seeded how),
`Query.step_request` (what to send to the next peer) and
`Query.on_step_answer` (what an answer means).  ``lookup`` is the walk while
it runs and None otherwise, so "is this query walking?" is one attribute
test on the hot path.  How each kind *ends* is its own method, named for
the kind: `LookupQuery.result`, `GetQuery.result` + `GetQuery.cache_targets`,
`StoreQuery.result`, the counters of `BootstrapQuery`.

Reads hear more than one source.  The validator accepts any value the
``kademlia`` package would for keys it cannot check, so for a p2pblog key a
liar next to it can answer FIND_VALUE with junk, a replayed older record
or a forged one.  A forged value fails validation and counts as a failed
step; the walk goes on.  Junk and old records are valid values, so a get
does not end at the first one: it walks until `dht.lookup.READ_QUORUM`
distinct addresses answered with a value (or the walk ran out of peers,
i.e. the k closest that respond all answered), and the selector (p2pblog:
a valid record beats an opaque value, the highest seq wins) picks among
them.  A get that asked for a larger quorum keeps it; a copy we hold
still answers a quorum-1 get alone, as it passed our own validator and
selector when it was stored.  A providers search likewise stops at
``want`` providers only once providers came from `READ_QUORUM` addresses:
anyone may sign a provider record or a name claim, so one liar could fill
``want`` on its own.  The lookups themselves (`dht.lookup`) keep every
address named for an id, so a liar naming the key's real neighbours at
dead addresses does not hide them.  What this guarantees: a get returns
the newest record when an honest holder is reachable and fewer than
`READ_QUORUM` of the value-answering sources lie; liars that answer with
no value, bogus contacts or forged values do not count, however many.
The k closest a put stores at and a walk ends at hold at most
`dht.routing.MAX_CLOSEST_PER_NETWORK` (2) nodes of one network while
others are known, fewer than `READ_QUORUM`: k liars next to a key from one
/24 get two copies of a put, the honest nodes beside them the rest, and a
get walks past them to those honest holders.

Queries are plain state: they send nothing and emit nothing.  The core
owns the message ids, the outgoing datagrams and the event queue; it asks a
query for its requests and its result event, and routes each RPC outcome to
it by `dht.rpc.Purpose`.  A query that needs a store (a get validates values
against the record store, a providers search against the provider store)
is given that store when it is made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, TypedDict

from dht import wire
from dht.events import (
    BootstrapFinished,
    LookupFinished,
    ProvidersAdded,
    ProvidersFound,
    PutFinished,
    ValueFound,
    ValueNotFound,
)
from dht.ids import Contact
from dht.lookup import READ_QUORUM, ClosestPeersLookup, ProvidersLookup, ValueLookup
from dht.providers import ProviderStore
from dht.records import RecordStore, Selector
from dht.wire import Value


class WalkParams(TypedDict):
    """How every lookup of one core is shaped (from its `DhtConfig`): the lookups' keywords."""

    k: int
    alpha: int
    peer_timeout: float
    local_id: bytes | None


@dataclass(frozen=True, slots=True)
class ProvidersAnswer:
    """A parsed ``p2pb_get_providers`` answer (values not yet validated)."""

    values: tuple[bytes, ...]
    contacts: tuple[Contact, ...]
    #: First-seen times parallel to ``values`` (None: the answer had none).
    seen: tuple[int, ...] | None = None


#: What an answered RPC carried, parsed by its request's kind: a value or
#: contacts (FIND_VALUE), contacts (FIND_NODE), a `ProvidersAnswer`, a bool
#: (STORE, ``p2pb_add_provider``) or None (PING).
Answer = Value | tuple[Contact, ...] | ProvidersAnswer | None


class Phase(enum.Enum):
    PINGING = "pinging"
    LOOKING_UP = "looking up"
    STORING = "storing"
    #: A bootstrap whose own lookup ended, waiting for the refreshes it started.
    REFRESHING = "refreshing"


class Query:
    """A walk towards ``target`` with FIND_NODE; the base of every kind."""

    __slots__ = ("lookup", "query_id", "target")

    #: `PeerMisbehaved` reason for each invalid item `on_step_answer` counts.
    invalid_answer: ClassVar[str] = "invalid answer"

    def __init__(self, query_id: int, target: bytes) -> None:
        self.query_id = query_id
        self.target = target
        #: The walk while it runs; None before it starts and once it ended.
        self.lookup: ClosestPeersLookup | None = None

    def new_lookup(self, seeds: list[Contact], params: WalkParams, now: float) -> ClosestPeersLookup:
        """The lookup machine for this query's walk, seeded with ``seeds`` (the table's closest)."""
        del now
        return ClosestPeersLookup(self.target, seeds, **params)

    def step_request(self, msg_id: bytes, local_id: bytes) -> wire.Request:
        """The request for the next peer of the walk."""
        return wire.FindNode(msg_id, local_id, self.target)

    def on_step_answer(self, lookup: ClosestPeersLookup, contact: Contact, answer: Answer, now: float) -> int:
        """Feed an answer to the walk; returns how many invalid items it carried.

        Each invalid item is a `PeerMisbehaved` (``invalid_answer``) for the core to report.
        """
        if isinstance(answer, tuple):
            lookup.on_success(contact.node_id, answer, now)
        else:
            # A value in answer to FIND_NODE cannot parse; treat oddities as failure.
            lookup.on_failure(contact.node_id, now)
        return 0


class LookupQuery(Query):
    """``start_lookup``: the k closest nodes to a target."""

    __slots__ = ()

    def result(self, lookup: ClosestPeersLookup, closest: tuple[Contact, ...]) -> LookupFinished:
        return LookupFinished(
            self.query_id, self.target, closest, lookup.queried, lookup.failed_count(), lookup.hops
        )


class RefreshQuery(Query):
    """A bucket refresh (paper 2.3): a walk to a random id in the bucket; no result."""

    __slots__ = ("parent",)

    def __init__(self, query_id: int, target: bytes) -> None:
        super().__init__(query_id, target)
        #: The `BootstrapQuery` that waits for this refresh, if any.
        self.parent: int | None = None


class BootstrapQuery(Query):
    """``bootstrap``: ping the seeds, walk to our own id, refresh the farther buckets."""

    __slots__ = ("closest", "pending", "phase", "seed_contacts", "seeds_answered")

    def __init__(self, query_id: int, target: bytes, seed_count: int) -> None:
        super().__init__(query_id, target)
        self.phase = Phase.PINGING
        #: PINGING: seed pings not yet answered or failed; REFRESHING: refreshes running.
        self.pending = seed_count
        self.seeds_answered = 0
        self.seed_contacts: list[Contact] = []
        #: The own-id walk's result, reported once the refreshes are done.
        self.closest: tuple[Contact, ...] = ()

    def new_lookup(self, seeds: list[Contact], params: WalkParams, now: float) -> ClosestPeersLookup:
        self.phase = Phase.LOOKING_UP
        seeds.extend(self.seed_contacts)
        return super().new_lookup(seeds, params, now)

    def on_seed_answered(self, contact: Contact) -> bool:
        """A seed answered its ping; True when no ping is left (time to walk)."""
        self.seeds_answered += 1
        self.seed_contacts.append(contact)
        self.pending -= 1
        return self.pending == 0

    def on_seed_failed(self) -> bool:
        """A seed ping failed; True when no ping is left (time to walk)."""
        self.pending -= 1
        return self.pending == 0

    def refreshing(self, closest: tuple[Contact, ...]) -> None:
        """The own-id walk found ``closest``; refreshes follow (`refresh_started`)."""
        self.phase = Phase.REFRESHING
        self.closest = closest

    def refresh_started(self) -> None:
        self.pending += 1

    def refresh_done(self) -> bool:
        """One of our refreshes ended; True when it was the last."""
        self.pending -= 1
        return self.pending == 0

    def result(self, closest: tuple[Contact, ...] = ()) -> BootstrapFinished:
        return BootstrapFinished(self.query_id, self.seeds_answered, self.closest or closest)


class GetQuery(Query):
    """``start_get``: FIND_VALUE until valid values from ``max(quorum, READ_QUORUM)`` sources
    are in; the selector picks."""

    __slots__ = ("quorum", "records", "selector")

    invalid_answer: ClassVar[str] = "invalid returned value"

    def __init__(
        self, query_id: int, key: bytes, quorum: int, records: RecordStore, selector: Selector
    ) -> None:
        super().__init__(query_id, key)
        self.quorum = quorum
        self.records = records
        self.selector = selector

    def new_lookup(self, seeds: list[Contact], params: WalkParams, now: float) -> ValueLookup:
        local = self.records.get(self.target, now)
        # A copy we hold passed our validator and selector: it alone answers
        # a quorum-1 read, as before.  A read from the network hears at
        # least READ_QUORUM sources (or the k closest), so that one liar's
        # value, valid or not, is weighed against honest ones by the selector.
        quorum = self.quorum if local is not None and self.quorum == 1 else max(self.quorum, READ_QUORUM)
        lookup = ValueLookup(self.target, seeds, quorum=quorum, **params)
        if local is not None:
            lookup.add_local_value(local)
        return lookup

    def step_request(self, msg_id: bytes, local_id: bytes) -> wire.Request:
        return wire.FindValue(msg_id, local_id, self.target)

    def on_step_answer(self, lookup: ClosestPeersLookup, contact: Contact, answer: Answer, now: float) -> int:
        assert isinstance(lookup, ValueLookup)
        if isinstance(answer, tuple):
            lookup.on_success(contact.node_id, answer, now)
        elif answer is None or isinstance(answer, ProvidersAnswer):
            lookup.on_failure(contact.node_id, now)
        elif self.records.is_valid(self.target, answer, now):
            lookup.on_value(contact.node_id, answer, now)
        else:
            lookup.on_failure(contact.node_id, now)
            return 1
        return 0

    def result(self, lookup: ValueLookup) -> ValueFound | ValueNotFound:
        if not lookup.found:
            return ValueNotFound(self.query_id, self.target, lookup.queried)
        values = [v for _, v in lookup.found]
        best = values[self._select(values)]
        return ValueFound(self.query_id, self.target, best, len(values), lookup.queried, lookup.value_hops)

    def cache_targets(self, lookup: ValueLookup, best: Value) -> list[Contact]:
        """Where to STORE the value found (fire and forget).

        Paper 2.3: the nearest node that answered without it; also the nodes
        that returned a worse value, to correct them (libp2p does this).
        """
        targets = lookup.peers_without_value()[:1]
        targets += [c for c, v in lookup.found if c is not None and (type(v), v) != (type(best), best)]
        return targets

    def _select(self, values: list[Value]) -> int:
        if len(values) == 1:
            return 0
        index = self.selector(self.target, values)
        if not 0 <= index < len(values):
            raise IndexError(f"selector returned {index} for {len(values)} values")
        return index


class GetProvidersQuery(Query):
    """``start_get_providers``: gather providers until ``want`` are in or the k closest answered."""

    __slots__ = ("providers", "seen", "want")

    invalid_answer: ClassVar[str] = "invalid returned provider"

    def __init__(
        self, query_id: int, key: bytes, want: int, providers: ProviderStore, *, seen: bool = False
    ) -> None:
        super().__init__(query_id, key)
        self.want = want
        self.providers = providers
        self.seen = seen

    def new_lookup(self, seeds: list[Contact], params: WalkParams, now: float) -> ProvidersLookup:
        lookup = ProvidersLookup(self.target, seeds, want=self.want, sources=READ_QUORUM, **params)
        held = self.providers.get_with_seen(self.target, now)
        lookup.add_providers([(pid, value) for pid, value, _ in held])
        if self.seen:
            for pid, _, first in held:
                lookup.witness(pid, None, int(first))
        return lookup

    def step_request(self, msg_id: bytes, local_id: bytes) -> wire.Request:
        return wire.GetProviders(msg_id, local_id, self.target, self.seen)

    def on_step_answer(self, lookup: ClosestPeersLookup, contact: Contact, answer: Answer, now: float) -> int:
        assert isinstance(lookup, ProvidersLookup)
        if not isinstance(answer, ProvidersAnswer):
            return super().on_step_answer(lookup, contact, answer, now)
        # An invalid value is the answering peer's fault (it should have
        # validated it) but not a reason to distrust its closer peers: the
        # value is dropped and counted, the rest of the answer is used.  Of
        # two values of one provider the selector's pick is kept.
        invalid = 0
        chosen: dict[bytes, bytes] = {}
        witnessed: list[tuple[bytes, int]] = []
        for i, value in enumerate(answer.values):
            pid = self.providers.provider_id(self.target, value, now)
            if pid is None:
                invalid += 1
                continue
            if answer.seen is not None:
                witnessed.append((pid, answer.seen[i]))
            old = chosen.get(pid, lookup.providers.get(pid))
            if old is None or (old != value and self.providers.prefers(self.target, old, value)):
                chosen[pid] = value
        valid = len(answer.values) > invalid
        if lookup.on_providers(contact.node_id, list(chosen.items()), answer.contacts, now, vouched=valid):
            for pid, first in witnessed if self.seen else ():
                lookup.witness(pid, contact.node_id, first)
        return invalid

    def result(self, lookup: ProvidersLookup) -> ProvidersFound:
        values = tuple(lookup.providers.values())
        seen = (
            tuple(tuple(lookup.seen.get(pid, {}).values()) for pid in lookup.providers) if self.seen else ()
        )
        return ProvidersFound(self.query_id, self.target, values, lookup.queried, seen)


class StoreQuery(Query):
    """A walk, then one store request at each of the k closest (or a recent walk's result)."""

    __slots__ = ("failed", "pending", "phase", "refused", "stored_at", "value")

    def __init__(self, query_id: int, key: bytes, value: Value) -> None:
        super().__init__(query_id, key)
        self.value = value
        self.phase = Phase.LOOKING_UP
        #: STORING: requests not yet answered or failed.
        self.pending = 0
        self.stored_at: list[Contact] = []
        self.refused: list[Contact] = []
        self.failed: list[Contact] = []

    def storing(self, count: int) -> None:
        """The walk is over; ``count`` store requests follow."""
        self.phase = Phase.STORING
        self.pending = count

    def store_request(self, msg_id: bytes, local_id: bytes) -> wire.Request:
        return wire.Store(msg_id, local_id, self.target, self.value)

    def on_stored(self, contact: Contact, stored: bool) -> bool:
        """``contact`` answered a store request; True when none is left."""
        (self.stored_at if stored else self.refused).append(contact)
        self.pending -= 1
        return self.pending == 0

    def on_store_failed(self, contact: Contact) -> bool:
        """A store request to ``contact`` failed; True when none is left."""
        self.failed.append(contact)
        self.pending -= 1
        return self.pending == 0

    def result(self) -> PutFinished | ProvidersAdded | None:
        """The result event once every store request ended (None: an internal job)."""
        return None

    def _outcome(self) -> tuple[int, bytes, tuple[Contact, ...], tuple[Contact, ...], tuple[Contact, ...]]:
        return self.query_id, self.target, tuple(self.stored_at), tuple(self.refused), tuple(self.failed)


class RepublishQuery(StoreQuery):
    """Paper 2.5: STORE a record we hold at the k closest again; no result."""

    __slots__ = ()


class PutQuery(RepublishQuery):
    """``start_put``: STORE our value at the k closest nodes to its key."""

    __slots__ = ()

    def result(self) -> PutFinished:
        return PutFinished(*self._outcome())


class ReannounceQuery(StoreQuery):
    """Announce one of our provider values again (``p2pb_add_provider``); no result."""

    __slots__ = ()

    def store_request(self, msg_id: bytes, local_id: bytes) -> wire.Request:
        assert isinstance(self.value, bytes)
        return wire.AddProvider(msg_id, local_id, self.target, self.value)


class AddProviderQuery(ReannounceQuery):
    """``start_add_provider``: send ``p2pb_add_provider`` to the k closest nodes to the key."""

    __slots__ = ()

    def result(self) -> ProvidersAdded:
        return ProvidersAdded(*self._outcome())
