"""`GossipSession`: the sans-IO replication state machine of one connection.

Theory of operation
-------------------
A session replicates feeds with one peer over one authenticated connection.
It owns no socket, reads no clock and never touches the store: it reads the
node's feeds through a `FeedSource` and reports what arrives as events.  The
driver (the node's runtime, the simulator, a test's in-memory pair) feeds it

* `connection_made` ``(now)`` once the transport is up, `connection_lost`;
* `frame_received` ``(payload, now)`` for every frame payload;
* `feed_updated` ``(feed, now)`` whenever the node stored new entries of a
  feed (its own post, or entries from any session, this one included) and
  `fork_found` ``(feed, now)`` when it learned of a fork;
* `entries_stored` ``(feed, now)`` once per `EntriesReceived`, in order,
  after ingesting its entries (this is the acknowledgement: see below);
* `handle_timer` ``(now)`` when ``now`` reaches `get_timer`;
* Plumtree decisions: `set_eager`, `request_push`, and `wants_changed`,
* mention notices: `send_mention` ``(entry, stamp, now)`` and, once per
  `MentionReceived` it decided on, `ack_mention` ``(entry_id, status, need, now)``,

and after each of those collects `frames_to_send`, `next_event` until None,
and `get_timer`.  ``now`` never decreases.

*Clocks (SSB EBT).*  On connect each side sends a CLOCK: for every feed the
node wants (`FeedSource.wanted_feeds`), the latest seq it holds and whether
it wants the feed pushed.  Everything a peer declares it holds (CLOCK, HAVE,
ACK, WANT's ``from_seq - 1``) comes from its append-only store and so never
decreases; a decrease is misbehaviour.

*Streaming and back-pressure.*  For each feed the peer wants, the session
knows the highest seq the peer holds (declared, or sent by it, or sent to it
and acknowledged) and the highest seq it sent; it sends what lies above both
and below its own latest, in ENTRIES batches of at most
`GossipConfig.batch_entries` entries and `GossipConfig.batch_bytes` bytes,
round-robin over feeds so one long feed does not starve the others.  At most
`GossipConfig.window` (<= `MAX_BATCHES_IN_FLIGHT`) batches are
unacknowledged at a time; the next one is read from the source only when an
ACK frees the window, so a slow peer or a slow node stops the flow instead of
growing a queue.  The receiver emits `EntriesReceived`, the node ingests and
calls `entries_stored`, and the receiver ACKs the batch (FIFO, coalesced)
with its new latest seq of the feed.  An ACK below the batch's last seq means
the peer refused the entries (a fork on its side, or our feed is wrong): the
feed is *stalled* for this session (`EntriesRefused`) and nothing more of it
is sent until the peer re-subscribes (any note of the feed, `resubscribe`).
Once caught up, every `feed_updated` sends the new entries at once: live
push is the same rule with one entry.

*Eager and lazy (Plumtree).*  A feed is pushed to the peer only if the peer
asked for pushes in its note and this side is eager for the feed
(`set_eager`: a session default plus per-feed overrides, chosen by the node
so that a few peers per feed are eager).  Otherwise new entries produce a
HAVE notice.  A HAVE promising seqs we lack arms a timer of
`GossipConfig.want_delay`; if the entries have not arrived by another path
when it fires, we send WANT (pull repair) and the peer streams up to its
latest of that moment.  A node that sees duplicates from a peer prunes it
with `request_push(feed, False)`, which re-sends our note with the lazy bit;
a WANT re-grafts a pruned peer (its next note asks for pushes again,
`GossipConfig.graft_on_want`), so the push tree heals where it broke.

*Duplicates.*  Nothing is sent that the peer is known to hold; entries the
peer sent us count as held by it.  Two peers pushing one feed to a third
still duplicate, until the third prunes one of them.

*Fork proofs* travel like entries: when the peer starts wanting a feed, and
on every `fork_found`, the proofs the source holds for it go out once per
(feed, seq) per session; received ones become `ForkProofReceived`.

*Dial-back* (`request_dial_back` / `DialBackAnswered`, and the peer's
`DialBackRequested` / `answer_dial_back`) also bypasses replication: one
request each way at a time; the node does the dialling (`p2pblog.replication`).

*Mention notices* bypass replication: `send_mention` queues a MENTION
whenever the session is open (no feed need be in either clock), the peer
reports it as `MentionReceived` and answers with `ack_mention`, which comes
back as `MentionAcked`.  The session owns a `gossip.mentions.MentionNotices`
part for this exchange (its queues, the pairing of MENTIONs with acks, and
the sending budget; see that module): it routes the two commands and the
MENTION / MENTION_ACK frames to it, queues the events it returns, and sends
its frames ahead of queued ENTRIES batches in every `frames_to_send`, so a
long catch-up does not delay them.  A received MENTION costs `MENTION_COST`
control tokens.

*Slices* (issue 19) also bypass replication: `request_slice` asks the peer
for a few entries of one feed, which come back as `SliceAnswered`; the
peer's `SliceRequested` is answered with `answer_slice`
(`gossip.slices.SliceExchange` owns the pairing; a SLICE_REQUEST costs
`gossip.slices.SLICE_COST` control tokens).

*Peer-named feeds.*  A peer's CLOCK may name any feed; we need state only
for feeds we can serve or want.  A feed we want, or hold (`latest_seq` > 0),
gets a full `_Feed` record; one we neither want nor hold gets only the
peer's note as one int (``seq << 1 | lazy``, about 130 bytes with its key,
against about 300 for a record), kept so that if we come to want or hold it
during the session (`wants_changed`, `feed_updated`, `fork_found`) the note
becomes a record and we serve the peer from what it declared, without
resending what it holds.  Feeds the peer names that we do not want (held or
noted) are at most `GossipConfig.max_peer_feeds` per session; the noted ones
also take one unit each of a `PeerFeedBudget` that the node shares between
its sessions (`PEER_FEED_BUDGET` units), given back when the peer's note
says -1, when we come to want or hold the feed, and when the session
closes.  Past either bound further feeds are dropped and counted
(``drop.too many peer feeds``, ``drop.peer feed budget spent``); a dropped
note costs us only pushes of a feed we might follow later in this session.
Feeds we want never count, so honest replication of what we follow is
untouched by strangers.  Without a shared budget a session gets a private
one of ``max_peer_feeds`` units (only the per-session bound then applies).

*Bounds.*  Per peer, everything a peer can grow is bounded whatever the peer
or the driver does:

==========================  ==================================================
what                        bound
==========================  ==================================================
feed records, notes         feeds we want + `GossipConfig.max_peer_feeds`;
                            notes also share the node's `PeerFeedBudget`
ENTRIES frames queued       ``window`` batches (<= 1 MiB each), read from the
                            source only when an ACK frees the window
FORK_PROOF frames queued    `MAX_QUEUED_FORK_PROOFS` (more dropped, counted)
fork proofs remembered      `MAX_FORK_SEQS` (sent + received; more dropped)
MENTION / MENTION_ACK       `MAX_QUEUED_MENTIONS` (`send_mention` False) /
                            `MAX_QUEUED_MENTION_ACKS` (more dropped, counted)
SLICE_REQUEST / SLICE       4 of ours unanswered (`request_slice` False), 4 of
                            the peer's unanswered (more dropped, counted)
CLOCK/HAVE/WANT/ACK pending  one entry per tracked feed (coalesced until sent);
                            ACKs also at most `MAX_BATCHES_IN_FLIGHT` batches
received, unacknowledged    `MAX_BATCHES_IN_FLIGHT` (the excess is misbehaviour)
WANT timers                 one live heap entry per feed we want (a HAVE
                            arms one only if none is armed); a stale entry
                            (we stopped wanting) lasts at most ``want_delay``
event queue                 ``window`` EntriesReceived + `MAX_QUEUED_NOTICES`
                            notices and mention events (more only counted)
stats                       fixed names, plus the node's reasons, at most
                            ``misbehaviour_limit`` of them
control messages            the `CONTROL_RATE` token bucket
==========================  ==================================================

*Bad input.*  A malformed frame, entries for a feed we never wanted, entries
that skip seqs, more unacknowledged batches than the window, a declared seq
that goes backwards, an ACK for nothing, a WANT for a feed not in its clock,
a MENTION_ACK for no MENTION,
control messages over the rate budget (`CONTROL_RATE`, an
`identity.pacing.TokenBucket`): each is dropped,
counted in `stats` and reported as `PeerMisbehaved`; the node adds what only
it can see (a forged entry) with `report_misbehaviour`.  At
`GossipConfig.misbehaviour_limit` the session fails (`SessionFailed`) and the
driver should close the connection.  Nothing a peer sends raises.  Our own
misuse (time going backwards, `entries_stored` out of order, an
`ack_mention` with no `MentionReceived` to answer, a message argument the
peer would refuse, an input in the wrong state) raises `LocalProtocolError`.

States and inputs (`_TABLE`): RUN handles the input, IGNORE drops it
silently, a missing pair is misuse.

=================  ==============  ==============  ==============
input              IDLE            OPEN            CLOSED
=================  ==============  ==============  ==============
connection_made    -> OPEN         misuse          misuse
frame_received     misuse          RUN             IGNORE
node inputs [1]_   IGNORE          RUN             IGNORE
set_eager          RUN             RUN             IGNORE
entries_stored     misuse          RUN             IGNORE
send_mention [2]_  IGNORE          RUN             IGNORE
ack_mention        misuse          RUN             IGNORE
request_slice      IGNORE          RUN             IGNORE
answer_slice       misuse          RUN             IGNORE
handle_timer       IGNORE          RUN             IGNORE
connection_lost    -> CLOSED       -> CLOSED       IGNORE
=================  ==============  ==============  ==============

.. [1] `feed_updated`, `fork_found`, `wants_changed`, `request_push`,
   `report_misbehaviour`: before the connection there is nothing to tell the
   peer (`connection_made` reads the source afresh), after it nothing to do.
.. [2] Ignored means not queued: `send_mention` returns False.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from gossip.mentions import DM_COST, DM_SHARE, MAX_QUEUED_DMS, MentionNotices
from gossip.mentions import MAX_QUEUED_MENTION_ACKS as MAX_QUEUED_MENTION_ACKS
from gossip.mentions import MAX_QUEUED_MENTIONS as MAX_QUEUED_MENTIONS
from gossip.mentions import MENTION_COST as MENTION_COST
from gossip.mentions import DmAcked as DmAcked
from gossip.mentions import DmReceived as DmReceived
from gossip.mentions import MentionAcked as MentionAcked
from gossip.mentions import MentionReceived as MentionReceived
from gossip.messages import (
    ENTRIES_OVERHEAD,
    ENTRY_OVERHEAD,
    FEED_BYTES,
    Ack,
    Circuit,
    Clock,
    Connect,
    DialMe,
    DialResult,
    Dm,
    DmAck,
    Entries,
    ForkProof,
    GossipDecodeError,
    Have,
    Incoming,
    Mention,
    MentionAck,
    Message,
    Note,
    Relay,
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
from gossip.slices import SLICE_COST, SliceAnswered, SliceExchange, SliceRequested
from identity.errors import LocalProtocolError
from identity.limits import MAX_BATCHES_IN_FLIGHT, MAX_ENTRIES_PER_FRAME, MAX_ENTRY_BYTES, MAX_FRAME_BYTES
from identity.pacing import TokenBucket

# --- protocol tunables (local choices; the peer does not depend on them) -------------------

#: Bytes of RELAY frames queued on a session at most (a relayed connection's own window
#: keeps it far below: its peer's session acknowledges at most a few batches ahead).
RELAY_QUEUE_BYTES: Final = 4 * 1024 * 1024

#: Entries per ENTRIES batch (<= the protocol's `MAX_ENTRIES_PER_FRAME`).
BATCH_ENTRIES: Final = MAX_ENTRIES_PER_FRAME
#: Bytes of entries per ENTRIES batch; with the framing it stays under `MAX_FRAME_BYTES`.
BATCH_BYTES: Final = 512 * 1024
#: Seconds between a HAVE for entries we lack and our WANT, so that an eager
#: path can deliver them first (Plumtree's IHAVE timer).
WANT_DELAY: Final = 0.5
#: Control budget: tokens a peer earns per second, and may save up.  A CLOCK,
#: HAVE, WANT or FORK_PROOF costs one token plus one per `NOTES_PER_TOKEN`
#: feeds it names (each costs us a store read); beyond the budget it is
#: dropped as misbehaviour.  ENTRIES and ACK are bounded by the window instead.
CONTROL_RATE: Final = 200.0
CONTROL_BURST: Final = 1000.0
NOTES_PER_TOKEN: Final = 100
# MENTION_COST, MAX_QUEUED_MENTIONS and MAX_QUEUED_MENTION_ACKS live with the
# mention exchange in `gossip.mentions` (imported above, and re-exported).
#: Protocol violations before the session gives up on the peer.
MISBEHAVIOUR_LIMIT: Final = 8
#: Fork proofs waiting to be sent; more are dropped (and counted).
MAX_QUEUED_FORK_PROOFS: Final = 64
#: Fork proofs (feed, seq) one session remembers as exchanged, sent or
#: received; beyond it further ones are dropped (and counted).  A fork is
#: rare and one proof per feed marks it forked; a peer could otherwise name a
#: new seq in every FORK_PROOF of a feed it authors.
MAX_FORK_SEQS: Final = 1024
#: Feeds the peer names in its clock that we do not want, per session (see
#: "Peer-named feeds" in the module docstring).  An honest peer names the
#: feeds it replicates (its follows); 4,096 covers all but the heaviest
#: followers: about 0.5 MB of notes (130 bytes each, measured with
#: tracemalloc) or 1.2 MB of records of feeds we hold (300 bytes each).
MAX_PEER_FEEDS: Final = 4096
#: Feeds named by peers that we neither want nor hold, across all sessions
#: sharing one `PeerFeedBudget` (the node's): about 8.5 MB at 130 bytes
#: each, sixteen peers' worth of full clocks.
PEER_FEED_BUDGET: Final = 65_536
#: Notices (`PeerMisbehaved`, `MessageDropped`, `EntriesRefused`,
#: `ForkProofReceived`) and mention events (`MentionReceived`, `MentionAcked`)
#: kept in the event queue, together, before further ones are only counted.
MAX_QUEUED_NOTICES: Final = 1024


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Tunables of one session; the defaults are the module's constants."""

    batch_entries: int = BATCH_ENTRIES
    batch_bytes: int = BATCH_BYTES
    window: int = MAX_BATCHES_IN_FLIGHT
    want_delay: float = WANT_DELAY
    control_rate: float = CONTROL_RATE
    control_burst: float = CONTROL_BURST
    misbehaviour_limit: int = MISBEHAVIOUR_LIMIT
    max_queued_fork_proofs: int = MAX_QUEUED_FORK_PROOFS
    max_peer_feeds: int = MAX_PEER_FEEDS
    max_fork_seqs: int = MAX_FORK_SEQS
    max_queued_notices: int = MAX_QUEUED_NOTICES
    max_queued_mentions: int = MAX_QUEUED_MENTIONS
    max_queued_mention_acks: int = MAX_QUEUED_MENTION_ACKS
    #: A WANT also asks the peer to push the feed again if we had pruned it.
    graft_on_want: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.batch_entries <= MAX_ENTRIES_PER_FRAME:
            raise LocalProtocolError(f"batch_entries must be 1..{MAX_ENTRIES_PER_FRAME}")
        most = MAX_FRAME_BYTES - ENTRIES_OVERHEAD - ENTRY_OVERHEAD * MAX_ENTRIES_PER_FRAME
        if not 1 <= self.batch_bytes <= most:
            raise LocalProtocolError(f"batch_bytes must be 1..{most}")
        if not 1 <= self.window <= MAX_BATCHES_IN_FLIGHT:
            raise LocalProtocolError(f"window must be 1..{MAX_BATCHES_IN_FLIGHT} (a protocol limit)")
        if self.want_delay < 0 or self.control_rate <= 0 or self.control_burst < 1:
            raise LocalProtocolError("want_delay >= 0, control_rate > 0 and control_burst >= 1")
        limits = (
            self.misbehaviour_limit,
            self.max_queued_fork_proofs,
            self.max_peer_feeds,
            self.max_fork_seqs,
            self.max_queued_mentions,
            self.max_queued_mention_acks,
        )
        if min(limits) < 1:
            raise LocalProtocolError("limits must be >= 1")


class PeerFeedBudget:
    """Feeds named by peers that we neither want nor hold, counted across the
    sessions that share this object (one per node; see "Peer-named feeds" in
    the module docstring).  Sans-IO plain counting: a session takes one unit
    per such feed it remembers and gives it back when it forgets the feed,
    starts to want or hold it, or closes."""

    def __init__(self, limit: int = PEER_FEED_BUDGET) -> None:
        if limit < 0:
            raise LocalProtocolError("a peer feed budget is >= 0")
        self.limit = limit
        #: Units held by sessions now.
        self.used = 0
        #: Peer-named feeds refused because the budget was spent.
        self.refused = 0

    def take(self) -> bool:
        """One unit, or False (counted in ``refused``) if the budget is spent."""
        if self.used >= self.limit:
            self.refused += 1
            return False
        self.used += 1
        return True

    def give_back(self, units: int = 1) -> None:
        if not 0 <= units <= self.used:
            raise LocalProtocolError(f"giving back {units} of {self.used} units")
        self.used -= units


class FeedSource(Protocol):
    """What a session reads from the node (its store).  All reads, no writes."""

    def wanted_feeds(self) -> Collection[bytes]:
        """The feeds this node replicates (follows, its own, ...)."""
        ...

    def latest_seq(self, feed: bytes) -> int:
        """The latest seq held of feed (0 if none); never decreases."""
        ...

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        """Up to ``limit`` signed entries of feed from ``first_seq`` on, consecutive."""
        ...

    def fork_proofs(self, feed: bytes) -> Sequence[tuple[int, bytes, bytes]]:
        """``(seq, entry, other entry)`` for every fork the node holds proof of."""
        ...


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntriesReceived:
    """The peer sent entries ``first_seq..`` of feed.  Ingest them, then call
    `GossipSession.entries_stored` (once per event, in order).  The node checks
    that each entry's author is ``feed`` and its seq ``first_seq + i``.

    The feed may be one we stopped wanting while these were in flight; the
    node may store them or not (not storing them is a refusal: the peer stops
    sending the feed until we want it again)."""

    feed: bytes
    first_seq: int
    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ForkProofReceived:
    """The peer sent a fork proof; the node verifies and stores it, and calls
    `GossipSession.fork_found` on its other sessions to pass it on."""

    feed: bytes
    seq: int
    first: bytes
    second: bytes


@dataclass(frozen=True, slots=True)
class EntriesRefused:
    """The peer acknowledged our entries of feed only up to ``seq``: it refused
    the rest.  We stopped sending the feed to it."""

    feed: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """The peer broke the protocol; what it sent was dropped.  ``reason`` is one of
    a fixed set (it names a counter in `GossipSession.stats`)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """Something was dropped for an ordinary reason (not the peer's fault)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DialBackRequested:
    """The peer asks to be dialled back on ``port`` at its connection's address.
    Answer with `GossipSession.answer_dial_back` (once)."""

    port: int


@dataclass(frozen=True, slots=True)
class DialBackAnswered:
    """The peer's answer to our `GossipSession.request_dial_back`: a
    `gossip.messages.DialStatus` (or a plain int), and the address the peer
    sees our connection coming from."""

    port: int
    status: int
    ip: bytes
    observed_port: int


@dataclass(frozen=True, slots=True)
class ReservationRequested:
    """The peer asks us to relay circuits to it; answer with `GossipSession.answer_reservation`."""


@dataclass(frozen=True, slots=True)
class ReservationAnswered:
    """The peer's answer to our `GossipSession.request_reservation`."""

    status: int
    seconds: int


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The peer asks us (a relay) to open its circuit ``circuit`` to ``key``."""

    key: bytes
    circuit: int


@dataclass(frozen=True, slots=True)
class IncomingCircuit:
    """The peer (a relay) says ``key`` opened circuit ``circuit`` to us."""

    key: bytes
    circuit: int


@dataclass(frozen=True, slots=True)
class CircuitChanged:
    """The peer says circuit ``circuit`` is open, refused or closed (`RelayStatus`)."""

    circuit: int
    status: int


@dataclass(frozen=True, slots=True)
class RelayReceived:
    """Bytes of circuit ``circuit`` arrived."""

    circuit: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session gave up on the peer; the driver closes the connection."""

    reason: str


Event = (
    SliceRequested
    | SliceAnswered
    | EntriesReceived
    | ForkProofReceived
    | EntriesRefused
    | MentionReceived
    | MentionAcked
    | DmReceived
    | DmAcked
    | DialBackRequested
    | DialBackAnswered
    | ReservationRequested
    | ReservationAnswered
    | ConnectRequested
    | IncomingCircuit
    | CircuitChanged
    | RelayReceived
    | PeerMisbehaved
    | MessageDropped
    | SessionFailed
)
_Notice = ForkProofReceived | EntriesRefused | PeerMisbehaved | MessageDropped
#: Events held to `GossipConfig.max_queued_notices` (EntriesReceived is bounded
#: by the window, SessionFailed happens once).
_Bounded = (
    SliceRequested
    | SliceAnswered
    | _Notice
    | MentionReceived
    | MentionAcked
    | DmReceived
    | DmAcked
    | DialBackRequested
    | DialBackAnswered
    | ReservationRequested
    | ReservationAnswered
    | ConnectRequested
    | IncomingCircuit
    | CircuitChanged
)


def _cost(message: Message) -> float:
    """Control-budget tokens a message costs (see `NOTES_PER_TOKEN`)."""
    if isinstance(message, Clock):
        feeds = len(message.notes)
    elif isinstance(message, Have):
        feeds = len(message.seqs)
    elif isinstance(message, Want):
        feeds = len(message.from_seqs)
    elif isinstance(message, Mention):
        return MENTION_COST
    elif isinstance(message, Dm):
        return DM_COST
    elif isinstance(message, SliceRequest):
        return SLICE_COST
    else:
        feeds = 0
    return 1 + feeds // NOTES_PER_TOKEN


def _note_bits(note: Note) -> int:
    """A peer's note as one int, ``seq << 1 | lazy`` (as on the wire, and smaller than a `Note`)."""
    return note.seq << 1 | (not note.push)


# --- state ----------------------------------------------------------------------------------


class SessionState(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class _Do(enum.Enum):
    RUN = "run"
    IGNORE = "ignore"


_IDLE, _OPEN, _CLOSED = SessionState.IDLE, SessionState.OPEN, SessionState.CLOSED
_NODE_INPUTS: Final = (
    "feed_updated",
    "fork_found",
    "wants_changed",
    "request_push",
    "resubscribe",
    "report_misbehaviour",
)
#: (state, input) -> what to do; a missing pair is `LocalProtocolError`.
_TABLE: Final[dict[tuple[SessionState, str], _Do]] = {
    (_IDLE, "connection_made"): _Do.RUN,
    (_OPEN, "frame_received"): _Do.RUN,
    (_CLOSED, "frame_received"): _Do.IGNORE,
    **{(_IDLE, name): _Do.IGNORE for name in _NODE_INPUTS},
    **{(_OPEN, name): _Do.RUN for name in _NODE_INPUTS},
    **{(_CLOSED, name): _Do.IGNORE for name in _NODE_INPUTS},
    (_IDLE, "set_eager"): _Do.RUN,
    (_OPEN, "set_eager"): _Do.RUN,
    (_CLOSED, "set_eager"): _Do.IGNORE,
    (_OPEN, "entries_stored"): _Do.RUN,
    (_CLOSED, "entries_stored"): _Do.IGNORE,
    (_IDLE, "send_mention"): _Do.IGNORE,
    (_OPEN, "send_mention"): _Do.RUN,
    (_CLOSED, "send_mention"): _Do.IGNORE,
    (_OPEN, "ack_mention"): _Do.RUN,
    (_CLOSED, "ack_mention"): _Do.IGNORE,
    (_IDLE, "send_dm"): _Do.IGNORE,
    (_OPEN, "send_dm"): _Do.RUN,
    (_CLOSED, "send_dm"): _Do.IGNORE,
    (_OPEN, "ack_dm"): _Do.RUN,
    (_CLOSED, "ack_dm"): _Do.IGNORE,
    (_IDLE, "request_dial_back"): _Do.IGNORE,
    (_OPEN, "request_dial_back"): _Do.RUN,
    (_CLOSED, "request_dial_back"): _Do.IGNORE,
    (_OPEN, "answer_dial_back"): _Do.RUN,
    (_CLOSED, "answer_dial_back"): _Do.IGNORE,
    (_IDLE, "request_reservation"): _Do.IGNORE,
    (_OPEN, "request_reservation"): _Do.RUN,
    (_CLOSED, "request_reservation"): _Do.IGNORE,
    (_IDLE, "answer_reservation"): _Do.IGNORE,
    (_OPEN, "answer_reservation"): _Do.RUN,
    (_CLOSED, "answer_reservation"): _Do.IGNORE,
    (_IDLE, "send_connect"): _Do.IGNORE,
    (_OPEN, "send_connect"): _Do.RUN,
    (_CLOSED, "send_connect"): _Do.IGNORE,
    (_IDLE, "send_incoming"): _Do.IGNORE,
    (_OPEN, "send_incoming"): _Do.RUN,
    (_CLOSED, "send_incoming"): _Do.IGNORE,
    (_IDLE, "send_circuit"): _Do.IGNORE,
    (_OPEN, "send_circuit"): _Do.RUN,
    (_CLOSED, "send_circuit"): _Do.IGNORE,
    (_IDLE, "send_relay"): _Do.IGNORE,
    (_OPEN, "send_relay"): _Do.RUN,
    (_CLOSED, "send_relay"): _Do.IGNORE,
    (_IDLE, "request_slice"): _Do.IGNORE,
    (_OPEN, "request_slice"): _Do.RUN,
    (_CLOSED, "request_slice"): _Do.IGNORE,
    (_OPEN, "answer_slice"): _Do.RUN,
    (_CLOSED, "answer_slice"): _Do.IGNORE,
    (_IDLE, "handle_timer"): _Do.IGNORE,
    (_OPEN, "handle_timer"): _Do.RUN,
    (_CLOSED, "handle_timer"): _Do.IGNORE,
    (_IDLE, "connection_lost"): _Do.RUN,
    (_OPEN, "connection_lost"): _Do.RUN,
    (_CLOSED, "connection_lost"): _Do.IGNORE,
}


@dataclass(slots=True)
class _Feed:
    """Everything the session knows about one feed, in both directions."""

    # -- sending: what the peer told us and what we sent it
    peer_wants: bool = False
    #: The peer's note asked for pushes (False: lazy, HAVE only).
    peer_push: bool = True
    #: Highest seq the peer declared (clock, have, ack, want); must not decrease.
    peer_declared: int = 0
    #: Highest seq the peer is known to hold (declared, or it sent it to us).
    peer_known: int = 0
    #: Highest seq sent to the peer in this session.
    sent: int = 0
    #: Lazy mode: the peer's WANT asked for entries up to this seq.
    pull_to: int = 0
    #: Highest seq announced to the peer with HAVE.
    noticed: int = 0
    #: The peer refused our entries; send none until it re-subscribes.
    stalled: bool = False
    #: Our eagerness for this feed (None: the session default).
    eager: bool | None = None
    # -- receiving: what we want from the peer
    we_want: bool = False
    ever_wanted: bool = False
    ask_push: bool = True
    #: Highest seq received from the peer in this session.
    received: int = 0
    #: Highest seq a HAVE promised that we lack, and when to WANT it.
    want_seq: int = 0
    want_deadline: float | None = None
    #: Highest seq our WANTs asked for.
    wanted_until: int = 0
    #: Fork proof seqs sent to or received from the peer (None: none yet, which
    #: saves an empty set, 216 bytes, on every feed).
    forks: set[int] | None = None


@dataclass(slots=True)
class _RxBatch:
    feed: bytes
    done: bool


class GossipSession:
    """Replication with one peer, sans IO.  See the module docstring."""

    def __init__(
        self,
        source: FeedSource,
        *,
        eager: bool = True,
        config: GossipConfig | None = None,
        now: float = 0.0,
        peer_feed_budget: PeerFeedBudget | None = None,
    ) -> None:
        self.config = config if config is not None else GossipConfig()
        # Without a shared budget, a private one: only the per-session bound applies.
        self._budget = (
            peer_feed_budget if peer_feed_budget is not None else PeerFeedBudget(self.config.max_peer_feeds)
        )
        self._source = source
        self._eager = eager
        self._state = SessionState.IDLE
        self._now = now
        #: Counts of everything that happened, by name.
        self.stats: Counter[str] = Counter()
        #: Protocol violations by the peer so far (ours and the node's reports).
        self.misbehaviour = 0
        self._feeds: dict[bytes, _Feed] = {}
        #: Peer-named feeds we do not want but hold, tracked in `_feeds`.
        self._peer_feeds = 0
        #: Peer-named feeds we neither want nor hold: only the peer's note,
        #: ``seq << 1 | lazy``, each holding a unit of `_budget`.
        self._notes: dict[bytes, int] = {}
        #: Fork proof seqs in all `_Feed.forks` sets.
        self._fork_seqs = 0
        # Sending: feeds with entries to send (an ordered set, round-robin),
        # batches awaiting ACK as (feed, last seq), and encoded data frames.
        self._ready: dict[bytes, None] = {}
        self._in_flight: deque[tuple[bytes, int]] = deque()
        self._data: deque[bytes] = deque()
        self._data_bytes = 0
        self._queued_proofs = 0
        # Control messages, coalesced until `frames_to_send`.
        self._clock_pending: dict[bytes, None] = {}
        self._have_pending: dict[bytes, None] = {}
        self._want_pending: dict[bytes, None] = {}
        self._ack_count = 0
        self._ack_feeds: dict[bytes, None] = {}
        # Receiving: batches not yet acknowledged, oldest first.
        self._rx: deque[_RxBatch] = deque()
        self._want_timers: list[tuple[float, int, bytes]] = []
        self._timer_seq = 0
        self._control = TokenBucket(self.config.control_rate, self.config.control_burst, now)
        self._mentions = MentionNotices(
            control_rate=self.config.control_rate,
            control_burst=self.config.control_burst,
            max_queued=self.config.max_queued_mentions,
            max_queued_acks=self.config.max_queued_mention_acks,
            stats=self.stats,
            now=now,
        )
        self._dms = MentionNotices(
            control_rate=self.config.control_rate,
            control_burst=self.config.control_burst,
            max_queued=MAX_QUEUED_DMS,
            max_queued_acks=self.config.max_queued_mention_acks,
            stats=self.stats,
            now=now,
            name="dm",
            share=DM_SHARE,
            cost=DM_COST,
        )
        #: Slices (issue 19): our requests and the peer's, paired with their answers.
        self._slices = SliceExchange(self.stats)
        self._events: deque[Event] = deque()
        #: `_Bounded` events in the queue.
        self._bounded = 0
        #: Dial-back: the port we asked the peer to dial (one request at a time), whether
        #: the peer's request waits for our answer, and the frames to send.
        self._dial_asked: int | None = None
        self._dial_owed: int | None = None
        self._dial_frames: list[bytes] = []
        #: Relaying: whether our RESERVE waits for its answer, whether the peer's waits for
        #: ours, and the RELAY frames queued (and their bytes, at most `RELAY_QUEUE_BYTES`).
        self._reserve_asked = False
        self._reserve_owed = False
        self._relay_frames: deque[bytes] = deque()
        self.relay_queued = 0

    # ============================================================ outputs

    @property
    def state(self) -> SessionState:
        return self._state

    def frames_to_send(self) -> list[bytes]:
        """Frame payloads to send, in order; the driver writes them all."""
        if self._state is not SessionState.OPEN:
            return []
        out: list[bytes] = []
        latest = self._source.latest_seq
        if self._clock_pending:
            notes: dict[bytes, Note | None] = {}
            for feed in self._clock_pending:
                st = self._feeds[feed]
                notes[feed] = Note(latest(feed), st.ask_push) if st.we_want else None
            out += [encode_message(Clock(part)) for part in chunked(notes)]
            self._clock_pending.clear()
        if self._ack_count:
            seqs = {feed: latest(feed) for feed in self._ack_feeds}
            out.append(encode_message(Ack(self._ack_count, seqs)))
            self.stats["tx.acks"] += 1
            self._ack_count = 0
            self._ack_feeds.clear()
        if self._have_pending:
            haves = {feed: latest(feed) for feed in self._have_pending}
            out += [encode_message(Have(part)) for part in chunked(haves)]
            self.stats["tx.haves"] += len(haves)
            self._have_pending.clear()
        if self._want_pending:
            wants: dict[bytes, int] = {}
            for feed in self._want_pending:
                st = self._feeds[feed]
                held = latest(feed)
                if st.we_want and held < st.wanted_until:
                    wants[feed] = held + 1
            out += [encode_message(Want(part)) for part in chunked(wants)]
            self.stats["tx.wants"] += len(wants)
            self._want_pending.clear()
        # Small and rare: ahead of the ENTRIES batches, not behind a catch-up.
        out += self._mentions.frames_to_send()
        out += self._dms.frames_to_send()
        out += self._slices.frames_to_send()
        out += self._dial_frames
        self._dial_frames.clear()
        out += self._relay_frames
        self._relay_frames.clear()
        self.relay_queued = 0
        out += self._data
        self._data.clear()
        self._data_bytes = 0
        self._queued_proofs = 0
        self.stats["tx.frames"] += len(out)
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, _Bounded):
            self._bounded -= 1
        return event

    def get_timer(self) -> float | None:
        """The earliest time at which `handle_timer` has work, or None."""
        while self._want_timers:
            deadline, _, feed = self._want_timers[0]
            if self._feeds[feed].want_deadline == deadline:
                return deadline
            heapq.heappop(self._want_timers)
        return None

    @property
    def batches_in_flight(self) -> int:
        """ENTRIES batches we sent that the peer has not acknowledged."""
        return len(self._in_flight)

    @property
    def batches_unacknowledged(self) -> int:
        """ENTRIES batches we received and have not yet acknowledged (<= `MAX_BATCHES_IN_FLIGHT`)."""
        return len(self._rx) + self._ack_count

    @property
    def queued_bytes(self) -> int:
        """Bytes of data, mention and DM frames (ENTRIES, FORK_PROOF, MENTION,
        MENTION_ACK, DM, DM_ACK) waiting for `frames_to_send`."""
        return self._data_bytes + self._mentions.queued_bytes + self._dms.queued_bytes

    @property
    def queued_fork_proofs(self) -> int:
        return self._queued_proofs

    @property
    def queued_mentions(self) -> int:
        """MENTIONs waiting for `frames_to_send` (<= `GossipConfig.max_queued_mentions`)."""
        return self._mentions.queued_mentions

    @property
    def queued_mention_acks(self) -> int:
        """MENTION_ACKs waiting for `frames_to_send` (<= `GossipConfig.max_queued_mention_acks`)."""
        return self._mentions.queued_acks

    @property
    def mentions_unanswered(self) -> int:
        """MENTIONs sent in this session that the peer has not acknowledged."""
        return self._mentions.unanswered

    def peer_wants(self, feed: bytes) -> bool:
        st = self._feeds.get(feed)
        return feed in self._notes if st is None else st.peer_wants

    def peer_seq(self, feed: bytes) -> int:
        """The highest seq of feed the peer is known to hold."""
        st = self._feeds.get(feed)
        if st is None:
            return self._notes.get(feed, 0) >> 1
        return st.peer_known

    @property
    def peer_feeds(self) -> int:
        """Feeds the peer named that we did not want, tracked now (<= `GossipConfig.max_peer_feeds`)."""
        return self._peer_feeds + len(self._notes)

    @property
    def noted_feeds(self) -> int:
        """Of those, the ones we neither want nor hold: units of the `PeerFeedBudget` held."""
        return len(self._notes)

    @property
    def tracked_feeds(self) -> int:
        """Every feed the session keeps anything about."""
        return len(self._feeds) + len(self._notes)

    @property
    def fork_seqs(self) -> int:
        """Fork proofs remembered as exchanged (<= `GossipConfig.max_fork_seqs`)."""
        return self._fork_seqs

    @property
    def pending_timers(self) -> int:
        """Entries in the WANT timer heap (<= feeds we want, plus stale ones of wants we
        dropped within `GossipConfig.want_delay`)."""
        return len(self._want_timers)

    def is_eager(self, feed: bytes) -> bool:
        """Whether we push feed to the peer (if the peer asks for pushes)."""
        st = self._feeds.get(feed)
        return self._eager if st is None or st.eager is None else st.eager

    # ============================================================ inputs

    def connection_made(self, now: float) -> None:
        """The transport is up: send our clock."""
        if not self._enter("connection_made", now):
            return
        self._state = SessionState.OPEN
        # The budgets start full from the opening, whatever the idle time before.
        self._control = TokenBucket(self.config.control_rate, self.config.control_burst, now)
        self._mentions.start(now)
        self._dms.start(now)
        for feed in sorted(self._source.wanted_feeds()):  # not set order: it varies per process
            self._want(feed)
        self._pump()

    def connection_lost(self, now: float) -> None:
        if self._enter("connection_lost", now):
            self._close()

    def frame_received(self, payload: bytes, now: float) -> None:
        """Process one frame payload from the peer.  Never raises for its content."""
        if not self._enter("frame_received", now):
            self.stats["drop.closed"] += 1
            return
        self.stats["rx.frames"] += 1
        try:
            message = decode_message(payload)
        except UnknownMessageType as exc:
            self._dropped("unknown message type", str(exc))
            return
        except GossipDecodeError as exc:
            self._misbehaved("malformed frame", str(exc))
            return
        if not isinstance(message, Entries | Ack | Relay) and not self._control.take(now, _cost(message)):
            self._misbehaved("too many messages", type(message).__name__)
            return
        self._dispatch(message, now)
        self._pump()

    def feed_updated(self, feed: bytes, now: float) -> None:
        """The node stored new entries of feed: push them, or announce them (HAVE)."""
        if self._enter("feed_updated", now):
            if feed in self._notes:
                self._promote(feed, counted=True)
            self._refresh(feed)
            self._pump()

    def fork_found(self, feed: bytes, now: float) -> None:
        """The node holds a new fork proof of feed: pass it on if the peer wants the feed."""
        if self._enter("fork_found", now):
            if feed in self._notes:
                self._promote(feed, counted=True)  # sends the proofs
                return
            st = self._feeds.get(feed)
            if st is not None and st.peer_wants:
                self._send_fork_proofs(feed, st)

    def wants_changed(self, now: float) -> None:
        """`FeedSource.wanted_feeds` changed: tell the peer (clock notes)."""
        if not self._enter("wants_changed", now):
            return
        wanted = set(self._source.wanted_feeds())
        for feed, st in self._feeds.items():
            if st.we_want and feed not in wanted:
                st.we_want = False
                st.want_deadline = None
                st.want_seq = st.wanted_until = 0
                self._clock_pending[feed] = None
        for feed in sorted(wanted):
            self._want(feed)

    def set_eager(self, eager: bool, now: float, feed: bytes | None = None) -> None:
        """Push (True) or only announce (False) new entries: for feed, or by default.

        Plumtree's eager/lazy choice on the sending side; the node keeps a few
        eager peers per feed.  A per-feed choice overrides the default.
        """
        if not self._enter("set_eager", now):
            return
        if feed is None:
            self._eager = eager
            for name in list(self._feeds):
                self._refresh(name)
        else:
            self._check_feed(feed)
            st = self._feeds.get(feed)
            if st is None:
                st = self._promote(feed, counted=True) if feed in self._notes else _Feed()
                self._feeds[feed] = st
            st.eager = eager
            self._refresh(feed)
        self._pump()

    def request_push(self, feed: bytes, push: bool, now: float) -> None:
        """Ask the peer to push feed (graft) or only to announce it (prune)."""
        if not self._enter("request_push", now):
            return
        st = self._feeds.get(feed)
        if st is None or not st.we_want:
            raise LocalProtocolError("request_push for a feed we do not want")
        if st.ask_push != push:
            st.ask_push = push
            self._clock_pending[feed] = None

    def resubscribe(self, feed: bytes, now: float) -> None:
        """Send our note of feed again: the peer resumes sending a feed it stalled after we
        refused entries (ones we may take now, e.g. stamped ahead of our clock then)."""
        if not self._enter("resubscribe", now):
            return
        st = self._feeds.get(feed)
        if st is not None and st.we_want:
            self._clock_pending[feed] = None

    def entries_stored(self, feed: bytes, now: float) -> None:
        """The node ingested the oldest `EntriesReceived` still open (of feed): ACK it."""
        if not self._enter("entries_stored", now):
            return
        for batch in self._rx:
            if not batch.done:
                if batch.feed != feed:
                    raise LocalProtocolError("entries_stored out of order: call it once per event, in order")
                batch.done = True
                break
        else:
            raise LocalProtocolError("entries_stored without an EntriesReceived to acknowledge")
        self._release_acks()
        self._refresh(feed)
        self._pump()

    def report_misbehaviour(self, reason: str, now: float) -> None:
        """The node found the peer's data bad (a forged entry, an invalid fork proof)."""
        if self._enter("report_misbehaviour", now):
            self.stats[f"misbehaved.{reason}"] += 1
            self._score(reason)

    def send_mention(self, entry: bytes, stamp: bytes, now: float) -> bool:
        """Queue a MENTION of ``entry`` (signed bytes) with ``stamp`` (b"": none).

        False (counted in ``stats["mentions.not_queued"]``) if it was not
        queued: the session is not open, `GossipConfig.max_queued_mentions`
        are waiting, or our sending budget is spent (see the module
        docstring); the node may try again later.  An entry or stamp the
        peer's decoder would refuse raises `LocalProtocolError`.
        """
        frame = encode_message(Mention(entry, stamp))
        return self._mentions.send(frame, now, session_open=self._enter("send_mention", now))

    def ack_mention(self, entry_id: bytes, status: int, need: int, now: float) -> None:
        """Answer the peer's MENTION of ``entry_id``: a `MentionStatus` and, with
        NEED_WORK, the work bits we require of this peer (else 0).

        Call it at most once per `MentionReceived`, on this session; more
        answers than events raise `LocalProtocolError`, as do arguments the
        peer's decoder would refuse.  Ignored once the session closed.
        """
        frame = encode_message(MentionAck(entry_id, status, need))
        if self._enter("ack_mention", now):
            self._mentions.ack(frame)

    def send_dm(self, recipient: bytes, sealed: bytes, stamp: bytes, now: float) -> bool:
        """Queue a DM: ``sealed`` bytes for ``recipient`` (the peer, or someone the peer
        holds messages for), with ``stamp``.  False (counted in ``dms.not_queued``) if
        the session is not open, `MAX_QUEUED_DMS` wait, or the DM budget is spent."""
        frame = encode_message(Dm(recipient, sealed, stamp))
        return self._dms.send(frame, now, session_open=self._enter("send_dm", now))

    def ack_dm(self, dm_id: bytes, status: int, need: int, now: float) -> None:
        """Answer the peer's DM whose sealed bytes hash to ``dm_id`` (once per `DmReceived`)."""
        frame = encode_message(DmAck(dm_id, status, need))
        if self._enter("ack_dm", now):
            self._dms.ack(frame)

    @property
    def dms_unanswered(self) -> int:
        """DMs sent in this session that the peer has not acknowledged."""
        return self._dms.unanswered

    def request_dial_back(self, port: int, now: float) -> bool:
        """Ask the peer to dial us back on ``port`` (DIAL_ME); its answer comes as
        `DialBackAnswered`.  False if the session is not open or a request is pending."""
        frame = encode_message(DialMe(port))
        if not self._enter("request_dial_back", now) or self._dial_asked is not None:
            return False
        self._dial_asked = port
        self._dial_frames.append(frame)
        self.stats["tx.dial_me"] += 1
        return True

    def answer_dial_back(self, status: int, ip: bytes, observed_port: int, now: float) -> None:
        """Answer the peer's pending `DialBackRequested` (DIAL_RESULT).  Raises
        `LocalProtocolError` when no request is pending or the arguments are invalid."""
        if not self._enter("answer_dial_back", now):
            return
        if self._dial_owed is None:
            raise LocalProtocolError("answer_dial_back with no DialBackRequested to answer")
        self._dial_frames.append(encode_message(DialResult(self._dial_owed, status, ip, observed_port)))
        self._dial_owed = None
        self.stats["tx.dial_result"] += 1

    def request_reservation(self, now: float) -> bool:
        """Ask the peer to relay for us (RESERVE); the answer comes as `ReservationAnswered`.
        False if the session is not open or a request is pending."""
        if not self._enter("request_reservation", now) or self._reserve_asked:
            return False
        self._reserve_asked = True
        self._dial_frames.append(encode_message(Reserve()))
        return True

    def answer_reservation(self, status: int, seconds: int, now: float) -> None:
        """Answer the peer's pending `ReservationRequested`."""
        frame = encode_message(Reservation(status, seconds))
        if not self._enter("answer_reservation", now):
            return
        if not self._reserve_owed:
            raise LocalProtocolError("answer_reservation with no ReservationRequested to answer")
        self._reserve_owed = False
        self._dial_frames.append(frame)

    def send_connect(self, key: bytes, circuit: int, now: float) -> bool:
        frame = encode_message(Connect(key, circuit))
        if not self._enter("send_connect", now):
            return False
        self._relay_frames.append(frame)  # one FIFO with RELAY: a circuit's frames stay in order
        return True

    def send_incoming(self, key: bytes, circuit: int, now: float) -> bool:
        frame = encode_message(Incoming(key, circuit))
        if not self._enter("send_incoming", now):
            return False
        self._relay_frames.append(frame)
        return True

    def send_circuit(self, circuit: int, status: int, now: float) -> None:
        frame = encode_message(Circuit(circuit, status))
        if self._enter("send_circuit", now):
            self._relay_frames.append(frame)  # after the circuit's last RELAY bytes

    def send_relay(self, circuit: int, data: bytes, now: float) -> bool:
        """Queue RELAY frames of ``data`` (any length) on circuit; False (nothing queued)
        if the session is not open or `RELAY_QUEUE_BYTES` would be exceeded."""
        if not self._enter("send_relay", now):
            return False
        if self.relay_queued + len(data) > RELAY_QUEUE_BYTES:
            self.stats["relay.queue_full"] += 1
            return False
        for start in range(0, len(data), MAX_ENTRY_BYTES):
            self._relay_frames.append(encode_message(Relay(circuit, data[start : start + MAX_ENTRY_BYTES])))
        self.relay_queued += len(data)
        self.stats["tx.relay_bytes"] += len(data)
        return True

    def request_slice(self, feed: bytes, seqs: Sequence[int], now: float) -> bool:
        """Ask the peer for entries ``seqs`` of ``feed`` (SLICE_REQUEST); the answer comes as
        `SliceAnswered`.  False if the session is not open or too many requests wait."""
        if not self._enter("request_slice", now):
            return False
        return self._slices.request(feed, tuple(sorted(set(seqs))))

    def answer_slice(self, feed: bytes, entries: Sequence[bytes], now: float) -> None:
        """Answer the peer's oldest `SliceRequested` (of ``feed``) with the entries we hold."""
        if self._enter("answer_slice", now):
            self._slices.answer(feed, tuple(entries))

    @property
    def slices_asked(self) -> int:
        """Our SLICE_REQUESTs that await answers (<= `gossip.slices.MAX_SLICES_ASKED`)."""
        return self._slices.asked

    def handle_timer(self, now: float) -> None:
        """Send the WANTs that are due."""
        if not self._enter("handle_timer", now):
            return
        while self._want_timers and self._want_timers[0][0] <= now:
            deadline, _, feed = heapq.heappop(self._want_timers)
            st = self._feeds[feed]
            if st.want_deadline != deadline:
                continue
            st.want_deadline = None
            if not st.we_want:
                continue
            held = max(self._source.latest_seq(feed), st.received, st.wanted_until)
            if st.want_seq > held:
                st.wanted_until = st.want_seq
                self._want_pending[feed] = None
                if self.config.graft_on_want and not st.ask_push:
                    # The eager paths missed what this peer announced: take
                    # its pushes again (Plumtree GRAFT).
                    st.ask_push = True
                    self._clock_pending[feed] = None

    # ============================================================ receiving

    def _dispatch(self, message: Message, now: float) -> None:
        if isinstance(message, Entries):
            self._on_entries(message)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Clock):
            self._on_clock(message)
        elif isinstance(message, Have):
            self._on_have(message)
        elif isinstance(message, Want):
            self._on_want(message)
        elif isinstance(message, ForkProof):
            self._on_fork_proof(message)
        elif isinstance(message, Mention):
            self._on_mention(message)
        elif isinstance(message, MentionAck):
            self._on_mention_ack(message)
        elif isinstance(message, Dm):
            self._dms.received()
            if self._queue_event(
                DmReceived(message.recipient, message.sealed, message.stamp), "events.dms_not_queued"
            ):
                self._dms.reported()
        elif isinstance(message, DmAck):
            if not self._dms.answered():
                self._misbehaved("dm ack for nothing")
            else:
                self._queue_event(
                    DmAcked(message.dm_id, message.status, message.need), "events.dms_not_queued"
                )
        elif isinstance(message, DialMe):
            self._on_dial_me(message)
        elif isinstance(message, DialResult):
            self._on_dial_result(message)
        elif isinstance(message, Reserve):
            if self._reserve_owed:
                self._dropped("reserve", "a reservation request is already pending")
            elif self._queue_event(ReservationRequested(), "events.relay_not_queued"):
                self._reserve_owed = True
        elif isinstance(message, Reservation):
            if not self._reserve_asked:
                self._misbehaved("reservation for nothing")
                return
            self._reserve_asked = False
            self._queue_event(ReservationAnswered(message.status, message.seconds), "events.relay_not_queued")
        elif isinstance(message, Connect):
            self._queue_event(ConnectRequested(message.key, message.circuit), "events.relay_not_queued")
        elif isinstance(message, Incoming):
            self._queue_event(IncomingCircuit(message.key, message.circuit), "events.relay_not_queued")
        elif isinstance(message, Circuit):
            self._queue_event(CircuitChanged(message.circuit, message.status), "events.relay_not_queued")
        elif isinstance(message, SliceRequest):
            requested = self._slices.on_request(message)
            if requested is None:
                self._dropped("slice_request", "too many slice requests unanswered")
            elif self._queue_event(requested, "events.slices_not_queued"):
                self._slices.reported(message.feed)
        elif isinstance(message, Slice):
            answered = self._slices.on_slice(message)
            if answered is None:
                self._misbehaved("slice for nothing")
            else:
                self._queue_event(answered, "events.slices_not_queued")
        else:
            self.stats["rx.relay_bytes"] += len(message.data)
            self._events.append(RelayReceived(message.circuit, message.data))  # bounded by the read

    def _on_dial_me(self, message: DialMe) -> None:
        if self._dial_owed is not None:
            self._dropped("dial_me", "a dial-back request is already pending")
            return
        if self._queue_event(DialBackRequested(message.port), "events.dial_not_queued"):
            self._dial_owed = message.port

    def _on_dial_result(self, message: DialResult) -> None:
        if self._dial_asked is None or message.port != self._dial_asked:
            self._misbehaved("dial result for nothing")
            return
        self._dial_asked = None
        self._queue_event(
            DialBackAnswered(message.port, message.status, message.ip, message.observed_port),
            "events.dial_not_queued",
        )

    def _on_entries(self, message: Entries) -> None:
        feed, count = message.feed, len(message.entries)
        self.stats["rx.entries"] += count
        # The protocol's window, not our configured one: the peer's may be larger.
        if len(self._rx) + self._ack_count >= MAX_BATCHES_IN_FLIGHT:
            # The sender ignores our ACKs.  Not acknowledged: it already broke the count.
            self._misbehaved("window exceeded")
            return
        st = self._feeds.get(feed)
        if st is None or not st.ever_wanted:
            self._misbehaved("unsolicited entries")
            self._ack_dropped(feed)
            return
        held = max(self._source.latest_seq(feed), st.received)
        if message.first_seq > held + 1:
            self._misbehaved("entries skip seqs", f"got {message.first_seq}, hold {held}")
            self._ack_dropped(feed)
            return
        if message.first_seq <= held:
            self.stats["rx.entries_already_held"] += min(count, held - message.first_seq + 1)
        st.received = max(st.received, message.last_seq)
        st.peer_known = max(st.peer_known, message.last_seq)
        self._rx.append(_RxBatch(feed, False))
        self._events.append(EntriesReceived(feed, message.first_seq, message.entries))

    def _on_ack(self, message: Ack) -> None:
        if message.count > len(self._in_flight):
            self._misbehaved("ack for nothing", f"{message.count} > {len(self._in_flight)}")
            return
        for _ in range(message.count):
            feed, last = self._in_flight.popleft()
            seq = message.seqs.get(feed)
            if seq is None:
                self._misbehaved("ack without the feed")
                continue
            st = self._feeds[feed]
            if not self._declared(st, seq):
                continue
            if seq < last and not st.stalled:
                st.stalled = True
                st.sent = st.peer_known
                self._ready.pop(feed, None)
                self.stats["tx.refused_batches"] += 1
                self._notice(EntriesRefused(feed, seq))
        for feed in message.seqs:
            self._refresh(feed)

    def _on_clock(self, message: Clock) -> None:
        dropped = self.stats["drop.too many peer feeds"] + self.stats["drop.peer feed budget spent"]
        for feed, note in message.notes.items():
            st = self._feeds.get(feed)
            if st is None:
                st = self._peer_feed(feed, note)
                if st is None:
                    continue
            if note is None:
                st.peer_wants = False
                st.pull_to = 0
                self._ready.pop(feed, None)
                continue
            if not self._declared(st, note.seq):
                continue
            st.peer_push = note.push
            if not st.peer_wants or st.stalled:
                # (Re)subscribed, or asked again after a refusal (`resubscribe`):
                # start afresh, announcements and refusals included.
                st.peer_wants = True
                st.noticed = st.pull_to = 0
                if st.stalled:
                    st.stalled = False
                    st.sent = st.peer_known
                self._send_fork_proofs(feed, st)
            self._refresh(feed)
        dropped = self.stats["drop.too many peer feeds"] + self.stats["drop.peer feed budget spent"] - dropped
        if dropped:  # one notice per CLOCK, not per feed: a CLOCK names up to 10,000
            self._notice(MessageDropped(f"peer feeds: {dropped} of {len(message.notes)} not tracked"))

    def _on_have(self, message: Have) -> None:
        for feed, seq in message.seqs.items():
            st = self._feeds.get(feed)
            if st is None or not st.we_want:
                self.stats["rx.haves_unwanted"] += 1
                continue
            if self._declared(st, seq):
                self._expect(feed, st, seq)

    def _expect(self, feed: bytes, st: _Feed, seq: int) -> None:
        """The peer holds feed up to seq: WANT what we lack after `want_delay`."""
        if seq <= max(st.received, st.wanted_until, st.want_seq):
            return
        if seq <= self._source.latest_seq(feed):
            return
        st.want_seq = seq
        if st.want_deadline is None:
            st.want_deadline = self._now + self.config.want_delay
            self._timer_seq += 1
            heapq.heappush(self._want_timers, (st.want_deadline, self._timer_seq, feed))

    def _on_want(self, message: Want) -> None:
        for feed, from_seq in message.from_seqs.items():
            noted = self._notes.get(feed)
            if noted is not None:
                # We hold none of it: nothing to send, but the seq is a declaration.
                if from_seq - 1 < noted >> 1:
                    self._misbehaved("clock went backwards", f"{from_seq - 1} < {noted >> 1}")
                else:
                    self._notes[feed] = (from_seq - 1) << 1 | (noted & 1)
                continue
            st = self._feeds.get(feed)
            if st is None or not st.peer_wants:
                self._misbehaved("want for a feed not in its clock")
                continue
            if not self._declared(st, from_seq - 1):
                continue
            st.pull_to = max(st.pull_to, self._source.latest_seq(feed))
            self._refresh(feed)

    def _on_fork_proof(self, message: ForkProof) -> None:
        st = self._feeds.get(message.feed)
        if st is None or not st.ever_wanted:
            self._misbehaved("unsolicited fork proof")
            return
        if st.forks is not None and message.seq in st.forks:
            self._dropped("fork proof already exchanged")
            return
        if not self._remember_fork(st, message.seq):
            return
        self._notice(ForkProofReceived(message.feed, message.seq, message.first, message.second))

    def _on_mention(self, message: Mention) -> None:
        if self._queue_event(self._mentions.on_mention(message), "events.mentions_not_queued"):
            self._mentions.reported()

    def _on_mention_ack(self, message: MentionAck) -> None:
        event = self._mentions.on_mention_ack(message)
        if event is None:
            self._misbehaved("mention ack for nothing")
        else:
            self._queue_event(event, "events.mentions_not_queued")

    def _declared(self, st: _Feed, seq: int) -> bool:
        """Record a seq the peer says it holds; False (misbehaviour) if it went backwards."""
        if seq < st.peer_declared:
            self._misbehaved("clock went backwards", f"{seq} < {st.peer_declared}")
            return False
        st.peer_declared = seq
        st.peer_known = max(st.peer_known, seq)
        return True

    def _ack_dropped(self, feed: bytes) -> None:
        self._rx.append(_RxBatch(feed, True))
        self._release_acks()

    def _release_acks(self) -> None:
        while self._rx and self._rx[0].done:
            batch = self._rx.popleft()
            self._ack_count += 1
            self._ack_feeds[batch.feed] = None

    # ============================================================ sending

    def _pushing(self, st: _Feed) -> bool:
        return st.peer_push and (self._eager if st.eager is None else st.eager)

    def _refresh(self, feed: bytes) -> None:
        """Re-decide what feed needs: a HAVE now, or a place in the send queue."""
        st = self._feeds.get(feed)
        if st is None or not st.peer_wants or st.stalled:
            self._ready.pop(feed, None)
            return
        latest = self._source.latest_seq(feed)
        sent_to = max(st.peer_known, st.sent)
        if self._pushing(st):
            limit = latest
        else:
            limit = min(st.pull_to, latest)
            if latest > max(sent_to, st.noticed, st.pull_to):
                st.noticed = latest
                self._have_pending[feed] = None
        if sent_to < limit:
            self._ready.setdefault(feed, None)
        else:
            self._ready.pop(feed, None)

    def _pump(self) -> None:
        """Fill the window with batches, one feed at a time, round-robin."""
        cfg = self.config
        while self._ready and len(self._in_flight) < cfg.window and self._state is SessionState.OPEN:
            feed = next(iter(self._ready))
            del self._ready[feed]
            st = self._feeds[feed]
            latest = self._source.latest_seq(feed)
            limit = latest if self._pushing(st) else min(st.pull_to, latest)
            first = max(st.peer_known, st.sent) + 1
            if first > limit:
                continue
            raws = list(self._source.entries(feed, first, min(cfg.batch_entries, limit - first + 1)))
            batch: list[bytes] = []
            size = 0
            for raw in raws[: cfg.batch_entries]:
                if batch and size + len(raw) > cfg.batch_bytes:
                    break
                batch.append(raw)
                size += len(raw)
            if not batch:
                self.stats["source.entries_missing"] += 1
                continue
            frame = encode_message(Entries(feed, first, tuple(batch)))
            self._data.append(frame)
            self._data_bytes += len(frame)
            st.sent = first + len(batch) - 1
            self._in_flight.append((feed, st.sent))
            self.stats["tx.entries"] += len(batch)
            self.stats["tx.batches"] += 1
            if st.sent < limit:
                self._ready[feed] = None

    def _send_fork_proofs(self, feed: bytes, st: _Feed) -> None:
        for seq, first, second in self._source.fork_proofs(feed):
            if st.forks is not None and seq in st.forks:
                continue
            if self._queued_proofs >= self.config.max_queued_fork_proofs:
                self._dropped("fork proof queue full")
                return
            if not self._remember_fork(st, seq):
                return
            frame = encode_message(ForkProof(feed, seq, first, second))
            self._data.append(frame)
            self._data_bytes += len(frame)
            self._queued_proofs += 1
            self.stats["tx.fork_proofs"] += 1

    def _remember_fork(self, st: _Feed, seq: int) -> bool:
        """Note a fork proof as exchanged; False (counted) past `GossipConfig.max_fork_seqs`."""
        if self._fork_seqs >= self.config.max_fork_seqs:
            self._dropped("fork proof table full")
            return False
        if st.forks is None:
            st.forks = set()
        st.forks.add(seq)
        self._fork_seqs += 1
        return True

    # ============================================================ helpers

    def _enter(self, name: str, now: float) -> bool:
        """Check the input against the state table and the clock; True to run it."""
        action = _TABLE.get((self._state, name))
        if action is None:
            raise LocalProtocolError(f"{name} in state {self._state.name}")
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
        self._now = now
        return action is _Do.RUN

    @staticmethod
    def _check_feed(feed: bytes) -> None:
        if not isinstance(feed, bytes) or len(feed) != FEED_BYTES:
            raise LocalProtocolError(f"a feed is {FEED_BYTES} bytes")

    def _want(self, feed: bytes) -> None:
        self._check_feed(feed)
        st = self._feeds.get(feed)
        if st is None:
            st = self._promote(feed, counted=False) if feed in self._notes else _Feed()
            self._feeds[feed] = st
        if not st.we_want:
            st.we_want = st.ever_wanted = True
            self._clock_pending[feed] = None
            # Resubscribed: the peer may have announced entries meanwhile.
            self._expect(feed, st, st.peer_known)

    def _peer_feed(self, feed: bytes, note: Note | None) -> _Feed | None:
        """A note of a feed we do not track in `_feeds`: its record if we hold the
        feed, else None (only the note is kept, updated or forgotten, or dropped)."""
        noted = self._notes.get(feed)
        if noted is not None:
            if self._source.latest_seq(feed) > 0:  # we came to hold it (e.g. an import)
                return self._promote(feed, counted=True)
            if note is None:
                del self._notes[feed]
                self._budget.give_back()
            elif note.seq < noted >> 1:
                self._misbehaved("clock went backwards", f"{note.seq} < {noted >> 1}")
            else:
                self._notes[feed] = _note_bits(note)
            return None
        if note is None:  # it stops wanting a feed we never tracked: nothing to forget
            return None
        if self.peer_feeds >= self.config.max_peer_feeds:
            self.stats["drop.too many peer feeds"] += 1
            return None
        if self._source.latest_seq(feed) > 0:
            # We can serve it: full state, bounded per session but not by the budget.
            self._peer_feeds += 1
            st = self._feeds[feed] = _Feed()
            return st
        if not self._budget.take():
            self.stats["drop.peer feed budget spent"] += 1
            return None
        self._notes[feed] = _note_bits(note)
        return None

    def _promote(self, feed: bytes, *, counted: bool) -> _Feed:
        """Turn the peer's note of feed into a full record (we now want or hold the
        feed), give its budget unit back, and send the fork proofs we hold of it.
        ``counted``: it stays a peer feed we do not want."""
        noted = self._notes.pop(feed)
        self._budget.give_back()
        seq = noted >> 1
        st = self._feeds[feed] = _Feed(
            peer_wants=True, peer_push=not noted & 1, peer_declared=seq, peer_known=seq
        )
        if counted:
            self._peer_feeds += 1
        self._send_fork_proofs(feed, st)
        return st

    def _queue_event(self, event: _Bounded, dropped: str) -> bool:
        """Queue an event within `GossipConfig.max_queued_notices`; else count it under ``dropped``."""
        if self._bounded >= self.config.max_queued_notices:
            self.stats[dropped] += 1
            return False
        self._bounded += 1
        self._events.append(event)
        return True

    def _notice(self, event: _Notice) -> None:
        self._queue_event(event, "events.notices_not_queued")

    def _dropped(self, reason: str, detail: str = "") -> None:
        self.stats[f"drop.{reason}"] += 1
        self._notice(MessageDropped(f"{reason}: {detail}" if detail else reason))

    def _misbehaved(self, reason: str, detail: str = "") -> None:
        self.stats[f"misbehaved.{reason}"] += 1
        self._notice(PeerMisbehaved(reason, detail))
        self._score(reason)

    def _score(self, reason: str) -> None:
        self.misbehaviour += 1
        if self._state is SessionState.OPEN and self.misbehaviour >= self.config.misbehaviour_limit:
            self._close()
            self._events.append(SessionFailed(f"misbehaviour limit reached (last: {reason})"))

    def _close(self) -> None:
        self._state = SessionState.CLOSED
        self._budget.give_back(len(self._notes))
        self._notes.clear()
        self._ready.clear()
        self._data.clear()
        self._data_bytes = 0
        self._queued_proofs = 0
        self._mentions.close()
        self._dms.close()
        self._slices.close()
        self._want_timers.clear()
