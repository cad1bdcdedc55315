"""Fuzz `gossip.messages.decode_message`: arbitrary bytes as one gossip frame payload.

Run: ``python fuzz/gossip_messages.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

The contract: `decode_message` returns a message or raises
`GossipDecodeError` (`UnknownMessageType` included); any other exception is
a crash.  What decodes round-trips: `encode_message` accepts it (the
encoder runs the decoder's checks, so a message we decoded is one we could
have sent; a `LocalProtocolError` here means the two disagree), the
encoding decodes to an equal message, and it is a fixed point (encoding
the copy gives the same bytes).

Inputs are bounded by ``-max_len`` (`MAX_LEN`, 64 KiB: a frame payload may
be 1 MiB, but the decoder's limits on containers and bins bite long before,
and short inputs keep the run fast); the 1 MiB bound itself is the
transport's, fuzzed by ``fuzz/gossip_channel.py``.
"""

from __future__ import annotations

import sys

import atheris
from launch import run, use_checkout
from msgpack_mutator import MsgpackMutator

use_checkout()

with atheris.instrument_imports(include=["gossip", "identity"]):
    from samples import FUZZ_AUTHOR, OTHER_KEY, sample_entries

    from gossip.messages import (
        MAX_NOTE,
        MAX_SLICE_ENTRIES,
        MAX_SLICE_SEQS,
        MAX_STAMP_BYTES,
        Ack,
        Clock,
        Dm,
        DmAck,
        DmStatus,
        Entries,
        ForkProof,
        GossipDecodeError,
        Have,
        Mention,
        MentionAck,
        MentionStatus,
        MessageType,
        Note,
        Slice,
        SliceRequest,
        Want,
        decode_message,
        encode_message,
    )
    from identity import limits

MAX_LEN = 64 * 1024


def check(data: bytes) -> None:
    try:
        message = decode_message(data)
    except GossipDecodeError:
        return
    encoded = encode_message(message)
    copy = decode_message(encoded)
    assert copy == message, f"{message!r} came back as {copy!r}"
    assert encode_message(copy) == encoded, "re-encoding is not a fixed point"


def seeds() -> list[bytes]:
    """One message of every type, as a session sends them."""
    feed = FUZZ_AUTHOR.public_key
    raws = [entry.raw for entry in sample_entries()]
    first, forked = raws[1], raws[2]
    messages = [
        Clock({feed: Note(6, push=True), OTHER_KEY: Note(0, push=False), bytes(32): None}),
        Entries(feed, 1, tuple(raws)),
        Have({feed: 6, OTHER_KEY: 0}),
        Want({feed: 3}),
        Ack(2, {feed: 6}),
        ForkProof(feed, 2, first, forked),
        Mention(raws[2], b"\x00\x01\x02\x03"),
        Mention(raws[2]),
        MentionAck(bytes(32), MentionStatus.NEED_WORK, 16),
        MentionAck(bytes(32), 200),
        Dm(OTHER_KEY, bytes(range(200)), b"\x00\x01"),
        Dm(OTHER_KEY, bytes(limits.MAX_SEALED_BYTES)),
        DmAck(bytes(32), DmStatus.HELD, 0),
        DmAck(bytes(32), DmStatus.NEED_WORK, 16),
        SliceRequest(feed, (1, 2, 6)),
        Slice(feed, tuple(raws[:2])),
        Slice(OTHER_KEY, ()),
    ]
    return [encode_message(m) for m in messages]


def mutator() -> MsgpackMutator:
    """Mutates the message array toward every type and the edges of its fields."""
    edges = (
        MAX_NOTE,
        MAX_NOTE + 1,
        MAX_SLICE_SEQS + 1,
        MAX_SLICE_ENTRIES + 1,
        limits.MAX_SEQ + 1,
        limits.MAX_BATCHES_IN_FLIGHT + 1,
        bytes(MAX_STAMP_BYTES + 1),
        bytes(limits.MAX_ENTRY_BYTES + 1),
        bytes(limits.MAX_SEALED_BYTES + 1),
        bytes(48),
        len(MessageType),
    )
    return MsgpackMutator(values=(*MessageType, *MentionStatus, *DmStatus, *edges))


def main() -> None:
    run("gossip_messages", check, seeds=seeds(), max_len=MAX_LEN, mutator=mutator())


if __name__ == "__main__":
    sys.exit(main())
