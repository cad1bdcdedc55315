"""Wire codec of the DHT: rpcudp framing and the ``kademlia`` package's RPC shapes.

Theory of operation
-------------------
p2pblog speaks the exact datagram format of ``rpcudp`` 5.0.1 and the RPC
argument and return shapes of ``kademlia`` 2.2.3, so that p2pblog nodes and
``kademlia.network.Server`` nodes can bootstrap from and store to each other.
What follows was read off their source (``rpcudp/protocol.py``,
``kademlia/protocol.py``, ``kademlia/crawling.py``).

A datagram is::

    byte 0      0x00 request | 0x01 response
    bytes 1-20  message id: 20 opaque bytes chosen by the requester
                (rpcudp hashes 32 bytes from the OS random source; we use the injected RNG)
    bytes 21-   msgpack body

rpcudp ignores datagrams shorter than 22 bytes, and refuses to *send* a
request whose msgpack body is longer than 8192 bytes; we enforce that same
limit (`MAX_BODY_BYTES` = `identity.limits.MAX_DATAGRAM_BYTES`) on the body of
everything we receive or send, so the largest datagram is 21 + 8192 bytes.
rpcudp matches a response to its request by message id alone.

A request body is ``[name, args]`` where ``args`` is the tuple the caller
passed, packed as an array; every ``kademlia`` RPC puts the sender's node id
first.  A response body is the bare return value of ``rpc_<name>``:

=============  =====================================  ===================================
name           request args                           response body
=============  =====================================  ===================================
``ping``       ``[sender_id]``                        the responder's id (bin 20)
``store``      ``[sender_id, key, value]``            ``true`` (kademlia always; we send
                                                      ``false`` for a refused value)
``find_node``  ``[sender_id, target]``                ``[[id, ip, port], ...]`` (<= k)
``find_value`` ``[sender_id, key]``                   ``{"value": v}`` or, if not held,
                                                      the ``find_node`` answer
``stun``       ``[]``                                 ``[ip, port]`` of the requester
=============  =====================================  ===================================

Ids and keys are msgpack *bin*, names and ips are *str* (rpcudp packs with
u-msgpack-python, which, like ``msgpack.packb`` with ``use_bin_type=True``,
uses the smallest encoding of every value; the golden vectors in
``tests/dht/test_wire.py`` pin that we produce the same bytes).  A value is
whatever ``kademlia.network.check_dht_value_type`` allows: int, float, bool,
str or bytes.  A request with an unknown name gets no answer (rpcudp logs and
drops it); p2pblog-only RPCs therefore use names of their own and peers that
do not know them stay silent.

p2pblog adds two RPCs of its own, after libp2p kad-dht's ``ADD_PROVIDER`` /
``GET_PROVIDERS`` (a key may have many *providers*, one value each, where a
record key has one value).  Their names carry a ``p2pb_`` prefix so they can
never collide with a ``kademlia`` method, and ``kademlia`` nodes leave them
unanswered, which the core treats as that peer failing the step:

======================  =====================================  ====================================
name                    request args                           response body
======================  =====================================  ====================================
``p2pb_add_provider``   ``[sender_id, key, value (bin)]``      ``true`` stored / ``false`` refused
``p2pb_get_providers``  ``[sender_id, key]``                   ``{"providers": [value, ...],
                                                               "nodes": [[id, ip, port], ...]}``
======================  =====================================  ====================================

*First-seen times* (issue 15): a requester that wants them sends a third
argument, ``flags`` (an unsigned int; bit 0 = `WITH_SEEN`), as
``[sender_id, key, 1]``, and a p2pblog node then answers
``{"providers": [...], "seen": [uint, ...], "nodes": [...]}``: ``seen[i]``
is the Unix second this node first stored the provider of ``providers[i]``
for that key (`dht.providers.ProviderStore.get_with_seen`).  A request
without flags gets the two-field answer, byte for byte as before, so older
p2pblog requesters are served unchanged; an older p2pblog node refuses the
three-argument request and stays silent, which a requester treats like a
``kademlia`` peer's silence (no proof of death).  p2pblog asks with flags
only for name claims.

A provider value is bytes of at most `MAX_DHT_VALUE_BYTES`.  A
``p2pb_get_providers`` answer always carries both fields (libp2p's
``providerPeers`` and ``closerPeers``), at most `MAX_PROVIDERS_PER_ANSWER`
values, and `get_providers_response` leaves out the values that would push
the body over `MAX_BODY_BYTES`: rpcudp only limits requests, but our decoder
refuses any larger datagram, so answers obey the same bound.

Decoding is bounded and total: `decode_datagram` and the ``parse_*``
functions raise `WireError` (a `ValueError`) and nothing else for any input,
however malformed.  They validate shapes once, here at the boundary, so the
core works with typed values.  An address a peer gives is a plain numeric IP
that a socket takes as given: never a host name, never an IPv6 zone (the
``%eth0`` of RFC 4007; with a NUL in it ``sendto`` raises `TypeError`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from dht.ids import ID_BYTES, Address, Contact, is_id, shared_address
from identity.limits import MAX_DATAGRAM_BYTES, MAX_DHT_VALUE_BYTES

REQUEST: Final = 0x00
RESPONSE: Final = 0x01
MSG_ID_BYTES: Final = 20
HEADER_BYTES: Final = 1 + MSG_ID_BYTES
#: rpcudp's own check: ``len(umsgpack.packb([name, args])) > 8192`` is refused.
MAX_BODY_BYTES: Final = MAX_DATAGRAM_BYTES
MAX_WIRE_DATAGRAM_BYTES: Final = HEADER_BYTES + MAX_BODY_BYTES
#: rpcudp drops anything shorter (a header and at least one body byte).
MIN_DATAGRAM_BYTES: Final = HEADER_BYTES + 1
#: Longest RPC name we keep (unknown names are only logged and counted).
MAX_NAME_CHARS: Final = 64

PING: Final = "ping"
STORE: Final = "store"
FIND_NODE: Final = "find_node"
FIND_VALUE: Final = "find_value"
STUN: Final = "stun"
ADD_PROVIDER: Final = "p2pb_add_provider"
GET_PROVIDERS: Final = "p2pb_get_providers"
#: RPCs only p2pblog nodes answer; silence to them may just mean "a kademlia peer".
P2PBLOG_RPCS: Final = frozenset({ADD_PROVIDER, GET_PROVIDERS})
#: Provider values in one ``p2pb_get_providers`` answer, at most (libp2p sends up to k).
MAX_PROVIDERS_PER_ANSWER: Final = 20
#: ``p2pb_get_providers`` flag: answer with each provider's first-seen time.
WITH_SEEN: Final = 1
#: Largest flags value (and first-seen time) accepted: msgpack's unsigned 64-bit range, halved.
MAX_WIRE_UINT: Final = 2**63 - 1

#: A DHT value as ``kademlia`` allows it (``check_dht_value_type``).
Value = bytes | str | int | float | bool


class WireError(ValueError):
    """Bytes from a peer that are not a well-formed DHT datagram or RPC reply."""


@dataclass(frozen=True, slots=True)
class Ping:
    msg_id: bytes
    sender_id: bytes


@dataclass(frozen=True, slots=True)
class Store:
    msg_id: bytes
    sender_id: bytes
    key: bytes
    value: Value


@dataclass(frozen=True, slots=True)
class FindNode:
    msg_id: bytes
    sender_id: bytes
    target: bytes


@dataclass(frozen=True, slots=True)
class FindValue:
    msg_id: bytes
    sender_id: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class Stun:
    msg_id: bytes


@dataclass(frozen=True, slots=True)
class AddProvider:
    msg_id: bytes
    sender_id: bytes
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class GetProviders:
    msg_id: bytes
    sender_id: bytes
    key: bytes
    #: Ask for first-seen times (sent as the flags argument `WITH_SEEN`).
    seen: bool = False


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A well-framed request whose name we do not serve (left unanswered)."""

    msg_id: bytes
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Response:
    """A response; its body's shape depends on the request, see the ``parse_*`` functions."""

    msg_id: bytes
    body: Any


Request = Ping | Store | FindNode | FindValue | Stun | AddProvider | GetProviders | UnknownRequest
Message = Request | Response


# --------------------------------------------------------------------------- values


def value_size(value: Value) -> int:
    """Size a value counts against `MAX_DHT_VALUE_BYTES`: its payload bytes."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return 8


def is_value(obj: object) -> bool:
    """True for a value ``kademlia`` would store (exact types, as ``type(v) in typeset``)."""
    return type(obj) in (bytes, str, int, float, bool)


def _check_value(obj: object) -> Value:
    if not is_value(obj):
        raise WireError(f"a DHT value is int, float, bool, str or bytes, not {type(obj).__name__}")
    assert isinstance(obj, bytes | str | int | float)
    if value_size(obj) > MAX_DHT_VALUE_BYTES:
        raise WireError(f"DHT value over {MAX_DHT_VALUE_BYTES} bytes")
    return obj


def _check_provider_value(obj: object) -> bytes:
    if not isinstance(obj, bytes):
        raise WireError("a provider value is bytes")
    if len(obj) > MAX_DHT_VALUE_BYTES:
        raise WireError(f"provider value over {MAX_DHT_VALUE_BYTES} bytes")
    return obj


def _check_id(obj: object, what: str) -> bytes:
    if not is_id(obj):
        raise WireError(f"{what} is not a {ID_BYTES}-byte id")
    assert isinstance(obj, bytes)
    return obj


# --------------------------------------------------------------------------- encoding


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _frame(kind: int, msg_id: bytes, body: bytes) -> bytes:
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError(f"a message id is {MSG_ID_BYTES} bytes")
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"message body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    return bytes((kind,)) + msg_id + body


def _contact_triple(contact: Contact) -> list[object]:
    return [contact.node_id, contact.addr[0], contact.addr[1]]


def request_name(request: Request) -> str:
    """The RPC name a request is sent under (``"find_node"``, ...)."""
    match request:
        case Ping():
            return PING
        case Store():
            return STORE
        case FindNode():
            return FIND_NODE
        case FindValue():
            return FIND_VALUE
        case Stun():
            return STUN
        case AddProvider():
            return ADD_PROVIDER
        case GetProviders():
            return GET_PROVIDERS
        case UnknownRequest(name=name):
            return name


def encode_request(request: Request) -> bytes:
    """Frame a request as rpcudp's ``__getattr__`` closure does."""
    args: Sequence[object]
    match request:
        case Ping(msg_id, sender_id):
            name, args = PING, (sender_id,)
        case Store(msg_id, sender_id, key, value):
            name, args = STORE, (sender_id, key, value)
        case FindNode(msg_id, sender_id, target):
            name, args = FIND_NODE, (sender_id, target)
        case FindValue(msg_id, sender_id, key):
            name, args = FIND_VALUE, (sender_id, key)
        case Stun(msg_id):
            name, args = STUN, ()
        case AddProvider(msg_id, sender_id, key, value):
            name, args = ADD_PROVIDER, (sender_id, key, value)
        case GetProviders(msg_id, sender_id, key, seen):
            name, args = GET_PROVIDERS, (sender_id, key, WITH_SEEN) if seen else (sender_id, key)
        case UnknownRequest(msg_id, name, args):
            pass
    return _frame(REQUEST, msg_id, _pack([name, list(args)]))


def encode_response(msg_id: bytes, body: object) -> bytes:
    """Frame a bare return value as rpcudp's ``_accept_request`` does."""
    return _frame(RESPONSE, msg_id, _pack(body))


def ping_response(msg_id: bytes, node_id: bytes) -> bytes:
    return encode_response(msg_id, node_id)


def store_response(msg_id: bytes, stored: bool) -> bytes:
    return encode_response(msg_id, stored)


def _array_header(n: int) -> int:
    """Bytes of a msgpack array header for ``n`` items."""
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def _fit_contacts(contacts: Sequence[Contact], room: int | None) -> list[list[object]]:
    """The first contacts whose packed array fits in ``room`` bytes (None: all)."""
    nodes = [_contact_triple(c) for c in contacts]
    if room is None:
        return nodes
    used = _array_header(len(nodes))
    for i, node in enumerate(nodes):
        used += len(_pack(node))
        if used > room:
            return nodes[:i]
    return nodes


def find_node_response(msg_id: bytes, contacts: Sequence[Contact], max_bytes: int | None = None) -> bytes:
    """``[[id, ip, port], ...]``; with ``max_bytes``, only the first contacts that fit
    (the caller orders them nearest first), never fewer than none."""
    room = None if max_bytes is None else max_bytes - HEADER_BYTES
    return encode_response(msg_id, _fit_contacts(contacts, room))


def find_value_response(
    msg_id: bytes, found: Value | Sequence[Contact], max_bytes: int | None = None
) -> bytes:
    """``{"value": v}`` or the ``find_node`` answer (trimmed to ``max_bytes`` as there).

    A value does not shrink: the caller checks the size and answers with
    contacts instead when it must."""
    if is_value(found):
        return encode_response(msg_id, {"value": found})
    assert not isinstance(found, bytes | str | int | float)
    return find_node_response(msg_id, found, max_bytes)


def stun_response(msg_id: bytes, addr: Address) -> bytes:
    return encode_response(msg_id, [addr[0], addr[1]])


def add_provider_response(msg_id: bytes, stored: bool) -> bytes:
    return encode_response(msg_id, stored)


def get_providers_response(
    msg_id: bytes,
    providers: Sequence[bytes],
    contacts: Sequence[Contact],
    max_bytes: int | None = None,
    *,
    seen: Sequence[int] | None = None,
) -> bytes:
    """``{"providers": [...], "nodes": [...]}`` within `MAX_BODY_BYTES` (and ``max_bytes``).

    Takes the first `MAX_PROVIDERS_PER_ANSWER` of ``providers`` (the caller
    orders them, best first) and stops at the first one that no longer fits
    next to ``contacts``.  Without ``max_bytes`` the contacts always go in
    whole (k contacts take < 1 KiB); with it, the contacts are trimmed
    first (nearest kept) to fit, and providers take what room is left.
    With ``seen`` (parallel to ``providers``: first-seen Unix seconds) the
    answer carries ``"seen"`` too, trimmed with its provider.
    """
    limit = MAX_BODY_BYTES if max_bytes is None else min(MAX_BODY_BYTES, max_bytes - HEADER_BYTES)
    shape: dict[str, list[Any]] = {"providers": [], "nodes": []}
    if seen is not None:
        shape = {"providers": [], "seen": [], "nodes": []}
    empty = len(_pack(shape))
    nodes = _fit_contacts(contacts, None if max_bytes is None else limit - empty + 1)
    # Room left once the empty shape (a 1-byte fixarray header) is packed.
    room = limit - len(_pack({**shape, "nodes": nodes}))
    chosen: list[bytes] = []
    times: list[int] = []
    for i, value in enumerate(providers[:MAX_PROVIDERS_PER_ANSWER]):
        # The 16th value grows the header from fixarray (1 byte) to array 16 (3 bytes).
        grow = _array_header(len(chosen) + 1) - _array_header(len(chosen))
        size = len(_pack(value)) + grow
        if seen is not None:
            size += len(_pack(seen[i])) + grow
        if size > room:
            break
        chosen.append(value)
        if seen is not None:
            times.append(seen[i])
        room -= size
    if seen is None:
        return encode_response(msg_id, {"providers": chosen, "nodes": nodes})
    return encode_response(msg_id, {"providers": chosen, "seen": times, "nodes": nodes})


# --------------------------------------------------------------------------- decoding


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_BODY_BYTES,
            max_bin_len=MAX_BODY_BYTES,
            max_array_len=MAX_BODY_BYTES,
            max_map_len=MAX_BODY_BYTES,
            max_ext_len=MAX_BODY_BYTES,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError, UnicodeDecodeError and plain
        # ValueError (truncation, limits, non-str map keys) are ValueErrors;
        # OutOfData is only an UnpackException.
        # Anything else escaping here is a bug the fuzz tests are meant to catch.
        raise WireError(f"malformed msgpack body: {type(exc).__name__}") from None


def decode_datagram(data: bytes) -> Message:
    """Decode one datagram; raise `WireError` for anything but a well-formed one."""
    if len(data) < MIN_DATAGRAM_BYTES:
        raise WireError(f"datagram of {len(data)} bytes is shorter than {MIN_DATAGRAM_BYTES}")
    if len(data) > MAX_WIRE_DATAGRAM_BYTES:
        raise WireError(f"datagram of {len(data)} bytes is over {MAX_WIRE_DATAGRAM_BYTES}")
    kind = data[0]
    msg_id = bytes(data[1:HEADER_BYTES])
    if kind == RESPONSE:
        return Response(msg_id, _unpack(bytes(data[HEADER_BYTES:])))
    if kind != REQUEST:
        raise WireError(f"unknown datagram type 0x{kind:02x}")
    body = _unpack(bytes(data[HEADER_BYTES:]))
    # rpcudp's _accept_request: "if not isinstance(data, list) or len(data) != 2".
    if not isinstance(body, list) or len(body) != 2:
        raise WireError("a request body is [name, args]")
    name, args = body
    if not isinstance(name, str) or not isinstance(args, list):
        raise WireError("a request body is [str name, array args]")
    if len(name) > MAX_NAME_CHARS:
        raise WireError("RPC name too long")
    return _decode_request(msg_id, name, args)


def _arity(name: str, args: list[Any], n: int) -> None:
    if len(args) != n:
        raise WireError(f"{name} takes {n} arguments, got {len(args)}")


def _decode_request(msg_id: bytes, name: str, args: list[Any]) -> Request:
    if name == PING:
        _arity(name, args, 1)
        return Ping(msg_id, _check_id(args[0], "sender id"))
    if name == STORE:
        _arity(name, args, 3)
        return Store(
            msg_id,
            _check_id(args[0], "sender id"),
            _check_id(args[1], "key"),
            _check_value(args[2]),
        )
    if name == FIND_NODE:
        _arity(name, args, 2)
        return FindNode(msg_id, _check_id(args[0], "sender id"), _check_id(args[1], "target"))
    if name == FIND_VALUE:
        _arity(name, args, 2)
        return FindValue(msg_id, _check_id(args[0], "sender id"), _check_id(args[1], "key"))
    if name == STUN:
        _arity(name, args, 0)
        return Stun(msg_id)
    if name == ADD_PROVIDER:
        _arity(name, args, 3)
        return AddProvider(
            msg_id,
            _check_id(args[0], "sender id"),
            _check_id(args[1], "key"),
            _check_provider_value(args[2]),
        )
    if name == GET_PROVIDERS:
        if len(args) != 3:
            _arity(name, args, 2)
        seen = len(args) == 3 and bool(_check_uint(args[2], "flags") & WITH_SEEN)
        return GetProviders(msg_id, _check_id(args[0], "sender id"), _check_id(args[1], "key"), seen)
    return UnknownRequest(msg_id, name, tuple(args))


def _check_addr(host: object, port: object) -> Address:
    if not isinstance(host, str) or type(port) is not int:
        raise WireError("an address is [str ip, int port]")
    if not 0 < port < 65536:
        raise WireError("port out of range")
    if len(host) > 45:  # longest textual IPv6 address (with embedded IPv4)
        raise WireError("ip too long")
    if not _is_ip(host):
        # kademlia says "only IP addresses are acceptable - hostnames will cause an error".
        raise WireError("not an IP address without a scope")
    return (host, port)


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    """True for a plain numeric IP, one a socket takes as given.

    `ipaddress` also accepts an IPv6 zone (RFC 4007: ``"fe80::1%eth0"``) of any
    characters, ``"fe80::1%\\x00"`` too, and ``sock.sendto`` raises `TypeError`
    (not `OSError`) for that one.  A zone names an interface of the *peer's*
    host, meaningless on ours, so an address with one is malformed.
    """
    # Cached: a find_node answer carries up to k addresses, mostly ones seen before.
    if "%" in host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return getattr(ip, "scope_id", None) is None


def parse_contacts(body: Any) -> tuple[Contact, ...]:
    """A ``find_node`` answer: ``[[id, ip, port], ...]`` -> contacts, in the peer's order."""
    if not isinstance(body, list):
        raise WireError("a find_node answer is an array of [id, ip, port]")
    out: list[Contact] = []
    for triple in body:
        if not isinstance(triple, list) or len(triple) != 3:
            raise WireError("a contact is [id, ip, port]")
        node_id, host, port = triple
        # The checks of _check_id and _check_addr, inline: an answer carries up to k contacts.
        if type(node_id) is not bytes or len(node_id) != ID_BYTES:
            _check_id(node_id, "contact id")
        if type(host) is not str or type(port) is not int or not 0 < port < 65536 or len(host) > 45:
            _check_addr(host, port)
        elif not _is_ip(host):
            raise WireError("not an IP address without a scope")
        out.append(Contact(node_id, shared_address((host, port))))
    return tuple(out)


def parse_ping_response(body: Any) -> bytes:
    return _check_id(body, "ping answer")


def parse_store_response(body: Any) -> bool:
    if not isinstance(body, bool):
        raise WireError("a store answer is a boolean")
    return body


def parse_find_node_response(body: Any) -> tuple[Contact, ...]:
    return parse_contacts(body)


def parse_find_value_response(body: Any) -> Value | tuple[Contact, ...]:
    """``{"value": v}`` -> v; otherwise a ``find_node`` answer -> contacts.

    ``kademlia``'s ``RPCFindResponse.has_value`` is ``isinstance(response, dict)``.
    """
    if isinstance(body, dict):
        if set(body) != {"value"}:
            raise WireError('a find_value answer map is {"value": v}')
        return _check_value(body["value"])
    return parse_contacts(body)


def parse_stun_response(body: Any) -> Address:
    if not isinstance(body, list) or len(body) != 2:
        raise WireError("a stun answer is [ip, port]")
    return _check_addr(body[0], body[1])


def parse_add_provider_response(body: Any) -> bool:
    if not isinstance(body, bool):
        raise WireError("a p2pb_add_provider answer is a boolean")
    return body


def parse_get_providers_response(body: Any) -> tuple[tuple[bytes, ...], tuple[Contact, ...]]:
    """``{"providers": [v, ...], "nodes": [[id, ip, port], ...]}`` -> (values, contacts)."""
    values, _, contacts = parse_get_providers_seen(body)
    return values, contacts


def parse_get_providers_seen(
    body: Any,
) -> tuple[tuple[bytes, ...], tuple[int, ...] | None, tuple[Contact, ...]]:
    """A ``p2pb_get_providers`` answer with or without ``"seen"`` -> (values, first-seen
    times parallel to the values or None, contacts)."""
    if not isinstance(body, dict) or set(body) not in (
        {"providers", "nodes"},
        {"providers", "seen", "nodes"},
    ):
        raise WireError(
            'a p2pb_get_providers answer is {"providers": [...], ("seen": [...],) "nodes": [...]}'
        )
    providers = body["providers"]
    if not isinstance(providers, list):
        raise WireError("providers is an array of values")
    if len(providers) > MAX_PROVIDERS_PER_ANSWER:
        raise WireError(f"more than {MAX_PROVIDERS_PER_ANSWER} providers in one answer")
    seen: tuple[int, ...] | None = None
    if "seen" in body:
        times = body["seen"]
        if not isinstance(times, list) or len(times) != len(providers):
            raise WireError("seen is an array of times, one per provider")
        seen = tuple(_check_uint(t, "a first-seen time") for t in times)
    return tuple(_check_provider_value(v) for v in providers), seen, parse_contacts(body["nodes"])


def _check_uint(obj: object, what: str) -> int:
    if type(obj) is not int or not 0 <= obj <= MAX_WIRE_UINT:
        raise WireError(f"{what} is an unsigned integer below 2**63")
    return obj
