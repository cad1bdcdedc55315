"""Received entries' signatures checked off the event loop (`p2pblog.ingest_queue`).

The replicator hands batches to its driver (`verifications_to_make`) and stores
them when the driver reports (`entries_verified`).  These tests play the driver
by hand over the in-memory wire of `tests.test_replication` (real SQLite
stores), reporting out of order, with forgeries, after a connection closed;
and once over the trio runtime with real worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gossip.messages import Clock, Entries
from p2pblog.entry import Entry
from p2pblog.ingest_queue import MAX_QUEUED_BYTES, MIN_OFFLOAD
from p2pblog.replication import BUSY_RETRY, MAINTAIN_EVERY, EntriesStored, Replicator
from p2pblog.runtime import VERIFY_IDLE
from p2pblog.store import Store
from p2pblog.verify import first_forgery
from tests.gossip.wire import Wire
from tests.test_replication import (
    HOST,
    A,
    B,
    M,
    OpenStore,
    a_chain,
    candidate,
    connect_attacker,
    follow,
    holding,
    ids,
    make_replicator,
)
from tests.test_runtime import Node, join, running
from tests.test_runtime import run as run_trio


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[OpenStore]:
    opened: list[Store] = []

    def open_(name: str) -> Store:
        opened.append(Store(tmp_path / f"{name}.db"))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def tamper(raw: bytes) -> bytes:
    """raw with one signature byte flipped."""
    return raw[:5] + bytes([raw[5] ^ 1]) + raw[6:]


def offloading_follower(open_store: OpenStore, wire: Wire) -> Replicator:
    b_store = open_store("b")
    follow(b_store, B, A.public_key)
    b = make_replicator(B, b_store, seed=2)
    b.offload_verification()
    wire.add("b", b, HOST["b"])
    return b


def test_batches_are_stored_only_once_verified_and_in_arrival_order(open_store: OpenStore) -> None:
    feed = a_chain(1600)  # four batches of at most 500 entries: the whole window
    wire = Wire()
    a = make_replicator(A, holding(open_store("a"), feed), seed=1)
    wire.add("a", a, HOST["a"])
    b = offloading_follower(open_store, wire)
    b.add_candidates(A.public_key, candidate(wire, "a", A), wire.now)
    wire.settle()

    jobs = b.verifications_to_make()
    assert [len(entries) for _, entries in jobs] == [500, 500, 500, 100]
    assert b.store.latest_seq(A.public_key) == 0  # received, not yet verified: nothing stored
    assert b.verifications_to_make() == []  # each job is handed out once

    # Workers finish in any order; the batches are stored in the order they came.
    for token, entries in reversed(jobs[1:]):
        b.entries_verified(token, first_forgery(entries), wire.now)
        wire.settle()
        assert b.store.latest_seq(A.public_key) == 0
    token, entries = jobs[0]
    b.entries_verified(token, first_forgery(entries), wire.now)
    wire.settle()
    assert ids(b.store, A.public_key) == [e.id for e in feed]
    assert b.store.verify().ok
    stored = [e for e in wire.events["b"] if isinstance(e, EntriesStored)]
    assert [e.latest for e in stored] == [500, 1000, 1500, 1600]
    assert b.verify.stats["verified_offloaded"] == 4 and len(b.verify) == 0
    assert b.verify.queued_bytes == 0


def test_a_forgery_found_by_a_worker_keeps_the_prefix_and_blames_the_sender(open_store: OpenStore) -> None:
    genuine = a_chain(2 * MIN_OFFLOAD + 8)
    first = [e.raw for e in genuine[: MIN_OFFLOAD + 4]]
    first[7] = tamper(first[7])
    wire, b, m, conn = connect_attacker(open_store)
    b.offload_verification()
    m.send(conn, Entries(A.public_key, 1, tuple(first)), wire.now)
    rest = tuple(e.raw for e in genuine[MIN_OFFLOAD + 4 :])
    m.send(conn, Entries(A.public_key, MIN_OFFLOAD + 5, rest), wire.now)
    wire.settle()
    jobs = b.verifications_to_make()
    assert len(jobs) == 2 and b.store.latest_seq(A.public_key) == 0
    results = [(token, first_forgery(entries)) for token, entries in jobs]
    assert [forgery for _, forgery in results] == [7, None]  # the worker's real check
    for token, forgery in reversed(results):
        b.entries_verified(token, forgery, wire.now)
        wire.settle()
    # Seq 1..7 are stored; nothing at or past the forgery (the second batch no longer follows).
    assert ids(b.store, A.public_key) == [e.id for e in genuine[:7]]
    assert b.stats["entries.forged"] == 1 and b.stats["entries.received"] == 7
    assert b.store.verify().ok


def test_results_for_a_closed_connection_store_nothing_and_leave_nothing_queued(
    open_store: OpenStore,
) -> None:
    genuine = a_chain(MIN_OFFLOAD * 2)
    wire, b, m, conn = connect_attacker(open_store)
    b.offload_verification()
    m.send(conn, Entries(A.public_key, 1, tuple(e.raw for e in genuine)), wire.now)
    wire.settle()
    [(token, entries)] = b.verifications_to_make()
    wire.crash("m")
    wire.settle()
    assert b.connection_count == 0
    b.entries_verified(token, first_forgery(entries), wire.now)
    b.entries_verified(token, None, wire.now)  # a token reported twice is ignored
    wire.settle()
    assert b.store.latest_seq(A.public_key) == 0  # never acknowledged: it comes again
    assert len(b.verify) == 0 and b.verify.queued_bytes == 0


def test_small_batches_are_checked_at_once_and_past_the_bound_a_batch_is_asked_again(
    open_store: OpenStore,
) -> None:
    genuine = a_chain(MIN_OFFLOAD * 4)
    wire, b, m, conn = connect_attacker(open_store)
    b.offload_verification()
    # A live push of a few entries is checked at once: a thread would cost more.
    small = tuple(e.raw for e in genuine[: MIN_OFFLOAD - 1])
    m.send(conn, Entries(A.public_key, 1, small), wire.now)
    wire.settle()
    assert b.verifications_to_make() == []
    assert b.store.latest_seq(A.public_key) == MIN_OFFLOAD - 1
    # With the held entries at their bound, a batch is not kept: it is acknowledged
    # unstored, counted, not blamed on the peer, and the feed is asked for again.
    b.verify.max_bytes = 0
    rest = tuple(e.raw for e in genuine[MIN_OFFLOAD - 1 :])
    m.send(conn, Entries(A.public_key, MIN_OFFLOAD, rest), wire.now)
    wire.settle()
    assert b.verifications_to_make() == [] and len(b.verify) == 0 and b.verify.queued_bytes == 0
    assert b.store.latest_seq(A.public_key) == MIN_OFFLOAD - 1
    assert b.stats["entries.refused_busy"] == len(rest) and b.verify.stats["refused_busy"] == 1
    assert b.is_connected(M.public_key) and not [k for k in b.stats if k.startswith("misbehaved")]
    clocks = len([msg for msg in m.received[conn] if isinstance(msg, Clock)])
    b.verify.max_bytes = MAX_QUEUED_BYTES
    wire.advance(BUSY_RETRY + MAINTAIN_EVERY)
    assert len([msg for msg in m.received[conn] if isinstance(msg, Clock)]) > clocks  # asked again
    m.send(conn, Entries(A.public_key, MIN_OFFLOAD, rest), wire.now)
    wire.settle()
    [(token, entries)] = b.verifications_to_make()
    b.entries_verified(token, first_forgery(entries), wire.now)
    wire.settle()
    assert ids(b.store, A.public_key) == [e.id for e in genuine]


async def catch_up(a: Node, b: Node, feed: tuple[Entry, ...]) -> None:
    """a holds A's feed (as a follower that serves it); b follows A and catches up from a."""
    await join(a, b)
    a.store.ingest_many(e.raw for e in feed)
    a.command(lambda now: a.core.follow(A.public_key, now))
    b.command(lambda now: b.core.follow(A.public_key, now))
    tcp = (a.key, *a.driver.gossip_addr)
    b.command(lambda now: b.core.replicator.add_candidates(A.public_key, [tcp], now))
    await b.core.wait_until(lambda: b.store.latest_seq(A.public_key) == len(feed))


@pytest.mark.parametrize("verify_processes", [False, True], ids=["threads", "processes"])
def test_a_catch_up_over_the_runtime_verifies_off_the_event_loop(
    tmp_path: Path, verify_processes: bool
) -> None:
    feed = a_chain(1200)

    async def main() -> None:
        async with running(tmp_path, 2, verify_processes=verify_processes) as (_net, (a, b)):
            await catch_up(a, b, feed)
            assert b.core.replicator.verify.stats["verified_offloaded"] >= 2
            assert not b.driver.internal_errors
            assert b.driver.verify_in == ("processes" if verify_processes else "threads")
            assert not [k for k in b.driver.stats if k.startswith("verify_process_error")]
            if verify_processes:
                # A settled node holds no verifier processes: they are retired when idle.
                processes = b.driver._verify_processes
                assert processes is not None and processes._executor is not None
                await trio.sleep(3 * VERIFY_IDLE)
                # The pool is dropped at once, its processes joined in a thread: under load the
                # count comes when the join is done (waited for in real time, at most 10 s).
                for _ in range(200):
                    if b.driver.stats["verify_processes_retired"]:
                        break
                    await trio.to_thread.run_sync(time.sleep, 0.05)
                assert processes._executor is None
                assert b.driver.stats["verify_processes_retired"] == 1
            assert ids(b.store, A.public_key) == [e.id for e in feed]

    run_trio(main)


def test_a_killed_verifier_process_costs_one_batch_a_thread_and_nothing_else(tmp_path: Path) -> None:
    feed = a_chain(1200)

    async def main() -> None:
        async with running(tmp_path, 2, verify_processes=True) as (_net, (a, b)):
            processes = b.driver._verify_processes
            assert processes is not None
            # Start the workers, then kill them (as the OOM killer or a user might).
            assert processes.submit(a_chain(1)).result() is None
            executor = processes._executor
            assert executor is not None
            for worker in list(executor._processes.values()):  # type: ignore[attr-defined]
                worker.kill()
                worker.join()
            await catch_up(a, b, feed)
            assert ids(b.store, A.public_key) == [e.id for e in feed]
            assert b.driver.stats["verify_process_error.BrokenProcessPool"] >= 1
            assert not b.driver.internal_errors

    run_trio(main)
