"""Mention notices: the MENTION / MENTION_ACK sub-protocol of one gossip session.

Theory of operation
-------------------
A mention notice bypasses replication: a node hands a signed entry that
mentions the peer's user to `GossipSession.send_mention`, which queues a
MENTION whenever the session is open (no feed need be in either clock); the
peer's session reports it as `MentionReceived`, its node checks the entry and
the stamp and answers with `GossipSession.ack_mention`, which comes back as
`MentionAcked`.  An ACK may never come (the peer is an older version, which
drops the unknown message type, or the connection broke), so the sending
node keeps its own deadline.

`MentionNotices` is the part of a `gossip.session.GossipSession` that owns
this exchange; the session routes MENTION and MENTION_ACK frames and the two
commands to it, and it answers with return values, never by calling back:

* **Outgoing.**  `MentionNotices.send` queues an encoded MENTION if the
  session is open, fewer than ``max_queued`` are waiting and the sending
  budget allows; else it counts ``mentions.not_queued`` and returns False
  (the node tries again later).  `MentionNotices.ack` queues an encoded
  MENTION_ACK, at most ``max_queued_acks`` (more are dropped and counted).
  `MentionNotices.frames_to_send` hands over the acks, then the mentions;
  the session puts them ahead of queued ENTRIES batches, so a long catch-up
  does not delay them.
* **Pairing.**  Each MENTION gets at most one MENTION_ACK, in the session that
  carried it.  A MENTION counts as *unanswered* once handed over for sending;
  a MENTION_ACK beyond the unanswered count is the peer's misbehaviour
  (`MentionNotices.on_mention_ack` returns None and the session scores it).
  A received MENTION is *to answer* once its `MentionReceived` is queued
  (`MentionNotices.reported`); an `ack` beyond that count is our own misuse
  and raises `LocalProtocolError`.
* **Budget.**  The receiving session charges a MENTION `MENTION_COST` control
  tokens (a MENTION_ACK costs one, like any control message).  The sending
  side keeps a budget of its own, half the peer's control budget (the same
  `GossipConfig` is assumed on both ends), so that an honest node, whose
  posts carry at most `identity.limits.MAX_MENTIONS` mentions, is never
  flagged as flooding.  The sending budget is an
  `identity.pacing.TokenBucket` (rate and burst halved; the halving is exact
  in binary floating point, so it earns what ``elapsed * rate / 2`` would)
  that starts full when the connection opens (`MentionNotices.start`).

The part shares the session's ``stats`` counter and writes these names:
``tx.mentions``, ``mentions.not_queued``, ``tx.mention_acks``,
``mention_acks.not_queued``, ``rx.mentions``, ``rx.mention_acks``.  It reads
no clock: every call that spends budget carries ``now``.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

from gossip.messages import Mention, MentionAck
from identity.errors import LocalProtocolError
from identity.pacing import TokenBucket

#: Control tokens a MENTION costs (a MENTION_ACK costs one): it carries up to
#: `MAX_ENTRY_BYTES` (8 KiB) and costs the receiving node a signature check,
#: a stamp hash and a store lookup.  With the defaults a peer may send 250
#: back to back and 50 a second after that; a post mentions at most
#: `MAX_MENTIONS` (16) people, 64 tokens.
MENTION_COST: Final = 4
#: Outgoing MENTIONs waiting for `frames_to_send` (about 8 KiB each at most).
MAX_QUEUED_MENTIONS: Final = 64
#: Outgoing MENTION_ACKs waiting for `frames_to_send` (at most 40 bytes each).
MAX_QUEUED_MENTION_ACKS: Final = 1024
#: Control tokens a DM costs: up to `identity.sealed.MAX_SEALED_BYTES` (about
#: 4 KiB), an X25519 opening, a signature check and a store write.  Senders
#: spend at most a quarter of the peer's control budget on DMs.
DM_COST: Final = 8
DM_SHARE: Final = 0.25
#: Outgoing DMs waiting for `frames_to_send` (about 4 KiB each at most); their
#: acknowledgements share MAX_QUEUED_MENTION_ACKS's bound.
MAX_QUEUED_DMS: Final = 32


@dataclass(frozen=True, slots=True)
class MentionReceived:
    """The peer sent an entry that should mention our user, with a proof-of-work
    stamp (empty: none).  Nothing is checked yet: the node verifies the entry,
    the mention and the stamp, decides, and answers with
    `GossipSession.ack_mention` (at most once per event)."""

    entry: bytes
    stamp: bytes


@dataclass(frozen=True, slots=True)
class MentionAcked:
    """The peer answered one of our MENTIONs.  ``status`` is a
    `gossip.messages.MentionStatus`, or a plain int this version does not
    know; ``need`` is the work bits it requires of us (with NEED_WORK)."""

    entry_id: bytes
    status: int
    need: int


@dataclass(frozen=True, slots=True)
class DmReceived:
    """The peer sent a direct message sealed to ``recipient`` (our user, or someone we
    hold messages for).  Nothing is checked yet: the node decides and answers with
    `GossipSession.ack_dm` (at most once per event)."""

    recipient: bytes
    sealed: bytes
    stamp: bytes


@dataclass(frozen=True, slots=True)
class DmAcked:
    """The peer answered one of our DMs: a `gossip.messages.DmStatus` (or a plain
    int this version does not know) and the work bits it needs (with NEED_WORK)."""

    dm_id: bytes
    status: int
    need: int


class MentionNotices:
    """The mention exchange of one session: queues, pairing and sending budget.

    The DM exchange (DM / DM_ACK) is the same protocol with its own queues and
    counters (``name="dm"``) and a quarter of the peer's control budget
    (``share``), so mentions and DMs together leave a quarter for the rest."""

    def __init__(
        self,
        *,
        control_rate: float,
        control_burst: float,
        max_queued: int,
        max_queued_acks: int,
        stats: Counter[str],
        now: float,
        name: str = "mention",
        share: float = 0.5,
        cost: int = MENTION_COST,
    ) -> None:
        self._max_queued = max_queued
        self._max_queued_acks = max_queued_acks
        self._stats = stats
        self._cost = cost
        # The counter names (``tx.mentions``, ``mentions.not_queued`` ...).
        self._tx, self._not_queued = f"tx.{name}s", f"{name}s.not_queued"
        self._tx_acks, self._acks_not_queued = f"tx.{name}_acks", f"{name}_acks.not_queued"
        self._rx, self._rx_acks = f"rx.{name}s", f"rx.{name}_acks"
        self._what = name
        # A share of the peer's control budget (see the module docstring), but room
        # for at least one notice whatever the configured burst.
        self._rate = control_rate * share
        self._burst = max(control_burst * share, cost)
        self._budget = TokenBucket(self._rate, self._burst, now)
        # Encoded frames waiting for `frames_to_send`, and their bytes.
        self._mentions: deque[bytes] = deque()
        self._acks: deque[bytes] = deque()
        self._queued_bytes = 0
        # Notices sent that the peer has not answered, and received notices
        # reported that we have not answered.
        self._unanswered = 0
        self._to_answer = 0

    @property
    def queued_mentions(self) -> int:
        return len(self._mentions)

    @property
    def queued_acks(self) -> int:
        return len(self._acks)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def unanswered(self) -> int:
        """MENTIONs sent that the peer has not acknowledged."""
        return self._unanswered

    def start(self, now: float) -> None:
        """The connection opened: the sending budget starts full, from ``now``."""
        self._budget = TokenBucket(self._rate, self._burst, now)

    # ------------------------------------------------------------ outgoing

    def send(self, frame: bytes, now: float, *, session_open: bool) -> bool:
        """Queue an encoded MENTION; False (counted) if closed, full or over budget."""
        if (
            not session_open
            or len(self._mentions) >= self._max_queued
            or not self._budget.take(now, self._cost)
        ):
            self._stats[self._not_queued] += 1
            return False
        self._mentions.append(frame)
        self._queued_bytes += len(frame)
        self._stats[self._tx] += 1
        return True

    def ack(self, frame: bytes) -> None:
        """Queue an encoded MENTION_ACK answering one reported `MentionReceived`."""
        if self._to_answer == 0:
            raise LocalProtocolError(f"ack_{self._what} without a received {self._what} to answer")
        self._to_answer -= 1
        if len(self._acks) >= self._max_queued_acks:
            self._stats[self._acks_not_queued] += 1
            return
        self._acks.append(frame)
        self._queued_bytes += len(frame)
        self._stats[self._tx_acks] += 1

    def frames_to_send(self) -> list[bytes]:
        """The queued MENTION_ACKs, then the MENTIONs; the MENTIONs now await answers."""
        out = [*self._acks, *self._mentions]
        self._unanswered += len(self._mentions)
        self.close()
        return out

    def close(self) -> None:
        """Drop whatever is queued (the session closed, or it was all sent)."""
        self._acks.clear()
        self._mentions.clear()
        self._queued_bytes = 0

    # ------------------------------------------------------------ incoming

    def on_mention(self, message: Mention) -> MentionReceived:
        """The event for a received MENTION; call `reported` once it is queued."""
        self.received()
        return MentionReceived(message.entry, message.stamp)

    def received(self) -> None:
        """Count a received notice (call `reported` once its event is queued)."""
        self._stats[self._rx] += 1

    def reported(self) -> None:
        """A `MentionReceived` reached the node: it may answer it once."""
        self._to_answer += 1

    def on_mention_ack(self, message: MentionAck) -> MentionAcked | None:
        """The event for a received MENTION_ACK; None if it answers nothing (misbehaviour)."""
        if not self.answered():
            return None
        return MentionAcked(message.entry_id, message.status, message.need)

    def answered(self) -> bool:
        """Pair a received acknowledgement with a notice sent; False if it answers
        nothing (the peer's misbehaviour)."""
        if self._unanswered == 0:
            return False
        self._unanswered -= 1
        self._stats[self._rx_acks] += 1
        return True
