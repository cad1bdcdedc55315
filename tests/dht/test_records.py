"""Record store (validator, selector, expiry, replication timers) and the rate limiter."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dht.ratelimit import TokenBucketLimiter
from dht.records import (
    RecordStore,
    StoreOutcome,
    latest_selector,
    majority_selector,
)
from dht.wire import Value
from identity.errors import LocalProtocolError
from identity.limits import MAX_DHT_VALUE_BYTES

KEY = b"k" * 20
OTHER = b"o" * 20


def seq_record(seq: int, expires: float = 1e12) -> bytes:
    """A toy signed-record stand-in: b"seq:<n>:<expiry>"."""
    return f"seq:{seq}:{expires}".encode()


def parse(value: Value) -> tuple[int, float] | None:
    if not isinstance(value, bytes) or not value.startswith(b"seq:"):
        return None
    _, seq, expires = value.decode().split(":")
    return int(seq), float(expires)


def seq_validator(key: bytes, value: Value, now: float) -> bool:
    parsed = parse(value)
    return parsed is not None and parsed[1] > now


def seq_selector(key: bytes, values: Sequence[Value]) -> int:
    seqs = [parse(v) for v in values]
    return max(range(len(values)), key=lambda i: (seqs[i] or (-1, 0.0))[0])


def test_default_store_is_kademlias() -> None:
    store = RecordStore()
    assert store.put(KEY, b"a", 0.0) is StoreOutcome.STORED
    assert store.put(KEY, "text", 1.0) is StoreOutcome.STORED  # overwrite, any allowed type
    assert store.get(KEY, 1.0) == "text"
    assert store.put(KEY, "text", 2.0) is StoreOutcome.REFRESHED
    assert store.put(KEY, b"x" * (MAX_DHT_VALUE_BYTES + 1), 2.0) is StoreOutcome.INVALID
    assert store.put(KEY, None, 2.0) is StoreOutcome.INVALID  # type: ignore[arg-type]
    assert store.get(KEY, 2.0) == "text"


def test_selectors() -> None:
    assert latest_selector(KEY, [b"a", b"b"]) == 1
    assert majority_selector(KEY, [b"a", b"b", b"b", b"a", b"c"]) == 0  # tie: earliest
    assert majority_selector(KEY, [b"a", b"b", b"b"]) == 1
    # 1 and True and 1.0 are different values on the wire.
    assert majority_selector(KEY, [1, True, 1.0, True]) == 1


def test_validator_and_selector_hooks() -> None:
    store = RecordStore(validator=seq_validator, selector=seq_selector)
    assert store.put(KEY, b"garbage", 0.0) is StoreOutcome.INVALID
    assert store.put(KEY, seq_record(2), 0.0) is StoreOutcome.STORED
    assert store.put(KEY, seq_record(1), 1.0) is StoreOutcome.OUTDATED
    assert store.get(KEY, 1.0) == seq_record(2)
    assert store.put(KEY, seq_record(3, expires=100.0), 2.0) is StoreOutcome.STORED
    # The record's own expiry is enforced on read.
    assert store.get(KEY, 99.0) == seq_record(3, expires=100.0)
    assert store.get(KEY, 100.0) is None and KEY not in store
    # A held value that went invalid does not block a new one.
    store.put(KEY, seq_record(9, expires=10.0), 0.0)
    assert store.put(KEY, seq_record(1), 20.0) is StoreOutcome.STORED


def test_expiry_and_replication_timers() -> None:
    store = RecordStore(ttl=100.0, replicate_interval=30.0, republish_interval=50.0)
    store.put(KEY, b"held", 0.0)
    store.put(OTHER, b"mine", 0.0, published=True)
    assert store.next_deadline() == 30.0
    assert store.due(29.0) == []
    assert store.due(30.0) == [(KEY, b"held")]  # replicate hourly (paper 2.5)
    # A STORE received from a peer resets the replication timer (paper 4.5).
    store.put(KEY, b"held", 40.0)
    assert store.due(60.0) == [(OTHER, b"mine")]  # republish our own
    assert store.due(70.0) == [(KEY, b"held")]
    assert store.due(100.0) == [(KEY, b"held")]
    assert store.due(110.0) == [(OTHER, b"mine")]
    assert store.next_deadline() == 130.0
    # A late call does each due thing once.
    assert store.due(135.0) == [(KEY, b"held")]
    # No more STOREs: the received record expires ttl after the last one (40).
    assert store.next_deadline() == 140.0
    assert store.due(140.0) == []
    assert KEY not in store and store.get(KEY, 140.0) is None
    # Our own record never expires here.
    assert store.get(OTHER, 10_000.0) == b"mine"


def test_capacity() -> None:
    store = RecordStore(max_records=2)
    store.put(b"a" * 20, b"1", 0.0)
    store.put(b"b" * 20, b"2", 0.0)
    assert store.put(b"c" * 20, b"3", 0.0) is StoreOutcome.FULL
    assert store.put(b"a" * 20, b"updated", 0.0) is StoreOutcome.STORED
    assert len(store) == 2


class RecordStoreMachine(RuleBasedStateMachine):
    """The store against a dict model: highest valid seq wins, ttl after the last STORE."""

    TTL = 50.0

    @initialize()
    def setup(self) -> None:
        self.store = RecordStore(
            validator=seq_validator, selector=seq_selector, ttl=self.TTL, replicate_interval=20.0
        )
        self.now = 0.0
        # key -> (seq, record expiry, store expiry)
        self.model: dict[bytes, tuple[int, float, float]] = {}

    def _live(self, key: bytes) -> tuple[int, float, float] | None:
        entry = self.model.get(key)
        if entry is None or entry[1] <= self.now or entry[2] <= self.now:
            return None
        return entry

    @rule(
        key=st.sampled_from([KEY, OTHER]),
        seq=st.integers(0, 5),
        lifetime=st.sampled_from([5.0, 30.0, 1000.0]),
    )
    def put(self, key: bytes, seq: int, lifetime: float) -> None:
        value = seq_record(seq, self.now + lifetime)
        outcome = self.store.put(key, value, self.now)
        held = self._live(key)
        if held is None or seq > held[0]:
            assert outcome is StoreOutcome.STORED
            self.model[key] = (seq, self.now + lifetime, self.now + self.TTL)
        elif seq == held[0] and held[1] == self.now + lifetime:
            assert outcome is StoreOutcome.REFRESHED
            self.model[key] = (seq, held[1], self.now + self.TTL)
        elif seq < held[0]:
            assert outcome is StoreOutcome.OUTDATED

    @rule(dt=st.floats(0, 40))
    def advance(self, dt: float) -> None:
        self.now += dt
        for key, value in self.store.due(self.now):
            held = self._live(key)
            assert held is not None and parse(value) == (held[0], held[1])

    @invariant()
    def reads_match_model(self) -> None:
        if not hasattr(self, "store"):
            return
        for key in (KEY, OTHER):
            held = self._live(key)
            got = self.store.get(key, self.now)
            if held is None:
                assert got is None
            else:
                assert got is not None and parse(got) == (held[0], held[1])
        deadline = self.store.next_deadline()
        if len(self.store):
            assert deadline is not None


RecordStoreMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestRecordStore = RecordStoreMachine.TestCase


# ----------------------------------------------------------------------------- rate limiter


def test_token_bucket() -> None:
    limiter = TokenBucketLimiter(rate=10.0, burst=5.0)
    src = ("10.0.0.1", 1)
    assert [limiter.allow(src, 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow(("10.0.0.2", 1), 0.0)  # per source
    assert not limiter.allow(src, 0.05)  # half a token
    assert limiter.allow(src, 0.1)
    assert [limiter.allow(src, 100.0) for _ in range(6)] == [True] * 5 + [False]  # refill capped


def test_token_bucket_bounded_sources() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1.0, max_sources=3)
    for i in range(10):
        assert limiter.allow(("10.0.0.1", i), 0.0)
    assert len(limiter) == 3
    with pytest.raises(LocalProtocolError):
        TokenBucketLimiter(rate=0.0)
