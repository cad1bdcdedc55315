"""Mention notices in `GossipSession`: MENTION in, `MentionReceived` out, MENTION_ACK back.

Two sessions are linked by hand, as in ``test_session.py``'s unit tests:
frames move only when a test calls `deliver`, and time only when it says.
"""

from __future__ import annotations

from typing import Any

import pytest

from gossip.messages import (
    ENTRY_ID_BYTES,
    MAX_STAMP_BYTES,
    Entries,
    Mention,
    MentionAck,
    MentionStatus,
    Message,
    decode_message,
    encode_message,
)
from gossip.session import (
    MENTION_COST,
    EntriesReceived,
    Event,
    GossipConfig,
    GossipSession,
    MentionAcked,
    MentionReceived,
    PeerMisbehaved,
    SessionFailed,
    SessionState,
)
from identity.errors import LocalProtocolError
from identity.limits import MAX_ENTRY_BYTES, MAX_MENTIONS
from tests.gossip.feeds import MemorySource

F = bytes([0xF1]) * 32
ENTRY = b"signed entry mentioning @b" * 10
STAMP = bytes(range(8))
ENTRY_ID = bytes([0xE1]) * ENTRY_ID_BYTES


def session(
    feeds: dict[bytes, list[bytes]] | None = None, wanted: set[bytes] | None = None, **config: object
) -> GossipSession:
    s = GossipSession(MemorySource(feeds or {}, wanted or set()), config=GossipConfig(**config))  # type: ignore[arg-type]
    s.connection_made(0.0)
    return s


def linked(**config: Any) -> tuple[GossipSession, GossipSession]:
    """Two open sessions that replicate nothing: no feed in either clock."""
    return session(**config), session(**config)


def deliver(src: GossipSession, dst: GossipSession, now: float) -> list[Message]:
    """Every frame src has to send, into dst; the messages that crossed."""
    frames = src.frames_to_send()
    for frame in frames:
        dst.frame_received(frame, now)
    return [decode_message(f) for f in frames]


def events(s: GossipSession) -> list[Event]:
    out: list[Event] = []
    while (event := s.next_event()) is not None:
        out.append(event)
    return out


def mention_frame(i: int = 0) -> bytes:
    return encode_message(Mention(ENTRY + i.to_bytes(4, "big"), b""))


# --- delivery and answer ------------------------------------------------------------------------


def test_a_mention_is_delivered_and_its_ack_returns() -> None:
    a, b = linked()
    assert a.send_mention(ENTRY, STAMP, 1.0)
    assert a.queued_mentions == 1 and a.queued_bytes > len(ENTRY)
    assert deliver(a, b, 1.0) == [Mention(ENTRY, STAMP)]
    assert a.queued_mentions == 0 and a.queued_bytes == 0 and a.mentions_unanswered == 1
    assert events(b) == [MentionReceived(ENTRY, STAMP)]
    b.ack_mention(ENTRY_ID, MentionStatus.ADMITTED, 0, 1.5)
    assert deliver(b, a, 1.5) == [MentionAck(ENTRY_ID, MentionStatus.ADMITTED, 0)]
    (acked,) = events(a)
    assert acked == MentionAcked(ENTRY_ID, MentionStatus.ADMITTED, 0)
    assert isinstance(acked, MentionAcked) and acked.status is MentionStatus.ADMITTED
    assert a.mentions_unanswered == 0
    assert a.stats["tx.mentions"] == b.stats["rx.mentions"] == 1
    assert b.stats["tx.mention_acks"] == a.stats["rx.mention_acks"] == 1
    assert a.misbehaviour == b.misbehaviour == 0


def test_need_work_then_a_stronger_stamp() -> None:
    a, b = linked()
    a.send_mention(ENTRY, b"", 1.0)
    deliver(a, b, 1.0)
    assert events(b) == [MentionReceived(ENTRY, b"")]
    b.ack_mention(ENTRY_ID, MentionStatus.NEED_WORK, 22, 1.0)
    deliver(b, a, 1.0)
    assert events(a) == [MentionAcked(ENTRY_ID, MentionStatus.NEED_WORK, 22)]
    assert a.send_mention(ENTRY, b"\xff" * MAX_STAMP_BYTES, 2.0)
    deliver(a, b, 2.0)
    assert events(b) == [MentionReceived(ENTRY, b"\xff" * MAX_STAMP_BYTES)]


def test_an_unknown_status_reaches_the_node_as_an_int() -> None:
    a, b = linked()
    a.send_mention(ENTRY, b"", 1.0)
    deliver(a, b, 1.0)
    a.frame_received(encode_message(MentionAck(ENTRY_ID, 200, 7)), 1.0)
    (acked,) = events(a)
    assert isinstance(acked, MentionAcked)
    assert type(acked.status) is int and acked.status == 200 and acked.need == 7


def test_mentions_need_no_feed_and_no_clock() -> None:
    """Right after connection_made, before either side heard the other's clock."""
    a = GossipSession(MemorySource({}, set()))
    b = GossipSession(MemorySource({}, {F}))
    assert not a.send_mention(ENTRY, b"", 0.0)  # not open yet
    a.connection_made(0.0)
    b.connection_made(0.0)
    assert a.send_mention(ENTRY, b"", 0.0)
    deliver(a, b, 0.0)
    assert events(b) == [MentionReceived(ENTRY, b"")]
    assert not b.peer_wants(F) and b.misbehaviour == 0


def test_mentions_go_out_ahead_of_a_catch_up() -> None:
    chain = [b"entry %d" % i + b"." * 500 for i in range(1, 2001)]
    a = session({F: chain}, batch_entries=100)
    held: list[bytes] = []
    b = GossipSession(MemorySource({F: held}, {F}))
    b.connection_made(0.0)
    deliver(b, a, 0.0)  # b's clock: a fills its window with ENTRIES
    a.send_mention(ENTRY, b"", 0.0)
    sent = deliver(a, b, 0.0)
    assert [type(m) for m in sent] == [Mention] + [Entries] * 4
    # Mid-stream: b's ACKs free the window, and a mention queued then still goes first.
    for e in events(b):
        if isinstance(e, MentionReceived):
            b.ack_mention(ENTRY_ID, MentionStatus.DUPLICATE, 0, 0.1)
        else:
            assert isinstance(e, EntriesReceived)
            held.extend(e.entries)  # "stored": MemorySource reads the same list
            b.entries_stored(F, 0.1)
    acks = deliver(b, a, 0.1)
    assert [type(m).__name__ for m in acks] == ["Ack", "MentionAck"]
    a.send_mention(ENTRY, b"", 0.2)
    sent = deliver(a, b, 0.2)
    assert type(sent[0]) is Mention and all(type(m) is Entries for m in sent[1:]) and len(sent) == 5
    assert a.misbehaviour == b.misbehaviour == 0 and len(held) == 400


# --- the control budget -------------------------------------------------------------------------


def test_a_post_mentioning_sixteen_people_is_not_flagged() -> None:
    """An honest sender: one MENTION per mentioned person, back to back, defaults."""
    assert MAX_MENTIONS == 16
    a, b = linked()
    assert all(a.send_mention(ENTRY + bytes([i]), b"", 1.0) for i in range(MAX_MENTIONS))
    deliver(a, b, 1.0)
    got = events(b)
    assert len(got) == MAX_MENTIONS and all(isinstance(e, MentionReceived) for e in got)
    assert b.misbehaviour == 0 and b.stats["rx.mentions"] == MAX_MENTIONS


def test_the_senders_own_budget_keeps_it_under_the_peers() -> None:
    """`send_mention` stops at half the peer's budget, so an honest sender is never flagged."""
    a, b = linked(max_queued_mentions=1000)
    cfg = a.config
    burst = int(cfg.control_burst / 2 // MENTION_COST)
    assert [a.send_mention(ENTRY, b"", 1.0) for _ in range(burst + 1)] == [True] * burst + [False]
    assert a.stats["mentions.not_queued"] == 1
    deliver(a, b, 1.0)
    assert len(events(b)) == burst and b.misbehaviour == 0
    # One second later: half the peer's rate, at the MENTION price.
    per_second = int(cfg.control_rate / 2 // MENTION_COST)
    assert sum(a.send_mention(ENTRY, b"", 2.0) for _ in range(2 * per_second)) == per_second
    deliver(a, b, 2.0)
    assert len(events(b)) == per_second and b.misbehaviour == 0


def test_a_mention_costs_more_than_an_ack() -> None:
    b = session(control_burst=10, control_rate=1.0, misbehaviour_limit=100)
    for i in range(3):
        b.frame_received(mention_frame(i), 1.0)  # 4 + 4 tokens, then 2 left
    got = events(b)
    assert [type(e) for e in got] == [MentionReceived, MentionReceived, PeerMisbehaved]
    assert isinstance(got[-1], PeerMisbehaved) and got[-1].reason == "too many messages"
    assert got[-1].detail == "Mention"
    b.ack_mention(ENTRY_ID, MentionStatus.ADMITTED, 0, 1.0)
    # Two tokens left: two ACKs pass (they are for nothing: b sent no mention), a third does not.
    for _ in range(3):
        b.frame_received(encode_message(MentionAck(ENTRY_ID, 0, 0)), 1.0)
    assert [e.reason for e in events(b) if isinstance(e, PeerMisbehaved)] == [
        "mention ack for nothing",
        "mention ack for nothing",
        "too many messages",
    ]


def test_a_flood_of_mentions_gets_the_peer_flagged_and_dropped() -> None:
    b = session()
    for i in range(1000):
        b.frame_received(mention_frame(i), 1.0)
    got = events(b)
    allowed = int(b.config.control_burst // MENTION_COST)
    limit = b.config.misbehaviour_limit
    assert sum(isinstance(e, MentionReceived) for e in got) == allowed
    flagged = [e for e in got if isinstance(e, PeerMisbehaved)]
    assert [e.reason for e in flagged] == ["too many messages"] * limit
    assert isinstance(got[-1], SessionFailed)
    assert b.state is SessionState.CLOSED
    assert b.stats["drop.closed"] == 1000 - allowed - limit
    assert b.stats["rx.mentions"] == allowed
    # Answering what was reported is still fine (and ignored) once closed.
    b.ack_mention(ENTRY_ID, MentionStatus.RATE_LIMITED, 0, 1.0)
    assert b.frames_to_send() == [] and b.queued_bytes == 0


def test_a_flood_of_mentions_keeps_the_event_queue_bounded() -> None:
    """Even a peer never dropped, at any pace, and a node that never drains events."""
    b = session(misbehaviour_limit=1_000_000, max_queued_notices=100)
    now = 1.0
    for i in range(1000):
        now += 0.001
        b.frame_received(mention_frame(i), now)
    assert b.state is SessionState.OPEN
    assert b.stats["rx.mentions"] + b.stats["misbehaved.too many messages"] == 1000
    assert b.stats["misbehaved.too many messages"] > 0
    dropped = b.stats["events.mentions_not_queued"] + b.stats["events.notices_not_queued"]
    assert dropped == 1000 - 100
    got = events(b)
    assert len(got) == 100 and all(isinstance(e, MentionReceived) for e in got)
    # Only what was reported may be answered.
    for _ in range(100):
        b.ack_mention(ENTRY_ID, MentionStatus.BUSY, 0, now)
    with pytest.raises(LocalProtocolError):
        b.ack_mention(ENTRY_ID, MentionStatus.BUSY, 0, now)
    assert len(b.frames_to_send()) == 100


def test_events_beyond_the_bound_are_counted_not_queued() -> None:
    a, b = linked(max_queued_notices=5)
    for i in range(10):
        assert a.send_mention(ENTRY + bytes([i]), b"", 1.0)
    deliver(a, b, 1.0)
    assert len(events(b)) == 5
    assert b.stats["events.mentions_not_queued"] == 5 and b.stats["rx.mentions"] == 10


# --- queues ---------------------------------------------------------------------------------------


def test_send_mention_on_a_full_queue_returns_false() -> None:
    a, b = linked(max_queued_mentions=3)
    assert [a.send_mention(ENTRY, b"", 1.0) for _ in range(4)] == [True, True, True, False]
    assert a.queued_mentions == 3 and a.stats["mentions.not_queued"] == 1
    deliver(a, b, 1.0)
    assert a.queued_mentions == 0
    assert a.send_mention(ENTRY, b"", 1.0)


def test_send_mention_when_not_open_returns_false() -> None:
    a = GossipSession(MemorySource())
    assert not a.send_mention(ENTRY, b"", 0.0)
    a.connection_made(0.0)
    assert a.send_mention(ENTRY, b"", 0.0)
    a.connection_lost(1.0)
    assert not a.send_mention(ENTRY, b"", 1.0)
    assert a.stats["mentions.not_queued"] == 2
    assert a.queued_mentions == 0 and a.queued_bytes == 0


def test_queued_acks_are_bounded() -> None:
    a, b = linked(max_queued_mention_acks=2)
    for i in range(3):
        a.send_mention(ENTRY + bytes([i]), b"", 1.0)
    deliver(a, b, 1.0)
    for _ in events(b):
        b.ack_mention(ENTRY_ID, MentionStatus.ADMITTED, 0, 1.0)
    assert b.queued_mention_acks == 2 and b.stats["mention_acks.not_queued"] == 1
    assert len(deliver(b, a, 1.0)) == 2
    assert a.mentions_unanswered == 1  # the third answer was lost: a's node keeps its deadline


# --- misbehaviour and misuse ----------------------------------------------------------------------


def test_an_ack_for_no_mention_is_misbehaviour() -> None:
    a, b = linked()
    a.frame_received(encode_message(MentionAck(ENTRY_ID, 0, 0)), 1.0)
    assert [e.reason for e in events(a) if isinstance(e, PeerMisbehaved)] == ["mention ack for nothing"]
    a.send_mention(ENTRY, b"", 1.0)
    deliver(a, b, 1.0)
    ack = encode_message(MentionAck(ENTRY_ID, 0, 0))
    a.frame_received(ack, 1.0)
    a.frame_received(ack, 1.0)  # one mention, two answers
    got = events(a)
    assert [type(e) for e in got] == [MentionAcked, PeerMisbehaved]
    assert a.stats["misbehaved.mention ack for nothing"] == 2


def test_mention_api_misuse_raises_local_protocol_error() -> None:
    a = GossipSession(MemorySource())
    with pytest.raises(LocalProtocolError):
        a.ack_mention(ENTRY_ID, 0, 0, 0.0)  # before connection_made
    a.connection_made(1.0)
    with pytest.raises(LocalProtocolError):
        a.send_mention(ENTRY, b"", 0.5)  # time went backwards
    with pytest.raises(LocalProtocolError):
        a.ack_mention(ENTRY_ID, MentionStatus.ADMITTED, 0, 1.0)  # nothing to answer
    bad_mentions = [
        (b"", b""),
        (b"e" * (MAX_ENTRY_BYTES + 1), b""),
        (ENTRY, b"s" * (MAX_STAMP_BYTES + 1)),
        ("text", b""),
        (ENTRY, None),
    ]
    for entry, stamp in bad_mentions:
        with pytest.raises(LocalProtocolError):
            a.send_mention(entry, stamp, 1.0)  # type: ignore[arg-type]
    a.frame_received(mention_frame(), 1.0)
    bad_acks = [
        (ENTRY_ID[:31], 0, 0),
        (ENTRY_ID, 256, 0),
        (ENTRY_ID, -1, 0),
        (ENTRY_ID, 0, 256),
        (ENTRY_ID, True, 0),
    ]
    for entry_id, status, need in bad_acks:
        with pytest.raises(LocalProtocolError):
            a.ack_mention(entry_id, status, need, 1.0)
    a.ack_mention(ENTRY_ID, MentionStatus.INVALID, 0, 1.0)  # the bad calls did not use up the answer
    assert a.stats["mentions.not_queued"] == 0 and a.queued_mentions == 0


@pytest.mark.parametrize("kwargs", [{"max_queued_mentions": 0}, {"max_queued_mention_acks": 0}])
def test_mention_config_is_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        GossipConfig(**kwargs)  # type: ignore[arg-type]


def test_a_tiny_control_burst_still_lets_one_mention_out() -> None:
    a = session(control_burst=1)
    assert a.send_mention(ENTRY, b"", 0.0)
    assert not a.send_mention(ENTRY, b"", 0.0)
