"""Provider records in the DHT: the two p2pblog RPCs, the provider store, the core, a network.

libp2p kad-dht's ``ADD_PROVIDER`` / ``GET_PROVIDERS`` over rpcudp framing:
golden bytes (the examples in docs/protocol.md), round trips, the 8 KiB answer
bound and fuzzing of the codec; the `ProviderStore` against a dict model; the
core serving and issuing the RPCs (and coping with peers that stay silent to
them, as ``kademlia`` nodes do); and 60 cores on a lossy network.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from random import Random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dht import (
    DatagramDropped,
    DhtConfig,
    DhtCore,
    PeerMisbehaved,
    ProvidersAdded,
    ProvidersFound,
    ProviderStored,
    wire,
)
from dht.events import Event
from dht.ids import Contact, node_id_from_public_key
from dht.lookup import LookupState, ProvidersLookup
from dht.providers import ProviderStore, distinct_values
from dht.records import StoreOutcome
from dht.wire import WireError
from identity import Identity
from identity.errors import LocalProtocolError
from identity.limits import MAX_DHT_VALUE_BYTES
from tests.dht.simnet import SimNetwork, SimNode, add_provider_of, bootstrap_via, get_providers_of
from tests.dht.test_hostile_net import answer_verification
from tests.dht.test_wire import contacts, decode_fully, ids, msg_ids, msgpack_objects

MSG_ID = bytes.fromhex("fb3d10523e9f376e6848d167f52acdc994a7cd04")
SENDER = bytes.fromhex("0702c1cc60ff9e1331c47331a36ddd5d994ea38a")
RESPONDER = bytes.fromhex("893a227aaca1e12a5fa1c0201c0e38b8f3b1536b")
KEY = bytes.fromhex("be6e2b6c3d6f0c0bb5e5dc2b4e9d3f7f10fd5a4e")
OTHER = hashlib.sha1(b"other").digest()
PEER = ("10.1.1.1", 5000)

# The byte examples of docs/protocol.md (type byte, message id, msgpack body).
VECTORS = {
    "add_provider request": "00 fb3d10523e9f376e6848d167f52acdc994a7cd04 92b1703270625f6164645f70726f7669"
    "64657293c4140702c1cc60ff9e1331c47331a36ddd5d994ea38ac414be6e2b6c3d6f0c0bb5e5dc2b4e9d3f7f10fd5a4ec4026869",
    "add_provider response": "01 fb3d10523e9f376e6848d167f52acdc994a7cd04 c3",
    "get_providers request": "00 fb3d10523e9f376e6848d167f52acdc994a7cd04 92b2703270625f6765745f70726f7669"
    "6465727392c4140702c1cc60ff9e1331c47331a36ddd5d994ea38ac414be6e2b6c3d6f0c0bb5e5dc2b4e9d3f7f10fd5a4e",
    "get_providers response": "01 fb3d10523e9f376e6848d167f52acdc994a7cd04 82a970726f76696465727391c40268"
    "69a56e6f6465739193c414893a227aaca1e12a5fa1c0201c0e38b8f3b1536ba93132372e302e302e31cd1e1e",
    "get_providers response, none held": "01 fb3d10523e9f376e6848d167f52acdc994a7cd04 "
    "82a970726f76696465727390a56e6f64657390",
}


def vector(label: str) -> bytes:
    return bytes.fromhex(VECTORS[label].replace(" ", ""))


# ============================================================================= wire


def test_vectors() -> None:
    contact = Contact(RESPONDER, ("127.0.0.1", 7710))
    assert wire.encode_request(wire.AddProvider(MSG_ID, SENDER, KEY, b"hi")) == vector("add_provider request")
    assert wire.add_provider_response(MSG_ID, True) == vector("add_provider response")
    assert wire.encode_request(wire.GetProviders(MSG_ID, SENDER, KEY)) == vector("get_providers request")
    assert wire.get_providers_response(MSG_ID, [b"hi"], [contact]) == vector("get_providers response")
    assert wire.get_providers_response(MSG_ID, [], []) == vector("get_providers response, none held")
    assert wire.decode_datagram(vector("add_provider request")) == wire.AddProvider(
        MSG_ID, SENDER, KEY, b"hi"
    )
    assert wire.decode_datagram(vector("get_providers request")) == wire.GetProviders(MSG_ID, SENDER, KEY)
    body = wire.decode_datagram(vector("get_providers response"))
    assert isinstance(body, wire.Response)
    assert wire.parse_get_providers_response(body.body) == ((b"hi",), (contact,))
    # The request names as rpcudp sees them: [name, [sender_id, key, ...]].
    name, args = msgpack.unpackb(vector("add_provider request")[21:])
    assert name == "p2pb_add_provider" and args == [SENDER, KEY, b"hi"]


provider_values = st.binary(max_size=MAX_DHT_VALUE_BYTES)


@given(
    st.one_of(
        st.builds(wire.AddProvider, msg_ids, ids, ids, provider_values),
        st.builds(wire.GetProviders, msg_ids, ids, ids),
    )
)
def test_request_round_trip(request: wire.Request) -> None:
    data = wire.encode_request(request)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    assert wire.decode_datagram(data) == request


@given(msg_ids, st.lists(provider_values, max_size=30), st.lists(contacts, max_size=20), st.booleans())
def test_response_round_trip_within_the_body_limit(
    msg_id: bytes, values: list[bytes], found: list[Contact], stored: bool
) -> None:
    data = wire.get_providers_response(msg_id, values, found)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response) and message.msg_id == msg_id
    got, got_contacts = wire.parse_get_providers_response(message.body)
    assert got_contacts == tuple(found)
    # A prefix of the first 20 values, cut only where the next one would not fit.
    n = len(got)
    assert got == tuple(values[:n]) and n <= wire.MAX_PROVIDERS_PER_ANSWER
    if n < min(len(values), wire.MAX_PROVIDERS_PER_ANSWER):
        bigger = {"providers": values[: n + 1], "nodes": [[c.node_id, *c.addr] for c in found]}
        assert len(msgpack.packb(bigger, use_bin_type=True)) > wire.MAX_BODY_BYTES
    reply = wire.decode_datagram(wire.add_provider_response(msg_id, stored))
    assert isinstance(reply, wire.Response) and wire.parse_add_provider_response(reply.body) is stored


def test_largest_answer_fits_one_datagram() -> None:
    ipv6 = [
        Contact(bytes([i]) * 20, ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535)) for i in range(20)
    ]
    values = [bytes([i]) * MAX_DHT_VALUE_BYTES for i in range(20)]
    data = wire.get_providers_response(MSG_ID, values, ipv6)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    got, got_contacts = wire.parse_get_providers_response(message.body)
    # Six 1 KiB values fit next to 20 contacts with the longest IPv6 text.
    assert got == tuple(values[:6]) and got_contacts == tuple(ipv6)


@pytest.mark.parametrize(
    "args",
    [
        [SENDER, KEY, "a string"],  # provider values are bytes
        [SENDER, KEY, 7],
        [SENDER, KEY, b"v" * (MAX_DHT_VALUE_BYTES + 1)],
        [SENDER, KEY],
        [SENDER, KEY[:19], b"v"],
        [SENDER[:19], KEY, b"v"],
    ],
)
def test_bad_add_provider_requests_raise_wire_error(args: list[Any]) -> None:
    with pytest.raises(WireError):
        wire.decode_datagram(b"\x00" + MSG_ID + msgpack.packb(["p2pb_add_provider", args], use_bin_type=True))


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"providers": []},
        {"nodes": []},
        {"providers": [], "nodes": [], "more": 1},
        {"providers": "x", "nodes": []},
        {"providers": [b"v"], "nodes": "x"},
        {"providers": ["text"], "nodes": []},
        {"providers": [b"v" * (MAX_DHT_VALUE_BYTES + 1)], "nodes": []},
        {"providers": [b"v"] * (wire.MAX_PROVIDERS_PER_ANSWER + 1), "nodes": []},
        {"providers": [], "nodes": [[SENDER, "not an ip", 1]]},
        {"value": b"v"},
    ],
)
def test_bad_get_providers_answers_raise_wire_error(body: Any) -> None:
    with pytest.raises(WireError):
        wire.parse_get_providers_response(body)


PROVIDER_PARSERS = (wire.parse_add_provider_response, wire.parse_get_providers_response)


def decode_all(data: bytes) -> None:
    decode_fully(data)
    try:
        message = wire.decode_datagram(data)
    except WireError:
        return
    if isinstance(message, wire.Response):
        for parse in PROVIDER_PARSERS:
            with contextlib.suppress(WireError):
                parse(message.body)


def test_fuzz_truncations_and_byte_flips() -> None:
    for label in VECTORS:
        data = vector(label)
        for cut in range(len(data) + 1):
            decode_all(data[:cut])
        for i in range(len(data)):
            for flip in (0x01, 0x80, 0xFF):
                mutated = bytearray(data)
                mutated[i] ^= flip
                decode_all(bytes(mutated))


@settings(max_examples=300)
@given(
    st.sampled_from(["p2pb_add_provider", "p2pb_get_providers"]),
    st.lists(msgpack_objects, max_size=4),
    msgpack_objects,
    st.dictionaries(st.sampled_from(["providers", "nodes", "x"]), msgpack_objects, max_size=3),
)
def test_fuzz_wrongly_typed_structures(name: str, args: list[Any], body: Any, answer: Any) -> None:
    decode_all(b"\x00" + bytes(20) + msgpack.packb([name, args], use_bin_type=True))
    decode_all(b"\x01" + bytes(20) + msgpack.packb(body, use_bin_type=True))
    decode_all(b"\x01" + bytes(20) + msgpack.packb(answer, use_bin_type=True))


# ============================================================================= ProviderStore


def toy(provider: str, seq: int, expires: float = 1e12) -> bytes:
    """A toy signed-advertisement stand-in: b"prov:<provider>:<seq>:<expiry>"."""
    return f"prov:{provider}:{seq}:{expires}".encode()


def parse_toy(value: bytes) -> tuple[str, int, float] | None:
    parts = value.split(b":")
    if len(parts) != 4 or parts[0] != b"prov":
        return None
    return parts[1].decode(), int(parts[2]), float(parts[3])


def toy_validator(key: bytes, value: bytes, now: float) -> bytes | None:
    parsed = parse_toy(value)
    return parsed[0].encode() if parsed is not None and parsed[2] > now else None


def toy_selector(key: bytes, values: Sequence[wire.Value]) -> int:
    seqs = [parse_toy(v) if isinstance(v, bytes) else None for v in values]
    return max(range(len(values)), key=lambda i: (seqs[i] or ("", -1, 0.0))[1])


def toy_store(**kwargs: Any) -> ProviderStore:
    return ProviderStore(validator=toy_validator, selector=toy_selector, **kwargs)


def test_default_store_holds_a_set_of_values() -> None:
    store = ProviderStore()
    assert store.add(KEY, b"a", 0.0) is StoreOutcome.STORED
    assert store.add(KEY, b"b", 1.0) is StoreOutcome.STORED
    assert store.add(KEY, b"a", 2.0) is StoreOutcome.REFRESHED
    assert store.get(KEY, 2.0) == [b"a", b"b"]  # most recently refreshed first
    assert store.add(KEY, b"x" * (MAX_DHT_VALUE_BYTES + 1), 2.0) is StoreOutcome.INVALID
    assert store.add(KEY, "text", 2.0) is StoreOutcome.INVALID  # type: ignore[arg-type]
    assert len(store) == 2 and KEY in store and list(store) == [KEY]
    assert distinct_values(KEY, b"a", 0.0) == b"a"


def test_one_value_per_provider_highest_seq_wins() -> None:
    store = toy_store()
    assert store.add(KEY, b"garbage", 0.0) is StoreOutcome.INVALID
    assert store.add(KEY, toy("p", 2), 0.0) is StoreOutcome.STORED
    assert store.add(KEY, toy("p", 1), 1.0) is StoreOutcome.OUTDATED  # a replay cannot win
    assert store.add(KEY, toy("p", 3), 2.0) is StoreOutcome.STORED
    assert store.add(KEY, toy("q", 1), 3.0) is StoreOutcome.STORED
    assert store.get(KEY, 3.0) == [toy("q", 1), toy("p", 3)]
    assert store.get_with_ids(KEY, 3.0) == [(b"q", toy("q", 1)), (b"p", toy("p", 3))]
    # The value's own expiry (the validator's business) is enforced on read.
    store.add(OTHER, toy("p", 1, expires=10.0), 3.0)
    assert store.get(OTHER, 9.0) == [toy("p", 1, expires=10.0)]
    assert store.get(OTHER, 10.0) == [] and OTHER not in store
    # A held value that expired does not block an older-seq one.
    store.add(OTHER, toy("p", 9, expires=20.0), 11.0)
    assert store.add(OTHER, toy("p", 1), 21.0) is StoreOutcome.STORED


def test_a_full_key_keeps_the_most_recently_refreshed() -> None:
    store = toy_store(max_per_key=3)
    store.add(KEY, toy("mine", 1), 0.0, published=True)
    for t, name in enumerate("abc", start=1):
        store.add(KEY, toy(name, 1), float(t))
    # "a" went in before "b"/"c" but "mine" is our own: "a" was evicted by "c".
    assert {v for v in store.get(KEY, 4.0)} == {toy("mine", 1), toy("b", 1), toy("c", 1)}
    assert store.add(KEY, toy("b", 1), 5.0) is StoreOutcome.REFRESHED  # b is now the freshest
    assert store.add(KEY, toy("d", 1), 6.0) is StoreOutcome.STORED  # evicts c
    assert store.get(KEY, 6.0) == [toy("d", 1), toy("b", 1), toy("mine", 1)]
    assert len(store) == 3
    # Only our own values: a newcomer is refused.
    own = toy_store(max_per_key=1)
    own.add(KEY, toy("mine", 1), 0.0, published=True)
    assert own.add(KEY, toy("x", 1), 1.0) is StoreOutcome.FULL


def toy_rank(key: bytes, value: bytes) -> int:
    """Rank a toy value by its seq (p2pblog ranks name claims by proof-of-work bits)."""
    parsed = parse_toy(value)
    return parsed[1] if parsed is not None else -1


def test_a_ranked_full_key_evicts_the_lowest_rank_first() -> None:
    store = toy_store(max_per_key=3, rank=toy_rank)
    for t, (name, rank) in enumerate([("a", 5), ("b", 1), ("c", 3)]):
        assert store.add(KEY, toy(name, rank), float(t)) is StoreOutcome.STORED
    # "a" is the oldest, but "b" has the lowest rank.
    assert store.add(KEY, toy("d", 2), 3.0) is StoreOutcome.STORED
    assert {v for v in store.get(KEY, 3.0)} == {toy("a", 5), toy("c", 3), toy("d", 2)}
    # A newcomer below every held rank is refused: a cheap flood cannot push out better values.
    for t, name in enumerate("vwxyz", start=4):
        assert store.add(KEY, toy(name, 1), float(t)) is StoreOutcome.FULL
    assert {v for v in store.get(KEY, 9.0)} == {toy("a", 5), toy("c", 3), toy("d", 2)}
    # Equal to the lowest rank: among the lowest, the one refreshed longest ago goes.
    assert store.add(KEY, toy("e", 2), 10.0) is StoreOutcome.STORED  # evicts d
    assert store.add(KEY, toy("f", 2), 11.0) is StoreOutcome.STORED  # evicts e
    assert store.get(KEY, 11.0) == [toy("f", 2), toy("c", 3), toy("a", 5)]
    # A better version of a held provider is not an eviction, whatever its rank.
    assert store.add(KEY, toy("a", 6), 12.0) is StoreOutcome.STORED
    assert len(store) == 3


def test_a_ranked_key_keeps_our_own_values() -> None:
    store = toy_store(max_per_key=2, rank=toy_rank)
    store.add(KEY, toy("mine", 0), 0.0, published=True)
    store.add(KEY, toy("a", 5), 1.0)
    # Our own value is never evicted, although it ranks lowest; a newcomer is
    # compared with the evictable values only.
    assert store.add(KEY, toy("b", 4), 2.0) is StoreOutcome.FULL
    assert store.add(KEY, toy("c", 5), 3.0) is StoreOutcome.STORED  # evicts a (equal rank, older)
    assert {v for v in store.get(KEY, 3.0)} == {toy("mine", 0), toy("c", 5)}
    # Our own new value is never refused for its rank: it evicts the lowest.
    assert store.add(KEY, toy("mine2", 0), 4.0, published=True) is StoreOutcome.STORED
    assert {v for v in store.get(KEY, 4.0)} == {toy("mine", 0), toy("mine2", 0)}
    assert store.add(KEY, toy("d", 9), 5.0) is StoreOutcome.FULL  # nothing evictable


def test_equal_ranks_behave_as_no_rank() -> None:
    rng = Random(7)
    plain, flat = toy_store(max_per_key=3), toy_store(max_per_key=3, rank=lambda key, value: 0)
    for step in range(300):
        key = rng.choice([KEY, OTHER])
        value = toy(rng.choice("abcdef"), rng.randrange(4), 1e12 if rng.random() < 0.9 else step + 5.0)
        published = rng.random() < 0.1
        now = float(step)
        outcome = plain.add(key, value, now, published=published)
        assert flat.add(key, value, now, published=published) is outcome
        assert plain.get(key, now) == flat.get(key, now)


def test_core_passes_the_rank_to_its_provider_store() -> None:
    config = DhtConfig(max_providers_per_key=2)
    core = make_core(
        config=config, selector=toy_selector, provider_validator=toy_validator, provider_rank=toy_rank
    )
    assert core.providers.rank is toy_rank and make_core().providers.rank is None
    verified(core, Contact(SENDER, PEER), 0.5)
    answers = []
    for name, rank in [("a", 3), ("b", 2), ("c", 1), ("d", 2)]:
        add = wire.AddProvider(MSG_ID, SENDER, KEY, toy(name, rank))
        core.receive_datagram(wire.encode_request(add), PEER, 1.0)
        answers.append(wire.parse_add_provider_response(answer_body(core)))
    assert answers == [True, True, False, True]  # c is refused; d evicts b
    assert set(core.providers.get(KEY, 1.0)) == {toy("a", 3), toy("d", 2)}
    assert core.stats["providers.full"] == 1


def test_total_capacity() -> None:
    store = toy_store(max_values=2)
    store.add(KEY, toy("a", 1), 0.0)
    store.add(OTHER, toy("a", 1), 0.0)
    assert store.add(KEY, toy("b", 1), 0.0) is StoreOutcome.FULL
    assert store.add(KEY, toy("a", 2), 0.0) is StoreOutcome.STORED  # a new version is not a new value
    store.remove(KEY, b"a")
    assert len(store) == 1 and KEY not in store
    assert store.add(KEY, toy("b", 1), 0.0) is StoreOutcome.STORED


def test_expiry_and_republish_timers() -> None:
    store = toy_store(ttl=100.0, republish_interval=30.0)
    store.add(KEY, toy("held", 1), 0.0)
    store.add(KEY, toy("mine", 1), 0.0, published=True)
    assert store.is_published(KEY, b"mine") and not store.is_published(KEY, b"held")
    assert store.next_deadline() == 30.0
    assert store.due(30.0) == [(KEY, toy("mine", 1))]  # re-announce our own
    assert store.due(59.0) == []
    assert store.due(60.0) == [(KEY, toy("mine", 1))]
    # Held providers are not replicated by their holders; they expire ttl after
    # the last ADD_PROVIDER.
    store.add(KEY, toy("held", 1), 50.0)
    assert store.due(149.0) == [(KEY, toy("mine", 1))]  # a late call does each due thing once
    assert store.get(KEY, 149.0) == [toy("held", 1), toy("mine", 1)]
    assert store.next_deadline() == 150.0
    assert store.due(150.0) == []
    assert store.get(KEY, 150.0) == [toy("mine", 1)] and len(store) == 1
    assert store.next_deadline() == 179.0
    # Our own value never expires here, only when it stops validating.
    assert store.get(KEY, 10_000.0) == [toy("mine", 1)]


class ProviderStoreMachine(RuleBasedStateMachine):
    """The store against a dict model: one value per provider, highest seq, bounded, ttl."""

    TTL = 50.0
    REPUBLISH = 20.0
    PER_KEY = 3
    #: Rank of a value by its seq (None: the store's default, no rank).
    RANK: Any = None

    def rank_of(self, seq: int) -> int:
        return 0 if self.RANK is None else int(self.RANK(seq))

    @initialize()
    def setup(self) -> None:
        rank = None if self.RANK is None else (lambda key, value: self.rank_of(parse_toy(value)[1]))
        self.store = toy_store(
            ttl=self.TTL, republish_interval=self.REPUBLISH, max_per_key=self.PER_KEY, rank=rank
        )
        self.now = 0.0
        self.version = 0
        # key -> provider -> [seq, record expiry, store expiry, refreshed version, published, renew_at]
        self.model: dict[bytes, dict[str, list[Any]]] = {KEY: {}, OTHER: {}}

    def _alive(self, entry: list[Any]) -> bool:
        return bool(entry[1] > self.now and entry[2] > self.now)

    def _purge(self, key: bytes) -> None:
        self.model[key] = {p: e for p, e in self.model[key].items() if self._alive(e)}

    def _set(self, key: bytes, provider: str, seq: int, expires: float, published: bool) -> None:
        self.version += 1
        store_expiry = float("inf") if published else self.now + self.TTL
        renew = self.now + self.REPUBLISH if published else float("inf")
        self.model[key][provider] = [seq, expires, store_expiry, self.version, published, renew]

    @rule(
        key=st.sampled_from([KEY, OTHER]),
        provider=st.sampled_from("abcde"),
        seq=st.integers(0, 4),
        lifetime=st.sampled_from([5.0, 30.0, 1000.0]),
        published=st.booleans(),
    )
    def add(self, key: bytes, provider: str, seq: int, lifetime: float, published: bool) -> None:
        value = toy(provider, seq, self.now + lifetime)
        outcome = self.store.add(key, value, self.now, published=published)
        self._purge(key)
        held = self.model[key]
        old = held.get(provider)
        if old is not None:
            if old[0] == seq and old[1] == self.now + lifetime:
                assert outcome is StoreOutcome.REFRESHED
            elif seq <= old[0]:
                assert outcome is StoreOutcome.OUTDATED
                return
            else:
                assert outcome is StoreOutcome.STORED
            self._set(key, provider, seq, self.now + lifetime, published or bool(old[4]))
            return
        if len(held) >= self.PER_KEY:
            evictable = [(self.rank_of(e[0]), e[3], p) for p, e in held.items() if not e[4]]
            if not evictable or (not published and self.rank_of(seq) < min(evictable)[0]):
                assert outcome is StoreOutcome.FULL
                return
            del held[min(evictable)[2]]
        assert outcome is StoreOutcome.STORED
        self._set(key, provider, seq, self.now + lifetime, published)

    @rule(dt=st.floats(0, 40))
    def advance(self, dt: float) -> None:
        self.now += dt
        expected = []
        for key in (KEY, OTHER):
            for provider, entry in list(self.model[key].items()):
                if entry[4] and entry[5] <= self.now:
                    if self._alive(entry):
                        entry[5] = self.now + self.REPUBLISH
                        expected.append((key, toy(provider, entry[0], entry[1])))
                    else:
                        del self.model[key][provider]
        assert sorted(self.store.due(self.now)) == sorted(expected)

    @invariant()
    def reads_match_model(self) -> None:
        if not hasattr(self, "store"):
            return
        for key in (KEY, OTHER):
            self._purge(key)
            ordered = sorted(self.model[key].items(), key=lambda item: item[1][3], reverse=True)
            assert self.store.get(key, self.now) == [toy(p, e[0], e[1]) for p, e in ordered]
            for provider, entry in self.model[key].items():
                assert self.store.is_published(key, provider.encode()) == entry[4]


ProviderStoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestProviderStore = ProviderStoreMachine.TestCase


class RankedProviderStoreMachine(ProviderStoreMachine):
    """The same model with a rank (seq // 2, so ranks tie): lowest rank evicted, lower newcomers refused."""

    RANK = staticmethod(lambda seq: seq // 2)


RankedProviderStoreMachine.TestCase.settings = ProviderStoreMachine.TestCase.settings
TestRankedProviderStore = RankedProviderStoreMachine.TestCase


# ============================================================================= lookup


def test_providers_lookup_stops_at_want_distinct_providers() -> None:
    peers = [Contact(bytes([i]) * 20, ("10.0.0.1", 4000 + i)) for i in range(1, 6)]
    lookup = ProvidersLookup(KEY, peers, want=3, k=5, alpha=2)
    first = lookup.next(0.0)
    assert len(first) == 2
    lookup.add_providers([(b"p1", b"v1")])
    assert lookup.on_providers(first[0].node_id, [(b"p1", b"v1b"), (b"p2", b"v2")], [], 0.1)
    assert lookup.state is not LookupState.FINISHED
    assert lookup.providers == {b"p1": b"v1b", b"p2": b"v2"}
    assert lookup.on_providers(first[1].node_id, [(b"p3", b"v3")], [], 0.2)
    assert lookup.finished
    with pytest.raises(LocalProtocolError):
        ProvidersLookup(KEY, peers, want=0)


# ============================================================================= core


def make_core(node_id: bytes = RESPONDER, **kwargs: Any) -> DhtCore:
    return DhtCore(node_id, Random(0), 0.0, **kwargs)


def drain(core: DhtCore) -> list[Event]:
    events: list[Event] = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def verified(core: DhtCore, contact: Contact, now: float) -> DhtCore:
    """core, after contact sent it a PING and answered the ping that verifies it (a
    stranger's STORE or add-provider waits for that); its outputs are drained."""
    core.receive_datagram(wire.encode_request(wire.Ping(b"v" * 20, contact.node_id)), contact.addr, now)
    answer_verification(core, contact, now)
    drain(core)
    return core


def answer_body(core: DhtCore) -> Any:
    ((data, _),) = core.datagrams_to_send()
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    return message.body


def test_core_serves_add_provider_and_get_providers() -> None:
    core = make_core(
        validator=lambda k, v, now: True, selector=toy_selector, provider_validator=toy_validator
    )
    contact = Contact(hashlib.sha1(b"c").digest(), ("10.0.0.9", 4000))
    core.table.update(contact, 0.0)
    verified(core, Contact(SENDER, PEER), 0.5)
    add = wire.AddProvider(MSG_ID, SENDER, KEY, toy("a", 1))
    core.receive_datagram(wire.encode_request(add), PEER, 1.0)
    assert wire.parse_add_provider_response(answer_body(core)) is True
    assert drain(core) == [ProviderStored(KEY, toy("a", 1), Contact(SENDER, PEER))]
    # Refused: garbage, and an older version of the same provider.
    for value in (b"garbage", toy("a", 0)):
        core.receive_datagram(wire.encode_request(wire.AddProvider(MSG_ID, SENDER, KEY, value)), PEER, 2.0)
        assert wire.parse_add_provider_response(answer_body(core)) is False
    assert core.stats["providers.invalid"] == 1 and core.stats["providers.outdated"] == 1
    assert [type(e) for e in drain(core)] == [PeerMisbehaved]
    core.receive_datagram(wire.encode_request(wire.GetProviders(MSG_ID, SENDER, KEY)), PEER, 3.0)
    # The requester is left out of the contacts, as in find_node.
    assert wire.parse_get_providers_response(answer_body(core)) == ((toy("a", 1),), (contact,))
    core.receive_datagram(wire.encode_request(wire.GetProviders(MSG_ID, SENDER, OTHER)), PEER, 4.0)
    assert wire.parse_get_providers_response(answer_body(core)) == ((), (contact,))


def test_silence_to_p2pblog_rpcs_fails_the_step_but_not_the_contact() -> None:
    """A kademlia node ignores p2pb_* requests: the lookup moves on, the table keeps it."""
    core = make_core(SENDER)
    kademlia_peer = Contact(hashlib.sha1(b"kademlia").digest(), ("10.0.0.7", 8468))
    core.table.update(kademlia_peer, 0.0)
    qid = core.start_get_providers(KEY, 0.0)
    ((data, addr),) = core.datagrams_to_send()
    assert isinstance(wire.decode_datagram(data), wire.GetProviders) and addr == kademlia_peer.addr
    t = 0.0
    while (deadline := core.get_timer()) is not None and deadline < 60.0:
        t = deadline
        core.handle_timer(t)
        core.datagrams_to_send()
    assert drain(core) == [ProvidersFound(qid, KEY, (), 1)]
    assert t <= 5.0
    assert core.table.get(kademlia_peer.node_id) == kademlia_peer
    assert core.table.failures(kademlia_peer.node_id) == 0
    assert core.stats["rpc.unanswered_p2pblog_rpc"] == 1
    # An announcement to it fails the same way and keeps the contact too.
    qid = core.start_add_provider(KEY, b"mine", t)
    core.datagrams_to_send()
    find = None
    while (deadline := core.get_timer()) is not None and deadline < 60.0:
        core.handle_timer(deadline)
        for data, _ in core.datagrams_to_send():
            message = wire.decode_datagram(data)
            if isinstance(message, wire.FindNode) and find is None:
                # The node lookup before the announcement gets kademlia's answer.
                find = message
                core.receive_datagram(
                    wire.find_node_response(message.msg_id, []), kademlia_peer.addr, deadline
                )
    events = drain(core)
    assert events == [ProvidersAdded(qid, KEY, (), (), (kademlia_peer,))]
    assert core.table.failures(kademlia_peer.node_id) == 0


def test_local_providers_count_and_misuse_raises() -> None:
    core = make_core()
    core.start_add_provider(KEY, b"one", 0.0)
    core.start_add_provider(KEY, b"two", 0.0)
    drain(core)
    qid = core.start_get_providers(KEY, 0.0, want=2)
    assert drain(core) == [ProvidersFound(qid, KEY, (b"two", b"one"), 0)]
    with pytest.raises(LocalProtocolError):
        core.start_add_provider(KEY, b"x" * (MAX_DHT_VALUE_BYTES + 1), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_add_provider(KEY, "text", 0.0)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        core.start_add_provider(KEY[:19], b"v", 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_get_providers(KEY, 0.0, want=0)
    strict = make_core(selector=toy_selector, provider_validator=toy_validator)
    strict.start_add_provider(KEY, toy("me", 5), 0.0)
    with pytest.raises(LocalProtocolError):
        strict.start_add_provider(KEY, toy("me", 4), 0.0)
    with pytest.raises(LocalProtocolError):
        strict.start_add_provider(KEY, b"not a toy", 0.0)


def test_an_invalid_provider_in_an_answer_is_dropped_and_the_rest_used() -> None:
    core = make_core(SENDER, selector=toy_selector, provider_validator=toy_validator)
    peer = Contact(hashlib.sha1(b"peer").digest(), ("10.0.0.8", 4000))
    core.table.update(peer, 0.0)
    qid = core.start_get_providers(KEY, 0.0)
    ((data, _),) = core.datagrams_to_send()
    request = wire.decode_datagram(data)
    assert isinstance(request, wire.GetProviders)
    # Garbage, an expired value, and older versions of two providers.
    values = [toy("a", 1), b"forged", toy("b", 1, expires=0.5), toy("c", 2), toy("c", 1), toy("a", 0)]
    core.receive_datagram(wire.get_providers_response(request.msg_id, values, []), peer.addr, 1.0)
    events = drain(core)
    assert events[-1] == ProvidersFound(qid, KEY, (toy("a", 1), toy("c", 2)), 1)
    assert core.stats["misbehaved.invalid returned provider"] == 2
    assert core.table.failures(peer.node_id) == 0


def test_malformed_providers_answer_is_misbehaviour() -> None:
    core = make_core(SENDER)
    peer = Contact(hashlib.sha1(b"peer").digest(), ("10.0.0.8", 4000))
    core.table.update(peer, 0.0)
    qid = core.start_get_providers(KEY, 0.0)
    ((data, _),) = core.datagrams_to_send()
    request = wire.decode_datagram(data)
    core.receive_datagram(wire.encode_response(request.msg_id, {"value": b"x"}), peer.addr, 0.1)
    events = drain(core)
    assert isinstance(events[0], PeerMisbehaved) and events[-1] == ProvidersFound(qid, KEY, (), 1)
    # A malformed answer (unlike silence) counts against the contact.
    assert core.table.failures(peer.node_id) == 1
    assert not any(isinstance(e, DatagramDropped) for e in events)


# ============================================================================= network


def build(
    size: int, seed: int, loss: float, config: DhtConfig | None = None
) -> tuple[SimNetwork, list[SimNode]]:
    net = SimNetwork(seed=seed, loss=loss, config=config)
    rng = Random(seed)
    nodes: list[SimNode] = []
    joins = []
    for _ in range(size):
        node = net.add_node(node_id_from_public_key(Identity(rng.randbytes(32)).public_key))
        if nodes:
            joins.append((node, net.command(node, bootstrap_via(rng.choice(nodes).addr))))
        nodes.append(node)
        net.run_until(net.now + 0.2)
    net.run_until_done(joins)
    return net, nodes


def test_sixty_nodes_five_providers_all_found_with_loss() -> None:
    net, nodes = build(60, seed=60, loss=0.05)
    rng = Random(61)
    providers = rng.sample(nodes, 5)
    key = rng.randbytes(20)
    announced = net.run_until_done(
        [(n, net.command(n, add_provider_of(key, f"provider {i}".encode()))) for i, n in enumerate(providers)]
    )
    for event in announced:
        assert isinstance(event, ProvidersAdded) and len(event.stored_at) >= 15
    net.run_until(net.now + 10)
    seekers = [n for n in rng.sample(nodes, 8) if n not in providers][:5]
    found = net.run_until_done([(s, net.command(s, get_providers_of(key))) for s in seekers])
    expected = {f"provider {i}".encode() for i in range(5)}
    for event in found:
        assert isinstance(event, ProvidersFound) and set(event.values) == expected
    # With want=2 the lookup stops early, asking fewer nodes.
    early = net.run_until_done([(seekers[0], net.command(seekers[0], get_providers_of(key, want=2)))])[0]
    assert isinstance(early, ProvidersFound) and len(early.values) >= 2
    assert early.queried < min(e.queried for e in found if isinstance(e, ProvidersFound))
    assert sum(n.notices["ProviderStored"] for n in nodes) >= 5 * 15


def test_providers_expire_unless_reannounced() -> None:
    cfg = DhtConfig(provider_ttl=300.0, provider_republish_interval=100.0)
    net, nodes = build(12, seed=12, loss=0.0, config=cfg)
    key = hashlib.sha1(b"feed").digest()
    net.run_until_done([(nodes[3], net.command(nodes[3], add_provider_of(key, b"kept")))])
    net.run_until_done([(nodes[4], net.command(nodes[4], add_provider_of(key, b"dropped")))])
    # nodes[4] stops announcing (as a withdrawn provider would): copies lapse after the ttl.
    nodes[4].core.providers.remove(key, b"dropped")
    net.run_until(net.now + 1000)
    assert nodes[3].core.stats["providers.reannounced"] >= 8
    got = net.run_until_done([(nodes[9], net.command(nodes[9], get_providers_of(key)))])[0]
    assert isinstance(got, ProvidersFound) and got.values == (b"kept",)
