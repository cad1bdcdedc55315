"""Slices: the SLICE_REQUEST / SLICE sub-protocol of one gossip session (issue 19, "Track").

Theory of operation
-------------------
A tracking node fetches a few posts of a feed it does not replicate (the
posts a hashtag record names) without touching replication: it hands a
feed and seqs to `GossipSession.request_slice`, the peer's session reports
`SliceRequested`, its node reads what it holds and answers with
`GossipSession.answer_slice`, which comes back as `SliceAnswered`.

`SliceExchange` is the part of a session that owns this exchange, as
`gossip.mentions.MentionNotices` owns mention notices:

* **Pairing.**  Requests are answered in order, one SLICE each.  At most
  `MAX_SLICES_ASKED` of our requests wait for answers (`request` returns
  False beyond); a SLICE beyond the requests we sent is the peer's
  misbehaviour (`on_slice` returns None and the session scores it), as is a
  SLICE for another feed than the request it answers.  At most
  `MAX_SLICES_OWED` of the peer's requests wait for our answer; further
  ones are dropped and counted (``drop.slice_request``), not answered.
* **Cost.**  A received SLICE_REQUEST costs `SLICE_COST` control tokens:
  the node reads up to 16 entries from its store for it.  The node limits
  requests per peer again, across sessions (`p2pblog.track`).

Frames wait in one list (`frames_to_send`), sent ahead of ENTRIES batches.
The part writes ``tx.slice_requests``, ``tx.slices``, ``rx.slice_requests``
and ``rx.slices`` into the session's ``stats``; it reads no clock.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

from gossip.messages import Slice, SliceRequest, encode_message
from identity.errors import LocalProtocolError

#: Control tokens a SLICE_REQUEST costs (a store read of up to 16 entries).
SLICE_COST: Final = 4
#: Our requests awaiting answers on one session, and the peer's awaiting ours.
MAX_SLICES_ASKED: Final = 4
MAX_SLICES_OWED: Final = 4


@dataclass(frozen=True, slots=True)
class SliceRequested:
    """The peer asks for entries ``seqs`` of ``feed``; answer with `GossipSession.answer_slice`."""

    feed: bytes
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SliceAnswered:
    """The peer answered our request for ``seqs`` of ``feed`` with ``entries`` (unverified)."""

    feed: bytes
    seqs: tuple[int, ...]
    entries: tuple[bytes, ...]


class SliceExchange:
    """The slice exchange of one session: pairing of requests and answers, and its frames."""

    def __init__(self, stats: Counter[str]) -> None:
        self._stats = stats
        self._asked: deque[SliceRequest] = deque()
        self._owed: deque[bytes] = deque()
        self._frames: list[bytes] = []

    @property
    def asked(self) -> int:
        return len(self._asked)

    @property
    def owed(self) -> int:
        return len(self._owed)

    def request(self, feed: bytes, seqs: tuple[int, ...]) -> bool:
        """Queue a SLICE_REQUEST; False if `MAX_SLICES_ASKED` wait for answers."""
        message = SliceRequest(feed, seqs)
        frame = encode_message(message)
        if len(self._asked) >= MAX_SLICES_ASKED:
            self._stats["slices.not_queued"] += 1
            return False
        self._asked.append(message)
        self._frames.append(frame)
        self._stats["tx.slice_requests"] += 1
        return True

    def answer(self, feed: bytes, entries: tuple[bytes, ...]) -> None:
        """Queue the SLICE answering the oldest reported `SliceRequested`."""
        frame = encode_message(Slice(feed, entries))
        if not self._owed or self._owed[0] != feed:
            raise LocalProtocolError("answer_slice without a SliceRequested of that feed to answer")
        self._owed.popleft()
        self._frames.append(frame)
        self._stats["tx.slices"] += 1

    def on_request(self, message: SliceRequest) -> SliceRequested | None:
        """The event for a received SLICE_REQUEST, or None (dropped: too many owed); call
        `reported` once the event is queued."""
        self._stats["rx.slice_requests"] += 1
        if len(self._owed) >= MAX_SLICES_OWED:
            return None
        return SliceRequested(message.feed, message.seqs)

    def reported(self, feed: bytes) -> None:
        """A `SliceRequested` of ``feed`` reached the node: it owes one answer."""
        self._owed.append(feed)

    def on_slice(self, message: Slice) -> SliceAnswered | None:
        """The event for a received SLICE; None if it answers nothing we asked (misbehaviour)."""
        if not self._asked or self._asked[0].feed != message.feed:
            return None
        asked = self._asked.popleft()
        self._stats["rx.slices"] += 1
        return SliceAnswered(message.feed, asked.seqs, message.entries)

    def frames_to_send(self) -> list[bytes]:
        out, self._frames = self._frames, []
        return out

    def close(self) -> None:
        self._frames.clear()
        self._asked.clear()
        self._owed.clear()
