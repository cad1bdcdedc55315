"""Entry ids off the write path (`p2pblog.entry_index`, schema 9): ``entry_ids`` is filled in
sorted folds, the tail is scanned, and every lookup by id finds every stored entry either way."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from identity import Identity, limits
from p2pblog import entry_index
from p2pblog import store as store_module
from p2pblog.entry import DELETE, Entry, decode_entry, post_body
from p2pblog.store import MIGRATIONS, SCHEMA_VERSION, VERIFY_CHUNK, Store
from tests.feeds import make_chain, make_entry

ALICE = Identity(bytes([2]) * 32)
BOB = Identity(bytes([3]) * 32)
CAROL = Identity(bytes([4]) * 32)


def through(store: Store) -> int:
    return int(store._conn.execute(f"SELECT {entry_index.IDS_THROUGH}").fetchone()[0])


def top(store: Store) -> int:
    return int(store._conn.execute("SELECT coalesce(max(rowid), 0) FROM entries").fetchone()[0])


def folded(store: Store) -> int:
    """Ids in the index, both levels."""
    (count,) = store._conn.execute(
        "SELECT (SELECT count(*) FROM entry_ids) + (SELECT count(*) FROM entry_ids_new)"
    ).fetchone()
    return int(count)


def test_entries_have_no_index_on_id_and_a_commit_folds_a_long_tail(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexes = store._conn.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'entries'").fetchall()
    assert not any(b"UNIQUE" in (sql or b"").upper() and b"(id)" in (sql or b"") for _, sql in indexes)
    columns = [row[1] for row in store._conn.execute("PRAGMA index_list(entries)")]
    for name in columns:
        assert [r[2] for r in store._conn.execute(f"PRAGMA index_info({name.decode()})")] != [b"id"]
    monkeypatch.setattr(store_module, "FOLD_IDS_AT", 8)
    assert store.ingest_entries(make_chain(ALICE, 5)).accepted == 5
    assert (through(store), folded(store)) == (0, 0)  # a short tail waits
    assert store.ingest_entries(make_chain(BOB, 3)).accepted == 3
    assert (through(store), folded(store)) == (8, 8)  # 8 rows: folded at that commit
    assert store.verify().ok


def test_a_lookup_finds_tail_entries_and_writes_nothing(store: Store) -> None:
    chain = make_chain(ALICE, 6)
    store.ingest_entries(chain)
    assert through(store) == 0
    item = store.get(chain[3].id)
    assert item is not None and item.entry == chain[3]
    assert store.has_entry(chain[5].id) and not store.has_entry(b"\x07" * 32)
    assert (through(store), folded(store)) == (0, 0)
    assert store.verify().ok


def test_a_delete_folds_the_tail_in_its_transaction_and_finds_its_target(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk ingest's tail grows to a whole transaction before its commit folds it; a delete
    entry folds first, so it looks its target up in entry_ids, not in a long scan."""
    monkeypatch.setattr(store_module, "FOLD_IDS_AT", 10**9)
    chain = make_chain(ALICE, 5)
    delete = make_entry(ALICE, 6, chain[4].id, DELETE, {"target": chain[1].id})
    late = make_chain(ALICE, 2, start=delete)
    assert store.ingest_entries([*chain, delete, *late]).accepted == 8
    assert (through(store), folded(store)) == (6, 6)  # folded at the delete (its row too), not after
    item = store.get(chain[1].id)
    assert item is not None and item.deleted
    assert store.verify().ok


def test_a_store_that_cannot_fold_scans_the_tail(tmp_path: Path) -> None:
    """Another process, or a store opened read-only on a full disk: every lookup by id
    finds the tail's entries."""
    path = tmp_path / "store.sqlite3"
    parent = make_chain(ALICE, 2)
    reply = make_entry(BOB, 1, None, body=post_body(f"@{ALICE.handle} yes", parent[1].id))
    mention = make_entry(CAROL, 1, None, body=post_body(f"hello @{BOB.handle}"))
    delete = make_entry(BOB, 2, reply.id, DELETE, {"target": reply.id})
    with Store(path) as writer:
        for entries in (parent, [reply], [mention]):
            writer.ingest_entries(entries)
        with Store(path) as reader:
            reader.read_only = True  # as `_open_read_only` leaves it
            assert through(reader) == 0
            got = reader.get(reply.id)
            assert got is not None and got.entry == reply
            assert reader.has_entry(mention.id)
            thread = reader.thread(parent[1].id)
            assert thread is not None and [r.entry for r in thread.replies] == [reply]
            assert [i.entry for i in reader.mentions(BOB.public_key)] == [mention]
            assert [i.entry for i in reader.mentions(ALICE.public_key)] == [reply]
            assert through(reader) == 0  # nothing folded by the reader
        writer.ingest_entries([delete])  # the delete finds its target in the tail
        got = writer.get(reply.id)
        assert got is not None and got.deleted
        assert writer.verify().ok


def test_loose_notices_and_stored_entries_are_one_set(store: Store) -> None:
    """An admitted notice that is also stored (the feed replicated later) is listed once,
    whether its row is folded or still in the tail."""
    mention = make_entry(CAROL, 1, None, body=post_body(f"hi @{ALICE.handle}"))
    assert store.add_loose(mention, mention.timestamp)
    store.ingest_entries([mention])
    assert through(store) == 0
    count = store._conn.execute("SELECT count(*) FROM known_entries WHERE author = ?", (CAROL.public_key,))
    assert count.fetchone()[0] == 1
    assert [i.entry for i in store.mentions(ALICE.public_key)] == [mention]
    with store.transaction():
        store._fold_ids(force=True)
    assert through(store) == 1
    count = store._conn.execute("SELECT count(*) FROM known_entries WHERE author = ?", (CAROL.public_key,))
    assert count.fetchone()[0] == 1
    assert [i.entry for i in store.mentions(ALICE.public_key)] == [mention]


def test_a_revoked_devices_entries_leave_the_id_index(store: Store) -> None:
    """Truncating a feed (a revoked device, `p2pblog.device_store`) drops its ids, and the
    rowids the next rows reuse are in the tail again."""
    chain = make_chain(ALICE, 5)
    store.ingest_entries(chain)
    with store.transaction():
        store._fold_ids(force=True)
    assert through(store) == 5
    with store.transaction():
        store._truncate(ALICE.public_key, 2)
    assert store.get(chain[3].id) is None and store.get(chain[1].id) is not None
    assert through(store) == 2
    other = make_chain(BOB, 3)
    store.ingest_entries(other)
    assert {top(store)} == {5}  # rowids 3..5 reused
    item = store.get(other[2].id)
    assert item is not None and item.entry == other[2]
    assert store.verify().ok


def test_verify_reports_an_id_index_that_disagrees_with_the_entries(store: Store) -> None:
    chain = make_chain(ALICE, 4)
    store.ingest_entries(chain)
    with store.transaction():
        store._fold_ids(force=True)
    store._conn.execute("DELETE FROM entry_ids WHERE id = ?", (chain[1].id,))
    store._conn.execute("INSERT INTO entry_ids (id, entry) VALUES (?, 99)", (b"\x09" * 32,))
    problems = store.verify().problems
    assert any("misses 1 stored entries (rebuilt from the entries)" in p for p in problems)
    assert any("1 rows of no stored entry (rebuilt" in p for p in problems)
    assert store.verify().ok  # derived from the entries: rebuilt in place
    assert (through(store), folded(store)) == (4, 4)
    item = store.get(chain[1].id)
    assert item is not None and item.entry == chain[1]


def test_a_schema_8_store_keeps_its_rows_and_rowids_and_gains_the_id_index(tmp_path: Path) -> None:
    """Migration 9 rebuilds ``entries`` without the id index, rowids and all, and folds every id."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:8]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {number + 1}; COMMIT;")
    chain = make_chain(ALICE, 3) + make_chain(BOB, 2)
    rows = [(e.author, e.seq, e.id, e.timestamp, e.kind, e.body.get("reply_to"), e.raw) for e in chain]
    db.execute("BEGIN")
    for rowid, row in enumerate(rows, start=10):  # rowids a copy by value would renumber
        db.execute(
            "INSERT INTO entries (rowid, author, seq, id, timestamp, kind, reply_to, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rowid, *row),
        )
    for author, seq, last in ((ALICE, 3, chain[2]), (BOB, 2, chain[4])):
        db.execute(
            "INSERT INTO feeds (author, latest_seq, latest_id) VALUES (?, ?, ?)",
            (author.public_key, seq, last.id),
        )
    db.execute("COMMIT")
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        stored = store._conn.execute("SELECT rowid, raw FROM entries ORDER BY rowid").fetchall()
        assert [(r, decode_entry(bytes(raw))) for r, raw in stored] == list(enumerate(chain, start=10))
        assert (through(store), folded(store)) == (14, 5)
        for entry in chain:
            item = store.get(entry.id)
            assert item is not None and item.entry == entry
        more = make_chain(ALICE, 1, start=chain[2])
        assert store.ingest_entries(more).accepted == 1
        assert top(store) == 15 and store.has_entry(more[0].id)
        assert store.verify().ok
        assert [i.entry for i in store.timeline(ALICE.public_key)] == [more[0], *chain[2::-1]]


def test_a_bulk_ingest_folds_once_at_its_last_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ingest_many` commits every `INGEST_BATCH` entries but folds only at its last commit
    (one sorted fold of everything instead of one per commit); its tail stays findable
    meanwhile, and the next ordinary commit folds as usual."""
    monkeypatch.setattr(limits, "INGEST_BATCH", VERIFY_CHUNK)
    monkeypatch.setattr(store_module, "FOLD_IDS_AT", 8)
    path = tmp_path / "store.sqlite3"
    chain = make_chain(ALICE, 8 * VERIFY_CHUNK)
    seen: list[tuple[int, int, bool]] = []
    with Store(path) as store, Store(path) as other:

        def raws() -> Iterator[bytes]:
            for i, entry in enumerate(chain):
                if i == 7 * VERIFY_CHUNK + 10:  # past the read-ahead: batches have committed
                    seen.append((top(other), through(other), other.has_entry(chain[5].id)))
                yield entry.raw

        assert store.ingest_many(raws()).accepted == len(chain)
        assert seen and seen[0][0] >= VERIFY_CHUNK and seen[0][1:] == (0, True)
        assert (through(store), folded(store)) == (len(chain), len(chain))
        store.ingest_entries(make_chain(BOB, 8))  # an ordinary commit folds its tail
        assert through(store) == top(store) == len(chain) + 8
        assert store.verify().ok


def test_a_thread_gathers_replies_from_both_tables_once(store: Store) -> None:
    """Replies stored in feeds and admitted as notices, nested across the two tables, are
    each listed once, also when a notice's feed is later stored as well."""
    parent = make_chain(ALICE, 1)[0]
    store.ingest_entries([parent])
    notice = make_entry(CAROL, 1, None, body=post_body(f"@{ALICE.handle} yes", parent.id))
    assert store.add_loose(notice, notice.timestamp)
    stored = make_entry(BOB, 1, None, body=post_body(f"@{CAROL.handle} and", notice.id))
    store.ingest_entries([stored])
    nested = make_entry(ALICE, 2, parent.id, body=post_body(f"@{BOB.handle} ok", stored.id))
    store.ingest_entries([nested])
    thread = store.thread(parent.id)
    assert thread is not None and [r.entry for r in thread.replies] == [notice, stored, nested]
    store.ingest_entries([notice])  # CAROL's feed replicated after all
    thread = store.thread(parent.id)
    assert thread is not None and [r.entry for r in thread.replies] == [notice, stored, nested]


def test_a_truncated_feed_leaves_the_search_index_and_its_rowids_to_the_next_posts(store: Store) -> None:
    """A revoked device's truncated posts (`device_store._truncate`) leave the search index,
    and posts stored after it in their rowids are indexed and found (they were not: the
    search watermark stayed above them)."""
    alice = make_chain(ALICE, 5, text="zebrafish")
    store.ingest_entries(alice)
    assert len(store.search("zebrafish")) == 5  # indexed up to rowid 5
    with store.transaction():
        store._truncate(ALICE.public_key, 2)
    bob = make_chain(BOB, 3, text="okapi")
    store.ingest_entries(bob)
    assert top(store) == 5  # rowids 3..5 again
    assert sorted(h.item.entry.seq for h in store.search("zebrafish")) == [1, 2]
    found = store.search("okapi")
    assert sorted(h.item.entry.seq for h in found) == [1, 2, 3]
    assert {h.item.entry.id for h in found} == {e.id for e in bob}


# --- two levels (schema 10) ----------------------------------------------------------------


def levels(store: Store) -> tuple[int, int]:
    """(rows of entry_ids, rows of entry_ids_new)."""
    big, small = store._conn.execute(
        "SELECT (SELECT count(*) FROM entry_ids), (SELECT count(*) FROM entry_ids_new)"
    ).fetchone()
    return int(big), int(small)


def small_levels(monkeypatch: pytest.MonkeyPatch, fold: int = 8, merge: int = 16) -> None:
    monkeypatch.setattr(store_module, "FOLD_IDS_AT", fold)
    monkeypatch.setattr(entry_index, "FOLD_IDS_AT", fold)
    monkeypatch.setattr(entry_index, "MERGE_IDS_MIN", merge)


def test_merge_at_grows_as_the_root_of_the_big_level_times_a_fold() -> None:
    assert entry_index.merge_at(0) == entry_index.MERGE_IDS_MIN == 16384
    assert entry_index.merge_at(65_536) == 16384  # sqrt(65,536 * 4,096)
    assert entry_index.merge_at(100_000) == 20238
    assert entry_index.merge_at(1_000_000) == 64000


def test_folds_gather_in_the_small_level_and_move_to_the_big_one_in_a_merge(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_levels(monkeypatch)
    chains = [make_chain(who, 8) for who in (ALICE, BOB, CAROL)]
    store.ingest_entries(chains[0])
    assert levels(store) == (8, 0)  # the first ids: straight into the big level
    store.ingest_entries(chains[1])
    assert levels(store) == (8, 8)  # a fold: the small level
    store.ingest_entries(make_chain(ALICE, 3, start=chains[0][-1]))
    assert levels(store) == (8, 8) and through(store) == 16  # 3 rows: the tail
    for entries in chains[:2]:  # found in either level
        for entry in entries:
            item = store.get(entry.id)
            assert item is not None and item.entry == entry
    assert store.has_entry(store.timeline(ALICE.public_key)[0].entry.id)  # found in the tail
    store.ingest_entries(chains[2])
    assert levels(store) == (27, 0)  # the small level reached 16 + 3 rows: merged
    assert through(store) == top(store) == 27
    for entries in chains:
        assert all(store.has_entry(e.id) for e in entries)
    assert store._conn.execute(f"SELECT {entry_index._NEW_ROWS}").fetchone()[0] == 0
    assert store.verify().ok


def test_a_fold_as_large_as_a_merge_goes_straight_to_the_big_level(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_levels(monkeypatch)
    store.ingest_entries(make_chain(ALICE, 8))
    store.ingest_entries(make_chain(BOB, 8))
    assert levels(store) == (8, 8)
    store.ingest_entries(make_chain(CAROL, 16))  # a batch of merge_at rows
    assert levels(store) == (24, 8)
    assert store.verify().ok


def test_verify_reports_an_id_in_both_levels_and_rebuilds_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_levels(monkeypatch)
    first, second = make_chain(ALICE, 8), make_chain(BOB, 8)
    store.ingest_entries(first)
    store.ingest_entries(second)
    store._conn.execute("INSERT INTO entry_ids (id, entry) VALUES (?, 9)", (second[0].id,))
    store._conn.execute("DELETE FROM entry_ids_new WHERE id = ?", (second[1].id,))
    problems = store.verify().problems
    assert any("misses 1 stored entries (rebuilt" in p for p in problems)
    assert any("1 rows of no stored entry (rebuilt" in p for p in problems)  # in both levels
    assert store.verify().ok
    assert levels(store) == (16, 0)
    assert all(store.has_entry(e.id) for e in first + second)


def test_a_truncated_feed_leaves_the_small_level_too(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    small_levels(monkeypatch)
    store.ingest_entries(make_chain(BOB, 8))
    chain = make_chain(ALICE, 8)
    store.ingest_entries(chain)
    assert levels(store) == (8, 8)
    with store.transaction():
        store._truncate(ALICE.public_key, 3)
    assert levels(store) == (8, 3)
    assert store._conn.execute(f"SELECT {entry_index._NEW_ROWS}").fetchone()[0] == 3
    assert not store.has_entry(chain[3].id) and store.has_entry(chain[2].id)
    assert store.verify().ok


def test_random_ingests_and_truncations_keep_every_entry_findable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever sequence of commits, folds, merges and truncations: every stored entry is
    found by id, no dropped one is, and the index agrees with the entries."""
    import random

    seed = 1830
    rng = random.Random(seed)
    small_levels(monkeypatch, fold=4, merge=8)
    authors = [Identity(bytes([10 + i]) * 32) for i in range(4)]
    heads: dict[bytes, list[Entry]] = {a.public_key: [] for a in authors}
    dropped: list[bytes] = []
    for step in range(60):
        who = rng.choice(authors)
        held = heads[who.public_key]
        if held and rng.random() < 0.15:
            keep = rng.randrange(len(held))
            with store.transaction():
                store._truncate(who.public_key, keep)
            dropped += [e.id for e in held[keep:]]
            del held[keep:]
        else:
            start = held[-1] if held else None
            # (a text of its own: a dropped entry made again would be the same entry)
            new = make_chain(who, rng.randint(1, 7), start=start, text=f"step {step}")
            assert store.ingest_entries(new).accepted == len(new), f"seed {seed}, step {step}"
            held += new
        assert entry_index.disagreements(store._conn) == (0, 0), f"seed {seed}, step {step}"
        for entries in heads.values():
            assert all(store.has_entry(e.id) for e in entries), f"seed {seed}, step {step}"
        assert not any(store.has_entry(i) for i in dropped), f"seed {seed}, step {step}"
    assert levels(store)[0] and store.verify().ok


def test_a_schema_9_store_gains_the_small_level(tmp_path: Path) -> None:
    """Migration 10: the folded ids stay where they are, the tail and the notices too."""
    path = tmp_path / "v9.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:9]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {number + 1}; COMMIT;")
    chain = make_chain(ALICE, 6)
    mention = make_entry(CAROL, 1, None, body=post_body(f"hi @{ALICE.handle}"))
    db.execute("BEGIN")
    for rowid, e in enumerate(chain, start=1):
        db.execute(
            "INSERT INTO entries (rowid, author, seq, id, timestamp, kind, reply_to, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rowid, e.author, e.seq, e.id, e.timestamp, e.kind, None, e.raw),
        )
    db.execute(
        "INSERT INTO feeds (author, latest_seq, latest_id) VALUES (?, 6, ?)", (ALICE.public_key, chain[5].id)
    )
    db.execute("INSERT INTO entry_ids (id, entry) SELECT id, rowid FROM entries WHERE rowid <= 4")
    db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('ids_through', 4)")
    db.execute("COMMIT")
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 10
        assert levels(store) == (4, 0) and through(store) == 4
        assert all(store.has_entry(e.id) for e in chain)
        assert store.add_loose(mention, mention.timestamp)
        store.ingest_entries([mention])
        count = store._conn.execute(
            "SELECT count(*) FROM known_entries WHERE author = ?", (CAROL.public_key,)
        )
        assert count.fetchone()[0] == 1
        assert store.verify().ok
