"""The record store: values this node holds for keys, with validation, bounds and timers.

Theory of operation
-------------------
A record is a value stored under a 20-byte key.  Two hooks decide what may be
held, in the manner of libp2p's record validators:

* a *validator* ``(key, value, now) -> bool`` accepts or refuses one value.
  It runs on every STORE we receive, on every value a lookup returns, on our
  own puts, and again whenever a held value is read or republished, so a
  signed record that expires is dropped the first time it is touched after
  its expiry;
* a *selector* ``(key, values) -> index`` picks the best of several valid
  values (p2pblog's records: highest seq).  It runs when a STORE brings a
  value for a key we already hold, and on the values a FIND_VALUE lookup
  collected.

Both see values straight from peers, so both must be total: a validator
returns False for anything it refuses, and neither may raise (an exception
escaping them is a bug, and it propagates out of the core like one).

The defaults reproduce ``kademlia``: every value of an allowed type and size
is valid; a STORE overwrites (`latest_selector` prefers the newest
candidate) and a lookup takes the most common value (`majority_selector`, as
``ValueSpiderCrawl._handle_found_values`` does).

Timers (paper section 2.5 and 4.5):

* every held record expires `ttl` after the last STORE of it (``kademlia``'s
  ``ForgetfulStorage`` does the same, with a week; the paper says 24 h).
  Records we published ourselves do not expire here: their freshness is the
  validator's business;
* with a ``replicate_interval`` (the paper's is `REPLICATE_INTERVAL`, one
  hour), every held record is *replicated*, re-stored at the k closest
  nodes, that long after we last received a STORE of it: "when a node
  receives a STORE RPC for a given key-value pair, it assumes the RPC was
  also issued to the other k-1 closest nodes, and so the recipient will not
  republish the key-value pair in the next hour" (4.5).  By default (None)
  holders do not replicate, as go-libp2p-kad-dht does not (rust-libp2p
  kad's ``set_replication_interval(None)``): the originator's republication
  keeps a record alive and re-homes it, and a record whose originator is
  gone lapses at its ``ttl`` (docs/design.md, "protocol intervals");
* records we published are *republished* every `republish_interval`.

Holders that received the same STORE fire their replication timers at the
same moment, before any of their replication STOREs can arrive and suppress
the others; so, given an RNG, each interval is stretched by a random
fraction of up to `RENEW_JITTER`, and the first holder to fire usually
resets the others' timers in time.

`RecordStore.due` returns what must be re-stored now and drops what expired;
`RecordStore.next_deadline` tells the driver when to call it again.  The
timers are a lazy heap (a refresh pushes a new entry and the old one goes
stale); when stale entries outnumber the live ones by more than
`TIMER_HEAP_SLACK`, the heap is rebuilt from the live items, so it never
holds more than twice the items plus that constant, however often a
stranger refreshes one record.  In `RecordStore` the heap entries are the
records themselves, ordered by (deadline, version): a record is never
changed in place, new timers make a new one, and the one it replaces stays
in the heap as a stale entry, its value dropped.  That saves a
``(deadline, version, key)`` tuple per held record (issue 18), and the
store's own dict in arrival order stands in for `Capacity`'s table.

Bounds: hostile strangers (`Capacity`)
--------------------------------------
Every STORE costs a stranger one datagram, so the store is bounded, and the
bounds must not let a flood push out what the node needs.  `Capacity` is the
admission policy both stores share (`dht.providers` uses it too):

* values *we published* are never refused or evicted for capacity and do not
  count against the bounds (a node publishes few: its peer record, its
  provider records, its name claims).  A full store that refused our own
  announcement used to crash the node;
* the owner names the keys it cares about with a *priority* predicate
  ``priority(key) -> bool`` (p2pblog: feeds it follows, peers it knows);
* each *source* (given by the core: `identity.netaddr.host_key` of the requester's address,
  which is an IPv6 address's /64, since one host picks addresses in its /64
  at will; None is local or unknown and is not limited) holds at most
  ``total // SOURCE_SHARE`` values, so one host cannot fill the store alone;
* a full store *evicts the newest stranger first*: a new value for a key
  that is not a priority key is itself the newest stranger, so it is refused;
  a value for a priority key evicts the most recently *arrived* value of a
  non-priority key (arrival is the first STORE of the key: refreshes and new
  versions keep it, so an attacker cannot make honest old values look new).
  Values held longest stay: an attacker who fills the store can keep
  strangers' new values out while he refreshes, but cannot push out what was
  held before the flood, nor anything the owner cares about.

Refusals come before the validator where they can (a new key from a source
that holds its share, or a stranger's new key in a full store), so a flood
costs a dictionary lookup per value, not a signature check.  Every refusal
and eviction is counted in the store's ``stats`` by reason
(``refused.source``, ``refused.full``, ``refused.full_priority``,
``evicted.for_priority``), as are drops by expiry (``expired``) and heap
rebuilds (``timers.compacted``).

Memory (``tests/dht/test_hostile_stores_memory.py`` measures it with
tracemalloc, with the timer heap at its largest): a held record costs about
600 bytes plus its value, so `MAX_RECORDS` (4,096) of the largest values
(1 KiB) take about 6.3 MiB; with `dht.providers`' worst case, about 30 MiB.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

from dht.wire import Value, is_value, value_size
from identity.errors import LocalProtocolError
from identity.limits import MAX_DHT_VALUE_BYTES

if TYPE_CHECKING:
    from random import Random

Validator = Callable[[bytes, Value, float], bool]
Selector = Callable[[bytes, Sequence[Value]], int]
#: ``priority(key)``: True for keys the owner cares about (followed feeds, known peers).
Priority = Callable[[bytes], bool]

#: Seconds a received record lives after its last STORE (paper 2.5: 24 h).
RECORD_TTL: Final = 24 * 3600.0
#: Seconds between replications of a held record (paper 2.5: hourly), for a store
#: made with it; holders do not replicate by default (module docstring, "Timers").
REPLICATE_INTERVAL: Final = 3600.0
#: Seconds between republications of a record we published (paper 2.5: 24 h).
REPUBLISH_INTERVAL: Final = 24 * 3600.0
#: Received records one node holds at most (our own are not counted): about
#: 6.3 MiB with every value at the 1 KiB limit (module docstring, "Memory").
MAX_RECORDS: Final = 4096
#: One source holds at most 1/SOURCE_SHARE of a store's bound.
SOURCE_SHARE: Final = 16
#: A timer heap is rebuilt when it holds more than twice its live items plus this.
TIMER_HEAP_SLACK: Final = 64
#: Replication / republication intervals are stretched by up to this fraction.
RENEW_JITTER: Final = 0.1

Item = TypeVar("Item", bound=Hashable)


def accept_any(key: bytes, value: Value, now: float) -> bool:
    """The default validator: any value ``kademlia`` could store (size checked by the caller)."""
    del key, now
    return is_value(value) and value_size(value) <= MAX_DHT_VALUE_BYTES


def latest_selector(key: bytes, values: Sequence[Value]) -> int:
    """Prefer the newest candidate: a STORE overwrites, as ``storage[key] = value`` does."""
    del key
    return len(values) - 1


def majority_selector(key: bytes, values: Sequence[Value]) -> int:
    """The most common value, earliest first on ties (``Counter.most_common``)."""
    del key
    counts = Counter((type(v), v) for v in values)
    best, _ = counts.most_common(1)[0]
    return next(i for i, v in enumerate(values) if (type(v), v) == best)


def heap_is_bloated(size: int, live: int) -> bool:
    """True when a lazy timer heap of ``size`` entries for ``live`` items should be rebuilt."""
    return size > 2 * live + TIMER_HEAP_SLACK


class StoreOutcome(enum.Enum):
    STORED = "stored"
    #: The same value again: timers refreshed.
    REFRESHED = "refreshed"
    INVALID = "invalid"
    #: The selector kept the value we hold.
    OUTDATED = "outdated"
    #: Refused for capacity (the store's ``stats`` say which bound).
    FULL = "full"


class Capacity(Generic[Item]):
    """Which received values a bounded store admits and which it evicts (module docstring).

    Tracks the held values that count against the bounds (all but our own),
    each under an *item* id (a record key; a (key, provider id) pair) with
    its source, in order of arrival.  ``key_of(item)`` is the key an item
    belongs to (None: the item is the key).
    """

    def __init__(
        self,
        total: int,
        stats: Counter[str],
        *,
        per_source: int | None = None,
        key_of: Callable[[Item], bytes] | None = None,
    ) -> None:
        self.total = total
        self.per_source = per_source if per_source is not None else max(1, total // SOURCE_SHARE)
        self.priority: Priority | None = None
        self._stats = stats
        self._key_of = key_of
        #: item -> source, oldest arrival first (dicts keep insertion order).  One
        #: reference per held value: the key comes from the item, not a tuple.
        self._arrivals: dict[Item, str | None] = {}
        self._by_source: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._arrivals)

    def __contains__(self, item: object) -> bool:
        return item in self._arrivals

    def held_by(self, source: str) -> int:
        return self._by_source[source]

    def is_priority(self, key: bytes) -> bool:
        return self.priority is not None and self.priority(key)

    def source_full(self, source: str | None) -> bool:
        """True (and counted) when ``source`` already holds its share."""
        if source is None or self._by_source[source] < self.per_source:
            return False
        self._stats["refused.source"] += 1
        return True

    def refuses_early(self, key: bytes, source: str | None) -> bool:
        """True (counted) when a value for ``key``, which holds nothing yet, would be refused
        whatever it is: the store says so before it checks the value (a signature)."""
        if self.source_full(source):
            return True
        if len(self) >= self.total and not self.is_priority(key):
            self._stats["refused.full"] += 1
            return True
        return False

    def admit(self, key: bytes, source: str | None) -> tuple[bool, Item | None]:
        """May a new value for ``key`` from ``source`` come in, and whom must it evict?

        ``(False, None)``: refused (counted); ``(True, None)``: there is room;
        ``(True, item)``: evict ``item`` first.
        """
        if self.source_full(source):
            return False, None
        if len(self) < self.total:
            return True, None
        if not self.is_priority(key):
            self._stats["refused.full"] += 1
            return False, None
        victim = self._newest_stranger()
        if victim is None:
            self._stats["refused.full_priority"] += 1
            return False, None
        self._stats["evicted.for_priority"] += 1
        return True, victim

    def add(self, item: Item, source: str | None) -> None:
        """``item`` arrived (it counts from now on); a known item keeps its place and source."""
        if item in self._arrivals:
            return
        self._arrivals[item] = source
        if source is not None:
            self._by_source[source] += 1

    def remove(self, item: Item) -> None:
        """``item`` is gone (or became our own); unknown items are ignored."""
        if item not in self._arrivals:
            return
        source = self._arrivals.pop(item)
        if source is None:
            return
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def _newest_stranger(self) -> Item | None:
        # Priority values are few (the owner's keys), so the walk past them is short.
        key_of = self._key_of
        for item in reversed(self._arrivals):
            if not self.is_priority(key_of(item) if key_of is not None else cast(bytes, item)):
                return item
        return None


class _HeldCapacity(Capacity[bytes]):
    """`Capacity` over a `RecordStore`'s own dict: the received records, in the dict's order.

    The arrivals `Capacity` keeps in a dict of its own are exactly the
    store's records that are not our own, in the same order (a record enters
    both when it first arrives, a refresh keeps its place in both, and both
    drop it together), and each record carries its source: so this keeps
    only a count.  Same answers, one dict entry less per held record.
    """

    def __init__(
        self, records: dict[bytes, _Record], total: int, stats: Counter[str], *, per_source: int | None
    ) -> None:
        super().__init__(total, stats, per_source=per_source)
        self._held = records
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        record = self._held.get(cast(bytes, item))
        return record is not None and not record.published

    def add(self, item: bytes, source: str | None) -> None:
        """``item`` arrives (the store then holds it with ``source``); never a held item."""
        self._count += 1
        if source is not None:
            self._by_source[source] += 1

    def remove(self, item: bytes) -> None:
        """``item`` goes, or becomes our own: call while the store still holds it."""
        record = self._held.get(item)
        if record is None or record.published:
            return
        self._count -= 1
        source = record.source
        if source is None:
            return
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]

    def _newest_stranger(self) -> bytes | None:
        held = self._held
        for key in reversed(held):
            if not held[key].published and not self.is_priority(key):
                return key
        return None


class BoundedStore(Generic[Item]):
    """What `RecordStore` and `ProviderStore` show of their bounds (`Capacity`) and timers."""

    _capacity: Capacity[Item]
    _timers: list[Any]

    @property
    def priority(self) -> Priority | None:
        """The owner's ``priority(key)`` predicate; set it when what the owner cares about changes."""
        return self._capacity.priority

    @priority.setter
    def priority(self, predicate: Priority | None) -> None:
        self._capacity.priority = predicate

    @property
    def max_per_source(self) -> int:
        return self._capacity.per_source

    @property
    def received(self) -> int:
        """Items that count against the bounds (all but our own)."""
        return len(self._capacity)

    def held_by(self, source: str) -> int:
        """Items that ``source`` brought and we still hold."""
        return self._capacity.held_by(source)

    @property
    def timer_entries(self) -> int:
        """Entries in the timer heap, stale ones included."""
        return len(self._timers)


#: The value of a record the store no longer holds: its heap entries are stale,
#: and must not keep a replaced value alive.
_RETIRED: Final = b""
#: A published record's expiry: never (`_Record.published`).
_NEVER: Final = float("inf")


class _Record:
    """A held value and its timers; also its own entry in the store's timer heap.

    A record is never changed in place: new timers make a new record, and
    the heap entries of the old one go stale (the store no longer holds
    them).  Ordered by deadline, as a ``(deadline, key)`` tuple would be,
    without the tuple (module docstring, "Memory").  Records we published
    are the ones that never expire (``expires_at`` infinite; a held record's
    ``ttl`` is finite), so that needs no slot of its own.
    """

    __slots__ = ("expires_at", "key", "renew_at", "source", "value")

    def __init__(
        self, key: bytes, value: Value, expires_at: float, renew_at: float, source: str | None
    ) -> None:
        self.key = key
        #: Who brought a received value (`Capacity`'s source; None: local, or our own).
        self.source = source
        self.value = value
        self.expires_at = expires_at
        #: Next replication (held records) or republication (our own).
        self.renew_at = renew_at

    @property
    def published(self) -> bool:
        return self.expires_at == _NEVER

    @property
    def deadline(self) -> float:
        return min(self.expires_at, self.renew_at)

    def __lt__(self, other: _Record) -> bool:
        # Keys are unique among the records a store holds (stale heap entries
        # may tie with them: either order is right), so this is the tuple order.
        mine = min(self.expires_at, self.renew_at)
        theirs = min(other.expires_at, other.renew_at)
        return mine < theirs or (mine == theirs and self.key < other.key)


class RecordStore(BoundedStore[bytes]):
    """Values held by this node, keyed by 20-byte key."""

    def __init__(
        self,
        *,
        validator: Validator = accept_any,
        selector: Selector = latest_selector,
        ttl: float = RECORD_TTL,
        replicate_interval: float | None = None,
        republish_interval: float = REPUBLISH_INTERVAL,
        max_records: int = MAX_RECORDS,
        rng: Random | None = None,
        priority: Priority | None = None,
        max_per_source: int | None = None,
    ) -> None:
        """``priority`` names the keys the owner cares about (None: none);
        ``max_per_source`` defaults to ``max_records // SOURCE_SHARE``;
        ``replicate_interval`` None: held records are not replicated."""
        if not 0.0 < ttl < _NEVER:  # an infinite one would read as published (`_Record`)
            raise LocalProtocolError("a record's ttl is a positive, finite number of seconds")
        self.validator = validator
        self.selector = selector
        self.ttl = ttl
        self.replicate_interval = replicate_interval
        self.republish_interval = republish_interval
        self._rng = rng
        #: Refusals, evictions, expiries and heap rebuilds, by reason.
        self.stats: Counter[str] = Counter()
        self._records: dict[bytes, _Record] = {}
        self._capacity: Capacity[bytes] = _HeldCapacity(
            self._records, max_records, self.stats, per_source=max_per_source
        )
        self._capacity.priority = priority
        # Lazy heap of records; an entry the store no longer holds is stale and skipped.
        self._timers: list[_Record] = []

    def __len__(self) -> int:
        """Records held, our own included."""
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[bytes]:
        """Keys held (a snapshot: the store may change while the caller iterates)."""
        return iter(list(self._records))

    @property
    def max_records(self) -> int:
        return self._capacity.total

    def is_valid(self, key: bytes, value: Value, now: float) -> bool:
        return (
            is_value(value) and value_size(value) <= MAX_DHT_VALUE_BYTES and self.validator(key, value, now)
        )

    def select(self, key: bytes, values: Sequence[Value]) -> int:
        """Index of the best of ``values`` (all valid); guards against a bad selector."""
        if len(values) == 1:
            return 0
        index = self.selector(key, values)
        if not 0 <= index < len(values):
            raise IndexError(f"selector returned {index} for {len(values)} values")
        return index

    def put(
        self, key: bytes, value: Value, now: float, *, published: bool = False, source: str | None = None
    ) -> StoreOutcome:
        """Hold ``value`` for ``key`` if it is valid, at least as good as what we hold, and
        the bounds admit it (``source``: the sender's IP address; None: local)."""
        if not published and key not in self._records and self._capacity.refuses_early(key, source):
            return StoreOutcome.FULL
        if not self.is_valid(key, value, now):
            return StoreOutcome.INVALID
        old = self._records.get(key)
        if old is not None and (old.expires_at <= now or not self.is_valid(key, old.value, now)):
            self._drop(key)
            old = None
        if old is None:
            if not published:
                admitted, victim = self._capacity.admit(key, source)
                if not admitted:
                    return StoreOutcome.FULL
                if victim is not None:
                    self._drop(victim)
                self._capacity.add(key, source)
            self._set(key, value, now, published=published, source=None if published else source)
            return StoreOutcome.STORED
        same = type(old.value) is type(value) and old.value == value
        if not same and self.select(key, [old.value, value]) == 0:
            return StoreOutcome.OUTDATED
        if published:
            self._capacity.remove(key)
        self._set(key, value, now, published=published or old.published, source=old.source)
        return StoreOutcome.REFRESHED if same else StoreOutcome.STORED

    def get(self, key: bytes, now: float) -> Value | None:
        """The value held for ``key``, if it is still valid (invalid ones are dropped)."""
        record = self._records.get(key)
        if record is None:
            return None
        if record.expires_at <= now or not self.is_valid(key, record.value, now):
            self._drop(key)
            return None
        return record.value

    def is_published(self, key: bytes) -> bool:
        record = self._records.get(key)
        return record is not None and record.published

    def remove(self, key: bytes) -> None:
        self._drop(key)

    def _interval(self, published: bool) -> float:
        base = self.republish_interval if published else self.replicate_interval
        if base is None:
            return float("inf")  # a holder that does not replicate: only expiry is due
        return base * (1.0 + RENEW_JITTER * self._rng.random()) if self._rng is not None else base

    def _set(self, key: bytes, value: Value, now: float, *, published: bool, source: str | None) -> None:
        if published:
            expires, renew = _NEVER, now + self._interval(True)
        else:
            expires, renew = now + self.ttl, now + self._interval(False)
        record = _Record(key, value, expires, renew, None if published else source)
        old = self._records.get(key)
        self._records[key] = record
        if old is not None:
            old.value = _RETIRED
        self._push(record)

    def _push(self, record: _Record) -> None:
        heapq.heappush(self._timers, record)
        self._compact()

    def _compact(self) -> None:
        # After a push or a drop: amortized O(1), since a rebuild leaves no stale entries.
        if heap_is_bloated(len(self._timers), len(self._records)):
            # Insertion order and unique keys: the same inputs give the same heap.
            self._timers = list(self._records.values())
            heapq.heapify(self._timers)
            self.stats["timers.compacted"] += 1

    def _drop(self, key: bytes) -> None:
        self._capacity.remove(key)
        record = self._records.pop(key, None)
        if record is not None:
            record.value = _RETIRED
            self._compact()

    def next_deadline(self) -> float | None:
        """When `due` next has something to do."""
        while self._timers:
            first = self._timers[0]
            if self._records.get(first.key) is first:
                return first.deadline
            heapq.heappop(self._timers)
        return None

    def due(self, now: float) -> list[tuple[bytes, Value]]:
        """Drop expired records; return records to re-store now and re-arm their timers."""
        out: list[tuple[bytes, Value]] = []
        while self._timers and self._timers[0].deadline <= now:
            record = heapq.heappop(self._timers)
            key = record.key
            if self._records.get(key) is not record:
                continue
            if record.expires_at <= now or not self.is_valid(key, record.value, now):
                self.stats["expired"] += 1
                self._drop(key)
                continue
            renewed = _Record(
                key, record.value, record.expires_at, now + self._interval(record.published), record.source
            )
            self._records[key] = renewed
            record.value = _RETIRED
            self._push(renewed)
            out.append((key, renewed.value))
        return out
