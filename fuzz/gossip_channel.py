"""Fuzz `gossip.transport.SecureChannel`'s receive path: a responder fed a stranger's bytes.

Run: ``python fuzz/gossip_channel.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

Random bytes cannot get past Noise (message 3 and every transport message
are authenticated), so the first byte of an input picks one of two modes:

* even: **stranger**.  The rest is what a dialler wrote to our listening
  socket, delivered to a fresh responder in pieces of ``data[1]`` bytes
  (0 = all at once).  This covers the length prefixes and handshake message 1.
* odd: **authenticated peer**.  A fixed initiator (`PEER`) completes the
  handshake first: messages 1 and 3 are replayed from a handshake done once
  at start-up (both ends' keys and randomness are fixed, so the responder's
  message 2, and hence 3, are the same every run).  With bit 1 of the mode
  byte set (`FORGED_PROOF`), the next 96 input bytes are the identity proof
  the peer sends in message 3 instead (the handshake then runs for real, so
  message 3 authenticates and the proof check itself is fuzzed).  The rest
  of the input is a program of records, each a tag byte then its operands:

  ====  ====================================================================
  tag   record (``tag & 3``; ``tag & 0x80`` delivers the message in 2 halves)
  ====  ====================================================================
  0     plaintext: 2-byte length L, then L bytes (up to what is left), which
        the peer encrypts with its real transport key and sends
  1     a full-size chunk of one repeated byte; with ``tag & 4`` it is a
        first chunk whose 4-byte frame total comes from the input, so a
        short input builds frames up to 1 MiB
  2     raw bytes: a 1-byte length n, then n bytes sent unencrypted
  3     time: ``tag >> 2`` times 8 seconds pass, then `handle_timer`
  ====  ====================================================================

The contract, checked after every input the channel takes: `receive_data`
and `handle_timer` never raise; events are `HandshakeCompleted` (first and
once), `FrameReceived` and `ChannelFailed`, nothing follows a failure, and
a failure closes the channel; a frame is at most `MAX_FRAME_BYTES`; and
(round trip) a frame built from the peer's encrypted records alone arrived
from exactly the chunks an honest `send_frame` cuts it into, since a frame
has one encoding.
"""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass, field

import atheris
from launch import run, use_checkout

use_checkout()

with atheris.instrument_imports(include=["gossip", "identity"]):
    from gossip.noise import CipherState, HandshakeState, KeyPair
    from gossip.transport import (
        FRAME_HEADER_BYTES,
        LENGTH_PREFIX_BYTES,
        MAX_CHUNK_BYTES,
        PROLOGUE,
        ChannelFailed,
        ChannelState,
        FrameReceived,
        HandshakeCompleted,
        SecureChannel,
        identity_proof,
    )
    from identity import Identity
    from identity.limits import MAX_FRAME_BYTES

#: The dialler of the authenticated mode, and the node under test.
PEER = Identity(bytes([1]) * 32)
NODE = Identity(bytes([2]) * 32)
PEER_STATIC = KeyPair.from_private(bytes([3]) * 32)
PEER_EPHEMERAL = KeyPair.from_private(bytes([4]) * 32)
NODE_STATIC_PRIVATE = bytes([5]) * 32
#: Seeds the responder's ephemeral key, the same every run.
NODE_RANDOM_SEED = 6
#: Seconds each unit of a time record moves the clock (the keepalive is 30 s, idle 120 s).
TIME_STEP = 8.0
MAX_LEN = 16 * 1024

STRANGER, AUTHENTICATED, FORGED_PROOF = 0, 1, 2
PLAINTEXT, FULL_CHUNK, RAW, TIME = 0, 1, 2, 3
FIRST_CHUNK_FLAG, SPLIT_FLAG = 0x04, 0x80


def prefixed(message: bytes) -> bytes:
    return len(message).to_bytes(LENGTH_PREFIX_BYTES, "big") + message


def new_responder() -> SecureChannel:
    return SecureChannel.responder(
        NODE,
        now=0.0,
        static_key=NODE_STATIC_PRIVATE,
        random_bytes=random.Random(NODE_RANDOM_SEED).randbytes,
    )


def handshake(node: SecureChannel, proof: bytes) -> tuple[bytes, bytes, CipherState]:
    """Run `PEER`'s side of the handshake with ``node``, sending ``proof`` in message 3.

    Returns messages 1 and 3 as sent, and PEER's send cipher."""
    peer = HandshakeState(
        initiator=True,
        prologue=PROLOGUE,
        static=PEER_STATIC,
        ephemeral=PEER_EPHEMERAL,
        random_bytes=random.Random(0).randbytes,
    )
    message1 = prefixed(peer.write_message(b""))
    node.receive_data(message1, 0.0)
    message2 = node.data_to_send()
    peer.read_message(message2[LENGTH_PREFIX_BYTES:])
    message3 = prefixed(peer.write_message(proof))
    node.receive_data(message3, 0.0)
    to_responder, _ = peer.split()
    return message1, message3, to_responder


PEER_PROOF = identity_proof(PEER, PEER_STATIC.public)
MESSAGE1, MESSAGE3, PEER_SEND_CIPHER = handshake(new_responder(), PEER_PROOF)


def honest_chunks(payload: bytes) -> list[bytes]:
    """The plaintexts `SecureChannel.send_frame` cuts a frame into."""
    data = len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload
    return [data[i : i + MAX_CHUNK_BYTES] for i in range(0, len(data), MAX_CHUNK_BYTES)]


@dataclass
class Observer:
    """Feeds one channel and checks the contract after every input."""

    channel: SecureChannel
    now: float = 0.0
    opened: bool = False
    failed: bool = False
    #: Plaintexts of the peer's records since the last frame; None once raw bytes were mixed in.
    chunks: list[bytes] | None = field(default_factory=list)

    def feed(self, data: bytes, *, split: bool = False) -> None:
        if split and len(data) > 1:
            self.channel.receive_data(data[: len(data) // 2], self.now)
            self.channel.receive_data(data[len(data) // 2 :], self.now)
        else:
            self.channel.receive_data(data, self.now)
        self.drain()

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.channel.handle_timer(self.now)
        self.drain()

    def drain(self) -> None:
        self.channel.data_to_send()  # keepalives; nobody reads them
        while (event := self.channel.next_event()) is not None:
            assert not self.failed, f"{event!r} after the channel failed"
            if isinstance(event, HandshakeCompleted):
                assert not self.opened, "two HandshakeCompleted"
                assert event.peer_key == PEER.public_key
                self.opened = True
            elif isinstance(event, FrameReceived):
                assert self.opened, "a frame before the handshake"
                assert len(event.payload) <= MAX_FRAME_BYTES
                if self.chunks is not None:
                    assert self.chunks == honest_chunks(event.payload), "a frame with a second encoding"
                self.chunks = []
            else:
                assert isinstance(event, ChannelFailed), f"undeclared event {event!r}"
                self.failed = True
        assert self.failed == (self.channel.state is ChannelState.CLOSED)

    def note_plaintext(self, plaintext: bytes) -> None:
        if self.chunks is not None and (plaintext or self.chunks):
            self.chunks.append(plaintext)


def run_stranger(data: bytes) -> None:
    observer = Observer(new_responder())
    piece = data[0] if data else 0
    body = data[1:]
    step = piece or max(len(body), 1)
    for start in range(0, len(body), step):
        observer.feed(body[start : start + step])
    observer.tick(3600.0)  # past every timeout: whatever state it reached, it fails now
    assert observer.failed


def run_authenticated(program: bytes, *, forged: bool) -> None:
    observer = Observer(new_responder())
    if forged:
        proof = program[: len(PEER_PROOF)].ljust(len(PEER_PROOF), b"\x00")
        program = program[len(PEER_PROOF) :]
        _, _, cipher = handshake(observer.channel, proof)
        observer.drain()
        # Only the real proof opens the channel: another one that verifies would be a
        # forged or malleable Ed25519 signature, or a proof not bound to PEER_STATIC.
        assert observer.opened == (proof == PEER_PROOF) and observer.failed != observer.opened
    else:
        observer.feed(MESSAGE1)
        observer.feed(MESSAGE3)
        assert observer.opened
        cipher = copy.copy(PEER_SEND_CIPHER)
    pos = 0
    while pos < len(program) and not observer.failed:
        tag = program[pos]
        pos += 1
        op = tag & 3
        if op == TIME:
            observer.tick((tag >> 2) * TIME_STEP)
            continue
        if op == RAW:
            n = program[pos] if pos < len(program) else 0
            raw = program[pos + 1 : pos + 1 + n]
            pos += 1 + n
            observer.chunks = None
            observer.feed(raw, split=bool(tag & SPLIT_FLAG))
            continue
        if op == PLAINTEXT:
            length = int.from_bytes(program[pos : pos + 2], "big") % (MAX_CHUNK_BYTES + 1)
            plaintext = program[pos + 2 : pos + 2 + length]
            pos += 2 + length
        elif tag & FIRST_CHUNK_FLAG:
            header = program[pos : pos + FRAME_HEADER_BYTES].ljust(FRAME_HEADER_BYTES, b"\x00")
            pos += FRAME_HEADER_BYTES
            plaintext = header + bytes([tag >> 3]) * (MAX_CHUNK_BYTES - FRAME_HEADER_BYTES)
        else:
            plaintext = bytes([tag >> 3]) * MAX_CHUNK_BYTES
        observer.note_plaintext(plaintext)
        observer.feed(prefixed(cipher.encrypt_with_ad(b"", plaintext)), split=bool(tag & SPLIT_FLAG))


def check(data: bytes) -> None:
    if not data or data[0] & 1 == STRANGER:
        run_stranger(data[1:])
    else:
        run_authenticated(data[1:], forged=bool(data[0] & FORGED_PROOF))


def _plaintext_record(plaintext: bytes) -> bytes:
    return bytes([PLAINTEXT]) + len(plaintext).to_bytes(2, "big") + plaintext


def seeds() -> list[bytes]:
    """The real handshake as a stranger's bytes, and programs that send frames small and large."""
    small = b"".join(_plaintext_record(chunk) for chunk in honest_chunks(b"\x92\x00\x80"))
    keepalive = _plaintext_record(b"")
    big_total = (2 * MAX_CHUNK_BYTES).to_bytes(FRAME_HEADER_BYTES, "big")
    big = bytes([FULL_CHUNK | FIRST_CHUNK_FLAG | 0x78]) + big_total + bytes([FULL_CHUNK | 0x78])
    # Two full chunks carried all but the 4 bytes the first chunk's header took.
    tail = _plaintext_record(bytes(FRAME_HEADER_BYTES))
    return [
        bytes([STRANGER, 0]) + MESSAGE1 + MESSAGE3,
        bytes([STRANGER, 7]) + MESSAGE1,
        bytes([AUTHENTICATED]) + small + keepalive + small,
        bytes([AUTHENTICATED]) + keepalive + bytes([TIME | 4 << 2]) + small + bytes([TIME | 20 << 2]),
        bytes([AUTHENTICATED]) + big + tail,
        bytes([AUTHENTICATED, RAW, 3, 0, 20, 1]) + small,
        bytes([AUTHENTICATED | FORGED_PROOF]) + PEER_PROOF + small,
        bytes([AUTHENTICATED | FORGED_PROOF]) + PEER_PROOF[:-1] + b"\x00" + small,
    ]


def main() -> None:
    run("gossip_channel", check, seeds=seeds(), max_len=MAX_LEN)


if __name__ == "__main__":
    sys.exit(main())
