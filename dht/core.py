"""`DhtCore`: the sans-IO Kademlia node that composes table, lookups, records and wire.

Theory of operation
-------------------
A `DhtCore` is a synchronous state machine in the shape of aioquic's
``QuicConnection``.  It owns no socket and reads no clock: the driver feeds it

* datagrams: `DhtCore.receive_datagram` ``(data, addr, now)``;
* timer expiries: `DhtCore.handle_timer` ``(now)``, whenever ``now`` has
  reached `DhtCore.get_timer` (calling it early or twice is harmless);
* commands: `start_lookup`, `start_get`, `start_put`, `bootstrap`,
  `start_add_provider`, `start_get_providers`, each returning a query id,

and after each of those collects the outputs: `DhtCore.datagrams_to_send`,
`DhtCore.next_event` until it returns None, and the new `DhtCore.get_timer`.
``now`` never goes backwards.  Randomness (message ids, refresh targets) comes
from the ``random.Random`` passed in, so a seed replays bit-identically.

Inside, every outgoing RPC is an entry in ``_rpcs`` keyed by its 20-byte
message id.  rpcudp sends each request once and gives up after 5 s; we keep
that 5 s budget (`DhtConfig.rpc_timeout`) but retransmit the same datagram
(same message id, so any copy of the answer matches) at the offsets in
`DhtConfig.retransmit_after`, because a lookup that loses one datagram to a
near peer would otherwise miss that peer and return a wrong k-closest set.
A response must come from the address we sent to.  An RPC ends in exactly
one of: an answer (parsed by the ``parse_*`` function of its kind; a
malformed answer is a failure and a `PeerMisbehaved`), or the final timeout.
Either outcome goes to the routing table (alive / failed) and then to what
the RPC was for (its ``_Purpose``): a lookup step, a bootstrap ping, a put's
STORE (or an announcement's ``p2pb_add_provider``), a ping-before-evict
check, or a fire-and-forget STORE.  One exception: silence to a p2pblog-only
RPC (``p2pb_*``) is not held against the peer in the routing table, because a
live ``kademlia`` node is silent to those too; the lookup still counts it as
a failed step and moves on.

Every message a peer proves it sent (a request from an address, or a matched
answer) updates the routing table (paper section 2.2).  A full bucket makes
the table ask for a ping of its least-recently seen contact; the core sends
it with purpose ``CHECK`` and reports the outcome back (`RoutingTable`).
A contact newly added to the table is offered the records it should hold
(paper 2.5, as ``kademlia``'s ``welcome_if_new``).

Queries (one per command, plus internal refreshes and republications) are
``_Query`` objects that move through phases:

=============  ===================================================  ==============
kind           phases                                               result event
=============  ===================================================  ==============
LOOKUP         LOOKING_UP                                           LookupFinished
BOOTSTRAP      PINGING seeds -> LOOKING_UP own id -> REFRESHING     BootstrapFinished
GET            LOOKING_UP (FIND_VALUE)                              ValueFound / -NotFound
PUT            LOOKING_UP -> STORING at the k closest               PutFinished
REFRESH        LOOKING_UP random id in a stale bucket (2.3)         none
REPUBLISH      LOOKING_UP -> STORING (2.5 replication)              none
ADD_PROVIDER   LOOKING_UP -> STORING (``p2pb_add_provider``)        ProvidersAdded
GET_PROVIDERS  LOOKING_UP (``p2pb_get_providers``)                  ProvidersFound
REANNOUNCE     LOOKING_UP -> STORING our own provider values        none
=============  ===================================================  ==============

A bootstrap reports `BootstrapFinished` once the refreshes it started (the
buckets farther than the nearest neighbour, paper 2.3) are done too, so a
node that publishes its records then publishes them to a full routing table.

A lookup that ran to its end (the k closest peers it found all answered, not
stopped early by a value or enough providers) is remembered for
``DhtConfig.walk_reuse`` seconds: a PUT or provider announcement of the same
key in that window stores at those k peers without walking again (a node
that searched a feed's providers and then announces itself as one walks
once, not twice).

Providers follow libp2p kad-dht's content routing: an announcement looks up
the k closest nodes to the key and sends each ``p2pb_add_provider``; a
providers lookup walks towards the key like FIND_VALUE, gathering the
providers every answer carries, until ``want`` distinct ones are in or the k
closest nodes have answered (`dht.lookup.ProvidersLookup`).  Held providers
live in a `ProviderStore`, beside the records; the ``provider_rank`` hook
decides which of them a full key gives up first (p2pblog: name claims with
the least proof of work).

Requests are answered at once with the shapes of ``kademlia.protocol``
(see `dht.wire`).  Bad input from a peer never raises: it becomes a counted
drop (`DatagramDropped`) or, if it breaks the protocol, `PeerMisbehaved`.
Our own misuse (a 19-byte key, an invalid value to put, time going backwards)
raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Final

from dht import wire
from dht.events import (
    MAX_QUEUED_NOTICES,
    BootstrapFinished,
    DatagramDropped,
    Event,
    LookupFinished,
    PeerMisbehaved,
    ProvidersAdded,
    ProvidersFound,
    ProviderStored,
    PutFinished,
    RecordStored,
    ValueFound,
    ValueNotFound,
)
from dht.ids import ALPHA, ID_BYTES, Address, Contact, K, distance
from dht.lookup import ClosestPeersLookup, ProvidersLookup, ValueLookup
from dht.providers import (
    MAX_PROVIDER_VALUES,
    MAX_PROVIDERS_PER_KEY,
    PROVIDER_REPUBLISH_INTERVAL,
    PROVIDER_TTL,
    ProviderRank,
    ProviderStore,
    ProviderValidator,
    distinct_values,
)
from dht.ratelimit import MAX_SOURCES, SOURCE_BURST, SOURCE_RATE, TokenBucketLimiter
from dht.records import (
    MAX_RECORDS,
    RECORD_TTL,
    REPLICATE_INTERVAL,
    REPUBLISH_INTERVAL,
    RecordStore,
    Selector,
    StoreOutcome,
    Validator,
    accept_any,
    latest_selector,
    majority_selector,
)
from dht.routing import QUESTIONABLE_AFTER, REFRESH_INTERVAL, RoutingTable, UpdateOutcome
from dht.wire import Value, WireError
from identity.errors import LocalProtocolError

#: rpcudp's ``wait_timeout``: seconds before an unanswered RPC has failed.
RPC_TIMEOUT: Final = 5.0
#: Seconds after the first send at which an unanswered request is sent again.
RETRANSMIT_AFTER: Final = (0.5, 1.0, 2.0, 3.0)
#: Seconds a finished lookup's result may replace a new walk to the same key.
WALK_REUSE: Final = 60.0
#: Most lookup results remembered for reuse (the oldest is forgotten first).
MAX_WALKS_KEPT: Final = 64


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Tunables of one core.  The defaults are the protocol's (paper / ``kademlia``)."""

    k: int = K
    alpha: int = ALPHA
    rpc_timeout: float = RPC_TIMEOUT
    retransmit_after: tuple[float, ...] = RETRANSMIT_AFTER
    #: A lookup stops waiting for a peer after this long (closest.rs ``peer_timeout``).
    lookup_peer_timeout: float = RPC_TIMEOUT
    refresh_interval: float = REFRESH_INTERVAL
    #: A full bucket pings its least-recently seen contact only after this much silence (BEP 5).
    questionable_after: float = QUESTIONABLE_AFTER
    #: Paper 2.3: after joining, refresh every bucket farther than the nearest neighbour.
    refresh_after_bootstrap: bool = True
    #: Seconds a finished lookup's k closest peers stand in for the walk of a
    #: PUT or provider announcement of the same key (0: always walk).
    walk_reuse: float = WALK_REUSE
    replacement_cache: int = K
    record_ttl: float = RECORD_TTL
    replicate_interval: float = REPLICATE_INTERVAL
    republish_interval: float = REPUBLISH_INTERVAL
    max_records: int = MAX_RECORDS
    provider_ttl: float = PROVIDER_TTL
    provider_republish_interval: float = PROVIDER_REPUBLISH_INTERVAL
    max_providers_per_key: int = MAX_PROVIDERS_PER_KEY
    max_provider_values: int = MAX_PROVIDER_VALUES
    source_rate: float = SOURCE_RATE
    source_burst: float = SOURCE_BURST
    max_sources: int = MAX_SOURCES

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1:
            raise LocalProtocolError("k and alpha must be >= 1")
        offsets = (0.0, *self.retransmit_after, self.rpc_timeout)
        if any(b <= a for a, b in itertools.pairwise(offsets)):
            raise LocalProtocolError("retransmit_after must increase and end before rpc_timeout")


class _Purpose(enum.Enum):
    LOOKUP_STEP = "lookup step"
    SEED_PING = "seed ping"
    PUT_STORE = "put store"
    CHECK = "liveness check"
    CACHE_STORE = "cache store"


class _Kind(enum.Enum):
    LOOKUP = "lookup"
    BOOTSTRAP = "bootstrap"
    GET = "get"
    PUT = "put"
    REFRESH = "refresh"
    REPUBLISH = "republish"
    ADD_PROVIDER = "add provider"
    GET_PROVIDERS = "get providers"
    REANNOUNCE = "reannounce"


class _Phase(enum.Enum):
    PINGING = "pinging"
    LOOKING_UP = "looking up"
    STORING = "storing"
    #: A bootstrap whose own lookup ended, waiting for the refreshes it started.
    REFRESHING = "refreshing"


@dataclass(slots=True)
class _Rpc:
    msg_id: bytes
    name: str
    addr: Address
    #: The id we expect to answer (None for a ping to a bare address).
    node_id: bytes | None
    purpose: _Purpose
    query_id: int | None
    datagram: bytes
    sent_at: float
    #: Index into the retransmit schedule of the pending deadline.
    step: int
    deadline: float


@dataclass(frozen=True, slots=True)
class _ProvidersAnswer:
    """A parsed ``p2pb_get_providers`` answer (not yet validated)."""

    values: tuple[bytes, ...]
    contacts: tuple[Contact, ...]


_Answer = Value | tuple[Contact, ...] | _ProvidersAnswer | None


@dataclass(slots=True)
class _Query:
    query_id: int
    kind: _Kind
    target: bytes
    phase: _Phase
    lookup: ClosestPeersLookup | None = None
    value: Value | None = None
    quorum: int = 1
    #: GET_PROVIDERS: stop once this many distinct providers are in.
    want: int = 1
    pending: int = 0
    seeds_answered: int = 0
    seed_contacts: list[Contact] = field(default_factory=list)
    stored_at: list[Contact] = field(default_factory=list)
    refused: list[Contact] = field(default_factory=list)
    failed: list[Contact] = field(default_factory=list)
    #: REFRESH started by a bootstrap: the bootstrap's query id.
    parent: int | None = None
    #: BOOTSTRAP: its own lookup's result, reported once the refreshes are done.
    closest: tuple[Contact, ...] = ()


#: Queries that store at the k closest once their walk is done.
_STORING_KINDS: Final = frozenset({_Kind.PUT, _Kind.REPUBLISH, _Kind.ADD_PROVIDER, _Kind.REANNOUNCE})

#: Events that count against `MAX_QUEUED_NOTICES`.
_NOTICES: Final = (PeerMisbehaved, DatagramDropped, RecordStored, ProviderStored)


def _require_held(outcome: StoreOutcome, store: str) -> None:
    """Raise `LocalProtocolError` unless our own value was stored (or refreshed) in store."""
    if outcome is StoreOutcome.INVALID:
        raise LocalProtocolError(f"the value is over the size limit or refused by the {store} validator")
    if outcome is StoreOutcome.OUTDATED:
        raise LocalProtocolError(f"a better value is already held in the {store} store")
    if outcome is StoreOutcome.FULL:
        raise LocalProtocolError(f"the {store} store is full")


class DhtCore:
    """One Kademlia node, sans IO.  See the module docstring for the driver contract."""

    def __init__(
        self,
        node_id: bytes,
        rng: Random,
        now: float,
        *,
        config: DhtConfig | None = None,
        validator: Validator = accept_any,
        selector: Selector | None = None,
        provider_validator: ProviderValidator = distinct_values,
        provider_rank: ProviderRank | None = None,
    ) -> None:
        """``selector`` None keeps ``kademlia``'s behaviour: a STORE overwrites
        (`latest_selector`), a lookup takes the most common value
        (`majority_selector`).  Pass one selector (e.g. highest seq) to use it for both;
        it also chooses between two values of one provider.

        ``provider_validator`` names the provider a provider value speaks for
        (None: invalid); the default makes each distinct value a provider.
        ``provider_rank`` ranks provider values for eviction at a full key
        (`dht.providers`); None ranks them all the same."""
        if len(node_id) != ID_BYTES:
            raise LocalProtocolError(f"a node id is {ID_BYTES} bytes")
        if not isinstance(rng, Random):
            raise LocalProtocolError("rng must be a random.Random instance")
        self.node_id = node_id
        self.config = cfg = config if config is not None else DhtConfig()
        self._rng = rng
        self._now = now
        self.table = RoutingTable(
            node_id,
            now,
            k=cfg.k,
            replacement_cache=cfg.replacement_cache,
            refresh_interval=cfg.refresh_interval,
            questionable_after=cfg.questionable_after,
        )
        store_selector = selector if selector is not None else latest_selector
        self.records = RecordStore(
            validator=validator,
            selector=store_selector,
            ttl=cfg.record_ttl,
            replicate_interval=cfg.replicate_interval,
            republish_interval=cfg.republish_interval,
            max_records=cfg.max_records,
            rng=rng,
        )
        self.providers = ProviderStore(
            validator=provider_validator,
            selector=store_selector,
            ttl=cfg.provider_ttl,
            republish_interval=cfg.provider_republish_interval,
            max_per_key=cfg.max_providers_per_key,
            max_values=cfg.max_provider_values,
            rng=rng,
            rank=provider_rank,
        )
        self._get_selector = selector if selector is not None else majority_selector
        self._limiter = TokenBucketLimiter(cfg.source_rate, cfg.source_burst, cfg.max_sources)
        #: Counts of everything that happened, by name (drops, misbehaviour, RPCs).
        self.stats: Counter[str] = Counter()
        self._rpcs: dict[bytes, _Rpc] = {}
        self._rpc_timers: list[tuple[float, int, bytes]] = []
        self._timer_seq = 0
        self._queries: dict[int, _Query] = {}
        self._next_query_id = 1
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._notices_queued = 0
        #: Key -> (when, the k closest peers) of lookups that ran to their end.
        self._walks: OrderedDict[bytes, tuple[float, tuple[Contact, ...]]] = OrderedDict()

    # ================================================================== outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Datagrams produced since the last call, in order; the driver sends them all."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, _NOTICES):
            self._notices_queued -= 1
        return event

    def get_timer(self) -> float | None:
        """The earliest time at which `handle_timer` has work, or None."""
        deadlines: list[float] = []
        while self._rpc_timers:
            deadline, _, msg_id = self._rpc_timers[0]
            rpc = self._rpcs.get(msg_id)
            if rpc is not None and rpc.deadline == deadline:
                deadlines.append(deadline)
                break
            heapq.heappop(self._rpc_timers)
        if self.config.lookup_peer_timeout < self.config.rpc_timeout:
            # Otherwise a lookup's peer times out no earlier than the RPC to it,
            # whose deadline is above; asked after every input, so skip the scan.
            for query in self._queries.values():
                if query.lookup is not None and query.phase is _Phase.LOOKING_UP:
                    d = query.lookup.next_deadline()
                    if d is not None:
                        deadlines.append(d)
        for d2 in (self.table.next_refresh(), self.records.next_deadline(), self.providers.next_deadline()):
            if d2 is not None:
                deadlines.append(d2)
        return min(deadlines) if deadlines else None

    @property
    def active_queries(self) -> int:
        return len(self._queries)

    @property
    def outstanding_rpcs(self) -> int:
        return len(self._rpcs)

    # ================================================================== inputs

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram from ``addr`` (``(host, port)``)."""
        self._advance(now)
        self.stats["rx.datagrams"] += 1
        if not self._limiter.allow(addr, now):
            self._dropped(addr, "rate limited")
            return
        try:
            message = wire.decode_datagram(data)
        except WireError as exc:
            self._misbehaved(addr, None, "malformed datagram", str(exc))
            return
        if isinstance(message, wire.Response):
            self._on_response(message, addr, now)
        else:
            self._on_request(message, addr, now)

    def handle_timer(self, now: float) -> None:
        """Do everything that is due at ``now``: retransmits, timeouts, refreshes, republishes."""
        self._advance(now)
        self._expire_rpcs(now)
        for query in list(self._queries.values()):
            # Answers and failures drive their lookup at once; a timer only
            # matters to lookups with a peer whose time is up.
            if query.lookup is not None and query.phase is _Phase.LOOKING_UP:
                deadline = query.lookup.next_deadline()
                if deadline is not None and deadline <= now:
                    self._drive(query, now)
        for index in self.table.buckets_due(now):
            self.table.touch_bucket(index, now)
            target = self.table.random_id_in_bucket(index, self._rng)
            self.stats["refresh.buckets"] += 1
            self._start(_Kind.REFRESH, target, now)
        for key, value in self.records.due(now):
            self.stats["records.republished"] += 1
            self._start(_Kind.REPUBLISH, key, now, value=value)
        for key, provider in self.providers.due(now):
            self.stats["providers.reannounced"] += 1
            self._start(_Kind.REANNOUNCE, key, now, value=provider)

    # ================================================================== commands

    def start_lookup(self, target: bytes, now: float) -> int:
        """Find the k nodes closest to ``target`` (FIND_NODE).  Ends with `LookupFinished`."""
        self._advance(now)
        self._check_key(target, "target")
        return self._start(_Kind.LOOKUP, target, now)

    def start_get(self, key: bytes, now: float, *, quorum: int = 1) -> int:
        """Find a value for ``key`` (FIND_VALUE).  Ends with `ValueFound` or `ValueNotFound`.

        The lookup stops once ``quorum`` valid values are in (a copy we hold
        counts as one); the selector then picks the best of them.
        """
        self._advance(now)
        self._check_key(key, "key")
        if quorum < 1:
            raise LocalProtocolError("quorum must be >= 1")
        return self._start(_Kind.GET, key, now, quorum=quorum)

    def start_put(self, key: bytes, value: Value, now: float) -> int:
        """Publish ``value`` under ``key``: hold it, republish it, STORE it at the k closest.

        Ends with `PutFinished`.  Raises `LocalProtocolError` if the value is
        not valid (type, size, validator) or worse than a value already held.
        """
        self._advance(now)
        self._check_key(key, "key")
        if not wire.is_value(value):
            raise LocalProtocolError("a DHT value is int, float, bool, str or bytes")
        _require_held(self.records.put(key, value, now, published=True), "record")
        return self._start(_Kind.PUT, key, now, value=value)

    def start_add_provider(self, key: bytes, value: bytes, now: float) -> int:
        """Announce ``value`` as a provider of ``key``: hold it, re-announce it, and send
        ``p2pb_add_provider`` to the k closest nodes.  Ends with `ProvidersAdded`.

        Raises `LocalProtocolError` if the provider validator refuses the value,
        or a better value of the same provider is already held.
        """
        self._advance(now)
        self._check_key(key, "key")
        if not isinstance(value, bytes):
            raise LocalProtocolError("a provider value is bytes")
        _require_held(self.providers.add(key, value, now, published=True), "provider")
        return self._start(_Kind.ADD_PROVIDER, key, now, value=value)

    def start_get_providers(self, key: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY) -> int:
        """Find providers of ``key`` (``p2pb_get_providers``).  Ends with `ProvidersFound`.

        The lookup gathers valid provider values (one per provider, the
        selector's pick between versions; those we hold count too) until
        ``want`` distinct providers are in or the k closest nodes answered.
        """
        self._advance(now)
        self._check_key(key, "key")
        if want < 1:
            raise LocalProtocolError("want must be >= 1")
        query = self._new_query(_Kind.GET_PROVIDERS, key, _Phase.LOOKING_UP)
        query.want = want
        self._begin_lookup(query, now)
        return query.query_id

    def bootstrap(self, addrs: Iterable[Address], now: float) -> int:
        """Join the network through ``addrs`` (paper 2.3).  Ends with `BootstrapFinished`.

        Pings every address (as ``kademlia.Server.bootstrap`` does, to learn
        the ids), then looks up our own id starting from those that answered
        and the table, then (config) refreshes the buckets farther away than
        the nearest neighbour found.
        """
        self._advance(now)
        unique = list(dict.fromkeys((str(host), int(port)) for host, port in addrs))
        query = self._new_query(_Kind.BOOTSTRAP, self.node_id, _Phase.PINGING)
        for addr in unique:
            self._send(
                wire.Ping(self._new_msg_id(), self.node_id), addr, None, _Purpose.SEED_PING, query, now
            )
        query.pending = len(unique)
        if not unique:
            self._begin_lookup(query, now)
        return query.query_id

    # ================================================================== requests

    def _on_request(self, request: wire.Request, addr: Address, now: float) -> None:
        if isinstance(request, wire.UnknownRequest):
            # rpcudp: "has no callable method rpc_%s; ignoring request".
            self._dropped(addr, "unknown rpc", f"unknown rpc {request.name!r}")
            return
        self.stats[f"rx.request.{wire.request_name(request)}"] += 1
        if isinstance(request, wire.Stun):
            self._reply(wire.stun_response(request.msg_id, addr), addr)
            return
        sender = Contact(request.sender_id, addr)
        self._saw(sender, now)
        if isinstance(request, wire.Ping):
            self._reply(wire.ping_response(request.msg_id, self.node_id), addr)
        elif isinstance(request, wire.Store):
            self._reply(wire.store_response(request.msg_id, self._on_store(request, sender, now)), addr)
        elif isinstance(request, wire.FindNode):
            closest = self.table.closest(request.target, exclude_id=sender.node_id, exclude_addr=addr)
            self._reply(wire.find_node_response(request.msg_id, closest), addr)
        elif isinstance(request, wire.AddProvider):
            stored = self._on_add_provider(request, sender, now)
            self._reply(wire.add_provider_response(request.msg_id, stored), addr)
        elif isinstance(request, wire.GetProviders):
            closest = self.table.closest(request.key, exclude_id=sender.node_id, exclude_addr=addr)
            held = self.providers.get(request.key, now)
            self._reply(wire.get_providers_response(request.msg_id, held, closest), addr)
        else:
            value = self.records.get(request.key, now)
            if value is not None:
                self._reply(wire.find_value_response(request.msg_id, value), addr)
            else:
                closest = self.table.closest(request.key, exclude_id=sender.node_id, exclude_addr=addr)
                self._reply(wire.find_value_response(request.msg_id, closest), addr)

    def _on_store(self, request: wire.Store, sender: Contact, now: float) -> bool:
        outcome = self.records.put(request.key, request.value, now)
        self.stats[f"store.{outcome.value}"] += 1
        if outcome is StoreOutcome.INVALID:
            self._misbehaved(sender.addr, sender.node_id, "invalid stored value")
        elif outcome is StoreOutcome.STORED:
            self._notice(RecordStored(request.key, request.value, sender))
        return outcome in (StoreOutcome.STORED, StoreOutcome.REFRESHED)

    def _on_add_provider(self, request: wire.AddProvider, sender: Contact, now: float) -> bool:
        # The value speaks for itself (p2pblog: a signed record), so unlike
        # libp2p we do not require the sender to be the provider: the sender
        # may relay an announcement it did not make.
        outcome = self.providers.add(request.key, request.value, now)
        self.stats[f"providers.{outcome.value}"] += 1
        if outcome is StoreOutcome.INVALID:
            self._misbehaved(sender.addr, sender.node_id, "invalid provider value")
        elif outcome is StoreOutcome.STORED:
            self._notice(ProviderStored(request.key, request.value, sender))
        return outcome in (StoreOutcome.STORED, StoreOutcome.REFRESHED)

    def _reply(self, datagram: bytes, addr: Address) -> None:
        self.stats["tx.responses"] += 1
        self._outgoing.append((datagram, addr))

    # ================================================================== routing table

    def _saw(self, contact: Contact, now: float) -> None:
        """``contact`` proved it is alive at its address (paper 2.2)."""
        outcome, to_ping = self.table.update(contact, now)
        if outcome is UpdateOutcome.ADDED:
            self._welcome(contact, now)
        elif outcome is UpdateOutcome.PING:
            assert to_ping is not None
            self.stats["table.liveness_checks"] += 1
            self._send(
                wire.Ping(self._new_msg_id(), self.node_id),
                to_ping.addr,
                to_ping.node_id,
                _Purpose.CHECK,
                None,
                now,
            )

    def _welcome(self, contact: Contact, now: float) -> None:
        """Offer a new contact the records it should hold (paper 2.5, ``welcome_if_new``)."""
        if not len(self.records):
            return
        own = int.from_bytes(self.node_id, "big")
        others = self.table.filled_mask(exclude_id=contact.node_id)
        for key in list(self.records):
            # Cheapest test first: are we nearer the key than every other contact?
            # (Most keys fail it; one AND, see `RoutingTable.filled_mask`.)
            if others & (own ^ int.from_bytes(key, "big")):
                continue
            neighbours = self.table.closest(key, exclude_id=contact.node_id)
            if neighbours and distance(contact.node_id, key) >= distance(neighbours[-1].node_id, key):
                continue
            value = self.records.get(key, now)  # validates the value: only for what we send
            if value is None:
                continue
            self.stats["records.welcome_stores"] += 1
            self._send_store(contact, key, value, _Purpose.CACHE_STORE, None, now)

    def _promoted(self, contact: Contact | None, now: float) -> None:
        if contact is not None:
            self._welcome(contact, now)

    # ================================================================== RPCs out

    def _new_msg_id(self) -> bytes:
        while True:
            msg_id = self._rng.randbytes(wire.MSG_ID_BYTES)
            if msg_id not in self._rpcs:
                return msg_id

    def _send(
        self,
        request: wire.Request,
        addr: Address,
        node_id: bytes | None,
        purpose: _Purpose,
        query: _Query | None,
        now: float,
    ) -> None:
        datagram = wire.encode_request(request)
        name = wire.request_name(request)
        offsets = self.config.retransmit_after
        deadline = now + (offsets[0] if offsets else self.config.rpc_timeout)
        rpc = _Rpc(
            request.msg_id,
            name,
            addr,
            node_id,
            purpose,
            query.query_id if query is not None else None,
            datagram,
            now,
            0,
            deadline,
        )
        self._rpcs[rpc.msg_id] = rpc
        self._push_timer(rpc)
        self._outgoing.append((datagram, addr))
        self.stats[f"tx.request.{name}"] += 1

    def _send_store(
        self,
        contact: Contact,
        key: bytes,
        value: Value,
        purpose: _Purpose,
        query: _Query | None,
        now: float,
    ) -> None:
        request = wire.Store(self._new_msg_id(), self.node_id, key, value)
        self._send(request, contact.addr, contact.node_id, purpose, query, now)

    def _push_timer(self, rpc: _Rpc) -> None:
        self._timer_seq += 1
        heapq.heappush(self._rpc_timers, (rpc.deadline, self._timer_seq, rpc.msg_id))

    def _expire_rpcs(self, now: float) -> None:
        offsets = self.config.retransmit_after
        while self._rpc_timers and self._rpc_timers[0][0] <= now:
            deadline, _, msg_id = heapq.heappop(self._rpc_timers)
            rpc = self._rpcs.get(msg_id)
            if rpc is None or rpc.deadline != deadline:
                continue
            if rpc.step < len(offsets):
                rpc.step += 1
                rpc.deadline = rpc.sent_at + (
                    offsets[rpc.step] if rpc.step < len(offsets) else self.config.rpc_timeout
                )
                self._push_timer(rpc)
                self._outgoing.append((rpc.datagram, rpc.addr))
                self.stats["tx.retransmits"] += 1
                continue
            del self._rpcs[msg_id]
            self.stats[f"rpc.timeout.{rpc.name}"] += 1
            self._rpc_failed(rpc, now, silent=True)

    # ================================================================== RPCs back

    def _on_response(self, response: wire.Response, addr: Address, now: float) -> None:
        rpc = self._rpcs.get(response.msg_id)
        if rpc is None:
            # Late (after the final timeout), duplicated by a retransmit, or never asked.
            self._dropped(addr, "unsolicited response")
            return
        if rpc.addr != addr:
            # rpcudp matches on the message id alone; we also want the address we
            # asked, so a third party that guesses nothing cannot answer for it.
            self._dropped(addr, "response from an address we did not ask")
            return
        del self._rpcs[response.msg_id]
        self.stats[f"rx.response.{rpc.name}"] += 1
        try:
            self._on_answer(rpc, response.body, now)
        except WireError as exc:
            self._misbehaved(addr, rpc.node_id, "malformed answer", f"{rpc.name}: {exc}")
            self._rpc_failed(rpc, now)

    def _on_answer(self, rpc: _Rpc, body: object, now: float) -> None:
        """Parse the answer by the request's kind and dispatch it; raises `WireError`."""
        if rpc.name == wire.PING:
            responder = wire.parse_ping_response(body)
            if rpc.node_id is not None and responder != rpc.node_id:
                # Another node now lives at that address: the one we knew is gone.
                self._promoted(self.table.eviction_failed(rpc.node_id, now), now)
            contact = Contact(responder, rpc.addr)
            self._saw(contact, now)
            self._query_success(rpc, contact, None, now)
            return
        assert rpc.node_id is not None
        contact = Contact(rpc.node_id, rpc.addr)
        if rpc.name in (wire.STORE, wire.ADD_PROVIDER):
            if rpc.name == wire.STORE:
                stored = wire.parse_store_response(body)
            else:
                stored = wire.parse_add_provider_response(body)
            self._saw(contact, now)
            self._query_success(rpc, contact, stored, now)
            return
        answer: _Answer
        if rpc.name == wire.FIND_NODE:
            answer = wire.parse_find_node_response(body)
        elif rpc.name == wire.GET_PROVIDERS:
            answer = _ProvidersAnswer(*wire.parse_get_providers_response(body))
        else:
            answer = wire.parse_find_value_response(body)
        self._saw(contact, now)
        self._query_success(rpc, contact, answer, now)

    def _rpc_failed(self, rpc: _Rpc, now: float, *, silent: bool = False) -> None:
        if silent and rpc.name in wire.P2PBLOG_RPCS:
            # kademlia nodes never answer p2pblog's RPCs: silence is no proof of death.
            self.stats["rpc.unanswered_p2pblog_rpc"] += 1
        elif rpc.node_id is not None:
            if rpc.purpose is _Purpose.CHECK:
                # Paper 2.2: the least-recently seen contact did not answer: evict it.
                self.stats["table.evictions"] += 1
                self._promoted(self.table.eviction_failed(rpc.node_id, now, checked_at=rpc.sent_at), now)
            else:
                self._promoted(self.table.record_failure(rpc.node_id, now), now)
        query = self._queries.get(rpc.query_id) if rpc.query_id is not None else None
        if query is None:
            return
        if rpc.purpose is _Purpose.LOOKUP_STEP and query.lookup is not None:
            assert rpc.node_id is not None
            query.lookup.on_failure(rpc.node_id, now)
            self._drive(query, now)
        elif rpc.purpose is _Purpose.SEED_PING:
            query.pending -= 1
            if query.pending == 0:
                self._begin_lookup(query, now)
        elif rpc.purpose is _Purpose.PUT_STORE:
            assert rpc.node_id is not None
            query.failed.append(Contact(rpc.node_id, rpc.addr))
            query.pending -= 1
            if query.pending == 0:
                self._finish(query)

    def _query_success(
        self,
        rpc: _Rpc,
        contact: Contact,
        answer: _Answer,
        now: float,
    ) -> None:
        query = self._queries.get(rpc.query_id) if rpc.query_id is not None else None
        if query is None:
            return
        if rpc.purpose is _Purpose.LOOKUP_STEP and query.lookup is not None:
            lookup = query.lookup
            if isinstance(answer, _ProvidersAnswer) and isinstance(lookup, ProvidersLookup):
                providers = self._valid_providers(query.target, answer.values, lookup, contact, now)
                lookup.on_providers(contact.node_id, providers, answer.contacts, now)
            elif isinstance(answer, tuple):
                lookup.on_success(contact.node_id, answer, now)
            elif (
                answer is not None
                and not isinstance(answer, _ProvidersAnswer)
                and isinstance(lookup, ValueLookup)
            ):
                if self.records.is_valid(query.target, answer, now):
                    lookup.on_value(contact.node_id, answer, now)
                else:
                    self._misbehaved(contact.addr, contact.node_id, "invalid returned value")
                    lookup.on_failure(contact.node_id, now)
            else:
                # A value in answer to FIND_NODE cannot parse; treat oddities as failure.
                lookup.on_failure(contact.node_id, now)
            self._drive(query, now)
        elif rpc.purpose is _Purpose.SEED_PING:
            query.seeds_answered += 1
            query.seed_contacts.append(contact)
            query.pending -= 1
            if query.pending == 0:
                self._begin_lookup(query, now)
        elif rpc.purpose is _Purpose.PUT_STORE:
            (query.stored_at if answer is True else query.refused).append(contact)
            query.pending -= 1
            if query.pending == 0:
                self._finish(query)

    def _valid_providers(
        self,
        key: bytes,
        values: Iterable[bytes],
        lookup: ProvidersLookup,
        source: Contact,
        now: float,
    ) -> list[tuple[bytes, bytes]]:
        """``(provider id, value)`` for the valid ``values`` worth keeping in ``lookup``.

        An invalid value is the answering peer's fault (it should have
        validated it) but not a reason to distrust its closer peers: the value
        is dropped and counted, the rest of the answer is used.  Of two values
        of one provider the selector's pick is kept.
        """
        chosen: dict[bytes, bytes] = {}
        for value in values:
            pid = self.providers.provider_id(key, value, now)
            if pid is None:
                self._misbehaved(source.addr, source.node_id, "invalid returned provider")
                continue
            old = chosen.get(pid, lookup.providers.get(pid))
            if old is None or (old != value and self.providers.prefers(key, old, value)):
                chosen[pid] = value
        return list(chosen.items())

    # ================================================================== queries

    def _new_query(self, kind: _Kind, target: bytes, phase: _Phase) -> _Query:
        query = _Query(self._next_query_id, kind, target, phase)
        self._next_query_id += 1
        self._queries[query.query_id] = query
        return query

    def _start(
        self,
        kind: _Kind,
        target: bytes,
        now: float,
        *,
        value: Value | None = None,
        quorum: int = 1,
    ) -> int:
        query = self._new_query(kind, target, _Phase.LOOKING_UP)
        query.value = value
        query.quorum = quorum
        walk = self._walks.get(target)  # only lookups with a non-empty result are kept
        if kind in _STORING_KINDS and walk is not None and now - walk[0] <= self.config.walk_reuse:
            self.stats["lookups.reused"] += 1
            self._store_at(query, walk[1], now)
        else:
            self._begin_lookup(query, now)
        return query.query_id

    def _begin_lookup(self, query: _Query, now: float) -> None:
        cfg = self.config
        query.phase = _Phase.LOOKING_UP
        self.table.touch(query.target, now)
        seeds = self.table.closest(query.target)
        seeds.extend(query.seed_contacts)
        lookup: ClosestPeersLookup
        if query.kind is _Kind.GET:
            local = self.records.get(query.target, now)
            lookup = ValueLookup(
                query.target,
                seeds,
                quorum=query.quorum,
                k=cfg.k,
                alpha=cfg.alpha,
                peer_timeout=cfg.lookup_peer_timeout,
                local_id=self.node_id,
            )
            if local is not None:
                lookup.add_local_value(local)
        elif query.kind is _Kind.GET_PROVIDERS:
            lookup = ProvidersLookup(
                query.target,
                seeds,
                want=query.want,
                k=cfg.k,
                alpha=cfg.alpha,
                peer_timeout=cfg.lookup_peer_timeout,
                local_id=self.node_id,
            )
            lookup.add_providers(self.providers.get_with_ids(query.target, now))
        else:
            lookup = ClosestPeersLookup(
                query.target,
                seeds,
                k=cfg.k,
                alpha=cfg.alpha,
                peer_timeout=cfg.lookup_peer_timeout,
                local_id=self.node_id,
            )
        query.lookup = lookup
        self._drive(query, now)

    def _drive(self, query: _Query, now: float) -> None:
        lookup = query.lookup
        if lookup is None or query.phase is not _Phase.LOOKING_UP:
            return
        if not lookup.finished:
            for contact in lookup.next(now):
                request: wire.Request
                if isinstance(lookup, ValueLookup):
                    request = wire.FindValue(self._new_msg_id(), self.node_id, query.target)
                elif isinstance(lookup, ProvidersLookup):
                    request = wire.GetProviders(self._new_msg_id(), self.node_id, query.target)
                else:
                    request = wire.FindNode(self._new_msg_id(), self.node_id, query.target)
                self._send(request, contact.addr, contact.node_id, _Purpose.LOOKUP_STEP, query, now)
        if lookup.finished:
            self._lookup_done(query, now)

    def _lookup_done(self, query: _Query, now: float) -> None:
        lookup = query.lookup
        assert lookup is not None
        closest = tuple(lookup.result())
        if not lookup.stopped_early and closest and self.config.walk_reuse > 0:
            self._walks[query.target] = (now, closest)
            self._walks.move_to_end(query.target)
            while len(self._walks) > MAX_WALKS_KEPT:
                self._walks.popitem(last=False)
        if query.kind in _STORING_KINDS:
            self._store_at(query, closest, now)
            return
        if query.kind is _Kind.BOOTSTRAP and self.config.refresh_after_bootstrap and closest:
            # Report the join once the refreshes are done too (module docstring).
            query.phase = _Phase.REFRESHING
            query.closest = closest
            nearest = self.table.bucket_index(closest[0].node_id)
            for index in range(nearest + 1, 8 * ID_BYTES):
                target = self.table.random_id_in_bucket(index, self._rng)
                refresh = self._queries.get(self._start(_Kind.REFRESH, target, now))
                if refresh is not None:
                    refresh.parent = query.query_id
                    query.pending += 1
            if query.pending:
                return
        del self._queries[query.query_id]
        if query.kind is _Kind.REFRESH and query.parent is not None:
            parent = self._queries.get(query.parent)
            if parent is not None:
                parent.pending -= 1
                if parent.pending == 0:
                    del self._queries[parent.query_id]
                    self._emit(BootstrapFinished(parent.query_id, parent.seeds_answered, parent.closest))
        elif query.kind is _Kind.LOOKUP:
            self._emit(
                LookupFinished(
                    query.query_id, query.target, closest, lookup.queried, lookup.failed_count(), lookup.hops
                )
            )
        elif query.kind is _Kind.BOOTSTRAP:
            self._emit(BootstrapFinished(query.query_id, query.seeds_answered, query.closest or closest))
        elif query.kind is _Kind.GET:
            assert isinstance(lookup, ValueLookup)
            self._get_done(query, lookup, now)
        elif query.kind is _Kind.GET_PROVIDERS:
            assert isinstance(lookup, ProvidersLookup)
            values = tuple(lookup.providers.values())
            self._emit(ProvidersFound(query.query_id, query.target, values, lookup.queried))

    def _store_at(self, query: _Query, closest: tuple[Contact, ...], now: float) -> None:
        """A put's or announcement's second phase: STORE (ADD_PROVIDER) at ``closest``."""
        assert query.value is not None
        query.phase = _Phase.STORING
        query.pending = len(closest)
        for contact in closest:
            if query.kind in (_Kind.PUT, _Kind.REPUBLISH):
                self._send_store(contact, query.target, query.value, _Purpose.PUT_STORE, query, now)
            else:
                assert isinstance(query.value, bytes)
                request = wire.AddProvider(self._new_msg_id(), self.node_id, query.target, query.value)
                self._send(request, contact.addr, contact.node_id, _Purpose.PUT_STORE, query, now)
        if not closest:
            self._finish(query)

    def _get_done(self, query: _Query, lookup: ValueLookup, now: float) -> None:
        if not lookup.found:
            self._emit(ValueNotFound(query.query_id, query.target, lookup.queried))
            return
        values = [v for _, v in lookup.found]
        best = values[self._select(query.target, values)]
        self._emit(
            ValueFound(query.query_id, query.target, best, len(values), lookup.queried, lookup.value_hops)
        )
        # Paper 2.3: cache the value at the nearest node that answered without it;
        # also correct the nodes that returned a worse value (libp2p does this).
        targets = lookup.peers_without_value()[:1]
        targets += [c for c, v in lookup.found if c is not None and (type(v), v) != (type(best), best)]
        for contact in targets:
            self.stats["records.cache_stores"] += 1
            self._send_store(contact, query.target, best, _Purpose.CACHE_STORE, None, now)

    def _select(self, key: bytes, values: list[Value]) -> int:
        if len(values) == 1:
            return 0
        index = self._get_selector(key, values)
        if not 0 <= index < len(values):
            raise IndexError(f"selector returned {index} for {len(values)} values")
        return index

    def _finish(self, query: _Query) -> None:
        """A put's STOREs (an announcement's ADD_PROVIDERs) have all been answered or failed."""
        self._queries.pop(query.query_id, None)
        outcome = (
            query.query_id,
            query.target,
            tuple(query.stored_at),
            tuple(query.refused),
            tuple(query.failed),
        )
        if query.kind is _Kind.PUT:
            self._emit(PutFinished(*outcome))
        elif query.kind is _Kind.ADD_PROVIDER:
            self._emit(ProvidersAdded(*outcome))

    # ================================================================== helpers

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
        self._now = now

    @staticmethod
    def _check_key(key: bytes, what: str) -> None:
        if not isinstance(key, bytes) or len(key) != ID_BYTES:
            raise LocalProtocolError(f"a {what} is {ID_BYTES} bytes")

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _notice(self, event: PeerMisbehaved | DatagramDropped | RecordStored | ProviderStored) -> None:
        if self._notices_queued >= MAX_QUEUED_NOTICES:
            self.stats["events.notices_not_queued"] += 1
            return
        self._notices_queued += 1
        self._events.append(event)

    def _dropped(self, addr: Address, reason: str, detail: str | None = None) -> None:
        # ``reason`` is one of a fixed set (it names a counter); ``detail`` may
        # quote the peer and only goes into the event.
        self.stats[f"drop.{reason}"] += 1
        self._notice(DatagramDropped(addr, detail or reason))

    def _misbehaved(self, addr: Address, node_id: bytes | None, reason: str, detail: str = "") -> None:
        self.stats[f"misbehaved.{reason}"] += 1
        self._notice(PeerMisbehaved(addr, node_id, f"{reason}: {detail}" if detail else reason))
