"""Peer scores: misbehaviour and good service, per key and per address prefix, sans IO.

Theory of operation
-------------------
As GossipSub v1.1's peer scoring does, every gossip peer has a number that
what it did moves down (misbehaviour) or up (useful service), that drifts
back to zero over time, and that decides whom the node refuses and whom it
keeps when connection slots are scarce.  This module holds the rules and the
table; it reads no clock (``now`` is an argument) and does no I/O: the
replicator (`p2pblog.replication`) reports what happened and asks, and the
table's rows are saved in the store (``peer_scores``) with the contacts and
at shutdown (`p2pblog.lifecycle`), and at once when a ban starts.

**Subjects.**  A score is kept per *subject*: a peer's Ed25519 public key (32
bytes), and the address prefix it connects from (`address_prefix`: the /24 of
an IPv4 address, the /48 of an IPv6 one, as ``b"net:198.51.100.0/24"``).  A
key costs nothing to make, so the prefix score is what follows an attacker
that changes keys; an address is cheap to change inside a prefix, so prefixes,
not single addresses, are scored.  What a connection did before its
handshake named a key (garbage, a forged identity proof, a handshake left
unfinished, a connection over the per-address caps) counts against its
prefix only.

**Offences and credits.**  Each `Offence` has a weight for the key and a
smaller one for the prefix (`Offence` lists them).  The weights are set so
that a session the gossip layer itself gives up on (`SESSION_FAILED`, after
``gossip.session.MISBEHAVIOUR_LIMIT`` bad messages) takes the key to
`BAN_BELOW` or lower, while the handful of faults a confused honest peer
may commit in one session does not.  Credits (`credit`) reward a key for useful
deliveries (new entries of a followed feed) and for long sessions; they are
capped at `MAX_SCORE`, so goodwill banked earlier cannot pay for a long run
of later offences.  Prefixes earn no credit: a good neighbour would
otherwise launder an attacker that shares its /24.

**Decay.**  A score halves towards zero every `NEGATIVE_HALF_LIFE` seconds
when negative and every `POSITIVE_HALF_LIFE` when positive (computed lazily
from the time it was last updated, so the table needs no timer).  It never
goes below `MIN_SCORE`, so any offender is forgiven in bounded time.

**Bans.**  An offence that leaves a key's score at or below `BAN_BELOW` (a
prefix's at `PREFIX_BAN_BELOW`: a prefix holds honest neighbours too, so
it takes about a dozen failed sessions of throwaway keys, or forty garbage
handshakes, within an hour) bans it for `BAN_SECONDS` (``banned_until``),
again at each later offence while its score stays that low.  A banned key is refused at its handshake and
never dialled; a banned prefix's new inbound connections are closed before
any handshake work.  A lapsed ban lets the peer in with its negative score,
so it is the first one evicted, and one more offence bans it again.

**Standing.**  `standing` (key score plus prefix score) orders peers when
slots are scarce: the replicator evicts the lowest-standing stranger to
admit a newcomer of strictly higher standing, and dials providers with the
best standing first.

**Bounds.**  The table holds at most `MAX_SUBJECTS` subjects.  Entries that
decayed to almost nothing (below `FORGET_BELOW`, with no ban running) are
dropped first; beyond that the least valuable eighth is dropped in one pass
(amortized O(log n) per insertion), keeping, in order: prefixes (few, and
they follow key-changing attackers), keys with a positive history (hard to
earn), running bans, then larger scores and more recent updates.  A flood
of throwaway keys therefore evicts other throwaway keys' bans, never an
honest peer's history.  The same order (best first, at most
`MAX_SUBJECTS`) is what is saved.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from identity.netaddr import network_key

#: A score at or below this bans its subject (for `BAN_SECONDS` from the offence that took it there):
#: a key, and a prefix, which needs four times the evidence (it holds honest neighbours too).
BAN_BELOW: Final = -50.0
PREFIX_BAN_BELOW: Final = 4 * BAN_BELOW
BAN_SECONDS: Final = 600.0
#: Bounds of a score: credits stop at the top, offences at the bottom.
MAX_SCORE: Final = 20.0
MIN_SCORE: Final = -1000.0
#: Seconds for a negative (positive) score to halve towards zero.
NEGATIVE_HALF_LIFE: Final = 3600.0
POSITIVE_HALF_LIFE: Final = 6 * 3600.0
#: Entries whose score decayed below this (in absolute value), with no ban running, are forgotten.
FORGET_BELOW: Final = 0.5
#: Subjects (keys and prefixes) kept in the table, and saved.
MAX_SUBJECTS: Final = 4096
#: Credits for service: a batch of new entries of a followed feed, and each
#: `SESSION_CREDIT_EVERY` seconds of an open session.
DELIVERY_CREDIT: Final = 1.0
SESSION_CREDIT: Final = 1.0
SESSION_CREDIT_EVERY: Final = 600.0

Row = tuple[bytes, float, float, float]


class Offence(enum.Enum):
    """What a peer did wrong: ``(key weight, prefix weight)``."""

    #: Garbage bytes or a forged identity proof instead of a handshake (no key yet).
    HANDSHAKE_FAILED = (0.0, -5.0)
    #: A handshake left unfinished past its deadline (a slow link can do this: light).
    HANDSHAKE_TIMEOUT = (0.0, -2.0)
    #: A connection over the per-address caps, refused or evicted at once.
    OVER_CAP = (0.0, -1.0)
    #: Bad bytes after the handshake (a frame over the limit, a tampered message).
    CHANNEL_FAILED = (-25.0, -5.0)
    #: One bad gossip message (the session counts it too).
    MISBEHAVED = (-5.0, -1.0)
    #: A forged or malformed entry in a batch.
    BAD_ENTRIES = (-5.0, -1.0)
    #: The session gave up on the peer (too many bad messages).
    SESSION_FAILED = (-50.0, -10.0)

    @property
    def key_weight(self) -> float:
        return self.value[0]

    @property
    def prefix_weight(self) -> float:
        return self.value[1]


def address_prefix(host: str) -> bytes:
    """The scored subject of an address: its network (`identity.netaddr.network_key`,
    a /24 or a /48)."""
    return b"net:" + network_key(host).encode("utf-8", "replace")


@dataclass(slots=True)
class _Score:
    score: float
    banned_until: float
    updated: float


def _decayed(entry: _Score, now: float) -> float:
    elapsed = now - entry.updated
    if elapsed <= 0 or entry.score == 0:
        return entry.score
    half_life = NEGATIVE_HALF_LIFE if entry.score < 0 else POSITIVE_HALF_LIFE
    return float(entry.score * 0.5 ** (elapsed / half_life))


class PeerScores:
    """The score table (see the module docstring)."""

    def __init__(self, rows: Iterable[Row] = (), *, max_subjects: int = MAX_SUBJECTS) -> None:
        self.max_subjects = max_subjects
        self._table: dict[bytes, _Score] = {}
        #: Bans started (a counter for `status`).
        self.bans = 0
        for subject, score, banned_until, updated in rows:
            if len(self._table) >= max_subjects:
                break
            if score == score and banned_until == banned_until and updated == updated:  # no NaN
                clamped = min(MAX_SCORE, max(MIN_SCORE, score))
                self._table[bytes(subject)] = _Score(clamped, banned_until, updated)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, subject: bytes) -> bool:
        return subject in self._table

    # ----------------------------------------------------------------- questions

    def score(self, subject: bytes, now: float) -> float:
        entry = self._table.get(subject)
        return 0.0 if entry is None else _decayed(entry, now)

    def banned(self, subject: bytes, now: float) -> bool:
        entry = self._table.get(subject)
        return entry is not None and now < entry.banned_until

    def banned_until(self, subject: bytes) -> float:
        entry = self._table.get(subject)
        return 0.0 if entry is None else entry.banned_until

    def standing(self, key: bytes | None, prefix: bytes | None, now: float) -> float:
        """How much the node wants a peer: its key's score plus its prefix's."""
        total = 0.0
        if key is not None:
            total += self.score(key, now)
        if prefix is not None:
            total += self.score(prefix, now)
        return total

    def active_bans(self, now: float) -> int:
        return sum(1 for entry in self._table.values() if now < entry.banned_until)

    # ----------------------------------------------------------------- reports

    def penalize(self, offence: Offence, key: bytes | None, prefix: bytes | None, now: float) -> bool:
        """Count ``offence`` against the key and the prefix; True if a ban started."""
        banned = False
        if key is not None and offence.key_weight:
            banned |= self._add(key, offence.key_weight, now)
        if prefix is not None and offence.prefix_weight:
            banned |= self._add(prefix, offence.prefix_weight, now)
        return banned

    def credit(self, key: bytes, amount: float, now: float) -> None:
        """Reward the key for service (never a prefix: see the module docstring)."""
        if amount > 0:
            self._add(key, amount, now)

    def rows(self) -> list[Row]:
        """The table to save, most valuable first (the last update's values; decay is lazy)."""
        order = sorted(self._table.items(), key=_value, reverse=True)
        return [(s, e.score, e.banned_until, e.updated) for s, e in order[: self.max_subjects]]

    # ----------------------------------------------------------------- internals

    def _add(self, subject: bytes, delta: float, now: float) -> bool:
        entry = self._table.get(subject)
        if entry is None:
            if len(self._table) >= self.max_subjects:
                self._shrink(now)
            entry = self._table[subject] = _Score(0.0, 0.0, now)
        score = min(MAX_SCORE, max(MIN_SCORE, _decayed(entry, now) + delta))
        entry.score, entry.updated = score, max(now, entry.updated)
        if delta < 0 and score <= (PREFIX_BAN_BELOW if _is_prefix(subject) else BAN_BELOW):
            started = now >= entry.banned_until
            entry.banned_until = max(entry.banned_until, now + BAN_SECONDS)
            self.bans += started
            return started
        return False

    def _shrink(self, now: float) -> None:
        """Make room: forget what decayed to nothing, else the least valuable eighth."""
        table = self._table
        faded = [s for s, e in table.items() if abs(_decayed(e, now)) < FORGET_BELOW]
        for subject in faded:
            if now >= table[subject].banned_until:
                del table[subject]
        excess = len(self._table) - (self.max_subjects - max(1, self.max_subjects // 8))
        if excess > 0:
            order = sorted(self._table.items(), key=lambda item: _value(item, now))
            for subject, _ in order[:excess]:
                del self._table[subject]


def _is_prefix(subject: bytes) -> bool:
    return subject.startswith(b"net:")


def _value(
    item: tuple[bytes, _Score], now: float | None = None
) -> tuple[bool, bool, bool, float, float, bytes]:
    """How much an entry is worth keeping (larger: kept longer); ``now`` None: as last updated."""
    subject, entry = item
    score = entry.score if now is None else _decayed(entry, now)
    ban_running = entry.banned_until > (entry.updated if now is None else now)
    return (_is_prefix(subject), score > 0, ban_running, abs(score), entry.updated, subject)
