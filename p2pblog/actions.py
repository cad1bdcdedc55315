"""Writes to the own feed that the running node and the offline CLI share.

Each function signs and stores one entry (and what goes with it) in one
place, so ``p2pblog post`` does the same thing whether it goes through the
running node or, with no node running, straight to the store:

* a post that mentions other keys (a reply mentions its parent's author)
  queues one *mention notice* per key in the store's outbox; the node
  delivers them when it runs (`p2pblog.node`);
* a delete retracts one of our own posts and queues notices to the keys the
  post mentioned, so that they hide its text too;
* a block also unfollows.

They raise `p2pblog.errors.EntryError` for what the protocol refuses, with a
message fit for the user.
"""

from __future__ import annotations

from collections.abc import Callable

from identity import Identity
from identity.pow import NAME_DOMAIN, name_subject, solve
from p2pblog.entry import DELETE, POST, PROFILE, UNFOLLOW, Entry, post_body
from p2pblog.errors import EntrySchemaError
from p2pblog.store import Store


def _queue_mentions(store: Store, identity: Identity, entry: Entry, recipients: tuple[bytes, ...]) -> None:
    blocked = {key for key, _ in store.blocks()}
    for recipient in recipients:
        if recipient != identity.public_key and recipient not in blocked:
            store.outbox_add(entry.id, recipient, b"")


def post(
    store: Store, identity: Identity, text: str, timestamp: int, *, reply_to: bytes | None = None
) -> Entry:
    """Append a post; queue notices to the keys it mentions (a reply mentions the parent's author)."""
    parent = store.get(reply_to) if reply_to is not None else None
    if parent is not None and parent.entry.kind != POST:
        raise EntrySchemaError(f"the entry replied to is a {parent.entry.kind}, not a post")
    also = parent.entry.author if parent is not None and parent.entry.author != identity.public_key else None
    with store.transaction():
        entry = store.append(identity, POST, post_body(text, reply_to, also_mention=also), timestamp)
        _queue_mentions(store, identity, entry, entry.mentions)
    return entry


def delete(store: Store, identity: Identity, target: bytes, timestamp: int) -> Entry:
    """Retract one of our own posts; queue notices to the keys it mentioned.

    Raises `EntrySchemaError` for an entry that is not ours, not a post, or already deleted."""
    item = store.get(target)
    if item is None or item.entry.author != identity.public_key:
        raise EntrySchemaError("no post of this node's own feed has that id")
    if item.entry.kind != POST:
        raise EntrySchemaError(f"entry #{item.entry.seq} is a {item.entry.kind} entry, not a post")
    if item.deleted:
        raise EntrySchemaError(f"post #{item.entry.seq} is already deleted")
    with store.transaction():
        entry = store.append(identity, DELETE, {"target": target}, timestamp)
        _queue_mentions(store, identity, entry, item.entry.mentions)
    return entry


def set_profile(store: Store, identity: Identity, fields: dict[str, str], timestamp: int) -> Entry:
    """Append a profile entry setting ``fields`` (``name``, ``bio``)."""
    return store.append(identity, PROFILE, dict(fields), timestamp)


def block(store: Store, identity: Identity, key: bytes, timestamp: int) -> tuple[bool, Entry | None]:
    """Block key (and unfollow it if followed): (newly blocked, the unfollow entry or None)."""
    if key == identity.public_key:
        raise ValueError("a node cannot block itself")
    with store.transaction():
        new = store.block(key, timestamp)
        unfollowed = None
        if key in store.following(identity.public_key):
            unfollowed = store.append(identity, UNFOLLOW, {"feed": key}, timestamp)
        store.outbox_remove_recipient(key)
    return new, unfollowed


def held_stamp(store: Store, name: str, work: int) -> tuple[int, bytes] | None:
    """The (claimed time, nonce) of our stored claim of name if it has ``work`` bits or more."""
    for held, claimed, nonce, held_work in store.name_claims():
        if held == name and held_work >= work:
            return claimed, nonce
    return None


def new_stamp(
    own: bytes, name: str, work: int, now_s: int, *, progress: Callable[[int], None] | None = None
) -> tuple[int, bytes]:
    """A new claim of name made now: (claimed time, nonce with ``work`` bits).  Takes
    about 2**work hashes; ``progress(tries)`` is called as `identity.pow.solve` says (it
    may raise to stop).  Touches no store, so it can run on another thread."""
    return now_s, solve(NAME_DOMAIN, name_subject(own, name, now_s), work, progress=progress)
