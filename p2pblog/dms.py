"""Direct messages: sending ours, admitting others', and holding some for offline followees.

Theory of operation
-------------------
A direct message is sealed to its recipient (`identity.sealed`): only the
recipient opens it, and the sender's key is inside.  It never enters a feed.
`DirectMessages` does three jobs, each a small state machine over the store's
tables (`Store.dm_*`), so nothing is lost across a restart:

**Sending** (`send`, or `sync` after the offline CLI queued one).  The
message is stored as ``sent`` with state ``queued`` and its sealed bytes in
the outbox.  Like a mention notice (`p2pblog.mentions`) it first needs a
proof-of-work stamp over (recipient, message id), made by the driver
(`stamps_to_make` / `stamp_made`); then, when due:

1. connected to the recipient: send it (DM), and wait `DM_ACK_TIMEOUT` for
   the DM_ACK; ADMITTED or DUPLICATE make it ``delivered``; BLOCKED or
   INVALID end it as ``refused: ...``; NEED_WORK pays the work asked once;
2. not connected: keep dialling the recipient (`want_connection`), resolve
   its peer record, and retry `DM_RETRY_FIRST` seconds later, doubling up to
   `DM_RETRY_MAX`, at most `DM_ATTEMPTS` times (then ``undelivered``, or
   still ``held by N``);
3. from the second attempt on (`DEPOSIT_AFTER`), *deposit* it with up to `DM_HOLDERS` holders: peers that
   replicate the recipient's feed (connected peers whose clock names it, and
   the providers of that feed in the DHT, searched at most every
   `HOLDER_SEARCH_EVERY` seconds and dialled).  A holder answers HELD and
   delivers the message when the recipient connects to it (a follower
   connects to the author it follows as soon as the author is online), so
   the message arrives even if the sender is gone by then.  The sender keeps
   trying directly; the recipient answers a second copy DUPLICATE, which
   marks the message delivered.

**Admitting** (`arrived`, for a DM addressed to us).  Cheapest first: the
transmitting peer's token bucket (`DM_BURST`, `DM_RATE`); a duplicate id; the
seal and the signature (`open_sealed`); a blocked sender; a timestamp more
than a day ahead; the bounds (`DMS_PER_SENDER`, `DMS_PER_STRANGER`,
`DMS_TOTAL` stored); then the relationship: a sender we follow lands in the
*inbox*; a stranger needs a stamp of at least the node's work (plus up to
`STRANGER_EXTRA_WORK` bits as the day's window of `STRANGER_DMS_PER_DAY`
fills) and lands in *requests*.

**Holding** (`arrived`, for a DM addressed to someone else).  Only for a
recipient whose feed we replicate (we follow them) and do not block, with a
stamp of at least the node's work (a stranger cannot fill our disk for
free), within `HELD_PER_DEPOSITOR`, `HELD_PER_RECIPIENT` and `HELD_TOTAL`,
for `HOLD_FOR` seconds.  We cannot open it: it is sealed to the recipient.
We keep dialling the recipient (resolving its peer record every `HELD_RETRY`
seconds while we do not know where it is) and send the message on as soon as
it connects; its final answer removes it.

Everything is counted in ``stats`` under ``dms.``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gossip.messages import DmStatus
from identity import Identity
from identity.limits import MAX_AHEAD_MS, MENTION_WORK
from identity.pacing import KeyedTokenBuckets, backoff
from identity.pow import NOTICE_DOMAIN, notice_subject, work_bits
from identity.sealed import SealedError, check_text, dm_id, open_sealed, seal
from p2pblog.discovery import Discovery
from p2pblog.errors import StorageFull
from p2pblog.events import DmRefused, DmStateChanged, DmStored, ProvidersResolved
from p2pblog.mentions import DAY, STRANGER_EXTRA_WORK
from p2pblog.replication import DmAnswered, DmArrived, Replicator
from p2pblog.store import DmRow, Store

#: Delivery attempts straight to the recipient before giving up, the first retry delay
#: (doubling up to the ceiling: about 14 hours in all), and the wait for a DM_ACK.
DM_ATTEMPTS: Final = 20
DM_RETRY_FIRST: Final = 5.0
DM_RETRY_MAX: Final = 3600.0
DM_ACK_TIMEOUT: Final = 30.0
#: Holders a message is deposited with while its recipient is offline, and how often
#: the DHT is searched for them (providers of the recipient's feed).
DM_HOLDERS: Final = 2
HOLDER_SEARCH_EVERY: Final = 60.0
#: Direct attempts before a message is deposited with holders: the first try usually
#: dials a recipient that is online, and a deposit then would only make extra copies.
DEPOSIT_AFTER: Final = 2
#: Most work bits we pay when a recipient asks for more.
MAX_DM_STAMP_WORK: Final = 24
#: Per transmitting peer: a burst of DMs, then one every 1/DM_RATE seconds (a holder
#: delivering a backlog is paced too, and retries); peers tracked at most.
DM_BURST: Final = 64.0
DM_RATE: Final = 1.0
DM_PEERS: Final = 4096
#: Messages stored from one followed sender, from one stranger, and received in all.
DMS_PER_SENDER: Final = 10_000
DMS_PER_STRANGER: Final = 100
DMS_TOTAL: Final = 100_000
#: Strangers' messages admitted in any 24 hours (keys are free); the extra stamp bits
#: asked as that window fills are the mention notices' (`STRANGER_EXTRA_WORK`).
STRANGER_DMS_PER_DAY: Final = 500
#: Held for others: per depositing peer, per recipient, in all (about 4 KiB each at
#: most: 8.5 MB), and for how long.
HELD_PER_DEPOSITOR: Final = 64
HELD_PER_RECIPIENT: Final = 256
HELD_TOTAL: Final = 2048
HOLD_FOR: Final = 7 * DAY
#: How often a holder looks for a recipient it holds messages for (resolves its peer
#: record when unknown; it also delivers as soon as the recipient connects).
HELD_RETRY: Final = 300.0

DmEvent = DmStored | DmRefused | DmStateChanged
#: Outcomes that end a held message's delivery with its recipient (others retry later).
_RETRY: Final = frozenset({DmStatus.RATE_LIMITED, DmStatus.BUSY})


@dataclass(slots=True)
class _Outgoing:
    """One of our messages waiting for delivery (mirrors a row of ``dm_outbox``)."""

    recipient: bytes
    sealed: bytes
    #: The proof-of-work nonce; None until the driver made it.
    stamp: bytes | None
    work: int
    attempts: int
    next_at: float
    requested: bool = False
    #: Holders that said HELD, and peers that refused to hold it.
    holders: set[bytes] = field(default_factory=set)
    refused: set[bytes] = field(default_factory=set)
    #: Peers it was sent to and which have not answered yet.
    asked: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _Held:
    """A message we hold for ``recipient`` (mirrors a row of ``dm_held``)."""

    recipient: bytes
    depositor: bytes
    sealed: bytes
    stamp: bytes
    expires: float
    next_at: float = 0.0


class DirectMessages:
    """Sends, admits and holds direct messages (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        replicator: Replicator,
        discovery: Discovery,
        stats: Counter[str],
        now: float,
        *,
        random_bytes: Callable[[int], bytes],
        work: int = MENTION_WORK,
    ) -> None:
        self.identity = identity
        self.store = store
        self.replicator = replicator
        self.discovery = discovery
        self.stats = stats
        self.random_bytes = random_bytes
        #: Work bits a stranger's message (and a deposit) must carry; what ours carry.
        self.work = work
        self.events: deque[DmEvent] = deque()
        self._outgoing: dict[bytes, _Outgoing] = {}
        self._held: dict[bytes, _Held] = {}
        self._buckets = KeyedTokenBuckets(DM_RATE, DM_BURST, DM_PEERS)
        self._stranger_admits: deque[float] = deque()
        self.stranger_dms_per_day = STRANGER_DMS_PER_DAY
        #: When each recipient's holders were last searched in the DHT.
        self._holder_search: dict[bytes, float] = {}
        #: Peers we keep dialling for our messages (recipients and would-be holders).
        self._wanted: set[bytes] = set()
        #: When `deliver` is next due (None: nothing to do until an input).
        self.due_at: float | None = None
        for did, recipient, depositor, sealed, stamp, expires in store.dm_held():
            self._held[did] = _Held(recipient, depositor, sealed, stamp, expires / 1000)
        self.sync(now)

    # -- sending ----------------------------------------------------------------------

    def send(self, recipient: bytes, text: str, now: float) -> bytes:
        """Seal ``text`` to ``recipient``, store it and deliver it; returns its id.
        ValueError for a message the protocol refuses (empty, too long, to ourselves)."""
        if recipient == self.identity.public_key:
            raise ValueError("a message to yourself: there is nobody to send it to")
        if recipient in self.replicator.blocked:
            raise ValueError("you block this key: unblock it first")
        did = queue_dm(self.store, self.identity, recipient, text, int(now * 1000), self.random_bytes(32))
        self.sync(now)
        return did

    def sync(self, now: float) -> None:
        """Mirror the store's outbox (the offline CLI writes to it too) in memory."""
        rows = {row[0]: row for row in self.store.dm_outbox()}
        for did in [did for did in self._outgoing if did not in rows]:
            del self._outgoing[did]
        for did, (_, recipient, sealed, stamp, attempts) in rows.items():
            if did not in self._outgoing:
                work = _work(NOTICE_DOMAIN, recipient, did, stamp) if stamp else self.work
                self._outgoing[did] = _Outgoing(recipient, sealed, stamp or None, work, attempts, now)
                self._wake(now)

    def pending(self) -> list[tuple[bytes, bytes, int, int]]:
        """Messages not yet delivered: ``(id, recipient, attempts, holders)``."""
        return [(did, o.recipient, o.attempts, len(o.holders)) for did, o in self._outgoing.items()]

    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]:
        """``(id, recipient, bits)`` of messages that need a stamp (over NOTICE_DOMAIN and
        ``notice_subject(recipient, id)``, as a mention notice's)."""
        out = []
        for did, item in self._outgoing.items():
            if item.stamp is None and not item.requested:
                item.requested = True
                out.append((did, item.recipient, item.work))
        return out

    def stamp_made(self, did: bytes, recipient: bytes, nonce: bytes, now: float) -> None:
        item = self._outgoing.get(did)
        if item is None or item.recipient != recipient:
            return
        item.stamp, item.requested, item.next_at = nonce, False, now
        self._save(self.store.dm_outbox_update, did, nonce, item.attempts)
        self.deliver(now)

    def deliver(self, now: float) -> None:
        """Send due messages (and held ones) to connected recipients; deposit ours with
        holders; keep dialling (or resolving) the recipients of the others."""
        self.due_at = None
        replicator = self.replicator
        wanted: set[bytes] = set()
        resolving: set[bytes] = set()
        for did, item in list(self._outgoing.items()):
            recipient, stamp = item.recipient, item.stamp
            if stamp is None:
                continue
            wanted.add(recipient)
            if now >= item.next_at:
                if item.attempts >= DM_ATTEMPTS:
                    state = f"held by {len(item.holders)}" if item.holders else "undelivered"
                    self.stats["dms.undelivered"] += 1
                    self._finish(did, item, state)
                    continue
                item.attempts += 1
                self._save(self.store.dm_outbox_update, did, stamp, item.attempts)
                item.asked = {peer for peer in item.asked if replicator.is_connected(peer)}
                if replicator.send_dm(recipient, recipient, item.sealed, stamp, now):
                    item.asked.add(recipient)
                    item.next_at = now + DM_ACK_TIMEOUT
                else:
                    if replicator.known_address(recipient) is None and recipient not in resolving:
                        resolving.add(recipient)
                        self.discovery.resolve(recipient, now, consume=True)
                    item.next_at = now + backoff(item.attempts - 1, DM_RETRY_FIRST, DM_RETRY_MAX)
            if recipient not in item.asked and item.attempts >= DEPOSIT_AFTER:
                # Not on its way to the recipient after a first try (an online recipient is
                # usually dialled by then): leave it with holders meanwhile (between attempts
                # too, as holders connect or are found; that costs no attempt).
                wanted |= self._deposit(did, item, now)
            self._wake(item.next_at)
        wanted |= self._deliver_held(now, resolving)
        for peer in sorted(self._wanted - wanted):  # sorted: a set's order varies per process
            replicator.release_connection(peer)
        for peer in sorted(wanted - self._wanted):
            replicator.want_connection(peer, now)
        self._wanted = wanted

    def _deposit(self, did: bytes, item: _Outgoing, now: float) -> set[bytes]:
        """Hand the message to holders while fewer than `DM_HOLDERS` hold it; returns the
        would-be holders to keep dialling."""
        if len(item.holders) >= DM_HOLDERS:
            return set()
        recipient, replicator = item.recipient, self.replicator
        _, providers = self.discovery.last_providers.get(recipient, (0.0, frozenset()))
        skip = item.holders | item.refused | item.asked | {recipient, self.identity.public_key}
        candidates = [p for p in replicator.replicating(recipient) if p not in skip]
        candidates += sorted(p for p in providers if p not in skip and p not in candidates)
        dial: set[bytes] = set()
        for peer in candidates[: DM_HOLDERS - len(item.holders)]:
            assert item.stamp is not None
            if replicator.send_dm(peer, recipient, item.sealed, item.stamp, now):
                item.asked.add(peer)
                self.stats["dms.deposited"] += 1
            elif peer in providers:
                dial.add(peer)
        if not candidates and now >= self._holder_search.get(recipient, 0.0):
            self._holder_search[recipient] = now + HOLDER_SEARCH_EVERY
            self.stats["dms.holder_searches"] += 1
            self.discovery.find_providers(recipient, now)
        return dial

    def providers_found(self, result: ProvidersResolved, now: float) -> None:
        """A provider search ended: dial the holders it found for a recipient we wait on."""
        if not any(
            o.recipient == result.feed and len(o.holders) < DM_HOLDERS for o in self._outgoing.values()
        ):
            return
        for record in result.records:
            addr = record.addr("tcp")
            if addr is not None and record.signer != self.identity.public_key:
                self.replicator.learn_address(record.signer, *addr, now)
        self._wake(now)

    def answered(self, answer: DmAnswered, now: float) -> None:
        """A peer acknowledged one of our messages, or one we held for it."""
        held = self._held.get(answer.dm_id)
        if held is not None and answer.peer == held.recipient:
            self._held_answered(answer, held, now)
            return
        item = self._outgoing.get(answer.dm_id)
        if item is None:
            return
        item.asked.discard(answer.peer)
        status = answer.status
        if answer.peer != item.recipient:  # a would-be holder
            if status == DmStatus.HELD:
                item.holders.add(answer.peer)
                self.stats["dms.held_by_peer"] += 1
                self._state(answer.dm_id, item, f"held by {len(item.holders)}")
            elif status in (DmStatus.DUPLICATE, DmStatus.ADMITTED):
                item.holders.add(answer.peer)  # it holds it already
            else:
                item.refused.add(answer.peer)
            self._wake(now)
            return
        if status == DmStatus.NEED_WORK and item.work < answer.need <= MAX_DM_STAMP_WORK:
            item.stamp, item.work, item.next_at = None, answer.need, now
            self._save(self.store.dm_outbox_update, answer.dm_id, b"", item.attempts)
            return
        if status in _RETRY:
            item.next_at = now + backoff(item.attempts, DM_RETRY_FIRST, DM_RETRY_MAX)
            self._wake(item.next_at)
            return
        if status in (DmStatus.ADMITTED, DmStatus.DUPLICATE):
            self.stats["dms.delivered"] += 1
            self._finish(answer.dm_id, item, "delivered")
            return
        self.stats["dms.refused_by_peer"] += 1
        reason = status.name.lower() if isinstance(status, DmStatus) else f"status {status}"
        self._finish(answer.dm_id, item, f"refused: {reason}")

    def _state(self, did: bytes, item: _Outgoing, state: str) -> None:
        self._save(self.store.dm_set_state, did, state)
        self.events.append(DmStateChanged(did, item.recipient, state))

    def _finish(self, did: bytes, item: _Outgoing, state: str) -> None:
        del self._outgoing[did]
        self._save(self.store.dm_outbox_done, did, state)
        self.events.append(DmStateChanged(did, item.recipient, state))

    def peer_connected(self, peer: bytes, now: float) -> None:
        """Send the peer's messages (ours, and those we hold for it) now."""
        for item in self._outgoing.values():
            if (
                item.recipient == peer
                or peer in self.discovery.last_providers.get(item.recipient, (0, ()))[1]
            ):
                item.next_at = min(item.next_at, now)
                self._wake(now)
        for held in self._held.values():
            if held.recipient == peer:
                held.next_at = min(held.next_at, now)
                self._wake(now)

    def recipient_found(self, peer: bytes, now: float) -> None:
        """A peer record was resolved: dial it now if we have messages for it."""
        if peer in self._wanted:
            self.replicator.want_connection(peer, now)

    # -- admitting and holding ----------------------------------------------------------

    def arrived(self, message: DmArrived, now: float) -> tuple[int, int]:
        """Decide on a DM: ``(DmStatus, work bits needed)``; refusals are counted under
        ``dms.refused_<reason>`` and reported as `DmRefused`."""
        did = dm_id(message.sealed)
        if not self._buckets.take(message.peer, now):
            return self._refuse(message.peer, "rate", DmStatus.RATE_LIMITED)
        if message.recipient != self.identity.public_key:
            return self._hold(message, did, now)
        if self.store.dm_has(did):
            self.stats["dms.duplicate"] += 1
            return DmStatus.DUPLICATE, 0
        try:
            dm = open_sealed(self.identity, message.sealed)
        except SealedError:
            return self._refuse(message.peer, "invalid", DmStatus.INVALID)
        # A device writes for its identity (`p2pblog.devices`): the conversation, the block
        # and the follow are the identity's.
        sender = self.store.identity_of(dm.sender)
        blocked = self.replicator.blocked
        if sender in blocked or dm.sender in blocked:
            return self._refuse(message.peer, "blocked", DmStatus.BLOCKED)
        if sender == self.identity.public_key:
            return self._refuse(message.peer, "invalid", DmStatus.INVALID)
        if dm.timestamp > int(now * 1000) + MAX_AHEAD_MS:
            return self._refuse(message.peer, "future", DmStatus.BUSY)
        followed = sender in self.store.following(self.identity.public_key)
        mine, total = self.store.dm_counts(sender)
        if total >= DMS_TOTAL or mine >= (DMS_PER_SENDER if followed else DMS_PER_STRANGER):
            return self._refuse(message.peer, "full", DmStatus.BUSY)
        if not followed:
            admits = self._stranger_admits
            while admits and admits[0] <= now - DAY:
                admits.popleft()
            cap = self.stranger_dms_per_day
            if len(admits) >= cap:
                return self._refuse(message.peer, "busy", DmStatus.BUSY)
            need = self.work + len(admits) * STRANGER_EXTRA_WORK // cap
            if _work(NOTICE_DOMAIN, self.identity.public_key, did, message.stamp) < need:
                return self._refuse(message.peer, "work", DmStatus.NEED_WORK, need)
        folder = "inbox" if followed else "requests"
        row = DmRow(did, sender, folder, dm.timestamp, int(now * 1000), dm.text, True, "")
        try:
            self.store.dm_add(row)
        except StorageFull:
            return self._refuse(message.peer, "storage_full", DmStatus.BUSY)
        if not followed:
            self._stranger_admits.append(now)
        self.stats[f"dms.admitted_{folder}"] += 1
        self.events.append(DmStored(sender, did, folder))
        return DmStatus.ADMITTED, 0

    def _refuse(self, peer: bytes, reason: str, status: DmStatus, need: int = 0) -> tuple[int, int]:
        self.stats[f"dms.refused_{reason}"] += 1
        self.events.append(DmRefused(peer, reason))
        return status, need

    def _hold(self, message: DmArrived, did: bytes, now: float) -> tuple[int, int]:
        recipient, peer = message.recipient, message.peer
        if recipient not in self.replicator.wanted or recipient in self.replicator.blocked:
            return self._refuse(peer, "hold_not_followed", DmStatus.REFUSED)
        if did in self._held:
            self.stats["dms.hold_duplicate"] += 1
            return DmStatus.DUPLICATE, 0
        if _work(NOTICE_DOMAIN, recipient, did, message.stamp) < self.work:
            return self._refuse(peer, "hold_work", DmStatus.NEED_WORK, self.work)
        held = self._held.values()
        if (
            len(self._held) >= HELD_TOTAL
            or sum(1 for h in held if h.depositor == peer) >= HELD_PER_DEPOSITOR
            or sum(1 for h in held if h.recipient == recipient) >= HELD_PER_RECIPIENT
        ):
            return self._refuse(peer, "hold_full", DmStatus.REFUSED)
        expires = now + HOLD_FOR
        try:
            self.store.dm_hold(did, recipient, peer, message.sealed, message.stamp, int(expires * 1000))
        except StorageFull:
            return self._refuse(peer, "storage_full", DmStatus.BUSY)
        self._held[did] = _Held(recipient, peer, message.sealed, message.stamp, expires, now)
        self.stats["dms.holding"] += 1
        self._wake(now)
        return DmStatus.HELD, 0

    def _deliver_held(self, now: float, resolving: set[bytes]) -> set[bytes]:
        """Send held messages to recipients that are connected; returns the recipients to
        keep dialling (their peer records resolved when we do not know where they are)."""
        wanted: set[bytes] = set()
        for did, held in list(self._held.items()):
            if now >= held.expires:
                self.stats["dms.hold_expired"] += 1
                self._unhold(did)
                continue
            wanted.add(held.recipient)
            if now < held.next_at:
                self._wake(held.next_at)
                continue
            if self.replicator.send_dm(held.recipient, held.recipient, held.sealed, held.stamp, now):
                self.stats["dms.held_sent"] += 1
                held.next_at = now + DM_ACK_TIMEOUT
            else:
                recipient = held.recipient
                if self.replicator.known_address(recipient) is None and recipient not in resolving:
                    resolving.add(recipient)
                    self.discovery.resolve(recipient, now, consume=True)
                held.next_at = now + HELD_RETRY  # or sooner, when the recipient connects
            self._wake(min(held.expires, held.next_at))
        return wanted

    def _held_answered(self, answer: DmAnswered, held: _Held, now: float) -> None:
        if answer.status in _RETRY:
            held.next_at = now + DM_RETRY_FIRST
            self._wake(held.next_at)
            return
        self.stats[
            "dms.held_delivered"
            if answer.status in (DmStatus.ADMITTED, DmStatus.DUPLICATE)
            else "dms.held_refused"
        ] += 1
        self._unhold(answer.dm_id)

    def _unhold(self, did: bytes) -> None:
        self._held.pop(did, None)
        self._save(self.store.dm_unhold, did)

    # -- shared -------------------------------------------------------------------------

    def _wake(self, at: float) -> None:
        self.due_at = at if self.due_at is None else min(self.due_at, at)

    def _save(self, write: Callable[..., None], *args: object) -> None:
        """Write to the store; on a full disk skip and count (``dms.unsaved``): memory goes
        on delivering, and after a restart at worst one message is sent again (DUPLICATE)."""
        try:
            write(*args)
        except StorageFull:
            self.stats["dms.unsaved"] += 1

    @property
    def held_count(self) -> int:
        return len(self._held)


def _work(domain: bytes, recipient: bytes, did: bytes, stamp: bytes) -> int:
    return work_bits(domain, notice_subject(recipient, did), stamp) if stamp else 0


def queue_dm(
    store: Store, identity: Identity, recipient: bytes, text: str, now_ms: int, seed: bytes
) -> bytes:
    """Seal a message, store it as sent and queue it for delivery (the node's `send` and the
    offline CLI); returns its id.  ValueError for a text the protocol refuses."""
    # Sealed to the identity's current root key (`p2pblog.devices.roots`), which its
    # node runs with after a rotation; the conversation stays the identity's.
    root = store.root_chain(recipient)[-1][0]
    sealed = seal(identity, root, now_ms, text, seed)
    did = dm_id(sealed)
    # The stored copy is the text as sealed (NFC).
    row = DmRow(did, recipient, "sent", now_ms, now_ms, check_text(text), False, "queued")
    store.dm_add(row, (root, sealed))
    return did
