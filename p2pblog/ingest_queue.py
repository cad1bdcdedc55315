"""`VerifyQueue`: received entries wait here for their signatures, in order.

Theory of operation
-------------------
Checking signatures is most of what ingesting a peer's entries costs, and it
can run on every core (`p2pblog.verify`), but the replicator is a sans-IO
core: it cannot start a thread.  So, like the proof-of-work stamps of
mention notices, verification is an output.  The replicator decodes each
batch a session received (`decode_entry(..., check_signature=False)`: the
cheap checks, on the caller's thread), and queues it here as a `VerifyJob`.
The driver collects `to_verify` (token and entries), checks them off the
event loop (`p2pblog.verify`: worker processes for `p2pblog run`), and reports the result
with ``Replicator.entries_verified(token, forgery, now)``.  The replicator
then stores the verified prefix and acknowledges the batch.

Order: a session's batches must be acknowledged once each, in the order
they arrived, so the jobs of one connection commit in that order (`ready`
hands back a connection's oldest job only once it is done), whatever order the
workers finish in.  Nothing is stored before its job was verified.

Bounds: a session has at most `identity.limits.MAX_BATCHES_IN_FLIGHT`
unacknowledged batches (its window), and a batch is not acknowledged while it
waits here, so a peer cannot queue more than that.  In total, the entries
held here (waiting for a worker, or verified and waiting behind an earlier
batch of their connection) are accounted at `HELD_OVERHEAD` times their
bytes (a decoded `Entry` with its body costs about four times the signed
bytes), and at most `max_bytes` are held: a batch that would pass that is
not kept at all (``skip="busy"``): the replicator acknowledges it unstored
and asks the peer for the feed again a moment later (counted,
``entries.refused_busy``), so nothing is lost and memory stays bounded
however many sessions catch up at once.  Batches too small to be worth a
thread, and every batch when the driver does not verify off the loop
(``offload`` False, as in the simulator), are verified at once on the
caller's thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from gossip.session import EntriesReceived
from p2pblog.entry import Entry
from p2pblog.verify import first_forgery

#: Accounted bytes of entries held at once, all connections (see `HELD_OVERHEAD`).
MAX_QUEUED_BYTES: Final = 64 * 1024 * 1024
#: A held entry is accounted at this many times its signed bytes: the decoded
#: `Entry`, its body and strings (measured: 665 bytes held for a 168-byte entry).
HELD_OVERHEAD: Final = 5
#: Smaller batches (live pushes: usually one entry) are verified at once: handing
#: them to a thread would cost more than the check and delay delivery.
MIN_OFFLOAD: Final = 16


@dataclass(slots=True, eq=False)
class VerifyJob:
    """One received batch: its decoded entries wait for their signatures."""

    token: int
    conn_id: int
    event: EntriesReceived
    #: The entries that decoded and match the batch's header, in order; signatures unchecked.
    entries: tuple[Entry, ...]
    #: Why decoding stopped before the end of the batch (counter name, detail), if it did.
    fault: tuple[str, str] | None = None
    #: Refused before verification (``"blocked"``, ``"unwanted"``, ``"busy"``): nothing held.
    skip: str | None = None
    size: int = 0
    done: bool = False
    #: The index of the first entry whose signature does not verify.
    forgery: int | None = None


class VerifyQueue:
    """Jobs waiting for a worker, per connection in arrival order (see the module docstring)."""

    def __init__(self, *, offload: bool, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        #: Whether the driver verifies off the loop; if not, every job is verified in `add`.
        self.offload = offload
        self.max_bytes = max_bytes
        #: Accounted bytes of the entries held (`HELD_OVERHEAD` times their signed bytes).
        self.queued_bytes = 0
        self.stats = {"verified_inline": 0, "verified_offloaded": 0, "refused_busy": 0}
        self._next = 0
        self._jobs: dict[int, VerifyJob] = {}
        self._outbox: list[VerifyJob] = []
        self._by_conn: dict[int, deque[VerifyJob]] = {}

    def __len__(self) -> int:
        """Jobs not yet committed."""
        return sum(len(q) for q in self._by_conn.values())

    def add(
        self,
        conn_id: int,
        event: EntriesReceived,
        entries: tuple[Entry, ...],
        fault: tuple[str, str] | None,
        skip: str | None = None,
    ) -> VerifyJob:
        """Queue a received batch behind the connection's earlier ones; verify it now
        unless it goes to a worker."""
        self._next += 1
        size = HELD_OVERHEAD * sum(len(e.raw) for e in entries) if skip is None else 0
        if size and self.queued_bytes + size > self.max_bytes:
            skip, entries, fault, size = "busy", (), None, 0
            self.stats["refused_busy"] += 1
        job = VerifyJob(self._next, conn_id, event, entries, fault, skip, size)
        self._by_conn.setdefault(conn_id, deque()).append(job)
        self.queued_bytes += size
        if skip is not None or not entries:
            job.done = True
        elif self.offload and len(entries) >= MIN_OFFLOAD:
            self._jobs[job.token] = job
            self._outbox.append(job)
            self.stats["verified_offloaded"] += 1
        else:
            job.forgery = first_forgery(entries)
            job.done = True
            self.stats["verified_inline"] += 1
        return job

    def to_verify(self) -> list[tuple[int, tuple[Entry, ...]]]:
        """``(token, entries)`` for the driver to verify (`p2pblog.verify.first_forgery`)."""
        out = [(job.token, job.entries) for job in self._outbox]
        self._outbox.clear()
        return out

    def verified(self, token: int, forgery: int | None) -> int | None:
        """Record a worker's result; return the job's connection id (None: an unknown token)."""
        job = self._jobs.pop(token, None)
        if job is None:
            return None
        if forgery is not None and not 0 <= forgery < len(job.entries):
            raise ValueError(f"forgery index {forgery} is outside the batch of {len(job.entries)}")
        job.forgery = forgery
        job.done = True
        return job.conn_id

    def next_ready(self, conn_id: int) -> VerifyJob | None:
        """Pop the connection's oldest job if it is done (one at a time: the caller
        commits it before it asks for the next)."""
        queue = self._by_conn.get(conn_id)
        if not queue or not queue[0].done:
            return None
        job = queue.popleft()
        if not queue:
            del self._by_conn[conn_id]
        self.queued_bytes -= job.size
        return job

    def drop(self, conn_id: int) -> None:
        """Forget a closed connection's done jobs (its undone ones go when their results come)."""
        while self.next_ready(conn_id) is not None:
            pass

    def pending(self, conn_id: int) -> bool:
        """Whether any job of the connection waits (a new batch must queue behind it)."""
        return conn_id in self._by_conn
