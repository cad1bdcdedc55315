"""Gossip messages: what two replicating peers say to each other, and its codec.

Theory of operation
-------------------
The transport (`gossip.transport`) carries frames of at most
`identity.limits.MAX_FRAME_BYTES`; each frame payload is exactly one message,
one msgpack array whose first element is the message type::

    [0, {feed: note, ...}]                  CLOCK       what I replicate, and how
    [1, feed, first_seq, [entry, ...]]      ENTRIES     consecutive entries of one feed
    [2, {feed: seq, ...}]                   HAVE        lazy notice: I hold feed up to seq
    [3, {feed: from_seq, ...}]              WANT        pull: send me feed from from_seq on
    [4, count, {feed: seq, ...}]            ACK         I processed your `count` oldest
                                                        unacknowledged ENTRIES; I now hold..
    [5, feed, seq, entry, entry]            FORK_PROOF  two signed entries with one seq
    [6, entry, stamp]                       MENTION     an entry that mentions you
    [7, entry_id, status, need]             MENTION_ACK what I did with your MENTION
    [8, port]                               DIAL_ME     dial me back at my address, this port
    [9, port, status, ip, observed_port]    DIAL_RESULT what that dial did; where I see you
    [10]                                    RESERVE     please relay connections to me
    [11, status, seconds]                   RESERVATION yes for that long (OK), or no
    [12, key, circuit]                      CONNECT     open a circuit to key (to a relay)
    [13, key, circuit]                      INCOMING    key opens a circuit to you (from a relay)
    [14, circuit, status]                   CIRCUIT     the circuit is open (OK), refused or closed
    [15, circuit, bytes]                    RELAY       bytes of the circuit's inner connection
    [16, recipient, sealed, stamp]          DM          a sealed direct message for recipient
    [17, dm_id, status, need]               DM_ACK      what I did with your DM
    [20, feed, [seq, ...]]                  SLICE_REQUEST  give me these entries of feed
    [21, feed, [entry, ...]]                SLICE       the ones I hold (0..16 signed entries)

``feed`` is the author's 32-byte Ed25519 key (msgpack bin), an ``entry`` the
signed bytes exactly as the author signed them (bin, 1 .. `MAX_ENTRY_BYTES`),
seqs are unsigned integers (1 .. `MAX_SEQ`; 0 in HAVE/ACK means "none").  No
strings travel, so no text can be malformed.

*Mention notices* reach people who do not follow the author: a node sends a
signed entry that mentions the peer's user straight to the peer (MENTION),
with a proof-of-work ``stamp`` (bin, 0 .. `MAX_STAMP_BYTES`; empty means
none) when the receiver asks strangers for one.  The receiver checks the
entry and answers with one MENTION_ACK: ``entry_id`` is the entry's 32-byte
id, ``status`` a `MentionStatus` and ``need`` the work bits the receiver
requires of this sender (with NEED_WORK; 0 when irrelevant).  Both are
uints 0..255; a status this version does not know decodes as a plain int,
so new statuses need no new message type.  The two messages are independent
of replication: they need no feed in either clock.

*Direct messages* (DM) carry a message sealed to ``recipient`` (a 32-byte
key; `identity.sealed`: 49 .. `MAX_SEALED_BYTES` bytes of bin that only the
recipient can open) and a proof-of-work ``stamp`` as a MENTION's.  The peer
is the recipient, or a holder that keeps it for the recipient (a follower of
the recipient's feed).  DM_ACK answers each DM once, as MENTION_ACK does:
``dm_id`` is BLAKE2b-256 of the sealed bytes and ``status`` a `DmStatus`.

*Dial-back* (like libp2p's AutoNAT) tells a node whether others can reach
it: DIAL_ME asks the peer to open a new connection to ``port`` at the IP
address this connection comes from (never another address: a node cannot
be made to dial a third party), and DIAL_RESULT answers with a
`DialStatus` and the address the peer sees this connection coming from
(``ip`` as 4 or 16 bytes, ``observed_port``): the requester's public
address when it sits behind a NAT.  ``port`` is 1..65535.

*Relaying* (like libp2p's circuit relay v2) lets two nodes that cannot dial
each other talk through a third that both can reach.  A node nobody can dial
asks a reachable peer for a RESERVE; the RESERVATION says for how many
seconds it holds.  Another node sends that relay CONNECT with the reserved
node's key and a circuit number of its own choosing; the relay passes it on
as INCOMING (with the dialler's key and a number the relay chose on that
session) and answers CIRCUIT: OK, or REFUSED (no reservation, a limit), and
either end may send CIRCUIT CLOSED.  RELAY frames carry up to
`MAX_ENTRY_BYTES` of the circuit's bytes; the relay forwards them unchanged.
The two ends run their own Noise handshake over the circuit, so the relay
reads nothing and cannot pose as either.  Circuit numbers are 0..2**32-1 and
name a circuit on one session only.

*Slices* (issue 19, "Track") fetch a few entries of a feed neither side
need replicate: SLICE_REQUEST names a feed and 1..`MAX_SLICE_SEQS` distinct
seqs (ascending); the peer answers each request, in order, with one SLICE
of the entries it holds among them (0..`MAX_SLICE_ENTRIES`, signed bytes
as stored; the requester verifies each).  Types 16-19 are reserved for
direct messages.

A *note* in a CLOCK is SSB EBT's integer (``ssb-ebt``/``epidemic-broadcast-trees``):
``-1`` means "I do not replicate this feed (any more)", otherwise
``note = seq << 1 | lazy`` where ``seq`` is the latest seq the sender holds
and ``lazy`` = 1 asks the receiver not to push the feed's new entries but only
to send HAVE notices (Plumtree's *prune*; 0 is *graft*: push to me).  Decoded,
a note is a `Note` or None.  A CLOCK is incremental: a later one updates only
the feeds it names, so a large clock is sent as several frames of at most
`MAX_NOTES_PER_FRAME` notes.

Byte example: a CLOCK saying "I hold seq 5 of feed ``aa..aa`` and want pushes",
i.e. note ``5 << 1 | 0 = 10``::

    92                      array of 2
    00                      type 0 (CLOCK)
    81                      map of 1
    c4 20 aa aa .. aa       bin 32: the feed
    0a                      10 (seq 5, push)

The golden vectors of every message are in ``tests/gossip/test_messages.py``.

`decode_message` is bounded (payload size, msgpack container and bin limits)
and total: for any input it returns a message or raises `GossipDecodeError`
(`UnknownMessageType` for a well-formed frame of a type this version does not
know, so a session can tell a newer peer from a broken one).  Shapes are
checked once, here; the session works with typed values.  `encode_message`
runs the same checks on what it is given and raises `LocalProtocolError` on
our own misuse, so we never send a frame our peer's decoder would refuse.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from identity.errors import LocalProtocolError
from identity.keys import PUBLIC_KEY_BYTES
from identity.limits import (
    MAX_BATCHES_IN_FLIGHT,
    MAX_ENTRIES_PER_FRAME,
    MAX_ENTRY_BYTES,
    MAX_FRAME_BYTES,
    MAX_NOTES_PER_FRAME,
    MAX_SEALED_BYTES,
    MAX_SEQ,
)

#: A feed id is the author's public key.
FEED_BYTES: Final = PUBLIC_KEY_BYTES
#: Largest note: the highest seq, lazy.
MAX_NOTE: Final = MAX_SEQ << 1 | 1

#: An entry id (`p2pblog.entry`'s BLAKE2b-256 of the signed bytes).
ENTRY_ID_BYTES: Final = 32
#: Longest MENTION stamp (a proof-of-work nonce; `identity.pow` accepts up to 16).
MAX_STAMP_BYTES: Final = 16
#: Seqs a SLICE_REQUEST names, and entries a SLICE carries, at most.
MAX_SLICE_SEQS: Final = 16
MAX_SLICE_ENTRIES: Final = 16
#: Largest MENTION_ACK status and need (one byte each).
MAX_MENTION_STATUS: Final = 255
MAX_NEED_BITS: Final = 255

#: Bytes an ENTRIES frame adds around its entries: array, type, feed (bin 8 +
#: 32), first_seq (uint 64), entry array header (array 16), each entry's bin
#: header (bin 16: entries are < 64 KiB).
ENTRIES_OVERHEAD: Final = 1 + 1 + 2 + FEED_BYTES + 9 + 3
ENTRY_OVERHEAD: Final = 3


class GossipDecodeError(ValueError):
    """A frame payload is not a valid gossip message (the only error peer bytes cause)."""


class UnknownMessageType(GossipDecodeError):
    """A well-formed frame whose message type this version does not know."""


class MessageType(enum.IntEnum):
    CLOCK = 0
    ENTRIES = 1
    HAVE = 2
    WANT = 3
    ACK = 4
    FORK_PROOF = 5
    MENTION = 6
    MENTION_ACK = 7
    DIAL_ME = 8
    DIAL_RESULT = 9
    RESERVE = 10
    RESERVATION = 11
    CONNECT = 12
    INCOMING = 13
    CIRCUIT = 14
    RELAY = 15
    DM = 16
    DM_ACK = 17
    SLICE_REQUEST = 20
    SLICE = 21


class DmStatus(enum.IntEnum):
    """What the receiver did with a DM (the ``status`` of DM_ACK)."""

    #: The recipient stored it: in its inbox, or its requests folder (a stranger's).
    ADMITTED = 0
    #: Already held (an earlier DM with the same sealed bytes).
    DUPLICATE = 1
    #: A holder will not keep it (it does not replicate the recipient's feed, or is full).
    REFUSED = 2
    #: The stamp is too weak: ``need`` says how many bits would do.
    NEED_WORK = 3
    #: The recipient blocks the sender.
    BLOCKED = 4
    #: Too many DMs from this peer lately: try later.
    RATE_LIMITED = 5
    #: It does not open, is not addressed to the receiver, or its signature is wrong.
    INVALID = 6
    #: The receiver cannot take it now (full, shutting down): try later.
    BUSY = 7
    #: A holder keeps it and will deliver it when the recipient connects.
    HELD = 8


class RelayStatus(enum.IntEnum):
    """The ``status`` of RESERVATION and CIRCUIT."""

    OK = 0
    REFUSED = 1
    CLOSED = 2


class DialStatus(enum.IntEnum):
    """What a dial-back did (the ``status`` of DIAL_RESULT)."""

    #: The new connection completed its handshake with the requester's key.
    OK = 0
    #: It did not connect, or another key answered.
    FAILED = 1
    #: Not tried: the peer dials back for nobody now (its budget is spent).
    REFUSED = 2


class MentionStatus(enum.IntEnum):
    """What the receiver did with a MENTION (the ``status`` of MENTION_ACK)."""

    #: Stored: the receiver's user will see it.
    ADMITTED = 0
    #: Already held (by replication or an earlier MENTION).
    DUPLICATE = 1
    #: Not accepted from this sender: not followed, too far in the social
    #: graph, or a stamp was required and none came.
    REFUSED = 2
    #: The stamp is too weak: ``need`` says how many bits would do.
    NEED_WORK = 3
    #: The receiver blocks the author or the sender.
    BLOCKED = 4
    #: Too many mentions from this sender or author lately: try later.
    RATE_LIMITED = 5
    #: Malformed, a bad signature, or it does not mention the receiver.
    INVALID = 6
    #: The receiver cannot take it now (queue full, shutting down): try later.
    BUSY = 7


@dataclass(frozen=True, slots=True)
class Note:
    """One feed's line in a clock: the latest seq held, and whether to push new entries."""

    seq: int
    push: bool = True


@dataclass(frozen=True, slots=True)
class Clock:
    """What the sender replicates: feed -> `Note`, or None for "not (any more)"."""

    notes: dict[bytes, Note | None]


@dataclass(frozen=True, slots=True)
class Entries:
    """Entries ``first_seq``, ``first_seq + 1``, ... of one feed, as signed bytes.

    The seqs are the sender's claim; the node checks each entry's author and
    seq against them when it decodes the entries.
    """

    feed: bytes
    first_seq: int
    entries: tuple[bytes, ...]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1


@dataclass(frozen=True, slots=True)
class Have:
    """Lazy notice (Plumtree IHAVE): the sender holds each feed up to seq."""

    seqs: dict[bytes, int]


@dataclass(frozen=True, slots=True)
class Want:
    """Pull repair (Plumtree GRAFT's request half): send each feed from from_seq on."""

    from_seqs: dict[bytes, int]


@dataclass(frozen=True, slots=True)
class Ack:
    """Flow control: the sender processed the ``count`` oldest ENTRIES it had not yet
    acknowledged, and now holds each of their feeds up to seq."""

    count: int
    seqs: dict[bytes, int]


@dataclass(frozen=True, slots=True)
class ForkProof:
    """Two different validly signed entries of ``feed`` with the same ``seq``."""

    feed: bytes
    seq: int
    first: bytes
    second: bytes


@dataclass(frozen=True, slots=True)
class Mention:
    """A signed entry that mentions the receiver, with a proof-of-work stamp
    (empty: none).  The receiver's node checks the entry and the stamp."""

    entry: bytes
    stamp: bytes = b""


@dataclass(frozen=True, slots=True)
class MentionAck:
    """The answer to a MENTION of entry ``entry_id``.  ``status`` is a
    `MentionStatus` when this version knows it, else the plain int;
    ``need`` is the work bits the receiver requires (0 when irrelevant)."""

    entry_id: bytes
    status: int
    need: int = 0


@dataclass(frozen=True, slots=True)
class DialMe:
    """Please dial me back on ``port`` at the address this connection comes from."""

    port: int


@dataclass(frozen=True, slots=True)
class DialResult:
    """The answer to DIAL_ME on ``port``: a `DialStatus` (a plain int if unknown) and
    the address the requester's connection comes from, as this peer sees it."""

    port: int
    status: int
    ip: bytes
    observed_port: int


@dataclass(frozen=True, slots=True)
class Reserve:
    """Please relay circuits to me (I cannot be dialled)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to RESERVE: a `RelayStatus`, and for OK the seconds it holds."""

    status: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Connect:
    """To a relay: open circuit ``circuit`` (our number) to the node with key ``key``."""

    key: bytes
    circuit: int


@dataclass(frozen=True, slots=True)
class Incoming:
    """From a relay: the node with key ``key`` opened circuit ``circuit`` (the relay's
    number on this session) to you."""

    key: bytes
    circuit: int


@dataclass(frozen=True, slots=True)
class Circuit:
    """Circuit ``circuit`` is open (OK), was refused, or is closed."""

    circuit: int
    status: int


@dataclass(frozen=True, slots=True)
class Relay:
    """Bytes of circuit ``circuit``'s inner connection."""

    circuit: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Dm:
    """A direct message sealed to ``recipient``, with a proof-of-work ``stamp``."""

    recipient: bytes
    sealed: bytes
    stamp: bytes = b""


@dataclass(frozen=True, slots=True)
class DmAck:
    """The answer to a DM whose sealed bytes hash to ``dm_id``: a `DmStatus` (a plain int
    when this version does not know it) and the work bits needed (with NEED_WORK)."""

    dm_id: bytes
    status: int
    need: int = 0


@dataclass(frozen=True, slots=True)
class SliceRequest:
    """Send me entries ``seqs`` (ascending, distinct) of ``feed``."""

    feed: bytes
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Slice:
    """The answer to a SLICE_REQUEST: the entries of ``feed`` the sender holds among those asked."""

    feed: bytes
    entries: tuple[bytes, ...]


Message = (
    SliceRequest
    | Slice
    | Clock
    | Entries
    | Have
    | Want
    | Ack
    | ForkProof
    | Mention
    | MentionAck
    | DialMe
    | DialResult
    | Reserve
    | Reservation
    | Connect
    | Incoming
    | Circuit
    | Relay
    | Dm
    | DmAck
)


# --- checks shared by decoding and encoding ------------------------------------------
# Each takes the msgpack-level object and raises GossipDecodeError.


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise GossipDecodeError(f"{what} must be an integer in {low}..{high}")
    return value


def _feed(value: object) -> bytes:
    if type(value) is not bytes or len(value) != FEED_BYTES:
        raise GossipDecodeError(f"a feed is {FEED_BYTES} bytes")
    return value


def _entry(value: object) -> bytes:
    if type(value) is not bytes or not 1 <= len(value) <= MAX_ENTRY_BYTES:
        raise GossipDecodeError(f"an entry is 1..{MAX_ENTRY_BYTES} bytes")
    return value


def _stamp(value: object) -> bytes:
    if type(value) is not bytes or len(value) > MAX_STAMP_BYTES:
        raise GossipDecodeError(f"a stamp is 0..{MAX_STAMP_BYTES} bytes")
    return value


def _entry_id(value: object) -> bytes:
    if type(value) is not bytes or len(value) != ENTRY_ID_BYTES:
        raise GossipDecodeError(f"an entry id is {ENTRY_ID_BYTES} bytes")
    return value


def _map(value: object, check: Callable[[object], Any], what: str) -> dict[bytes, Any]:
    if type(value) is not dict or not 1 <= len(value) <= MAX_NOTES_PER_FRAME:
        raise GossipDecodeError(f"{what} must be a map of 1..{MAX_NOTES_PER_FRAME} feeds")
    return {_feed(k): check(v) for k, v in value.items()}


def _note(value: object) -> Note | None:
    raw = _int(value, -1, MAX_NOTE, "a clock note")
    return None if raw == -1 else Note(raw >> 1, not raw & 1)


def _seq0(value: object) -> int:
    return _int(value, 0, MAX_SEQ, "a seq")


def _seq1(value: object) -> int:
    return _int(value, 1, MAX_SEQ, "a seq")


def _fields(obj: list[Any], count: int, name: str) -> list[Any]:
    if len(obj) != count:
        raise GossipDecodeError(f"{name} is an array of {count}")
    return obj[1:]


def _parse_clock(obj: list[Any]) -> Clock:
    (notes,) = _fields(obj, 2, "CLOCK")
    return Clock(_map(notes, _note, "CLOCK notes"))


def _parse_entries(obj: list[Any]) -> Entries:
    feed, first_seq, entries = _fields(obj, 4, "ENTRIES")
    first = _seq1(first_seq)
    if type(entries) is not list or not 1 <= len(entries) <= MAX_ENTRIES_PER_FRAME:
        raise GossipDecodeError(f"ENTRIES carries 1..{MAX_ENTRIES_PER_FRAME} entries")
    if first + len(entries) - 1 > MAX_SEQ:
        raise GossipDecodeError("ENTRIES runs past the highest seq")
    return Entries(_feed(feed), first, tuple(_entry(e) for e in entries))


def _parse_have(obj: list[Any]) -> Have:
    (seqs,) = _fields(obj, 2, "HAVE")
    return Have(_map(seqs, _seq0, "HAVE seqs"))


def _parse_want(obj: list[Any]) -> Want:
    (froms,) = _fields(obj, 2, "WANT")
    return Want(_map(froms, _seq1, "WANT seqs"))


def _parse_ack(obj: list[Any]) -> Ack:
    count, seqs = _fields(obj, 3, "ACK")
    return Ack(_int(count, 1, MAX_BATCHES_IN_FLIGHT, "an ACK count"), _map(seqs, _seq0, "ACK seqs"))


def _parse_fork_proof(obj: list[Any]) -> ForkProof:
    feed, seq, first, second = _fields(obj, 5, "FORK_PROOF")
    proof = ForkProof(_feed(feed), _seq1(seq), _entry(first), _entry(second))
    if proof.first == proof.second:
        raise GossipDecodeError("a fork proof is two different entries")
    return proof


_MENTION_STATUSES: Final = frozenset(s.value for s in MentionStatus)


def _parse_mention(obj: list[Any]) -> Mention:
    entry, stamp = _fields(obj, 3, "MENTION")
    return Mention(_entry(entry), _stamp(stamp))


def _parse_mention_ack(obj: list[Any]) -> MentionAck:
    entry_id, status, need = _fields(obj, 4, "MENTION_ACK")
    code = _int(status, 0, MAX_MENTION_STATUS, "a mention status")
    known = MentionStatus(code) if code in _MENTION_STATUSES else code
    return MentionAck(_entry_id(entry_id), known, _int(need, 0, MAX_NEED_BITS, "a need"))


def _port(value: object) -> int:
    return _int(value, 1, 65535, "a port")


def _parse_dial_me(obj: list[Any]) -> DialMe:
    (port,) = _fields(obj, 2, "DIAL_ME")
    return DialMe(_port(port))


_DIAL_STATUSES: Final = frozenset(s.value for s in DialStatus)


def _parse_dial_result(obj: list[Any]) -> DialResult:
    port, status, ip, observed = _fields(obj, 5, "DIAL_RESULT")
    code = _int(status, 0, 255, "a dial status")
    if type(ip) is not bytes or len(ip) not in (4, 16):
        raise GossipDecodeError("an IP address is 4 or 16 bytes")
    known = DialStatus(code) if code in _DIAL_STATUSES else code
    return DialResult(_port(port), known, ip, _int(observed, 0, 65535, "a port"))


_RELAY_STATUSES: Final = frozenset(s.value for s in RelayStatus)
MAX_CIRCUIT: Final = 2**32 - 1
#: Seconds a reservation may last, as RESERVATION says it.
MAX_RESERVATION_SECONDS: Final = 86_400


def _relay_status(value: object) -> int:
    code = _int(value, 0, 255, "a relay status")
    return RelayStatus(code) if code in _RELAY_STATUSES else code


def _circuit(value: object) -> int:
    return _int(value, 0, MAX_CIRCUIT, "a circuit")


def _parse_reserve(obj: list[Any]) -> Reserve:
    _fields(obj, 1, "RESERVE")
    return Reserve()


def _parse_reservation(obj: list[Any]) -> Reservation:
    status, seconds = _fields(obj, 3, "RESERVATION")
    return Reservation(_relay_status(status), _int(seconds, 0, MAX_RESERVATION_SECONDS, "seconds"))


def _parse_connect(obj: list[Any]) -> Connect:
    key, circuit = _fields(obj, 3, "CONNECT")
    return Connect(_feed(key), _circuit(circuit))


def _parse_incoming(obj: list[Any]) -> Incoming:
    key, circuit = _fields(obj, 3, "INCOMING")
    return Incoming(_feed(key), _circuit(circuit))


def _parse_circuit(obj: list[Any]) -> Circuit:
    circuit, status = _fields(obj, 3, "CIRCUIT")
    return Circuit(_circuit(circuit), _relay_status(status))


def _parse_relay(obj: list[Any]) -> Relay:
    circuit, data = _fields(obj, 3, "RELAY")
    return Relay(_circuit(circuit), _entry(data))


_DM_STATUSES: Final = frozenset(s.value for s in DmStatus)


def _parse_dm(obj: list[Any]) -> Dm:
    recipient, sealed, stamp = _fields(obj, 4, "DM")
    if type(sealed) is not bytes or not 48 < len(sealed) <= MAX_SEALED_BYTES:
        raise GossipDecodeError(f"a sealed message is 49..{MAX_SEALED_BYTES} bytes")
    return Dm(_feed(recipient), sealed, _stamp(stamp))


def _parse_dm_ack(obj: list[Any]) -> DmAck:
    dm_id, status, need = _fields(obj, 4, "DM_ACK")
    code = _int(status, 0, MAX_MENTION_STATUS, "a DM status")
    known = DmStatus(code) if code in _DM_STATUSES else code
    return DmAck(_entry_id(dm_id), known, _int(need, 0, MAX_NEED_BITS, "a need"))


def _parse_slice_request(obj: list[Any]) -> SliceRequest:
    feed, seqs = _fields(obj, 3, "SLICE_REQUEST")
    if type(seqs) is not list or not 1 <= len(seqs) <= MAX_SLICE_SEQS:
        raise GossipDecodeError(f"a slice request names 1..{MAX_SLICE_SEQS} seqs")
    checked = [_seq1(seq) for seq in seqs]
    if checked != sorted(set(checked)):
        raise GossipDecodeError("a slice request's seqs are distinct and ascending")
    return SliceRequest(_feed(feed), tuple(checked))


def _parse_slice(obj: list[Any]) -> Slice:
    feed, entries = _fields(obj, 3, "SLICE")
    if type(entries) is not list or len(entries) > MAX_SLICE_ENTRIES:
        raise GossipDecodeError(f"a slice carries 0..{MAX_SLICE_ENTRIES} entries")
    return Slice(_feed(feed), tuple(_entry(entry) for entry in entries))


_PARSERS: Final[dict[int, Callable[[list[Any]], Message]]] = {
    MessageType.CLOCK: _parse_clock,
    MessageType.ENTRIES: _parse_entries,
    MessageType.HAVE: _parse_have,
    MessageType.WANT: _parse_want,
    MessageType.ACK: _parse_ack,
    MessageType.FORK_PROOF: _parse_fork_proof,
    MessageType.MENTION: _parse_mention,
    MessageType.MENTION_ACK: _parse_mention_ack,
    MessageType.DIAL_ME: _parse_dial_me,
    MessageType.DIAL_RESULT: _parse_dial_result,
    MessageType.RESERVE: _parse_reserve,
    MessageType.RESERVATION: _parse_reservation,
    MessageType.CONNECT: _parse_connect,
    MessageType.INCOMING: _parse_incoming,
    MessageType.CIRCUIT: _parse_circuit,
    MessageType.RELAY: _parse_relay,
    MessageType.DM: _parse_dm,
    MessageType.DM_ACK: _parse_dm_ack,
    MessageType.SLICE_REQUEST: _parse_slice_request,
    MessageType.SLICE: _parse_slice,
}


_UNPACK_LIMITS: Final = {
    "max_bin_len": MAX_ENTRY_BYTES,
    "max_str_len": 0,
    "max_array_len": MAX_ENTRIES_PER_FRAME,
    "max_map_len": MAX_NOTES_PER_FRAME,
    "max_ext_len": 0,
}


def _parse(obj: object) -> Message:
    if type(obj) is not list or not obj:
        raise GossipDecodeError("a message is a non-empty array")
    kind = obj[0]
    if type(kind) is not int:
        raise GossipDecodeError("a message starts with its integer type")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise UnknownMessageType(f"unknown message type {kind}")
    return parser(obj)


def decode_message(payload: bytes) -> Message:
    """Decode one frame payload.  Raises only `GossipDecodeError`."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise GossipDecodeError("a frame payload is bytes")
    if len(payload) > MAX_FRAME_BYTES:
        raise GossipDecodeError(f"frame payload is over {MAX_FRAME_BYTES} bytes")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers ExtraData, FormatError, StackError and the limits.
        raise GossipDecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    return _parse(obj)


# --- encoding -------------------------------------------------------------------------------


def _note_value(note: Note | None) -> int:
    if note is None:
        return -1
    if type(note.seq) is not int or not 0 <= note.seq <= MAX_SEQ:
        raise LocalProtocolError(f"note seq out of range: {note.seq!r}")
    return note.seq << 1 | (0 if note.push else 1)


def _wire(message: Message) -> list[Any]:
    if isinstance(message, Clock):
        return [MessageType.CLOCK.value, {k: _note_value(v) for k, v in message.notes.items()}]
    if isinstance(message, Entries):
        return [MessageType.ENTRIES.value, message.feed, message.first_seq, list(message.entries)]
    if isinstance(message, Have):
        return [MessageType.HAVE.value, dict(message.seqs)]
    if isinstance(message, Want):
        return [MessageType.WANT.value, dict(message.from_seqs)]
    if isinstance(message, Ack):
        return [MessageType.ACK.value, message.count, dict(message.seqs)]
    if isinstance(message, ForkProof):
        return [MessageType.FORK_PROOF.value, message.feed, message.seq, message.first, message.second]
    if isinstance(message, Mention):
        return [MessageType.MENTION.value, message.entry, message.stamp]
    if isinstance(message, MentionAck):
        return [MessageType.MENTION_ACK.value, message.entry_id, _plain(message.status), message.need]
    if isinstance(message, DialMe):
        return [MessageType.DIAL_ME.value, message.port]
    if isinstance(message, DialResult):
        status = message.status.value if isinstance(message.status, DialStatus) else message.status
        return [MessageType.DIAL_RESULT.value, message.port, status, message.ip, message.observed_port]
    if isinstance(message, Reserve):
        return [MessageType.RESERVE.value]
    if isinstance(message, Reservation):
        return [MessageType.RESERVATION.value, _plain_int(message.status), message.seconds]
    if isinstance(message, Connect):
        return [MessageType.CONNECT.value, message.key, message.circuit]
    if isinstance(message, Incoming):
        return [MessageType.INCOMING.value, message.key, message.circuit]
    if isinstance(message, Circuit):
        return [MessageType.CIRCUIT.value, message.circuit, _plain_int(message.status)]
    if isinstance(message, Relay):
        return [MessageType.RELAY.value, message.circuit, message.data]
    if isinstance(message, Dm):
        return [MessageType.DM.value, message.recipient, message.sealed, message.stamp]
    if isinstance(message, DmAck):
        return [MessageType.DM_ACK.value, message.dm_id, _plain_int(message.status), message.need]
    if isinstance(message, SliceRequest):
        return [MessageType.SLICE_REQUEST.value, message.feed, list(message.seqs)]
    if isinstance(message, Slice):
        return [MessageType.SLICE.value, message.feed, list(message.entries)]
    raise LocalProtocolError(f"not a gossip message: {message!r}")


def _plain(value: object) -> object:
    """A `MentionStatus` as its int (the checks refuse int subclasses such as bool)."""
    return value.value if isinstance(value, MentionStatus) else value


def _plain_int(value: object) -> object:
    """An IntEnum member as its int (the checks refuse int subclasses such as bool)."""
    return int(value) if isinstance(value, enum.IntEnum) else value


def encode_message(message: Message) -> bytes:
    """The frame payload of a message.  Raises `LocalProtocolError` if it is not valid."""
    obj = _wire(message)
    try:
        _parse(obj)
    except GossipDecodeError as exc:
        raise LocalProtocolError(f"invalid {type(message).__name__}: {exc}") from None
    payload: bytes = msgpack.packb(obj)
    if len(payload) > MAX_FRAME_BYTES:
        raise LocalProtocolError(f"{type(message).__name__} is {len(payload)} bytes encoded")
    return payload


def chunked(mapping: Mapping[bytes, Any], size: int = MAX_NOTES_PER_FRAME) -> list[dict[bytes, Any]]:
    """Split a feed map into maps small enough for one CLOCK/HAVE/WANT."""
    items = list(mapping.items())
    return [dict(items[i : i + size]) for i in range(0, len(items), size)]
