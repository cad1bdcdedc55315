"""GossipSession: catch-up, back-pressure, live push, lazy repair, forks, bad peers.

Most tests link real nodes (p2pblog Stores, real signed feeds) through the
in-memory `Network` of ``tests/gossip/feeds.py``, which checks the queue and
window bounds after every step.  The unit tests of misbehaviour and misuse
drive one session by hand over a `MemorySource`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gossip.messages import (
    MAX_BATCHES_IN_FLIGHT,
    Ack,
    Clock,
    Entries,
    ForkProof,
    Have,
    Mention,
    MentionAck,
    MentionStatus,
    Message,
    Note,
    Want,
    decode_message,
    encode_message,
)
from gossip.session import (
    EntriesReceived,
    EntriesRefused,
    ForkProofReceived,
    GossipConfig,
    GossipSession,
    MentionReceived,
    MessageDropped,
    PeerMisbehaved,
    SessionFailed,
    SessionState,
)
from identity import Identity
from identity.errors import LocalProtocolError
from identity.limits import MAX_FRAME_BYTES
from p2pblog.store import Store
from tests.feeds import make_chain, make_entry
from tests.gossip.feeds import MemorySource, Network, Node, store_with

AUTHOR = Identity(bytes([41]) * 32)
X = AUTHOR.public_key
A_ID, B_ID, C_ID = (Identity(bytes([42 + i]) * 32) for i in range(3))
F = bytes([0xF1]) * 32
G = bytes([0xF2]) * 32


@pytest.fixture(scope="module")
def chain2000() -> list[bytes]:
    return [e.raw for e in make_chain(AUTHOR, 2000)]


def node(tmp_path: Path, name: str, identity: Identity, wanted: set[bytes], *chains: list[bytes]) -> Node:
    return Node(name, store_with(str(tmp_path / f"{name}.sqlite3"), *chains), identity, wanted)


def pair(
    tmp_path: Path,
    a_chains: tuple[list[bytes], ...] = (),
    b_chains: tuple[list[bytes], ...] = (),
    *,
    config: GossipConfig | None = None,
    eager_a: bool = True,
    eager_b: bool = True,
) -> tuple[Network, Node, Node]:
    """Nodes a and b, both wanting X and each other's feed, linked."""
    net = Network(config)
    a = net.add(node(tmp_path, "a", A_ID, {X, A_ID.public_key, B_ID.public_key}, *a_chains))
    b = net.add(node(tmp_path, "b", B_ID, {X, A_ID.public_key, B_ID.public_key}, *b_chains))
    net.link("a", "b", eager_a=eager_a, eager_b=eager_b)
    return net, a, b


# --- catch-up and back-pressure -------------------------------------------------------------


def test_catch_up_of_2000_entries_in_bounded_batches(tmp_path: Path, chain2000: list[bytes]) -> None:
    net, a, b = pair(tmp_path, (chain2000,))
    net.run()
    assert b.store.latest_seq(X) == 2000
    ab = net.directions["a", "b"]
    assert ab.entries == 2000
    assert ab.entries_frames == 4  # 500 per batch
    assert max(ab.seqs.values()) == 1  # no entry twice
    assert ab.max_frame <= MAX_FRAME_BYTES
    assert net.max_in_flight == MAX_BATCHES_IN_FLIGHT
    assert net.directions["b", "a"].entries == 0
    assert a.misbehaviour() == b.misbehaviour() == []
    assert b.store.verify().ok


def test_small_window_holds_the_sender_until_acks_arrive(tmp_path: Path, chain2000: list[bytes]) -> None:
    config = GossipConfig(batch_entries=100, batch_bytes=6 * 1024, window=2)
    net, _, b = pair(tmp_path, (chain2000[:600],), config=config)
    ab, ba = net.directions["a", "b"], net.directions["b", "a"]
    net.deliver("b", "a")  # b's clock: a may send two batches, no more
    assert ab.entries_frames == 2
    net.deliver("a", "b")
    assert not ab.queue  # nothing more until b's acks arrive
    assert net.session("a", "b").batches_in_flight == 2
    assert ba.kinds["Ack"] >= 1
    net.deliver("b", "a")
    assert len(ab.queue) == 2
    net.run()
    assert b.store.latest_seq(X) == 600
    # Batches were cut by bytes (6 KiB), not by count.
    size = sum(len(r) for r in chain2000[:600])
    assert ab.entries_frames >= math.ceil(size / (6 * 1024))
    assert net.max_in_flight == 2
    assert net.max_unacknowledged <= 2


def test_a_slow_node_stops_the_flow() -> None:
    """Until the node calls entries_stored, no ACK goes out and the sender waits."""
    feed = [b"entry %d" % i for i in range(1, 101)]
    sender = GossipSession(MemorySource({F: feed}), config=GossipConfig(batch_entries=10, window=3))
    receiver = GossipSession(MemorySource({}, wanted={F}))
    sender.connection_made(0.0)
    receiver.connection_made(0.0)
    for frame in receiver.frames_to_send():
        sender.frame_received(frame, 0.0)
    frames = sender.frames_to_send()
    assert len(frames) == 3 and sender.batches_in_flight == 3
    for frame in frames:
        receiver.frame_received(frame, 0.0)
    events = [receiver.next_event() for _ in range(3)]
    assert all(isinstance(e, EntriesReceived) for e in events)
    assert receiver.frames_to_send() == []  # nothing stored, nothing acknowledged
    sender.feed_updated(F, 0.1)
    assert sender.frames_to_send() == []
    receiver.entries_stored(F, 0.2)
    receiver.entries_stored(F, 0.2)
    (ack,) = receiver.frames_to_send()
    assert decode_message(ack) == Ack(2, {F: 0})  # MemorySource never stores
    sender.frame_received(ack, 0.3)
    # The ACK says the receiver holds none of the 20 entries: it refused them.
    assert isinstance(sender.next_event(), EntriesRefused)
    assert sender.frames_to_send() == []


def test_both_directions_at_once(tmp_path: Path) -> None:
    a_feed = [e.raw for e in make_chain(A_ID, 300)]
    b_feed = [e.raw for e in make_chain(B_ID, 300)]
    net, a, b = pair(tmp_path, (a_feed,), (b_feed,), config=GossipConfig(batch_entries=50, window=2))
    net.run()
    assert a.store.latest_seq(B_ID.public_key) == b.store.latest_seq(A_ID.public_key) == 300
    assert net.directions["a", "b"].entries == net.directions["b", "a"].entries == 300
    assert a.misbehaviour() == b.misbehaviour() == []


def test_round_robin_over_feeds(tmp_path: Path, chain2000: list[bytes]) -> None:
    """A long feed does not hold back a short one."""
    short = [e.raw for e in make_chain(A_ID, 5)]
    net, _, b = pair(tmp_path, (chain2000[:1000], short), config=GossipConfig(batch_entries=100, window=1))
    net.deliver("b", "a")
    for _ in range(3):
        net.deliver("a", "b")
        net.deliver("b", "a")
    assert b.store.latest_seq(A_ID.public_key) == 5
    assert b.store.latest_seq(X) < 1000


# --- live push, lazy notices, duplicates ----------------------------------------------------


def test_live_push_after_catch_up(tmp_path: Path, chain2000: list[bytes]) -> None:
    net, a, b = pair(tmp_path, (chain2000[:50],))
    net.run()
    now = net.now
    a.post(1, now)
    net.collect()
    (frame,) = net.directions["a", "b"].queue
    message = decode_message(frame)
    assert isinstance(message, Entries) and message.feed == A_ID.public_key
    assert message.first_seq == 1 and len(message.entries) == 1
    net.run()
    assert b.store.latest_seq(A_ID.public_key) == 1
    assert net.now == now  # no timer involved
    for _ in range(3):
        a.post(1, now)
        net.run()
    assert b.store.latest_seq(A_ID.public_key) == 4
    assert net.directions["a", "b"].seqs[A_ID.public_key, 4] == 1


def test_lazy_session_sends_have_and_the_peer_pulls(tmp_path: Path, chain2000: list[bytes]) -> None:
    net, a, b = pair(tmp_path, (chain2000[:120],), eager_a=False)
    ab, ba = net.directions["a", "b"], net.directions["b", "a"]
    net.run(until=0.0)
    assert ab.entries == 0 and ab.kinds["Have"] == 1
    assert net.next_timer() == pytest.approx(0.5)  # b waits for an eager path first
    net.run()
    assert b.store.latest_seq(X) == 120
    assert ba.kinds["Want"] == 1
    a.post(2, net.now)
    net.run(until=net.now)
    assert ab.kinds["Have"] == 2 and b.store.latest_seq(A_ID.public_key) == 0
    net.run()
    assert b.store.latest_seq(A_ID.public_key) == 2
    assert max(ab.seqs.values()) == 1
    assert a.misbehaviour() == b.misbehaviour() == []


def test_no_entries_sent_when_both_hold_the_feed(tmp_path: Path, chain2000: list[bytes]) -> None:
    net, a, b = pair(tmp_path, (chain2000[:500],), (chain2000[:500],))
    net.run()
    assert net.entries_sent() == 0
    assert net.directions["a", "b"].kinds.keys() == {"Clock"}
    # One side ahead: only the difference crosses.
    net.unlink("a", "b")
    a.store.ingest_many(chain2000[500:520])
    net.link("a", "b")
    net.run()
    assert net.directions["a", "b"].entries == 20
    assert b.duplicates["a"] == 0


def test_have_for_entries_already_held_sends_no_want(tmp_path: Path, chain2000: list[bytes]) -> None:
    net, a, b = pair(tmp_path, (chain2000[:10],), (chain2000[:10],), eager_a=False)
    net.run()
    a.store.ingest_many(chain2000[10:12])
    b.store.ingest_many(chain2000[10:12])
    net.session("a", "b").feed_updated(X, net.now)  # a is lazy: a HAVE, nothing else
    net.collect()
    net.run()
    assert net.directions["b", "a"].kinds["Want"] == 0
    assert net.entries_sent() == 0


def test_pruning_removes_duplicates_in_a_triangle(tmp_path: Path) -> None:
    net = Network()
    wanted = {A_ID.public_key, B_ID.public_key, C_ID.public_key}
    nodes = [
        net.add(node(tmp_path, name, ident, wanted))
        for name, ident in (("a", A_ID), ("b", B_ID), ("c", C_ID))
    ]
    for n in nodes:
        n.prune_duplicates = True
    net.link("a", "b")
    net.link("b", "c")
    net.link("a", "c")
    _, b, c = nodes
    per_round = []
    for _ in range(8):
        before = net.duplicate_entries()
        c.post(1, net.now)
        net.run()
        per_round.append(net.duplicate_entries() - before)
    assert all(n.store.latest_seq(C_ID.public_key) == 8 for n in nodes)
    assert per_round[0] >= 1  # both a and c pushed to b (or c and b to a)
    assert per_round[-4:] == [0, 0, 0, 0]
    # The pruned link still repairs: cut c's direct links, a and b still converge.
    net.unlink("c", "b")
    c.post(1, net.now)
    net.run()
    assert b.store.latest_seq(C_ID.public_key) == 9
    assert [m for n in nodes for m in n.misbehaviour()] == []


# --- refusal, forgery, forks ------------------------------------------------------------------


class Mallory:
    """A hand-driven peer of one node's session: sends crafted frames, reads the answers."""

    def __init__(self, net: Network, victim: Node) -> None:
        self.net, self.victim = net, victim
        self.session = victim.sessions["m"] = GossipSession(victim.source, now=net.now)
        self.session.connection_made(net.now)
        self.received: list[Message] = []
        self._drain()

    def send(self, message: Message | bytes) -> None:
        frame = message if isinstance(message, bytes) else encode_message(message)
        self.session.frame_received(frame, self.net.now)
        self._drain()

    def _drain(self) -> None:
        self.victim.process("m", self.net.now)
        self.received += [decode_message(f) for f in self.session.frames_to_send()]


def forged(raw: bytes) -> bytes:
    return bytes([raw[0] ^ 1]) + raw[1:]


def test_forged_entry_in_a_batch_is_refused_and_reported(tmp_path: Path, chain2000: list[bytes]) -> None:
    net = Network()
    b = net.add(node(tmp_path, "b", B_ID, {X}))
    mallory = Mallory(net, b)
    assert mallory.received == [Clock({X: Note(0, True)})]
    batch = (chain2000[0], chain2000[1], forged(chain2000[2]), chain2000[3])
    mallory.send(Entries(X, 1, batch))
    assert b.store.latest_seq(X) == 2  # the valid prefix, nothing after the forgery
    assert mallory.received[-1] == Ack(1, {X: 2})
    assert mallory.session.misbehaviour == 1
    assert mallory.session.stats["misbehaved.forged entry"] == 1
    # Entries whose header lies about their seq are refused as well.
    mallory.send(Entries(X, 3, (chain2000[3],)))
    assert b.store.latest_seq(X) == 2
    assert mallory.session.stats["misbehaved.entries do not match their header"] == 1
    assert mallory.received[-1] == Ack(1, {X: 2})


def test_refused_entries_stall_the_feed(tmp_path: Path, chain2000: list[bytes]) -> None:
    """b holds another branch at seq 6 (a fork a never saw): a's 7.. are refused."""
    other6 = make_entry(AUTHOR, 6, decode_prev(chain2000[5]), body={"text": "the other branch"})
    net, a, b = pair(tmp_path, (chain2000[:10],), (chain2000[:5], [other6.raw]))
    net.run()
    assert b.store.latest_seq(X) == 6
    refused = [e for _, e in a.log if isinstance(e, EntriesRefused)]
    assert refused == [EntriesRefused(X, 6)]
    assert a.misbehaviour() == b.misbehaviour() == []  # a ChainError is nobody's fault
    a.store.ingest_many(chain2000[10:15])
    sent = net.directions["a", "b"].entries
    net.session("a", "b").feed_updated(X, net.now)
    net.run()
    assert net.directions["a", "b"].entries == sent


def decode_prev(raw: bytes) -> bytes:
    from p2pblog.entry import decode_entry

    prev = decode_entry(raw).prev
    assert prev is not None
    return prev


def test_fork_proofs_are_forwarded(tmp_path: Path, chain2000: list[bytes]) -> None:
    chain = chain2000[:5]
    fork3 = make_entry(AUTHOR, 3, decode_prev(chain[2]), body={"text": "forked"})
    net = Network()
    a = net.add(node(tmp_path, "a", A_ID, {X}, chain, [fork3.raw]))
    b = net.add(node(tmp_path, "b", B_ID, {X}, chain))
    c = net.add(node(tmp_path, "c", C_ID, {X}, chain))
    assert a.store.feed_state(X).forked_seq == 3
    net.link("a", "b")
    net.link("b", "c")
    net.run()
    for n in (b, c):
        assert n.store.feed_state(X).forked_seq == 3
        assert len(n.store.fork_proofs(X)) == 2
    fork_proofs = {key: d.fork_proofs for key, d in net.directions.items()}
    assert fork_proofs == {("a", "b"): 1, ("b", "a"): 0, ("b", "c"): 1, ("c", "b"): 0}
    assert any(isinstance(e, ForkProofReceived) for _, e in c.log)
    assert [m for n in (a, b, c) for m in n.misbehaviour()] == []


def test_fork_detected_from_entries_is_passed_on(tmp_path: Path, chain2000: list[bytes]) -> None:
    """b learns of a fork by ingesting an entry; its other sessions forward the proof."""
    chain = chain2000[:5]
    fork5 = make_entry(AUTHOR, 5, decode_prev(chain[4]), body={"text": "forked"})
    net = Network()
    b = net.add(node(tmp_path, "b", B_ID, {X}, chain))
    c = net.add(node(tmp_path, "c", C_ID, {X}, chain))
    net.link("b", "c")
    net.run()
    mallory = Mallory(net, b)
    mallory.send(Entries(X, 5, (fork5.raw,)))
    net.collect()
    net.run()
    assert b.store.feed_state(X).forked_seq == 5
    assert c.store.feed_state(X).forked_seq == 5
    assert mallory.session.misbehaviour == 0


# --- subscriptions ------------------------------------------------------------------------------


def test_wants_changed_subscribes_and_unsubscribes(tmp_path: Path, chain2000: list[bytes]) -> None:
    net = Network()
    a = net.add(node(tmp_path, "a", A_ID, {X}, chain2000[:30]))
    b = net.add(node(tmp_path, "b", B_ID, set()))
    net.link("a", "b")
    net.run()
    assert b.store.latest_seq(X) == 0
    b.source.wanted.add(X)
    b.sessions["a"].wants_changed(net.now)
    net.collect()
    net.run()
    assert b.store.latest_seq(X) == 30
    b.source.wanted.discard(X)
    b.sessions["a"].wants_changed(net.now)
    net.run()
    assert not net.session("a", "b").peer_wants(X)
    a.store.ingest_many(chain2000[30:40])
    net.session("a", "b").feed_updated(X, net.now)
    net.run()
    assert b.store.latest_seq(X) == 30
    assert a.misbehaviour() == b.misbehaviour() == []


# --- misbehaviour and misuse, one session by hand -----------------------------------------------


def open_session(
    feeds: dict[bytes, list[bytes]] | None = None, wanted: set[bytes] | None = None, **config: object
) -> GossipSession:
    session = GossipSession(
        MemorySource(feeds or {}, wanted if wanted is not None else {F}),
        config=GossipConfig(**config),  # type: ignore[arg-type]
    )
    session.connection_made(0.0)
    session.frames_to_send()
    return session


def events(session: GossipSession) -> list[object]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def reasons(session: GossipSession) -> list[str]:
    return [e.reason for e in events(session) if isinstance(e, PeerMisbehaved)]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"\xc1"], "malformed frame"),
        ([encode_message(Entries(G, 1, (b"e",)))], "unsolicited entries"),
        ([encode_message(Entries(F, 3, (b"e",)))], "entries skip seqs"),
        ([encode_message(Have({F: 5})), encode_message(Have({F: 4}))], "clock went backwards"),
        ([encode_message(Clock({G: Note(9)})), encode_message(Want({G: 3}))], "clock went backwards"),
        ([encode_message(Ack(1, {F: 0}))], "ack for nothing"),
        ([encode_message(Want({G: 1}))], "want for a feed not in its clock"),
        ([encode_message(ForkProof(G, 1, b"x", b"y"))], "unsolicited fork proof"),
        ([encode_message(Entries(F, 1, (b"e",)))] * 5, "window exceeded"),
    ],
)
def test_misbehaviour_is_an_event_and_a_count(frames: list[bytes], reason: str) -> None:
    session = open_session()
    for frame in frames:
        session.frame_received(frame, 1.0)
    assert reasons(session) == [reason]
    assert session.stats[f"misbehaved.{reason}"] == 1
    assert session.state is SessionState.OPEN


def test_control_messages_are_rate_limited() -> None:
    session = open_session(control_burst=5, control_rate=1.0)
    for _ in range(7):
        session.frame_received(encode_message(Have({F: 1})), 1.0)
    assert reasons(session) == ["too many messages"] * 2
    session.frame_received(encode_message(Have({F: 1})), 3.0)  # two seconds refill two tokens
    assert reasons(session) == []


def test_the_session_fails_at_the_misbehaviour_limit() -> None:
    session = open_session(misbehaviour_limit=3)
    for _ in range(5):
        session.frame_received(b"\xc1", 1.0)
    got = events(session)
    assert [type(e) for e in got] == [PeerMisbehaved] * 3 + [SessionFailed]
    assert session.state is SessionState.CLOSED
    assert session.frames_to_send() == [] and session.get_timer() is None
    assert session.stats["drop.closed"] == 2
    session.feed_updated(F, 2.0)  # ignored, not an error
    session.report_misbehaviour("late", 2.0)


def test_node_reports_count_towards_the_limit() -> None:
    session = open_session(misbehaviour_limit=2)
    session.report_misbehaviour("forged entry", 1.0)
    session.report_misbehaviour("forged entry", 1.0)
    assert [type(e) for e in events(session)] == [SessionFailed]
    assert session.stats["misbehaved.forged entry"] == 2


def test_unknown_message_type_is_dropped_quietly() -> None:
    session = open_session()
    session.frame_received(b"\x92\x63\x80", 1.0)  # [99, {}]
    assert [type(e) for e in events(session)] == [MessageDropped]
    assert session.misbehaviour == 0


def test_api_misuse_raises_local_protocol_error() -> None:
    session = GossipSession(MemorySource({}, {F}), now=5.0)
    with pytest.raises(LocalProtocolError):
        session.frame_received(b"", 5.0)  # before connection_made
    with pytest.raises(LocalProtocolError):
        session.connection_made(4.0)  # time went backwards
    session.connection_made(5.0)
    with pytest.raises(LocalProtocolError):
        session.connection_made(5.0)
    with pytest.raises(LocalProtocolError):
        session.entries_stored(F, 5.0)  # nothing to acknowledge
    with pytest.raises(LocalProtocolError):
        session.request_push(G, False, 5.0)  # not a feed we want
    with pytest.raises(LocalProtocolError):
        session.set_eager(True, 5.0, feed=b"short")
    session.frame_received(encode_message(Entries(F, 1, (b"e",))), 5.0)
    with pytest.raises(LocalProtocolError):
        session.entries_stored(G, 5.0)  # out of order
    session.entries_stored(F, 5.0)
    session.connection_lost(6.0)
    session.connection_lost(6.0)
    assert session.state is SessionState.CLOSED


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_entries": 0}, {"batch_entries": 501}, {"window": 5}, {"batch_bytes": MAX_FRAME_BYTES}],
)
def test_config_is_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        GossipConfig(**kwargs)  # type: ignore[arg-type]


def test_pruned_peer_sends_have_and_want_grafts_it_back() -> None:
    feeds = {F: [b"e1", b"e2"]}
    sender = open_session(feeds, wanted=set())
    receiver_source = MemorySource({}, {F})
    receiver = GossipSession(receiver_source)
    receiver.connection_made(0.0)
    receiver.request_push(F, False, 0.0)
    (clock,) = receiver.frames_to_send()
    assert decode_message(clock) == Clock({F: Note(0, push=False)})
    sender.frame_received(clock, 0.0)
    (have,) = sender.frames_to_send()
    assert decode_message(have) == Have({F: 2})
    receiver.frame_received(have, 0.0)
    assert receiver.get_timer() == 0.5
    receiver.handle_timer(0.5)
    clock2, want = (decode_message(f) for f in receiver.frames_to_send())
    assert clock2 == Clock({F: Note(0, push=True)})  # graft
    assert want == Want({F: 1})


def test_resubscribing_peer_gets_a_fresh_have() -> None:
    """A lazy sender announces again after the peer unsubscribed and came back."""
    sender = open_session({F: [b"e1", b"e2"]}, wanted=set())
    sender.set_eager(False, 0.0)
    for note in (Note(0), None, Note(0)):
        sender.frame_received(encode_message(Clock({F: note})), 1.0)
    haves = [decode_message(f) for f in sender.frames_to_send()]
    assert haves == [Have({F: 2})]
    sender.frame_received(encode_message(Clock({F: None})), 1.0)
    sender.frame_received(encode_message(Clock({F: Note(0)})), 1.0)
    assert [decode_message(f) for f in sender.frames_to_send()] == [Have({F: 2})]


def test_set_eager_before_the_connection_is_kept() -> None:
    session = GossipSession(MemorySource({F: [b"e1"]}))
    session.set_eager(False, 0.0, feed=F)
    session.connection_made(0.0)
    session.frame_received(encode_message(Clock({F: Note(0)})), 0.0)
    assert not session.is_eager(F) and session.is_eager(G)
    assert [decode_message(f) for f in session.frames_to_send()] == [Have({F: 1})]


def test_fork_proofs_waiting_to_be_sent_are_bounded() -> None:
    source = MemorySource({F: [b"e%d" % i for i in range(1, 101)]}, wanted=set())
    source.forks[F] = [(seq, b"x%d" % seq, b"y%d" % seq) for seq in range(1, 101)]
    session = GossipSession(source, config=GossipConfig(max_queued_fork_proofs=10))
    session.connection_made(0.0)
    session.frame_received(encode_message(Clock({F: Note(100)})), 0.0)
    assert session.queued_fork_proofs == 10
    assert session.stats["drop.fork proof queue full"] == 1
    assert isinstance(session.next_event(), MessageDropped)
    frames = [decode_message(f) for f in session.frames_to_send()]
    assert [m.seq for m in frames if isinstance(m, ForkProof)] == list(range(1, 11))
    session.fork_found(F, 0.0)  # the rest go out once the queue drained
    assert session.queued_fork_proofs == 10


def test_feeds_tracked_for_the_peer_are_bounded() -> None:
    session = open_session(max_peer_feeds=5)
    session.frame_received(encode_message(Clock({bytes([i]) * 32: Note(1) for i in range(8)})), 0.0)
    assert session.stats["drop.too many peer feeds"] == 3
    assert sum(session.peer_wants(bytes([i]) * 32) for i in range(8)) == 5


def test_queued_notices_are_bounded() -> None:
    session = open_session(misbehaviour_limit=10_000, max_queued_notices=3)
    for _ in range(10):
        session.frame_received(b"\xc1", 0.0)
    assert len(events(session)) == 3
    assert session.stats["events.notices_not_queued"] == 7
    assert session.stats["misbehaved.malformed frame"] == 10


def test_control_budget_counts_the_feeds_named() -> None:
    session = open_session(control_burst=150, control_rate=1.0, misbehaviour_limit=100)
    big = Have({i.to_bytes(32, "big"): 0 for i in range(10_000)})  # costs 1 + 100 tokens
    session.frame_received(encode_message(big), 0.0)
    session.frame_received(encode_message(big), 0.0)
    assert reasons(session) == ["too many messages"]


# --- fuzzing ------------------------------------------------------------------------------------

FEEDS = [F, G, bytes(32)]


def _maps(values: st.SearchStrategy[object]) -> st.SearchStrategy[dict[bytes, object]]:
    return st.dictionaries(st.sampled_from(FEEDS), values, min_size=1, max_size=3)


seqs = st.integers(min_value=0, max_value=12)
raw_entries = st.binary(min_size=1, max_size=16)
peer_messages: st.SearchStrategy[Message] = st.one_of(
    _maps(st.none() | st.builds(Note, seqs, st.booleans())).map(Clock),  # type: ignore[arg-type]
    st.builds(
        Entries,
        st.sampled_from(FEEDS),
        st.integers(1, 12),
        st.lists(raw_entries, min_size=1, max_size=4).map(tuple),
    ),
    _maps(seqs).map(Have),  # type: ignore[arg-type]
    _maps(st.integers(1, 12)).map(Want),  # type: ignore[arg-type]
    st.builds(Ack, st.integers(1, MAX_BATCHES_IN_FLIGHT), _maps(seqs)),
    st.builds(ForkProof, st.sampled_from(FEEDS), st.integers(1, 12), st.just(b"x"), st.just(b"y")),
    st.builds(Mention, raw_entries, st.binary(max_size=16)),
    st.builds(MentionAck, st.just(bytes(32)), st.integers(0, 255), st.integers(0, 255)),
)


def _fuzz_session() -> GossipSession:
    feeds = {F: [b"f%d" % i for i in range(1, 9)], G: [b"g1"]}
    return open_session(feeds, wanted={F, G}, batch_entries=2, window=2, misbehaviour_limit=1000)


def _play(session: GossipSession, frames: list[bytes], storing: list[bool]) -> None:
    """Feed frames like a node that sometimes lags behind with its ingestion."""
    now = 0.0
    unstored: list[bytes] = []
    for i, frame in enumerate(frames):
        now += 0.2
        session.frame_received(frame, now)
        got = events(session)
        unstored += [e.feed for e in got if isinstance(e, EntriesReceived)]
        for event in got:
            if isinstance(event, MentionReceived):
                session.ack_mention(bytes(32), MentionStatus.ADMITTED, 0, now)
        if storing[i % len(storing)]:
            for feed in unstored:
                session.entries_stored(feed, now)
            unstored.clear()
        session.frames_to_send()
        if (timer := session.get_timer()) is not None:
            session.handle_timer(max(now, timer))
            now = max(now, timer)
        session.feed_updated(F, now)
        assert session.batches_in_flight <= session.config.window
        assert session.batches_unacknowledged <= MAX_BATCHES_IN_FLIGHT
        assert session.queued_mention_acks <= session.config.max_queued_mention_acks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_only_make_events(frames: list[bytes]) -> None:
    _play(_fuzz_session(), frames, [True])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(peer_messages, max_size=20), st.lists(st.booleans(), min_size=1, max_size=4))
def test_random_messages_only_make_events(messages: list[Message], storing: list[bool]) -> None:
    """Well-formed but arbitrary messages: never an exception, bounds always kept."""
    _play(_fuzz_session(), [encode_message(m) for m in messages], storing)


# --- stateful: three nodes, random posts, partial delivery, Plumtree choices ----------------------

X_CHAIN = [e.raw for e in make_chain(AUTHOR, 12)]
IDENTITIES = (A_ID, B_ID, C_ID)
ALL_FEEDS = (X, *(i.public_key for i in IDENTITIES))


class Replication(RuleBasedStateMachine):
    """Three nodes that all want four feeds (their own three and an offline author's).

    Rules post, deliver a few frames of one direction, let time pass, flip
    eager/lazy and prune/graft, unsubscribe and resubscribe, and reconnect
    links mid-stream.  After every
    step `Network` checks the window and queue bounds and no honest node may
    have reported misbehaviour; `settle` delivers everything and checks that
    every node holds every feed up to the latest seq anyone has.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = Network(GossipConfig(batch_entries=3, window=2))
        self.nodes = [
            self.net.add(Node(name, Store(":memory:"), ident, ALL_FEEDS))
            for name, ident in zip("abc", IDENTITIES, strict=True)
        ]

    @initialize(
        prefixes=st.lists(st.integers(0, len(X_CHAIN)), min_size=3, max_size=3),
        triangle=st.booleans(),
        eager=st.lists(st.booleans(), min_size=6, max_size=6),
        prune=st.lists(st.booleans(), min_size=3, max_size=3),
    )
    def setup(self, prefixes: list[int], triangle: bool, eager: list[bool], prune: list[bool]) -> None:
        for n, count, pruning in zip(self.nodes, prefixes, prune, strict=True):
            n.store.ingest_many(X_CHAIN[:count])
            n.prune_duplicates = pruning
        links = [("a", "b"), ("b", "c")] + ([("a", "c")] if triangle else [])
        for i, (a, b) in enumerate(links):
            self.net.link(a, b, eager_a=eager[2 * i], eager_b=eager[2 * i + 1])

    def _direction(self, index: int) -> tuple[str, str]:
        keys = sorted(self.net.directions)
        return keys[index % len(keys)]

    @rule(who=st.integers(0, 2), count=st.integers(1, 3))
    def post(self, who: int, count: int) -> None:
        self.nodes[who].post(count, self.net.now)
        self.net.collect()

    @rule(index=st.integers(0, 5), count=st.integers(1, 4))
    def deliver(self, index: int, count: int) -> None:
        self.net.deliver(*self._direction(index), count)

    @rule(dt=st.sampled_from([0.1, 0.3, 0.6]))
    def advance(self, dt: float) -> None:
        self.net.advance(self.net.now + dt)

    @rule(index=st.integers(0, 5), feed=st.sampled_from((None, *ALL_FEEDS)), eager=st.booleans())
    def set_eager(self, index: int, feed: bytes | None, eager: bool) -> None:
        self.net.session(*self._direction(index)).set_eager(eager, self.net.now, feed=feed)
        self.net.collect()

    @rule(index=st.integers(0, 5), feed=st.sampled_from(ALL_FEEDS), push=st.booleans())
    def request_push(self, index: int, feed: bytes, push: bool) -> None:
        a, b = self._direction(index)
        if feed in self.net.nodes[a].source.wanted:
            self.net.session(a, b).request_push(feed, push, self.net.now)
            self.net.collect()

    @rule(who=st.integers(0, 2), feed=st.sampled_from(ALL_FEEDS))
    def toggle_want(self, who: int, feed: bytes) -> None:
        """Unsubscribe or subscribe again, with entries of the feed in flight."""
        self._set_wanted(self.nodes[who], self.nodes[who].source.wanted ^ {feed})

    def _set_wanted(self, n: Node, wanted: set[bytes]) -> None:
        n.source.wanted = wanted
        for session in n.sessions.values():
            session.wants_changed(self.net.now)
        self.net.collect()

    @rule(index=st.integers(0, 5))
    def reconnect(self, index: int) -> None:
        a, b = self._direction(index)
        self.net.unlink(a, b)
        self.net.link(a, b)

    @rule()
    def settle(self) -> None:
        for n in self.nodes:
            self._set_wanted(n, set(ALL_FEEDS))
        self.net.run()
        expected = {X: max(n.store.latest_seq(X) for n in self.nodes)}
        expected.update({n.feed: n.store.latest_seq(n.feed) for n in self.nodes})
        for n in self.nodes:
            assert {f: n.store.latest_seq(f) for f in ALL_FEEDS} == expected, n.name
            assert n.store.verify().ok

    @invariant()
    def honest_peers_never_misbehave(self) -> None:
        for n in self.nodes:
            assert n.misbehaviour() == []
            for session in n.sessions.values():
                assert session.state is SessionState.OPEN

    def teardown(self) -> None:
        for n in self.nodes:
            n.store.close()


Replication.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_replication = Replication.TestCase
