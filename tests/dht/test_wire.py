"""Wire codec: golden vectors captured from the real rpcudp / kademlia, round trips, fuzz.

The GOLDEN datagrams were produced by the real ``rpcudp`` 5.0.1 and
``kademlia`` 2.2.3 code, not re-typed from reading it: a script built two
``kademlia.protocol.KademliaProtocol`` instances with capturing transports,
called ``protocol.ping(addr, A_ID)`` etc. (rpcudp's ``__getattr__`` closure,
which frames ``b"\\x00" + sha1(os.urandom(32)) + umsgpack.packb([name, args])``)
and fed each request to the other protocol's ``_solve_datagram``, whose
``_accept_request`` framed the ``rpc_*`` return value as
``b"\\x01" + msg_id + umsgpack.packb(response)``.  The message ids are the
random ones rpcudp chose; the responder B held C1 and C2 in its routing table
and ``b"hello"`` under KEY.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dht import wire
from dht.ids import Contact, kademlia_key, node_id_from_public_key
from dht.wire import WireError
from identity.limits import MAX_DATAGRAM_BYTES, MAX_DHT_VALUE_BYTES


def _sha1(label: str) -> bytes:
    return hashlib.sha1(label.encode()).digest()


A_ID = _sha1("node-a")
B_ID = _sha1("node-b")
A_ADDR = ("127.0.0.1", 8468)
KEY = _sha1("key")
TARGET = _sha1("target")
C1 = Contact(_sha1("contact-1"), ("10.0.0.1", 4000))
C2 = Contact(_sha1("contact-2"), ("192.168.1.20", 65535))

# label -> (request hex, response hex), as captured from rpcudp/kademlia.
GOLDEN: dict[str, tuple[str, str]] = {
    "ping": (
        "00fb3d10523e9f376e6848d167f52acdc994a7cd0492a470696e6791c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a",
        "01fb3d10523e9f376e6848d167f52acdc994a7cd04c414893a227aaca1e12a5fa1c0201c0e38b8f3b1536b",
    ),
    "store_bytes": (
        "00c85edaad99cac26a6e8a95f31915acb0737551c692a573746f726593c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a"
        "c414a62f2225bf70bfaccbc7f1ef2a397836717377dec40568656c6c6f",
        "01c85edaad99cac26a6e8a95f31915acb0737551c6c3",
    ),
    "store_str": (
        "009836d27ea95a51df6983e123f73ead97b13bf35592a573746f726593c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a"
        "c414a62f2225bf70bfaccbc7f1ef2a397836717377deaa746578742076616c7565",
        "019836d27ea95a51df6983e123f73ead97b13bf355c3",
    ),
    "store_int": (
        "00fd7c19042e14483de8d9c382f409ec8b75d7c5f792a573746f726593c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a"
        "c414a62f2225bf70bfaccbc7f1ef2a397836717377decd012c",
        "01fd7c19042e14483de8d9c382f409ec8b75d7c5f7c3",
    ),
    "store_float": (
        "00ce9d8390d61ba6933a9da0c0f8563637e3e8806692a573746f726593c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a"
        "c414a62f2225bf70bfaccbc7f1ef2a397836717377decb3ff8000000000000",
        "01ce9d8390d61ba6933a9da0c0f8563637e3e88066c3",
    ),
    "store_bool": (
        "0093800355b749e5c5e676316fc7d58413335c488492a573746f726593c4140702c1cc60ff9e1331c47331a36ddd5d994ea38a"
        "c414a62f2225bf70bfaccbc7f1ef2a397836717377dec3",
        "0193800355b749e5c5e676316fc7d58413335c4884c3",
    ),
    "find_node": (
        "0003a5ea86328708f6e81b0d421459a00948d7ad6992a966696e645f6e6f646592c4140702c1cc60ff9e1331c47331a36ddd5d9"
        "94ea38ac4140e8a3ad980ec179856012b7eecf4327e99cd44cd",
        "0103a5ea86328708f6e81b0d421459a00948d7ad699293c4147199407c36e6ced20385b62e48486fc6635e456cac3139322e31"
        "36382e312e3230cdffff93c414ebf1daed1227d4a313870d39c178d8995aa72f6ea831302e302e302e31cd0fa0",
    ),
    "find_value_hit": (
        "002a51f62a2729f4368dc03cd332f66d745da283ac92aa66696e645f76616c756592c4140702c1cc60ff9e1331c47331a36ddd"
        "5d994ea38ac414a62f2225bf70bfaccbc7f1ef2a397836717377de",
        "012a51f62a2729f4368dc03cd332f66d745da283ac81a576616c7565c40568656c6c6f",
    ),
    "find_value_miss": (
        "00421dbe88d10a760c1ec3c46b55573f7878dd52a392aa66696e645f76616c756592c4140702c1cc60ff9e1331c47331a36ddd"
        "5d994ea38ac4140e8a3ad980ec179856012b7eecf4327e99cd44cd",
        "01421dbe88d10a760c1ec3c46b55573f7878dd52a39293c4147199407c36e6ced20385b62e48486fc6635e456cac3139322e31"
        "36382e312e3230cdffff93c414ebf1daed1227d4a313870d39c178d8995aa72f6ea831302e302e302e31cd0fa0",
    ),
    "stun": (
        "00559444947e534369c77390d3f7dc1a1d609e1cd992a47374756e90",
        "01559444947e534369c77390d3f7dc1a1d609e1cd992a93132372e302e302e31cd2114",
    ),
}

STORE_VALUES: dict[str, wire.Value] = {
    "store_bytes": b"hello",
    "store_str": "text value",
    "store_int": 300,
    "store_float": 1.5,
    "store_bool": True,
}


def golden(label: str) -> tuple[bytes, bytes, bytes]:
    """(request, response, message id) of a golden exchange."""
    req, resp = (bytes.fromhex(h) for h in GOLDEN[label])
    return req, resp, req[1:21]


def expected_request(label: str, msg_id: bytes) -> wire.Request:
    if label == "ping":
        return wire.Ping(msg_id, A_ID)
    if label in STORE_VALUES:
        return wire.Store(msg_id, A_ID, KEY, STORE_VALUES[label])
    if label == "find_node":
        return wire.FindNode(msg_id, A_ID, TARGET)
    if label == "find_value_hit":
        return wire.FindValue(msg_id, A_ID, KEY)
    if label == "find_value_miss":
        return wire.FindValue(msg_id, A_ID, TARGET)
    assert label == "stun"
    return wire.Stun(msg_id)


def expected_response(label: str, msg_id: bytes) -> bytes:
    if label == "ping":
        return wire.ping_response(msg_id, B_ID)
    if label in STORE_VALUES:
        return wire.store_response(msg_id, True)
    if label in ("find_node", "find_value_miss"):
        # rpc_find_node returns find_neighbors: nearest to the target first.
        return (wire.find_node_response if label == "find_node" else wire.find_value_response)(
            msg_id, [C2, C1]
        )
    if label == "find_value_hit":
        return wire.find_value_response(msg_id, b"hello")
    return wire.stun_response(msg_id, A_ADDR)


# ----------------------------------------------------------------------------- golden


def test_ping_vector_spelled_out() -> None:
    """The layout the protocol docs describe, byte by byte."""
    req, resp, msg_id = golden("ping")
    assert req[:1] == b"\x00" and resp[:1] == b"\x01"
    assert resp[1:21] == msg_id
    # [ "ping", [ bin20(A_ID) ] ]: fixarray(2), fixstr(4) "ping", fixarray(1), bin8(20)
    assert req[21:] == b"\x92\xa4ping\x91\xc4\x14" + A_ID
    # bare return value of rpc_ping: bin8(20) the responder's id
    assert resp[21:] == b"\xc4\x14" + B_ID


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_golden_request_encodes_identically(label: str) -> None:
    req, _, msg_id = golden(label)
    assert wire.encode_request(expected_request(label, msg_id)) == req


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_golden_request_decodes(label: str) -> None:
    req, _, msg_id = golden(label)
    assert wire.decode_datagram(req) == expected_request(label, msg_id)


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_golden_response_encodes_identically(label: str) -> None:
    _, resp, msg_id = golden(label)
    assert expected_response(label, msg_id) == resp


def test_golden_responses_parse() -> None:
    def body(label: str) -> Any:
        message = wire.decode_datagram(golden(label)[1])
        assert isinstance(message, wire.Response)
        assert message.msg_id == golden(label)[2]
        return message.body

    assert wire.parse_ping_response(body("ping")) == B_ID
    for label in STORE_VALUES:
        assert wire.parse_store_response(body(label)) is True
    assert wire.parse_find_node_response(body("find_node")) == (C2, C1)
    assert wire.parse_find_value_response(body("find_value_hit")) == b"hello"
    assert wire.parse_find_value_response(body("find_value_miss")) == (C2, C1)
    assert wire.parse_stun_response(body("stun")) == A_ADDR


def test_kademlia_key_is_kademlia_digest() -> None:
    # kademlia.utils.digest: sha1 of the bytes, or of str(x).encode("utf8").
    assert kademlia_key("key") == KEY
    assert kademlia_key(b"key") == KEY


def test_node_id_from_public_key() -> None:
    key = bytes(range(32))
    node_id = node_id_from_public_key(key)
    assert node_id == hashlib.blake2b(key).digest()[:20]
    with pytest.raises(ValueError):
        node_id_from_public_key(b"short")


# ----------------------------------------------------------------------------- round trips

ids = st.binary(min_size=20, max_size=20)
msg_ids = st.binary(min_size=20, max_size=20)
values = st.one_of(
    st.binary(max_size=MAX_DHT_VALUE_BYTES),
    st.text(max_size=200),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
ipv4 = st.ip_addresses(v=4).map(str)
ips = st.one_of(ipv4, st.ip_addresses(v=6).map(str))
contacts = st.builds(Contact, ids, st.tuples(ips, st.integers(1, 65535)))

requests = st.one_of(
    st.builds(wire.Ping, msg_ids, ids),
    st.builds(wire.Store, msg_ids, ids, ids, values),
    st.builds(wire.FindNode, msg_ids, ids, ids),
    st.builds(wire.FindValue, msg_ids, ids, ids),
    st.builds(wire.Stun, msg_ids),
    st.builds(
        wire.UnknownRequest,
        msg_ids,
        st.text(min_size=1, max_size=20).filter(
            lambda n: n not in ("ping", "store", "find_node", "find_value", "stun")
        ),
        st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3).map(tuple),
    ),
)


@given(requests)
def test_request_round_trip(request: wire.Request) -> None:
    data = wire.encode_request(request)
    assert len(data) <= wire.MAX_WIRE_DATAGRAM_BYTES
    assert wire.decode_datagram(data) == request


@given(msg_ids, st.lists(contacts, max_size=20), values, ids)
def test_response_round_trip(msg_id: bytes, found: list[Contact], value: wire.Value, node_id: bytes) -> None:
    def body(data: bytes) -> Any:
        message = wire.decode_datagram(data)
        assert isinstance(message, wire.Response) and message.msg_id == msg_id
        return message.body

    assert wire.parse_ping_response(body(wire.ping_response(msg_id, node_id))) == node_id
    assert wire.parse_store_response(body(wire.store_response(msg_id, False))) is False
    assert wire.parse_find_node_response(body(wire.find_node_response(msg_id, found))) == tuple(found)
    assert wire.parse_find_value_response(body(wire.find_value_response(msg_id, found))) == tuple(found)
    got = wire.parse_find_value_response(body(wire.find_value_response(msg_id, value)))
    assert type(got) is type(value) and got == value


# ----------------------------------------------------------------------------- limits


def _request_with_body(body: bytes) -> bytes:
    return b"\x00" + bytes(20) + body


def test_body_limit_is_rpcudps() -> None:
    # rpcudp refuses to send a body over 8192 bytes; exactly 8192 is fine.
    overhead = 7  # 92 a1 'x' 91 c5 <len16>: [ "x", [ bin16 ] ]
    name_body = msgpack.packb(["x", [b"a" * (MAX_DATAGRAM_BYTES - overhead)]], use_bin_type=True)
    assert len(name_body) == MAX_DATAGRAM_BYTES
    assert isinstance(wire.decode_datagram(_request_with_body(name_body)), wire.UnknownRequest)
    too_big = msgpack.packb(["x", [b"a" * (MAX_DATAGRAM_BYTES - overhead + 1)]], use_bin_type=True)
    with pytest.raises(WireError):
        wire.decode_datagram(_request_with_body(too_big))
    with pytest.raises(ValueError):
        wire.encode_request(wire.UnknownRequest(bytes(20), "x", (b"a" * MAX_DATAGRAM_BYTES,)))


def test_value_limit() -> None:
    ok = wire.encode_request(wire.Store(bytes(20), A_ID, KEY, b"v" * MAX_DHT_VALUE_BYTES))
    assert isinstance(wire.decode_datagram(ok), wire.Store)
    big = wire.encode_request(wire.Store(bytes(20), A_ID, KEY, b"v" * (MAX_DHT_VALUE_BYTES + 1)))
    with pytest.raises(WireError):
        wire.decode_datagram(big)
    with pytest.raises(WireError):
        wire.parse_find_value_response({"value": "é" * MAX_DHT_VALUE_BYTES})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        bytes(21),  # header only: rpcudp's "datagram too small"
        b"\x02" + bytes(20) + b"\xc0",  # unknown type byte
        b"\x00" + bytes(20) + b"\xc1",  # never-used msgpack byte
        b"\x00" + bytes(20) + b"\x92",  # truncated array
        b"\x00" + bytes(20) + b"\xc0\xc0",  # extra data
        b"\x00" + bytes(20) + msgpack.packb("ping"),  # not [name, args]
        b"\x00" + bytes(20) + msgpack.packb(["ping", [b"short"]], use_bin_type=True),
        b"\x00" + bytes(20) + msgpack.packb(["ping", [A_ID, A_ID]], use_bin_type=True),
        b"\x00" + bytes(20) + msgpack.packb(["ping", ["a" * 20]]),  # str, not bin
        b"\x00" + bytes(20) + msgpack.packb(["store", [A_ID, KEY, None]], use_bin_type=True),
        b"\x00" + bytes(20) + msgpack.packb(["store", [A_ID, KEY, [1]]], use_bin_type=True),
        b"\x00" + bytes(20) + msgpack.packb([b"ping", [A_ID]], use_bin_type=True),  # bin name
        b"\x00" + bytes(20) + msgpack.packb(["x" * 65, []]),
        b"\x00" + bytes(20) + b"\xa1\xff",  # invalid UTF-8
        b"\x00" + bytes(20) + b"\x91" * 5000 + b"\xc0",  # deep nesting
        b"\x00" + bytes(20) + b"\xdd\xff\xff\xff\xff",  # array length 2**32-1
        b"\x01" + bytes(20) + b"\x81\x92\x01\x02\x03",  # map with an array key
        b"\x01" + bytes(20) + b"\xd6\xff\x00\x00\x00\x00" + b"\x00",  # timestamp + extra
        bytes(22) + bytes(wire.MAX_WIRE_DATAGRAM_BYTES),  # oversize
    ],
)
def test_bad_datagrams_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_datagram(data)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [[A_ID, "10.0.0.1"]],
        [[A_ID, "10.0.0.1", 0]],
        [[A_ID, "10.0.0.1", 65536]],
        [[A_ID, "10.0.0.1", True]],
        [[A_ID, "not an ip", 1]],
        [[A_ID, b"10.0.0.1", 1]],
        [[A_ID[:19], "10.0.0.1", 1]],
        {"value": None},
        {"value": b"x", "other": 1},
        {"nope": b"x"},
        {},
    ],
)
def test_bad_find_answers_raise_wire_error(body: Any) -> None:
    with pytest.raises(WireError):
        wire.parse_find_value_response(body)
    with pytest.raises(WireError):
        wire.parse_find_node_response(body)


# ----------------------------------------------------------------------------- fuzz

ALL_PARSERS = (
    wire.parse_ping_response,
    wire.parse_store_response,
    wire.parse_find_node_response,
    wire.parse_find_value_response,
    wire.parse_stun_response,
)


def decode_fully(data: bytes) -> None:
    """Decode, and parse a response body every way the core might; only WireError may escape."""
    try:
        message = wire.decode_datagram(data)
    except WireError:
        return
    if isinstance(message, wire.Response):
        for parse in ALL_PARSERS:
            with contextlib.suppress(WireError):
                parse(message.body)


@settings(max_examples=300)
@given(st.binary(max_size=300))
@example(b"\x00" + bytes(20) + b"\x92")
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_fully(data)


@settings(max_examples=300)
@given(st.sampled_from([0, 1]), st.binary(max_size=200))
def test_fuzz_random_bodies(kind: int, body: bytes) -> None:
    decode_fully(bytes([kind]) + bytes(20) + body)


def test_fuzz_truncations_and_byte_flips() -> None:
    for req_hex, resp_hex in GOLDEN.values():
        for data in (bytes.fromhex(req_hex), bytes.fromhex(resp_hex)):
            for cut in range(len(data) + 1):
                decode_fully(data[:cut])
            for i in range(len(data)):
                for flip in (0x01, 0x80, 0xFF):
                    mutated = bytearray(data)
                    mutated[i] ^= flip
                    decode_fully(bytes(mutated))


msgpack_objects = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),
        st.text(max_size=30),
        st.binary(max_size=30),
        st.sampled_from([A_ID, "ping", "store", "find_node", "find_value", "stun", "value", "10.0.0.1"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.just("value")), children, max_size=3),
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(
    st.sampled_from(["ping", "store", "find_node", "find_value", "stun", "other"]),
    st.lists(msgpack_objects, max_size=4),
    msgpack_objects,
)
def test_fuzz_wrongly_typed_structures(name: str, args: list[Any], body: Any) -> None:
    decode_fully(b"\x00" + bytes(20) + msgpack.packb([name, args], use_bin_type=True))
    decode_fully(b"\x01" + bytes(20) + msgpack.packb(body, use_bin_type=True))


# ----------------------------------------------------------------------------- oracle cross-check


@settings(max_examples=200)
@given(msgpack_objects)
def test_msgpack_encoding_matches_umsgpack(obj: Any) -> None:
    """Only where u-msgpack-python (rpcudp's encoder) is installed, e.g. next to kademlia."""
    umsgpack = pytest.importorskip("umsgpack")
    assert msgpack.packb(obj, use_bin_type=True) == umsgpack.packb(obj)
