"""Root key rotation and recovery (pre-rotation, as in KERI): writing it, and learning of it.

Theory of operation
-------------------
The rules are `p2pblog.devices.roots`.  This module writes the entries and
carries them to followers:

* `commit` (``p2pblog identity rotate``, the first time): the current root
  appends ``commit {next: key_digest(K1)}``; K1's secret is shown once as a
  BIP-39 phrase for the user to keep offline.  Only the identity's first
  commitment counts.
* `rotate` (``identity rotate`` again, with K1's phrase): the current root
  appends ``rotate {identity, new: K1, next: key_digest(K2), cut: 0}`` (its
  feed ends there), the home's key becomes K1, and K1's feed starts with a
  follow of the identity and of everyone the identity followed.  K2 is the new
  offline key.
* `recover` (``identity recover``, with K1's phrase, when the current root is
  stolen): K1's own feed starts with ``rotate {identity, new: K1, next, cut}``
  signed by K1; the old root's entries after ``cut`` stop counting.

Followers replicate the root's feed, so they see a planned rotation as soon as
it is written.  A recovery sits in a feed they do not replicate yet, so the
new root keeps a *key-event record* in the DHT (``keyevent_key(identity)``:
the signed ``rotate`` entry), and a follower looks that key up for each
identity it follows that has a commitment, every `KEYEVENT_POLL` seconds
(`KeyEvents`); an entry that reveals the committed key is stored like any
entry, and the identity's roots are resolved again.  So followers move to a
new root within `KEYEVENT_POLL` seconds, with nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from dht import DhtCore
from dht.providers import MAX_PROVIDERS_PER_KEY
from identity import Identity
from identity.records import Record, create_keyevent_record, keyevent_key
from p2pblog.devices import key_digest
from p2pblog.entry import COMMIT, FOLLOW, ROTATE, Entry
from p2pblog.pairing import IDENTITY_SETTING, KeptRecords, identity_of_home
from p2pblog.queries import FindKeyEvent, PendingQueries
from p2pblog.store import Store

#: How often a follower looks up each followed identity's key-event record, and how long
#: a new root keeps its own there.
KEYEVENT_POLL: Final = 300.0
KEYEVENT_TTL: Final = 30 * 86_400


class RotationError(ValueError):
    """A rotation or recovery that cannot be made (the message says why)."""


def commit(store: Store, root: Identity, next_key: bytes, now_ms: int) -> Entry:
    """Commit the identity (whose current root is ``root``) to its next root key."""
    identity = identity_of_home(store, root.public_key)
    if store.current_commitment(identity) is not None:
        raise RotationError("this identity has a committed next key already: `identity rotate` uses it")
    if identity != root.public_key:
        raise RotationError("only the identity's first root commits without a rotation")
    return store.append(root, COMMIT, {"next": key_digest(next_key)}, now_ms)


def rotate(store: Store, root: Identity, new: Identity, after_next: bytes, now_ms: int) -> Entry:
    """A planned rotation from ``root`` to the committed ``new``; returns the rotate entry.
    The caller makes ``new`` the home's key."""
    identity = identity_of_home(store, root.public_key)
    chain = store.root_chain(identity)
    if chain[-1][0] != root.public_key:
        raise RotationError("this node's key is not the identity's current root")
    _check_committed(store, identity, new)
    body = {"cut": 0, "identity": identity, "new": new.public_key, "next": key_digest(after_next)}
    entry = store.append(root, ROTATE, body, now_ms)
    start_feed(store, new, identity, root.public_key, now_ms)
    return entry


def recover(store: Store, identity: bytes, new: Identity, after_next: bytes, cut: int, now_ms: int) -> Entry:
    """A recovery: ``new`` (the committed key) takes the identity over; the current root's
    entries after ``cut`` stop counting.  Returns the rotate entry (``new``'s first).

    Checked against the commitment when this store holds the identity's feed; on a new
    machine that holds nothing, followers check it (they refuse a key nobody committed to)."""
    if store.latest_seq(identity):
        _check_committed(store, identity, new)
    if store.latest_seq(new.public_key):
        raise RotationError("the recovery key has a feed already: it must start with the recovery")
    current = store.root_chain(identity)[-1][0]
    body = {"cut": cut, "identity": identity, "new": new.public_key, "next": key_digest(after_next)}
    entry = store.append(new, ROTATE, body, now_ms)
    start_feed(store, new, identity, current, now_ms, first=False)
    return entry


def _check_committed(store: Store, identity: bytes, new: Identity) -> None:
    commitment = store.current_commitment(identity)
    if commitment is None:
        raise RotationError("this identity has no committed next key: run `p2pblog identity rotate` first")
    if key_digest(new.public_key) != commitment:
        raise RotationError("that key is not the one this identity committed to (check the phrase)")


def start_feed(
    store: Store, new: Identity, identity: bytes, old: bytes, now_ms: int, *, first: bool = True
) -> None:
    """The new root's feed: it follows the identity (its earlier feeds and devices) and
    whoever the identity's previous root followed, and the home speaks for the identity."""
    del first
    for feed in sorted({identity, *store.following(old)} - {new.public_key}):
        if feed not in store.following(new.public_key):
            store.append(new, FOLLOW, {"feed": feed}, now_ms)
    store.set_setting(IDENTITY_SETTING, identity.hex() if identity != new.public_key else "")


class KeyEvents:
    """Keeps our own latest rotation in the DHT; looks up the followed identities' ones."""

    def __init__(
        self, identity: Identity, store: Store, dht: DhtCore, queries: PendingQueries, kept: KeptRecords
    ):
        self.identity = identity
        self.store = store
        self.dht = dht
        self.queries = queries
        self.kept = kept
        self._next_poll: dict[bytes, float] = {}
        self._published: bytes | None = None
        #: Seconds between lookups of one followed identity's key-event record.
        self.poll_every = KEYEVENT_POLL
        #: Whether each identity has a commitment, as of a `Store.devices_version` (which
        #: moves whenever a commit or rotate entry is stored): a maintenance pass then costs
        #: a dictionary lookup per followed identity, not store queries.
        self._committed: dict[bytes, tuple[int, bool]] = {}
        self._publish_checked = -1

    def maintain(self, followed: Iterable[bytes], own_identity: bytes, now: float) -> float | None:
        """Publish our rotation if it changed; look up followed identities when due."""
        self._publish(own_identity, now)
        if not len(self.dht.table):
            return None
        due: float | None = None
        version = self.store.devices_version
        committed = self._committed
        for identity in followed:
            known = committed.get(identity)
            if known is None or known[0] != version:
                known = committed[identity] = (version, self.store.current_commitment(identity) is not None)
            if not known[1]:
                continue  # it cannot rotate: nothing to look for
            at = self._next_poll.get(identity, now)
            if now >= at:
                at = self._next_poll[identity] = now + self.poll_every
                qid = self.dht.start_get_providers(keyevent_key(identity), now, want=MAX_PROVIDERS_PER_KEY)
                self.queries.add(qid, FindKeyEvent(identity))
            due = at if due is None else min(due, at)
        return due

    def _publish(self, own_identity: bytes, now: float) -> None:
        own = self.identity.public_key
        if own_identity == own or self._publish_checked == self.store.devices_version:
            return
        self._publish_checked = self.store.devices_version
        if self.store.root_chain(own_identity)[-1][0] != own:
            return
        entries = self.store.rotation_entries(own_identity)
        if not entries or entries[-1] == self._published:
            return
        latest = self._published = entries[-1]

        def make(seq: int, expires: int) -> Record:
            return create_keyevent_record(
                self.identity, about=own_identity, entry=latest, seq=seq, expires=expires
            )

        self.kept.keep(keyevent_key(own_identity), make, KEYEVENT_TTL, now)
