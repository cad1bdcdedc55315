"""The DHT model: a `DhtCore` that answers from a global view after a modelled walk time (issue 17).

Theory of operation
-------------------
At 1,000 nodes and more, the DHT's walks are most of the simulator's events
(a join alone is about 2,000 datagram events per node), though what the
scenarios measure is replication: the real `Replicator`, Noise handshakes,
sessions and stores.  `ModelDht` keeps those (it is the `DhtCore` the real
`NodeCore` builds through ``dht_factory``; the core imports nothing from
here) and replaces only the network side of the DHT:

* every command (`start_get`, `start_get_providers`, `start_put`,
  `start_add_provider`, `start_lookup`, `bootstrap`) and every internal
  query (bucket refreshes, republications, re-announcements) costs no
  datagram: the query completes after a walk time drawn from the
  calibrated distribution of its kind, with the same result event the
  real core emits;
* the result comes from the `DhtView`, one registry per run of the records
  and provider values nodes published, each kept until it would expire
  (its TTL after its last publication, as the k holders would keep it),
  and visible to a node only from publishers the network does not
  partition away from it (`Network.connected`): a crashed node's records
  stay until they expire, as in the real DHT, then vanish;
* a providers search returns what the real walk would: not every provider
  at once (the uncalibrated prototype did, and nodes held 19.6 connections
  instead of 12.9, duplicates rose from 0.16 to 0.70), but a share drawn
  from the calibrated distribution of *returned / available*;
* the DHT bytes and datagrams a query would have cost (calibrated per
  kind, with the answers and pings folded in) are charged to the node's
  traffic counters, so traffic metrics stay comparable with full runs.

The routing table holds the k nearest nodes that are up and reachable, and
k random others, after each join: enough for every ``len(table)`` check in
the node and for the contacts it saves.

Calibration
-----------
`MeasuredDht` is the full `DhtCore` with a census: for each query kind it
notes walk times, hops, request bytes and datagrams, and for providers
searches how many values came back (and, given a `DhtView` fed the same
publications, how many were available).  Every full run keeps that census
(metrics ``dht.walk_s`` and ``dht.providers_per_search``); ``python -m
simulations.calibrate`` (`p2pblog sim calibrate`) runs full scenarios at
200-400 nodes and writes `CALIBRATION_FILE`, the quantiles the model draws
from.  ``tests/simulations/test_dht_model.py`` runs full and model side by
side and fails when they drift apart.
"""

from __future__ import annotations

import bisect
import heapq
import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Final

from dht import DhtCore
from dht.events import (
    BootstrapFinished,
    Event,
    LookupFinished,
    ProvidersAdded,
    ProvidersFound,
    PutFinished,
    ValueFound,
    ValueNotFound,
)
from dht.ids import Address, Contact, distance
from dht.lookup import READ_QUORUM
from dht.providers import MAX_PROVIDERS_PER_KEY
from dht.queries import Query
from dht.rpc import Purpose
from dht.wire import Request, Value
from identity.errors import LocalProtocolError
from simulations.network import Network

#: Where the calibration lives (written by ``python -m simulations.calibrate``).
CALIBRATION_FILE: Final = Path(__file__).with_name("calibration.json")
#: Query classes of `dht.queries` by the kind the census and the calibration name them.
KINDS: Final = {
    "GetQuery": "get",
    "GetProvidersQuery": "providers",
    "PutQuery": "put",
    "AddProviderQuery": "add_provider",
    "LookupQuery": "lookup",
    "BootstrapQuery": "bootstrap",
    "RefreshQuery": "refresh",
    "RepublishQuery": "republish",
    "ReannounceQuery": "reannounce",
}
#: The kinds whose walks end in an event the node waits for (their times are measured).
TIMED: Final = ("get", "providers", "put", "add_provider", "lookup", "bootstrap")
#: A kind the calibration runs never saw (a bucket refresh in a run shorter than the
#: refresh interval) costs what the kind that walks the same way costs.
STAND_INS: Final = {"refresh": "lookup", "republish": "put", "reannounce": "add_provider", "lookup": "get"}
#: Quantiles kept of each distribution: every 5 %, 0 .. 100.
QUANTILES: Final = 21
#: Node ids looked at on each side of a target's place in the sorted ids for its k nearest.
NEAR_WINDOW: Final = 48
#: Contacts a model node's table gets after a join: the k nearest, and this many random ones.
RANDOM_CONTACTS: Final = 20


def quantiles(values: Iterable[float], count: int = QUANTILES) -> list[float]:
    """``count`` evenly spaced quantiles (the first is the minimum, the last the maximum)."""
    ordered = sorted(values)
    if not ordered:
        return []
    last = len(ordered) - 1
    return [ordered[round(last * i / (count - 1))] for i in range(count)]


def draw(table: tuple[float, ...], rng: Random, u: float | None = None) -> float:
    """A value from the distribution ``table`` (its quantiles), interpolated linearly
    (at quantile ``u`` when given, else at a random one)."""
    if not table:
        return 0.0
    if len(table) == 1:
        return table[0]
    x = (rng.random() if u is None else u) * (len(table) - 1)
    i = int(x)
    if i >= len(table) - 1:
        return table[-1]
    return table[i] + (table[i + 1] - table[i]) * (x - i)


@dataclass(frozen=True)
class Calibration:
    """What the model draws from, measured in full runs (`CALIBRATION_FILE`)."""

    #: Walk time (s) quantiles per kind, and hops quantiles (get and lookup).
    walk_s: dict[str, tuple[float, ...]]
    hops: dict[str, tuple[float, ...]]
    #: Providers returned / providers available (at most ``want``), quantiles.
    providers_ratio: tuple[float, ...]
    #: DHT bytes and datagrams one query of a kind costs the network (answers, pings,
    #: retransmissions and verifications folded in).
    bytes_per_query: dict[str, float]
    datagrams_per_query: dict[str, float]
    #: Nodes that hold a record and answer a read of it from their own store (the k
    #: it was stored at, plus cache stores and welcomes): the share of reads of an
    #: existing record answered locally in full runs, times their node count.
    holders: int = 20
    #: What it was measured on (scenarios, nodes, durations, seeds).
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> Calibration:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        return cls(
            walk_s={k: tuple(v) for k, v in doc["walk_s"].items()},
            hops={k: tuple(v) for k, v in doc["hops"].items()},
            providers_ratio=tuple(doc["providers_ratio"]),
            bytes_per_query=dict(doc["bytes_per_query"]),
            datagrams_per_query=dict(doc["datagrams_per_query"]),
            holders=int(doc.get("holders", 20)),
            source=dict(doc.get("source", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "walk_s": {k: list(v) for k, v in sorted(self.walk_s.items())},
            "hops": {k: list(v) for k, v in sorted(self.hops.items())},
            "providers_ratio": list(self.providers_ratio),
            "bytes_per_query": dict(sorted(self.bytes_per_query.items())),
            "datagrams_per_query": dict(sorted(self.datagrams_per_query.items())),
            "holders": self.holders,
        }


class DhtCensus:
    """What one run's DHT queries did, by kind (both fidelities fill it)."""

    def __init__(self) -> None:
        # Arrays, not lists: a 10,000-node hour makes millions of queries.
        self.walks: dict[str, array[float]] = {}
        self.hops: dict[str, array[int]] = {}
        #: Providers returned per search, and returned / available (full runs with a view).
        self.providers: array[int] = array("l")
        self.providers_ratio: array[float] = array("d")
        self.started: Counter[str] = Counter()
        self.request_bytes: Counter[str] = Counter()
        self.request_datagrams: Counter[str] = Counter()
        #: Reads of a peer record (``start_get``) that found a value.
        self.gets_found = 0

    def walked(self, kind: str, seconds: float, hops: int | None = None) -> None:
        self.walks.setdefault(kind, array("d")).append(seconds)
        if hops is not None:
            self.hops.setdefault(kind, array("l")).append(hops)

    def merge(self, other: DhtCensus) -> None:
        """Add another census (a shard's, `simulations.shards`) to this one."""
        for kind, walks in sorted(other.walks.items()):
            self.walks.setdefault(kind, array("d")).extend(walks)
        for kind, hops in sorted(other.hops.items()):
            self.hops.setdefault(kind, array("l")).extend(hops)
        self.providers.extend(other.providers)
        self.providers_ratio.extend(other.providers_ratio)
        self.started.update(other.started)
        self.request_bytes.update(other.request_bytes)
        self.request_datagrams.update(other.request_datagrams)
        self.gets_found += other.gets_found

    def metrics(self) -> dict[str, Any]:
        """The census in metrics.json (``dht.walk_s``, ``dht.providers_per_search``)."""
        walk: dict[str, Any] = {}
        for kind in TIMED:
            times = sorted(self.walks.get(kind, ()))
            if times:
                walk[kind] = {
                    "count": len(times),
                    "p50": round(times[len(times) // 2], 6),
                    "p90": round(times[min(len(times) - 1, len(times) * 9 // 10)], 6),
                }
        found = sorted(self.providers)
        providers = {
            "searches": len(found),
            "mean": round(sum(found) / len(found), 6) if found else 0.0,
            "p50": found[len(found) // 2] if found else 0,
            "p90": found[min(len(found) - 1, len(found) * 9 // 10)] if found else 0,
        }
        return {"walk_s": walk, "providers_per_search": providers}


@dataclass(slots=True)
class _Provided:
    value: bytes
    publisher: int
    expires_at: float
    first_seen: float
    refreshed_at: float


class DhtView:
    """The global registry the model answers from: who is in the DHT, and what they published."""

    def __init__(self, network: Network) -> None:
        self.network = network
        #: Node index -> its contact, and every joined node id in order (for nearest).
        self.contacts: dict[int, Contact] = {}
        self._ids: list[bytes] = []
        self._index_of: dict[bytes, int] = {}
        #: Key -> publisher index -> (value, expires at).
        self.records: dict[bytes, dict[int, tuple[Value, float]]] = {}
        #: Key -> provider id -> what it announced.
        self.providers: dict[bytes, dict[bytes, _Provided]] = {}

    def join(self, index: int, contact: Contact) -> None:
        if index in self.contacts:
            return
        self.contacts[index] = contact
        bisect.insort(self._ids, contact.node_id)
        self._index_of[contact.node_id] = index

    def index_at(self, addr: Address) -> int | None:
        return self.network.addrs.get(addr)

    def reachable(self, asker: int, index: int) -> bool:
        return self.network.reachable(asker, index)

    def nearest(self, target: bytes, asker: int, count: int) -> list[Contact]:
        """The ``count`` nodes nearest ``target`` (XOR) that ``asker`` can reach now.

        Ids sharing a long prefix with the target sit next to it in sorted order,
        so a window around its place holds its nearest (no scan of every node)."""
        ids = self._ids
        at = bisect.bisect_left(ids, target)
        window = ids[max(0, at - NEAR_WINDOW) : at + NEAR_WINDOW]
        window.sort(key=lambda node_id: distance(node_id, target))
        out: list[Contact] = []
        for node_id in window:
            index = self._index_of[node_id]
            if index != asker and self.reachable(asker, index):
                out.append(self.contacts[index])
                if len(out) == count:
                    break
        return out

    def random_contacts(self, asker: int, count: int, rng: Random) -> list[Contact]:
        if not self._ids:
            return []
        out = []
        for _ in range(count):
            index = self._index_of[self._ids[rng.randrange(len(self._ids))]]
            if index != asker and self.reachable(asker, index):
                out.append(self.contacts[index])
        return out

    def put(self, key: bytes, value: Value, publisher: int, expires_at: float) -> None:
        self.records.setdefault(key, {})[publisher] = (value, expires_at)

    def add_provider(
        self, key: bytes, pid: bytes, value: bytes, publisher: int, now: float, ttl: float
    ) -> None:
        held = self.providers.setdefault(key, {})
        old = held.get(pid)
        if old is None or old.expires_at <= now:
            held[pid] = _Provided(value, publisher, now + ttl, now, now)
        else:
            old.value, old.publisher, old.expires_at, old.refreshed_at = value, publisher, now + ttl, now

    def values(self, key: bytes, asker: int, now: float) -> list[Value]:
        """The values published under ``key`` that have not expired, from ``asker``'s side."""
        held = self.records.get(key)
        if not held:
            return []
        connected = self.network.connected
        out = []
        for publisher, (value, expires_at) in list(held.items()):
            if expires_at <= now:
                del held[publisher]
            elif connected(asker, publisher):
                out.append(value)
        return out

    def provider_values(self, key: bytes, asker: int, now: float) -> list[tuple[bytes, bytes, float]]:
        """``(provider id, value, first seen)`` under ``key``, unexpired, from ``asker``'s side,
        the most recently announced first: the order a holder answers in
        (`dht.providers.ProviderStore.get_with_ids`), which makes searchers of one feed
        dial the same few providers (a random order spreads their connections: more
        of them, and more duplicates)."""
        held = self.providers.get(key)
        if not held:
            return []
        connected = self.network.connected
        out = []
        for pid, entry in list(held.items()):
            if entry.expires_at <= now:
                del held[pid]
            elif connected(asker, entry.publisher):
                out.append((entry.refreshed_at, pid, entry))
        out.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [(pid, entry.value, entry.first_seen) for _, pid, entry in out]


class MeasuredDht(DhtCore):
    """The full `DhtCore`, noting what its queries cost and return in a `DhtCensus`.

    It changes nothing the core does (no randomness drawn, no output changed).
    Given a `DhtView`, it also registers what it publishes there, so a providers
    search can be compared with what was available (the calibration's ratio).
    """

    def __init__(
        self,
        *args: Any,
        census: DhtCensus,
        index: int,
        view: DhtView | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._census = census
        self._index = index
        self._view = view
        self._kind_of: dict[int, str] = {}
        self._started_at: dict[int, float] = {}
        self._available: dict[int, int] = {}
        self._joining = False

    def bootstrap(self, addrs: Iterable[Address], now: float) -> int:
        self._note(self._next_query_id, "bootstrap", now)
        return super().bootstrap(addrs, now)

    def _start(self, query: Query, now: float) -> int:
        kind = "bootstrap" if self._joining else KINDS.get(type(query).__name__, "other")
        if self._joining:
            self._kind_of[query.query_id] = kind
        else:
            self._note(query.query_id, kind, now)
        view = self._view
        if view is not None:
            self._register(view, query, kind, now)
        return super()._start(query, now)

    def _register(self, view: DhtView, query: Query, kind: str, now: float) -> None:
        value = getattr(query, "value", None)
        if kind in ("put", "republish") and value is not None:
            view.put(query.target, value, self._index, now + self.config.record_ttl)
        elif kind in ("add_provider", "reannounce") and isinstance(value, bytes):
            pid = self.providers.provider_id(query.target, value, now)
            if pid is not None:
                view.add_provider(query.target, pid, value, self._index, now, self.config.provider_ttl)
        elif kind == "providers":
            want = getattr(query, "want", MAX_PROVIDERS_PER_KEY)
            available = {pid for pid, _, _ in view.provider_values(query.target, self._index, now)}
            available.update(pid for pid, _ in self.providers.get_with_ids(query.target, now))
            self._available[query.query_id] = min(len(available), want)

    def _refresh_after_join(self, query: Any, closest: tuple[Contact, ...], now: float) -> None:
        self._joining = True
        try:
            super()._refresh_after_join(query, closest, now)
        finally:
            self._joining = False

    def _note(self, query_id: int, kind: str, now: float) -> None:
        self._kind_of[query_id] = kind
        self._started_at[query_id] = now
        self._census.started[kind] += 1
        if len(self._kind_of) > 4 * len(self._queries) + 256:
            live = self._queries.keys() | self._started_at.keys()
            self._kind_of = {q: k for q, k in self._kind_of.items() if q in live}

    def _send(
        self,
        request: Request,
        addr: Address,
        node_id: bytes | None,
        purpose: Purpose,
        query_id: int | None,
        now: float,
    ) -> None:
        super()._send(request, addr, node_id, purpose, query_id, now)
        kind = self._kind_of.get(query_id, "other") if query_id is not None else "other"
        self._census.request_bytes[kind] += len(self._outgoing[-1][0])
        self._census.request_datagrams[kind] += 1

    def _emit(self, event: Event) -> None:
        super()._emit(event)
        query_id = getattr(event, "query_id", None)
        if query_id is None:
            return
        started = self._started_at.pop(query_id, None)
        kind = self._kind_of.pop(query_id, None)
        if started is None or kind is None:
            return
        hops = event.hops if isinstance(event, ValueFound | LookupFinished) else None
        if kind == "get" and isinstance(event, ValueFound):
            self._census.gets_found += 1
            if hops == 0 and self._now == started:
                kind = "get_local"  # answered from our own store: no walk (the model decides these)
        self._census.walked(kind, self._now - started, hops)
        if isinstance(event, ProvidersFound):
            self._census.providers.append(len(event.values))
            available = self._available.pop(query_id, 0)
            if available:
                self._census.providers_ratio.append(min(1.0, len(event.values) / available))


@dataclass(order=True)
class _Pending:
    due: float
    query_id: int
    kind: str = field(compare=False)
    key: bytes = field(compare=False)
    want: int = field(compare=False, default=0)
    quorum: int = field(compare=False, default=1)
    seen: bool = field(compare=False, default=False)
    value: Value | None = field(compare=False, default=None)


class ModelDht(DhtCore):
    """A `DhtCore` whose queries answer from a `DhtView` after a modelled walk time."""

    def __init__(
        self,
        *args: Any,
        view: DhtView,
        calibration: Calibration,
        census: DhtCensus,
        index: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._view = view
        self._cal = calibration
        self._census = census
        self._index = index
        self._pending: list[_Pending] = []
        self._started: dict[int, float] = {}
        #: Fractions of bytes and datagrams charged but not yet whole.
        self._owed_bytes = 0.0
        self._owed_datagrams = 0.0
        view.join(index, Contact(self.node_id, view.network.node_addrs[index]))

    # -- outputs ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        deadlines = [
            d
            for d in (self.table.next_refresh(), self.records.next_deadline(), self.providers.next_deadline())
            if d is not None
        ]
        if self._pending:
            deadlines.append(self._pending[0].due)
        return min(deadlines) if deadlines else None

    @property
    def active_queries(self) -> int:
        return len(self._pending)

    # -- inputs ----------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Nothing in a model run speaks the DHT's wire: dropped, and counted."""
        self._advance(now)
        self.stats["model.datagrams_ignored"] += 1

    def handle_timer(self, now: float) -> None:
        self._advance(now)
        if not len(self.table):
            # Others' requests fill a real node's table (the first node's, a node whose
            # join failed): here, the view does once anyone else is reachable.
            self._fill_table(now)
        pending = self._pending
        while pending and pending[0].due <= now:
            self._complete(heapq.heappop(pending), now)
        for index in self.table.buckets_due(now):
            self.table.touch_bucket(index, now)
            self.stats["refresh.buckets"] += 1
            self._charge("refresh")
        for key, value in self.records.due(now):
            self.stats["records.republished"] += 1
            self._charge("republish")
            self._view.put(key, value, self._index, now + self.config.record_ttl)
        for key, provider in self.providers.due(now):
            self.stats["providers.reannounced"] += 1
            self._charge("reannounce")
            self._announce(key, provider, now)

    # -- commands --------------------------------------------------------------

    def start_lookup(self, target: bytes, now: float) -> int:
        self._advance(now)
        self._check_key(target, "target")
        return self._schedule("lookup", target, now)

    def start_get(self, key: bytes, now: float, *, quorum: int = 1) -> int:
        self._advance(now)
        self._check_key(key, "key")
        if quorum < 1:
            raise LocalProtocolError("quorum must be >= 1")
        local = self.records.get(key, now)
        if local is None and quorum == 1 and self._holds(key):
            values = self._view.values(key, self._index, now)
            if values:
                local = values[0] if len(values) == 1 else values[self._get_selector(key, values)]
        if local is not None and quorum == 1:
            # A copy we hold answers a quorum-1 read at once, as `GetQuery` does: our own,
            # or one we hold as one of the k nodes nearest the key.
            query_id = self._new_query_id()
            self._census.started["get"] += 1
            self._census.walked("get_local", 0.0, 0)
            self._emit(ValueFound(query_id, key, local, 1, 0, 0))
            return query_id
        return self._schedule("get", key, now, quorum=quorum)

    def start_put(self, key: bytes, value: Value, now: float) -> int:
        query_id = self._next_query_id
        # The base holds the value (raising for our own misuse) and starts a walk: `_start`
        # below turns that walk into a modelled one.
        super().start_put(key, value, now)
        return query_id

    def start_add_provider(self, key: bytes, value: bytes, now: float) -> int:
        query_id = self._next_query_id
        super().start_add_provider(key, value, now)
        return query_id

    def start_get_providers(
        self, key: bytes, now: float, *, want: int = MAX_PROVIDERS_PER_KEY, seen: bool = False
    ) -> int:
        self._advance(now)
        self._check_key(key, "key")
        if want < 1:
            raise LocalProtocolError("want must be >= 1")
        return self._schedule("providers", key, now, want=want, seen=seen)

    def bootstrap(self, addrs: Iterable[Address], now: float) -> int:
        self._advance(now)
        seeds = [self._view.index_at((str(host), int(port))) for host, port in addrs]
        answered = sum(1 for i in seeds if i is not None and self._view.reachable(self._index, i))
        return self._schedule("bootstrap", self.node_id, now, want=answered)

    def _start(self, query: Query, now: float) -> int:
        """The base's put and announce end here: model their walk instead."""
        kind = KINDS.get(type(query).__name__, "other")
        value = getattr(query, "value", None)
        self._schedule(kind, query.target, now, value=value, query_id=query.query_id)
        return query.query_id

    # -- the model -------------------------------------------------------------

    def _schedule(
        self,
        kind: str,
        key: bytes,
        now: float,
        *,
        want: int = 0,
        quorum: int = 1,
        seen: bool = False,
        value: Value | None = None,
        query_id: int | None = None,
    ) -> int:
        if query_id is None:
            query_id = self._new_query_id()
        self._census.started[kind] += 1
        self._charge(kind)
        self.table.touch(key, now)
        walk = self._cal.walk_s.get(kind) or self._cal.walk_s.get(STAND_INS.get(kind, "get"), ())
        due = now + draw(walk, self._rng)
        heapq.heappush(self._pending, _Pending(due, query_id, kind, key, want, quorum, seen, value))
        self._started[query_id] = now
        return query_id

    def _charge(self, kind: str) -> None:
        """Count the datagrams and bytes a real query of ``kind`` would have cost."""
        cal = self._cal
        while kind not in cal.bytes_per_query and kind in STAND_INS:
            kind = STAND_INS[kind]
        self._owed_bytes += cal.bytes_per_query.get(kind, 0.0)
        self._owed_datagrams += cal.datagrams_per_query.get(kind, 0.0)
        whole_bytes, whole_datagrams = int(self._owed_bytes), int(self._owed_datagrams)
        if whole_bytes or whole_datagrams:
            traffic = self._view.network.traffic[self._index]
            traffic.datagram_bytes += whole_bytes
            traffic.datagrams += whole_datagrams
            self._owed_bytes -= whole_bytes
            self._owed_datagrams -= whole_datagrams
        self.stats["model.queries"] += 1

    def _complete(self, job: _Pending, now: float) -> None:
        started = self._started.pop(job.query_id, now)
        kind, key = job.kind, job.key
        view, k = self._view, self.config.k
        hops: int | None = None
        event: Event | None
        if kind == "get":
            event = self._get_result(job, now)
            hops = event.hops if isinstance(event, ValueFound) else None
        elif kind == "providers":
            event = self._providers_result(job, now)
        elif kind == "lookup":
            closest = tuple(view.nearest(key, self._index, k))
            hops = round(draw(self._cal.hops.get("lookup") or self._cal.hops.get("get", ()), self._rng))
            event = LookupFinished(job.query_id, key, closest, len(closest), 0, hops)
        elif kind == "bootstrap":
            closest = ()
            if job.want:  # a seed answered
                closest = self._fill_table(now)
            event = BootstrapFinished(job.query_id, job.want, closest)
        else:
            event = self._store_result(job, now)
        if kind in TIMED:
            self._census.walked(kind, now - started, hops)
        if event is not None:
            self._emit(event)

    def _holds(self, key: bytes) -> bool:
        """Whether we are among the nodes nearest ``key`` that hold its records and answer
        a read from their own store: the k the publisher stored at, and those a cache
        store or a welcome added (paper 2.3, 2.5), `Calibration.holders` in all."""
        holders = max(self.config.k, self._cal.holders)
        nearest = self._view.nearest(key, self._index, holders)
        return len(nearest) < holders or distance(self.node_id, key) < distance(nearest[-1].node_id, key)

    def _fill_table(self, now: float) -> tuple[Contact, ...]:
        """Put the k nearest reachable nodes and some random others in the table."""
        closest = tuple(self._view.nearest(self.node_id, self._index, self.config.k))
        for contact in (*closest, *self._view.random_contacts(self._index, RANDOM_CONTACTS, self._rng)):
            self.table.update(contact, now)
        return closest

    def _get_result(self, job: _Pending, now: float) -> ValueFound | ValueNotFound:
        key = job.key
        values: list[Value] = []
        local = self.records.get(key, now)
        if local is not None:
            values.append(local)
        for value in self._view.values(key, self._index, now):
            if value != local and self.records.is_valid(key, value, now):
                values.append(value)
        if not values:
            return ValueNotFound(job.query_id, key, self.config.k)
        best = 0 if len(values) == 1 else self._get_selector(key, values)
        hops = round(draw(self._cal.hops.get("get", ()), self._rng))
        answers = min(len(values), max(job.quorum, READ_QUORUM))
        return ValueFound(job.query_id, key, values[best], answers, READ_QUORUM, hops)

    def _providers_result(self, job: _Pending, now: float) -> ProvidersFound:
        key = job.key
        own = self.providers.get_with_seen(key, now)
        mine = {pid for pid, _, _ in own}
        others = [p for p in self._view.provider_values(key, self._index, now) if p[0] not in mine]
        found = own[: job.want]
        room = min(job.want, len(own) + len(others)) - len(found)
        if room > 0 and others:
            ratio = draw(self._cal.providers_ratio, self._rng) if self._cal.providers_ratio else 1.0
            target = len(found) + room
            count = min(room, max(0, round(ratio * target) - len(found)))
            found += others[:count]
        values = tuple(value for _, value, _ in found)
        self._census.providers.append(len(values))
        seen = tuple((int(first),) * READ_QUORUM for _, _, first in found) if job.seen else ()
        return ProvidersFound(job.query_id, key, values, self.config.k, seen)

    def _store_result(self, job: _Pending, now: float) -> PutFinished | ProvidersAdded | None:
        """A put's or announcement's walk ended: the view holds the value from now on."""
        key, value = job.key, job.value
        stored = tuple(self._view.nearest(key, self._index, self.config.k))
        if job.kind in ("put", "republish"):
            if stored and value is not None:
                self._view.put(key, value, self._index, now + self.config.record_ttl)
            return PutFinished(job.query_id, key, stored, (), ()) if job.kind == "put" else None
        if stored and isinstance(value, bytes):
            self._announce(key, value, now)
        return ProvidersAdded(job.query_id, key, stored, (), ()) if job.kind == "add_provider" else None

    def _announce(self, key: bytes, value: bytes, now: float) -> None:
        pid = self.providers.provider_id(key, value, now)
        if pid is not None:
            self._view.add_provider(key, pid, value, self._index, now, self.config.provider_ttl)


def dht_factory(
    fidelity: str,
    index: int,
    census: DhtCensus,
    view: DhtView | None,
    calibration: Calibration | None,
) -> Callable[..., DhtCore]:
    """The ``dht_factory`` for node ``index``'s `NodeCore` in a run of ``fidelity``."""

    def make(*args: Any, **kwargs: Any) -> DhtCore:
        if fidelity == "model":
            assert view is not None and calibration is not None
            return ModelDht(*args, view=view, calibration=calibration, census=census, index=index, **kwargs)
        return MeasuredDht(*args, census=census, index=index, view=view, **kwargs)

    return make


__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "DhtCensus",
    "DhtView",
    "MeasuredDht",
    "ModelDht",
    "dht_factory",
    "draw",
    "quantiles",
]
