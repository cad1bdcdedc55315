"""The record store: values this node holds for keys, with validation and timers.

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
* every held record is *replicated*, re-stored at the k closest nodes,
  `replicate_interval` (one hour) after we last received a STORE of it:
  "when a node receives a STORE RPC for a given key-value pair, it assumes
  the RPC was also issued to the other k-1 closest nodes, and so the
  recipient will not republish the key-value pair in the next hour" (4.5);
* records we published are *republished* every `republish_interval`.

Holders that received the same STORE fire their replication timers at the
same moment, before any of their replication STOREs can arrive and suppress
the others; so, given an RNG, each interval is stretched by a random
fraction of up to `RENEW_JITTER`, and the first holder to fire usually
resets the others' timers in time.

`RecordStore.due` returns what must be re-stored now and drops what expired;
`RecordStore.next_deadline` tells the driver when to call it again.  The
store is bounded by `max_records`; a STORE of a new key into a full store is
refused.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dht.wire import Value, is_value, value_size
from identity.limits import MAX_DHT_VALUE_BYTES

if TYPE_CHECKING:
    from random import Random

Validator = Callable[[bytes, Value, float], bool]
Selector = Callable[[bytes, Sequence[Value]], int]

#: Seconds a received record lives after its last STORE (paper 2.5: 24 h).
RECORD_TTL: Final = 24 * 3600.0
#: Seconds between replications of a held record (paper 2.5: hourly).
REPLICATE_INTERVAL: Final = 3600.0
#: Seconds between republications of a record we published (paper 2.5: 24 h).
REPUBLISH_INTERVAL: Final = 24 * 3600.0
#: Records one node holds at most.
MAX_RECORDS: Final = 65536
#: Replication / republication intervals are stretched by up to this fraction.
RENEW_JITTER: Final = 0.1


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


class StoreOutcome(enum.Enum):
    STORED = "stored"
    #: The same value again: timers refreshed.
    REFRESHED = "refreshed"
    INVALID = "invalid"
    #: The selector kept the value we hold.
    OUTDATED = "outdated"
    FULL = "full"


@dataclass(slots=True)
class _Record:
    value: Value
    published: bool
    expires_at: float
    #: Next replication (held records) or republication (our own).
    renew_at: float
    version: int


class RecordStore:
    """Values held by this node, keyed by 20-byte key."""

    def __init__(
        self,
        *,
        validator: Validator = accept_any,
        selector: Selector = latest_selector,
        ttl: float = RECORD_TTL,
        replicate_interval: float = REPLICATE_INTERVAL,
        republish_interval: float = REPUBLISH_INTERVAL,
        max_records: int = MAX_RECORDS,
        rng: Random | None = None,
    ) -> None:
        self.validator = validator
        self.selector = selector
        self.ttl = ttl
        self.replicate_interval = replicate_interval
        self.republish_interval = republish_interval
        self.max_records = max_records
        self._rng = rng
        self._records: dict[bytes, _Record] = {}
        # (deadline, version, key): lazy heap; stale entries are skipped.
        self._timers: list[tuple[float, int, bytes]] = []
        self._version = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[bytes]:
        """Keys held (a snapshot: the store may change while the caller iterates)."""
        return iter(list(self._records))

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

    def put(self, key: bytes, value: Value, now: float, *, published: bool = False) -> StoreOutcome:
        """Hold ``value`` for ``key`` if it is valid and at least as good as what we hold."""
        if not self.is_valid(key, value, now):
            return StoreOutcome.INVALID
        old = self._records.get(key)
        if old is not None and (old.expires_at <= now or not self.is_valid(key, old.value, now)):
            self._drop(key)
            old = None
        if old is None:
            if len(self._records) >= self.max_records:
                return StoreOutcome.FULL
            self._set(key, value, now, published=published)
            return StoreOutcome.STORED
        same = type(old.value) is type(value) and old.value == value
        if same:
            self._set(key, value, now, published=published or old.published)
            return StoreOutcome.REFRESHED
        if self.select(key, [old.value, value]) == 0:
            return StoreOutcome.OUTDATED
        self._set(key, value, now, published=published or old.published)
        return StoreOutcome.STORED

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
        return base * (1.0 + RENEW_JITTER * self._rng.random()) if self._rng is not None else base

    def _set(self, key: bytes, value: Value, now: float, *, published: bool) -> None:
        self._version += 1
        if published:
            expires, renew = float("inf"), now + self._interval(True)
        else:
            expires, renew = now + self.ttl, now + self._interval(False)
        self._records[key] = _Record(value, published, expires, renew, self._version)
        heapq.heappush(self._timers, (min(expires, renew), self._version, key))

    def _drop(self, key: bytes) -> None:
        self._records.pop(key, None)

    def next_deadline(self) -> float | None:
        """When `due` next has something to do."""
        while self._timers:
            deadline, version, key = self._timers[0]
            record = self._records.get(key)
            if record is not None and record.version == version:
                return deadline
            heapq.heappop(self._timers)
        return None

    def due(self, now: float) -> list[tuple[bytes, Value]]:
        """Drop expired records; return records to re-store now and re-arm their timers."""
        out: list[tuple[bytes, Value]] = []
        while self._timers and self._timers[0][0] <= now:
            _, version, key = heapq.heappop(self._timers)
            record = self._records.get(key)
            if record is None or record.version != version:
                continue
            if record.expires_at <= now or not self.is_valid(key, record.value, now):
                self._drop(key)
                continue
            record.renew_at = now + self._interval(record.published)
            self._version += 1
            record.version = self._version
            heapq.heappush(self._timers, (min(record.expires_at, record.renew_at), record.version, key))
            out.append((key, record.value))
        return out
