"""The SQLite store: appending, ingesting (chain rules, forks), queries, verify, schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from identity import Identity, limits
from p2pblog.entry import DELETE, FOLLOW, POST, UNFOLLOW, create_entry, post_body
from p2pblog.errors import ChainError, EntryFromFuture, EntrySignatureError, FeedForkedError, StoreError
from p2pblog.store import SCHEMA_VERSION, Ingested, Store
from tests.feeds import T0, make_chain, make_entry

DAY_MS = 24 * 3600 * 1000
ME = Identity(bytes([1]) * 32)
ALICE = Identity(bytes([2]) * 32)
BOB = Identity(bytes([3]) * 32)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "store.sqlite3") as s:
        yield s


def test_append_builds_a_chain(store: Store) -> None:
    a = store.append(ME, POST, post_body("one"), T0)
    b = store.append(ME, POST, post_body("two"), T0 + 1)
    assert (a.seq, a.prev) == (1, None)
    assert (b.seq, b.prev) == (2, a.id)
    assert [i.entry.id for i in store.feed(ME.public_key)] == [b.id, a.id]
    assert store.clock() == {ME.public_key: 2}
    assert store.get(a.id) is not None
    assert store.verify().ok


def test_ingest_in_order_duplicates_and_clock(store: Store) -> None:
    chain = make_chain(ALICE, 5)
    assert [store.ingest(e.raw) for e in chain] == [Ingested.ACCEPTED] * 5
    assert store.ingest(chain[2].raw) is Ingested.DUPLICATE
    assert store.latest_seq(ALICE.public_key) == 5
    assert [e.id for e in store.feed_range(ALICE.public_key, 2, 4)] == [e.id for e in chain[1:4]]


def test_a_gap_or_broken_prev_stores_nothing(store: Store) -> None:
    chain = make_chain(ALICE, 3)
    with pytest.raises(ChainError, match="gap"):
        store.ingest(chain[1].raw)
    assert store.clock() == {}
    store.ingest(chain[0].raw)
    wrong_prev = make_entry(ALICE, 2, b"\x99" * 32)
    with pytest.raises(ChainError, match="prev"):
        store.ingest(wrong_prev.raw)
    assert store.latest_seq(ALICE.public_key) == 1
    assert store.get(wrong_prev.id) is None


def test_a_forged_entry_stores_nothing(store: Store) -> None:
    (entry,) = make_chain(ALICE, 1)
    forged = entry.raw[:20] + bytes([entry.raw[20] ^ 1]) + entry.raw[21:]
    with pytest.raises(EntrySignatureError):
        store.ingest(forged)
    assert store.clock() == {}


def test_fork_keeps_both_entries_as_proof_and_refuses_what_follows(store: Store) -> None:
    chain = make_chain(ALICE, 3)
    for e in chain:
        store.ingest(e.raw)
    rival = make_entry(ALICE, 2, chain[0].id, body=post_body("the other seq 2"))
    assert store.ingest(rival.raw) is Ingested.FORK
    assert store.feed_state(ALICE.public_key).forked_seq == 2
    assert {e.id for e in store.fork_proofs(ALICE.public_key)} == {chain[1].id, rival.id}
    assert store.ingest(rival.raw) is Ingested.FORK  # the proof is stored once
    assert len(store.fork_proofs(ALICE.public_key)) == 2
    after = make_chain(ALICE, 1, start=chain[2])[0]
    with pytest.raises(FeedForkedError):
        store.ingest(after.raw)
    assert store.latest_seq(ALICE.public_key) == 3
    report = store.verify(ALICE.public_key)
    assert not report.ok and "forked at seq 2" in report.problems[0]


def test_ingest_many_keeps_the_valid_prefix(store: Store) -> None:
    chain = make_chain(ALICE, 10)
    raws = [e.raw for e in chain]
    raws[6] = raws[6][:-3]  # truncated entry 7
    report = store.ingest_many(raws)
    assert (report.accepted, report.refused, report.error_index) == (6, 4, 6)
    assert store.latest_seq(ALICE.public_key) == 6
    again = store.ingest_many([e.raw for e in chain])
    assert (again.accepted, again.duplicates, again.error) == (4, 6, None)


def test_ingest_many_across_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("identity.limits.INGEST_BATCH", 4)
    chain = make_chain(ALICE, 11)
    bad = make_entry(ALICE, 12, b"\x00" * 32)
    report = store.ingest_many([e.raw for e in chain] + [bad.raw] + [e.raw for e in make_chain(BOB, 2)])
    assert (report.accepted, report.refused, report.error_index) == (11, 3, 11)
    assert isinstance(report.error, ChainError)
    assert store.clock() == {ALICE.public_key: 11}


def test_follows_timeline_and_unfollow(store: Store) -> None:
    for e in make_chain(ALICE, 2, text="alice"):
        store.ingest(e.raw)
    for e in make_chain(BOB, 2, text="bob"):
        store.ingest(e.raw)
    mine = store.append(ME, POST, post_body("mine"), T0 + 100)
    assert [i.entry.id for i in store.timeline(ME.public_key)] == [mine.id]
    store.append(ME, FOLLOW, {"feed": ALICE.public_key}, T0 + 101)
    assert store.following(ME.public_key) == {ALICE.public_key}
    timeline = store.timeline(ME.public_key)
    assert [i.entry.author for i in timeline] == [ME.public_key, ALICE.public_key, ALICE.public_key]
    assert [i.entry.seq for i in timeline[1:]] == [2, 1]  # newest first
    store.append(ME, UNFOLLOW, {"feed": ALICE.public_key}, T0 + 102)
    assert store.following(ME.public_key) == set()
    assert [i.entry.id for i in store.timeline(ME.public_key, limit=10)] == [mine.id]


def test_mentions(store: Store) -> None:
    body = post_body(f"hey {ME.handle}")
    mention = make_entry(ALICE, 1, None, body=body)
    store.ingest(mention.raw)
    store.ingest(make_entry(BOB, 1, None).raw)
    assert [i.entry.id for i in store.mentions(ME.public_key)] == [mention.id]
    assert store.mentions(BOB.public_key) == []


def test_delete_retracts_only_the_authors_own_entry(store: Store) -> None:
    (alice_post,) = make_chain(ALICE, 1)
    store.ingest(alice_post.raw)
    mine = store.append(ME, POST, post_body("oops"), T0)
    # A delete aimed at someone else's entry retracts nothing.
    store.append(ME, DELETE, {"target": alice_post.id}, T0 + 1)
    assert not store.get(alice_post.id).deleted  # type: ignore[union-attr]
    store.append(ME, DELETE, {"target": mine.id}, T0 + 2)
    item = store.get(mine.id)
    assert item is not None and item.deleted
    assert store.timeline(ME.public_key)[0].deleted


def test_thread_links_ancestors_and_replies(store: Store) -> None:
    root = store.append(ME, POST, post_body("root"), T0)
    reply = make_entry(ALICE, 1, None, body=post_body("reply", reply_to=root.id))
    store.ingest(reply.raw)
    nested = store.append(ME, POST, post_body("nested", reply_to=reply.id), T0 + 5)
    orphan = make_entry(BOB, 1, None, body=post_body("reply to unknown", reply_to=b"\x42" * 32))
    store.ingest(orphan.raw)

    thread = store.thread(reply.id)
    assert thread is not None
    assert [i.entry.id for i in thread.ancestors] == [root.id]
    assert [i.entry.id for i in thread.replies] == [nested.id]
    assert thread.missing_parent is None
    top = store.thread(root.id)
    assert top is not None and [i.entry.id for i in top.replies] == [reply.id, nested.id]
    lonely = store.thread(orphan.id)
    assert lonely is not None and lonely.missing_parent == b"\x42" * 32
    assert store.thread(b"\x00" * 32) is None


def test_profile_merges_fields(store: Store) -> None:
    store.append(ME, "profile", {"name": "me"}, T0)
    store.append(ME, "profile", {"bio": "hello"}, T0 + 1)
    store.append(ME, "profile", {"name": "me2"}, T0 + 2)
    assert store.profile(ME.public_key) == {"name": "me2", "bio": "hello"}


def test_verify_finds_tampered_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        for e in make_chain(ALICE, 4):
            store.ingest(e.raw)
        assert store.verify().ok
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT raw FROM entries WHERE seq = 3").fetchone()
    db.execute("UPDATE entries SET raw = ? WHERE seq = 3", (raw[:-1] + b"!",))
    db.execute("DELETE FROM entries WHERE seq = 2")
    db.commit()
    db.close()
    with Store(path) as store:
        report = store.verify()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "seq 3" in text and "gap" in text


def test_schema_is_versioned_and_newer_stores_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade"):
        Store(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(path)


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.append(ME, POST, post_body("lost"), T0)
        raise RuntimeError("crash in the middle")
    assert store.clock() == {}
    entry = create_entry(ME, seq=1, prev=None, timestamp=T0, kind=POST, body=post_body("kept"))
    assert store.ingest(entry.raw) is Ingested.ACCEPTED


def test_fork_inside_one_batch_is_committed_with_the_feed_head(tmp_path: Path) -> None:
    """Feed heads are cached per transaction: a new feed, its fork and the refusal share one commit."""
    path = tmp_path / "s.sqlite3"
    chain = make_chain(ALICE, 4)
    rival = make_entry(ALICE, 2, chain[0].id, body=post_body("rival"))
    with Store(path) as store:
        report = store.ingest_many([e.raw for e in chain[:3]] + [rival.raw, chain[3].raw])
        assert (report.accepted, report.forks, report.refused) == (3, 1, 1)
        assert isinstance(report.error, FeedForkedError)
    with Store(path) as store:  # what was committed, read back from disk
        state = store.feed_state(ALICE.public_key)
        assert (state.latest_seq, state.latest_id, state.forked_seq) == (3, chain[2].id, 2)
        assert len(store.fork_proofs(ALICE.public_key)) == 2


def test_a_rolled_back_transaction_forgets_cached_heads(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.append(ME, POST, post_body("rolled back"), T0)
        assert store.feed_state(ME.public_key).latest_seq == 1
        raise RuntimeError
    assert store.feed_state(ME.public_key).latest_seq == 0
    assert store.append(ME, POST, post_body("first for real"), T0).seq == 1


def test_dht_contacts_are_saved_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        store.save_contacts([(b"\x01" * 20, "127.0.0.1", 4000, 10.0), (b"\x02" * 20, "::1", 4001, 20.0)])
    with Store(path) as store:
        assert store.load_contacts() == [
            (b"\x02" * 20, "::1", 4001, 20.0),
            (b"\x01" * 20, "127.0.0.1", 4000, 10.0),
        ]
        store.save_contacts([(b"\x03" * 20, "127.0.0.2", 5000, 1.0)])
        assert store.load_contacts() == [(b"\x03" * 20, "127.0.0.2", 5000, 1.0)]


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    from p2pblog.store import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.save_contacts([(b"\x01" * 20, "127.0.0.1", 1, 0.0)])
        assert len(store.load_contacts()) == 1


def test_an_entry_stamped_more_than_a_day_ahead_waits_for_our_clock(store: Store) -> None:
    """A far-future timestamp is refused at ingest (it would break every display
    sorted by time); the feed waits and the entry is accepted once it is near."""
    ok = make_entry(ALICE, 1, None)
    ahead = create_entry(ALICE, seq=2, prev=ok.id, timestamp=T0 + 2 * DAY_MS, kind=POST, body=post_body("x"))
    report = store.ingest_many([ok.raw, ahead.raw], now_ms=T0)
    assert (report.accepted, report.refused) == (1, 1)
    assert isinstance(report.error, EntryFromFuture)
    with pytest.raises(EntryFromFuture):
        store.ingest(ahead.raw, now_ms=T0)
    assert store.latest_seq(ALICE.public_key) == 1
    assert store.ingest(ahead.raw, now_ms=T0 + DAY_MS + 1) is Ingested.ACCEPTED
    # The largest timestamp the format allows is never accepted from a peer.
    top = create_entry(
        BOB, seq=1, prev=None, timestamp=limits.MAX_TIMESTAMP_MS, kind=POST, body=post_body("y")
    )
    with pytest.raises(EntryFromFuture):
        store.add_loose(top, T0)
    assert not store.has_entry(top.id)


def test_peer_scores_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with Store(path) as s:
        s.save_peer_scores([(b"k" * 32, -40.0, 1e9, 5.0), (b"ip:10.0.0.0/24", -5.0, 0.0, 6.0)])
    with Store(path) as s:
        assert s.load_peer_scores(10) == [(b"ip:10.0.0.0/24", -5.0, 0.0, 6.0), (b"k" * 32, -40.0, 1e9, 5.0)]
        assert len(s.load_peer_scores(1)) == 1
        s.save_peer_scores([])
        assert s.load_peer_scores(10) == []
