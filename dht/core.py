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

The core is a facade over parts that each own one job:

====================  ==========================================================
part                  owns
====================  ==========================================================
`RoutingTable`        who we know (k-buckets, ping-before-evict, refresh due)
`RecordStore`         values held for keys (validator, selector, expiry,
                      republish)
`ProviderStore`       provider values held for keys (libp2p provider records)
`RpcTracker`          our requests in flight: message ids, retransmits,
                      timeouts (`dht.rpc`)
the query classes     what each command is doing: a get, a put, a bootstrap,
                      ..., each with its own request and completion
                      (`dht.queries`)
`TokenBucketLimiter`  how many datagrams one address may make us process
====================  ==========================================================

This module answers requests, and routes everything else: a datagram to the
request handlers or to the RPC it answers, an RPC's outcome to the routing
table and then to what it was for (its `Purpose`: a query's lookup step, a
bootstrap's seed ping, a put's STORE or an announcement's
``p2pb_add_provider``, a ping-before-evict check, or a fire-and-forget
STORE), and a query's progress to new RPCs and its result event.  A
response must come from the address we sent to.  An RPC ends in exactly one
of: an answer (parsed by the ``parse_*`` function of its kind; a malformed
answer is a failure and a `PeerMisbehaved`), or the final timeout.  One
exception: silence to a p2pblog-only RPC (``p2pb_*``) is not held against
the peer in the routing table, because a live ``kademlia`` node is silent to
those too; the lookup still counts it as a failed step and moves on.

Every answer to one of our requests updates the routing table (paper
section 2.2, narrowed as in the architecture: "contacts enter the table only
after they answer").  A full bucket makes the table ask for a ping of its
least-recently seen contact; the core sends it with purpose ``CHECK`` and
reports the outcome back (`RoutingTable`).  A contact newly added to the
table is offered the records it should hold (paper 2.5, as ``kademlia``'s
``welcome_if_new``).

Strangers
---------
A request proves nothing: its source address may be forged, and its sender
id is whatever the sender wrote.  Three rules follow.

* **Per-host rate.**  Datagrams are admitted per host (`dht.ratelimit.
  source_key`: the IPv4 address or the IPv6 /64), not per port.
* **Verification before the table.**  A request from a sender id we do not
  hold at that address makes us *verify* it: a PING (purpose ``VERIFY``) to
  that address.  If the answer names the same id, the contact enters the
  table (through the usual `RoutingTable.update`).  Verifications are
  bounded: `MAX_VERIFYING` in flight in total, `MAX_VERIFYING_PER_HOST` per
  host, and a per-host and a total token bucket (`VERIFY_RATE`...), so a
  host that answers every ping with a fresh id adds at most one contact
  every 1/`VERIFY_HOST_RATE` seconds.  A stranger that never answers costs
  one tracked RPC for 5 s and never reaches the table (it once grew a table
  from 4 to 166 dead contacts, and a join through that node took 72 s).
* **No amplification.**  What we send to an address that is not verified
  (a live table contact at that address, or an address that answered us
  within `dht.ratelimit.VERIFIED_FOR`) is paid from its credit: 3 times
  the bytes it sent (`dht.ratelimit.AmplificationGuard`, QUIC's rule).
  An answer that does not fit is *parked* while that address's
  verification runs (at most `MAX_PARKED_PER_ADDRESS` per address) and sent
  whole once the address answers the ping, one round trip later; if no
  verification can run, the answer is trimmed to fit (fewer contacts,
  nearest first; fewer providers, best first; contacts instead of a value).
  STORE and ``p2pb_add_provider`` from an unverified address always wait
  for the verification (a forged source must not fill our stores); if it
  cannot run they are refused (answer ``false``).  Each host may also make
  us take at most `STORE_HOST_RATE` of them per second (burst
  `STORE_HOST_BURST`), so one host cannot fill the stores quickly.

A contact that failed `dht.routing.STALE_FAILURES` requests in a row is
stale and is replaced from its bucket's replacement cache, or removed once
another contact has answered since (`RoutingTable.record_failure`).

Queries (one per command, plus internal refreshes and republications) live
in one table keyed by query id; `dht.queries` lists the kinds, their phases
and their result events.  The core drives them all the same way: start the
walk (`Query.new_lookup`), send each peer the lookup step asks for
(`Query.step_request`), feed answers back (`Query.on_step_answer`), and when
the walk ends hand its result to the kind's own next step: a store phase, a
bootstrap's refreshes, a get's cache stores, or the result event.

A bootstrap reports `BootstrapFinished` once the refreshes it started (the
buckets farther than the nearest neighbour, paper 2.3) are done too, so a
node that publishes its records then publishes them to a full routing table.

A lookup that ran to its end (the k closest peers it found all answered, not
stopped early by a value or enough providers; not a bucket refresh's or a
join's, whose targets are random ids and our own) is remembered for
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

Requests are answered with the shapes of ``kademlia.protocol`` (see
`dht.wire`): at once, or, for a stranger's STORE or large answer, once its
verification ends ("Strangers" above).  Bad input from a peer never raises:
it becomes a counted drop (`DatagramDropped`) or, if it breaks the protocol,
`PeerMisbehaved`.  Our own misuse (a 19-byte key, an invalid value to put,
time going backwards) raises `LocalProtocolError`; a store too full to hold
our own value does not (it counts ``own_value_not_held``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random
from typing import Any, Final

from dht import wire
from dht.events import (
    MAX_QUEUED_NOTICES,
    DatagramDropped,
    Event,
    PeerMisbehaved,
    ProviderStored,
    RecordStored,
    ValueFound,
)
from dht.ids import ALPHA, ID_BYTES, Address, Contact, K, distance, shared_address
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
from dht.queries import (
    AddProviderQuery,
    Answer,
    BootstrapQuery,
    GetProvidersQuery,
    GetQuery,
    LookupQuery,
    ProvidersAnswer,
    PutQuery,
    Query,
    ReannounceQuery,
    RefreshQuery,
    RepublishQuery,
    StoreQuery,
    WalkParams,
)
from dht.ratelimit import (
    AMPLIFICATION_FACTOR,
    MAX_SOURCES,
    SOURCE_BURST,
    SOURCE_RATE,
    VERIFIED_FOR,
    AmplificationGuard,
    KeyedBuckets,
    TokenBucketLimiter,
    source_key,
)
from dht.records import (
    MAX_RECORDS,
    RECORD_TTL,
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
from dht.rpc import Purpose, Rpc, RpcTracker
from dht.wire import Value, WireError
from identity.compile_hints import mypyc_attr
from identity.errors import LocalProtocolError
from identity.pacing import TokenBucket

#: rpcudp's ``wait_timeout``: seconds before an unanswered RPC has failed.
RPC_TIMEOUT: Final = 5.0
#: The node id a node in client mode answers a ping with (`DhtCore.client_mode`): no
#: node has it, so a verifying node admits nothing to its table, yet learns the address
#: receives its answers.
CLIENT_NODE_ID: Final = bytes(20)
#: Seconds after the first send at which an unanswered request is sent again.
RETRANSMIT_AFTER: Final = (0.5, 1.0, 2.0, 3.0)
#: Seconds a finished lookup's result may replace a new walk to the same key.
WALK_REUSE: Final = 60.0
#: Most lookup results remembered for reuse (the oldest is forgotten first).
MAX_WALKS_KEPT: Final = 64
#: Verification pings of strangers in flight, in total and per host.
MAX_VERIFYING: Final = 64
MAX_VERIFYING_PER_HOST: Final = 2
#: Verifications started per second, in total (and burst) ...
VERIFY_RATE: Final = 10.0
VERIFY_BURST: Final = 40.0
#: ... and per host (and burst): a host adds at most one contact per 2 s.
VERIFY_HOST_RATE: Final = 0.5
VERIFY_HOST_BURST: Final = 8.0
#: STOREs and ``p2pb_add_provider``s one host may make us take per second
#: (and burst); beyond it they are refused (answer ``false``).  Honest holders
#: replicate hourly and re-announce every few hours, well below this; a host
#: that wants to fill our stores is slowed to 18,000 values an hour.
STORE_HOST_RATE: Final = 5.0
STORE_HOST_BURST: Final = 100.0
#: Requests held per address while its verification runs (alpha concurrent
#: lookup steps, plus a STORE).
MAX_PARKED_PER_ADDRESS: Final = ALPHA + 1


def _give_back(*tables: dict[Any, Any]) -> None:
    """Free the hash table of each emptied dict: a dict keeps the table it grew to after
    its last entry is deleted (a busy moment's queries or verifications, up to 1 KiB per
    node), and ``clear`` gives it back."""
    for table in tables:
        if not table:
            table.clear()


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
    #: Seconds between a holder's re-stores of a record it holds (None: never, as
    #: go-libp2p-kad-dht; `REPLICATE_INTERVAL` is the paper's hourly replication).
    replicate_interval: float | None = None
    republish_interval: float = REPUBLISH_INTERVAL
    max_records: int = MAX_RECORDS
    provider_ttl: float = PROVIDER_TTL
    provider_republish_interval: float = PROVIDER_REPUBLISH_INTERVAL
    max_providers_per_key: int = MAX_PROVIDERS_PER_KEY
    max_provider_values: int = MAX_PROVIDER_VALUES
    source_rate: float = SOURCE_RATE
    source_burst: float = SOURCE_BURST
    max_sources: int = MAX_SOURCES
    #: Bytes we may send an unverified address per byte it sent (`dht.ratelimit`).
    amplification_factor: float = AMPLIFICATION_FACTOR
    #: Seconds an address that answered us counts as verified.
    verified_for: float = VERIFIED_FOR

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1:
            raise LocalProtocolError("k and alpha must be >= 1")
        offsets = (0.0, *self.retransmit_after, self.rpc_timeout)
        if any(b <= a for a, b in itertools.pairwise(offsets)):
            raise LocalProtocolError("retransmit_after must increase and end before rpc_timeout")


#: Events that count against `MAX_QUEUED_NOTICES`.
_NOTICES: Final = (PeerMisbehaved, DatagramDropped, RecordStored, ProviderStored)


def _require_held(outcome: StoreOutcome, store: str) -> bool:
    """Whether our own value is held in ``store``; raise `LocalProtocolError` for our bugs.

    INVALID and OUTDATED mean our own code offered a bad or old value.  FULL
    is not a bug: strangers may fill a store (the stores exempt published
    values, but a full store must never stop the node), so the caller counts
    it and still announces the value.
    """
    if outcome is StoreOutcome.INVALID:
        raise LocalProtocolError(f"the value is over the size limit or refused by the {store} validator")
    if outcome is StoreOutcome.OUTDATED:
        raise LocalProtocolError(f"a better value is already held in the {store} store")
    return outcome is not StoreOutcome.FULL


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's DHT model and census subclass it
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
        self._guard = AmplificationGuard(cfg.amplification_factor, cfg.verified_for, cfg.max_sources)
        #: Strangers being verified: address -> the id it claimed; and how many per host.
        self._verifying: dict[Address, bytes] = {}
        self._verifying_hosts: Counter[str] = Counter()
        self._verify_rate = TokenBucket(VERIFY_RATE, VERIFY_BURST, now)
        self._verify_host_rate = KeyedBuckets(VERIFY_HOST_RATE, VERIFY_HOST_BURST, cfg.max_sources)
        self._store_host_rate = KeyedBuckets(STORE_HOST_RATE, STORE_HOST_BURST, cfg.max_sources)
        #: Requests waiting for their address's verification, by address.
        self._parked: dict[Address, list[wire.Request]] = {}
        #: Counts of everything that happened, by name (drops, misbehaviour, RPCs).
        self.stats: Counter[str] = Counter()
        #: Client mode (a node others cannot dial, `p2pblog.reachability`): it looks
        #: things up but serves no request, and keeps out of other nodes' tables.
        self.client_mode = False
        self._rpcs = RpcTracker(rng, cfg.retransmit_after, cfg.rpc_timeout)
        self._walk_params = WalkParams(
            k=cfg.k, alpha=cfg.alpha, peer_timeout=cfg.lookup_peer_timeout, local_id=node_id
        )
        #: Every running query by id: one table of continuations for all kinds.
        self._queries: dict[int, Query] = {}
        self._next_query_id = 1
        self._outgoing: list[tuple[bytes, Address]] = []
        # A list, not a deque: an empty deque keeps a 64-slot block (0.5 KiB per node),
        # and the queue is short (the driver drains it after every input).
        self._events: list[Event] = []
        self._notices_queued = 0
        #: Key -> (when, the k closest peers) of lookups that ran to their end,
        #: the least recently finished first.
        self._walks: dict[bytes, tuple[float, tuple[Contact, ...]]] = {}

    # ================================================================== outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Datagrams produced since the last call, in order; the driver sends them all."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        if not self._events:
            return None
        event = self._events.pop(0)
        if isinstance(event, _NOTICES):
            self._notices_queued -= 1
        return event

    def get_timer(self) -> float | None:
        """The earliest time at which `handle_timer` has work, or None."""
        # Asked after every input: plain comparisons (the first of equal deadlines wins, as
        # with min), no list to sort.
        at = self._rpcs.next_deadline()
        if self.config.lookup_peer_timeout < self.config.rpc_timeout:
            # Otherwise a lookup's peer times out no earlier than the RPC to it,
            # whose deadline is above; asked after every input, so skip the scan.
            for query in self._queries.values():
                if query.lookup is not None:
                    d = query.lookup.next_deadline()
                    if d is not None and (at is None or d < at):
                        at = d
        for d in (self.table.next_refresh(), self.records.next_deadline(), self.providers.next_deadline()):
            if d is not None and (at is None or d < at):
                at = d
        return at

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
        addr = shared_address(addr)
        self.stats["rx.datagrams"] += 1
        if not self._limiter.allow(source_key(addr), now):
            self._dropped(addr, "rate limited")
            return
        self._guard.received(addr, len(data), now)
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
            if query.lookup is not None:
                deadline = query.lookup.next_deadline()
                if deadline is not None and deadline <= now:
                    self._drive(query, now)
        for index in self.table.buckets_due(now):
            self.table.touch_bucket(index, now)
            target = self.table.random_id_in_bucket(index, self._rng)
            self.stats["refresh.buckets"] += 1
            self._start(RefreshQuery(self._new_query_id(), target), now)
        for key, value in self.records.due(now):
            self.stats["records.republished"] += 1
            self._start(RepublishQuery(self._new_query_id(), key, value), now)
        for key, provider in self.providers.due(now):
            self.stats["providers.reannounced"] += 1
            self._start(ReannounceQuery(self._new_query_id(), key, provider), now)

    # ================================================================== commands

    def start_lookup(self, target: bytes, now: float) -> int:
        """Find the k nodes closest to ``target`` (FIND_NODE).  Ends with `LookupFinished`."""
        self._advance(now)
        self._check_key(target, "target")
        return self._start(LookupQuery(self._new_query_id(), target), now)

    def start_get(self, key: bytes, now: float, *, quorum: int = 1) -> int:
        """Find a value for ``key`` (FIND_VALUE).  Ends with `ValueFound` or `ValueNotFound`.

        The lookup stops once ``quorum`` valid values are in (a copy we hold
        counts as one); the selector then picks the best of them.
        """
        self._advance(now)
        self._check_key(key, "key")
        if quorum < 1:
            raise LocalProtocolError("quorum must be >= 1")
        query = GetQuery(self._new_query_id(), key, quorum, self.records, self._get_selector)
        return self._start(query, now)

    def start_put(self, key: bytes, value: Value, now: float) -> int:
        """Publish ``value`` under ``key``: hold it, republish it, STORE it at the k closest.

        Ends with `PutFinished`.  Raises `LocalProtocolError` if the value is
        not valid (type, size, validator) or worse than a value already held.
        A full store only counts ``own_value_not_held``: the STOREs still go out.
        """
        self._advance(now)
        self._check_key(key, "key")
        if not wire.is_value(value):
            raise LocalProtocolError("a DHT value is int, float, bool, str or bytes")
        if not _require_held(self.records.put(key, value, now, published=True), "record"):
            self.stats["own_value_not_held"] += 1
        return self._start(PutQuery(self._new_query_id(), key, value), now)

    def start_add_provider(self, key: bytes, value: bytes, now: float) -> int:
        """Announce ``value`` as a provider of ``key``: hold it, re-announce it, and send
        ``p2pb_add_provider`` to the k closest nodes.  Ends with `ProvidersAdded`.

        Raises `LocalProtocolError` if the provider validator refuses the value,
        or a better value of the same provider is already held.  A full
        store only counts ``own_value_not_held``: the announcement still goes out.
        """
        self._advance(now)
        self._check_key(key, "key")
        if not isinstance(value, bytes):
            raise LocalProtocolError("a provider value is bytes")
        if not _require_held(self.providers.add(key, value, now, published=True), "provider"):
            self.stats["own_value_not_held"] += 1
        return self._start(AddProviderQuery(self._new_query_id(), key, value), now)

    def start_get_providers(
        self, key: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY, seen: bool = False
    ) -> int:
        """Find providers of ``key`` (``p2pb_get_providers``).  Ends with `ProvidersFound`.

        The lookup gathers valid provider values (one per provider, the
        selector's pick between versions; those we hold count too) until
        ``want`` distinct providers are in or the k closest nodes answered.
        With ``seen`` it asks for first-seen times (`dht.wire`, issue 15):
        `ProvidersFound.seen` then lists, per value, the times reported for
        its provider, ours and at most one per answering node.
        """
        self._advance(now)
        self._check_key(key, "key")
        if want < 1:
            raise LocalProtocolError("want must be >= 1")
        return self._start(GetProvidersQuery(self._new_query_id(), key, want, self.providers, seen=seen), now)

    def bootstrap(self, addrs: Iterable[Address], now: float) -> int:
        """Join the network through ``addrs`` (paper 2.3).  Ends with `BootstrapFinished`.

        Pings every address (as ``kademlia.Server.bootstrap`` does, to learn
        the ids), then looks up our own id starting from those that answered
        and the table, then (config) refreshes the buckets farther away than
        the nearest neighbour found.
        """
        self._advance(now)
        unique = list(dict.fromkeys(shared_address((str(host), int(port))) for host, port in addrs))
        query = BootstrapQuery(self._new_query_id(), self.node_id, len(unique))
        self._queries[query.query_id] = query
        for addr in unique:
            ping = wire.Ping(self._rpcs.new_msg_id(), self.node_id)
            self._send(ping, addr, None, Purpose.SEED_PING, query.query_id, now)
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
        if self.client_mode:
            # Not reachable from outside: serve nobody, and answer a verification ping
            # with `CLIENT_NODE_ID`, so that the pinger answers our requests in full
            # (our address answered) but admits no contact of ours to its table.
            if isinstance(request, wire.Ping):
                self._reply(wire.ping_response(request.msg_id, CLIENT_NODE_ID), addr, now)
            else:
                self._dropped(addr, "client mode")
            return
        if isinstance(request, wire.Stun):
            self._reply(wire.stun_response(request.msg_id, addr), addr, now)
            return
        # A request never changes the table by itself (module docstring, "Strangers").
        # A live contact of the table (it answered us, and has not failed
        # since) counts as verified.  Any other sender is pinged, unless its
        # address answered us lately and a ping would teach us nothing: the
        # table already holds it or its bucket caches it as a replacement, or
        # its bucket has no room (`RoutingTable.has_room`: full, none stale, no
        # liveness check due, replacement cache full).  The ping exists so that
        # only contacts that answered enter the table; with no room there is
        # nothing to admit, and its answer could only reorder the replacement
        # cache.  The answer to the request is the same either way (the address
        # is verified, so the amplification budget allows it in full).
        sender = Contact(request.sender_id, addr)
        known = self.table.get(request.sender_id)
        if known is not None and known.addr == addr and not self.table.stale(known.node_id):
            self._reply(self._response(request, addr, now, None), addr, now, verified=True)
            return
        if self._guard.is_verified(addr, now) and (
            self.table.knows(sender) or not self.table.has_room(sender.node_id, now)
        ):
            self._reply(self._response(request, addr, now, None), addr, now)
            return
        verifying = self._verify(sender, now)
        self._answer(request, addr, now, may_park=verifying)

    def _answer(self, request: wire.Request, addr: Address, now: float, *, may_park: bool) -> None:
        """Answer ``request`` within ``addr``'s budget: whole, parked, trimmed, or refused."""
        budget = self._guard.budget(addr, now)
        if budget is None:
            self._reply(self._response(request, addr, now, None), addr, now)
            return
        if isinstance(request, wire.Store | wire.AddProvider):
            if may_park and self._park(request, addr):
                return
            self.stats["store.unverified_refused"] += 1
            refused = wire.store_response(request.msg_id, False)
            self._reply(refused, addr, now)
            return
        whole = self._response(request, addr, now, None)
        if len(whole) <= budget:
            self._reply(whole, addr, now)
            return
        if may_park and self._park(request, addr):
            return
        self.stats["tx.trimmed_answers"] += 1
        self._reply(self._response(request, addr, now, budget), addr, now)

    def _response(self, request: wire.Request, addr: Address, now: float, max_bytes: int | None) -> bytes:
        """The answer datagram to ``request``; with ``max_bytes``, trimmed to fit (if it can be)."""
        assert not isinstance(request, wire.Stun | wire.UnknownRequest)
        sender = Contact(request.sender_id, addr)
        if isinstance(request, wire.Ping):
            return wire.ping_response(request.msg_id, self.node_id)
        if isinstance(request, wire.Store | wire.AddProvider):
            if not self._store_host_rate.take(source_key(addr), now):
                self.stats["store.rate_limited"] += 1
                return wire.store_response(request.msg_id, False)  # same bytes as add_provider's
            if isinstance(request, wire.Store):
                return wire.store_response(request.msg_id, self._on_store(request, sender, now))
            return wire.add_provider_response(request.msg_id, self._on_add_provider(request, sender, now))
        if isinstance(request, wire.FindNode):
            closest = self.table.closest(request.target, exclude_id=sender.node_id, exclude_addr=addr)
            return wire.find_node_response(request.msg_id, closest, max_bytes)
        if isinstance(request, wire.GetProviders):
            closest = self.table.closest(request.key, exclude_id=sender.node_id, exclude_addr=addr)
            if not request.seen:
                held = self.providers.get(request.key, now)
                return wire.get_providers_response(request.msg_id, held, closest, max_bytes)
            triples = self.providers.get_with_seen(request.key, now)
            values, seen = [v for _, v, _ in triples], [int(t) for _, _, t in triples]
            return wire.get_providers_response(request.msg_id, values, closest, max_bytes, seen=seen)
        value = self.records.get(request.key, now)
        if value is not None:
            found = wire.find_value_response(request.msg_id, value)
            if max_bytes is None or len(found) <= max_bytes:
                return found  # (no `closest`: most FIND_VALUE a read sends reach holders)
        closest = self.table.closest(request.key, exclude_id=sender.node_id, exclude_addr=addr)
        return wire.find_value_response(request.msg_id, closest, max_bytes)

    # ================================================================== strangers

    def _verify(self, sender: Contact, now: float) -> bool:
        """Ping a stranger to learn whether it answers as ``sender``; True while one runs.

        Bounded in total and per host, paced, and paid from the address's
        credit (module docstring, "Strangers")."""
        addr = sender.addr
        if addr in self._verifying:
            return True
        host = source_key(addr)
        if len(self._verifying) >= MAX_VERIFYING or self._verifying_hosts[host] >= MAX_VERIFYING_PER_HOST:
            self.stats["verify.busy"] += 1
            return False
        if not self._verify_rate.take(now) or not self._verify_host_rate.take(host, now):
            self.stats["verify.rate_limited"] += 1
            return False
        ping = wire.Ping(self._rpcs.new_msg_id(), self.node_id)
        if not self._guard.spend(addr, len(wire.encode_request(ping)), now):
            self.stats["verify.no_credit"] += 1
            return False
        self._verifying[addr] = sender.node_id
        self._verifying_hosts[host] += 1
        self.stats["verify.started"] += 1
        self._send(ping, addr, sender.node_id, Purpose.VERIFY, None, now)
        return True

    def _park(self, request: wire.Request, addr: Address) -> bool:
        """Hold ``request`` until ``addr``'s verification ends; False if there is no room."""
        parked = self._parked.setdefault(addr, [])
        if any(p.msg_id == request.msg_id for p in parked):
            self.stats["verify.duplicate_parked"] += 1  # a retransmit: the first copy is answered
            return True
        if len(parked) >= MAX_PARKED_PER_ADDRESS:
            return False
        parked.append(request)
        self.stats["verify.parked"] += 1
        return True

    def _verified(self, rpc: Rpc, responder: bytes | None, now: float) -> None:
        """A verification ended: answered (``responder``) or not (None)."""
        addr = rpc.addr
        self._verifying.pop(addr, None)
        host = source_key(addr)
        self._verifying_hosts[host] -= 1
        if self._verifying_hosts[host] <= 0:
            del self._verifying_hosts[host]
        parked = self._parked.pop(addr, [])
        _give_back(self._verifying, self._verifying_hosts, self._parked)
        if responder is None:
            self.stats["verify.failed"] += 1
            self.stats["verify.parked_dropped"] += len(parked)
            return
        if responder == rpc.node_id:
            self.stats["verify.answered"] += 1
            self._saw(Contact(responder, addr), now)
        else:
            self.stats["verify.other_id"] += 1
        for request in parked:
            self._answer(request, addr, now, may_park=False)

    def _on_store(self, request: wire.Store, sender: Contact, now: float) -> bool:
        outcome = self.records.put(request.key, request.value, now, source=source_key(sender.addr))
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
        outcome = self.providers.add(request.key, request.value, now, source=source_key(sender.addr))
        self.stats[f"providers.{outcome.value}"] += 1
        if outcome is StoreOutcome.INVALID:
            self._misbehaved(sender.addr, sender.node_id, "invalid provider value")
        elif outcome is StoreOutcome.STORED:
            self._notice(ProviderStored(request.key, request.value, sender))
        return outcome in (StoreOutcome.STORED, StoreOutcome.REFRESHED)

    def _reply(self, datagram: bytes, addr: Address, now: float, *, verified: bool = False) -> None:
        if not verified and not self._guard.spend(addr, len(datagram), now):
            self._dropped(addr, "answer over the amplification budget")
            return
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
            ping = wire.Ping(self._rpcs.new_msg_id(), self.node_id)
            self._send(ping, to_ping.addr, to_ping.node_id, Purpose.CHECK, None, now)

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
            self._send_store(contact, key, value, now)

    def _promoted(self, contact: Contact | None, now: float) -> None:
        if contact is not None:
            self._welcome(contact, now)

    # ================================================================== RPCs out

    def _send(
        self,
        request: wire.Request,
        addr: Address,
        node_id: bytes | None,
        purpose: Purpose,
        query_id: int | None,
        now: float,
    ) -> None:
        rpc = self._rpcs.track(request, addr, node_id, purpose, query_id, now)
        self._outgoing.append((rpc.datagram, addr))
        self.stats[f"tx.request.{rpc.name}"] += 1

    def _send_store(self, contact: Contact, key: bytes, value: Value, now: float) -> None:
        """A fire-and-forget STORE (purpose ``CACHE_STORE``)."""
        request = wire.Store(self._rpcs.new_msg_id(), self.node_id, key, value)
        self._send(request, contact.addr, contact.node_id, Purpose.CACHE_STORE, None, now)

    def _expire_rpcs(self, now: float) -> None:
        while (rpc := self._rpcs.pop_due(now)) is not None:
            if not rpc.timed_out:
                if rpc.purpose is Purpose.VERIFY and not self._guard.spend(rpc.addr, len(rpc.datagram), now):
                    self.stats["verify.retransmit_without_credit"] += 1
                    continue
                self._outgoing.append((rpc.datagram, rpc.addr))
                self.stats["tx.retransmits"] += 1
                continue
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
        self._rpcs.close(rpc)
        self._guard.verify(addr, now)  # it saw our message id: it receives at addr
        self.stats[f"rx.response.{rpc.name}"] += 1
        try:
            self._on_answer(rpc, response.body, now)
        except WireError as exc:
            self._misbehaved(addr, rpc.node_id, "malformed answer", f"{rpc.name}: {exc}")
            self._rpc_failed(rpc, now)

    def _on_answer(self, rpc: Rpc, body: object, now: float) -> None:
        """Parse the answer by the request's kind and dispatch it; raises `WireError`."""
        if rpc.name == wire.PING:
            responder = wire.parse_ping_response(body)
            if rpc.purpose is Purpose.VERIFY:
                self._verified(rpc, responder, now)
                return
            if rpc.node_id is not None and responder != rpc.node_id:
                # Another node now lives at that address: the one we knew is gone.
                self._promoted(self.table.eviction_failed(rpc.node_id, now), now)
            contact = Contact(responder, rpc.addr)
            self._saw(contact, now)
            self._query_success(rpc, contact, None, now)
            return
        assert rpc.node_id is not None
        contact = Contact(rpc.node_id, rpc.addr)
        answer: Answer
        if rpc.name == wire.STORE:
            answer = wire.parse_store_response(body)
        elif rpc.name == wire.ADD_PROVIDER:
            answer = wire.parse_add_provider_response(body)
        elif rpc.name == wire.FIND_NODE:
            answer = wire.parse_find_node_response(body)
        elif rpc.name == wire.GET_PROVIDERS:
            values, seen, contacts = wire.parse_get_providers_seen(body)
            answer = ProvidersAnswer(values, contacts, seen)
        else:
            answer = wire.parse_find_value_response(body)
        self._saw(contact, now)
        self._query_success(rpc, contact, answer, now)

    def _rpc_failed(self, rpc: Rpc, now: float, *, silent: bool = False) -> None:
        if rpc.purpose is Purpose.VERIFY:
            self._verified(rpc, None, now)
            return
        if silent and rpc.name in wire.P2PBLOG_RPCS:
            # kademlia nodes never answer p2pblog's RPCs: silence is no proof of death.
            self.stats["rpc.unanswered_p2pblog_rpc"] += 1
        elif rpc.node_id is not None:
            if rpc.purpose is Purpose.CHECK:
                # Paper 2.2: the least-recently seen contact did not answer: evict it.
                self.stats["table.evictions"] += 1
                self._promoted(self.table.eviction_failed(rpc.node_id, now, checked_at=rpc.sent_at), now)
            else:
                self._promoted(self.table.record_failure(rpc.node_id, now, sent_at=rpc.sent_at), now)
        query = self._queries.get(rpc.query_id) if rpc.query_id is not None else None
        if query is None:
            return
        if rpc.purpose is Purpose.LOOKUP_STEP:
            if query.lookup is not None:
                assert rpc.node_id is not None
                query.lookup.on_failure(rpc.node_id, now)
                self._drive(query, now)
        elif rpc.purpose is Purpose.SEED_PING:
            assert isinstance(query, BootstrapQuery)
            if query.on_seed_failed():
                self._begin_lookup(query, now)
        elif rpc.purpose is Purpose.PUT_STORE:
            assert isinstance(query, StoreQuery) and rpc.node_id is not None
            if query.on_store_failed(Contact(rpc.node_id, rpc.addr)):
                self._finish(query)

    def _query_success(self, rpc: Rpc, contact: Contact, answer: Answer, now: float) -> None:
        query = self._queries.get(rpc.query_id) if rpc.query_id is not None else None
        if query is None:
            return
        if rpc.purpose is Purpose.LOOKUP_STEP:
            if query.lookup is not None:
                invalid = query.on_step_answer(query.lookup, contact, answer, now)
                while invalid:
                    self._misbehaved(contact.addr, contact.node_id, query.invalid_answer)
                    invalid -= 1
                self._drive(query, now)
        elif rpc.purpose is Purpose.SEED_PING:
            assert isinstance(query, BootstrapQuery)
            if query.on_seed_answered(contact):
                self._begin_lookup(query, now)
        elif rpc.purpose is Purpose.PUT_STORE:
            assert isinstance(query, StoreQuery)
            if query.on_stored(contact, answer is True):
                self._finish(query)

    # ================================================================== queries

    def _new_query_id(self) -> int:
        query_id = self._next_query_id
        self._next_query_id += 1
        return query_id

    def _start(self, query: Query, now: float) -> int:
        """Run a new query: store at a recent walk's result, or walk."""
        self._queries[query.query_id] = query
        walk = self._walks.get(query.target)  # only lookups with a non-empty result are kept
        if isinstance(query, StoreQuery) and walk is not None and now - walk[0] <= self.config.walk_reuse:
            self.stats["lookups.reused"] += 1
            self._store_at(query, walk[1], now)
        else:
            self._begin_lookup(query, now)
        return query.query_id

    def _begin_lookup(self, query: Query, now: float) -> None:
        self.table.touch(query.target, now)
        query.lookup = query.new_lookup(self.table.closest(query.target), self._walk_params, now)
        self._drive(query, now)

    def _drive(self, query: Query, now: float) -> None:
        """Send what the walk asks for; hand its result on once it ended."""
        lookup = query.lookup
        if lookup is None:
            return
        if not lookup.finished:
            for contact in lookup.next(now):
                request = query.step_request(self._rpcs.new_msg_id(), self.node_id)
                self._send(request, contact.addr, contact.node_id, Purpose.LOOKUP_STEP, query.query_id, now)
        if lookup.finished:
            query.lookup = None
            self._walk_done(query, lookup, now)

    def _walk_done(self, query: Query, lookup: ClosestPeersLookup, now: float) -> None:
        closest = tuple(lookup.result())
        # A refresh walks to a random id and a join to our own: no put or
        # announcement follows to the same key, so neither is kept.
        if (
            not lookup.stopped_early
            and closest
            and self.config.walk_reuse > 0
            and not isinstance(query, RefreshQuery | BootstrapQuery)
        ):
            walks = self._walks
            walks.pop(query.target, None)  # to the end: the most recent
            # Kept for a minute: the table's objects, not the copies the answers brought.
            walks[query.target] = (now, tuple(map(self.table.shared, closest)))
            while len(walks) > MAX_WALKS_KEPT:
                del walks[next(iter(walks))]
        # What follows a walk is each kind's own (rust-libp2p kad's
        # ``QueryInfo`` match); the kinds are in `dht.queries`.
        if isinstance(query, StoreQuery):
            self._store_at(query, closest, now)
            return
        if isinstance(query, BootstrapQuery) and self.config.refresh_after_bootstrap and closest:
            self._refresh_after_join(query, closest, now)
            if query.pending:
                return
        del self._queries[query.query_id]
        _give_back(self._queries)
        if isinstance(query, RefreshQuery):
            self._refresh_done(query)
        elif isinstance(query, BootstrapQuery):
            self._emit(query.result(closest))
        elif isinstance(query, LookupQuery):
            self._emit(query.result(lookup, closest))
        elif isinstance(query, GetQuery):
            assert isinstance(lookup, ValueLookup)
            self._get_done(query, lookup, now)
        elif isinstance(query, GetProvidersQuery):
            assert isinstance(lookup, ProvidersLookup)
            self._emit(query.result(lookup))

    def _refresh_after_join(self, query: BootstrapQuery, closest: tuple[Contact, ...], now: float) -> None:
        """Paper 2.3: refresh every bucket farther than the nearest neighbour found."""
        # The bootstrap reports its join once these are done too (module docstring).
        query.refreshing(closest)
        nearest = self.table.bucket_index(closest[0].node_id)
        for index in range(nearest + 1, 8 * ID_BYTES):
            target = self.table.random_id_in_bucket(index, self._rng)
            refresh = RefreshQuery(self._new_query_id(), target)
            self._start(refresh, now)
            if refresh.query_id in self._queries:  # (not if it ended at once)
                refresh.parent = query.query_id
                query.refresh_started()

    def _refresh_done(self, refresh: RefreshQuery) -> None:
        parent = self._queries.get(refresh.parent) if refresh.parent is not None else None
        if isinstance(parent, BootstrapQuery) and parent.refresh_done():
            del self._queries[parent.query_id]
            _give_back(self._queries)
            self._emit(parent.result())

    def _store_at(self, query: StoreQuery, closest: tuple[Contact, ...], now: float) -> None:
        """A put's or announcement's second phase: STORE (ADD_PROVIDER) at ``closest``."""
        query.storing(len(closest))
        for contact in closest:
            request = query.store_request(self._rpcs.new_msg_id(), self.node_id)
            self._send(request, contact.addr, contact.node_id, Purpose.PUT_STORE, query.query_id, now)
        if not closest:
            self._finish(query)

    def _get_done(self, query: GetQuery, lookup: ValueLookup, now: float) -> None:
        event = query.result(lookup)
        self._emit(event)
        if isinstance(event, ValueFound):
            for contact in query.cache_targets(lookup, event.value):
                self.stats["records.cache_stores"] += 1
                self._send_store(contact, query.target, event.value, now)

    def _finish(self, query: StoreQuery) -> None:
        """A put's STOREs (an announcement's ADD_PROVIDERs) have all been answered or failed."""
        self._queries.pop(query.query_id, None)
        _give_back(self._queries)
        event = query.result()
        if event is not None:
            self._emit(event)

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
