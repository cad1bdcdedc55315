"""Pacing: the one token bucket, the one keyed bucket table and the one backoff rule.

Theory of operation
-------------------
Every rate the project enforces on a peer (DHT datagrams per source, gossip
control messages per session, mention notices per sender) and every retry
delay it waits (redials, provider searches, mention deliveries) follows one
of two rules, kept here once so a fix reaches all of them:

* **Token bucket.**  A bucket holds at most ``burst`` tokens and refills at
  ``rate`` tokens per second of ``now``; taking ``cost`` tokens succeeds
  only if that many are there.  Refill is computed lazily from the time of
  the last take, so a bucket needs no timer.  `KeyedTokenBuckets` keeps one
  bucket per key in a table bounded by ``max_keys``: a new key at a full
  table forgets the least recently active one, which is the same as giving
  that key a full bucket (what an idle key would have anyway).
* **Exponential backoff.**  ``backoff(n, first, ceiling)`` is ``first *
  2**n`` capped at ``ceiling``: the delay before the (n+1)-th retry.
  Callers that want jitter multiply by their own injected RNG's draw.

It lives in ``identity/``, the bottom layer, because ``dht``, ``gossip`` and
``p2pblog`` all use it and ``dht`` and ``gossip`` may not import each other.
Pure arithmetic on ``now``: no clock, no randomness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from identity.errors import LocalProtocolError


def backoff(attempt: int, first: float, ceiling: float) -> float:
    """The delay before retry ``attempt + 1``: ``first * 2**attempt``, at most ``ceiling``."""
    return min(ceiling, first * 2.0**attempt)


class TokenBucket:
    """One bucket: ``burst`` tokens at most, refilled at ``rate`` per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float, *, tokens: float | None = None) -> None:
        if rate <= 0 or burst <= 0:
            raise LocalProtocolError("a token bucket needs rate > 0 and burst > 0")
        self.rate = rate
        self.burst = burst
        self.tokens = burst if tokens is None else tokens
        self.stamp = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last call; returns the tokens now held."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        else:
            self.tokens = min(self.burst, self.tokens)
        self.stamp = now
        return self.tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens; False (and nothing taken) if fewer are there."""
        if self.refill(now) < cost:
            return False
        self.tokens -= cost
        return True


class KeyedTokenBuckets:
    """One `TokenBucket` per key, at most ``max_keys`` of them (least recently active dropped)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False (and nothing taken) if too few."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)
