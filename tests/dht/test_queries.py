"""The query kinds on their own: requests, answers, phases and results, without a core."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

import pytest

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
from dht.ids import Contact, distance
from dht.lookup import ClosestPeersLookup, PeerState, ProvidersLookup, ValueLookup
from dht.providers import ProviderStore
from dht.queries import (
    AddProviderQuery,
    BootstrapQuery,
    GetProvidersQuery,
    GetQuery,
    LookupQuery,
    Phase,
    ProvidersAnswer,
    PutQuery,
    Query,
    ReannounceQuery,
    RefreshQuery,
    RepublishQuery,
    StoreQuery,
    WalkParams,
)
from dht.records import RecordStore
from dht.wire import Value

LOCAL = bytes(20)
KEY = bytes([0x80]) + bytes(19)
MSG = bytes([1]) * 20


def contacts(n: int, seed: int = 3) -> list[Contact]:
    rng = Random(seed)
    return [Contact(rng.randbytes(20), (f"10.0.0.{i + 1}", 4000)) for i in range(n)]


def params(k: int = 3, alpha: int = 3) -> WalkParams:
    return WalkParams(k=k, alpha=alpha, peer_timeout=5.0, local_id=LOCAL)


def no_bad_strings(key: bytes, value: Value, now: float) -> bool:
    del key, now
    return value != "bad"


def highest(key: bytes, values: Sequence[Value]) -> int:
    del key
    return max(range(len(values)), key=lambda i: str(values[i]))


def phase_of(query: BootstrapQuery | StoreQuery) -> Phase:
    return query.phase  # (a call, so mypy does not keep an earlier narrowing)


def walk_all(query: Query, lookup: ClosestPeersLookup, answer: Value | None = None) -> None:
    """Answer every step with no closer peers (or with ``answer``) until the walk ends."""
    while not lookup.finished:
        step = lookup.next(0.0)
        assert step or lookup.finished
        for contact in step:
            query.on_step_answer(lookup, contact, answer if answer is not None else (), 0.0)


# ----------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("query", "request_type"),
    [
        (LookupQuery(1, KEY), wire.FindNode),
        (RefreshQuery(1, KEY), wire.FindNode),
        (BootstrapQuery(1, KEY, 0), wire.FindNode),
        (PutQuery(1, KEY, b"v"), wire.FindNode),
        (GetQuery(1, KEY, 1, RecordStore(), highest), wire.FindValue),
        (GetProvidersQuery(1, KEY, 5, ProviderStore()), wire.GetProviders),
    ],
    ids=lambda q: type(q).__name__,
)
def test_each_kind_asks_its_own_lookup_step(query: Query, request_type: type) -> None:
    assert query.step_request(MSG, LOCAL) == request_type(MSG, LOCAL, KEY)


def test_store_kinds_send_store_or_add_provider() -> None:
    assert PutQuery(1, KEY, 5).store_request(MSG, LOCAL) == wire.Store(MSG, LOCAL, KEY, 5)
    assert RepublishQuery(1, KEY, "x").store_request(MSG, LOCAL) == wire.Store(MSG, LOCAL, KEY, "x")
    assert AddProviderQuery(1, KEY, b"p").store_request(MSG, LOCAL) == wire.AddProvider(MSG, LOCAL, KEY, b"p")
    assert ReannounceQuery(1, KEY, b"p").store_request(MSG, LOCAL) == wire.AddProvider(MSG, LOCAL, KEY, b"p")


def test_each_kind_walks_with_its_own_lookup_machine() -> None:
    seeds = contacts(2)
    assert type(LookupQuery(1, KEY).new_lookup(list(seeds), params(), 0.0)) is ClosestPeersLookup
    get = GetQuery(1, KEY, 1, RecordStore(), highest)
    assert isinstance(get.new_lookup(list(seeds), params(), 0.0), ValueLookup)
    providers = GetProvidersQuery(1, KEY, 5, ProviderStore())
    assert isinstance(providers.new_lookup(list(seeds), params(), 0.0), ProvidersLookup)


# ----------------------------------------------------------------------------- walks and results


def test_lookup_query_reports_the_walk() -> None:
    query = LookupQuery(4, KEY)
    lookup = query.new_lookup(contacts(3), params(), 0.0)
    (a, b, c) = lookup.next(0.0)
    query.on_step_answer(lookup, a, (), 0.0)
    query.on_step_answer(lookup, b, (), 0.0)
    query.on_step_answer(lookup, c, None, 0.0)  # nonsense to FIND_NODE: a failed step
    assert lookup.next(0.0) == [] and lookup.finished
    closest = tuple(lookup.result())
    event = query.result(lookup, closest)
    assert event == LookupFinished(4, KEY, closest, 3, 1, 1)
    assert set(closest) == {a, b}


def test_get_counts_an_invalid_value_as_a_failed_step() -> None:
    records = RecordStore(validator=no_bad_strings)
    query = GetQuery(2, KEY, 1, records, highest)
    lookup = query.new_lookup(contacts(2), params(), 0.0)
    liar, honest = lookup.next(0.0)
    assert query.on_step_answer(lookup, liar, "bad", 0.0) == 1
    assert lookup.peer_state(liar.node_id) is PeerState.FAILED
    assert query.on_step_answer(lookup, honest, "good", 0.0) == 0
    assert lookup.finished
    event = query.result(lookup)
    assert isinstance(event, ValueFound)
    assert (event.query_id, event.key, event.value, event.answers) == (2, KEY, "good", 1)


def test_get_picks_with_the_selector_and_caches_where_the_value_was_missing_or_worse() -> None:
    query = GetQuery(2, KEY, 2, RecordStore(), highest)
    peers = sorted(contacts(3), key=lambda c: distance(c.node_id, KEY))
    lookup = query.new_lookup(list(peers), params(), 0.0)
    assert isinstance(lookup, ValueLookup)
    asked = {c.node_id: c for c in lookup.next(0.0)}
    query.on_step_answer(lookup, asked[peers[0].node_id], (), 0.0)  # nearest: no value
    query.on_step_answer(lookup, asked[peers[1].node_id], "a-old", 0.0)
    query.on_step_answer(lookup, asked[peers[2].node_id], "b-new", 0.0)
    assert lookup.finished
    event = query.result(lookup)
    assert isinstance(event, ValueFound) and event.value == "b-new" and event.answers == 2
    assert query.cache_targets(lookup, event.value) == [peers[0], peers[1]]


def test_get_counts_a_value_we_hold_and_reports_not_found_otherwise() -> None:
    records = RecordStore()
    records.put(KEY, b"mine", 0.0)
    held = GetQuery(1, KEY, 1, records, highest)
    lookup = held.new_lookup(contacts(2), params(), 0.0)
    assert lookup.finished  # quorum 1 met by our own copy
    assert isinstance(lookup, ValueLookup)
    event = held.result(lookup)
    assert isinstance(event, ValueFound) and event.value == b"mine" and event.hops == 0

    missing = GetQuery(2, bytes(19) + b"\x01", 1, records, highest)
    lookup = missing.new_lookup(contacts(2), params(), 0.0)
    assert isinstance(lookup, ValueLookup)
    walk_all(missing, lookup)
    assert missing.result(lookup) == ValueNotFound(2, missing.target, 2)


def test_get_refuses_a_selector_that_points_outside_the_values() -> None:
    query = GetQuery(1, KEY, 2, RecordStore(), lambda key, values: len(values))
    lookup = query.new_lookup(contacts(2), params(), 0.0)
    assert isinstance(lookup, ValueLookup)
    walk_all(query, lookup, answer="v")
    with pytest.raises(IndexError):
        query.result(lookup)


def test_get_providers_drops_invalid_values_and_keeps_the_preferred_version() -> None:
    def validator(key: bytes, value: bytes, now: float) -> bytes | None:
        del key, now
        return None if value.startswith(b"x") else value[:1]

    store = ProviderStore(validator=validator, selector=highest)
    query = GetProvidersQuery(6, KEY, 3, store)
    lookup = query.new_lookup(contacts(2), params(), 0.0)
    assert isinstance(lookup, ProvidersLookup)
    first, second = lookup.next(0.0)
    answer = ProvidersAnswer((b"a1", b"x1", b"a2", b"b1", b"x2"), ())
    assert query.on_step_answer(lookup, first, answer, 0.0) == 2
    assert lookup.providers == {b"a": b"a2", b"b": b"b1"}
    assert query.on_step_answer(lookup, second, ProvidersAnswer((b"c1",), ()), 0.0) == 0
    assert lookup.finished  # want = 3 distinct providers
    assert query.result(lookup) == ProvidersFound(6, KEY, (b"a2", b"b1", b"c1"), 2)


# ----------------------------------------------------------------------------- phases


def test_bootstrap_counts_seed_pings_then_walks_from_the_seeds_that_answered() -> None:
    seed_a, _, other = contacts(3)
    query = BootstrapQuery(1, LOCAL, 2)
    assert phase_of(query) is Phase.PINGING and query.lookup is None
    assert not query.on_seed_answered(seed_a)
    assert query.on_seed_failed()
    lookup = query.new_lookup([other], params(), 0.0)
    assert phase_of(query) is Phase.LOOKING_UP and query.seeds_answered == 1
    assert {c.node_id for c in lookup.next(0.0)} == {seed_a.node_id, other.node_id}


def test_bootstrap_reports_its_walk_after_the_refreshes() -> None:
    closest = tuple(contacts(2))
    query = BootstrapQuery(9, LOCAL, 0)
    query.refreshing(closest)
    query.refresh_started()
    query.refresh_started()
    assert phase_of(query) is Phase.REFRESHING
    assert not query.refresh_done()
    assert query.refresh_done()
    assert query.result() == BootstrapFinished(9, 0, closest)
    assert BootstrapQuery(3, LOCAL, 0).result(closest) == BootstrapFinished(3, 0, closest)


def test_store_queries_collect_outcomes_and_only_commands_report() -> None:
    a, b, c = contacts(3)
    for query, event_type in (
        (PutQuery(5, KEY, b"v"), PutFinished),
        (AddProviderQuery(5, KEY, b"v"), ProvidersAdded),
        (RepublishQuery(5, KEY, b"v"), None),
        (ReannounceQuery(5, KEY, b"v"), None),
    ):
        assert phase_of(query) is Phase.LOOKING_UP
        query.storing(3)
        assert phase_of(query) is Phase.STORING
        assert not query.on_stored(a, True)
        assert not query.on_stored(b, False)
        assert query.on_store_failed(c)
        event = query.result()
        if event_type is None:
            assert event is None
        else:
            assert event == event_type(5, KEY, (a,), (b,), (c,))
