"""Per-source budgets: datagrams per host, and bytes we may send to unproven addresses.

Theory of operation
-------------------
Two budgets guard the core against strangers; both are bounded tables.

**Datagrams per host** (`TokenBucketLimiter`).  Each source owns a bucket of
at most ``burst`` tokens that refills at ``rate`` tokens per second of
``now``; admitting a datagram costs one token; with none left the datagram
is dropped (and the caller counts the drop).  The core keys the buckets by
`source_key`: the IPv4 address, or the /64 of an IPv6 address (the
smallest block an ISP hands one customer, RFC 6177), never by the port,
because one host can send from 65,535 ports.  The table is bounded by
``max_sources``: a new source at a full table forgets the least recently
active one, which is the same as giving it a full bucket (what an idle
source would have anyway).  The arithmetic is the project's one token
bucket (`identity.pacing`), kept as one number per bucket (`KeyedBuckets`).

**Bytes to unproven addresses** (`AmplificationGuard`).  A UDP source
address is only a claim: an attacker can send us a small request with a
victim's address as source and let our larger answer hit the victim.  So,
as QUIC does before it validates a client's address (RFC 9000 section
8.1), every datagram from an address earns that address ``factor`` times
its size in credit, and everything we send to an address that is not
*verified* (an answer, a verification ping, its retransmits) spends from
that credit; what does not fit is trimmed by the caller or not sent.  An
address is verified for ``verified_for`` seconds after it answered a
request of ours (a spoofer never sees our requests, so it cannot answer
them).  Both tables (credit and verified) are bounded and forget the least
recently used entry first; forgetting credit only makes us more careful,
forgetting a verification only costs one more verification ping.  A
verified address holds no credit (it would never be spent); when its
verification lapses it starts from nothing, as a new address does.  Over any
sequence of inputs, the bytes sent to an address while it is unverified
are at most ``factor`` times the bytes received from it.

**Memory.**  A node keeps one entry per peer host or address in each of
these tables (and in the core's per-host verification and STORE budgets),
so they are plain dicts: a dict keeps insertion order, "least recently
used" is a pop and a re-insert, and an entry costs half what it costs in an
``OrderedDict``.  A token bucket is one float, the time it will be full
again (`KeyedBuckets`: `identity.pacing`'s arithmetic without an object and
a second float per bucket), and the credit table holds only unverified
addresses, so a peer we talk with costs one entry in the verified table, not
one more in the credit table.  A token bucket that has refilled to its burst is
the same as no bucket (a new source gets a full one), so `KeyedBuckets`
forgets its least recently active bucket once that one is full: the tables
hold the hosts active in the last burst / rate seconds (4 s for datagrams),
not every host seen.  A dict kept in that order by pops and re-inserts fills
with deleted slots and grows to about twice its compact size, so each table
rebuilds itself (same order) after about half as many moves as it has
entries: amortized, one more copy of an entry per move.  Addresses are
`dht.ids.shared_address` tuples, so the tables, the routing table and the
lookups share one object per address instead of holding a copy each.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, Final

from dht.ids import Address
from identity.errors import LocalProtocolError
from identity.netaddr import host_key

#: Datagrams per second one source host may make us process, sustained.
SOURCE_RATE: Final = 50.0
#: ... and in a burst.
SOURCE_BURST: Final = 200.0
#: Sources tracked at once.
MAX_SOURCES: Final = 4096
#: Bytes we may send to an unverified address per byte received from it (RFC 9000 8.1: 3).
AMPLIFICATION_FACTOR: Final = 3
#: Seconds an address stays verified after it answered us (BEP 5's "good node": 15 minutes).
VERIFIED_FOR: Final = 15 * 60.0
#: Addresses whose credit, and addresses whose verification, are remembered (each table).
MAX_TRACKED_ADDRESSES: Final = 4096


#: Moves (pop and re-insert) beyond half a table's entries after which it is rebuilt.
COMPACT_SLACK: Final = 8


def compact(table: dict[Any, Any]) -> None:
    """Rebuild ``table`` in place, in the same order, without its deleted slots."""
    items = list(table.items())
    table.clear()
    table.update(items)


@functools.lru_cache(maxsize=4096)
def source_key(addr: Address) -> str:
    """The host behind ``addr`` (`identity.netaddr.host_key`: the IPv4 address, or the IPv6 /64)."""
    return host_key(addr[0])


#: Tokens a take may be short by and still succeed: float rounding, not credit
#: (``burst`` takes of ``1 / rate`` seconds each, summed as floats, must all succeed).
ROUNDING: Final = 1e-6


class KeyedBuckets:
    """One token bucket per key, at most ``max_keys`` of them, the least recently active dropped.

    `identity.pacing.KeyedTokenBuckets` on a plain dict, holding only buckets
    that are not full (module docstring, "Memory"), each as one float: the
    time at which it will be full again (the "theoretical arrival time" of
    the generic cell rate algorithm, ITU-T I.371).  A bucket full at ``f``
    holds ``burst - (f - now) * rate`` tokens at ``now`` (``burst`` once
    ``f <= now``); taking ``cost`` moves ``f`` ``cost / rate`` later.  That
    is `identity.pacing.TokenBucket`'s arithmetic (tokens and the time they
    were counted) in one number instead of two and an object.  Times are
    kept as seconds since the table's ``_epoch``, which moves up to ``now``
    whenever the table is rebuilt or empty: at Unix-time magnitudes a float
    resolves only 0.24 us, and ``burst`` small steps added there would drift
    by a thousandth of a token.  Below ``max_keys`` keys it gives the same
    answers, up to float rounding (`ROUNDING`); at the bound it forgets fewer
    partly spent buckets (full ones go first), so it is never more lenient.
    """

    __slots__ = ("_buckets", "_epoch", "_moves", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # key -> when its bucket is full again, in seconds since `_epoch`;
        # least recently active first.
        self._buckets: dict[Hashable, float] = {}
        self._epoch = 0.0
        self._moves = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens in ``key``'s bucket at ``now`` (``burst`` for a key without one)."""
        t = now - self._epoch
        full = self._buckets.get(key, t)
        return self.burst - (full - t) * self.rate if full > t else self.burst

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False (and nothing taken) if too few."""
        buckets = self._buckets
        if not buckets:
            self._epoch = now
        t = now - self._epoch
        full = buckets.pop(key, None)
        if full is None or full < t:
            if full is None and len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
            full = t
        rate = self.rate
        allowed = (full - t) * rate + cost <= self.burst + ROUNDING
        if allowed:
            full += cost / rate
        if full > t:  # a full bucket is no bucket (module docstring, "Memory")
            buckets[key] = full  # now the most recently active
            self._moves += 1
            if self._moves > len(buckets) // 2 + COMPACT_SLACK:
                self._rebuild(now, t)
                t = 0.0
        # Forget the least recently active bucket once it has refilled.
        if buckets:
            oldest = next(iter(buckets))
            if buckets[oldest] <= t:
                del buckets[oldest]
        return allowed

    def _rebuild(self, now: float, t: float) -> None:
        """`compact`, and move the epoch to ``now`` (``t`` seconds after the old one)."""
        items = [(key, full - t) for key, full in self._buckets.items()]
        self._buckets.clear()
        self._buckets.update(items)
        self._epoch = now
        self._moves = 0


class TokenBucketLimiter(KeyedBuckets):
    """Admit or refuse one unit of work per source key, token-bucket style."""

    __slots__ = ()

    def __init__(
        self,
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_sources >= 1")
        super().__init__(rate, burst, max_sources)

    @property
    def max_sources(self) -> int:
        return self.max_keys

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token from ``key``'s bucket; False (and nothing taken) if it is empty.

        A method, not the alias ``allow = KeyedBuckets.take`` it was: mypyc
        (`simulations.compiled`) calls a class attribute holding a function
        without binding ``self``.
        """
        return self.take(key, now)


class AmplificationGuard:
    """Credit for bytes to unverified addresses, and which addresses are verified."""

    __slots__ = ("_credit", "_moves", "_verified", "factor", "max_addresses", "verified_for")

    def __init__(
        self,
        factor: float = AMPLIFICATION_FACTOR,
        verified_for: float = VERIFIED_FOR,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        if factor < 1 or verified_for < 0 or max_addresses < 1:
            raise LocalProtocolError("factor must be >= 1, verified_for >= 0, max_addresses >= 1")
        self.factor = factor
        self.verified_for = verified_for
        self.max_addresses = max_addresses
        # Least recently used first (module docstring, "Memory").
        self._credit: dict[Address, float] = {}
        # addr -> when it last answered (verified until then + verified_for): the
        # routing table holds the same `now` as the contact's last answer, so the
        # stamp costs no float of its own, and the sum is the one we used to store.
        self._verified: dict[Address, float] = {}
        self._moves = 0

    def __len__(self) -> int:
        return len(self._credit) + len(self._verified)

    def received(self, addr: Address, nbytes: int, now: float) -> None:
        """``addr`` sent us ``nbytes``: it earns ``factor`` times that in credit, unless verified.

        A verified address needs no credit (nothing we send it is counted), so
        it holds none: an entry per peer we talk with would double the table
        for nothing.  Once its verification lapses it starts from zero, as a
        new address does, and earns credit with its next datagram."""
        credit = self._credit
        if self.is_verified(addr, now):
            credit.pop(addr, None)
            return
        credit[addr] = credit.pop(addr, 0.0) + self.factor * nbytes
        if len(credit) > self.max_addresses:
            del credit[next(iter(credit))]
        self._moved()

    def verify(self, addr: Address, now: float) -> None:
        """``addr`` answered a request of ours: it receives at that address."""
        verified = self._verified
        verified.pop(addr, None)
        verified[addr] = now
        self._credit.pop(addr, None)  # spent on nothing while verified (`received`)
        if len(verified) > self.max_addresses:
            del verified[next(iter(verified))]
        self._moved()

    def _moved(self) -> None:
        self._moves += 1
        if self._moves > len(self) // 4 + COMPACT_SLACK:
            compact(self._credit)
            compact(self._verified)
            self._moves = 0

    def is_verified(self, addr: Address, now: float) -> bool:
        stamp = self._verified.get(addr)
        if stamp is None:
            return False
        if stamp + self.verified_for < now:
            del self._verified[addr]
            return False
        return True

    def budget(self, addr: Address, now: float) -> int | None:
        """Bytes we may still send to ``addr`` now; None: no limit (verified)."""
        if self.is_verified(addr, now):
            return None
        return int(self._credit.get(addr, 0.0))

    def spend(self, addr: Address, nbytes: int, now: float) -> bool:
        """Take ``nbytes`` from ``addr``'s credit if it is unverified; False (nothing taken) if short."""
        if self.is_verified(addr, now):
            return True
        credit = self._credit.get(addr, 0.0)
        if credit < nbytes:
            return False
        self._credit[addr] = credit - nbytes
        return True
