"""Entries: the signed, hash-chained records that make up a feed.

Theory of operation
-------------------
An entry on the wire and on disk is exactly the bytes its author signed::

    signed = signature (64 bytes) || content
    content = msgpack [1, author, seq, prev, timestamp, kind, body]

``author`` is the 32-byte Ed25519 public key, ``seq`` counts from 1, ``prev``
is the id of entry ``seq - 1`` (nil for seq 1), ``timestamp`` is integer
milliseconds since the epoch, ``kind`` a string and ``body`` a map whose schema
depends on the kind.  The id of an entry is BLAKE2b-256 of ``signed``.

Bytes are never re-encoded: `decode_entry` checks that the content is in the
one canonical encoding (what ``msgpack.packb`` produces, body keys sorted), so
the same logical entry cannot travel as two byte strings with two ids.

`decode_entry` is the only door for bytes from elsewhere.  It is bounded by
`MAX_ENTRY_BYTES` before msgpack sees anything, and it raises only
`EntryError` subclasses (the fuzz tests in ``tests/test_entry_fuzz.py`` hold
it to that).  It checks everything that can be checked from the entry alone:
size, encoding, schema and signature.  Whether the entry extends a feed (seq,
prev, forks) is the store's job, because it needs the feed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from identity import Identity, SignatureError, decode_handle, encode_handle, limits, verify
from identity.handle import HandleError
from identity.keys import SIGNATURE_BYTES
from p2pblog.errors import (
    EntryDecodeError,
    EntrySchemaError,
    EntrySignatureError,
    EntryTooLarge,
    LocalProtocolError,
)

FORMAT_VERSION: Final = 1
ID_BYTES: Final = 32
KEY_BYTES: Final = 32

POST: Final = "post"
FOLLOW: Final = "follow"
UNFOLLOW: Final = "unfollow"
PROFILE: Final = "profile"
DELETE: Final = "delete"
#: Devices (`p2pblog.devices`): a certificate of a device key by its identity's root (or an
#: admin device), the device's acceptance naming its identity, and a revocation.
DEVICE: Final = "device"
DEVICE_OF: Final = "device_of"
REVOKE: Final = "revoke"
#: Root key rotation with pre-rotation (`p2pblog.devices.roots`): a commitment to the next
#: root key's digest, and a rotation that reveals it (by the current root, or a recovery).
COMMIT: Final = "commit"
ROTATE: Final = "rotate"
KINDS: Final = (POST, FOLLOW, UNFOLLOW, PROFILE, DELETE, DEVICE, DEVICE_OF, REVOKE, COMMIT, ROTATE)
#: Longest device name, in characters of a-z, 0-9, _ and - (like a name claim's).
MAX_DEVICE_NAME_CHARS: Final = 32
_DEVICE_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,32}")

_MENTION_RE: Final = re.compile(r"@pb1[0-9a-z]{58}(?![0-9a-z])", re.IGNORECASE)


def entry_id(signed: bytes) -> bytes:
    """BLAKE2b-256 of the signed bytes."""
    return hashlib.blake2b(signed, digest_size=ID_BYTES).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded, validated entry.  ``raw`` is the signed bytes; the rest is derived."""

    raw: bytes
    id: bytes
    author: bytes
    seq: int
    prev: bytes | None
    timestamp: int
    kind: str
    body: Mapping[str, Any]

    @property
    def text(self) -> str | None:
        text = self.body.get("text")
        return text if isinstance(text, str) else None

    @property
    def reply_to(self) -> bytes | None:
        value = self.body.get("reply_to")
        return value if isinstance(value, bytes) else None

    @property
    def mentions(self) -> tuple[bytes, ...]:
        return tuple(self.body.get("mentions", ()))

    @property
    def feed(self) -> bytes | None:
        """The followed or unfollowed feed of a follow/unfollow entry."""
        value = self.body.get("feed")
        return value if isinstance(value, bytes) else None

    @property
    def target(self) -> bytes | None:
        """The retracted entry id of a delete entry."""
        value = self.body.get("target")
        return value if isinstance(value, bytes) else None


# --- body schemas -------------------------------------------------------------
# One validator per kind: data, in one table, so adding a kind is one line here
# plus one function.  Validators raise EntrySchemaError / EntryTooLarge.


def _need_key(body: Mapping[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise EntrySchemaError(f"{name!r} must be {KEY_BYTES} bytes")
    return value


def _text(body: Mapping[str, Any], name: str, limit: int, *, required: bool) -> None:
    if name not in body:
        if required:
            raise EntrySchemaError(f"{name!r} is required")
        return
    value = body[name]
    if not isinstance(value, str):
        raise EntrySchemaError(f"{name!r} must be text")
    try:
        # Lone surrogates (how Python carries undecodable argv bytes) have no UTF-8 form.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EntrySchemaError(f"{name!r} is not valid UTF-8 text") from None
    if len(value) > limit:
        raise EntryTooLarge(f"{name!r} is {len(value)} characters; the limit is {limit}")


def _check_post(body: Mapping[str, Any]) -> None:
    _text(body, "text", limits.MAX_POST_CHARS, required=True)
    if not body["text"].strip():
        raise EntrySchemaError("a post's text is empty")
    if "reply_to" in body:
        value = body["reply_to"]
        if not isinstance(value, bytes) or len(value) != ID_BYTES:
            raise EntrySchemaError(f"'reply_to' must be a {ID_BYTES}-byte entry id")
    if "mentions" in body:
        mentions = body["mentions"]
        if not isinstance(mentions, list) or not mentions:
            raise EntrySchemaError("'mentions' must be a non-empty list")
        if len(mentions) > limits.MAX_MENTIONS:
            raise EntryTooLarge(f"a post mentions at most {limits.MAX_MENTIONS} keys")
        if any(not isinstance(m, bytes) or len(m) != KEY_BYTES for m in mentions):
            raise EntrySchemaError(f"each mention must be a {KEY_BYTES}-byte key")
        if len(set(mentions)) != len(mentions):
            raise EntrySchemaError("'mentions' has duplicates")


def _check_follow(body: Mapping[str, Any]) -> None:
    _need_key(body, "feed")


def _check_profile(body: Mapping[str, Any]) -> None:
    if not body:
        raise EntrySchemaError("a profile entry sets at least one field")
    _text(body, "name", limits.MAX_PROFILE_NAME_CHARS, required=False)
    _text(body, "bio", limits.MAX_PROFILE_BIO_CHARS, required=False)


def _check_delete(body: Mapping[str, Any]) -> None:
    value = body.get("target")
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise EntrySchemaError(f"'target' must be a {ID_BYTES}-byte entry id")


def _check_device(body: Mapping[str, Any]) -> None:
    _need_key(body, "device")
    name = body.get("name")
    if not isinstance(name, str) or _DEVICE_NAME_RE.fullmatch(name) is None:
        raise EntrySchemaError(f"'name' is 1-{MAX_DEVICE_NAME_CHARS} characters of a-z, 0-9, _ and -")
    if not isinstance(body.get("admin"), bool):
        raise EntrySchemaError("'admin' must be true or false")


def _check_device_of(body: Mapping[str, Any]) -> None:
    _need_key(body, "identity")


def _check_revoke(body: Mapping[str, Any]) -> None:
    _need_key(body, "device")
    after = body.get("after")
    if type(after) is not int or not 0 <= after <= limits.MAX_SEQ:
        raise EntrySchemaError(f"'after' must be a seq, 0..{limits.MAX_SEQ}")


def _check_commit(body: Mapping[str, Any]) -> None:
    _need_key(body, "next")


def _check_rotate(body: Mapping[str, Any]) -> None:
    for name in ("identity", "new", "next"):
        _need_key(body, name)
    cut = body.get("cut")
    if type(cut) is not int or not 0 <= cut <= limits.MAX_SEQ:
        raise EntrySchemaError(f"'cut' must be a seq, 0..{limits.MAX_SEQ}")


_SCHEMAS: Final[dict[str, tuple[frozenset[str], Callable[[Mapping[str, Any]], None]]]] = {
    POST: (frozenset({"text", "reply_to", "mentions"}), _check_post),
    FOLLOW: (frozenset({"feed"}), _check_follow),
    UNFOLLOW: (frozenset({"feed"}), _check_follow),
    PROFILE: (frozenset({"name", "bio"}), _check_profile),
    DELETE: (frozenset({"target"}), _check_delete),
    DEVICE: (frozenset({"admin", "device", "name"}), _check_device),
    DEVICE_OF: (frozenset({"identity"}), _check_device_of),
    REVOKE: (frozenset({"after", "device"}), _check_revoke),
    COMMIT: (frozenset({"next"}), _check_commit),
    ROTATE: (frozenset({"cut", "identity", "new", "next"}), _check_rotate),
}


def validate_body(kind: str, body: Mapping[str, Any]) -> None:
    """Raise an `EntryError` unless body is valid for kind."""
    if len(body) == 1 and kind == POST:
        # The commonest body, a post that is only ASCII text, in one step: anything
        # this accepts, the checks below accept too (no surrogates in ASCII).
        text = body.get("text")
        if type(text) is str and text.isascii() and len(text) <= limits.MAX_POST_CHARS and text.strip():
            return
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise EntrySchemaError(f"unknown entry kind {kind!r}")
    allowed, check = schema
    keys = list(body)
    # The common case in one test: every name known (so text) and in order.
    if not allowed.issuperset(keys) or (len(keys) > 1 and keys != sorted(keys)):
        if not all(isinstance(key, str) for key in keys):  # msgpack maps may have bytes keys too
            raise EntrySchemaError("body field names must be text")
        unknown = set(keys) - allowed
        if unknown:
            # repr: the names come from a peer and end up on a terminal.
            raise EntrySchemaError(f"unknown field(s) for {kind}: {', '.join(map(repr, sorted(unknown)))}")
        raise EntrySchemaError("body keys are not in canonical (sorted) order")
    check(body)


# --- encoding -----------------------------------------------------------------

# `Entry(...)` without the frozen dataclass's generic ``__init__`` (one
# ``object.__setattr__`` by name per field): the slots' own setters, half the
# cost, on the paths every entry takes (decoded from elsewhere, or created here).
_new_entry: Final = object.__new__
(_set_raw, _set_id, _set_author, _set_seq, _set_prev, _set_timestamp, _set_kind, _set_body) = (
    Entry.__dict__[field.name].__set__ for field in dataclasses.fields(Entry)
)


def _make_entry(
    raw: bytes,
    id: bytes,
    author: bytes,
    seq: int,
    prev: bytes | None,
    timestamp: int,
    kind: str,
    body: Mapping[str, Any],
) -> Entry:
    """``Entry(...)`` through the slots' setters (see above), for values already checked."""
    entry = _new_entry(Entry)
    _set_raw(entry, raw)
    _set_id(entry, id)
    _set_author(entry, author)
    _set_seq(entry, seq)
    _set_prev(entry, prev)
    _set_timestamp(entry, timestamp)
    _set_kind(entry, kind)
    _set_body(entry, body)
    return entry


_packb: Final = msgpack.packb
_blake2b: Final = hashlib.blake2b


def encode_content(
    author: bytes, seq: int, prev: bytes | None, timestamp: int, kind: str, body: Mapping[str, Any]
) -> bytes:
    """The canonical content bytes of an entry (what gets signed)."""
    ordered = {k: body[k] for k in sorted(body)}
    content: bytes = msgpack.packb([FORMAT_VERSION, author, seq, prev, timestamp, kind, ordered])
    return content


def create_entry(
    identity: Identity,
    *,
    seq: int,
    prev: bytes | None,
    timestamp: int,
    kind: str,
    body: Mapping[str, Any],
) -> Entry:
    """Sign a new entry of identity's feed.

    Invalid field values raise the same `EntryError`s a peer's entry would,
    so the CLI can report them; wrong chain arguments are our own bug.
    """
    # ``type(x) is int``: exactly what a decoder gives back (not a bool, nor an int subclass).
    if type(seq) is not int or not 1 <= seq <= limits.MAX_SEQ:
        raise LocalProtocolError(f"seq must be 1..{limits.MAX_SEQ}, got {seq!r}")
    if (seq == 1) != (prev is None) or (prev is not None and len(prev) != ID_BYTES):
        raise LocalProtocolError("prev must be None for seq 1 and a 32-byte id after")
    if type(timestamp) is not int or not 0 <= timestamp <= limits.MAX_TIMESTAMP_MS:
        raise EntrySchemaError(f"timestamp out of range: {timestamp!r}")
    # A copy, sorted (one key is sorted already): the entry must not share the caller's dict.
    ordered = dict(body) if len(body) == 1 else {k: body[k] for k in sorted(body)}
    validate_body(kind, ordered)
    author = identity.public_key
    # encode_content's bytes, without sorting the body a second time.
    signed = identity.sign(_packb([FORMAT_VERSION, author, seq, prev, timestamp, kind, ordered]))
    if len(signed) > limits.MAX_ENTRY_BYTES:
        raise EntryTooLarge(f"entry is {len(signed)} bytes encoded; the limit is {limits.MAX_ENTRY_BYTES}")
    return _make_entry(
        signed, _blake2b(signed, digest_size=ID_BYTES).digest(), author, seq, prev, timestamp, kind, ordered
    )


# --- decoding -----------------------------------------------------------------

_UNPACK_LIMITS: Final = {
    "max_bin_len": limits.MAX_ENTRY_BYTES,
    "max_str_len": limits.MAX_ENTRY_BYTES,
    "max_array_len": 64,
    "max_map_len": 16,
    "max_ext_len": 0,
}
_unpackb: Final = functools.partial(msgpack.unpackb, raw=False, strict_map_key=True, **_UNPACK_LIMITS)


def decode_entry(signed: bytes, *, check_signature: bool = True) -> Entry:
    """Decode and validate signed entry bytes from anywhere outside this process.

    Raises only `EntryError` subclasses.  ``check_signature=False`` is for
    bytes this node already verified (its own store), or for the cheap checks
    before the expensive one (mention admission, ``import``'s fork check),
    whose caller verifies the signature before it trusts or stores anything.
    """
    if type(signed) is not bytes:
        if not isinstance(signed, bytes | bytearray | memoryview):
            raise EntryDecodeError("an entry is bytes")
        signed = bytes(signed)
    if len(signed) > limits.MAX_ENTRY_BYTES:
        raise EntryTooLarge(f"entry is {len(signed)} bytes; the limit is {limits.MAX_ENTRY_BYTES}")
    if len(signed) <= SIGNATURE_BYTES:
        raise EntryDecodeError("entry is shorter than a signature")
    content = signed[SIGNATURE_BYTES:]
    try:
        obj = _unpackb(content)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers msgpack's ExtraData, FormatError, StackError and
        # UnicodeDecodeError (text that is not valid UTF-8).
        raise EntryDecodeError(f"malformed entry encoding: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) != 7:
        raise EntryDecodeError("entry content is not a 7-element array")
    version, author, seq, prev, timestamp, kind, body = obj
    # msgpack gives exact types: ``type(x) is int`` (a bool is not an int here).
    if type(version) is not int or version != FORMAT_VERSION:
        raise EntrySchemaError(f"unsupported entry format version {version!r}")
    if type(author) is not bytes or len(author) != KEY_BYTES:
        raise EntrySchemaError("author must be a 32-byte key")
    if type(seq) is not int or not 1 <= seq <= limits.MAX_SEQ:
        raise EntrySchemaError("seq must be a positive integer")
    if seq == 1:
        if prev is not None:
            raise EntrySchemaError("the first entry of a feed has no prev")
    elif type(prev) is not bytes or len(prev) != ID_BYTES:
        raise EntrySchemaError("prev must be a 32-byte entry id")
    if type(timestamp) is not int or not 0 <= timestamp <= limits.MAX_TIMESTAMP_MS:
        raise EntrySchemaError("timestamp must be integer milliseconds")
    if type(kind) is not str:
        raise EntrySchemaError("kind must be text")
    if type(body) is not dict:
        raise EntrySchemaError("body must be a map")
    validate_body(kind, body)
    # One canonical encoding: re-packing must give back the same bytes
    # (rejects e.g. a 5-byte int where 1 byte suffices, or str8 for fixstr).
    if _packb(obj) != content:
        raise EntryDecodeError("entry content is not canonically encoded")
    if check_signature:
        try:
            verify(author, signed)
        except SignatureError:
            raise EntrySignatureError("signature does not verify against the author") from None
    return _make_entry(
        signed, _blake2b(signed, digest_size=ID_BYTES).digest(), author, seq, prev, timestamp, kind, body
    )


# --- building bodies from user input ---------------------------------------------


def mentions_in(text: str) -> list[bytes]:
    """The keys of the handles mentioned in text, in order, without repeats.

    A token that looks like a handle but fails its checksum is a typo: raise
    `HandleError` naming it rather than silently dropping the mention.
    """
    keys: list[bytes] = []
    if "@" not in text:  # every mention starts with one; most posts have none
        return keys
    for match in _MENTION_RE.finditer(text):
        token = match.group(0)
        try:
            key = decode_handle(token)
        except HandleError as exc:
            raise HandleError(f"mention {token} is not a valid handle: {exc}") from None
        if key not in keys:
            keys.append(key)
    return keys


def post_body(
    text: str, reply_to: bytes | None = None, *, also_mention: bytes | None = None
) -> dict[str, Any]:
    """The body of a post with text, parsing @mentions into the body.

    ``also_mention`` (a reply's parent author) is mentioned too, after the
    handles in the text, so the author hears of the reply."""
    body: dict[str, Any] = {"text": text}
    mentions = mentions_in(text)
    if also_mention is not None and also_mention not in mentions and len(mentions) < limits.MAX_MENTIONS:
        mentions.append(also_mention)
    if mentions:
        body["mentions"] = mentions
    if reply_to is not None:
        body["reply_to"] = reply_to
    return body


def parse_entry_id(text: str) -> bytes:
    """Parse an entry id as printed by the CLI (64 hex digits)."""
    value = text.strip().lower()
    if len(value) != 2 * ID_BYTES or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"an entry id is {2 * ID_BYTES} hex digits, got {text!r}")
    return bytes.fromhex(value)


def entry_to_json(entry: Entry, *, retracted: bool = False) -> dict[str, Any]:
    """The JSON form of an entry used by ``p2pblog log --json`` and friends."""
    out: dict[str, Any] = {
        "id": entry.id.hex(),
        "author": encode_handle(entry.author),
        "seq": entry.seq,
        "prev": entry.prev.hex() if entry.prev else None,
        "timestamp": entry.timestamp,
        "kind": entry.kind,
        "text": None if retracted else entry.text,
        "reply_to": entry.reply_to.hex() if entry.reply_to else None,
        "mentions": [encode_handle(m) for m in entry.mentions],
    }
    if entry.kind in (FOLLOW, UNFOLLOW) and entry.feed:
        out["feed"] = encode_handle(entry.feed)
    elif entry.kind == PROFILE:
        out["profile"] = dict(entry.body)
    elif entry.kind == DELETE and entry.target:
        out["target"] = entry.target.hex()
    if retracted:
        out["deleted"] = True
    return out
