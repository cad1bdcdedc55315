"""Mention notices: delivering ours (the outbox) and admitting others' (admission).

Theory of operation
-------------------
A post that mentions keys (a reply mentions its parent's author), or the
delete of such a post, queues one notice per mentioned key in the store's
outbox (`p2pblog.actions`, shared with the offline CLI).  `MentionOutbox`
mirrors that outbox in memory and delivers it:

1. each notice needs a proof-of-work stamp first, which the driver computes
   off the event loop (`stamps_to_make` / `stamp_made`);
2. a stamped notice goes to its recipient over an open gossip session
   (`Replicator.send_mention`); without one, the replicator is asked to keep
   dialling the recipient (`want_connection`) and, while its address is
   unknown, its peer record is resolved (`Discovery.resolve`);
3. a notice is retried `MENTION_RETRY_FIRST` seconds later, doubling up to
   `MENTION_RETRY_MAX`, until acknowledged (`answered`), `MENTION_ACK_TIMEOUT`
   after each send, at most `MENTION_ATTEMPTS` times; a recipient that asks
   for more work (up to `MAX_STAMP_WORK` bits) is paid once.

`MentionAdmission` decides on a notice that arrives (the replicator reports
`MentionArrived`; the node answers with the verdict).  In order, cheapest
first, so a flood costs little to refuse: blocked sender; the per-sender
token bucket (`MENTION_BURST`, then one per 1/`MENTION_RATE` s); the entry's
shape, kind and "mentions me"; the follow graph (an author we follow, or
follow through one hop, needs no work); for a stranger, the daily window
(`STRANGER_MENTIONS_PER_DAY`, whatever keys they use: keys are free) and a
stamp whose work rises with the window's fill; the signature last.
Admitted entries are stored alone (``Store.add_loose``), without their feed.

Both count what they do in ``stats`` (``mentions.<what>``); `status` shows
these under ``gossip.``.  On a full disk (`StorageFull`) an admissible
notice is answered BUSY, so its sender retries later
(``mentions.refused_storage_full``), and the outbox keeps delivering from
memory what it could not save (``mentions.unsaved``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gossip.messages import MentionStatus
from identity import Identity, SignatureError, verify
from identity.limits import MAX_AHEAD_MS, MENTION_WORK
from identity.pacing import KeyedTokenBuckets, backoff
from identity.pow import NOTICE_DOMAIN, notice_subject, work_bits
from p2pblog.discovery import Discovery
from p2pblog.entry import DELETE, POST, decode_entry
from p2pblog.errors import DeviceRevokedError, EntryError, StorageFull
from p2pblog.events import MentionAdmitted, MentionDelivered, MentionRefused
from p2pblog.replication import MentionAnswered, MentionArrived, Replicator
from p2pblog.store import Store

#: Delivery attempts before giving up, the first retry delay (doubling up to
#: the ceiling), and how long to wait for an acknowledgement.
MENTION_ATTEMPTS: Final = 10
MENTION_RETRY_FIRST: Final = 5.0
MENTION_RETRY_MAX: Final = 3600.0
MENTION_ACK_TIMEOUT: Final = 30.0
#: Most work bits we spend on a stamp when a recipient asks for more (2**24
#: hashes, about 8 s of one core).
MAX_STAMP_WORK: Final = 24
#: Per-sender rate limit on received mention notices: a burst, then one every
#: 1/MENTION_RATE seconds; senders tracked at most (least recently seen dropped).
MENTION_BURST: Final = 10.0
MENTION_RATE: Final = 1 / 6
MENTION_SENDERS: Final = 4096
#: Mention notices admitted from strangers (authors beyond two follow hops,
#: who paid a stamp) in any 24 hours, whatever keys they use: keys are free,
#: so the per-sender limit alone does not bound what strangers can store.
STRANGER_MENTIONS_PER_DAY: Final = 1000
#: Extra stamp bits asked of a stranger as that window fills: one more bit per
#: eighth of it (16 + 7 = 23 bits with the default work, below MAX_STAMP_WORK).
STRANGER_EXTRA_WORK: Final = 8
DAY: Final = 86_400.0

MentionEvent = MentionAdmitted | MentionRefused | MentionDelivered


@dataclass(slots=True)
class _Outgoing:
    """A mention notice waiting for delivery (mirrors a row of the store's outbox)."""

    raw: bytes
    #: The proof-of-work nonce; None until the driver made it.
    stamp: bytes | None
    work: int
    attempts: int
    next_at: float
    requested: bool = False


def _stamp_work(stamp: bytes, recipient: bytes, eid: bytes) -> int:
    return (
        max(MENTION_WORK, work_bits(NOTICE_DOMAIN, notice_subject(recipient, eid), stamp))
        if stamp
        else MENTION_WORK
    )


class MentionOutbox:
    """Delivers our mention notices: stamps, sends, retries (see the module docstring)."""

    def __init__(
        self, store: Store, replicator: Replicator, discovery: Discovery, stats: Counter[str], now: float
    ) -> None:
        self.store = store
        self.replicator = replicator
        self.discovery = discovery
        self.stats = stats
        self.events: deque[MentionEvent] = deque()
        #: Notices to deliver, by (entry id, recipient).
        self._outgoing: dict[tuple[bytes, bytes], _Outgoing] = {}
        #: When `deliver` is next due (None: nothing to do until an input).
        self.due_at: float | None = None
        self.sync(now)

    def sync(self, now: float) -> None:
        """Mirror the store's outbox (written by `p2pblog.actions`) in memory."""
        rows = {
            (eid, recipient): (stamp, attempts) for eid, recipient, stamp, attempts in self.store.outbox()
        }
        for pair in [pair for pair in self._outgoing if pair not in rows]:
            del self._outgoing[pair]
        for (eid, recipient), (stamp, attempts) in rows.items():
            if (eid, recipient) in self._outgoing:
                continue
            item = self.store.get(eid)
            if item is None:
                self.store.outbox_remove(eid, recipient)
                continue
            work = _stamp_work(stamp, recipient, eid)
            self._outgoing[eid, recipient] = _Outgoing(item.entry.raw, stamp or None, work, attempts, now)
            self.due_at = now

    def pending(self) -> list[tuple[bytes, bytes, int]]:
        """Notices not yet acknowledged: ``(entry id, recipient, attempts)``."""
        return [(eid, recipient, item.attempts) for (eid, recipient), item in self._outgoing.items()]

    def has_notices_for(self, recipient: bytes) -> bool:
        return any(r == recipient for _, r in self._outgoing)

    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]:
        """``(entry id, recipient, bits)`` of notices that need a proof-of-work stamp."""
        out = []
        for (eid, recipient), item in self._outgoing.items():
            if item.stamp is None and not item.requested:
                item.requested = True
                out.append((eid, recipient, item.work))
        return out

    def stamp_made(self, entry_id: bytes, recipient: bytes, nonce: bytes, now: float) -> None:
        item = self._outgoing.get((entry_id, recipient))
        if item is None:
            return
        item.stamp, item.requested, item.next_at = nonce, False, now
        self._save(self.store.outbox_add, entry_id, recipient, nonce)
        self.due_at = now
        self.deliver(now)

    def _save(self, write: Callable[..., None], *args: object) -> None:
        """Write the outbox's copy in the store.  On a full disk the write is skipped and
        counted (``mentions.unsaved``): the notices in memory are delivered all the same,
        and after a restart at worst one is sent again (its recipient answers DUPLICATE)."""
        try:
            write(*args)
        except StorageFull:
            self.stats["mentions.unsaved"] += 1

    def deliver(self, now: float) -> None:
        """Send due notices to connected recipients; connect to (or resolve) the others."""
        self.due_at = None
        resolving: set[bytes] = set()
        for pair, item in list(self._outgoing.items()):
            eid, recipient = pair
            if item.stamp is None:
                continue
            if now < item.next_at:
                self._wake(item.next_at)
                continue
            if item.attempts >= MENTION_ATTEMPTS:
                self.stats["mentions.undelivered"] += 1
                self._drop(pair)
                continue
            item.attempts += 1
            self._save(self.store.outbox_attempted, eid, recipient, item.attempts)
            if self.replicator.send_mention(recipient, item.raw, item.stamp, now):
                item.next_at = now + MENTION_ACK_TIMEOUT
            else:
                self.replicator.want_connection(recipient, now)
                if self.replicator.known_address(recipient) is None and recipient not in resolving:
                    resolving.add(recipient)
                    self.discovery.resolve(recipient, now, consume=True)
                item.next_at = now + backoff(item.attempts - 1, MENTION_RETRY_FIRST, MENTION_RETRY_MAX)
            self._wake(item.next_at)

    def _wake(self, at: float) -> None:
        self.due_at = at if self.due_at is None else min(self.due_at, at)

    def _drop(self, pair: tuple[bytes, bytes]) -> None:
        self._outgoing.pop(pair, None)
        self._save(self.store.outbox_remove, *pair)
        if not self.has_notices_for(pair[1]):
            self.replicator.release_connection(pair[1])

    def peer_connected(self, peer: bytes, now: float) -> None:
        """Send the peer's notices now, not at their next retry."""
        for (_, recipient), outgoing in self._outgoing.items():
            if recipient == peer:
                outgoing.next_at = min(outgoing.next_at, now)
                self._wake(now)

    def recipient_found(self, peer: bytes, now: float) -> None:
        """A peer record was resolved: keep dialling the peer if we have notices for it."""
        if self.has_notices_for(peer):
            self.replicator.want_connection(peer, now)

    def answered(self, answer: MentionAnswered, now: float) -> None:
        pair = (answer.entry_id, answer.peer)
        item = self._outgoing.get(pair)
        if item is None:
            return
        status = answer.status
        if status == MentionStatus.NEED_WORK and item.work < answer.need <= MAX_STAMP_WORK:
            # The recipient asks for more work than we paid: pay it once.
            item.stamp, item.work, item.next_at = None, answer.need, now
            self._save(self.store.outbox_add, answer.entry_id, answer.peer, b"")
            return
        admitted = status in (MentionStatus.ADMITTED, MentionStatus.DUPLICATE)
        if not admitted and status in (MentionStatus.RATE_LIMITED, MentionStatus.BUSY):
            item.next_at = now + backoff(item.attempts, MENTION_RETRY_FIRST, MENTION_RETRY_MAX)
            self._wake(item.next_at)
            return
        self.stats["mentions.delivered" if admitted else "mentions.refused_by_peer"] += 1
        self._drop(pair)
        self.events.append(MentionDelivered(answer.entry_id, answer.peer, admitted, status))


class MentionAdmission:
    """Decides on mention notices that arrive (see the module docstring)."""

    def __init__(
        self, identity: Identity, store: Store, replicator: Replicator, stats: Counter[str], mention_work: int
    ) -> None:
        self.identity = identity
        self.store = store
        self.replicator = replicator
        self.stats = stats
        self.events: deque[MentionEvent] = deque()
        #: Work bits a mention notice from a stranger must carry.
        self.mention_work = mention_work
        self._buckets = KeyedTokenBuckets(MENTION_RATE, MENTION_BURST, MENTION_SENDERS)
        #: When each stranger's notice of the last DAY was admitted (in memory:
        #: a restart starts a new window, as it forgets the per-sender buckets).
        self._stranger_admits: deque[float] = deque()
        self.stranger_mentions_per_day = STRANGER_MENTIONS_PER_DAY

    def arrived(self, notice: MentionArrived, now: float) -> tuple[int, int]:
        """Decide on a notice: ``(MentionStatus, work bits needed)``; every refusal is
        counted under ``mentions.refused_<reason>`` and reported as `MentionRefused`."""
        return self.admit(notice.peer, notice.entry, notice.stamp, now)

    def admit(self, sender: bytes, raw: bytes, stamp: bytes, now: float) -> tuple[int, int]:
        own = self.identity.public_key
        blocked = self.replicator.blocked

        def refuse(reason: str, status: int, need: int = 0) -> tuple[int, int]:
            self.stats[f"mentions.refused_{reason}"] += 1
            self.events.append(MentionRefused(sender, reason))
            return status, need

        if sender in blocked:
            return refuse("blocked", MentionStatus.BLOCKED)
        # The rate limit, then the cheap checks, then the stamp (one hash), and
        # the signature last: a flood of notices costs little to refuse.
        if not self._buckets.take(sender, now):
            return refuse("rate", MentionStatus.RATE_LIMITED)
        try:
            entry = decode_entry(raw, check_signature=False)
        except EntryError:
            return refuse("invalid", MentionStatus.INVALID)
        if entry.author in blocked:
            return refuse("blocked", MentionStatus.BLOCKED)
        if entry.timestamp > int(now * 1000) + MAX_AHEAD_MS:
            return refuse("future", MentionStatus.BUSY)  # the sender may retry once our clock is near
        if self.store.has_entry(entry.id):  # the id covers the signature: the same bytes
            self.stats["mentions.duplicate"] += 1
            return MentionStatus.DUPLICATE, 0
        stranger = False
        if entry.kind == DELETE:
            # A retraction of a post we hold: no work needed, it only hides text.
            target = self.store.get(entry.target) if entry.target else None
            if target is None or target.entry.author != entry.author:
                return refuse("invalid", MentionStatus.INVALID)
        elif entry.kind != POST or own not in entry.mentions:
            return refuse("invalid", MentionStatus.INVALID)
        elif not self.store.within_follow_hops(own, entry.author):
            stranger = True
            admits = self._stranger_admits
            while admits and admits[0] <= now - DAY:
                admits.popleft()
            cap = self.stranger_mentions_per_day
            if len(admits) >= cap:
                return refuse("busy", MentionStatus.BUSY)  # the sender retries later
            # The fuller the day's window, the more work a stamp needs (up to
            # STRANGER_EXTRA_WORK bits more), so filling it is dear, not a minute of CPU.
            need = self.mention_work + len(admits) * STRANGER_EXTRA_WORK // cap
            if work_bits(NOTICE_DOMAIN, notice_subject(own, entry.id), stamp) < need:
                return refuse("work", MentionStatus.NEED_WORK, need)
        try:
            verify(entry.author, raw)
        except SignatureError:
            return refuse("invalid", MentionStatus.INVALID)
        try:
            self.store.add_loose(entry, int(now * 1000))
        except StorageFull:
            return refuse("storage_full", MentionStatus.BUSY)  # the sender retries later
        except DeviceRevokedError:
            return refuse("revoked", MentionStatus.INVALID)  # a revoked device's later entry
        if stranger:
            self._stranger_admits.append(now)
        self.stats["mentions.admitted"] += 1
        self.events.append(MentionAdmitted(sender, entry))
        return MentionStatus.ADMITTED, 0
