"""Iterative lookups as pure state machines: FIND_NODE and FIND_VALUE.

Theory of operation
-------------------
This is rust-libp2p's ``protocols/kad/src/query/peers/closest.rs`` in Python.
A lookup knows nothing about sockets or RPCs.  Its driver (the `DhtCore`)
asks `ClosestPeersLookup.next` which peers to query now, sends the RPCs, and
reports each outcome with `on_success` (with the closer peers the answer
named) or `on_failure`.  Every call carries ``now``.

The lookup keeps every peer it has heard of, ordered by XOR distance to the
target, each in one `PeerState`::

    NOT_CONTACTED --next--> WAITING --on_success--> SUCCEEDED
                               |  \\--on_failure--> FAILED
                               | peer_timeout passes (seen in next)
                               v
                          UNRESPONSIVE --on_success--> SUCCEEDED
                                       \\--on_failure--> FAILED

`next` walks the peers nearest first:

* first, every WAITING peer whose deadline passed becomes UNRESPONSIVE (it
  no longer holds a slot, but a late answer still counts);
* each SUCCEEDED peer is counted, and when k of them are counted before any
  peer that is still in flight or not yet asked, the lookup is FINISHED:
  the k closest peers seen have all answered (or failed and been skipped);
* the first NOT_CONTACTED peer is queried if there is capacity.

Capacity is alpha requests in flight while the lookup makes progress
(paper section 2.3: "the initiator sends parallel, asynchronous FIND_NODE
RPCs to the alpha nodes it has chosen").  An answer makes progress when it
names a peer nearer than every peer seen so far (or the lookup has not yet
seen k peers).  After alpha answers in a row without progress the lookup is
*stalled* and capacity rises to k: section 2.3's "if a round of FIND_NODEs
fails to return a node any closer than the closest already seen, the
initiator resends the FIND_NODE to all of the k closest nodes it has not
already queried".  Progress returns it to alpha.

When no peer is in flight and none is left to ask, the lookup is FINISHED
as well.  `ClosestPeersLookup.result` is then the k nearest SUCCEEDED peers.

A peer is a *contact*, an (id, address) pair, not an id.  FIND_NODE
answers are not signed and name ids at any address, so a liar can name the
honest nodes next to the key at addresses nobody listens on (or at its
own).  Keyed by id, the first claim won and the real node was never asked:
one liar could hide every holder of a key.  Here each address named for an
id (one per answer) is a candidate of its own, at the id's distance, tried
in the order heard.  Only one contact of an id is in flight at a time (the
driver reports outcomes by id), so a second address waits until the first
answered or failed.  The lookup counts ids, not contacts, towards its k:
an id counts once any of its contacts answered, and its other addresses
are still asked before the walk may finish (an answer from a liar's own
address does not stand for the real node).  In an honest network every
id has one address, and nothing changes.

The k closest are *diverse*: `next` walks twice.  The first pass counts
at most ``max_per_network`` (`dht.routing.MAX_CLOSEST_PER_NETWORK`, 2)
answered ids of one network (`identity.netaddr.network_key`: IPv4 /24,
IPv6 /48) and steps over the rest of that network's peers, which it
neither counts, asks nor waits for; the lookup finishes when it counted k.
Only when that pass has nobody left to ask does the second one walk as
above, every network alike: it may ask the stepped-over peers, and may
finish only if no peer the first pass could still count is in flight.
`result` likewise takes at most ``max_per_network`` of a network and fills
what is left with the nearest others.  So k Sybils with ids next to a key
from one /24 hold 2 of its k closest, not all of them (discv5 caps a table
bucket at 2 per /24; libp2p's diversity filter), while a single-network
deployment (a LAN, the process tests on 127.0.0.1) walks and ends exactly
as before: the first pass matches the plain one up to its second answered
id, then steps over everyone and hands over.

`ValueLookup` is the same machine plus `ValueLookup.on_value`: a peer that
answered with a value counts as succeeded, its value is kept, and the lookup
finishes as soon as values from ``quorum`` sources are in (section 2.3: "the
procedure halts immediately when any node returns the value"; quorum 1 is
exactly that), or when nobody is left to ask.  Once a peer returned a value it has
no more requests in flight than values it still lacks: a request beyond
that would be answered only after the quorum is in.  The driver validates values
before it reports them.  A source is the address that sent a value (our
own copy is one source): a liar that answers for many ids from one address
is one answer.  `dht.queries.GetQuery` asks for at least `READ_QUORUM`
sources, so the selector weighs a liar's value against honest ones.

`ProvidersLookup` is the same machine for ``p2pb_get_providers``: every
answer names closer peers *and* may carry provider values, so answers count
as successes and their values are gathered by provider id.  It does not stop
at the first answer with values (providers are spread over the nodes near
the key, and each holds only those that reached it); it stops when ``want``
distinct providers are in from at least ``sources`` sources, or, like a node
lookup, when the k closest peers have answered.  Anyone can sign a provider
record or a name claim, so one liar can hand over ``want`` valid ones of its
own; ``sources`` makes the lookup hear others too before it stops.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from dht.ids import ALPHA, ID_BYTES, Address, Contact, K
from dht.routing import MAX_CLOSEST_PER_NETWORK, diverse_first, network_of
from dht.wire import Value
from identity.errors import LocalProtocolError

#: Seconds a queried peer holds a slot before it counts as unresponsive.
DEFAULT_PEER_TIMEOUT = 5.0
#: Distinct sources (answering addresses; our own copy is one) a read of
#: values or providers hears before it may stop short of the k closest:
#: one liar near a key is then outvoted by the selector, not believed.
READ_QUORUM = 3


class PeerState(enum.Enum):
    NOT_CONTACTED = "not contacted"
    WAITING = "waiting"
    UNRESPONSIVE = "unresponsive"
    FAILED = "failed"
    SUCCEEDED = "succeeded"


class LookupState(enum.Enum):
    ITERATING = "iterating"
    STALLED = "stalled"
    FINISHED = "finished"


class _Outcome(enum.Enum):
    """How a pass over the peers ended without a peer to query."""

    WAIT = "wait"
    EXHAUSTED = "exhausted"
    BLOCKED = "blocked"


_WAIT = _Outcome.WAIT
_EXHAUSTED = _Outcome.EXHAUSTED
_BLOCKED = _Outcome.BLOCKED
# The states as module constants too: ``PeerState.WAITING`` is a lookup through the enum
# class's metaclass (slow: it defines __getattr__), and a walk compares the state of every peer.
_NOT_CONTACTED = PeerState.NOT_CONTACTED
_WAITING = PeerState.WAITING
_UNRESPONSIVE = PeerState.UNRESPONSIVE
_FAILED = PeerState.FAILED
_SUCCEEDED = PeerState.SUCCEEDED
_ITERATING = LookupState.ITERATING
_STALLED = LookupState.STALLED
_FINISHED = LookupState.FINISHED


@dataclass(slots=True)
class _Peer:
    contact: Contact
    distance: int
    #: `identity.netaddr.network_key` of the contact's host, once a pass asked (`_network`).
    network: str | None = None
    state: PeerState = PeerState.NOT_CONTACTED
    deadline: float = 0.0
    #: RPCs in sequence from us to this peer: 1 for a seed, n + 1 for a peer
    #: first named by a peer at n.
    hop: int = 1


def _network(peer: _Peer) -> str:
    """The peer's network, worked out when first needed (most peers heard of never are)."""
    if peer.network is None:
        peer.network = network_of(peer.contact.addr[0])
    return peer.network


def _distance(peer: _Peer) -> int:
    return peer.distance


@dataclass(slots=True)
class _Order:
    """Peers sorted by distance; the key list makes insertion a bisect."""

    keys: list[int] = field(default_factory=list)
    peers: list[_Peer] = field(default_factory=list)


class ClosestPeersLookup:
    """Find the k peers closest to ``target`` (Kademlia's node lookup, paper 2.3)."""

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        k: int = K,
        alpha: int = ALPHA,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
        local_id: bytes | None = None,
        max_per_network: int | None = None,
    ) -> None:
        if max_per_network is None:
            max_per_network = MAX_CLOSEST_PER_NETWORK
        if len(target) != ID_BYTES:
            raise LocalProtocolError(f"a lookup target is {ID_BYTES} bytes")
        if k < 1 or alpha < 1 or peer_timeout <= 0 or max_per_network < 1:
            raise LocalProtocolError("k, alpha and max_per_network must be >= 1 and peer_timeout > 0")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.peer_timeout = peer_timeout
        self.local_id = local_id
        self.max_per_network = max_per_network
        self.state: LookupState = _ITERATING
        self._target_int = int.from_bytes(target, "big")
        self._no_progress = 0
        #: The last pass stepped over a peer of a network that had its share.
        self._stepped_over = False
        # Deadlines of the WAITING peers, by id (its size is the number in flight).
        self._waiting: dict[bytes, float] = {}
        #: min(_waiting.values()) when known; None after a removal (recomputed
        #: on demand: drivers ask for it after every input).
        self._earliest: float | None = None
        #: Every contact heard of, by id, in the order heard (one per address).
        self._peers: dict[bytes, list[_Peer]] = {}
        self._order = _Order()
        #: Number of peers queried so far (a cost metric for the simulator).
        self.queried = 0
        #: `finish` ended the lookup before the k closest peers had answered.
        self.stopped_early = False
        self._insert_seeds(seeds)

    # ------------------------------------------------------------------ bookkeeping

    def _insert(self, contact: Contact, hop: int = 1) -> int | None:
        """Add a contact (id and address) we have not seen; its distance when it is new, else None."""
        node_id = contact.node_id
        if node_id == self.local_id or len(node_id) != ID_BYTES:
            return None
        # Plain loops, no setdefault or generator: every contact of every answer comes here.
        same_id = self._peers.get(node_id)
        if same_id is None:
            same_id = self._peers[node_id] = []
        else:
            addr = contact.addr
            for p in same_id:
                if p.contact.addr == addr:
                    return None
        d = int.from_bytes(node_id, "big") ^ self._target_int
        peer = _Peer(contact, d, hop=hop)
        same_id.append(peer)
        # bisect_right: an id's later addresses go after its earlier ones.
        order = self._order
        i = bisect.bisect_right(order.keys, d)
        order.keys.insert(i, d)
        order.peers.insert(i, peer)
        return d

    def _insert_seeds(self, seeds: Iterable[Contact]) -> None:
        """`_insert` of every seed, in order, with one sort instead of a bisect and a list
        insert per seed (a read starts from k of them).  The sort is stable, so an id's
        later addresses still go after its earlier ones, as `_insert` places them."""
        added: list[_Peer] = []
        known = self._peers
        target = self._target_int
        for contact in seeds:
            node_id = contact.node_id
            if node_id == self.local_id or len(node_id) != ID_BYTES:
                continue
            same_id = known.get(node_id)
            if same_id is None:
                same_id = known[node_id] = []
            elif any(p.contact.addr == contact.addr for p in same_id):
                continue
            peer = _Peer(contact, int.from_bytes(node_id, "big") ^ target)
            same_id.append(peer)
            added.append(peer)
        peers = self._order.peers
        peers += added
        peers.sort(key=_distance)
        self._order.keys = [p.distance for p in peers]

    def _active(self, node_id: bytes) -> _Peer | None:
        """The contact of ``node_id`` that is in flight or timed out (at most one is)."""
        for peer in self._peers.get(node_id, ()):
            if peer.state is _WAITING or peer.state is _UNRESPONSIVE:
                return peer
        return None

    def _at_capacity(self) -> bool:
        if self.state is _STALLED:
            return len(self._waiting) >= max(self.k, self.alpha)
        if self.state is _ITERATING:
            return len(self._waiting) >= self.alpha
        return True

    @property
    def finished(self) -> bool:
        return self.state is _FINISHED

    @property
    def in_flight(self) -> int:
        """Peers WAITING: queried, not answered, not yet timed out."""
        return len(self._waiting)

    def peer_state(self, node_id: bytes) -> PeerState | None:
        """The state of ``node_id``'s contact in flight, else of its first contact (None: unknown)."""
        peer = self._active(node_id)
        if peer is None:
            same_id = self._peers.get(node_id)
            peer = same_id[0] if same_id else None
        return peer.state if peer is not None else None

    # ------------------------------------------------------------------ inputs

    def on_success(self, node_id: bytes, closer_peers: Iterable[Contact], now: float) -> bool:
        """``node_id`` answered, naming ``closer_peers``.  False if the answer was not expected."""
        del now  # accepted for a uniform signature; nothing here depends on it
        return self._succeed(node_id, closer_peers) is not None

    def _succeed(
        self, node_id: bytes, closer_peers: Iterable[Contact], *, stalls: bool = True
    ) -> _Peer | None:
        """Settle ``node_id`` as answered and add the peers it named; the peer, or None if unexpected.

        ``stalls`` False: an answer without closer peers that is no sign of a
        stall (a value), so it does not count towards the alpha answers in a
        row that raise the capacity to k.
        """
        peer = self._conclude(node_id, _SUCCEEDED)
        if peer is None:
            return None
        progress = False
        hop = peer.hop + 1
        named: set[bytes] = set()
        for contact in closer_peers:
            if contact.node_id in named:
                continue  # one address per id and answer: a liar cannot flood an id
            named.add(contact.node_id)
            seen = len(self._peers)
            d = self._insert(contact, hop)
            if d is not None:
                progress = progress or self._order.keys[0] == d or seen < self.k
        if self.state is _ITERATING and (progress or stalls):
            self._no_progress = 0 if progress else self._no_progress + 1
            if self._no_progress >= self.alpha:
                self.state = _STALLED
        elif self.state is _STALLED and progress:
            self.state = _ITERATING
            self._no_progress = 0
        return peer

    def on_failure(self, node_id: bytes, now: float) -> bool:
        """The RPC to ``node_id`` failed (timed out or answered nonsense)."""
        del now
        return self._conclude(node_id, _FAILED) is not None

    def _conclude(self, node_id: bytes, outcome: PeerState) -> _Peer | None:
        """Settle the contact of ``node_id`` we are waiting on (or that timed out); None if unexpected."""
        if self.state is _FINISHED:
            return None
        peer = self._active(node_id)
        if peer is None:
            return None
        if peer.state is _WAITING:
            del self._waiting[node_id]
            self._earliest = None
        peer.state = outcome
        return peer

    def next(self, now: float) -> list[Contact]:
        """Peers to query now (each returned once); may finish the lookup."""
        # Time out in-flight peers first.  closest.rs does this inside its walk,
        # which never reaches a timed-out peer that lies behind a nearer
        # NOT_CONTACTED one while at capacity, and then waits forever.
        if self._waiting and now >= self._next_waiting_deadline():
            self._time_out_waiting(now)
        out: list[Contact] = []
        while self.state is not _FINISHED:
            peer = self._step(now)
            if peer is None:
                break
            out.append(peer)
        return out

    def _time_out_waiting(self, now: float) -> None:
        for node_id, deadline in list(self._waiting.items()):
            if now >= deadline:
                del self._waiting[node_id]
                peer = self._active(node_id)
                assert peer is not None
                peer.state = _UNRESPONSIVE
        self._earliest = None

    def _next_waiting_deadline(self) -> float:
        if self._earliest is None:
            self._earliest = min(self._waiting.values())
        return self._earliest

    def _step(self, now: float) -> Contact | None:
        # One pass of closest.rs's `next`, made diverse: the first pass counts
        # at most `MAX_CLOSEST_PER_NETWORK` answered ids per network and steps
        # over the rest of that network's peers (neither counted, asked nor
        # waited for).  Only when it runs out of peers short of k does the
        # second pass walk as before, every network alike (the soft rule).
        # Returns a peer to query, or None when the lookup must wait (at
        # capacity / for answers) or has finished.
        outcome = self._pass(now, diverse=True)
        if (outcome is _EXHAUSTED or outcome is _BLOCKED) and self._stepped_over:
            # A diverse peer still in flight may yet count: the plain pass
            # may ask others meanwhile, but not finish.
            outcome = self._pass(now, diverse=False, may_finish=outcome is _EXHAUSTED)
        if outcome is _EXHAUSTED or outcome is _BLOCKED:
            if not self._waiting:
                self.state = _FINISHED
            return None
        return outcome if isinstance(outcome, Contact) else None

    def _pass(self, now: float, *, diverse: bool, may_finish: bool = True) -> Contact | _Outcome:
        """One walk over the peers, nearest first: a peer to query, or WAIT (at capacity,
        or finished), or nothing to ask: EXHAUSTED, BLOCKED if a peer that may still
        count is in flight."""
        result_counter: int | None = 0
        counted: bytes | None = None  # the id counted last (an id's contacts are adjacent)
        taken: dict[str, int] = {}  # answered ids per network so far (diverse pass)
        full: set[str] = set()  # networks that have their share
        self._stepped_over = False
        # Asked once: nothing it reads changes during the walk (which returns where it would).
        at_capacity = self._at_capacity()
        for peer in self._order.peers:
            state = peer.state
            if full and (peer.network or _network(peer)) in full:
                # Its network has its share nearer the target.  (With none
                # stepped over, the plain pass would end just as this one.)
                self._stepped_over = True
                continue
            if state is _WAITING:
                if at_capacity:
                    return _WAIT
                # A nearer peer is still in flight: answers from farther
                # peers cannot finish the lookup yet.
                result_counter = None
            elif state is _SUCCEEDED:
                if peer.contact.node_id != counted:
                    counted = peer.contact.node_id
                    if diverse:
                        network = peer.network or _network(peer)  # (inline when known: a call per peer)
                        share = taken[network] = taken.get(network, 0) + 1
                        if share >= self.max_per_network:
                            full.add(network)
                    if result_counter is not None:
                        result_counter += 1
                        if result_counter >= self.k and may_finish:
                            self.state = _FINISHED
                            return _WAIT
            elif state is _NOT_CONTACTED:
                if self._active(peer.contact.node_id) is not None:
                    # Another address of this id is in flight; this one waits its turn.
                    result_counter = None
                    continue
                if at_capacity:
                    return _WAIT
                peer.state = _WAITING
                peer.deadline = now + self.peer_timeout
                self._waiting[peer.contact.node_id] = peer.deadline
                if self._earliest is not None:
                    self._earliest = min(self._earliest, peer.deadline)
                self.queried += 1
                return peer.contact
        return _EXHAUSTED if result_counter is not None else _BLOCKED

    def _finish_if_exhausted(self) -> None:
        """End the walk now if no peer is left to ask or to wait for (as `next` would)."""
        if not self._waiting and all(p.state is _SUCCEEDED or p.state is _FAILED for p in self._order.peers):
            self.state = _FINISHED

    def finish(self) -> None:
        """Stop the lookup now (the driver has what it wanted)."""
        self.state = _FINISHED
        self.stopped_early = True

    # ------------------------------------------------------------------ outputs

    def next_deadline(self) -> float | None:
        """Earliest time a WAITING peer turns unresponsive (None if nothing is in flight)."""
        if self.state is _FINISHED or not self._waiting:
            return None
        return self._next_waiting_deadline()

    def result(self) -> list[Contact]:
        """The k nearest peers that answered, nearest first (an id's first contact that answered),
        at most `max_per_network` of a network unless no other peer is left to fill the k."""
        answered: list[Contact] = []
        ids: set[bytes] = set()
        for p in self._order.peers:
            if p.state is _SUCCEEDED and p.contact.node_id not in ids:
                ids.add(p.contact.node_id)
                answered.append(p.contact)
        return diverse_first(answered, self.k, self.max_per_network)[0]

    @property
    def hops(self) -> int:
        """Sequential RPCs that reached the nearest peer that answered (0 if none did)."""
        for peer in self._order.peers:
            if peer.state is _SUCCEEDED:
                return peer.hop
        return 0

    def failed_count(self) -> int:
        return sum(1 for p in self._order.peers if p.state is _FAILED)


class ValueLookup(ClosestPeersLookup):
    """FIND_VALUE: a node lookup that stops once ``quorum`` values were returned."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[Contact],
        *,
        quorum: int = 1,
        k: int = K,
        alpha: int = ALPHA,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
        local_id: bytes | None = None,
        max_per_network: int | None = None,
    ) -> None:
        if quorum < 1:
            raise LocalProtocolError("a value lookup needs a quorum >= 1")
        super().__init__(
            key,
            seeds,
            k=k,
            alpha=alpha,
            peer_timeout=peer_timeout,
            local_id=local_id,
            max_per_network=max_per_network,
        )
        self.quorum = quorum
        #: (peer, value) in arrival order, peer None for the driver's own copy;
        #: the driver has validated each value.
        self.found: list[tuple[Contact | None, Value]] = []
        #: Sequential RPCs that reached the first value (0: none, or our own copy).
        self.value_hops = 0
        #: Where the values came from (None: our own copy); its size is what the quorum counts.
        self._sources: set[Address | None] = set()

    def _at_capacity(self) -> bool:
        # Once a peer answered with a value (the walk reached the key's
        # holders), no more requests in flight than values still missing:
        # the peers we wait on may each bring one, and asking more only to
        # drop their answers once the quorum is in cost a third of a get's
        # datagrams (benchmarks/bench_dht.py, issue 18).  An answer without a
        # value, or a timeout, frees the slot for the next peer.  Before the
        # first value the walk is a node lookup, alpha (or k) wide.
        if super()._at_capacity():
            return True
        return self.value_hops > 0 and len(self._waiting) >= self.quorum - len(self._sources)

    def on_value(self, node_id: bytes, value: Value, now: float) -> bool:
        """``node_id`` answered with ``value``."""
        del now
        peer = self._succeed(node_id, (), stalls=False)
        if peer is None:
            return False
        self.found.append((peer.contact, value))
        if self.value_hops == 0:
            self.value_hops = peer.hop
        self._count(peer.contact.addr)
        return True

    def add_local_value(self, value: Value) -> None:
        """Count a value the driver already holds itself toward the quorum."""
        self.found.append((None, value))
        self._count(None)

    def _count(self, source: Address | None) -> None:
        self._sources.add(source)
        if len(self._sources) >= self.quorum:
            self.finish()
        else:
            self._finish_if_exhausted()

    def peers_without_value(self) -> list[Contact]:
        """Peers that answered with contacts instead of a value, nearest first.

        The nearest is where section 2.3 caches the value once found.
        """
        holders = {c.node_id for c, _ in self.found if c is not None}
        out: list[Contact] = []
        for p in self._order.peers:
            node_id = p.contact.node_id
            if p.state is _SUCCEEDED and node_id not in holders:
                holders.add(node_id)  # (each id once)
                out.append(p.contact)
        return out


class ProvidersLookup(ClosestPeersLookup):
    """GET_PROVIDERS: a node lookup that gathers providers until ``want`` distinct ones are in."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[Contact],
        *,
        want: int,
        sources: int = 1,
        k: int = K,
        alpha: int = ALPHA,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
        local_id: bytes | None = None,
        max_per_network: int | None = None,
    ) -> None:
        if want < 1 or sources < 1:
            raise LocalProtocolError("a providers lookup wants >= 1 provider from >= 1 source")
        super().__init__(
            key,
            seeds,
            k=k,
            alpha=alpha,
            peer_timeout=peer_timeout,
            local_id=local_id,
            max_per_network=max_per_network,
        )
        self.want = want
        self.sources = sources
        #: Where providers came from (None: our own store).
        self._sources: set[Address | None] = set()
        #: Provider id -> the value kept for it, in order of first arrival; the
        #: driver has validated each value and chosen between versions.
        self.providers: dict[bytes, bytes] = {}
        #: Provider id -> reporting node id (None: our own store) -> the time
        #: it says it first stored that provider (`witness`); at most one
        #: report per node, so this holds at most providers x nodes asked.
        self.seen: dict[bytes, dict[bytes | None, int]] = {}

    def on_providers(
        self,
        node_id: bytes,
        providers: Iterable[tuple[bytes, bytes]],
        closer_peers: Iterable[Contact],
        now: float,
        *,
        vouched: bool = False,
    ) -> bool:
        """``node_id`` answered with ``(provider id, value)`` pairs and closer peers.

        The pairs are what is new or better; ``vouched`` says the answer held
        valid providers even if none of them is new (it counts as a source).
        """
        peer = self._active(node_id)
        if peer is None or not self.on_success(node_id, closer_peers, now):
            return False
        self.add_providers(providers, peer.contact.addr, vouched=vouched)
        return True

    def witness(self, provider_id: bytes, node_id: bytes | None, first_seen: int) -> None:
        """``node_id`` (None: us) says it first stored ``provider_id``'s value at
        ``first_seen``; its first report counts, a repeat in the same walk does not."""
        self.seen.setdefault(provider_id, {}).setdefault(node_id, first_seen)

    def add_providers(
        self,
        providers: Iterable[tuple[bytes, bytes]],
        source: Address | None = None,
        *,
        vouched: bool = False,
    ) -> None:
        """Keep these providers from ``source`` (None: our own store); a later value for a
        known id replaces the earlier one."""
        if vouched:
            self._sources.add(source)
        for provider_id, value in providers:
            self.providers[provider_id] = value
            self._sources.add(source)
        if len(self.providers) >= self.want and len(self._sources) >= self.sources:
            self.finish()
        elif len(self.providers) >= self.want:
            self._finish_if_exhausted()
