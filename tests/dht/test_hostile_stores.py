"""The DHT stores under hostile sequences: bounds per source and in total, eviction, timer heaps.

Found by attacking a live node ("Survive strangers"): ~65,000 validly signed
``p2pb_add_provider`` from four keys filled the provider store, our own
announcement was then refused and the node crashed; 200,000 refreshes of two
records left ~192,000 entries in the timer heap.  The state machines drive
both stores with floods, refreshes, priority and own values and time running
past expiry, and check the bounds after every step; the focused tests replay
the two attacks with real signed records and p2pblog's validators.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any, Final

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dht import DhtConfig, DhtCore, wire
from dht.providers import ProviderStore
from dht.records import REPLICATE_INTERVAL, TIMER_HEAP_SLACK, RecordStore, StoreOutcome
from identity import Identity
from identity.netaddr import host_key as source_of
from identity.records import PEER, PROVIDER, create_record, peer_key, provider_key
from p2pblog.record_rules import rank_provider, select_value, validate_provider, validate_value

KEYS: Final = [bytes([i]) * 20 for i in range(24)]
#: The keys the owner cares about (followed feeds, known peers).
PRIORITY_KEYS: Final = frozenset(KEYS[:4])
SOURCES: Final = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.7", None]
FLOODER: Final = "203.0.113.66"
#: Every source the machines use.
ALL_SOURCES: Final = [s for s in [*SOURCES, FLOODER, "203.0.113.67"] if s is not None]
TTL: Final = 50.0


def is_priority(key: bytes) -> bool:
    return key in PRIORITY_KEYS


def heap_bound(live: int) -> int:
    return 2 * live + TIMER_HEAP_SLACK + 1


# ============================================================================ state machines


class HostileStore(RuleBasedStateMachine):
    """What both store machines share: time running, and the bounds after every step."""

    TOTAL: int
    PER_SOURCE: int
    store: Any
    now: float
    own: Any

    @rule(dt=st.floats(0, 40))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.store.due(self.now)

    @invariant()
    def bounded(self) -> None:
        if not hasattr(self, "store"):
            return
        assert self.store.received <= self.TOTAL
        assert len(self.store) == self.store.received + len(self.own)
        for source in ALL_SOURCES:
            assert self.store.held_by(source) <= self.PER_SOURCE
        assert self.store.timer_entries <= heap_bound(len(self.store))
        self.own_and_priority_kept()

    def own_and_priority_kept(self) -> None:
        raise NotImplementedError


class RecordStoreHostile(HostileStore):
    """A small record store against floods, refreshes, own and priority values, and time."""

    TOTAL = 10
    PER_SOURCE = 3

    @initialize()
    def setup(self) -> None:
        self.store = RecordStore(
            ttl=TTL,
            replicate_interval=20.0,
            max_records=self.TOTAL,
            max_per_source=self.PER_SOURCE,
            priority=is_priority,
            rng=Random(1),
        )
        self.now = 0.0
        self.serial = 0
        #: Our own keys (never refused, never dropped).
        self.own: set[bytes] = set()
        #: Priority keys held -> store expiry (only expiry may take them).
        self.protected: dict[bytes, float] = {}

    def _value(self) -> bytes:
        self.serial += 1
        return b"v%d" % self.serial

    def _held_priority(self) -> dict[bytes, float]:
        return {k: t for k, t in self.protected.items() if t > self.now}

    def _put(self, key: bytes, value: bytes, source: str | None) -> StoreOutcome:
        before = self._held_priority()
        was_held = key in self.store and self.store.get(key, self.now) is not None
        full = self.store.received >= self.TOTAL
        source_full = source is not None and self.store.held_by(source) >= self.PER_SOURCE
        outcome = self.store.put(key, value, self.now, source=source)
        if not was_held and key not in self.own:
            if source_full:
                assert outcome is StoreOutcome.FULL
            elif full and not is_priority(key):
                assert outcome is StoreOutcome.FULL  # the newest stranger is the newcomer
            elif full and any(not is_priority(k) and not self.store.is_published(k) for k in self.store):
                assert outcome is StoreOutcome.STORED  # it evicts the newest stranger
        if (
            outcome in (StoreOutcome.STORED, StoreOutcome.REFRESHED)
            and is_priority(key)
            and key not in self.own
        ):
            self.protected[key] = self.now + TTL
        for held in before:
            assert held in self.store, "a priority value was evicted"
        return outcome

    @rule(key=st.sampled_from(KEYS), source=st.sampled_from(SOURCES), same=st.booleans())
    def put(self, key: bytes, source: str | None, same: bool) -> None:
        held = self.store.get(key, self.now)
        value = held if same and isinstance(held, bytes) else self._value()
        self._put(key, value, source)

    @rule(count=st.integers(1, 30), source=st.sampled_from([FLOODER, "203.0.113.67"]))
    def flood(self, count: int, source: str) -> None:
        for i in range(count):
            key = (b"flood-%d-" % (self.serial + i)).ljust(20, b".")
            self._put(key, self._value(), source)

    @rule(key=st.sampled_from(KEYS))
    def publish(self, key: bytes) -> None:
        outcome = self.store.put(key, self._value(), self.now, published=True)
        assert outcome is StoreOutcome.STORED
        self.own.add(key)
        self.protected.pop(key, None)

    @rule(key=st.sampled_from(KEYS), times=st.integers(1, 200))
    def refresh(self, key: bytes, times: int) -> None:
        value = self.store.get(key, self.now)
        if value is None:
            return
        for _ in range(times):
            assert self.store.put(key, value, self.now, source=FLOODER) is StoreOutcome.REFRESHED
        if key in self.protected:
            self.protected[key] = self.now + TTL

    def own_and_priority_kept(self) -> None:
        for key in self.own:
            assert self.store.is_published(key) and self.store.get(key, self.now) is not None
        for key in self._held_priority():
            assert key in self.store


RecordStoreHostile.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestRecordStoreHostile = RecordStoreHostile.TestCase


def toy(provider: str, seq: int) -> bytes:
    return f"{provider}:{seq}".encode()


def toy_provider(key: bytes, value: bytes, now: float) -> bytes | None:
    provider, _, seq = value.partition(b":")
    return provider if seq.isdigit() else None


def toy_seq(key: bytes, values: Sequence[wire.Value]) -> int:
    seqs = [int(v.partition(b":")[2]) if isinstance(v, bytes) else -1 for v in values]
    return max(range(len(values)), key=seqs.__getitem__)


class ProviderStoreHostile(HostileStore):
    """A small provider store against floods, refreshes, own and priority values, and time."""

    TOTAL = 12
    PER_SOURCE = 4
    PER_KEY = 3

    @initialize()
    def setup(self) -> None:
        self.store = ProviderStore(
            validator=toy_provider,
            selector=toy_seq,
            ttl=TTL,
            republish_interval=20.0,
            max_per_key=self.PER_KEY,
            max_values=self.TOTAL,
            max_per_source=self.PER_SOURCE,
            priority=is_priority,
            rng=Random(2),
        )
        self.now = 0.0
        self.serial = 0
        #: key -> seq of our own value there.
        self.own: dict[bytes, int] = {}
        #: (key, provider) of priority keys held -> store expiry.
        self.protected: dict[tuple[bytes, bytes], float] = {}

    def _held_priority(self) -> dict[tuple[bytes, bytes], float]:
        return {item: t for item, t in self.protected.items() if t > self.now}

    def _held(self, key: bytes, provider: bytes) -> bool:
        return any(pid == provider for pid, _ in self.store.get_with_ids(key, self.now))

    def _add(self, key: bytes, value: bytes, source: str | None) -> StoreOutcome:
        before = self._held_priority()
        pid = value.partition(b":")[0]
        new = not self._held(key, pid)
        full = self.store.received >= self.TOTAL
        key_full = len(self.store.get(key, self.now)) >= self.PER_KEY
        source_full = source is not None and self.store.held_by(source) >= self.PER_SOURCE
        outcome = self.store.add(key, value, self.now, source=source)
        if new and (source_full or (full and not key_full and not is_priority(key))):
            assert outcome is StoreOutcome.FULL
        if outcome in (StoreOutcome.STORED, StoreOutcome.REFRESHED) and is_priority(key):
            self.protected[(key, pid)] = self.now + TTL
        lost = [item for item in before if not self._held(*item)]
        # Only a newcomer to the same (priority) key may take a priority value's place.
        assert all(k == key for k, _ in lost) and len(lost) <= 1, "a stranger evicted a priority value"
        for item in lost:
            del self.protected[item]
        return outcome

    @rule(
        key=st.sampled_from(KEYS),
        provider=st.sampled_from(["a", "b", "c", "d", "e"]),
        seq=st.integers(0, 3),
        source=st.sampled_from(SOURCES),
    )
    def add(self, key: bytes, provider: str, seq: int, source: str | None) -> None:
        self._add(key, toy(provider, seq), source)

    @rule(count=st.integers(1, 30), source=st.sampled_from([FLOODER, "203.0.113.67"]), spread=st.booleans())
    def flood(self, count: int, source: str, spread: bool) -> None:
        # Fresh providers (Sybil keys): at random keys, or all at the keys we care about.
        for i in range(count):
            self.serial += 1
            key = (b"flood-%d-" % self.serial).ljust(20, b".") if spread else KEYS[i % 4]
            self._add(key, toy(f"sybil{self.serial}", 0), source)

    @rule(key=st.sampled_from(KEYS))
    def publish(self, key: bytes) -> None:
        seq = self.own.get(key, -1) + 1
        before = self._held_priority()
        assert self.store.add(key, toy("me", seq), self.now, published=True) is StoreOutcome.STORED
        self.own[key] = seq
        self.protected.pop((key, b"me"), None)
        # Our own value at a full key takes the place of one held there (the key's own bound).
        lost = [item for item in before if item in self.protected and not self._held(*item)]
        assert all(k == key for k, _ in lost) and len(lost) <= 1
        for item in lost:
            del self.protected[item]

    @rule(key=st.sampled_from(KEYS), times=st.integers(1, 200))
    def refresh(self, key: bytes, times: int) -> None:
        for pid, value in self.store.get_with_ids(key, self.now)[:1]:
            for _ in range(times):
                assert self.store.add(key, value, self.now, source=FLOODER) is StoreOutcome.REFRESHED
            if (key, pid) in self.protected:
                self.protected[(key, pid)] = self.now + TTL

    def own_and_priority_kept(self) -> None:
        for key, seq in self.own.items():
            assert (b"me", toy("me", seq)) in self.store.get_with_ids(key, self.now)
            assert self.store.is_published(key, b"me")
        for item in self._held_priority():
            assert self._held(*item)


ProviderStoreHostile.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestProviderStoreHostile = ProviderStoreHostile.TestCase


# ============================================================================ focused: the attacks

NOW: Final = 1_000_000.0
EXPIRES: Final = int(NOW) + 6 * 3600
ADDRS: Final = [("tcp", "192.0.2.10", 4000)]
FLOOD_ADDS: Final = 65_000


def provider_value(identity: Identity, feed: bytes, seq: int = 1) -> bytes:
    """A signed provider record, signed only (verifying each of 65,000 twice would double the cost)."""
    body = {"addrs": [list(a) for a in ADDRS], "feed": feed}
    return identity.sign(msgpack.packb([1, PROVIDER, identity.public_key, seq, EXPIRES, body]))


@pytest.fixture(scope="module")
def flood() -> list[tuple[bytes, bytes]]:
    """65,000 validly signed provider records for random feeds, from four keys."""
    rng = Random(65)
    keys = [Identity(rng.randbytes(32)) for _ in range(4)]
    out = []
    for i in range(FLOOD_ADDS):
        feed = rng.randbytes(32)
        out.append((provider_key(feed), provider_value(keys[i % 4], feed)))
    return out


def p2pblog_provider_store(followed: set[bytes]) -> ProviderStore:
    return ProviderStore(
        validator=validate_provider,
        selector=select_value,
        rank=rank_provider,
        priority=lambda key: key in followed,
        rng=Random(3),
    )


@pytest.mark.parametrize("sources", [1, 64], ids=["one host", "64 hosts"])
def test_a_provider_flood_keeps_our_announcement_and_followed_feeds(
    flood: list[tuple[bytes, bytes]], sources: int
) -> None:
    rng = Random(sources)
    me, friend, newcomer = (Identity(rng.randbytes(32)) for _ in range(3))
    followed_feeds = [rng.randbytes(32) for _ in range(5)]
    followed = {provider_key(feed) for feed in followed_feeds}
    store = p2pblog_provider_store(followed)
    own_feed = rng.randbytes(32)
    own_key = provider_key(own_feed)
    assert store.add(own_key, provider_value(me, own_feed), NOW, published=True) is StoreOutcome.STORED
    honest = [(provider_key(feed), provider_value(friend, feed)) for feed in followed_feeds]
    for key, value in honest:
        assert store.add(key, value, NOW, source="192.0.2.20") is StoreOutcome.STORED
    # An honest stranger's value held before the flood stays too ("newest stranger first").
    old_feed = rng.randbytes(32)
    old = (provider_key(old_feed), provider_value(friend, old_feed))
    assert store.add(*old, NOW, source="192.0.2.21") is StoreOutcome.STORED

    outcomes = [
        store.add(key, value, NOW + 1.0, source=f"203.0.113.{i % sources}")
        for i, (key, value) in enumerate(flood)
    ]

    assert outcomes.count(StoreOutcome.FULL) >= FLOOD_ADDS - store.max_values
    assert store.received <= store.max_values
    for i in range(sources):
        assert store.held_by(f"203.0.113.{i}") <= store.max_per_source
    if sources == 1:
        assert store.stats["refused.source"] == FLOOD_ADDS - store.max_per_source
    else:
        assert store.stats["refused.full"] > 0
    # Our own announcement is held, and announcing again (a new seq) is never refused.
    assert store.get(own_key, NOW + 2.0) == [provider_value(me, own_feed)]
    assert (
        store.add(own_key, provider_value(me, own_feed, 2), NOW + 2.0, published=True) is StoreOutcome.STORED
    )
    other_feed = rng.randbytes(32)
    mine = provider_value(me, other_feed)
    assert store.add(provider_key(other_feed), mine, NOW + 2.0, published=True) is StoreOutcome.STORED
    # Honest values held before the flood survive it.
    for key, value in [*honest, old]:
        assert store.get(key, NOW + 2.0) == [value]
    # A new provider of a followed feed still gets in, evicting the newest stranger.
    key, _ = honest[0]
    late = provider_value(newcomer, followed_feeds[0])
    assert store.add(key, late, NOW + 3.0, source="198.51.100.9") is StoreOutcome.STORED
    assert set(store.get(key, NOW + 3.0)) == {honest[0][1], late}
    assert store.received <= store.max_values
    assert store.timer_entries <= heap_bound(len(store))


def test_a_record_flood_keeps_our_peer_record_and_known_peers() -> None:
    rng = Random(7)
    me, friend = Identity(rng.randbytes(32)), Identity(rng.randbytes(32))
    known = {peer_key(friend.public_key)}
    store = RecordStore(validator=validate_value, selector=select_value, priority=known.__contains__)
    own = create_record(me, type=PEER, seq=1, expires=EXPIRES, addrs=ADDRS)
    assert store.put(peer_key(me.public_key), own.raw, NOW, published=True) is StoreOutcome.STORED
    # Opaque values (as `kademlia` peers store) from four hosts fill the store.
    for i in range(FLOOD_ADDS):
        key = rng.randbytes(20)
        store.put(key, b"junk %d" % i, NOW + 1.0, source=f"203.0.113.{i % 4}")
    assert store.received <= store.max_records
    assert all(store.held_by(f"203.0.113.{i}") <= store.max_per_source for i in range(4))
    # A host per share: 64 more hosts fill the store; strangers are then refused.
    for i in range(FLOOD_ADDS):
        store.put(rng.randbytes(20), b"more %d" % i, NOW + 1.0, source=f"198.18.{i % 64}.1")
    assert store.received == store.max_records and store.stats["refused.full"] > 0
    # Our peer record is held and republished; a known peer's record still gets in.
    again = create_record(me, type=PEER, seq=2, expires=EXPIRES, addrs=ADDRS)
    assert store.put(peer_key(me.public_key), again.raw, NOW + 2.0, published=True) is StoreOutcome.STORED
    theirs = create_record(friend, type=PEER, seq=1, expires=EXPIRES, addrs=ADDRS)
    assert (
        store.put(peer_key(friend.public_key), theirs.raw, NOW + 2.0, source="192.0.2.5")
        is StoreOutcome.STORED
    )
    assert store.stats["evicted.for_priority"] == 1
    assert store.get(peer_key(me.public_key), NOW + 3.0) == again.raw
    assert store.get(peer_key(friend.public_key), NOW + 3.0) == theirs.raw
    assert store.received <= store.max_records


def test_refreshes_leave_a_small_timer_heap() -> None:
    records = RecordStore(rng=Random(4), replicate_interval=REPLICATE_INTERVAL)
    providers = ProviderStore(rng=Random(5))
    for i in range(200_000):
        now = float(i // 100)
        key = KEYS[i % 2]
        records.put(key, b"held", now, source="203.0.113.1")
        providers.add(key, b"provider", now, source="203.0.113.1")
    assert len(records) == 2 and len(providers) == 2
    assert records.timer_entries <= heap_bound(2) and providers.timer_entries <= heap_bound(2)
    assert records.stats["timers.compacted"] > 0 and providers.stats["timers.compacted"] > 0
    # The timers still work: replication, then expiry, after the last refresh.
    last = float(199_999 // 100)
    assert sorted(key for key, _ in records.due(last + REPLICATE_INTERVAL * 1.2)) == KEYS[:2]
    providers.due(last + providers.ttl)
    records.due(last + records.ttl)
    assert len(records) == 0 and len(providers) == 0
    assert records.stats["expired"] == 2 and providers.stats["expired"] == 2


def test_the_same_inputs_give_the_same_timers() -> None:
    def run() -> tuple[list[Any], dict[str, int]]:
        rng = Random(9)
        store = RecordStore(rng=Random(10), max_records=50, priority=lambda key: key[0] < 8)
        out: list[Any] = []
        now = 0.0
        for _ in range(5_000):
            now += rng.random() * 30
            key = bytes([rng.randrange(64)]) * 20
            store.put(key, rng.choice([b"a", b"b"]), now, source=f"10.0.0.{rng.randrange(8)}")
            out.extend(store.due(now))
            out.append(store.next_deadline())
        return out, dict(store.stats)

    assert run() == run()


def test_the_priority_predicate_can_change() -> None:
    store = RecordStore(max_records=2)
    store.put(KEYS[0], b"a", 0.0, source="192.0.2.1")
    store.put(KEYS[1], b"b", 0.0, source="192.0.2.2")
    assert store.put(KEYS[2], b"c", 0.0) is StoreOutcome.FULL  # no priority: the old behaviour
    store.priority = {KEYS[0], KEYS[2]}.__contains__
    assert store.put(KEYS[2], b"c", 1.0) is StoreOutcome.STORED  # evicts KEYS[1], the newest stranger
    assert KEYS[1] not in store and KEYS[0] in store
    assert store.put(KEYS[3], b"d", 1.0) is StoreOutcome.FULL
    assert store.put(KEYS[1], b"b", 1.0) is StoreOutcome.FULL
    assert store.stats == {"refused.full": 3, "evicted.for_priority": 1}


def test_the_core_announces_into_a_full_provider_store() -> None:
    """The crash: a full store refused our own announcement and the core raised."""
    config = DhtConfig(max_provider_values=50, source_burst=1e9)
    core = DhtCore(b"\x01" * 20, Random(0), 0.0, config=config)
    for i in range(200):  # from 50 hosts, so the per-source share does not refuse them first
        core.providers.add(bytes([i % 256]) * 20, b"sybil %d" % i, 1.0, source=f"203.0.113.{i % 50}")
    assert core.providers.stats["refused.full"] == 150
    core.start_add_provider(b"\xff\x03" * 10, b"our own", 2.0)
    assert core.providers.get(b"\xff\x03" * 10, 2.0) == [b"our own"]
    assert core.providers.received == 50


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("192.0.2.1") == "192.0.2.1"
    assert source_of("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("not an address") == "not an address"
