"""`RpcTracker`: our outstanding requests, their message ids, retransmits and timeouts.

Theory of operation
-------------------
Every request the core sends is one `Rpc`, kept here under its 20-byte
message id until it ends.  It ends in exactly one of two ways:

* an answer: the core finds the RPC by the answer's message id (`get`),
  checks the address, and `close`s it;
* a timeout: `pop_due` hands it back with `Rpc.timed_out` set, already
  forgotten.

rpcudp sends each request once and gives up after 5 s; we keep that budget
(``timeout``) but send the same datagram again (same message id, so any copy
of the answer matches) at the offsets in ``retransmit_after`` after the first
send, because a lookup that loses one datagram to a near peer would otherwise
miss that peer and return a wrong k-closest set.  So an RPC walks::

    sent --retransmit_after[0]--> resent --...--> resent --timeout--> timed out
      \\______________________ answer (any time) ______________________/

Deadlines live in one heap of ``(deadline, seq, msg_id)``; ``seq`` breaks
ties in the order the deadlines were set, so a seed replays the same order.
An entry whose RPC was answered or rescheduled is stale and skipped lazily
(`next_deadline`, `pop_due`), so answering costs no heap surgery.

Message ids are drawn from the injected ``random.Random`` (one
``randbytes(20)`` per id, drawn again on the rare clash with an outstanding
one).  The tracker does not decide what an RPC is *for*: `Rpc.purpose` and
`Rpc.query_id` carry that back to the core, which routes outcomes to the
routing table and the query (`dht.queries`).
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from random import Random

from dht import wire
from dht.ids import Address


class Purpose(enum.Enum):
    """What an RPC is for, i.e. where its outcome goes besides the routing table."""

    #: One step of a query's walk (FIND_NODE, FIND_VALUE, ``p2pb_get_providers``).
    LOOKUP_STEP = "lookup step"
    #: A bootstrap's ping of a seed address.
    SEED_PING = "seed ping"
    #: A put's STORE or an announcement's ``p2pb_add_provider`` at one of the k closest.
    PUT_STORE = "put store"
    #: Ping-before-evict of a bucket's least-recently seen contact (paper 2.2).
    CHECK = "liveness check"
    #: Fire-and-forget STORE (caching after a get, records offered to a newcomer).
    CACHE_STORE = "cache store"
    #: Ping of a stranger that sent us a request: it enters the table only if
    #: it answers from that address with that id (`dht.core`, "Strangers").
    VERIFY = "verification"


@dataclass(slots=True)
class Rpc:
    """One request in flight."""

    msg_id: bytes
    name: str
    addr: Address
    #: The id we expect to answer (None for a ping to a bare address).
    node_id: bytes | None
    purpose: Purpose
    query_id: int | None
    datagram: bytes
    sent_at: float
    #: Index into the retransmit schedule of the pending deadline.
    step: int
    deadline: float
    #: Set by `RpcTracker.pop_due` when the final deadline passed unanswered.
    timed_out: bool = False


class RpcTracker:
    """Outstanding requests by message id, with their retransmit and timeout schedule."""

    __slots__ = ("_heap", "_rng", "_rpcs", "_seq", "retransmit_after", "timeout")

    def __init__(self, rng: Random, retransmit_after: tuple[float, ...], timeout: float) -> None:
        self._rng = rng
        self.retransmit_after = retransmit_after
        self.timeout = timeout
        self._rpcs: dict[bytes, Rpc] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._rpcs)

    def new_msg_id(self) -> bytes:
        """A fresh message id, not used by any outstanding RPC (one RNG draw, rarely more)."""
        while True:
            msg_id = self._rng.randbytes(wire.MSG_ID_BYTES)
            if msg_id not in self._rpcs:
                return msg_id

    def track(
        self,
        request: wire.Request,
        addr: Address,
        node_id: bytes | None,
        purpose: Purpose,
        query_id: int | None,
        now: float,
    ) -> Rpc:
        """Encode ``request`` and track it from ``now``; the caller sends `Rpc.datagram` to ``addr``."""
        offsets = self.retransmit_after
        rpc = Rpc(
            request.msg_id,
            wire.request_name(request),
            addr,
            node_id,
            purpose,
            query_id,
            wire.encode_request(request),
            now,
            0,
            now + (offsets[0] if offsets else self.timeout),
        )
        self._rpcs[rpc.msg_id] = rpc
        self._push(rpc)
        return rpc

    def get(self, msg_id: bytes) -> Rpc | None:
        """The outstanding RPC with ``msg_id``, or None (late, duplicated or never asked)."""
        return self._rpcs.get(msg_id)

    def close(self, rpc: Rpc) -> None:
        """``rpc`` was answered: forget it (its heap entry goes stale)."""
        del self._rpcs[rpc.msg_id]
        self._shrink()

    def _shrink(self) -> None:
        # A dict never shrinks as entries go: once the RPCs of a busy moment (a join)
        # are all done, drop the table it grew to (about 1 KiB per node).
        if not self._rpcs:
            self._rpcs = {}

    def next_deadline(self) -> float | None:
        """The earliest retransmit or timeout, or None; drops stale heap entries on the way."""
        heap = self._heap
        while heap:
            deadline, _, msg_id = heap[0]
            rpc = self._rpcs.get(msg_id)
            if rpc is not None and rpc.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> Rpc | None:
        """The next RPC whose deadline is at or before ``now``, or None.

        With a retransmit left it is rescheduled and stays outstanding: the
        caller sends `Rpc.datagram` again.  Otherwise it is forgotten and
        returned with `Rpc.timed_out` set.  Call until None: a rescheduled
        RPC may be due again at ``now`` if the timer fired late.
        """
        heap = self._heap
        offsets = self.retransmit_after
        while heap and heap[0][0] <= now:
            deadline, _, msg_id = heapq.heappop(heap)
            rpc = self._rpcs.get(msg_id)
            if rpc is None or rpc.deadline != deadline:
                continue
            if rpc.step < len(offsets):
                rpc.step += 1
                rpc.deadline = rpc.sent_at + (offsets[rpc.step] if rpc.step < len(offsets) else self.timeout)
                self._push(rpc)
            else:
                del self._rpcs[msg_id]
                self._shrink()
                rpc.timed_out = True
            return rpc
        return None

    def _push(self, rpc: Rpc) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (rpc.deadline, self._seq, rpc.msg_id))
