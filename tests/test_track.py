"""Track (issue 19) between NodeCores, sans IO: hashtag records, lookups, slices, bounds.

Nodes have real SQLite stores on disk and meet over `tests.gossip.wire.Wire`
(in-memory TCP and UDP, fake clock), joined through "s".  Every test asserts
what a user would see: which posts a tracking node stores and shows, what
was refused and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from dht.providers import MAX_PER_GROUP
from gossip.messages import Slice, SliceRequest, encode_message
from gossip.session import GossipSession
from gossip.slices import MAX_SLICES_ASKED, SliceAnswered, SliceRequested
from identity import Identity
from identity.errors import LocalProtocolError
from identity.records import (
    HASHTAG,
    PROVIDER,
    Record,
    RecordError,
    create_hashtag_record,
    create_record,
    decode_record,
    normalize_tag,
    provider_key,
    tag_key,
)
from p2pblog import hashtags, track
from p2pblog.entry import POST, create_entry, post_body
from p2pblog.events import HashtagsFound, TrackedPostFetched
from p2pblog.hashtags import MAX_ANNOUNCED_TAGS, own_tags, tags_in
from p2pblog.node import NodeCore
from p2pblog.record_rules import hashtag_group
from p2pblog.replication import SliceArrived
from p2pblog.store import Store
from p2pblog.track import (
    FOLLOWED,
    MAX_TRACKED_TERMS,
    STRANGER,
    WITHIN_HOPS,
    TrackError,
    add_term,
    normalize_term,
    rank_authors,
    remove_term,
    tracked_posts,
    tracked_terms,
)
from tests.gossip.feeds import MemorySource
from tests.gossip.wire import T0, Wire
from tests.wire_nodes import wire_net

A, B, C, S = (Identity(bytes([i]) * 32) for i in (61, 62, 63, 64))
NAMES = {"a": A, "b": B, "c": C, "s": S}
HOST = {name: f"10.0.2.{i}" for i, name in enumerate("abcs", start=1)}
Net = Callable[..., tuple[Wire, dict[str, NodeCore]]]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """Builds NodeCores named from 'acs' (by default), all joined through 's'."""
    yield from wire_net(tmp_path, NAMES, HOST, hub="s", seed_offset=100, default="acs")


def fetched(wire: Wire, name: str) -> list[TrackedPostFetched]:
    return [e for e in wire.events_of(name, TrackedPostFetched) if isinstance(e, TrackedPostFetched)]


def track_term(core: NodeCore, term: str, now: float) -> None:
    add_term(core.store, term)
    core.track_changed(now)


# --- terms and matching ---------------------------------------------------------------------


def test_terms_are_normalised_and_bounded(tmp_path: Path) -> None:
    assert normalize_term("#P2P") == "#p2p"
    assert normalize_term("  Café ") == "café"
    assert normalize_term("\uff26\uff35\uff2c\uff2c") == "full"  # NFKC folds full-width letters
    assert normalize_term("#Straße") == "#strasse"  # casefold, not lower
    for bad in ("", "#", "two words", "a-b", "#" + "x" * 65, "@name"):
        with pytest.raises(TrackError):
            normalize_term(bad)
    with Store(tmp_path / "s.db") as store:
        assert add_term(store, "#P2P") == ("#p2p", True)
        assert add_term(store, "#p2p") == ("#p2p", False)
        for i in range(MAX_TRACKED_TERMS - 1):
            add_term(store, f"w{i}")
        assert len(tracked_terms(store)) == MAX_TRACKED_TERMS
        with pytest.raises(TrackError, match="at most 64"):
            add_term(store, "onemore")
        assert remove_term(store, "#P2P") == ("#p2p", True)
        assert remove_term(store, "#p2p") == ("#p2p", False)
        assert add_term(store, "onemore") == ("onemore", True)


def test_tracked_posts_match_tags_and_words_newest_first(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        for i, text in enumerate(["about #P2P nets", "p2p without hash", "café au lait", "nothing here"]):
            store.append(A, POST, post_body(text), 1_000 + i)
        tag_only = [h.item.entry.text for h in tracked_posts(store, ["#p2p"])]
        assert tag_only == ["about #P2P nets"]
        both = [h.item.entry.text for h in tracked_posts(store, ["#p2p", "cafe"])]
        assert both == ["café au lait", "about #P2P nets"]
        page = tracked_posts(store, ["#p2p", "cafe"], limit=1)
        after = tracked_posts(store, ["#p2p", "cafe"], before=page[0].cursor)
        assert [h.item.entry.text for h in after] == ["about #P2P nets"]


def test_own_tags_are_the_most_recently_used_bounded(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        now_ms = int(T0 * 1000)
        for i in range(40):
            store.append(A, POST, post_body(f"post {i} #tag{i} #common"), now_ms - 40 + i)
        tags = own_tags(store, A.public_key, now_ms)
        assert len(tags) == MAX_ANNOUNCED_TAGS
        assert list(tags)[:2] == ["tag39", "common"]
        assert tags["common"] == tuple(range(33, 41))  # the newest 8 seqs, ascending
        assert tags_in("#Café and #café, #x#y") == ["café", "x"]


# --- records and DHT bounds -------------------------------------------------------------------


def test_hashtag_records_verify_under_their_own_key() -> None:
    record = create_hashtag_record(A, tag=normalize_tag("#P2P"), seqs=[5, 2], seq=1, expires=2**40)
    assert (record.type, record.tag, record.seqs) == (HASHTAG, "p2p", (2, 5))
    assert decode_record(record.raw, now=T0, key=tag_key("p2p")) == record
    with pytest.raises(RecordError):
        decode_record(record.raw, now=T0, key=tag_key("other"))
    with pytest.raises(RecordError):
        create_hashtag_record(A, tag="P2P", seqs=[1], seq=1, expires=2**40)  # not normalised
    with pytest.raises(RecordError):
        create_hashtag_record(A, tag="p2p", seqs=list(range(1, 10)), seq=1, expires=2**40)
    # A body with seqs out of order is refused (canonical form).
    body = {"seqs": [3, 1], "tag": "p2p"}
    signed = A.sign(msgpack.packb([1, HASHTAG, A.public_key, 1, 2**40, body]))
    with pytest.raises(RecordError):
        decode_record(signed, now=T0)


def test_a_thousand_hashtag_announcements_from_one_key_are_bounded(net: Net) -> None:
    """A key announces 1,000 hashtag records of different tags, as real ``p2pb_add_provider``
    RPCs (its node skips its own limits: it calls the DHT directly).  Each DHT node keeps at
    most the per-signer bound, counts every drop, and keeps another key's record."""
    wire, cores = net("acs")
    a, s, c = cores["a"], cores["s"], cores["c"]
    honest = create_hashtag_record(C, tag="p2p", seqs=[1], seq=1, expires=int(T0) + 3600)
    c.dht.start_add_provider(tag_key("p2p"), honest.raw, wire.now)
    spam = [
        create_hashtag_record(A, tag=f"spam{i}", seqs=[1], seq=1, expires=int(T0) + 3600) for i in range(1000)
    ]
    for record in spam:
        assert record.tag is not None
        a.dht.start_add_provider(tag_key(record.tag), record.raw, wire.now)
        wire.advance(0.25)  # within the DHT's per-host STORE rate
    wire.advance(10)
    for node in (s, c):  # the two other nodes are the closest to every key here
        stats = node.dht.providers.stats
        assert node.dht.providers.group_size(b"tag:" + A.public_key) == MAX_PER_GROUP
        assert stats["evicted.group_full"] == 1000 - MAX_PER_GROUP
        held = [r.tag for r in spam if r.tag and node.dht.providers.get(tag_key(r.tag), wire.now)]
        assert held == [f"spam{i}" for i in range(1000 - MAX_PER_GROUP, 1000)]  # the newest kept
    assert s.dht.providers.get(tag_key("p2p"), wire.now) == [honest.raw]
    # Provider records are not hashtag records: no group bound applies to them.
    provider = create_record(
        A, type="provider", seq=1, expires=int(T0) + 3600, addrs=[("tcp", "10.0.0.1", 1)], feed=C.public_key
    )
    assert hashtag_group(provider_key(C.public_key), provider.raw) is None


def test_a_node_never_announces_more_than_its_bound(net: Net) -> None:
    wire, cores = net("as")
    a = cores["a"]
    for i in range(100):
        a.post(f"#t{i} and #u{i}", wire.now)
        wire.advance(0.1)
    wire.advance(120)
    assert len(a.hashtags.records) == MAX_ANNOUNCED_TAGS
    own = [
        key
        for key in a.dht.providers
        if a.dht.providers.is_published(key, A.public_key)
        and decode_record(a.dht.providers.get(key, wire.now)[0], now=None).type == HASHTAG
    ]
    assert len(own) == MAX_ANNOUNCED_TAGS
    # It rate-limited itself: 200 tags changed in 10 s, but announcements kept to the budget.
    sent = a.hashtags.stats["announce.sent"]
    assert a.hashtags.stats["announce.rate_limited"] > 0
    assert sent <= hashtags.ANNOUNCE_BURST + hashtags.ANNOUNCE_RATE * (wire.now - T0) + 1


# --- across the network -----------------------------------------------------------------------


def test_a_tracked_tag_finds_a_strangers_post_within_ten_seconds(net: Net) -> None:
    wire, cores = net("acs")
    a, c = cores["a"], cores["c"]
    track_term(c, "#P2P", wire.now)
    assert not c.replicator.is_connected(A.public_key)
    post = a.post("hello #p2p world", wire.now)
    a.post("unrelated post", wire.now)
    posted = wire.now
    wire.advance(10)
    events = fetched(wire, "c")
    assert [(e.author, e.seq) for e in events] == [(A.public_key, post.seq)]
    hits = tracked_posts(c.store, ["#p2p"])
    assert [h.item.entry.id for h in hits] == [post.id]
    assert c.store.latest_seq(A.public_key) == 0  # a loose entry, not the feed log
    assert c.tracker.stats["fetched"] == 1 and a.tracker.stats["serve.answered"] >= 1
    assert wire.now - posted <= 10
    # Looked up again and again: the post is not fetched twice.
    wire.advance(20)
    assert len(fetched(wire, "c")) == 1


def test_blocked_authors_are_never_fetched(net: Net) -> None:
    wire, cores = net("acs")
    a, c = cores["a"], cores["c"]
    c.block(A.public_key, wire.now)
    track_term(c, "#p2p", wire.now)
    a.post("blocked #p2p", wire.now)
    wire.advance(15)
    assert fetched(wire, "c") == []
    assert c.tracker.stats["lookup.records"] >= 1 and c.tracker.stats["fetch.started"] == 0


def test_ranking_puts_followed_first_then_follow_hops_then_strangers() -> None:
    records = [
        create_hashtag_record(identity, tag="p2p", seqs=[1], seq=10 + i, expires=2**40)
        for i, identity in enumerate((A, B, C, S))
    ]
    ranked = rank_authors(
        records,
        own=S.public_key,
        following={C.public_key},
        blocked={B.public_key},
        within_hops=lambda key: key == A.public_key,
    )
    assert [(rank, r.signer) for rank, r in ranked] == [(FOLLOWED, C.public_key), (WITHIN_HOPS, A.public_key)]
    strangers = [
        create_hashtag_record(Identity(bytes([i]) * 32), tag="p2p", seqs=[1], seq=i, expires=2**40)
        for i in range(1, 20)
    ]

    def capped(salt: bytes, records: list[Record]) -> list[bytes]:
        ranked = rank_authors(
            records,
            own=S.public_key,
            following=set(),
            blocked=set(),
            within_hops=lambda k: False,
            salt=salt,
            limit=track.MAX_AUTHORS_PER_LOOKUP,
        )
        assert len(ranked) == track.MAX_AUTHORS_PER_LOOKUP and all(rank == STRANGER for rank, _ in ranked)
        return [r.signer for _, r in ranked]

    # The order among strangers ignores what they chose (their records' seqs: a review found
    # that eight records with huge seqs took every slot), and a new salt gives others a turn.
    boosted = [
        create_hashtag_record(Identity(bytes([i]) * 32), tag="p2p", seqs=[1], seq=2**40 + i, expires=2**41)
        for i in range(1, 20)
    ]
    assert capped(b"one", strangers) == capped(b"one", boosted)
    assert capped(b"one", strangers) != capped(b"two", strangers)


def test_a_forged_or_modified_entry_in_a_slice_is_refused(net: Net) -> None:
    wire, cores = net("acs")
    a, c = cores["a"], cores["c"]
    track_term(c, "#p2p", wire.now)
    genuine = a.post("real #p2p post", wire.now)
    wire.advance(10)
    assert [e.entry_id for e in fetched(wire, "c")] == [genuine.id]
    # Now hand C's tracker a slice by hand, as if A's node answered a request for seqs 2, 3.
    fetch = track._Fetch(set(), {"p2p"}, wire.now + 30, requested=True, asked={2, 3})
    c.tracker._fetches[A.public_key] = fetch
    ms = int(wire.now * 1000)
    real = create_entry(
        A, seq=2, prev=genuine.id, timestamp=ms, kind=POST, body=post_body("second #p2p post")
    )
    modified = bytearray(real.raw)
    modified[-5] ^= 0x01  # a byte of the text: the signature no longer covers it
    forged = create_entry(B, seq=3, prev=real.id, timestamp=ms, kind=POST, body=post_body("forged #p2p post"))
    untagged = create_entry(A, seq=3, prev=real.id, timestamp=ms, kind=POST, body=post_body("no tag"))
    arrived = SliceArrived(A.public_key, A.public_key, (2, 3), (bytes(modified), forged.raw, untagged.raw))
    c.tracker.slice_arrived(arrived, wire.now)
    stats = c.tracker.stats
    assert stats["slice.refused.invalid"] == 1  # the modified one
    assert stats["slice.refused.not_asked"] == 1  # signed by B, not the author asked
    assert stats["slice.refused.no_tag"] == 1
    assert not c.store.held_seqs(A.public_key, [2, 3])
    # A slice nobody asked for is dropped whole.
    c.tracker.slice_arrived(SliceArrived(A.public_key, A.public_key, (2,), (real.raw,)), wire.now)
    assert stats["slice.unsolicited"] == 1 and not c.store.held_seqs(A.public_key, [2])


def test_slice_answers_are_bounded_and_rate_limited_per_peer(net: Net) -> None:
    """C asks A's node for slices over a real session: A answers with the posts it holds
    among the seqs asked, SERVE_BURST requests at once, then empty answers (counted)."""
    wire, cores = net("abcs")
    a, b, c = cores["a"], cores["b"], cores["c"]
    posts = [a.post(f"post {i} #p2p", wire.now) for i in range(20)]
    a.set_profile({"name": "alice"}, wire.now)  # seq 21: not a post, never in a slice
    c.replicator.learn_address(A.public_key, *wire.addr("a"), wire.now)
    c.replicator.want_connection(A.public_key, wire.now)
    wire.advance(2)
    assert c.replicator.is_connected(A.public_key)

    def ask(seqs: list[int]) -> SliceArrived:
        before = len(wire.events_of("c", SliceArrived))
        assert c.replicator.request_slice(A.public_key, A.public_key, seqs, wire.now)
        wire.settle()
        arrived = wire.events_of("c", SliceArrived)
        assert len(arrived) == before + 1
        answer = arrived[-1]
        assert isinstance(answer, SliceArrived)
        return answer

    first = ask(
        [
            *range(6, 22),
        ]
    )
    assert first.entries == tuple(p.raw for p in posts[5:20])  # 15 posts; the profile left out
    answered = [len(ask([1, 2]).entries) for _ in range(12)]
    assert answered == [2] * (int(track.SERVE_BURST) - 1) + [0] * (13 - int(track.SERVE_BURST))
    assert a.tracker.stats["serve.rate_limited"] == 13 - track.SERVE_BURST
    # Each peer has its own budget: B, asking now, is answered.
    b.replicator.learn_address(A.public_key, *wire.addr("a"), wire.now)
    b.replicator.want_connection(A.public_key, wire.now)
    wire.advance(2)
    assert b.replicator.request_slice(A.public_key, A.public_key, [3], wire.now)
    wire.settle()
    from_b = [e for e in wire.events_of("b", SliceArrived) if isinstance(e, SliceArrived)]
    assert [e.entries for e in from_b] == [(posts[2].raw,)]


# --- the session's slice exchange --------------------------------------------------------------


def test_a_session_pairs_slices_with_requests_and_bounds_both() -> None:
    """A SLICE nobody asked for is misbehaviour; requests beyond the bound wait or are dropped."""
    asker = GossipSession(MemorySource(), now=T0)
    server = GossipSession(MemorySource(), now=T0)
    for session in (asker, server):
        session.connection_made(T0)
        session.frames_to_send()
    # An unsolicited SLICE is scored against the peer.
    asker.frame_received(encode_message(Slice(A.public_key, ())), T0)
    assert asker.stats["misbehaved.slice for nothing"] == 1
    # Our own requests: at most MAX_SLICES_ASKED wait for answers.
    assert all(asker.request_slice(A.public_key, [i], T0) for i in range(1, MAX_SLICES_ASKED + 1))
    assert not asker.request_slice(A.public_key, [99], T0)
    frames = asker.frames_to_send()
    assert len(frames) == MAX_SLICES_ASKED
    # The peer's: the first MAX_SLICES_OWED are reported, the rest dropped and counted.
    for frame in [*frames, encode_message(SliceRequest(A.public_key, (7,)))]:
        server.frame_received(frame, T0)
    asked = [e for e in iter(server.next_event, None) if isinstance(e, SliceRequested)]
    assert [e.seqs for e in asked] == [(1,), (2,), (3,), (4,)]
    assert server.stats["drop.slice_request"] == 1
    with pytest.raises(LocalProtocolError):
        server.answer_slice(B.public_key, [], T0)  # not the feed asked for
    for _ in asked:
        server.answer_slice(A.public_key, [], T0)
    with pytest.raises(LocalProtocolError):
        server.answer_slice(A.public_key, [], T0)  # nothing left to answer
    for frame in server.frames_to_send():
        asker.frame_received(frame, T0)
    answers = [e for e in iter(asker.next_event, None) if isinstance(e, SliceAnswered)]
    assert [e.seqs for e in answers] == [(1,), (2,), (3,), (4,)]
    assert asker.slices_asked == 0 and asker.request_slice(A.public_key, [5], T0)


def test_a_post_is_fetched_from_a_follower_when_its_author_is_gone(net: Net) -> None:
    """The author's node is down: after `FALLBACK_AFTER` the tracker asks a provider of the
    author's feed (a follower that replicates it) for the slice, and checks it the same way."""
    wire, cores = net("abcs")
    a, b, c = cores["a"], cores["b"], cores["c"]
    b.follow(A.public_key, wire.now)
    b.replicator.add_candidates(A.public_key, [(A.public_key, *wire.addr("a"))], wire.now)
    post = a.post("while you were away #p2p", wire.now)
    wire.advance(30)  # B replicates A's feed and announces itself as its provider
    assert b.store.latest_seq(A.public_key) == post.seq
    wire.crash("a")
    track_term(c, "#p2p", wire.now)
    wire.advance(track.FALLBACK_AFTER + 15)
    assert [(e.entry_id, e.peer) for e in fetched(wire, "c")] == [(post.id, B.public_key)]
    assert c.tracker.stats["fetch.via_provider"] == 1 and b.tracker.stats["serve.answered"] == 1


def test_hashtag_records_are_republished_and_withdrawn_with_their_posts(net: Net) -> None:
    wire, cores = net("acs")
    a, s = cores["a"], cores["s"]
    post = a.post("one #kept and one #gone", wire.now)
    a.post("no tags here", wire.now)
    wire.advance(5)
    first = a.hashtags.records["kept"]
    assert sorted(a.hashtags.records) == ["gone", "kept"] and first.seqs == (post.seq,)
    held = s.dht.providers.get(tag_key("kept"), wire.now)
    assert [decode_record(v, now=None).signer for v in held] == [A.public_key]
    wire.advance(hashtags.TAG_REPUBLISH + 60)
    again = a.hashtags.records["kept"]
    assert again.seq > first.seq and again.expires > first.expires and again.seqs == first.seqs
    # Deleting the post withdraws both tags from our own store.
    a.delete(post.id, wire.now)
    wire.advance(5)
    assert a.hashtags.records == {}
    assert not a.dht.providers.is_published(tag_key("kept"), A.public_key)
    assert a.hashtags.stats["announce.withdrawn"] == 2


def test_a_tracker_that_waits_for_an_answer_does_not_spin(net: Net) -> None:
    """A request sent but never answered: the node wakes at the fetch's deadline, not before."""
    wire, cores = net("acs")
    a, c = cores["a"], cores["c"]
    a.tracker.slice_asked = lambda asked, now: None  # type: ignore[method-assign]  # A never answers
    track_term(c, "#p2p", wire.now)
    a.post("unanswered #p2p", wire.now)
    wire.advance(3)
    assert c.tracker.stats["fetch.requested"] == 1 and c.tracker._fetches
    deadline = next(iter(c.tracker._fetches.values())).deadline
    # Before the deadline the tracker wakes only for its next lookup, never "now".
    for _ in range(10):
        timer = c.tracker.next_deadline()
        assert timer is not None and timer > wire.now
        wire.advance(1)
    wire.advance(track.FETCH_TIMEOUT)
    assert c.tracker.stats["fetch.timeout"] == 1 and deadline <= wire.now
    # The silent author is left alone for RETRY_AFTER, though its record is found again.
    wire.advance(60)
    assert not c.tracker._fetches and c.tracker.stats["fetch.started"] == 1
    assert c.tracker.stats["fetch.backoff"] >= 1


def test_lookups_are_bounded_per_second_however_many_tags_are_tracked(net: Net) -> None:
    wire, cores = net("acs")
    c = cores["c"]
    for i in range(track.MAX_TRACKED_TERMS):
        add_term(c.store, f"#tag{i}")
    c.track_changed(wire.now)
    start = wire.now
    wire.advance(30)
    started = c.tracker.stats["lookup.started"]
    assert started <= track.LOOKUP_BURST + track.LOOKUP_RATE * (wire.now - start) + 1
    assert started >= track.LOOKUP_RATE * 30 - 2 and c.tracker.stats["lookup.deferred"] > 0
    # The tags take turns: within a minute and a bit, every one was looked up.
    wire.advance(40)
    looked_up = {e.tag for e in wire.events_of("c", HashtagsFound) if isinstance(e, HashtagsFound)}
    assert looked_up == {f"tag{i}" for i in range(track.MAX_TRACKED_TERMS)}
    # One tracked tag alone is looked up every TAG_SEARCH_EVERY seconds.
    for i in range(1, track.MAX_TRACKED_TERMS):
        remove_term(c.store, f"#tag{i}")
    c.track_changed(wire.now)
    before = c.tracker.stats["lookup.started"]
    wire.advance(40)
    assert c.tracker.stats["lookup.started"] - before in (9, 10, 11)


# --- regressions (review) -----------------------------------------------------------------------


def test_eight_records_with_huge_seqs_do_not_hide_an_honest_stranger(net: Net) -> None:
    wire, cores = net("acs")
    a, c = cores["a"], cores["c"]
    track_term(c, "#p2p", wire.now)
    for i in range(12):  # more than MAX_AUTHORS_PER_LOOKUP, all with a self-chosen huge seq
        sybil = Identity(bytes([200 + i]) * 32)
        record = create_hashtag_record(sybil, tag="p2p", seqs=[1], seq=2**62, expires=2**40)
        for core in cores.values():
            core.dht.providers.add(tag_key("p2p"), record.raw, wire.now, source="10.9.9.9")
    post = a.post("hello #p2p world", wire.now)
    wire.advance(600)
    assert (A.public_key, post.seq) in [(e.author, e.seq) for e in fetched(wire, "c")]


def test_a_dead_provider_does_not_block_fetching_from_the_others(net: Net) -> None:
    wire, cores = net("abcs")
    a, b, c = cores["a"], cores["b"], cores["c"]
    b.follow(A.public_key, wire.now)
    b.replicator.add_candidates(A.public_key, [(A.public_key, *wire.addr("a"))], wire.now)
    post = a.post("while you were away #p2p", wire.now)
    wire.advance(30)
    wire.crash("a")
    # Keys that announce A's feed at a dead address (several: whatever order they are tried in).
    for i in range(1, 4):
        liar = Identity(bytes([i]) * 32)
        record = create_record(
            liar,
            type=PROVIDER,
            seq=1,
            expires=2**40,
            addrs=[("tcp", "10.0.9.9", 4000 + i)],
            feed=A.public_key,
        )
        for core in cores.values():
            core.dht.providers.add(provider_key(A.public_key), record.raw, wire.now, source="10.0.9.9")
    track_term(c, "#p2p", wire.now)
    wire.advance(1200)
    assert post.id in [e.entry_id for e in fetched(wire, "c")]
