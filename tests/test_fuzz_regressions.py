"""Inputs the fuzzers in ``fuzz/`` found (or their properties led to), kept as regression tests.

Each test names the harness and the contract it broke.  Bugs in modules
owned elsewhere are ``xfail(strict=True)`` with the reason: they fail today,
and once the module is fixed they pass, which fails them strictly, so the
fixer removes the mark (and the matching ``TOLERATE_*`` flag in the harness,
which keeps the CI smoke run green meanwhile).
"""

from __future__ import annotations

import socket
from pathlib import Path
from random import Random

import msgpack
import pytest
import trio

from dht import DhtCore, wire
from dht.ids import Contact
from identity import Identity
from identity.records import FORMAT_VERSION, PEER, RecordError, create_record, decode_record
from p2pblog.runtime import RECV_BYTES, UdpDriver
from tests.test_runtime import HOST, MemoryNet, Node, join, run

MSG_ID = bytes(range(20))
NODE_ID = bytes(range(20, 40))


def response(body: object) -> bytes:
    return bytes([wire.RESPONSE]) + MSG_ID + msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("host", ["fe80::1%\x00", "fe80::1%eth0", "fe80::1%1", "::1%lo"])
def test_find_node_answer_with_a_scoped_ipv6_contact_is_refused(host: str) -> None:
    """fuzz/dht_wire.py: the contact's address must be one a socket takes as given.

    Was: accepted, and with a NUL in the scope the lookup's ``sock.sendto``
    raised ``TypeError``, which the runtime's flush did not catch."""
    message = wire.decode_datagram(response([[NODE_ID, host, 4000]]))
    assert isinstance(message, wire.Response)
    with pytest.raises(wire.WireError):
        wire.parse_find_node_response(message.body)
    with pytest.raises(wire.WireError):
        wire.parse_find_value_response(message.body)
    with pytest.raises(wire.WireError):
        wire.parse_get_providers_response({"providers": [], "nodes": message.body})


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1", "fe80::1", "::ffff:192.0.2.1"])
def test_find_node_answer_with_a_plain_ip_contact_is_kept(host: str) -> None:
    message = wire.decode_datagram(response([[NODE_ID, host, 4000]]))
    assert isinstance(message, wire.Response)
    assert wire.parse_find_node_response(message.body) == (Contact(NODE_ID, (host, 4000)),)


def test_the_socket_layer_refuses_a_nul_scoped_address_with_a_type_error() -> None:
    """Why the finding above is a crash: ``NodeDriver.flush`` catches only ``OSError``,
    and an IPv4 node's socket (the usual one) raises the same ``TypeError``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, pytest.raises(TypeError):
        sock.sendto(b"x", ("fe80::1%\x00", 4000))


def test_a_lookup_never_sends_to_a_scoped_address_a_peer_gave() -> None:
    """Was: the DHT core walked to the contact, so the runtime was asked to send to
    ``'fe80::1%\\x00'`` (see above).  Now the answer is a counted misbehaviour."""
    core = DhtCore(bytes([9]) * 20, Random(0), 0.0)
    core.bootstrap([("127.0.0.1", 5000)], 0.0)
    evil = Contact(bytes([7]) * 20, ("fe80::1%\x00", 4000))
    sent: list[tuple[str, int]] = []
    now = 0.0
    for _ in range(4):
        for data, addr in core.datagrams_to_send():
            sent.append(addr)
            message = wire.decode_datagram(data)
            now += 0.01
            if isinstance(message, wire.Ping):
                core.receive_datagram(wire.ping_response(message.msg_id, NODE_ID), addr, now)
            elif isinstance(message, wire.FindNode):
                core.receive_datagram(wire.find_node_response(message.msg_id, [evil]), addr, now)
    assert sent and all("%" not in host for host, _ in sent), sent
    assert core.stats["misbehaved.malformed answer"] >= 1


def test_stun_answer_with_a_scoped_ipv6_address_is_refused() -> None:
    """fuzz/dht_wire.py found it (crash-dc963eddfd87...: a stun answer ``["fe80::1%eth0", 127]``)."""
    # The crash file's bytes: a response whose body is the array ["fe80::1%eth0", 127].
    data = bytes.fromhex("01000107260405060708090a0b0c300e0f1011121392ac666538303a3a3125657468307f")
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    with pytest.raises(wire.WireError):
        wire.parse_stun_response(message.body)


def test_a_full_get_providers_answer_round_trips() -> None:
    """fuzz/dht_wire.py's round trip: an 8191-byte answer of 8 providers re-encoded with 7
    (get_providers_response reserved 2 bytes for an array header that takes 1 below 16)."""
    contacts = (Contact(NODE_ID, ("192.0.2.1", 8468)),)
    nodes = [[c.node_id, c.addr[0], c.addr[1]] for c in contacts]
    filler = wire.MAX_BODY_BYTES - 1 - len(msgpack.packb({"providers": [b"a" * 1021] * 7, "nodes": nodes}))
    providers = (*[b"a" * 1021] * 7, b"b" * (filler - 3))  # bin 16 header: 3 bytes
    data = response({"providers": list(providers), "nodes": nodes})
    assert len(data) - wire.HEADER_BYTES == wire.MAX_BODY_BYTES - 1
    message = wire.decode_datagram(data)
    assert isinstance(message, wire.Response)
    assert wire.parse_get_providers_response(message.body) == (providers, contacts)
    again = wire.decode_datagram(wire.get_providers_response(MSG_ID, providers, contacts))
    assert isinstance(again, wire.Response)
    assert wire.parse_get_providers_response(again.body) == (providers, contacts)


def test_a_trimmed_get_providers_answer_is_the_longest_prefix_that_fits() -> None:
    """Around the 16th provider, where the array header grows from 1 byte to 3,
    under every ``max_bytes`` (the amplification limit) from too small to ample."""
    contacts = (Contact(NODE_ID, ("192.0.2.1", 8468)),)
    nodes = [[c.node_id, c.addr[0], c.addr[1]] for c in contacts]
    providers = [bytes([i]) * 10 for i in range(wire.MAX_PROVIDERS_PER_ANSWER)]
    counts: set[int] = set()
    for max_bytes in range(wire.HEADER_BYTES + 40, wire.HEADER_BYTES + 300):
        data = wire.get_providers_response(MSG_ID, providers, contacts, max_bytes)
        assert len(data) <= max_bytes
        message = wire.decode_datagram(data)
        assert isinstance(message, wire.Response)
        got, _ = wire.parse_get_providers_response(message.body)
        n = len(got)
        counts.add(n)
        assert got == tuple(providers[:n])
        if message.body["nodes"] and n < len(providers):
            bigger = {"providers": providers[: n + 1], "nodes": nodes}
            assert wire.HEADER_BYTES + len(msgpack.packb(bigger, use_bin_type=True)) > max_bytes
    assert {0, 15, 16, wire.MAX_PROVIDERS_PER_ANSWER} <= counts


# Peer records: first seen by hand while checking where peers' addresses end up,
# then found by fuzz/records.py (with TOLERATE_UNDIALABLE_HOSTS off) after 9,514 inputs.


def test_trio_refuses_an_empty_hostname_label_with_a_unicode_error() -> None:
    """Why the record below matters: ``NodeDriver._dial`` catches only ``OSError``."""
    with pytest.raises(UnicodeError):
        trio.run(trio.open_tcp_stream, "..", 9)


def _signed_peer_record(addrs: list[list[object]]) -> bytes:
    """A peer record signed as `create_record` would, without its checks."""
    author = Identity(bytes(32))
    content = msgpack.packb([FORMAT_VERSION, PEER, author.public_key, 1, 2**40, {"addrs": addrs}])
    return author.sign(content)


@pytest.mark.parametrize(
    ("proto", "host"),
    [
        ("tcp", ".."),  # found by hand
        ("udp", "\x01\x00\x00\x000.2.1"),  # found by fuzz/records.py
        ("tcp", "a" * 64),  # a label over 63 characters
        ("tcp", "x." * 127 + "x"),  # 255 characters of valid labels, over 253
        ("tcp", "example.com.."),
        ("tcp", "."),
        ("tcp", "-a.example"),
        ("tcp", "a-.example"),
        ("tcp", "a_b.example"),
        ("tcp", "bücher.example"),
        ("tcp", "host\x00"),
        ("udp", "fe80::1%eth0"),
        ("udp", "fe80::1%\x00"),
        ("udp", "192.0.2.1\n"),
    ],
)
def test_a_peer_record_with_an_undialable_host_is_refused(proto: str, host: str) -> None:
    """Was: any 1..255-character host passed; dialling ``'..'`` raises ``UnicodeError``
    (not ``OSError``) in ``trio.open_tcp_stream``, and ``sendto`` to a host with a NUL
    raises ``TypeError``."""
    with pytest.raises(RecordError):
        decode_record(_signed_peer_record([[proto, host, 7000]]), now=None)
    with pytest.raises(RecordError):
        create_record(Identity(bytes(32)), type=PEER, seq=1, expires=2**40, addrs=[(proto, host, 7000)])


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "h",
        "node-1.example.org",
        "xn--bcher-kva.example",
        "A" * 63,
        "x." * 126 + "x",
        "x." * 127,  # 253 characters and the root's dot
        "node-1.example.org.",
        "192.0.2.1",
        "2001:db8::1",
        "fe80::1",
        "::ffff:192.0.2.1",
    ],
)
def test_a_peer_record_with_an_ip_or_a_host_name_is_kept(host: str) -> None:
    record = decode_record(_signed_peer_record([["tcp", host, 7000]]), now=None)
    assert record.addrs == (("tcp", host, 7000),)


# The runtime's backstop: an address the socket layer refuses with something other than
# OSError, should one ever get past the decoders above, is a lost datagram or a failed
# dial, counted and reported, never an exception that stops the node.


def test_a_datagram_to_an_address_sendto_refuses_with_a_type_error_is_a_counted_drop() -> None:
    """Was: the ``TypeError`` left the flush (re-raised in strict mode; otherwise an
    internal error that also lost every datagram and event queued after it)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener, udp:
        listener.bind((HOST, 0))
        listener.settimeout(5)
        udp.bind((HOST, 0))
        reported: list[tuple[str, Exception]] = []
        core = DhtCore(bytes([9]) * 20, Random(0), 0.0)
        driver = UdpDriver(
            core, udp, clock=lambda: 0.0, on_internal_error=lambda k, e: reported.append((k, e)), strict=True
        )
        # A seed is the user's input, not a peer's: the one way left to queue such an address.
        core.bootstrap([("fe80::1%\x00", 4000), listener.getsockname()], 0.0)
        driver.flush()
        assert driver.stats["send_error.TypeError"] == 1
        assert not driver.internal_errors
        assert [(kind, type(exc)) for kind, exc in reported] == [("send", TypeError)]
        data, _ = listener.recvfrom(RECV_BYTES)  # the datagram queued after it still went out
        assert isinstance(wire.decode_datagram(data), wire.Ping)


class UndialableNet(MemoryNet):
    """A `MemoryNet` whose dials to `undialable` fail as ``trio.open_tcp_stream("..", port)``
    does: with ``UnicodeError``, not ``OSError``."""

    def __init__(self) -> None:
        super().__init__()
        self.undialable: set[tuple[str, int]] = set()

    async def connect(self, source: tuple[str, int], target: tuple[str, int]) -> trio.abc.Stream:
        if target in self.undialable:
            await trio.lowlevel.checkpoint()
            self.dials.append((source, target))
            raise UnicodeError("encoding with 'idna' codec failed (UnicodeError: label empty or too long)")
        return await super().connect(source, target)


def test_a_dial_that_raises_a_unicode_error_is_a_counted_failed_dial(tmp_path: Path) -> None:
    """Was: the ``UnicodeError`` left ``NodeDriver._dial``, a task of the driver's
    nursery, and stopped the node."""

    async def main() -> None:
        net = UndialableNet()
        a, b = Node(tmp_path, 11, net), Node(tmp_path, 12, net)
        undialable = (HOST, 1)
        net.undialable.add(undialable)
        a.addrs = [("udp", *a.udp), ("tcp", *undialable)]
        try:
            async with trio.open_nursery() as nursery:
                a.start(nursery)
                b.start(nursery)
                await join(a, b)
                b.command(lambda now: b.core.follow(a.key, now))
                await b.core.wait_until(
                    lambda: (
                        len(b.core.dials) >= 2
                        and all(b.core.inputs("failed", cid) for _, cid, _, _ in b.core.dials)
                    )
                )
                assert all((host, port) == undialable for _, _, host, port in b.core.dials)
                assert b.driver.stats["dial_error.UnicodeError"] == len(b.core.dials)
                assert not b.driver.internal_errors and b.driver.connections == 0
                with trio.fail_after(1):
                    await a.stop()
                    await b.stop()
        finally:
            for node in (a, b):
                node.driver.close()
                node.store.close()

    run(main)
