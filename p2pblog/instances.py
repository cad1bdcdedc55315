"""Two nodes, one key: noticing another node that runs with this identity's key (issue 15).

Theory of operation
-------------------
Copying ``identity.key`` into a second home and running both gives two nodes
one identity.  Both sign peer records under one DHT key, and both post to one
feed, which forks it (docs/protocol.md, "Forks").  The node cannot stop the
other one, but it can notice it, tell the user, and keep lookups pointing at a
live address.

* **Instance.**  Every home has a node *instance* id: `INSTANCE_BYTES` random
  bytes made once and kept in the store (``settings``, `INSTANCE_SETTING`).  It
  belongs to the home, not the key: a second home with a copied key gets its
  own.  Our peer records carry it (`identity.records`, the ``instance`` field).
* **Seq.**  A peer record's seq is above the last one this home signed (kept in
  the store, `SEQ_SETTING`, so it rises across restarts whatever the clock
  does), above the milliseconds of ``now``, and above every peer record of our
  key we have seen (`seq_floor`).
* **Seeing.**  A peer record of our key reaches us when a peer stores it here
  (`dht.RecordStored`: we are often among the closest nodes to our own key)
  and when we resolve our own key, which the node does every `check_every`
  seconds (a third of the republication period, `NodeCore`).  `observe` looks
  at each: a record from another instance (or from no instance, signed after
  our first record of this run) at other addresses is *another node*.  It is
  remembered (at most `MAX_DUPLICATES`, the most recently seen kept; one
  not seen for `FORGET_AFTER` is forgotten) and reported once per instance
  with `DuplicateInstanceSeen`, which the daemon logs and ``status`` shows
  (``duplicate_instances``).
* **Winning back.**  When the other node's record beats ours (a higher seq: it
  was signed later), we re-sign ours at once, above it, at most once per
  `respond_every` seconds (a sixth of the republication period): two live
  copies then take turns, which is harmless (both addresses are live) and
  bounded.  Once the other stops, our next republication, at the latest one
  period later, signs a seq above its last record, and every lookup finds our
  address again: a dead address is returned for at most one republication
  period.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from identity.records import INSTANCE_BYTES, PEER, Record
from p2pblog.events import DuplicateInstanceSeen
from p2pblog.record_rules import MAX_SEQ_AHEAD_MS
from p2pblog.store import Store

#: The ``settings`` keys of this home's instance id (hex) and of its last peer-record seq.
INSTANCE_SETTING: Final = "node.instance"
SEQ_SETTING: Final = "peer.seq"
#: Other instances remembered at once (the most recently seen are kept).
MAX_DUPLICATES: Final = 8
#: Seconds after which another instance not seen again is forgotten: a peer record's
#: lifetime (`p2pblog.own_records.PEER_TTL`), so its last record has expired everywhere.
FORGET_AFTER: Final = 2 * 3600.0
#: Values our check of our own peer record gathers: the copy we hold counts as one, and
#: a lookup stops at its quorum, so 1 would only ever read our own record back.
SELF_CHECK_QUORUM: Final = 3

Addrs = tuple[tuple[str, str, int], ...]


@dataclass(slots=True)
class Duplicate:
    instance: bytes | None
    addrs: Addrs
    first_seen: float
    seen: float
    seq: int

    def doc(self) -> dict[str, object]:
        return {
            "instance": None if self.instance is None else self.instance.hex(),
            "addrs": [list(a) for a in self.addrs],
            "first_seen": self.first_seen,
            "seen": self.seen,
        }


def home_instance(store: Store, random_bytes: Callable[[int], bytes]) -> bytes:
    """This home's instance id: made once (``random_bytes``) and kept in the store."""
    text = store.setting(INSTANCE_SETTING)
    if text is not None:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) == INSTANCE_BYTES:
            return value
    value = random_bytes(INSTANCE_BYTES)
    store.set_setting(INSTANCE_SETTING, value.hex())
    return value


class InstanceWatch:
    """Which other nodes announce our key, and the seq our next peer record must exceed."""

    def __init__(
        self, own: bytes, instance: bytes, store: Store, *, check_every: float, respond_every: float
    ) -> None:
        self.own = own
        self.instance = instance
        self.store = store
        self.check_every = check_every
        self.respond_every = respond_every
        #: Other nodes seen, by instance, least recently seen first.
        self.duplicates: dict[bytes | None, Duplicate] = {}
        self.events: deque[DuplicateInstanceSeen] = deque()
        #: The highest seq of a peer record of our key seen (ours included, from earlier runs).
        self._seen_seq = _int(store.setting(SEQ_SETTING))
        #: The seq of our first record this run: an instance-less record signed before is ours.
        self._first_seq: int | None = None
        self.check_at: float | None = None
        self._respond_after = 0.0
        self.stats: Counter[str] = Counter()

    @property
    def seq_floor(self) -> int:
        """Our next peer record's seq is at least this."""
        return self._seen_seq + 1

    def signed(self, record: Record, now: float) -> None:
        """We signed ``record``: keep its seq (monotonic across restarts); check again later."""
        self._seen_seq = max(self._seen_seq, record.seq)
        if self._first_seq is None:
            self._first_seq = record.seq
            self.check_at = now + self.check_every
        self.store.set_setting(SEQ_SETTING, str(record.seq))

    def observe(self, record: Record, ours: Record | None, now: float) -> bool:
        """A valid peer record of our key was seen; True if ours must be re-signed now
        (another node's record beats it)."""
        if record.type != PEER or record.signer != self.own or record.instance == self.instance:
            return False
        if record.seq > now * 1000 + MAX_SEQ_AHEAD_MS:
            # Signed far ahead of any clock (up to 2**63 - 1 by one who holds our key):
            # following it would push our own seqs out of range.  Counted, not followed.
            self.stats["instances.seq_ahead_ignored"] += 1
            return False
        self._seen_seq = max(self._seen_seq, record.seq)
        if ours is not None and record.addrs == ours.addrs:
            return False  # our own address: an earlier run of this node, or a restored home
        if record.instance is None and (self._first_seq is None or record.seq < self._first_seq):
            return False  # signed before we started: our own version-1 record from an earlier run
        known = self.duplicates.pop(record.instance, None)
        if known is None:
            known = Duplicate(record.instance, record.addrs, now, now, record.seq)
            self.events.append(DuplicateInstanceSeen(record.instance, record.addrs, now))
        elif record.seq >= known.seq:
            known.addrs, known.seq = record.addrs, record.seq
        known.seen = now
        self.duplicates[record.instance] = known
        while len(self.duplicates) > MAX_DUPLICATES:
            del self.duplicates[next(iter(self.duplicates))]
        if ours is None or record.seq <= ours.seq or now < self._respond_after:
            return False
        self._respond_after = now + self.respond_every
        return True

    def check_due(self, now: float) -> bool:
        """Whether to resolve our own peer record now (then the next check is scheduled)."""
        if self.check_at is None or now < self.check_at:
            return False
        self.check_at = now + self.check_every
        for instance in [i for i, d in self.duplicates.items() if d.seen + FORGET_AFTER <= now]:
            del self.duplicates[instance]
        return True

    def running_elsewhere(self, now: float) -> Duplicate | None:
        """Another node with our key that is running: seen lately (within `FORGET_AFTER`), and
        its record signed within two republication periods (a running node re-signs every
        period; the record of a node that stopped, an old home restored elsewhere, lingers up
        to its expiry and must not keep this one from posting).  The latest seen, or None."""
        republish = 3 * self.check_every
        recent = [
            d
            for d in self.duplicates.values()
            if d.seen + FORGET_AFTER > now and d.seq / 1000 + 2 * republish > now
        ]
        return max(recent, key=lambda d: d.seen) if recent else None

    def doc(self) -> list[dict[str, object]]:
        """``status``'s ``duplicate_instances``: the other nodes seen, most recent last."""
        return [d.doc() for d in self.duplicates.values()]


def _int(text: str | None) -> int:
    try:
        return max(0, int(text)) if text is not None else 0
    except ValueError:
        return 0
