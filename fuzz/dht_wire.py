"""Fuzz `dht.wire`: arbitrary bytes as a UDP datagram from a stranger.

Run: ``python fuzz/dht_wire.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

The contract: `decode_datagram` returns a message or raises `WireError`;
for a response, every ``parse_*`` function (a reply's body is parsed by the
one its request expects, and the fuzzer does not know which, so all of them
run) returns or raises `WireError`.  Any other exception is a crash.

Round trips, where an encoder exists:

* a decoded request re-encodes (`encode_request`) to bytes that decode to
  the same request, and those bytes are a fixed point (encoding the
  decoded copy gives them again: byte comparison, because a NaN value is
  not equal to itself);
* a parsed reply re-encodes with its ``*_response`` builder to bytes that
  parse to the same value.

Every address a reply yields (``find_node`` contacts, the ``stun``
answer) must be one a socket takes as given: a numeric IPv4 or IPv6
address that ``socket.inet_pton`` parses, with no IPv6 scope (``%zone``).
The core sends datagrams to those addresses, and the runtime's
``sock.sendto`` raises ``TypeError`` (not ``OSError``) for a host with a
NUL in it, so a looser check lets one reply crash the node.

The one exception to the round trips is a body that re-encodes larger than it came: msgpack
float 32 decodes to a Python float that packs as float 64, so an
`UnknownRequest` or a `Response` near `MAX_BODY_BYTES` may not fit again.
The core never re-encodes those, and `encode_*` refuses it with its
documented `ValueError`; the harness accepts exactly that case.
"""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Callable
from typing import Any

import atheris
from launch import run, use_checkout
from msgpack_mutator import MsgpackMutator

use_checkout()

with atheris.instrument_imports(include=["dht", "identity"]):
    from dht import wire
    from dht.ids import Contact
    from dht.wire import (
        AddProvider,
        FindNode,
        FindValue,
        GetProviders,
        Ping,
        Response,
        Store,
        Stun,
        UnknownRequest,
        WireError,
    )

MAX_LEN = wire.MAX_WIRE_DATAGRAM_BYTES + 64

# Findings in dht/wire.py, tolerated here once so that the CI
# smoke run stayed green until they were fixed (both are, with regression
# tests in tests/test_fuzz_regressions.py); True skips the check again.
#: The decoder accepted IPv6 addresses with a scope ("fe80::1%eth0", even
#: "fe80::1%\x00", on which ``sock.sendto`` raises ``TypeError``).
TOLERATE_SCOPED_IPV6 = False
#: `get_providers_response` left out the last provider of an answer that
#: filled the body to within 2 bytes of `MAX_BODY_BYTES`, which the decoder
#: accepts: its room estimate counted a 3-byte array header where 1 byte is used.
TOLERATE_PROVIDERS_ROOM = False


def assert_sendable(addr: tuple[str, int]) -> None:
    """The address is a plain numeric IP and port (module docstring)."""
    host, port = addr
    if TOLERATE_SCOPED_IPV6 and "%" in host:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socket.inet_pton(family, host)  # OSError: an address the socket layer does not take as given
    assert 0 < port < 65536


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _reencode(encode: Callable[[], bytes], body_bytes: int) -> bytes | None:
    """``encode()``, or None when it refuses a body that grew past the limit (module docstring)."""
    try:
        return encode()
    except ValueError:
        if body_bytes < wire.MAX_BODY_BYTES // 2:
            raise  # a small body has no room to double: a real refusal
        return None


def check_request(message: wire.Request, data: bytes) -> None:
    again = _reencode(lambda: wire.encode_request(message), len(data))
    if again is None:
        return
    copy = wire.decode_datagram(again)
    assert type(copy) is type(message)
    assert wire.encode_request(copy) == again, "re-encoding is not a fixed point"
    if not isinstance(message, UnknownRequest) and not _is_nan(getattr(message, "value", None)):
        assert copy == message, f"{message!r} came back as {copy!r}"


def _parse_back(msg_id: bytes, encoded: bytes, parse: Callable[[Any], Any]) -> Any:
    response = wire.decode_datagram(encoded)
    assert isinstance(response, Response)
    assert response.msg_id == msg_id
    return parse(response.body)


def check_response(response: Response, data: bytes) -> None:
    msg_id, body = response.msg_id, response.body
    again = _reencode(lambda: wire.encode_response(msg_id, body), len(data))
    if again is not None:
        copy = wire.decode_datagram(again)
        assert isinstance(copy, Response)
        assert wire.encode_response(copy.msg_id, copy.body) == again, "re-encoding is not a fixed point"
    # Each parser, on whatever body came: a declared error, or a value that round-trips.
    with _declared():
        node_id = wire.parse_ping_response(body)
        assert _parse_back(msg_id, wire.ping_response(msg_id, node_id), wire.parse_ping_response) == node_id
    with _declared():
        stored = wire.parse_store_response(body)
        assert _parse_back(msg_id, wire.store_response(msg_id, stored), wire.parse_store_response) is stored
    with _declared():
        stored = wire.parse_add_provider_response(body)
        back = _parse_back(
            msg_id, wire.add_provider_response(msg_id, stored), wire.parse_add_provider_response
        )
        assert back is stored
    with _declared():
        contacts = wire.parse_find_node_response(body)
        for contact in contacts:
            assert_sendable(contact.addr)
        back = _parse_back(msg_id, wire.find_node_response(msg_id, contacts), wire.parse_find_node_response)
        assert back == contacts
    with _declared():
        found = wire.parse_find_value_response(body)
        if isinstance(found, tuple):
            for contact in found:
                assert_sendable(contact.addr)
        back = _parse_back(msg_id, wire.find_value_response(msg_id, found), wire.parse_find_value_response)
        assert back == found or _is_nan(found)
        assert type(back) is type(found)
    with _declared():
        addr = wire.parse_stun_response(body)
        assert_sendable(addr)
        assert _parse_back(msg_id, wire.stun_response(msg_id, addr), wire.parse_stun_response) == addr
    with _declared():
        providers, contacts = wire.parse_get_providers_response(body)
        encoded = wire.get_providers_response(msg_id, providers, contacts)
        back = _parse_back(msg_id, encoded, wire.parse_get_providers_response)
        if TOLERATE_PROVIDERS_ROOM and len(data) - wire.HEADER_BYTES > wire.MAX_BODY_BYTES - 2:
            assert back[0] == providers[: len(back[0])] and back[1] == contacts
            return
        assert back == (providers, contacts), f"{len(providers)} providers came back as {len(back[0])}"
    with _declared():
        # With first-seen times (issue 15): each time stays with its provider.
        values, seen, found = wire.parse_get_providers_seen(body)
        encoded = wire.get_providers_response(msg_id, values, found, seen=seen)
        again_seen = _parse_back(msg_id, encoded, wire.parse_get_providers_seen)
        assert again_seen == (values, seen, found), "an answer with first-seen times did not round-trip"


class _declared:
    """``with _declared():`` -- a `WireError` inside ends the block quietly; anything else escapes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, WireError)


def check(data: bytes) -> None:
    try:
        message = wire.decode_datagram(data)
    except WireError:
        return
    if isinstance(message, Response):
        check_response(message, data)
    else:
        check_request(message, data)


def seeds() -> list[bytes]:
    """Every request shape and every reply shape, as our node sends them, and a datagram one byte too long."""
    msg_id, node, key = bytes(range(20)), bytes(range(20, 40)), bytes(range(40, 60))
    contacts = [Contact(node, ("192.0.2.1", 8468)), Contact(key, ("2001:db8::1", 7000))]
    requests: list[wire.Request] = [
        Ping(msg_id, node),
        Store(msg_id, node, key, b"value"),
        Store(msg_id, node, key, "text"),
        Store(msg_id, node, key, 1.5),
        FindNode(msg_id, node, key),
        FindValue(msg_id, node, key),
        Stun(msg_id),
        AddProvider(msg_id, node, key, b"provider record"),
        GetProviders(msg_id, node, key),
        GetProviders(msg_id, node, key, seen=True),
        UnknownRequest(msg_id, "p2pb_future", (1, [2], {"x": b"y"})),
    ]
    return [wire.encode_request(r) for r in requests] + [
        wire.ping_response(msg_id, node),
        wire.store_response(msg_id, True),
        wire.find_node_response(msg_id, contacts),
        wire.find_value_response(msg_id, b"\x00" * 40),
        wire.stun_response(msg_id, ("198.51.100.7", 40000)),
        wire.get_providers_response(msg_id, [b"a" * 100, b"b" * 1024], contacts),
        wire.get_providers_response(msg_id, [b"a" * 100, b"b" * 1024], contacts, seen=[1_800_000_000, 0]),
        bytes([wire.RESPONSE]) + msg_id + bytes(wire.MAX_BODY_BYTES + 1),
    ]


def mutator() -> MsgpackMutator:
    """Mutates the body after the 21-byte header toward the RPC shapes and address edges."""
    names = (wire.PING, wire.STORE, wire.FIND_NODE, wire.FIND_VALUE, wire.STUN, *wire.P2PBLOG_RPCS)
    edges = (
        "value",
        "providers",
        "seen",
        "nodes",
        wire.MAX_WIRE_UINT + 1,
        "127.0.0.1",
        "::1",
        "fe80::1%eth0",
        "1.2.3",
        "x" * (wire.MAX_NAME_CHARS + 1),
        bytes(wire.MAX_DHT_VALUE_BYTES + 1),
        [bytes(20), "10.0.0.1", 0],
        [bytes(20), "10.0.0.1", 65536],
        [b"p"] * (wire.MAX_PROVIDERS_PER_ANSWER + 1),
    )
    return MsgpackMutator(headers=(wire.HEADER_BYTES,), values=(*names, *edges))


def main() -> None:
    run("dht_wire", check, seeds=seeds(), max_len=MAX_LEN, mutator=mutator())


if __name__ == "__main__":
    sys.exit(main())
