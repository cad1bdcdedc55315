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

The arithmetic is the project's one token bucket (`identity.pacing`); this
module only names the DHT's budget and keeps the limiter's ``allow`` API.
"""

from __future__ import annotations

from typing import Final

from identity.errors import LocalProtocolError
from identity.pacing import KeyedTokenBuckets

#: Datagrams per second one source address may make us process, sustained.
SOURCE_RATE: Final = 50.0
#: ... and in a burst.
SOURCE_BURST: Final = 200.0
#: Sources tracked at once.
MAX_SOURCES: Final = 4096


class TokenBucketLimiter(KeyedTokenBuckets):
    """Admit or refuse one unit of work per source, token-bucket style."""

    def __init__(
        self,
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_sources >= 1")
        super().__init__(rate, burst, max_sources)
        self.max_sources = max_sources

    #: ``allow(source, now)``: take one token from ``source``'s bucket; False
    #: (and nothing taken) if it is empty.  (An alias, not a wrapper: this is
    #: called for every datagram.)
    allow = KeyedTokenBuckets.take
