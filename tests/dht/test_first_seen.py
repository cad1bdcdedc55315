"""First-seen times of provider values (issue 15): kept by the store, carried on the wire.

A DHT node remembers when it first stored each provider's value for a key and
keeps that time across the provider's republications (a higher seq), so the
network can witness how old a name claim is; a ``p2pb_get_providers`` request
with the `wire.WITH_SEEN` flag gets the times, one per value, and a request
without it gets the answer older p2pblog nodes expect, byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dht import ProvidersFound, wire
from dht.ids import Contact
from dht.providers import ProviderStore
from dht.records import StoreOutcome
from dht.wire import WireError
from identity.limits import MAX_DHT_VALUE_BYTES
from tests.dht.simnet import add_provider_of, get_providers_of
from tests.dht.test_providers import KEY, MSG_ID, RESPONDER, SENDER, build, provider_values, vector
from tests.dht.test_wire import contacts, ids, msg_ids

times = st.integers(0, wire.MAX_WIRE_UINT)


def seq_store() -> ProviderStore:
    """Values ``b"<provider>:<seq>"``: one provider per prefix, the higher seq wins."""

    def provider(key: bytes, value: bytes, now: float) -> bytes | None:
        del key, now
        return value.split(b":")[0]

    def newest(key: bytes, values: list[bytes]) -> int:
        del key
        return max(range(len(values)), key=lambda i: int(values[i].split(b":")[1]))

    return ProviderStore(validator=provider, selector=newest, ttl=100.0)


def test_a_republication_keeps_the_first_seen_time_and_expiry_forgets_it() -> None:
    store = seq_store()
    assert store.add(KEY, b"alice:1", 10.0, source="10.0.0.1") is StoreOutcome.STORED
    assert store.add(KEY, b"sam:1", 40.0, source="10.0.0.2") is StoreOutcome.STORED
    assert store.add(KEY, b"alice:2", 50.0, source="10.0.0.1") is StoreOutcome.STORED  # republished
    assert store.add(KEY, b"alice:1", 60.0, source="10.0.0.3") is StoreOutcome.OUTDATED  # a replay
    assert store.add(KEY, b"alice:2", 70.0, source="10.0.0.1") is StoreOutcome.REFRESHED
    assert sorted(store.get_with_seen(KEY, 80.0)) == [(b"alice", b"alice:2", 10.0), (b"sam", b"sam:1", 40.0)]
    # sam stops republishing: its value expires 100 s after its last add, and its time with it.
    assert store.get_with_seen(KEY, 141.0) == [(b"alice", b"alice:2", 10.0)]
    assert store.add(KEY, b"sam:2", 150.0) is StoreOutcome.STORED
    assert (b"sam", b"sam:2", 150.0) in store.get_with_seen(KEY, 150.0)


@given(st.builds(wire.GetProviders, msg_ids, ids, ids, st.booleans()))
def test_requests_with_and_without_the_flag_round_trip(request: wire.GetProviders) -> None:
    data = wire.encode_request(request)
    assert wire.decode_datagram(data) == request
    name, args = msgpack.unpackb(data[wire.HEADER_BYTES :])
    assert name == "p2pb_get_providers"
    assert args == ([request.sender_id, request.key, 1] if request.seen else [request.sender_id, request.key])


def test_a_request_without_the_flag_and_its_answer_are_unchanged() -> None:
    assert wire.encode_request(wire.GetProviders(MSG_ID, SENDER, KEY)) == vector("get_providers request")
    contact = Contact(RESPONDER, ("127.0.0.1", 7710))
    old = wire.get_providers_response(MSG_ID, [b"hi"], [contact])
    assert old == vector("get_providers response")
    with_seen = wire.get_providers_response(MSG_ID, [b"hi"], [contact], seen=[1_800_000_000])
    message = wire.decode_datagram(with_seen)
    assert isinstance(message, wire.Response)
    assert wire.parse_get_providers_seen(message.body) == ((b"hi",), (1_800_000_000,), (contact,))
    # An older requester's parser still reads the values and contacts of the new answer.
    assert wire.parse_get_providers_response(message.body) == ((b"hi",), (contact,))


def flagged(flags: object) -> bytes:
    return b"\x00" + MSG_ID + msgpack.packb(["p2pb_get_providers", [SENDER, KEY, flags]], use_bin_type=True)


def test_unknown_flag_bits_are_ignored_and_bad_flags_refused() -> None:
    assert wire.decode_datagram(flagged(3)) == wire.GetProviders(MSG_ID, SENDER, KEY, True)
    assert wire.decode_datagram(flagged(2)) == wire.GetProviders(MSG_ID, SENDER, KEY, False)
    for bad in (-1, True, "1", 1.0, 2**63, None):
        with pytest.raises(WireError):
            wire.decode_datagram(flagged(bad))


@given(msg_ids, st.lists(st.tuples(provider_values, times), max_size=30), st.lists(contacts, max_size=20))
def test_answers_with_times_round_trip_within_one_datagram(
    msg_id: bytes, pairs: list[tuple[bytes, int]], found: list[Contact]
) -> None:
    values, seen = [v for v, _ in pairs], [t for _, t in pairs]
    data = wire.get_providers_response(msg_id, values, found, seen=seen)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    got, got_seen, got_contacts = wire.parse_get_providers_seen(message.body)
    n = len(got)
    assert got == tuple(values[:n]) and got_seen == tuple(seen[:n]) and got_contacts == tuple(found)
    if n < min(len(values), wire.MAX_PROVIDERS_PER_ANSWER):
        nodes = [[c.node_id, *c.addr] for c in found]
        bigger = {"providers": values[: n + 1], "seen": seen[: n + 1], "nodes": nodes}
        assert len(msgpack.packb(bigger, use_bin_type=True)) > wire.MAX_BODY_BYTES


def test_the_largest_answer_with_times_fits_one_datagram() -> None:
    ipv6 = [
        Contact(bytes([i]) * 20, ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535)) for i in range(20)
    ]
    values = [bytes([i]) * MAX_DHT_VALUE_BYTES for i in range(20)]
    data = wire.get_providers_response(MSG_ID, values, ipv6, seen=[wire.MAX_WIRE_UINT] * 20)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    got, seen, _ = wire.parse_get_providers_seen(message.body)
    assert got == tuple(values[:6]) and seen == (wire.MAX_WIRE_UINT,) * 6


@pytest.mark.parametrize(
    "body",
    [
        {"providers": [b"v"], "seen": [], "nodes": []},  # one time per value
        {"providers": [b"v"], "seen": [1, 2], "nodes": []},
        {"providers": [b"v"], "seen": [-1], "nodes": []},
        {"providers": [b"v"], "seen": [2**63], "nodes": []},
        {"providers": [b"v"], "seen": ["1"], "nodes": []},
        {"providers": [b"v"], "seen": [1.5], "nodes": []},
        {"providers": [b"v"], "seen": [True], "nodes": []},
        {"providers": [b"v"], "seen": 1, "nodes": []},
        {"providers": [b"v"], "seen": [1], "nodes": [], "more": 1},
        {"providers": [b"v"], "seen": [1]},
    ],
)
def test_bad_times_raise_wire_error(body: Any) -> None:
    with pytest.raises(WireError):
        wire.parse_get_providers_seen(body)


def test_a_lookup_gathers_one_time_per_answering_node() -> None:
    """Twenty nodes; two providers announce a minute apart; a seeker asking for times
    gets, per value, the times the nodes holding it (at most one each) first stored it."""
    net, nodes = build(20, seed=20, loss=0.0)
    key = hashlib.sha1(b"name").digest()
    start = net.now
    net.run_until_done([(nodes[3], net.command(nodes[3], add_provider_of(key, b"early")))])
    net.run_until(start + 60)
    net.run_until_done([(nodes[4], net.command(nodes[4], add_provider_of(key, b"late")))])
    net.run_until(start + 120)
    seeker = nodes[9]
    found = net.run_until_done(
        [(seeker, net.command(seeker, lambda core, now: core.start_get_providers(key, now, seen=True)))]
    )[0]
    assert isinstance(found, ProvidersFound) and set(found.values) == {b"early", b"late"}
    by_value = dict(zip(found.values, found.seen, strict=True))
    assert len(by_value[b"early"]) >= 3 and len(by_value[b"late"]) >= 3
    assert len(by_value[b"early"]) <= found.queried + 1  # one per node asked, and ours
    # Whole seconds on the wire: a time is the second it fell in.
    assert all(int(start) <= t < start + 60 for t in by_value[b"early"])
    assert all(int(start) + 60 <= t < start + 120 for t in by_value[b"late"])
    # Without the flag: no times, and the same values.
    plain = net.run_until_done([(seeker, net.command(seeker, get_providers_of(key)))])[0]
    assert isinstance(plain, ProvidersFound) and plain.seen == () and set(plain.values) == set(found.values)
