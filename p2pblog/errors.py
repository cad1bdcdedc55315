"""Declared errors of the p2pblog node library.

`EntryError` and its subclasses are what a peer's bad bytes can cause: the
codec and the store raise nothing else for them (the fuzz tests hold them to
it).  `LocalProtocolError` is misuse by our own code (h11's split).
"""

from __future__ import annotations

from identity.errors import LocalProtocolError

__all__ = [
    "ChainError",
    "EntryDecodeError",
    "EntryError",
    "EntryFromFuture",
    "EntrySchemaError",
    "EntrySignatureError",
    "EntryTooLarge",
    "FeedForkedError",
    "HeadUnknownError",
    "LocalProtocolError",
    "P2PBlogError",
    "StorageFull",
    "StoreDamaged",
    "StoreError",
]


class P2PBlogError(Exception):
    """Base of every error p2pblog declares."""


class EntryError(P2PBlogError):
    """An entry was refused.  Nothing of it was stored."""


class EntryDecodeError(EntryError):
    """The bytes are not a well-formed entry (truncated, malformed msgpack, bad UTF-8)."""


class EntryTooLarge(EntryError):
    """The entry or one of its fields is over a protocol limit."""


class EntrySchemaError(EntryError):
    """The entry is well-formed msgpack but not a valid entry of its kind."""


class EntrySignatureError(EntryError):
    """The signature does not verify against the entry's author."""


class EntryFromFuture(EntryError):
    """The entry's timestamp is more than `identity.limits.MAX_AHEAD_MS` ahead of our clock.

    Not the sender's fault (an honest peer relays what the author signed): it
    is refused for now and accepted once our clock is within the bound.
    """


class ChainError(EntryError):
    """The entry does not extend the stored feed (wrong seq, gap or broken prev)."""


class FeedForkedError(ChainError):
    """The feed is forked: nothing past the fork is accepted."""


class DeviceRevokedError(ChainError):
    """The feed is a device's that its identity revoked: nothing past the cut-off is accepted."""


class StoreError(P2PBlogError):
    """The store cannot be opened or is from a newer version of p2pblog."""


class ListenError(P2PBlogError):
    """The node cannot listen where it was asked to (port in use, an address not ours)."""


class StorageFull(StoreError):
    """The disk (or the store) is full: the write was refused and nothing of it was stored.

    The node stays up and serves what it holds; writes resume when space is freed.
    """


class StoreDamaged(StoreError):
    """The store file is damaged (SQLite: "database disk image is malformed", or its integrity
    check failed).  Nothing more is written to it (`p2pblog.store` records the damage next to
    the file, so every later command and process knows); what is still readable can be read,
    and the message says how to recover."""


class OwnFeedRefused(EntryError):
    """An append to our own feed was refused because it could fork the feed (another node
    runs with our key); the message says why and what to do."""


class HeadUnknownError(OwnFeedRefused):
    """Refused to sign an entry of the own feed: its head (latest seq) is not known here.

    Signing now could give a seq the feed already has elsewhere, a fork that makes
    every follower refuse the feed from then on (`p2pblog.own_head`).
    """
