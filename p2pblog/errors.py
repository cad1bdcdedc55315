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
    "EntrySchemaError",
    "EntrySignatureError",
    "EntryTooLarge",
    "FeedForkedError",
    "LocalProtocolError",
    "P2PBlogError",
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


class ChainError(EntryError):
    """The entry does not extend the stored feed (wrong seq, gap or broken prev)."""


class FeedForkedError(ChainError):
    """The feed is forked: nothing past the fork is accepted."""


class StoreError(P2PBlogError):
    """The store cannot be opened or is from a newer version of p2pblog."""


class ListenError(P2PBlogError):
    """The node cannot listen where it was asked to (port in use, an address not ours)."""
