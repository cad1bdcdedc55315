"""SecureChannel: handshake, identity binding, framing, limits, timers and fuzzing.

`ChannelPair` links two channels in memory (h11's ConnectionPair);
`RawPeer` is a hand-driven Noise peer that can say what an honest
`SecureChannel` never would (forged proofs, oversized or badly cut frames).
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.noise import TAGLEN, CipherState, HandshakeState, KeyPair
from gossip.transport import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    FRAME_HEADER_BYTES,
    HANDSHAKE_MESSAGE_BYTES,
    MAX_CHUNK_BYTES,
    PROLOGUE,
    STATIC_KEY_CONTEXT,
    ChannelConfig,
    ChannelFailed,
    ChannelState,
    Event,
    FrameReceived,
    HandshakeCompleted,
    SecureChannel,
    identity_proof,
)
from identity.errors import LocalProtocolError
from identity.keys import Identity
from identity.limits import MAX_FRAME_BYTES

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
CAROL = Identity(bytes([3]) * 32)


def rng(seed: int) -> random.Random:
    return random.Random(seed)


def prefixed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def split_prefixed(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = int.from_bytes(data[:2], "big")
        out.append(data[2 : 2 + length])
        data = data[2 + length :]
    return out


def drain(channel: SecureChannel) -> list[Event]:
    events = []
    while (event := channel.next_event()) is not None:
        events.append(event)
    return events


def failures(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, ChannelFailed)]


def frames(events: list[Event]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, FrameReceived)]


@dataclass
class ChannelPair:
    """Two SecureChannels joined by an in-memory, lossless link."""

    client: SecureChannel
    server: SecureChannel
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        *,
        client: Identity = ALICE,
        server: Identity = BOB,
        expected_peer: bytes | None = None,
        now: float = 0.0,
        config: ChannelConfig | None = None,
        seed: int = 0,
    ) -> ChannelPair:
        return cls(
            SecureChannel.initiator(
                client,
                now=now,
                expected_peer=expected_peer,
                config=config,
                random_bytes=rng(seed).randbytes,
            ),
            SecureChannel.responder(server, now=now, config=config, random_bytes=rng(seed + 1).randbytes),
        )

    def pump(self, now: float = 0.0) -> None:
        """Carry bytes both ways until both sides are quiet; collect events."""
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                break
            if to_server:
                self.server.receive_data(to_server, now)
            if to_client:
                self.client.receive_data(to_client, now)
        self.client_events += drain(self.client)
        self.server_events += drain(self.server)

    @classmethod
    def open(cls, *, now: float = 0.0, config: ChannelConfig | None = None) -> ChannelPair:
        pair = cls.make(now=now, config=config)
        pair.pump(now)
        assert pair.client.state is ChannelState.OPEN and pair.server.state is ChannelState.OPEN
        pair.client_events.clear()
        pair.server_events.clear()
        return pair


class RawPeer:
    """A Noise peer driven by hand, speaking p2pblog's wire format."""

    def __init__(self, identity: Identity, *, initiator: bool, seed: int = 9) -> None:
        source = rng(seed)
        self.identity = identity
        self.static = KeyPair.generate(source.randbytes)
        self.handshake = HandshakeState(
            initiator=initiator, prologue=PROLOGUE, static=self.static, random_bytes=source.randbytes
        )
        self.send: CipherState | None = None
        self.recv: CipherState | None = None

    def proof(self) -> bytes:
        return identity_proof(self.identity, self.static.public)

    def write(self, payload: bytes) -> bytes:
        out = prefixed(self.handshake.write_message(payload))
        self._maybe_split()
        return out

    def read(self, data: bytes) -> bytes:
        (message,) = split_prefixed(data)
        payload = self.handshake.read_message(message)
        self._maybe_split()
        return payload

    def _maybe_split(self) -> None:
        if self.handshake.complete and self.send is None:
            to_responder, to_initiator = self.handshake.split()
            if self.handshake.initiator:
                self.send, self.recv = to_responder, to_initiator
            else:
                self.send, self.recv = to_initiator, to_responder

    def transport(self, plaintext: bytes) -> bytes:
        assert self.send is not None
        return prefixed(self.send.encrypt_with_ad(b"", plaintext))


def raw_client_and_server(identity: Identity = ALICE) -> tuple[RawPeer, SecureChannel]:
    """A RawPeer initiator that has finished the handshake with a real responder."""
    raw = RawPeer(identity, initiator=True)
    server = SecureChannel.responder(BOB, now=0.0, random_bytes=rng(1).randbytes)
    server.receive_data(raw.write(b""), 0.0)
    assert raw.read(server.data_to_send()) == identity_proof(BOB, server._static.public)
    server.receive_data(raw.write(raw.proof()), 0.0)
    assert drain(server) == [HandshakeCompleted(identity.public_key)]
    return raw, server


# --------------------------------------------------------------------------- handshake


def test_handshake_completes_and_both_sides_learn_the_right_key() -> None:
    pair = ChannelPair.make()
    assert pair.client.state is ChannelState.HANDSHAKING
    assert (pair.client.peer_key, pair.client.handshake_hash) == (None, None)
    pair.pump()
    assert pair.client_events == [HandshakeCompleted(BOB.public_key)]
    assert pair.server_events == [HandshakeCompleted(ALICE.public_key)]
    assert pair.client.peer_key == BOB.public_key
    assert pair.server.peer_key == ALICE.public_key
    assert pair.client.handshake_hash == pair.server.handshake_hash is not None
    assert pair.client.is_initiator and not pair.server.is_initiator


def test_handshake_messages_on_the_wire() -> None:
    pair = ChannelPair.make()
    message1 = pair.client.data_to_send()
    assert message1[:2] == (32).to_bytes(2, "big") and len(message1) == 2 + 32
    pair.server.receive_data(message1, 0.0)
    message2 = pair.server.data_to_send()
    assert len(message2) == 2 + HANDSHAKE_MESSAGE_BYTES[1] == 2 + 192
    pair.client.receive_data(message2, 0.0)
    message3 = pair.client.data_to_send()
    assert len(message3) == 2 + HANDSHAKE_MESSAGE_BYTES[2] == 2 + 160
    pair.server.receive_data(message3, 0.0)
    assert pair.server.state is ChannelState.OPEN


def test_same_seeds_give_the_same_bytes() -> None:
    def transcript(seed: int) -> list[bytes]:
        pair = ChannelPair.make(seed=seed)
        out = [pair.client.data_to_send()]
        pair.server.receive_data(out[-1], 0.0)
        out.append(pair.server.data_to_send())
        pair.client.receive_data(out[-1], 0.0)
        out.append(pair.client.data_to_send())
        return out

    assert transcript(4) == transcript(4)
    assert transcript(4) != transcript(5)


def test_expected_peer_that_matches_is_accepted() -> None:
    pair = ChannelPair.make(expected_peer=BOB.public_key)
    pair.pump()
    assert pair.client_events == [HandshakeCompleted(BOB.public_key)]


def test_responder_with_another_key_than_dialled_fails() -> None:
    pair = ChannelPair.make(expected_peer=CAROL.public_key)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    pair.client.receive_data(pair.server.data_to_send(), 0.0)
    (failed,) = drain(pair.client)
    assert isinstance(failed, ChannelFailed) and "different identity" in failed.reason
    assert pair.client.state is ChannelState.CLOSED
    assert pair.client.data_to_send() == b""  # message 3 is never sent
    assert pair.client.peer_key is None


def test_forged_identity_signature_fails_the_initiator() -> None:
    client = SecureChannel.initiator(ALICE, now=0.0, random_bytes=rng(10).randbytes)
    raw = RawPeer(BOB, initiator=False)
    raw.read(client.data_to_send())
    forged = BOB.public_key + bytes(64)
    client.receive_data(raw.write(forged), 0.0)
    assert failures(drain(client)) == ["identity proof signature does not verify"]


def test_identity_proof_for_another_static_key_fails() -> None:
    # A man in the middle relays Bob's genuine proof, made for Bob's static
    # key, with a static key of its own: the signature no longer matches.
    client = SecureChannel.initiator(
        ALICE, now=0.0, expected_peer=BOB.public_key, random_bytes=rng(11).randbytes
    )
    mallory = RawPeer(CAROL, initiator=False)
    mallory.read(client.data_to_send())
    bobs_proof = identity_proof(BOB, KeyPair.generate(rng(77).randbytes).public)
    client.receive_data(mallory.write(bobs_proof), 0.0)
    assert failures(drain(client)) == ["identity proof signature does not verify"]


def test_signature_without_the_context_prefix_fails() -> None:
    client = SecureChannel.initiator(ALICE, now=0.0, random_bytes=rng(12).randbytes)
    raw = RawPeer(BOB, initiator=False)
    raw.read(client.data_to_send())
    proof = BOB.public_key + BOB.signature(raw.static.public)
    client.receive_data(raw.write(proof), 0.0)
    assert failures(drain(client)) == ["identity proof signature does not verify"]
    assert STATIC_KEY_CONTEXT == b"p2pblog-noise-static-key:"


def test_forged_identity_signature_fails_the_responder() -> None:
    raw = RawPeer(ALICE, initiator=True)
    server = SecureChannel.responder(BOB, now=0.0, random_bytes=rng(13).randbytes)
    server.receive_data(raw.write(b""), 0.0)
    raw.read(server.data_to_send())
    signature = bytearray(raw.proof())
    signature[-1] ^= 1
    server.receive_data(raw.write(bytes(signature)), 0.0)
    assert failures(drain(server)) == ["identity proof signature does not verify"]
    assert server.state is ChannelState.CLOSED


def test_identity_proof_of_the_wrong_length_fails() -> None:
    client = SecureChannel.initiator(ALICE, now=0.0, random_bytes=rng(14).randbytes)
    raw = RawPeer(BOB, initiator=False)
    raw.read(client.data_to_send())
    client.receive_data(raw.write(raw.proof() + b"x"), 0.0)
    # One byte longer than the fixed-size message 2: refused by its length prefix.
    assert failures(drain(client)) == ["handshake message of 193 bytes, expected 192"]


def test_wrong_handshake_length_fails_before_the_body_arrives() -> None:
    server = SecureChannel.responder(BOB, now=0.0, random_bytes=rng(15).randbytes)
    server.receive_data(b"\xff\xff", 0.0)
    assert failures(drain(server)) == ["handshake message of 65535 bytes, expected 32"]


def test_low_order_ephemeral_key_fails_the_responder() -> None:
    server = SecureChannel.responder(BOB, now=0.0, random_bytes=rng(16).randbytes)
    server.receive_data(prefixed(bytes(32)), 0.0)
    (failed,) = drain(server)
    assert isinstance(failed, ChannelFailed) and "low-order" in failed.reason
    assert server.data_to_send() == b""


def test_tampered_handshake_message_fails() -> None:
    pair = ChannelPair.make()
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    message2 = bytearray(pair.server.data_to_send())
    message2[100] ^= 0x01
    pair.client.receive_data(bytes(message2), 0.0)
    (failed,) = drain(pair.client)
    assert isinstance(failed, ChannelFailed) and "handshake message 2" in failed.reason


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize(
    "size",
    [0, 1, 100_000, MAX_FRAME_BYTES]
    + [MAX_CHUNK_BYTES - FRAME_HEADER_BYTES + d for d in (-1, 0, 1)]
    + [2 * MAX_CHUNK_BYTES - FRAME_HEADER_BYTES + d for d in (-1, 0, 1)],
)
def test_frames_round_trip_both_ways(size: int) -> None:
    pair = ChannelPair.open()
    payload = random.Random(size).randbytes(size)
    pair.client.send_frame(payload, 1.0)
    pair.server.send_frame(payload[::-1], 1.0)
    pair.pump(1.0)
    assert pair.server_events == [FrameReceived(payload)]
    assert pair.client_events == [FrameReceived(payload[::-1])]


def test_chunking_on_the_wire() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"x" * MAX_FRAME_BYTES, 0.0)
    messages = split_prefixed(pair.client.data_to_send())
    total = FRAME_HEADER_BYTES + MAX_FRAME_BYTES
    assert len(messages) == -(-total // MAX_CHUNK_BYTES) == 17
    assert all(len(m) == MAX_CHUNK_BYTES + TAGLEN == 65535 for m in messages[:-1])
    assert len(messages[-1]) == total - 16 * MAX_CHUNK_BYTES + TAGLEN
    pair.client.send_frame(b"", 0.0)
    (empty,) = split_prefixed(pair.client.data_to_send())
    assert len(empty) == FRAME_HEADER_BYTES + TAGLEN


def test_several_frames_in_one_read_keep_their_order() -> None:
    pair = ChannelPair.open()
    payloads = [bytes([i]) * (i * 1000) for i in range(10)]
    for payload in payloads:
        pair.client.send_frame(payload, 0.0)
    pair.pump()
    assert frames(pair.server_events) == payloads


def test_send_frame_over_the_limit_is_our_bug() -> None:
    pair = ChannelPair.open()
    with pytest.raises(LocalProtocolError, match="over the"):
        pair.client.send_frame(b"x" * (MAX_FRAME_BYTES + 1), 0.0)
    assert pair.client.state is ChannelState.OPEN


def test_send_frame_before_the_handshake_or_after_close_raises() -> None:
    pair = ChannelPair.make()
    with pytest.raises(LocalProtocolError, match="handshaking"):
        pair.client.send_frame(b"early", 0.0)
    pair.pump()
    pair.client.close()
    assert pair.client.state is ChannelState.CLOSED and pair.client.get_timer() is None
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send_frame(b"late", 0.0)


def test_close_keeps_queued_output_and_ignores_input() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"last words", 0.0)
    pair.client.close()
    pair.client.close()  # idempotent
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert drain(pair.server) == [FrameReceived(b"last words")]
    pair.server.send_frame(b"ignored", 0.0)
    pair.client.receive_data(pair.server.data_to_send(), 0.0)
    assert drain(pair.client) == []


def test_over_limit_frame_from_peer_fails_on_its_first_chunk() -> None:
    raw, server = raw_client_and_server()
    header = (MAX_FRAME_BYTES + 1).to_bytes(FRAME_HEADER_BYTES, "big")
    first_chunk = raw.transport(header + bytes(MAX_CHUNK_BYTES - FRAME_HEADER_BYTES))
    server.receive_data(first_chunk, 1.0)
    assert failures(drain(server)) == [f"frame of {MAX_FRAME_BYTES + 1} bytes over the 1048576-byte limit"]
    assert server.state is ChannelState.CLOSED
    assert len(server._frame) == 0 and len(server._inbound) == 0
    server.receive_data(raw.transport(bytes(100)), 1.0)  # ignored from now on
    assert drain(server) == []


def test_frame_header_of_four_gigabytes_fails_at_once() -> None:
    raw, server = raw_client_and_server()
    server.receive_data(raw.transport(b"\xff\xff\xff\xff"), 1.0)
    assert failures(drain(server)) == [f"frame of {2**32 - 1} bytes over the 1048576-byte limit"]


def test_frame_of_exactly_the_limit_is_accepted_from_a_raw_peer() -> None:
    raw, server = raw_client_and_server()
    data = MAX_FRAME_BYTES.to_bytes(FRAME_HEADER_BYTES, "big") + b"z" * MAX_FRAME_BYTES
    for start in range(0, len(data), MAX_CHUNK_BYTES):
        server.receive_data(raw.transport(data[start : start + MAX_CHUNK_BYTES]), 1.0)
    assert drain(server) == [FrameReceived(b"z" * MAX_FRAME_BYTES)]


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b"\x00\x00"], "first chunk shorter than the frame header"),
        ([(5).to_bytes(4, "big") + b"123456"], "chunk runs past the end of its frame"),
        ([(70_000).to_bytes(4, "big") + b"short"], "short chunk before the end of a frame"),
        (
            [(70_000).to_bytes(4, "big") + bytes(MAX_CHUNK_BYTES - 4), b""],
            "short chunk before the end of a frame",
        ),
        (
            [(70_000).to_bytes(4, "big") + bytes(MAX_CHUNK_BYTES - 4), bytes(70_000 - MAX_CHUNK_BYTES + 5)],
            "chunk runs past the end of its frame",
        ),
    ],
)
def test_badly_cut_frames_fail(chunks: list[bytes], reason: str) -> None:
    raw, server = raw_client_and_server()
    for chunk in chunks:
        server.receive_data(raw.transport(chunk), 1.0)
    assert failures(drain(server)) == [reason]


def test_keepalive_between_frames_is_accepted() -> None:
    raw, server = raw_client_and_server()
    server.receive_data(raw.transport(b""), 1.0)
    server.receive_data(raw.transport((2).to_bytes(4, "big") + b"hi"), 2.0)
    server.receive_data(raw.transport(b""), 3.0)
    assert drain(server) == [FrameReceived(b"hi")]


def test_short_transport_message_fails_by_its_length_prefix() -> None:
    _, server = raw_client_and_server()
    server.receive_data(prefixed(bytes(TAGLEN - 1)), 1.0)
    assert failures(drain(server)) == ["transport message of 15 bytes is shorter than its tag"]


# --------------------------------------------------------------------------- tampering, replay, reordering


def test_tampered_ciphertext_fails() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"hello", 0.0)
    wire = bytearray(pair.client.data_to_send())
    wire[5] ^= 0x20
    pair.server.receive_data(bytes(wire), 0.0)
    (failed,) = drain(pair.server)
    assert isinstance(failed, ChannelFailed) and "tampered, replayed or reordered" in failed.reason


def test_replayed_message_fails() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"once", 0.0)
    wire = pair.client.data_to_send()
    pair.server.receive_data(wire, 0.0)
    pair.server.receive_data(wire, 0.0)
    events = drain(pair.server)
    assert events[0] == FrameReceived(b"once")
    assert isinstance(events[1], ChannelFailed) and len(events) == 2


def test_reordered_messages_fail() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"first", 0.0)
    first = pair.client.data_to_send()
    pair.client.send_frame(b"second", 0.0)
    second = pair.client.data_to_send()
    pair.server.receive_data(second + first, 0.0)
    (failed,) = drain(pair.server)
    assert isinstance(failed, ChannelFailed)


def test_dropped_message_fails_the_next_one() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"lost", 0.0)
    pair.client.data_to_send()
    pair.client.send_frame(b"next", 0.0)
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert len(failures(drain(pair.server))) == 1


def test_frames_before_a_bad_message_are_still_delivered() -> None:
    pair = ChannelPair.open()
    pair.client.send_frame(b"good", 0.0)
    pair.server.receive_data(pair.client.data_to_send() + prefixed(bytes(40)), 0.0)
    events = drain(pair.server)
    assert events[0] == FrameReceived(b"good") and isinstance(events[1], ChannelFailed)
    assert pair.server.next_event() is None


# --------------------------------------------------------------------------- timers


def test_handshake_timeout() -> None:
    server = SecureChannel.responder(BOB, now=100.0, random_bytes=rng(17).randbytes)
    assert server.get_timer() == 110.0
    server.handle_timer(109.9)
    assert drain(server) == []
    server.handle_timer(110.0)
    assert failures(drain(server)) == ["handshake not finished within 10 s"]
    assert server.get_timer() is None
    server.handle_timer(200.0)
    assert drain(server) == []


def test_handshake_timeout_is_not_reset_by_progress() -> None:
    pair = ChannelPair.make(now=0.0)
    pair.server.receive_data(pair.client.data_to_send(), 9.0)
    assert pair.server.get_timer() == 10.0
    pair.server.handle_timer(10.0)
    assert len(failures(drain(pair.server))) == 1


def test_idle_timeout_when_the_peer_goes_silent() -> None:
    # The defaults are the deployed-system intervals (docs/design.md, "protocol
    # intervals"): a keepalive after 120 s without sending, like Bitcoin's ping,
    # and a peer that sent nothing for 480 s is dropped (a half-open connection).
    assert (DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_IDLE_TIMEOUT) == (120.0, 480.0)
    pair = ChannelPair.open(now=0.0)
    client = pair.client
    assert client.get_timer() == 120.0  # keepalive first
    client.handle_timer(119.0)
    assert client.data_to_send() == b""  # no traffic yet: nothing to send
    client.handle_timer(120.0)
    assert len(split_prefixed(client.data_to_send())) == 1  # one keepalive
    assert client.get_timer() == 240.0
    client.handle_timer(240.0)
    client.handle_timer(360.0)
    assert len(split_prefixed(client.data_to_send())) == 2
    assert client.get_timer() == 480.0
    client.handle_timer(479.0)
    assert drain(client) == [] and client.state is ChannelState.OPEN
    client.handle_timer(480.0)
    assert failures(drain(client)) == ["nothing received for 480 s"]
    assert client.state is ChannelState.CLOSED and client.get_timer() is None


def test_traffic_resets_the_idle_timer() -> None:
    pair = ChannelPair.open(now=0.0)
    pair.server.send_frame(b"ping", 100.0)
    pair.pump(100.0)
    assert pair.client.get_timer() == 120.0  # we still owe a keepalive
    pair.client.send_frame(b"pong", 100.0)
    assert pair.client.get_timer() == 220.0
    pair.client.handle_timer(220.0)
    assert pair.client.get_timer() == 340.0
    assert pair.client._last_received + 480.0 == 580.0
    pair.client.handle_timer(579.0)
    assert pair.client.state is ChannelState.OPEN
    pair.client.handle_timer(580.0)
    assert pair.client.state is ChannelState.CLOSED


def test_keepalives_keep_two_live_peers_open() -> None:
    pair = ChannelPair.open(now=0.0, config=ChannelConfig(idle_timeout=12.0, keepalive_interval=4.0))
    now = 0.0
    while now < 1000.0:
        deadline = min(t for t in (pair.client.get_timer(), pair.server.get_timer()) if t is not None)
        now = deadline
        pair.client.handle_timer(now)
        pair.server.handle_timer(now)
        pair.pump(now)
    assert pair.client_events == [] and pair.server_events == []
    assert pair.client.state is ChannelState.OPEN and pair.server.state is ChannelState.OPEN


def test_garbage_does_not_reset_the_idle_timer() -> None:
    pair = ChannelPair.open(now=0.0)
    pair.server.receive_data(b"\x00", 50.0)  # half a length prefix: not authentic traffic
    assert pair.server._last_received == 0.0


def test_bad_config_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ChannelConfig(idle_timeout=10.0, keepalive_interval=10.0)
    with pytest.raises(LocalProtocolError):
        ChannelConfig(handshake_timeout=0.0)
    with pytest.raises(LocalProtocolError):
        SecureChannel.initiator(ALICE, now=0.0, expected_peer=b"short", random_bytes=rng(18).randbytes)


# --------------------------------------------------------------------------- byte-by-byte and fuzzing


def test_byte_by_byte_delivery() -> None:
    pair = ChannelPair.make()
    payload = random.Random(1).randbytes(5000)

    def trickle(data: bytes, to: SecureChannel) -> None:
        for i in range(len(data)):
            to.receive_data(data[i : i + 1], 0.0)

    trickle(pair.client.data_to_send(), pair.server)
    trickle(pair.server.data_to_send(), pair.client)
    pair.client.send_frame(payload, 0.0)
    pair.client.send_frame(b"", 0.0)
    trickle(pair.client.data_to_send(), pair.server)
    assert drain(pair.server) == [
        HandshakeCompleted(ALICE.public_key),
        FrameReceived(payload),
        FrameReceived(b""),
    ]
    assert drain(pair.client) == [HandshakeCompleted(BOB.public_key)]


@dataclass(frozen=True)
class Transcript:
    """Everything each side of a seeded session sends, and the frames it carries."""

    to_server: bytes
    to_client: bytes
    client_frames: tuple[bytes, ...]
    server_frames: tuple[bytes, ...]
    #: Where each side's stream leaves the handshake (prefix lengths).
    to_server_handshake: tuple[int, ...]
    to_client_handshake: tuple[int, ...]


SEED = 42
FRAMES_FROM_CLIENT = (b"", b"clock", bytes(range(256)) * 300, b"tail")
FRAMES_FROM_SERVER = (b"entries", bytes(70_000), b"end")


def fresh(role: str) -> SecureChannel:
    if role == "client":
        return SecureChannel.initiator(ALICE, now=0.0, random_bytes=rng(SEED).randbytes)
    return SecureChannel.responder(BOB, now=0.0, random_bytes=rng(SEED + 1).randbytes)


@functools.cache
def transcript() -> Transcript:
    client, server = fresh("client"), fresh("server")
    message1 = client.data_to_send()
    server.receive_data(message1, 0.0)
    message2 = server.data_to_send()
    client.receive_data(message2, 0.0)
    message3 = client.data_to_send()
    server.receive_data(message3, 0.0)
    for i, payload in enumerate(FRAMES_FROM_CLIENT):
        client.send_frame(payload, 0.0)
        if i == 1:
            client.handle_timer(30.0)  # a keepalive in the middle of the stream
    for payload in FRAMES_FROM_SERVER:
        server.send_frame(payload, 0.0)
    return Transcript(
        to_server=message1 + message3 + client.data_to_send(),
        to_client=message2 + server.data_to_send(),
        client_frames=FRAMES_FROM_CLIENT,
        server_frames=FRAMES_FROM_SERVER,
        to_server_handshake=(0, len(message1), len(message1) + len(message3)),
        to_client_handshake=(0, len(message2)),
    )


def stream_for(role: str) -> tuple[bytes, tuple[bytes, ...], bytes, tuple[int, ...]]:
    """What ``role`` receives: the bytes, the frames they carry, the peer's key, state starts."""
    t = transcript()
    if role == "client":
        return t.to_client, t.server_frames, BOB.public_key, t.to_client_handshake
    return t.to_server, t.client_frames, ALICE.public_key, t.to_server_handshake


def feed(channel: SecureChannel, data: bytes, cuts: list[int]) -> list[Event]:
    """Deliver data in pieces cut at ``cuts``; nothing may raise."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        channel.receive_data(data[start:end], 0.0)
    return drain(channel)


def check_events(
    channel: SecureChannel, events: list[Event], genuine: tuple[bytes, ...], peer: bytes
) -> bool:
    """The invariants of any delivery; returns whether the channel failed."""
    failed = False
    got: list[bytes] = []
    for event in events:
        assert not failed, "no event may follow ChannelFailed"
        assert isinstance(event, HandshakeCompleted | FrameReceived | ChannelFailed)
        if isinstance(event, HandshakeCompleted):
            assert event.peer_key == peer
        elif isinstance(event, FrameReceived):
            got.append(event.payload)
        else:
            failed = True
    assert tuple(got) == genuine[: len(got)], "only genuine frames, in order"
    assert failed == (channel.state is ChannelState.CLOSED)
    return failed


def test_genuine_transcript_replays() -> None:
    for role in ("client", "server"):
        data, genuine, peer, _ = stream_for(role)
        channel = fresh(role)
        events = feed(channel, data, [])
        assert not check_events(channel, events, genuine, peer)
        assert frames(events) == list(genuine)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
roles = st.sampled_from(["client", "server"])
cuts = st.lists(st.integers(min_value=0), max_size=8)


@FUZZ
@given(role=roles, state=st.integers(min_value=0, max_value=3), junk=st.binary(max_size=2000), cut=cuts)
def test_random_bytes_in_any_state_only_fail_the_channel(
    role: str, state: int, junk: bytes, cut: list[int]
) -> None:
    # States reached by a genuine prefix: the server fresh, awaiting message 3,
    # open, open after all frames; the client awaiting message 2, open, open
    # after all frames.
    data, genuine, peer, starts = stream_for(role)
    prefixes = (*starts, len(data))
    channel = fresh(role)
    events = feed(channel, data[: prefixes[state % len(prefixes)]], [])
    events += feed(channel, junk, cut)
    check_events(channel, events, genuine, peer)


@FUZZ
@given(role=roles, length=st.integers(min_value=0), cut=cuts)
def test_truncated_streams_never_fail(role: str, length: int, cut: list[int]) -> None:
    data, genuine, peer, _ = stream_for(role)
    channel = fresh(role)
    events = feed(channel, data[: length % (len(data) + 1)], cut)
    assert not check_events(channel, events, genuine, peer)


@FUZZ
@given(
    role=roles,
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 7)), min_size=1, max_size=3),
    cut=cuts,
)
def test_bit_flips_never_deliver_a_wrong_frame(
    role: str, flips: list[tuple[int, int]], cut: list[int]
) -> None:
    data, genuine, peer, _ = stream_for(role)
    corrupted = bytearray(data)
    for position, bit in flips:
        corrupted[position % len(corrupted)] ^= 1 << bit
    if bytes(corrupted) == data:  # flips that cancel out
        return
    channel = fresh(role)
    events = feed(channel, bytes(corrupted), cut)
    failed = check_events(channel, events, genuine, peer)
    # The stream ends with a frame, so any corruption keeps it from arriving.
    assert failed or len(frames(events)) < len(genuine)


@FUZZ
@given(role=roles, cut=st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunking_gives_the_same_events(role: str, cut: list[int]) -> None:
    data, genuine, peer, _ = stream_for(role)
    channel = fresh(role)
    events = feed(channel, data, cut)
    assert events == [HandshakeCompleted(peer), *(FrameReceived(f) for f in genuine)]
