"""Direct messages between NodeCores, sans IO, and the sealed format.

Nodes have real SQLite stores on disk and meet over `tests.gossip.wire.Wire`
(in-memory TCP and UDP, fake clock); stamps are real proof of work (the wire
solves them at once).  The tests assert what a user sees: which messages are
in whose inbox or requests, what a sender's message says about its delivery,
what a holder can and cannot read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import msgpack
import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.messages import Dm, DmAck, DmStatus, GossipDecodeError, decode_message, encode_message
from identity import Identity
from identity.limits import MAX_DM_CHARS, MAX_SEALED_BYTES
from identity.sealed import DM_DOMAIN, SealedError, dm_id, open_sealed, seal
from p2pblog.dms import HELD_PER_DEPOSITOR
from p2pblog.events import DmStateChanged, DmStored
from p2pblog.node import NodeCore
from p2pblog.replication import DmArrived
from tests.gossip.wire import PORT, Wire
from tests.wire_nodes import wire_net

A, B, C, D = (Identity(bytes([i]) * 32) for i in (61, 62, 63, 64))
NAMES = dict(zip("abcd", (A, B, C, D), strict=True))
HOST = {name: f"10.0.2.{i}" for i, name in enumerate("abcd", start=1)}
SEED = bytes(range(32))


# --- the sealed format ------------------------------------------------------------------------


def test_only_the_recipient_opens_a_message_and_learns_its_sender() -> None:
    sealed = seal(A, B.public_key, 1_700_000_000_000, "meet at noon", os.urandom(32))
    dm = open_sealed(B, sealed)
    assert (dm.sender, dm.recipient, dm.timestamp, dm.text) == (
        A.public_key,
        B.public_key,
        1_700_000_000_000,
        "meet at noon",
    )
    assert b"meet at noon" not in sealed and A.public_key not in sealed  # neither text nor sender shows
    for other in (A, C):
        with pytest.raises(SealedError):
            open_sealed(other, sealed)


def test_sealing_is_a_function_of_its_seed_and_opens_with_libsodium() -> None:
    one = seal(A, B.public_key, 5, "x", SEED)
    assert one == seal(A, B.public_key, 5, "x", SEED) != seal(A, B.public_key, 5, "x", bytes(32))
    pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(B.public_key)
    sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(B.seed + B.public_key)
    assert nacl.bindings.crypto_box_seal_open(one, pk, sk)  # libsodium's own sealed box


def test_a_message_re_sealed_to_a_third_party_is_refused() -> None:
    # B received A's message and re-seals the signed inner bytes to C, as if A had written to C.
    pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(B.public_key)
    sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(B.seed + B.public_key)
    inner = nacl.bindings.crypto_box_seal_open(seal(A, B.public_key, 5, "for B only", SEED), pk, sk)
    forwarded = nacl.bindings.crypto_box_seal(
        inner, nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(C.public_key)
    )
    with pytest.raises(SealedError, match="addressed to another key"):
        open_sealed(C, forwarded)


def test_a_forged_signature_is_refused() -> None:
    body = msgpack.packb([A.public_key, B.public_key, 5, "forged"])
    inner = msgpack.packb([body, C.signature(DM_DOMAIN + body)])  # signed by C, claims A
    sealed = nacl.bindings.crypto_box_seal(
        inner, nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(B.public_key)
    )
    with pytest.raises(SealedError, match="signature"):
        open_sealed(B, sealed)


def test_text_bounds() -> None:
    longest = seal(A, B.public_key, 1, "\U0001f600" * MAX_DM_CHARS, SEED)
    assert len(longest) <= MAX_SEALED_BYTES
    assert open_sealed(B, longest).text == "\U0001f600" * MAX_DM_CHARS
    for bad in ("", "   ", "x" * (MAX_DM_CHARS + 1)):
        with pytest.raises(ValueError):
            seal(A, B.public_key, 1, bad, SEED)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=MAX_SEALED_BYTES + 10))
def test_opening_arbitrary_bytes_raises_only_sealed_error(data: bytes) -> None:
    with pytest.raises(SealedError):
        open_sealed(B, data)


def test_dm_messages_round_trip_and_bad_ones_are_refused() -> None:
    sealed = seal(A, B.public_key, 1, "hi", SEED)
    for message in (Dm(B.public_key, sealed, b"\x01\x02"), DmAck(dm_id(sealed), DmStatus.HELD, 0)):
        assert decode_message(encode_message(message)) == message
    assert decode_message(msgpack.packb([17, dm_id(sealed), 200, 0])) == DmAck(dm_id(sealed), 200, 0)
    for bad in (
        [16, B.public_key, b"short", b""],
        [16, B.public_key[:31], sealed, b""],
        [16, B.public_key, sealed + bytes(MAX_SEALED_BYTES), b""],
        [17, b"x" * 31, 0, 0],
        [16, B.public_key, sealed],
    ):
        with pytest.raises(GossipDecodeError):
            decode_message(msgpack.packb(bad))


# --- between nodes ------------------------------------------------------------------------------


Net = Callable[..., tuple[Wire, dict[str, NodeCore]]]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """Builds NodeCores named from "abcd" (by default), all joined through "c"."""
    yield from wire_net(tmp_path, NAMES, HOST, hub="c", seed_offset=100, default="abcd")


def states(core: NodeCore, peer: bytes) -> list[tuple[str, str, str]]:
    return [(row.folder, row.text, row.state) for row in core.store.dm_thread(peer)]


def test_a_message_from_someone_followed_lands_in_the_inbox_and_is_delivered(net: Net) -> None:
    wire, cores = net("abc")
    a, b = cores["a"], cores["b"]
    b.follow(A.public_key, wire.now)
    wire.advance(5)
    did = a.send_dm(B.public_key, "hello B", wire.now)
    wire.advance(5)
    assert states(b, A.public_key) == [("inbox", "hello B", "")]
    assert states(a, B.public_key) == [("sent", "hello B", "delivered")]
    assert [e for e in wire.events_of("b", DmStored)] == [DmStored(A.public_key, did, "inbox")]
    assert DmStateChanged(did, B.public_key, "delivered") in wire.events_of("a", DmStateChanged)
    assert a.store.dm_outbox() == [] and b.store.dm_unread() == 1
    assert b.store.dm_mark_read(A.public_key) == 1 and b.store.dm_unread() == 0
    # Nothing of it is in any feed.
    for core in (a, b):
        for feed in (A.public_key, B.public_key):
            assert all(b"hello B" not in item.entry.raw for item in core.store.feed(feed))


def test_a_stranger_needs_a_stamp_and_lands_in_requests(net: Net) -> None:
    wire, cores = net("abc")
    a, b = cores["a"], cores["b"]
    sealed = seal(A, B.public_key, int(wire.now * 1000), "buy my stuff", SEED)
    # Without a stamp: refused, asked for work, nothing stored.
    assert b.dms.arrived(DmArrived(A.public_key, B.public_key, sealed, b""), wire.now) == (
        DmStatus.NEED_WORK,
        16,
    )
    assert b.store.dm_thread(A.public_key) == []
    assert b.mention_stats["dms.refused_work"] == 1
    # Through the node, with the stamp it makes: admitted, in requests.
    a.send_dm(B.public_key, "hello stranger", wire.now)
    wire.advance(5)
    assert states(b, A.public_key) == [("requests", "hello stranger", "")]
    assert states(a, B.public_key) == [("sent", "hello stranger", "delivered")]


def test_a_recipient_asking_more_work_is_paid_once(net: Net) -> None:
    wire, cores = net("abc")
    a, b = cores["a"], cores["b"]
    b.dms.work = 21  # more than the 16 bits A stamps with (A pays up to 24)
    a.send_dm(B.public_key, "worth it", wire.now)
    wire.advance(10)
    assert b.mention_stats["dms.refused_work"] >= 1
    assert states(b, A.public_key) == [("requests", "worth it", "")]
    assert states(a, B.public_key)[0][2] == "delivered"


def test_a_blocked_sender_is_refused_and_its_message_not_stored(net: Net) -> None:
    wire, cores = net("abc")
    b = cores["b"]
    b.block(A.public_key, wire.now)
    sealed = seal(A, B.public_key, int(wire.now * 1000), "let me in", SEED)
    # A relayed copy (through C) is refused too: the sender is inside the seal.
    assert b.dms.arrived(DmArrived(C.public_key, B.public_key, sealed, b""), wire.now)[0] == DmStatus.BLOCKED
    assert b.store.dm_thread(A.public_key) == []
    with pytest.raises(ValueError, match="block"):
        b.send_dm(A.public_key, "no", wire.now)


def test_a_flood_from_one_peer_is_rate_limited(net: Net) -> None:
    wire, cores = net("abc")
    b = cores["b"]
    results = [
        b.dms.arrived(
            DmArrived(C.public_key, B.public_key, seal(A, B.public_key, i, "spam", SEED), b""), wire.now
        )[0]
        for i in range(100)
    ]
    assert results.count(DmStatus.RATE_LIMITED) == 100 - 64
    assert b.mention_stats["dms.refused_rate"] == 36


def test_a_follower_holds_a_message_for_an_offline_recipient_and_cannot_read_it(
    net: Net, tmp_path: Path
) -> None:
    wire, cores = net("abcd")
    a, b, d = cores["a"], cores["b"], cores["d"]
    b.follow(A.public_key, wire.now)
    d.follow(B.public_key, wire.now)  # D follows B: D replicates B's feed and announces it
    b.post("B was here", wire.now)
    wire.advance(60)
    assert d.store.latest_seq(B.public_key) == 2  # B's follow of A, then its post
    wire.crash("b")
    did = a.send_dm(B.public_key, "while you were out", wire.now)
    wire.advance(120)  # A finds D as a provider of B's feed, dials it, deposits
    assert states(a, B.public_key) == [("sent", "while you were out", "held by 1")]
    assert d.dms.held_count == 1 and d.store.dm_thread(A.public_key) == []
    wire.crash("a")  # the sender is gone for good
    b2 = NodeCore(B, Random(9), wire.now, store=b.store, random_bytes=Random(19).randbytes)
    wire.restart("b", b2)
    b2.bootstrap([wire.addr("c")], wire.now)
    b2.publish([("udp", HOST["b"], PORT), ("tcp", HOST["b"], PORT)], wire.now)
    wire.advance(120)
    assert states(b2, A.public_key) == [("inbox", "while you were out", "")]
    assert d.dms.held_count == 0 and d.mention_stats["dms.held_delivered"] == 1
    assert d.store.dm_thread(A.public_key) == d.store.dm_thread(B.public_key) == []
    assert did not in {row[0] for row in d.store.dm_held()}


def test_holding_is_only_for_followed_recipients_and_bounded_per_depositor(net: Net) -> None:
    wire, cores = net("abcd")
    d = cores["d"]
    sealed = seal(A, C.public_key, 5, "x", SEED)
    # D does not follow C: it will not hold C's messages.
    assert d.dms.arrived(DmArrived(B.public_key, C.public_key, sealed, b""), wire.now)[0] == DmStatus.REFUSED
    d.follow(B.public_key, wire.now)
    d.dms.work = 1  # cheap stamps for this test
    answers = []
    for i in range(HELD_PER_DEPOSITOR + 5):
        one = seal(A, B.public_key, i, "y", SEED)
        stamp = next(bytes([n]) for n in range(256) if _bits(B.public_key, dm_id(one), bytes([n])) >= 1)
        # Two seconds apart: within the per-peer rate, so the holding bound is what refuses.
        answers.append(d.dms.arrived(DmArrived(A.public_key, B.public_key, one, stamp), wire.now + 2 * i)[0])
    assert answers.count(DmStatus.HELD) == HELD_PER_DEPOSITOR
    assert answers[-5:] == [DmStatus.REFUSED] * 5
    assert d.dms.held_count == HELD_PER_DEPOSITOR == len(d.store.dm_held())


def _bits(recipient: bytes, did: bytes, nonce: bytes) -> int:
    from identity.pow import NOTICE_DOMAIN, notice_subject, work_bits

    return work_bits(NOTICE_DOMAIN, notice_subject(recipient, did), nonce)


def test_undelivered_messages_survive_a_restart(net: Net, tmp_path: Path) -> None:
    wire, cores = net("abc")
    wire.crash("b")
    cores["a"].send_dm(B.public_key, "see you", wire.now)
    wire.advance(30)
    assert len(cores["a"].store.dm_outbox()) == 1
    wire.crash("a")
    a2 = NodeCore(A, Random(7), wire.now, store=cores["a"].store, random_bytes=Random(17).randbytes)
    wire.restart("a", a2)
    b2 = NodeCore(B, Random(8), wire.now, store=cores["b"].store, random_bytes=Random(18).randbytes)
    wire.restart("b", b2)
    for core, name in ((a2, "a"), (b2, "b")):
        core.bootstrap([wire.addr("c")], wire.now)
        core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
    wire.advance(300)
    assert states(b2, A.public_key) == [("requests", "see you", "")]
    assert a2.store.dm_outbox() == [] and states(a2, B.public_key)[0][2] == "delivered"
