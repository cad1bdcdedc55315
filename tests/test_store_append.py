"""`Store.append` inside a transaction: queued rows, and everything that must see them.

Inside a transaction an appended post's or profile's row is queued and reaches SQLite
in a multi-row INSERT before any other use of the connection and before COMMIT, and is
dropped on rollback.  These tests hold that to what a caller can observe, on a real
on-disk store: reads in the same transaction see the entries, derived tables are kept
in order, a rollback leaves nothing, a failure while writing the queue rolls the whole
transaction back (a constraint, a full database), and a single append outside a
transaction is committed when it returns.
"""

from __future__ import annotations

import sqlite3

import pytest

from identity import Identity
from p2pblog.entry import DELETE, FOLLOW, POST, PROFILE, decode_entry, post_body
from p2pblog.errors import EntrySchemaError, StorageFull, StoreError
from p2pblog.store import _QUEUED_ROWS, Ingested, Store
from tests.feeds import T0, make_chain

ME = Identity(bytes([11]) * 32)
ALICE = Identity(bytes([12]) * 32)


def other_connection(store: Store) -> sqlite3.Connection:
    """A second reader of the same file: sees only what was committed."""
    return sqlite3.connect(str(store.path))


def committed_entries(store: Store) -> int:
    reader = other_connection(store)
    try:
        return int(reader.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        reader.close()


def test_reads_in_the_transaction_see_the_queued_appends(store: Store) -> None:
    mention = f"hi @{ALICE.handle}"
    with store.transaction():
        first = store.append(ME, POST, post_body("one"), T0)
        second = store.append(ME, POST, post_body(mention), T0 + 1)
        reply = store.append(ME, POST, post_body("reply", first.id), T0 + 2)
        store.append(ME, PROFILE, {"name": "me"}, T0 + 3)
        assert store.has_entry(first.id) and store.has_entry(reply.id)
        got = store.get(second.id)
        assert got is not None and got.entry.raw == second.raw
        assert [i.entry.seq for i in store.feed(ME.public_key)] == [4, 3, 2, 1]
        assert [i.entry.id for i in store.timeline(ME.public_key)] == [reply.id, second.id, first.id]
        assert [i.entry.id for i in store.mentions(ALICE.public_key)] == [second.id]
        assert store.profile(ME.public_key) == {"name": "me"}
        thread = store.thread(first.id)
        assert thread is not None and [r.entry.id for r in thread.replies] == [reply.id]
        assert [e.seq for e in store.feed_range(ME.public_key, 2, 3)] == [2, 3]
        assert store.latest_seq(ME.public_key) == 4
        assert committed_entries(store) == 0  # not committed yet
    assert committed_entries(store) == 4
    assert store.clock() == {ME.public_key: 4}
    assert store.verify().ok


def test_a_single_append_outside_a_transaction_is_committed_when_it_returns(store: Store) -> None:
    entry = store.append(ME, POST, post_body("now"), T0)
    assert committed_entries(store) == 1
    reader = other_connection(store)
    try:
        (raw,) = reader.execute("SELECT raw FROM entries WHERE id = ?", (entry.id,)).fetchone()
        (seq,) = reader.execute("SELECT latest_seq FROM feeds WHERE author = ?", (ME.public_key,)).fetchone()
    finally:
        reader.close()
    assert decode_entry(raw) == entry and seq == 1
    assert store._queued == [] and not store._depth


def test_a_refused_append_outside_a_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(EntrySchemaError):
        store.append(ME, POST, {"text": "  "}, T0)
    assert store.clock() == {} and store._queued == []
    assert store.append(ME, POST, post_body("ok"), T0).seq == 1


def test_a_rollback_drops_the_queued_appends(store: Store) -> None:
    store.append(ME, POST, post_body("kept"), T0)
    with pytest.raises(RuntimeError), store.transaction():
        for i in range(10):
            store.append(ME, POST, post_body(f"lost {i}"), T0 + 1 + i)
        assert store.latest_seq(ME.public_key) == 11
        raise RuntimeError("the caller gives up")
    assert store._queued == [] and store._queued_mentions == []
    assert store.latest_seq(ME.public_key) == 1
    assert committed_entries(store) == 1
    assert [i.entry.text for i in store.feed(ME.public_key)] == ["kept"]
    assert store.append(ME, POST, post_body("next"), T0 + 50).seq == 2
    assert store.verify().ok


def test_follow_and_delete_after_queued_posts_derive_in_order(store: Store) -> None:
    alice_posts = make_chain(ALICE, 3)
    assert store.ingest_many([e.raw for e in alice_posts]).accepted == 3
    with store.transaction():
        first = store.append(ME, POST, post_body("first"), T0 + 10)
        second = store.append(ME, POST, post_body("second"), T0 + 11)
        # The delete's retraction reads the entries table: the queued posts are there.
        gone = store.append(ME, DELETE, {"target": first.id}, T0 + 12)
        store.append(ME, FOLLOW, {"feed": ALICE.public_key}, T0 + 13)
        third = store.append(ME, POST, post_body("third"), T0 + 14)
        item = store.get(first.id)
        assert item is not None and item.deleted
        assert store.following(ME.public_key) == {ALICE.public_key}
        timeline = [i.entry.id for i in store.timeline(ME.public_key)]
        assert timeline == [third.id, second.id, first.id] + [e.id for e in reversed(alice_posts)]
    assert [i.entry.seq for i in store.feed(ME.public_key)] == [5, 4, 3, 2, 1]
    assert gone.seq == 3
    item = store.get(first.id)
    assert item is not None and item.deleted
    assert store.verify().ok


def test_appends_and_ingests_interleave_in_one_transaction(store: Store) -> None:
    alice = make_chain(ALICE, 12)
    with store.transaction():
        mine = [store.append(ME, POST, post_body(f"me {i}"), T0 + i) for i in range(3)]
        assert store.ingest_entries(alice[:5]).accepted == 5
        mine.append(store.append(ME, POST, post_body("me 3"), T0 + 3))
        assert store.ingest_many([e.raw for e in alice[5:]]).accepted == 7
        # Our own appended entry, back from a peer: a duplicate, found in the table.
        assert store.ingest(mine[3].raw) is Ingested.DUPLICATE
        assert store.ingest_entries([mine[0]]).duplicates == 1
        mine.append(store.append(ME, POST, post_body("me 4"), T0 + 4))
        assert store.latest_seq(ME.public_key) == 5
    assert store.clock() == {ME.public_key: 5, ALICE.public_key: 12}
    assert [i.entry.id for i in store.feed(ME.public_key)] == [e.id for e in reversed(mine)]
    assert store.verify().ok


def test_more_appends_than_the_queue_holds(store: Store) -> None:
    count = 2 * _QUEUED_ROWS + 5
    with store.transaction():
        for i in range(count):
            store.append(ME, POST, post_body(f"post {i} @{ALICE.handle}"), T0 + i)
        assert len(store._queued) < _QUEUED_ROWS
        assert committed_entries(store) == 0
    assert committed_entries(store) == count
    assert len(store.mentions(ALICE.public_key, limit=count + 1)) == count
    assert store.verify().ok


def test_a_constraint_failing_when_the_queue_is_written_rolls_the_transaction_back(store: Store) -> None:
    store.append(ME, POST, post_body("kept"), T0)
    with pytest.raises(StoreError, match="half-written"), store.transaction():
        for i in range(5):
            store.append(ME, POST, post_body(f"queued {i}"), T0 + 1 + i)
        # A row already holding (author, seq 4), written around the queue.
        store._conn.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ME.public_key, 4, bytes(32), 0, "post", None, b"x"),
        )
        with pytest.raises(sqlite3.IntegrityError):
            store.feed(ME.public_key)  # the read writes the queue first
        # Caught: the transaction still must not commit.
    assert store._queued == []
    assert store.latest_seq(ME.public_key) == 1 and committed_entries(store) == 1
    assert store.verify().ok
    assert store.append(ME, POST, post_body("after"), T0 + 100).seq == 2


def test_a_full_database_when_the_queue_is_written_is_storage_full(store: Store) -> None:
    """SQLITE_FULL from SQLite itself (the file may not grow past max_page_count) while
    the queue is written at commit: the transaction rolls back and StorageFull says why."""
    store.append(ME, POST, post_body("kept"), T0)
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFull, match="the disk is full"), store.transaction():
        for i in range(50):
            store.append(ME, POST, post_body(f"{i} " + "x" * 400), T0 + 1 + i)
    assert store.full and store.refused_writes == 1
    assert store._queued == []
    assert store.latest_seq(ME.public_key) == 1 and committed_entries(store) == 1
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.append(ME, POST, post_body("after"), T0 + 100).seq == 2
    assert not store.full
    assert store.verify().ok


def test_a_full_database_while_appending_in_a_long_transaction_is_storage_full(store: Store) -> None:
    """The queue is written when it fills (mid-transaction): SQLITE_FULL there rolls back too."""
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages + 4}")
    with pytest.raises(StorageFull), store.transaction():
        for i in range(3 * _QUEUED_ROWS):
            store.append(ME, POST, post_body(f"{i} " + "x" * 400), T0 + i)
    assert store.clock() == {} and committed_entries(store) == 0


def test_the_fast_feed_head_is_the_dataclass_it_stands_for() -> None:
    """`Store.append` builds its feed heads through the slots' setters; the result is the same
    frozen, hashable `FeedState` the constructor makes."""
    import dataclasses

    from p2pblog.store import FeedState, _unforked_head

    author, last = bytes(range(32)), bytes(32)
    fast = _unforked_head(author, 7, last)
    assert fast == FeedState(author, 7, last, None) and hash(fast) == hash(FeedState(author, 7, last, None))
    assert dataclasses.astuple(fast) == (author, 7, last, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.latest_seq = 8  # type: ignore[misc]
