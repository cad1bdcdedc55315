"""Bulk ingest with signatures verified on worker threads: bounded, ordered, nothing
stored before it is verified (`Store.ingest_many`, `p2pblog.verify.verify_in_order`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from identity import Identity, keys, limits
from p2pblog.entry import DELETE, FOLLOW, UNFOLLOW, Entry, decode_entry, post_body
from p2pblog.errors import (
    ChainError,
    EntryDecodeError,
    EntryError,
    EntrySignatureError,
    FeedForkedError,
    StoreError,
)
from p2pblog.store import VERIFY_CHUNK, Store
from p2pblog.verify import VerifyPool, verify_in_order
from tests.feeds import make_chain, make_entry

ALICE = Identity(bytes([2]) * 32)
BOB = Identity(bytes([3]) * 32)
#: Long enough for many chunks and two write transactions.
LONG = 6 * VERIFY_CHUNK + 17


@pytest.fixture(scope="module")
def long_chain() -> list[Entry]:
    return make_chain(ALICE, LONG)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}-workers")
def pool(request: pytest.FixtureRequest) -> Iterator[VerifyPool]:
    with VerifyPool(request.param) as p:
        yield p


@pytest.fixture
def store(tmp_path: Path, pool: VerifyPool) -> Iterator[Store]:
    with Store(tmp_path / "store.sqlite3", verify_pool=pool) as s:
        yield s


def forged(raw: bytes) -> bytes:
    """raw with one byte of its signature flipped: it still decodes, but does not verify."""
    return raw[:10] + bytes([raw[10] ^ 0xFF]) + raw[11:]


@pytest.mark.parametrize("where", [0, 1, VERIFY_CHUNK - 1, VERIFY_CHUNK, 3 * VERIFY_CHUNK + 5, LONG - 1])
def test_a_forgery_in_a_long_ingest_stores_exactly_the_prefix(
    store: Store, long_chain: list[Entry], where: int
) -> None:
    raws = [e.raw for e in long_chain]
    raws[where] = forged(raws[where])
    report = store.ingest_many(raws)
    assert (report.accepted, report.refused, report.error_index) == (where, LONG - where, where)
    assert isinstance(report.error, EntrySignatureError)
    assert store.latest_seq(ALICE.public_key) == where
    assert store.get(long_chain[where].id) is None
    assert store.verify().ok
    # The rest comes in once the forgery is replaced by the real entry.
    again = store.ingest_many(e.raw for e in long_chain)
    assert (again.accepted, again.duplicates, again.error) == (LONG - where, where, None)


def test_order_is_kept_across_chunks_and_feeds(store: Store) -> None:
    alice, bob = make_chain(ALICE, 2 * VERIFY_CHUNK + 3), make_chain(BOB, 2 * VERIFY_CHUNK + 3)
    interleaved = [e.raw for pair in zip(alice, bob, strict=True) for e in pair]
    report = store.ingest_many(interleaved)
    assert (report.accepted, report.error) == (len(interleaved), None)
    assert [e.id for e in store.feed_range(ALICE.public_key, 1)] == [e.id for e in alice]
    assert [e.id for e in store.feed_range(BOB.public_key, 1)] == [e.id for e in bob]
    assert store.verify().ok
    # Reversed, every entry but the first of each feed leaves a gap: refused at once.
    with Store(store.path.with_name("other.sqlite3"), verify_pool=None) as other:
        backwards = other.ingest_many(reversed(interleaved))
        assert (backwards.accepted, backwards.refused, backwards.error_index) == (0, len(interleaved), 0)
        assert isinstance(backwards.error, ChainError)


def test_the_first_refusal_in_stream_order_is_reported(store: Store, long_chain: list[Entry]) -> None:
    raws = [e.raw for e in long_chain]
    # A chain error (a duplicate seq 1 would be a duplicate, so: a gap) before a forgery
    # in the same chunk, and a decode error after both.
    gap = 2 * VERIFY_CHUNK + 10
    del raws[gap]
    raws[gap + 3] = forged(raws[gap + 3])
    raws[gap + 5] = b"\x00" * 80
    report = store.ingest_many(raws)
    assert isinstance(report.error, ChainError)
    assert (report.accepted, report.refused, report.error_index) == (gap, len(raws) - gap, gap)
    assert store.latest_seq(ALICE.public_key) == gap


def test_a_decode_error_after_many_chunks_keeps_everything_before_it(
    store: Store, long_chain: list[Entry]
) -> None:
    raws = [e.raw for e in long_chain]
    cut = 4 * VERIFY_CHUNK + 1
    raws[cut] = raws[cut][:-3]
    report = store.ingest_many(raws)
    assert isinstance(report.error, EntryDecodeError)
    assert (report.accepted, report.refused, report.error_index) == (cut, LONG - cut, cut)
    assert store.latest_seq(ALICE.public_key) == cut


def test_the_input_is_read_a_bounded_way_ahead_of_the_store(
    store: Store, pool: VerifyPool, long_chain: list[Entry]
) -> None:
    furthest = 0

    def raws() -> Iterator[bytes]:
        nonlocal furthest
        for i, entry in enumerate(long_chain):
            # Inside the write transaction latest_seq counts what was handed to the store.
            furthest = max(furthest, i - store.latest_seq(ALICE.public_key))
            yield entry.raw

    report = store.ingest_many(raws())
    assert (report.accepted, report.error) == (LONG, None)
    in_flight = 2 * pool.workers if pool.workers > 1 else 1
    assert VERIFY_CHUNK - 1 <= furthest <= (in_flight + 1) * VERIFY_CHUNK


def test_verify_in_order_takes_at_most_ahead_chunks_and_cancels_the_rest(long_chain: list[Entry]) -> None:
    chunks = [long_chain[i : i + 10] for i in range(0, 200, 10)]
    chunks[7][3] = decode_entry(forged(chunks[7][3].raw), check_signature=False)
    taken = 0

    def source() -> Iterator[list[Entry]]:
        nonlocal taken
        for chunk in chunks:
            taken += 1
            yield chunk

    with VerifyPool(2) as pool:
        seen = []
        stream = verify_in_order(source(), pool, ahead=3)
        for i, (chunk, verdict) in enumerate(stream):
            assert chunk is chunks[i]
            assert taken <= i + 3
            seen.append(verdict)
            if verdict is not None:
                break
        stream.close()
    assert seen == [None] * 7 + [3]
    assert taken <= 10


def test_one_chunk_verifies_inline_through_the_cache_and_bulk_skips_it(
    tmp_path: Path, long_chain: list[Entry]
) -> None:
    keys.set_verify_cache_size(0)
    keys.set_verify_cache_size(4096)
    with VerifyPool(2) as pool, Store(tmp_path / "s.sqlite3", verify_pool=pool) as store:
        store.ingest_many(e.raw for e in long_chain[:10])
        assert len(keys._verified) == 10
        store.ingest_many(e.raw for e in long_chain[10:])
        assert len(keys._verified) == 10
        assert store.latest_seq(ALICE.public_key) == LONG


def test_a_store_starts_and_closes_its_own_pool(tmp_path: Path, long_chain: list[Entry]) -> None:
    store = Store(tmp_path / "s.sqlite3")
    report = store.ingest_many(e.raw for e in long_chain)
    assert (report.accepted, report.error) == (LONG, None)
    store.close()
    assert store._pool is None


def test_ingest_entries_inside_one_outer_transaction(tmp_path: Path) -> None:
    """The replicator's group commit: many ingest_entries calls, one commit."""
    chain = make_chain(ALICE, 30)
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        with store.transaction():
            for i in range(0, 30, 3):
                report = store.ingest_entries(chain[i : i + 3])
                assert (report.accepted, report.error) == (3, None)
            assert store.latest_seq(ALICE.public_key) == 30
            report = store.ingest_entries(chain[28:])
            assert (report.accepted, report.duplicates) == (0, 2)
        assert store.verify().ok
    with Store(path) as store:
        assert store.latest_seq(ALICE.public_key) == 30


def test_a_batch_failed_half_written_does_not_commit(tmp_path: Path) -> None:
    """An SQLite error inside a batch that joined the caller's transaction: even if the
    caller catches it, the transaction rolls back instead of committing half a batch."""
    chain = make_chain(ALICE, 30)
    with Store(tmp_path / "s.sqlite3") as store:
        with pytest.raises(StoreError, match="half-written"), store.transaction():
            assert store.ingest_entries(chain[:20]).accepted == 20
            # A row in the way of entry 23 (its author and seq, another id) that the
            # cached feed head does not know of: SQLite refuses the batch's INSERT.
            row = (ALICE.public_key, 23, b"\x01" * 32, 0, "post", None, b"x")
            store._db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            with pytest.raises(sqlite3.IntegrityError):
                store.ingest_entries(chain[20:25])
        assert store.clock() == {}
        assert store.ingest_many(e.raw for e in chain).accepted == 30
        assert store.verify().ok


def test_a_batch_is_one_transaction(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path commits every `limits.INGEST_BATCH` entries; what a failure rolls
    back is only the transaction it happened in."""
    monkeypatch.setattr(limits, "INGEST_BATCH", VERIFY_CHUNK)
    chain = make_chain(ALICE, 3 * VERIFY_CHUNK)
    report = store.ingest_many(e.raw for e in chain)
    assert (report.accepted, report.error) == (3 * VERIFY_CHUNK, None)
    assert store.verify().ok


def test_a_mixed_batch_ends_as_one_by_one_ingests_do(tmp_path: Path) -> None:
    """Runs of several feeds, a duplicate, a fork, follows, a delete, then a refusal: the
    batched write path leaves the same store as `Store.ingest` of one entry at a time
    up to the first refusal."""
    a = make_chain(ALICE, 4)
    follow = make_entry(ALICE, 5, a[3].id, FOLLOW, {"feed": BOB.public_key})
    delete = make_entry(ALICE, 6, follow.id, DELETE, {"target": a[0].id})
    unfollow = make_entry(ALICE, 7, delete.id, UNFOLLOW, {"feed": BOB.public_key})
    b = make_chain(BOB, 3)
    rival = make_entry(BOB, 2, b[0].id, body=post_body("the other branch"))
    order = [a[0], a[1], b[0], a[2], a[1], a[3], follow, b[1], delete, rival, unfollow, b[2]]
    order += make_chain(ALICE, 2, start=unfollow)  # refused: after the first refusal
    bulk = Store(tmp_path / "bulk.sqlite3")
    single = Store(tmp_path / "single.sqlite3")
    report = bulk.ingest_entries(order)
    for entry in order:
        try:
            single.ingest(entry.raw)
        except EntryError:
            break
    assert (report.accepted, report.duplicates, report.forks, report.refused) == (9, 1, 1, 3)
    assert isinstance(report.error, FeedForkedError)  # Bob's seq 3, after the fork
    assert bulk.feed_state(BOB.public_key).forked_seq == 2
    assert bulk.feeds() == single.feeds()
    for key in (ALICE.public_key, BOB.public_key):
        assert bulk.feed(key) == single.feed(key)
        assert bulk.following(key) == single.following(key)
        assert bulk.fork_proofs(key) == single.fork_proofs(key)
    assert bulk.following(ALICE.public_key) == set()
    assert bulk.feed(ALICE.public_key)[-1].deleted
    assert bulk.verify().problems == single.verify().problems
    bulk.close()
    single.close()


def _cache_size(store: Store) -> int:
    return int(store._conn.execute("PRAGMA cache_size").fetchone()[0])


def test_a_bulk_ingest_writes_with_the_larger_page_cache_and_gives_it_back(store: Store) -> None:
    """While a bulk input is written the page cache is `limits.BULK_CACHE_KIB`; after it,
    whether it ended well, at a forgery or with an exception, it is what it was."""
    before = _cache_size(store)
    assert before != -limits.BULK_CACHE_KIB
    chain = make_chain(ALICE, 3 * VERIFY_CHUNK)
    seen: list[int] = []

    def raws(stop: Exception | None = None) -> Iterator[bytes]:
        for i, entry in enumerate(chain):
            if i == 2 * VERIFY_CHUNK:
                seen.append(_cache_size(store))
                if stop is not None:
                    raise stop
            yield entry.raw

    assert store.ingest_many(raws()).accepted == len(chain)
    assert seen == [-limits.BULK_CACHE_KIB]
    assert _cache_size(store) == before

    with pytest.raises(OSError, match="the disk went away"):
        store.ingest_many(raws(OSError("the disk went away")))
    assert seen[1:] == [-limits.BULK_CACHE_KIB]
    assert _cache_size(store) == before

    bob = [e.raw for e in make_chain(BOB, 3 * VERIFY_CHUNK)]
    bob[2 * VERIFY_CHUNK + 1] = forged(bob[2 * VERIFY_CHUNK + 1])
    report = store.ingest_many(bob)
    assert (report.accepted, report.error_index) == (2 * VERIFY_CHUNK + 1, 2 * VERIFY_CHUNK + 1)
    assert _cache_size(store) == before


def test_a_few_entries_leave_the_page_cache_alone(store: Store) -> None:
    """A short list (a gossip batch) takes the inline path: no cache resize for it."""
    before = _cache_size(store)
    chain = make_chain(ALICE, 3)
    seen: list[int] = []

    def raws() -> Iterator[bytes]:
        for entry in chain:
            seen.append(_cache_size(store))
            yield entry.raw

    assert store.ingest_many(raws()).accepted == 3
    assert seen == [before] * 3
    assert _cache_size(store) == before
