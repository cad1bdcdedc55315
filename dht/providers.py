"""The provider store: many values per key, one per provider, with expiry and republish.

Theory of operation
-------------------
A record key holds one value (`dht.records`); a *provider* key holds a set:
"these nodes can serve X", as libp2p kad-dht's ``ADD_PROVIDER`` /
``GET_PROVIDERS`` keep it.  Each value in the set is one provider's
advertisement (p2pblog: a signed provider record).  The DHT does not know
the format; the layer above passes a *provider validator*::

    provider_validator(key, value, now) -> provider id (bytes) | None

which refuses a value (None) or names the provider it speaks for.  A key
holds at most one value per provider id; a second value for the same id
replaces the first only if the record *selector* (the one `dht.records`
uses, p2pblog: highest seq) prefers it, so a replayed old advertisement
cannot push out a newer one.  The default validator, `distinct_values`,
makes every distinct byte string its own provider: a key then holds a plain
set of values.

Like record validators, the provider validator sees peers' bytes and must be
total (return None, never raise).  It runs on every ``p2pb_add_provider``
received, on every value a ``p2pb_get_providers`` lookup returns, on our own
announcements, and again whenever a held value is read or republished, so a
signed advertisement is dropped the first time it is touched after its own
expiry.

Bounds and timers:

* at most `max_per_key` providers per key (libp2p answers with up to k).
  A new provider arriving at a full key evicts the held (not our own)
  provider that was refreshed longest ago: providers re-announce on a
  timer, so the most recently refreshed are the likeliest to be alive.
  The layer above may pass a *rank*::

      rank(key, value) -> int          (higher: more worth keeping)

  and then a full key evicts the held value with the lowest
  ``(rank, refreshed, arrival order)``, and refuses (`FULL`) a newcomer
  whose rank is below every value it could evict.  p2pblog ranks name
  claims by their proof-of-work bits: a flood of cheap claims from many keys
  (a Sybil attack) can then fill only the room that cheap claims hold, and
  never pushes out a claim that carries more work.  Our own values are never
  evicted, and never refused for their rank (they still evict the lowest).
  Without a rank every value ranks the same, which is the plain rule above.
  Like the validator, the rank sees peers' values (after the validator
  accepted them) and must not raise;
* at most `max_values` values in all, our own not counted, and at most
  ``max_values // SOURCE_SHARE`` from one source; beyond that the rules of
  `dht.records.Capacity` apply, per value: a newcomer for a key that is not
  a *priority* key is refused (`FULL`), one for a priority key (p2pblog: a
  feed the node follows) evicts the value of a non-priority key that arrived
  last, and our own values are never refused for the total (the per-key
  bound above still holds: a key full of our own values takes no more);
* a held value expires `ttl` after its last ``p2pb_add_provider`` (libp2p:
  provider advertisements expire after 24 h); our own values do not expire
  here (the validator judges their freshness) and are *republished* every
  `republish_interval`, stretched by a random fraction of up to
  `RENEW_JITTER` so many announcements made together spread out.

* at most ``max_per_group`` values of one *group*, when the layer above
  passes a *group* function ``group(key, value) -> bytes | None`` (p2pblog:
  the signer of a hashtag record, so one key cannot fill the store with
  announcements of many tags; None: no group, the bound does not apply).
  A new value of a full group evicts that group's value refreshed longest
  ago (``evicted.group_full``): a signer who announces too much only pushes
  out its own older announcements.  Our own values are not counted.

*First seen* (issue 15): each held value remembers when its provider's
first value for the key was stored here, and a newer value of the same
provider (a republication with a higher seq) keeps that time, so a provider
that keeps re-announcing keeps its age; a value that expires or is evicted
is forgotten with its time (no extra memory: one float per held value, lost
on restart).  `get_with_seen` returns it; ``p2pb_get_providers`` answers
carry it when asked (`dht.wire`), and p2pblog ranks name claims by it.

Unlike records, held providers are not replicated by their holders (paper
2.5 replication, ``kademlia``'s hourly re-STORE): as in libp2p, only the
provider re-announces, because each holder re-sending every value it holds
for a key would multiply the traffic by the number of providers.

`ProviderStore.due` drops expired values and returns our own ones to
re-announce; `ProviderStore.next_deadline` says when to call it again.  The
timer heap is compacted as the record store's is (`dht.records.heap_is_bloated`),
and refusals, evictions and expiries are counted in ``stats`` by reason
(those of `dht.records.Capacity`, plus ``refused.key_full`` and
``evicted.key_full`` for the per-key bound).

Memory (``tests/dht/test_hostile_stores_memory.py``): a held provider value
costs about 1,000 bytes plus its value (each under its own key, the worst
case), so `MAX_PROVIDER_VALUES` (12,288) values at the 1 KiB limit take
about 24 MiB; p2pblog's provider records are about 180 bytes (about 15 MiB).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dht.records import (
    RENEW_JITTER,
    BoundedStore,
    Capacity,
    Priority,
    Selector,
    StoreOutcome,
    heap_is_bloated,
    latest_selector,
)
from identity.limits import MAX_DHT_VALUE_BYTES

if TYPE_CHECKING:
    from random import Random

ProviderValidator = Callable[[bytes, bytes, float], bytes | None]
#: ``rank(key, value)``: how much a provider value is worth keeping at a full key.
ProviderRank = Callable[[bytes, bytes], int]
#: ``group(key, value)``: the group a provider value counts against (None: none).
ProviderGroup = Callable[[bytes, bytes], bytes | None]

#: Seconds a received provider value lives after its last ADD_PROVIDER (libp2p: 24 h).
PROVIDER_TTL: Final = 24 * 3600.0
#: Seconds between republications of our own provider values (half the ttl,
#: so one lost round does not let the value lapse).
PROVIDER_REPUBLISH_INTERVAL: Final = 12 * 3600.0
#: Providers held per key (libp2p's GET_PROVIDERS answers with up to k).
MAX_PROVIDERS_PER_KEY: Final = 20
#: Received provider values held in all (our own are not counted): about
#: 24 MiB with every value at the 1 KiB limit (module docstring, "Memory").
MAX_PROVIDER_VALUES: Final = 12288
#: Values one group holds at most (p2pblog: hashtag records of one signer).
MAX_PER_GROUP: Final = 32


def distinct_values(key: bytes, value: bytes, now: float) -> bytes | None:
    """The default provider validator: any bytes value within the limit is its own provider."""
    del key, now
    return value


def _key_of_item(item: tuple[bytes, bytes]) -> bytes:
    """The key of a provider store's capacity item, a (key, provider id) pair."""
    return item[0]


@dataclass(slots=True)
class _Provider:
    value: bytes
    published: bool
    refreshed_at: float
    #: Held values: `refreshed_at` + ttl; our own: never.
    expires_at: float
    #: Our own: next republication; held values: never.
    renew_at: float
    #: Order of the last add (ties of `refreshed_at`); a republication keeps it.
    order: int
    #: Identifies the live timer-heap entry.
    version: int
    #: When this provider's first value for the key was stored here; a newer
    #: value of the same provider (a republication) keeps it (`get_with_seen`).
    first_seen: float


class ProviderStore(BoundedStore[tuple[bytes, bytes]]):
    """Provider values held by this node: key -> provider id -> value."""

    def __init__(
        self,
        *,
        validator: ProviderValidator = distinct_values,
        selector: Selector = latest_selector,
        ttl: float = PROVIDER_TTL,
        republish_interval: float = PROVIDER_REPUBLISH_INTERVAL,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
        max_values: int = MAX_PROVIDER_VALUES,
        rng: Random | None = None,
        rank: ProviderRank | None = None,
        priority: Priority | None = None,
        max_per_source: int | None = None,
        group: ProviderGroup | None = None,
        max_per_group: int = MAX_PER_GROUP,
    ) -> None:
        """``rank`` None: every value ranks the same (a full key evicts the oldest refreshed).
        ``priority`` names the keys the owner cares about (None: none);
        ``max_per_source`` defaults to ``max_values // SOURCE_SHARE``."""
        self.validator = validator
        self.rank = rank
        self.selector = selector
        self.ttl = ttl
        self.republish_interval = republish_interval
        self.max_per_key = max_per_key
        self.group = group
        self.max_per_group = max_per_group
        #: (key, provider id) of held values, by group (insertion order), and their group.
        self._groups: dict[bytes, dict[tuple[bytes, bytes], None]] = {}
        self._group_of: dict[tuple[bytes, bytes], bytes] = {}
        self._rng = rng
        #: Refusals, evictions, expiries and heap rebuilds, by reason.
        self.stats: Counter[str] = Counter()
        self._capacity: Capacity[tuple[bytes, bytes]] = Capacity(
            max_values, self.stats, per_source=max_per_source, key_of=_key_of_item
        )
        self._capacity.priority = priority
        self._keys: dict[bytes, dict[bytes, _Provider]] = {}
        self._count = 0
        # (deadline, version, key, provider id): lazy heap; stale entries are skipped.
        self._timers: list[tuple[float, int, bytes, bytes]] = []
        self._version = 0

    def __len__(self) -> int:
        """Values held, over all keys, our own included."""
        return self._count

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[bytes]:
        """Keys held (a snapshot)."""
        return iter(list(self._keys))

    @property
    def max_values(self) -> int:
        return self._capacity.total

    def provider_id(self, key: bytes, value: bytes, now: float) -> bytes | None:
        """The provider ``value`` speaks for, or None when it is not a valid provider value."""
        if not isinstance(value, bytes) or len(value) > MAX_DHT_VALUE_BYTES:
            return None
        return self.validator(key, value, now)

    def add(
        self, key: bytes, value: bytes, now: float, *, published: bool = False, source: str | None = None
    ) -> StoreOutcome:
        """Hold ``value`` as its provider's advertisement for ``key`` if the bounds admit it
        (``source``: the sender's IP address; None: local)."""
        if not published and key not in self._keys and self._capacity.refuses_early(key, source):
            return StoreOutcome.FULL
        pid = self.provider_id(key, value, now)
        if pid is None:
            return StoreOutcome.INVALID
        held = self._keys.get(key, {})
        old = held.get(pid)
        if old is not None and not self._alive(key, pid, old, now):
            self._drop(key, pid)
            old = None
        if old is not None:
            same = old.value == value
            if not same and not self.prefers(key, old.value, value):
                return StoreOutcome.OUTDATED
            if published:
                self._capacity.remove((key, pid))
                self._leave_group(key, pid)
            self._set(key, pid, value, now, published=published or old.published)
            return StoreOutcome.REFRESHED if same else StoreOutcome.STORED
        if len(held) >= self.max_per_key:
            self._purge(key, now)
            held = self._keys.get(key, {})
        if len(held) >= self.max_per_key:
            # The key's own bound: the newcomer takes a held value's place, the total stays.
            if not published and self._capacity.source_full(source):
                return StoreOutcome.FULL
            victim = self._victim(key, value, held, published=published)
            if victim is None:
                self.stats["refused.key_full"] += 1
                return StoreOutcome.FULL
            self.stats["evicted.key_full"] += 1
            self._drop(key, victim)
        elif not published:
            admitted, evicted = self._capacity.admit(key, source)
            if not admitted:
                return StoreOutcome.FULL
            if evicted is not None:
                self._drop(*evicted)
        if not published:
            self._capacity.add((key, pid), source)
            self._join_group(key, pid, value)
        self._set(key, pid, value, now, published=published)
        return StoreOutcome.STORED

    def _join_group(self, key: bytes, pid: bytes, value: bytes) -> None:
        """Count a new held value against its group; a full group evicts its oldest refreshed."""
        group = self.group(key, value) if self.group is not None else None
        if group is None:
            return
        members = self._groups.setdefault(group, {})
        while len(members) >= self.max_per_group:
            victim = min(members, key=lambda item: self._keys[item[0]][item[1]].refreshed_at)
            self.stats["evicted.group_full"] += 1
            self._drop(*victim)
        members[(key, pid)] = None
        self._group_of[(key, pid)] = group

    def _leave_group(self, key: bytes, pid: bytes) -> None:
        group = self._group_of.pop((key, pid), None)
        if group is not None:
            members = self._groups[group]
            del members[(key, pid)]
            if not members:
                del self._groups[group]

    def group_size(self, group: bytes) -> int:
        """Held values of ``group``."""
        return len(self._groups.get(group, ()))

    def get(self, key: bytes, now: float) -> list[bytes]:
        """Valid values for ``key``, most recently refreshed first (invalid ones are dropped)."""
        return [value for _, value in self.get_with_ids(key, now)]

    def get_with_ids(self, key: bytes, now: float) -> list[tuple[bytes, bytes]]:
        """``(provider id, value)`` pairs for ``key``, most recently refreshed first."""
        self._purge(key, now)
        held = self._keys.get(key, {})
        ordered = sorted(held.items(), key=lambda item: (item[1].refreshed_at, item[1].order), reverse=True)
        return [(pid, entry.value) for pid, entry in ordered]

    def get_with_seen(self, key: bytes, now: float) -> list[tuple[bytes, bytes, float]]:
        """``(provider id, value, first seen)`` for ``key``, most recently refreshed first:
        *first seen* is when this provider's first value for ``key`` was stored here,
        kept while the provider keeps re-announcing (a held value is forgotten, and
        its time with it, once it expires or is evicted)."""
        pairs = self.get_with_ids(key, now)
        held = self._keys.get(key, {})
        return [(pid, value, held[pid].first_seen) for pid, value in pairs]

    def is_published(self, key: bytes, provider_id: bytes) -> bool:
        entry = self._keys.get(key, {}).get(provider_id)
        return entry is not None and entry.published

    def remove(self, key: bytes, provider_id: bytes) -> None:
        """Forget one provider of ``key`` (e.g. our own, when we stop providing)."""
        self._drop(key, provider_id)

    def prefers(self, key: bytes, old: bytes, new: bytes) -> bool:
        """True if the selector prefers ``new`` to ``old`` (two values of one provider)."""
        index = self.selector(key, [old, new])
        if index not in (0, 1):
            raise IndexError(f"selector returned {index} for 2 values")
        return index == 1

    # ------------------------------------------------------------------ internals

    def _alive(self, key: bytes, pid: bytes, entry: _Provider, now: float) -> bool:
        # A value whose provider id changed under the validator is as good as invalid.
        return entry.expires_at > now and self.provider_id(key, entry.value, now) == pid

    def _victim(
        self, key: bytes, value: bytes, held: dict[bytes, _Provider], *, published: bool
    ) -> bytes | None:
        """The provider to evict from the full ``key`` for ``value``, or None to refuse it."""
        rank = self.rank
        if rank is None:
            evictable = [(0, p.refreshed_at, p.order, i) for i, p in held.items() if not p.published]
        else:
            evictable = [
                (rank(key, p.value), p.refreshed_at, p.order, i) for i, p in held.items() if not p.published
            ]
        if not evictable:
            return None
        lowest = min(evictable)
        if rank is not None and not published and rank(key, value) < lowest[0]:
            return None
        return lowest[3]

    def _purge(self, key: bytes, now: float) -> None:
        """Drop the values of ``key`` that expired or no longer validate."""
        held = self._keys.get(key)
        if held is None:
            return
        for pid, entry in list(held.items()):
            if not self._alive(key, pid, entry, now):
                self._drop(key, pid)

    def _interval(self) -> float:
        base = self.republish_interval
        return base * (1.0 + RENEW_JITTER * self._rng.random()) if self._rng is not None else base

    def _set(self, key: bytes, pid: bytes, value: bytes, now: float, *, published: bool) -> None:
        self._version += 1
        if published:
            expires, renew = float("inf"), now + self._interval()
        else:
            expires, renew = now + self.ttl, float("inf")
        held = self._keys.setdefault(key, {})
        old = held.get(pid)
        if old is None:
            self._count += 1
        first_seen = now if old is None else min(old.first_seen, now)
        held[pid] = _Provider(value, published, now, expires, renew, self._version, self._version, first_seen)
        self._push(min(expires, renew), self._version, key, pid)

    def _push(self, deadline: float, version: int, key: bytes, pid: bytes) -> None:
        heapq.heappush(self._timers, (deadline, version, key, pid))
        self._compact()

    def _compact(self) -> None:
        # After a push or a drop: amortized O(1), since a rebuild leaves no stale entries.
        if heap_is_bloated(len(self._timers), self._count):
            # Insertion order and unique versions: the same inputs give the same heap.
            self._timers = [
                (min(entry.expires_at, entry.renew_at), entry.version, k, i)
                for k, held in self._keys.items()
                for i, entry in held.items()
            ]
            heapq.heapify(self._timers)
            self.stats["timers.compacted"] += 1

    def _drop(self, key: bytes, pid: bytes) -> None:
        held = self._keys.get(key)
        if held is None or pid not in held:
            return
        del held[pid]
        self._count -= 1
        self._capacity.remove((key, pid))
        self._leave_group(key, pid)
        if not held:
            del self._keys[key]
        self._compact()

    def _current(self, version: int, key: bytes, pid: bytes) -> _Provider | None:
        entry = self._keys.get(key, {}).get(pid)
        return entry if entry is not None and entry.version == version else None

    def next_deadline(self) -> float | None:
        """When `due` next has something to do."""
        while self._timers:
            deadline, version, key, pid = self._timers[0]
            if self._current(version, key, pid) is not None:
                return deadline
            heapq.heappop(self._timers)
        return None

    def due(self, now: float) -> list[tuple[bytes, bytes]]:
        """Drop expired values; return our own ``(key, value)`` to re-announce now."""
        out: list[tuple[bytes, bytes]] = []
        while self._timers and self._timers[0][0] <= now:
            _, version, key, pid = heapq.heappop(self._timers)
            entry = self._current(version, key, pid)
            if entry is None:
                continue
            if not entry.published or not self._alive(key, pid, entry, now):
                self.stats["expired"] += 1
                self._drop(key, pid)
                continue
            entry.renew_at = now + self._interval()
            self._version += 1
            entry.version = self._version
            self._push(entry.renew_at, entry.version, key, pid)
            out.append((key, entry.value))
        return out
