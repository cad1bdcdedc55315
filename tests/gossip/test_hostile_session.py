"""GossipSession against strangers: what a hostile peer can make a node track.

The issue ("Survive strangers"): a CLOCK may name up to 65,536 feeds per
session, and 20 sessions from fresh keys took a node from 54 to 717 MB.
These tests drive real sessions in memory over `MemorySource`s: one node
("us") with an honest peer and any number of hostile peers whose frames the
test writes by hand, all of our sessions sharing one `PeerFeedBudget`.
Memory is measured with tracemalloc (bytes allocated, never wall time).
"""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gossip.messages import (
    MAX_BATCHES_IN_FLIGHT,
    Clock,
    Entries,
    ForkProof,
    Have,
    Message,
    Note,
    Slice,
    SliceRequest,
    Want,
    decode_message,
    encode_message,
)
from gossip.session import (
    MAX_PEER_FEEDS,
    PEER_FEED_BUDGET,
    EntriesReceived,
    GossipConfig,
    GossipSession,
    PeerFeedBudget,
    SessionState,
)
from identity.limits import MAX_FRAME_BYTES, MAX_NOTES_PER_FRAME
from tests.gossip.feeds import MemorySource

#: What the issue's attacker named per session (the old per-session limit).
ATTACK_FEEDS = 65_536
#: Generous ceilings, from the measured 130 bytes per noted feed (see the module
#: docstring of `gossip.session`): the whole budget is about 8.5 MB.
BYTES_PER_NOTE = 200
ATTACK_CEILING = 24 * 1024 * 1024

HONEST = bytes([1]) * 32  # the honest peer's feed, which we follow
UNFOLLOWED = bytes([2]) * 32  # a feed we hold but no longer want
OTHER = bytes([3]) * 32  # a feed the honest peer replicates and we do not hold


def _feeds(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(32) for _ in range(count)]


def _clock_frames(feeds: list[bytes], rng: random.Random) -> list[bytes]:
    return [
        encode_message(
            Clock({feed: Note(rng.randrange(1, 2**40)) for feed in feeds[i : i + MAX_NOTES_PER_FRAME]})
        )
        for i in range(0, len(feeds), MAX_NOTES_PER_FRAME)
    ]


def _hostile_config() -> GossipConfig:
    # The control budget is not what is under test here: let every frame in.
    return GossipConfig(control_rate=1e9, control_burst=1e9, misbehaviour_limit=10**9)


def _open(source: MemorySource, budget: PeerFeedBudget, config: GossipConfig, now: float) -> GossipSession:
    session = GossipSession(source, config=config, now=now, peer_feed_budget=budget)
    session.connection_made(now)
    session.frames_to_send()
    return session


def _drain(session: GossipSession) -> None:
    while session.next_event() is not None:
        pass
    session.frames_to_send()


@pytest.mark.slow
def test_twenty_hostile_sessions_naming_65536_feeds_stay_under_a_fixed_figure() -> None:
    rng = random.Random(20)
    # One set of frames for all (each session decodes its own copy of every key).
    frames = [_clock_frames(_feeds(rng, ATTACK_FEEDS), rng)] * 20
    source = MemorySource({UNFOLLOWED: [b"u"]}, wanted={HONEST})
    budget = PeerFeedBudget()
    config = _hostile_config()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sessions = []
        for _ in range(20):
            session = _open(source, budget, config, 0.0)
            for frame in frames.pop():
                session.frame_received(frame, 0.0)
            _drain(session)
            sessions.append(session)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Before the bounds: 683 MB (521 bytes per feed, 1.3 million feeds).
    assert grown < ATTACK_CEILING, f"{grown / 1e6:.1f} MB"
    assert all(s.peer_feeds <= MAX_PEER_FEEDS for s in sessions)
    assert budget.used == sum(s.noted_feeds for s in sessions) == PEER_FEED_BUDGET
    assert budget.refused > 0
    dropped = sum(
        s.stats["drop.too many peer feeds"] + s.stats["drop.peer feed budget spent"] for s in sessions
    )
    assert dropped == 20 * ATTACK_FEEDS - PEER_FEED_BUDGET
    for session in sessions:
        session.connection_lost(1.0)
    assert budget.used == 0


def test_a_noted_feed_costs_at_most_200_bytes() -> None:
    rng = random.Random(7)
    count = 20_000
    frames = _clock_frames(_feeds(rng, count), rng)
    config = GossipConfig(control_rate=1e9, control_burst=1e9, max_peer_feeds=count)
    session = _open(MemorySource(wanted={HONEST}), PeerFeedBudget(count), config, 0.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            session.frame_received(frame, 0.0)
        _drain(session)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert session.noted_feeds == count
    assert grown / count < BYTES_PER_NOTE, f"{grown / count:.0f} bytes per feed"


def test_a_noted_feed_we_come_to_want_is_served_from_the_peers_seq() -> None:
    budget = PeerFeedBudget(10)
    source = MemorySource(wanted={HONEST})
    session = _open(source, budget, GossipConfig(), 0.0)
    session.frame_received(encode_message(Clock({OTHER: Note(2)})), 0.0)
    assert (session.noted_feeds, budget.used, session.peer_seq(OTHER)) == (1, 1, 2)
    source.wanted.add(OTHER)
    source.feeds[OTHER] = [b"o1", b"o2", b"o3"]
    session.wants_changed(1.0)
    session.feed_updated(OTHER, 1.0)
    assert (session.noted_feeds, budget.used) == (0, 0)
    sent = [m for m in map(decode_message, session.frames_to_send()) if isinstance(m, Entries)]
    assert [(m.feed, m.first_seq, m.entries) for m in sent] == [(OTHER, 3, (b"o3",))]


def test_a_peer_unnaming_a_feed_and_closing_gives_the_budget_back() -> None:
    budget = PeerFeedBudget(10)
    session = _open(MemorySource(wanted={HONEST}), budget, GossipConfig(), 0.0)
    session.frame_received(encode_message(Clock({OTHER: Note(2), UNFOLLOWED: Note(1)})), 0.0)
    assert budget.used == 2
    session.frame_received(encode_message(Clock({OTHER: None})), 0.0)
    assert budget.used == 1 and not session.peer_wants(OTHER)
    session.connection_lost(1.0)
    assert budget.used == 0


def test_a_spent_budget_leaves_feeds_we_want_and_hold_alone() -> None:
    budget = PeerFeedBudget(0)
    source = MemorySource({HONEST: [b"h1"], UNFOLLOWED: [b"u1"]}, wanted={HONEST})
    session = _open(source, budget, GossipConfig(), 0.0)
    session.frame_received(encode_message(Clock({HONEST: Note(0), UNFOLLOWED: Note(0), OTHER: Note(0)})), 0.0)
    assert session.peer_wants(HONEST) and session.peer_wants(UNFOLLOWED) and not session.peer_wants(OTHER)
    assert budget.refused == 1 and session.stats["drop.peer feed budget spent"] == 1
    sent = [m for m in map(decode_message, session.frames_to_send()) if isinstance(m, Entries)]
    assert sorted(m.feed for m in sent) == [HONEST, UNFOLLOWED]


def test_fork_proofs_remembered_are_bounded() -> None:
    session = _open(MemorySource(wanted={HONEST}), PeerFeedBudget(), GossipConfig(max_fork_seqs=5), 0.0)
    for seq in range(1, 21):
        session.frame_received(encode_message(ForkProof(HONEST, seq, b"a%d" % seq, b"b%d" % seq)), 0.0)
    assert session.fork_seqs == 5
    assert session.stats["drop.fork proof table full"] == 15


# --- the stateful test ----------------------------------------------------------------------

#: Small bounds, so that a few steps reach them.
MACHINE_PEER_FEEDS = 40
MACHINE_BUDGET = 100
MACHINE_FORK_SEQS = 16
#: Tracemalloc growth allowed over a whole run, whatever the hostile peers send.
MACHINE_CEILING = 6 * 1024 * 1024


class HostilePeers(RuleBasedStateMachine):
    """Our node, an honest peer that authors `HONEST`, and hostile peers.

    All of our sessions share one budget.  The honest link is pumped to
    quiescence whenever the honest peer posts; hostile peers write frames
    straight into our sessions with them."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(0)
        self.now = 0.0
        self.config = GossipConfig(
            control_rate=1e9,
            control_burst=1e9,
            misbehaviour_limit=10**9,
            max_peer_feeds=MACHINE_PEER_FEEDS,
            max_fork_seqs=MACHINE_FORK_SEQS,
        )
        self.budget = PeerFeedBudget(MACHINE_BUDGET)
        self.ours = MemorySource({UNFOLLOWED: [b"u1", b"u2"]}, wanted={HONEST})
        #: Every feed we ever wanted: a session keeps a little state for each after an
        #: unfollow (our own choice, so bounded by what we follow, not by the peer).
        self.ever_wanted: set[bytes] = {HONEST}
        self.theirs = MemorySource({HONEST: []}, wanted={HONEST, OTHER})
        self.hostile: list[GossipSession] = []
        self.named: list[bytes] = []
        self.base = 0

    @initialize()
    def start(self) -> None:
        gc.collect()
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        self.us = GossipSession(self.ours, config=self.config, now=0.0, peer_feed_budget=self.budget)
        self.them = GossipSession(self.theirs, config=self.config, now=0.0)
        self.us.connection_made(0.0)
        self.them.connection_made(0.0)
        self.pump()

    def teardown(self) -> None:
        tracemalloc.stop()

    # -- the honest link

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for src, dst, source in ((self.us, self.them, self.theirs), (self.them, self.us, self.ours)):
                for frame in src.frames_to_send():
                    moved = True
                    dst.frame_received(frame, self.now)
                while (event := dst.next_event()) is not None:
                    moved = True
                    if isinstance(event, EntriesReceived):
                        chain = source.feeds.setdefault(event.feed, [])
                        for i, raw in enumerate(event.entries):
                            if event.feed in source.wanted and event.first_seq + i == len(chain) + 1:
                                chain.append(raw)
                        dst.entries_stored(event.feed, self.now)
                        if dst is self.us:
                            for session in self.hostile:
                                session.feed_updated(event.feed, self.now)
            if not moved:
                return
        raise AssertionError("the honest link did not settle")

    @rule(count=st.integers(1, 30))
    def honest_posts(self, count: int) -> None:
        chain = self.theirs.feeds[HONEST]
        chain += [b"h%d" % (len(chain) + i + 1) for i in range(count)]
        self.them.feed_updated(HONEST, self.now)
        self.pump()
        assert self.ours.feeds.get(HONEST) == chain, "the honest feed did not replicate"

    # -- hostile peers

    @rule()
    def hostile_connects(self) -> None:
        self.hostile.append(_open(self.ours, self.budget, self.config, self.now))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data())
    def hostile_hangs_up(self, data: st.DataObject) -> None:
        session = self.hostile.pop(data.draw(st.integers(0, len(self.hostile) - 1)))
        session.connection_lost(self.now)

    def victim(self, data: st.DataObject) -> GossipSession:
        return self.hostile[data.draw(st.integers(0, len(self.hostile) - 1))]

    def send(self, session: GossipSession, message: Message) -> None:
        session.frame_received(encode_message(message), self.now)
        _drain(session)

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), count=st.integers(1, 2000), seq=st.integers(0, 2**40))
    def clock_of_random_feeds(self, data: st.DataObject, count: int, seq: int) -> None:
        feeds = _feeds(self.rng, count)
        self.named = (self.named + feeds)[-500:]
        notes: dict[bytes, Note | None] = {feed: Note(seq, self.rng.random() < 0.5) for feed in feeds}
        notes[UNFOLLOWED] = Note(0)
        self.send(self.victim(data), Clock(notes))

    @precondition(lambda self: self.hostile and self.named)
    @rule(data=st.data(), seq=st.integers(0, 2**41), unname=st.booleans())
    def clock_repeating_notes(self, data: st.DataObject, seq: int, unname: bool) -> None:
        feeds = self.rng.sample(self.named, min(len(self.named), 300))
        self.send(self.victim(data), Clock({feed: None if unname else Note(seq) for feed in feeds}))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), seqs=st.lists(st.integers(0, 2**40), min_size=1, max_size=50))
    def have_storm(self, data: st.DataObject, seqs: list[int]) -> None:
        session = self.victim(data)
        for seq in seqs:
            feeds = [HONEST, OTHER, *self.rng.sample(self.named, min(len(self.named), 50))]
            self.send(session, Have(dict.fromkeys(feeds, seq)))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), from_seq=st.integers(1, 2**40))
    def want_storm(self, data: st.DataObject, from_seq: int) -> None:
        feeds = [HONEST, UNFOLLOWED, *self.rng.sample(self.named, min(len(self.named), 200))]
        self.send(self.victim(data), Want(dict.fromkeys(feeds, from_seq)))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), first=st.integers(1, 2**40), count=st.integers(1, 100))
    def fork_proof_storm(self, data: st.DataObject, first: int, count: int) -> None:
        session = self.victim(data)
        for seq in range(first, first + count):
            self.send(session, ForkProof(HONEST, seq, b"a%d" % seq, b"b%d" % seq))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), count=st.integers(1, 10))
    def unsolicited_entries(self, data: st.DataObject, count: int) -> None:
        session = self.victim(data)
        for _ in range(count):
            self.send(session, Entries(self.rng.choice([OTHER, *self.named[:1]]), 1, (b"x" * 100,)))

    @precondition(lambda self: self.hostile)
    @rule(data=st.data(), count=st.integers(1, 50), answers=st.booleans())
    def slice_storm(self, data: st.DataObject, count: int, answers: bool) -> None:
        """SLICE_REQUESTs never answered, or SLICEs nobody asked for: dropped and counted."""
        session = self.victim(data)
        for i in range(count):
            message = Slice(HONEST, (b"x" * 100,)) if answers else SliceRequest(HONEST, (i + 1,))
            self.send(session, message)

    @precondition(lambda self: self.named)
    @rule(follow=st.booleans())
    def we_follow_or_unfollow_a_named_feed(self, follow: bool) -> None:
        feed = self.rng.choice(self.named)
        if follow:
            self.ours.wanted.add(feed)
            self.ever_wanted.add(feed)
        else:
            self.ours.wanted = {HONEST}
        for session in [self.us, *self.hostile]:
            session.wants_changed(self.now)
            _drain(session) if session is not self.us else self.pump()

    @rule(seconds=st.floats(0.0, 5.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for session in [self.us, *self.hostile]:
            if (deadline := session.get_timer()) is not None and deadline <= self.now:
                session.handle_timer(self.now)
        for session in self.hostile:
            _drain(session)
        self.pump()

    # -- what must hold after every step

    @invariant()
    def tracked_feeds_are_bounded(self) -> None:
        sessions = [self.us, *self.hostile]
        for session in sessions:
            assert session.peer_feeds <= MACHINE_PEER_FEEDS
            assert session.tracked_feeds <= len(self.ever_wanted) + 3 + MACHINE_PEER_FEEDS
            assert session.fork_seqs <= MACHINE_FORK_SEQS
            assert session.pending_timers <= len(self.ours.wanted) + 50
            assert session.batches_unacknowledged <= MAX_BATCHES_IN_FLIGHT
            assert session.queued_bytes <= MAX_BATCHES_IN_FLIGHT * MAX_FRAME_BYTES
            assert session.state is SessionState.OPEN
        assert self.budget.used == sum(s.noted_feeds for s in sessions) <= MACHINE_BUDGET

    @invariant()
    def memory_is_bounded(self) -> None:
        if self.base:
            assert tracemalloc.get_traced_memory()[0] - self.base < MACHINE_CEILING


HostilePeers.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_hostile_peers = HostilePeers.TestCase
