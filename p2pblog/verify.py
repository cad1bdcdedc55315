"""Entry signatures checked on every core, off the event loop.

Theory of operation
-------------------
Verifying an Ed25519 signature is most of what ingesting an entry costs
(55-61 µs of 80-86 µs on the reference machine), and signatures are
independent of each other, so they are the part that can run in parallel.
PyNaCl calls libsodium through cffi, which releases the GIL for the length
of the call, so plain threads verify on every core (measured: two threads
verify 1.9x as fast as one on two cores).  Everything else about an entry
(decoding, the chain check, the store) stays on the caller's thread, in
order.

`first_forgery` is the unit of work: it takes entries that were decoded
without their signature checked (``decode_entry(raw, check_signature=False)``)
and returns the index of the first whose signature does not verify.  It is
thread-safe.  `VerifyPool` runs it on worker threads.  Nothing may be stored
before its batch came back verified: callers commit only the prefix before
the first forgery.

`VerifyProcesses` runs `first_forgery_raw` in worker processes instead: the
node's runtime uses it for received entries, because its event loop is busy
with Python work (decrypting, decoding, storing) and worker threads would
have to win the GIL back from it after every signature.

`verify_in_order` is the pipeline the store's bulk ingest runs on: the caller
hands it chunks of decoded entries (decoding them lazily, on its own thread),
it keeps a bounded number of chunks on the workers, and hands each chunk back
with its verdict in the order the chunks came in.  The bound is the
back-pressure: the chunk source is read at most ``ahead`` chunks past the one
the caller is storing, so a huge import stream never sits in memory, and the
workers are busy while the caller stores.  Bulk verification skips the cache
of successes in `identity.keys` (``cache=False``): each entry of an import is
seen once, so caching it is pure cost, would evict what the cache holds for the
DHT and the simulator, and would let a repeated benchmark skip work.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

from identity import SignatureError, verify
from p2pblog.entry import Entry


def first_forgery(entries: Sequence[Entry], *, cache: bool = True) -> int | None:
    """Index of the first entry whose signature does not verify, or None if all do.
    ``cache=False`` neither reads nor fills the cache of successes (bulk paths)."""
    return first_forgery_raw(((e.author, e.raw) for e in entries), cache=cache)


def first_forgery_raw(pairs: Iterable[tuple[bytes, bytes]], *, cache: bool = False) -> int | None:
    """`first_forgery` over ``(author, signed bytes)`` pairs: what a worker process is sent."""
    for i, (author, raw) in enumerate(pairs):
        try:
            verify(author, raw, cache=cache)
        except SignatureError:
            return i
    return None


def default_workers() -> int:
    """Verifier threads: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class VerifyPool:
    """Worker threads that run `first_forgery` on batches of entries."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="p2pblog-verify")

    def submit(self, entries: Sequence[Entry]) -> Future[int | None]:
        return self._executor.submit(first_forgery, entries)

    def submit_chunk(self, entries: Sequence[Entry], *, cache: bool) -> Future[int | None]:
        """`verify_in_order`'s unit of work: `first_forgery`, through the cache or not."""
        return self._executor.submit(first_forgery, entries, cache=cache)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> VerifyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The caller's chunk type (any sequence of entries): each chunk is handed back as it came.
_Chunk = TypeVar("_Chunk", bound=Sequence[Entry])


def verify_in_order(
    chunks: Iterable[_Chunk],
    pool: VerifyPool | VerifyProcesses | None,
    *,
    ahead: int | None = None,
    cache: bool = False,
) -> Generator[tuple[_Chunk, int | None], None, None]:
    """Verify chunks of entries on pool's workers; yield ``(chunk, first_forgery)`` in order.

    At most ``ahead`` chunks (default: two per worker) are taken from chunks
    and not yet handed back, so the source is never read further ahead than
    that.  Without a pool (or with one worker) each chunk is verified inline
    when it is taken: the pipeline then costs nothing over a plain loop.
    ``cache`` says whether verification reads and fills the process-wide cache
    of successes (`identity.keys.verify`).  Closing the iterator early (the
    caller met a forgery and stops) cancels the chunks not yet started.
    """
    if pool is None or pool.workers < 2:
        for chunk in chunks:
            yield chunk, first_forgery(chunk, cache=cache)
        return
    window = max(1, ahead if ahead is not None else 2 * pool.workers)
    pending: deque[tuple[_Chunk, Future[int | None]]] = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit_chunk(chunk, cache=cache)))
            if len(pending) >= window:
                done, verdict = pending.popleft()
                yield done, verdict.result()
        while pending:
            done, verdict = pending.popleft()
            yield done, verdict.result()
    finally:
        for _, verdict in pending:
            verdict.cancel()


def _exit_with(pid: int) -> None:
    """A verifier process's initializer: exit as soon as the node process is gone, however
    it ended.  A pool's worker holds both ends of its own task pipe, so it never sees the
    node die: after a ``kill -9`` of the node, it would stay forever.

    It ignores SIGINT: a Ctrl-C in a terminal goes to the whole process group, and the
    node stops its workers itself (a worker's own KeyboardInterrupt would only print a
    traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3: poll
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(0)
                except PermissionError:
                    pass
        select.select([fd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="p2pblog-verify-watch", daemon=True).start()


class VerifyProcesses:
    """Worker processes that run `first_forgery_raw` (one per core), for a process whose
    own thread is busy: the node's event loop decrypts, decodes and stores while entries
    are checked.  Threads would have to win the GIL back from that loop after every
    signature (each libsodium call releases and re-takes it); processes never do
    (measured: catch-up 1.11-1.23x one core's raw verify with processes, 0.97-1.03x
    with threads, alternating runs).

    Started on first use with ``spawn`` (never ``fork`` in the node: it runs threads;
    and not ``forkserver``, whose server process would stay after the workers are
    retired), or with ``fork`` by a process that has no other thread yet
    (`p2pblog import`).  A spawned worker imports this module and, as every spawned
    child does, the main script's imports (for ``p2pblog``: `cli.main`, not the
    node).  A batch is sent as ``(author, signed bytes)`` pairs.  `close` retires
    the workers; the next `submit` starts new ones (the runtime retires them when
    idle, so a settled node holds no verifier processes).
    """

    def __init__(self, workers: int | None = None, *, start: str = "spawn") -> None:
        self.workers = workers or default_workers()
        #: ``spawn``; ``fork`` only in a process with no other thread yet (`p2pblog import`).
        self.start = start
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, entries: Sequence[Entry]) -> Future[int | None]:
        if self._executor is None:
            context = multiprocessing.get_context(self.start)
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
            )
        future = self._executor.submit(first_forgery_raw, [(e.author, e.raw) for e in entries])
        future._p2pblog_pool = self._executor  # type: ignore[attr-defined]  # for `reset`
        return future

    def submit_chunk(self, entries: Sequence[Entry], *, cache: bool) -> Future[int | None]:
        """`verify_in_order`'s unit of work (a worker process has no cache worth filling)."""
        del cache
        return self.submit(entries)

    def reset(self, future: Future[int | None]) -> None:
        """Drop the pool that failed ``future`` (a worker died); the next `submit` starts a
        new one.  A failure of an earlier pool, reported late, leaves the new one alone."""
        executor = self._executor
        failed: object = getattr(future, "_p2pblog_pool", None)
        if executor is not None and failed is executor:
            self._executor = None
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
