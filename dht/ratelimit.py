"""Per-source token buckets: how many datagrams one address may make us process.

Theory of operation
-------------------
Each source address owns a bucket of at most ``burst`` tokens that refills at
``rate`` tokens per second of ``now``.  Admitting a datagram costs one token;
with none left the datagram is dropped (and the caller counts the drop).
Refill is computed lazily from the time of the last admission, so the limiter
needs no timer.

The table of buckets is bounded by ``max_sources``: when a new source arrives
at a full table the least recently active source is forgotten.  Forgetting a
source is the same as giving it a full bucket, which is what an idle source
would have anyway; an attacker rotating through many addresses is bounded by
the table size times ``burst`` per rotation, not by this class alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from identity.errors import LocalProtocolError

#: Datagrams per second one source address may make us process, sustained.
SOURCE_RATE: Final = 50.0
#: ... and in a burst.
SOURCE_BURST: Final = 200.0
#: Sources tracked at once.
MAX_SOURCES: Final = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBucketLimiter:
    """Admit or refuse one unit of work per source, token-bucket style."""

    def __init__(
        self,
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_sources >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: Hashable, now: float) -> bool:
        """Take one token from ``source``'s bucket; False (and nothing taken) if empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
