"""Gossip message codec: golden bytes, round trips, limits, and a decoder that only ever
raises `GossipDecodeError` (random, truncated and mutated input, as h11's fuzz does).

The golden vectors are written out by hand from the msgpack spec, field by
field, and checked against what `encode_message` produces; if one changes,
the wire format changed.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gossip.messages import (
    ENTRIES_OVERHEAD,
    ENTRY_ID_BYTES,
    ENTRY_OVERHEAD,
    MAX_BATCHES_IN_FLIGHT,
    MAX_ENTRIES_PER_FRAME,
    MAX_NOTE,
    MAX_NOTES_PER_FRAME,
    MAX_STAMP_BYTES,
    Ack,
    Circuit,
    Clock,
    Connect,
    DialMe,
    DialResult,
    DialStatus,
    Entries,
    ForkProof,
    GossipDecodeError,
    Have,
    Incoming,
    Mention,
    MentionAck,
    MentionStatus,
    Message,
    MessageType,
    Note,
    Relay,
    RelayStatus,
    Reservation,
    Reserve,
    Slice,
    SliceRequest,
    UnknownMessageType,
    Want,
    chunked,
    decode_message,
    encode_message,
)
from identity.errors import LocalProtocolError
from identity.limits import MAX_ENTRY_BYTES, MAX_FRAME_BYTES, MAX_SEQ

A = b"\xaa" * 32
B = b"\xbb" * 32
C = b"\xcc" * 32
BIN32_A = "c420" + "aa" * 32  # bin 8, length 32, the feed
BIN32_B = "c420" + "bb" * 32
BIN32_C = "c420" + "cc" * 32

GOLDEN: dict[str, tuple[Message, str]] = {
    "clock": (
        Clock({A: Note(5), B: None, C: Note(300, push=False)}),
        "92"  # array of 2
        "00"  # type 0: CLOCK
        "83"  # map of 3
        + BIN32_A
        + "0a"  # 5 << 1 | 0: seq 5, push
        + BIN32_B
        + "ff"  # -1: not replicated
        + BIN32_C
        + "cd0259",  # uint 16 601 = 300 << 1 | 1: seq 300, lazy
    ),
    "entries": (
        Entries(A, 1, (b"abc", b"de")),
        "94"  # array of 4
        + "01"  # type 1: ENTRIES
        + BIN32_A
        + "01"  # first_seq 1
        + "92"  # array of 2 entries
        + "c403616263"  # bin 3 "abc"
        + "c4026465",  # bin 2 "de"
    ),
    "have": (
        Have({A: 7}),
        "920281" + BIN32_A + "07",  # [2, {A: 7}]
    ),
    "want": (
        Want({B: 3}),
        "920381" + BIN32_B + "03",  # [3, {B: 3}]
    ),
    "ack": (
        Ack(2, {A: 300}),
        "93040281" + BIN32_A + "cd012c",  # [4, 2, {A: 300}]
    ),
    "fork_proof": (
        ForkProof(A, 3, b"x", b"y"),
        "9505" + BIN32_A + "03c40178c40179",  # [5, A, 3, b"x", b"y"]
    ),
    "mention": (
        Mention(b"abc", b""),
        "93"  # array of 3
        "06"  # type 6: MENTION
        "c403616263"  # bin 3: the signed entry
        "c400",  # bin 0: no stamp
    ),
    "mention_stamped": (
        Mention(b"abc", bytes(range(8))),
        "9306c403616263"  # [6, b"abc", ...
        "c4080001020304050607",  # bin 8: the stamp (a proof-of-work nonce)
    ),
    "mention_ack": (
        MentionAck(A, MentionStatus.NEED_WORK, 20),
        "94"  # array of 4
        "07"  # type 7: MENTION_ACK
        + BIN32_A  # the entry id
        + "03"  # status 3: NEED_WORK
        + "14",  # need 20 bits
    ),
    "mention_ack_unknown_status": (
        MentionAck(A, 200, 0),
        "9407" + BIN32_A + "ccc8" + "00",  # uint 8 200: a status from a later version
    ),
    "dial_me": (
        DialMe(7710),
        "92"  # array of 2
        "08"  # type 8: DIAL_ME
        "cd1e1e",  # uint 16 7710: the port
    ),
    "dial_result": (
        DialResult(7710, DialStatus.FAILED, bytes([203, 0, 113, 5]), 40000),
        "95"  # array of 5
        "09"  # type 9: DIAL_RESULT
        "cd1e1e"  # the port asked for
        "01"  # status 1: FAILED
        "c404cb007105"  # bin 4: the IP the requester's connection comes from (203.0.113.5)
        "cd9c40",  # uint 16 40000: its port
    ),
    "reserve": (Reserve(), "910a"),  # [10]
    "reservation": (Reservation(RelayStatus.OK, 3600), "930b00cd0e10"),  # [11, OK, 3600 s]
    "connect": (Connect(A, 5), "930c" + BIN32_A + "05"),  # [12, key, circuit 5]
    "incoming": (Incoming(A, 2**32 - 1), "930d" + BIN32_A + "ceffffffff"),
    "circuit_closed": (Circuit(5, RelayStatus.CLOSED), "930e0502"),
    "relay": (Relay(5, b"abc"), "930f05c403616263"),  # [15, circuit 5, 3 bytes of the inner stream]
    "dial_result_ipv6_unknown_status": (
        DialResult(1, 9, bytes(16), 0),
        "95090109c410" + "00" * 16 + "00",
    ),
    # [20, feed, [1, 300]]: seqs 1 and 300 of feed A (issue 19, "Track")
    "slice_request": (SliceRequest(A, (1, 300)), "9314" + BIN32_A + "9201cd012c"),
    # [21, feed, [entry "abc"]] and an empty answer
    "slice": (Slice(A, (b"abc",)), "9315" + BIN32_A + "91c403616263"),
    "slice_empty": (Slice(A, ()), "9315" + BIN32_A + "90"),
}


def test_slice_requests_and_answers_are_bounded() -> None:
    """A SLICE_REQUEST names 1..16 distinct seqs in ascending order; a SLICE carries 0..16 entries."""
    for seqs in ([], [2, 1], [1, 1], [0], list(range(1, 18))):
        with pytest.raises(GossipDecodeError):
            decode_message(msgpack.packb([20, A, seqs]))
    with pytest.raises(GossipDecodeError):
        decode_message(msgpack.packb([21, A, [b"x"] * 17]))
    assert decode_message(msgpack.packb([20, A, list(range(1, 17))])) == SliceRequest(A, tuple(range(1, 17)))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_vectors(name: str) -> None:
    message, golden = GOLDEN[name]
    assert encode_message(message).hex() == golden
    assert decode_message(bytes.fromhex(golden)) == message


def test_clock_example_from_the_module_docstring() -> None:
    frame = encode_message(Clock({A: Note(5)}))
    assert frame == bytes.fromhex("920081" + BIN32_A + "0a")


# --- strategies -----------------------------------------------------------------------------

feeds = st.binary(min_size=32, max_size=32)
seq0 = st.integers(0, MAX_SEQ)
seq1 = st.integers(1, MAX_SEQ)
raw_entries = st.binary(min_size=1, max_size=64)


def maps(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[bytes, Any]]:
    return st.dictionaries(feeds, values, min_size=1, max_size=5)


messages: st.SearchStrategy[Message] = st.one_of(
    maps(st.none() | st.builds(Note, seq0, st.booleans())).map(Clock),
    st.builds(
        Entries,
        feeds,
        st.integers(1, MAX_SEQ - 10),
        st.lists(raw_entries, min_size=1, max_size=10).map(tuple),
    ),
    maps(seq0).map(Have),
    maps(seq1).map(Want),
    st.builds(Ack, st.integers(1, MAX_BATCHES_IN_FLIGHT), maps(seq0)),
    st.builds(ForkProof, feeds, seq1, raw_entries, raw_entries).filter(lambda p: p.first != p.second),
    st.builds(Mention, raw_entries, st.binary(max_size=MAX_STAMP_BYTES)),
    st.builds(MentionAck, feeds, st.integers(0, 255) | st.sampled_from(MentionStatus), st.integers(0, 255)),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    frame = encode_message(message)
    assert decode_message(frame) == message
    assert encode_message(decode_message(frame)) == frame


# --- the decoder never raises anything else --------------------------------------------------


def decodes_or_refuses(data: bytes) -> Message | None:
    try:
        return decode_message(data)
    except GossipDecodeError:
        return None


@settings(max_examples=1000)
@given(st.binary(max_size=256))
@example(b"")
@example(b"\x91" * 5000)  # deep nesting
@example(b"\xdd\xff\xff\xff\xff")  # array 32 announcing 4 billion items
@example(b"\xc6\xff\xff\xff\xff")  # bin 32 announcing 4 GiB
def test_random_bytes_decode_or_raise_the_declared_error(data: bytes) -> None:
    decodes_or_refuses(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.binary(max_size=33) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.integers(-1, 9), st.lists(msgpack_values, max_size=5))
def test_arbitrary_msgpack_arrays_decode_or_raise_the_declared_error(kind: int, rest: list[Any]) -> None:
    decodes_or_refuses(msgpack.packb([kind, *rest]))


#: Field values near the MENTION/MENTION_ACK limits, right and wrong.
mention_fields = st.one_of(
    st.binary(min_size=ENTRY_ID_BYTES - 1, max_size=ENTRY_ID_BYTES + 1),
    st.binary(max_size=MAX_STAMP_BYTES + 2),
    st.integers(-2, 2) | st.integers(250, 260),
    st.booleans() | st.none() | st.floats(0, 300) | st.text(max_size=3),
    msgpack_values,
)


@settings(max_examples=500)
@given(st.sampled_from([MessageType.MENTION, MessageType.MENTION_ACK]), st.lists(mention_fields, max_size=5))
def test_mention_shaped_arrays_decode_or_raise_the_declared_error(kind: int, rest: list[Any]) -> None:
    message = decodes_or_refuses(msgpack.packb([int(kind), *rest]))
    if message is not None:
        assert isinstance(message, Mention | MentionAck)
        assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_truncation_is_refused(name: str) -> None:
    golden = bytes.fromhex(GOLDEN[name][1])
    for end in range(len(golden)):
        with pytest.raises(GossipDecodeError):
            decode_message(golden[:end])
    with pytest.raises(GossipDecodeError):
        decode_message(golden + b"\x00")  # trailing bytes


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_single_byte_mutation_decodes_or_is_refused(name: str) -> None:
    golden = bytes.fromhex(GOLDEN[name][1])
    for i in range(len(golden)):
        for value in (0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xCF, 0xD3, 0xDC, 0xFF, golden[i] ^ 0x01):
            message = decodes_or_refuses(golden[:i] + bytes([value]) + golden[i + 1 :])
            if message is not None:
                assert decode_message(encode_message(message)) == message


# --- limits and shapes --------------------------------------------------------------------------


def packed(*fields: Any) -> bytes:
    return msgpack.packb(list(fields))


@pytest.mark.parametrize(
    "payload",
    [
        packed(1, A, 1, [b"e"] * (MAX_ENTRIES_PER_FRAME + 1)),  # too many entries
        packed(1, A, 1, []),  # no entries
        packed(1, A, 1, [b"e" * (MAX_ENTRY_BYTES + 1)]),  # entry too large
        packed(1, A, 1, [b""]),  # empty entry
        packed(1, A, 0, [b"e"]),  # seq 0
        packed(1, A, MAX_SEQ, [b"e", b"f"]),  # runs past the highest seq
        packed(1, A[:31], 1, [b"e"]),  # short feed
        packed(1, A, True, [b"e"]),  # a bool is not a seq
        packed(1, A, 1, [b"e"], 0),  # extra field
        packed(1, A, 1),  # missing field
        packed(1, A, 1, ["e"]),  # text is not an entry
        packed(0, {A: -2}),  # note below -1
        packed(2, {A: MAX_SEQ + 1}),  # (MAX_NOTE is the largest msgpack integer)
        packed(0, {A: 1.0}),
        packed(0, {}),  # empty map
        packed(0, {A.hex(): 2}),  # text key
        packed(0, {bytes(i.to_bytes(32, "big")): 0 for i in range(MAX_NOTES_PER_FRAME + 1)}),
        packed(2, {A: -1}),
        packed(3, {A: 0}),  # WANT from seq 0
        packed(4, 0, {A: 1}),  # ACK of nothing
        packed(4, MAX_BATCHES_IN_FLIGHT + 1, {A: 1}),
        packed(5, A, 3, b"x", b"x"),  # a fork proof of one entry
        packed(5, A, 0, b"x", b"y"),
        packed(6, b"", b""),  # empty entry
        packed(6, b"e" * (MAX_ENTRY_BYTES + 1), b""),  # entry too large
        packed(6, b"e", b"s" * (MAX_STAMP_BYTES + 1)),  # stamp too long
        packed(6, b"e"),  # missing stamp
        packed(6, b"e", b"", b""),  # extra field
        packed(6, b"e", None),  # "no stamp" is empty bytes, not nil
        packed(6, b"e", 0),
        packed(6, "e", b""),  # text is not an entry
        packed(7, A[:31], 0, 0),  # short entry id
        packed(7, A + b"\x00", 0, 0),  # long entry id
        packed(7, b"", 0, 0),
        packed(7, A, 256, 0),  # status over one byte
        packed(7, A, -1, 0),
        packed(7, A, 0, 256),  # need over one byte
        packed(7, A, 0, -1),
        packed(7, A, True, 0),  # a bool is not a status
        packed(7, A, 1.0, 0),
        packed(7, A, 0),  # missing need
        packed(7, A, 0, 0, 0),  # extra field
        packed(True, {A: 1}),  # a bool is not a type
        packed(-1, {A: 1}),
        packed(),
        msgpack.packb({"type": 0}),
        msgpack.packb(0),
        b"\x00" * (MAX_FRAME_BYTES + 1),
    ],
)
def test_out_of_bounds_and_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(GossipDecodeError):
        decode_message(payload)


def test_limits_themselves_are_accepted() -> None:
    assert decode_message(packed(0, {A: MAX_NOTE})) == Clock({A: Note(MAX_SEQ, push=False)})
    assert decode_message(packed(0, {A: 0})) == Clock({A: Note(0, push=True)})
    notes = {i.to_bytes(32, "big"): 1 for i in range(MAX_NOTES_PER_FRAME)}
    assert len(decode_message(packed(2, notes)).seqs) == MAX_NOTES_PER_FRAME  # type: ignore[union-attr]
    big = Entries(A, MAX_SEQ - MAX_ENTRIES_PER_FRAME + 1, (b"e" * 100,) * MAX_ENTRIES_PER_FRAME)
    assert decode_message(encode_message(big)) == big
    largest_entry = Entries(A, 1, (b"e" * MAX_ENTRY_BYTES,))
    assert decode_message(bytearray(encode_message(largest_entry))) == largest_entry
    assert decode_message(memoryview(encode_message(largest_entry))) == largest_entry
    largest_mention = Mention(b"e" * MAX_ENTRY_BYTES, b"s" * MAX_STAMP_BYTES)
    assert decode_message(encode_message(largest_mention)) == largest_mention
    assert decode_message(packed(7, A, 255, 255)) == MentionAck(A, 255, 255)


def test_mention_status_is_typed_when_known_and_a_plain_int_when_not() -> None:
    assert [s.value for s in MentionStatus] == list(range(8))
    assert int(MentionStatus.NEED_WORK) == 3 and int(MentionStatus.BUSY) == 7
    known = decode_message(packed(7, A, 4, 0))
    assert isinstance(known, MentionAck) and known.status is MentionStatus.BLOCKED
    unknown = decode_message(packed(7, A, 8, 0))
    assert isinstance(unknown, MentionAck) and type(unknown.status) is int and unknown.status == 8
    # A status given as a plain int encodes the same as its MentionStatus.
    assert encode_message(MentionAck(A, 3, 20)) == encode_message(MentionAck(A, MentionStatus.NEED_WORK, 20))


def test_unknown_type_is_its_own_error() -> None:
    with pytest.raises(UnknownMessageType):
        decode_message(packed(99, {A: 1}))
    with pytest.raises(GossipDecodeError):
        decode_message("not bytes")  # type: ignore[arg-type]


def test_a_full_batch_fits_a_frame() -> None:
    """512 KiB of the largest entries, with the framing bound the session relies on."""
    count = 512 * 1024 // MAX_ENTRY_BYTES
    frame = encode_message(Entries(A, MAX_SEQ - count, (b"e" * MAX_ENTRY_BYTES,) * count))
    assert len(frame) <= ENTRIES_OVERHEAD + count * (ENTRY_OVERHEAD + MAX_ENTRY_BYTES) <= MAX_FRAME_BYTES


@pytest.mark.parametrize(
    "message",
    [
        Entries(A, 1, (b"e",) * (MAX_ENTRIES_PER_FRAME + 1)),
        Entries(A, 1, (b"e" * MAX_ENTRY_BYTES,) * 200),  # 1.6 MiB: over the frame limit
        Entries(A, 1, ()),
        Entries(b"short", 1, (b"e",)),
        Clock({A: Note(-1)}),
        Clock({}),
        Have({A: MAX_SEQ + 1}),
        Ack(0, {A: 1}),
        ForkProof(A, 1, b"x", b"x"),
        Mention(b"", b""),
        Mention(b"e" * (MAX_ENTRY_BYTES + 1), b""),
        Mention(b"e", b"s" * (MAX_STAMP_BYTES + 1)),
        Mention(bytearray(b"e"), b""),  # type: ignore[arg-type]
        Mention(b"e", None),  # type: ignore[arg-type]
        MentionAck(A[:31], 0, 0),
        MentionAck(A, 256, 0),
        MentionAck(A, -1, 0),
        MentionAck(A, True, 0),
        MentionAck(A, 0, 256),
        Reservation(0, 86_401),
        Connect(A[:31], 1),
        Incoming(A, 2**32),
        Circuit(-1, 0),
        Relay(1, b""),
        Relay(1, b"x" * (MAX_ENTRY_BYTES + 1)),
        DialMe(0),
        DialMe(65536),
        DialResult(1, 0, bytes(5), 1),
        DialResult(1, 256, bytes(4), 1),
        DialResult(1, 0, bytes(4), 65536),
        "not a message",
    ],
)
def test_encoding_an_invalid_message_is_our_bug(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(message)


def test_chunked_splits_large_maps() -> None:
    notes = {i.to_bytes(32, "big"): i for i in range(25)}
    parts = chunked(notes, 10)
    assert [len(p) for p in parts] == [10, 10, 5]
    assert {k: v for p in parts for k, v in p.items()} == notes
    assert chunked({}) == []
