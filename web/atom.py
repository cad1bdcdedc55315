"""Atom 1.0 feeds (RFC 4287) of any feed the store holds.

Theory of operation
-------------------
`atom_feed` reads the author's newest posts (`Store.feed`, newest first),
their profile name, and the delete entries that retract some of them, and
builds one ``<feed>`` with `xml.etree.ElementTree`.  Every piece of peer text
(post text, profile name) goes into the tree as element text and leaves it
through ElementTree's serializer, which escapes ``&``, ``<`` and ``>``; so
``<script>`` and ``]]>`` stay text.  The serializer does *not* refuse the
characters XML 1.0 forbids (C0 controls other than tab, newline and carriage
return; lone surrogates; U+FFFE and U+FFFF), nor the C1 controls it
discourages: `xml_text` replaces each of them with U+FFFD first, and turns
carriage returns into newlines (a parser would do that anyway, XML 1.0
section 2.11), so the text a reader parses back is exactly `xml_text` of the
post.

Identifiers are derived from keys and entry ids only, never from the node or
the time of export, so the same post has the same ``<id>`` in every export on
every machine, and a profile change renames the feed without changing it::

    feed   urn:p2pblog:feed:pb1...        (the handle without its "@")
    entry  urn:p2pblog:entry:<64 hex>     (the entry id, BLAKE2b-256 of the signed bytes)

With a ``base_url`` the feed links to the web app's pages (`feed_path`,
`user_path` and `post_path` own that scheme, so the web app's routes and
these links agree)::

    {base_url}/feeds/@pb1....atom   the feed itself (rel="self")
    {base_url}/u/@pb1...            the author's page (rel="alternate")
    {base_url}/post/<64 hex>        a post's thread page (an entry's rel="alternate")

The handle keeps its ``@``: RFC 3986 allows ``@`` in a path segment (pchar),
and a handle's other characters are lower-case letters and digits, so the
path needs no percent-encoding and reads like the handle users paste.  The
feed's ``<author><uri>`` is the author's page when there is a ``base_url``
and the bare handle otherwise (a reader would resolve a bare handle against
the feed's own URL, so it is used only when there is nothing better).

Replies carry ``<thr:in-reply-to>`` (the Atom Threading Extension, RFC
4685) naming the parent's entry id, and its thread page when there is a
``base_url``.  A deleted post stays in the feed as a tombstone with the same
``<id>``: its title and content are "(deleted by its author)", the text is
gone, and ``<updated>`` is the time of the delete, so a reader that already
fetched the post replaces it instead of keeping the old text.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Final

from identity import encode_handle, fingerprint
from p2pblog import __version__
from p2pblog.entry import DELETE, POST, Entry

if TYPE_CHECKING:
    from p2pblog.store import Store

ATOM_NS: Final = "http://www.w3.org/2005/Atom"
#: The Atom Threading Extension (RFC 4685).
THREAD_NS: Final = "http://purl.org/syndication/thread/1.0"
FEED_ID_PREFIX: Final = "urn:p2pblog:feed:"
ENTRY_ID_PREFIX: Final = "urn:p2pblog:entry:"
#: Title and content of a deleted post.
DELETED: Final = "(deleted by its author)"
#: Longest entry title, in code points, ellipsis included.
TITLE_CHARS: Final = 80
MEDIA_TYPE: Final = "application/atom+xml"

# What XML 1.0 allows (section 2.2, production [2]), negated, and the C1
# controls and DEL it discourages (same section): readers mangle those (feedparser
# reads U+0080 as the euro sign, cp1252's 0x80).  Lone surrogates are in the
# gap between U+D7FF and U+E000.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\u0020-\u007e\u00a0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NEWLINE: Final = re.compile("\r\n?")
# datetime's range: timestamps beyond it (an entry may carry up to 2**53 - 1 ms) are clamped.
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS: Final = dt.timedelta(milliseconds=1)
_LAST_MS: Final = (dt.datetime(9999, 12, 31, 23, 59, 59, 999000, dt.UTC) - _EPOCH) // _MS


def xml_text(text: str) -> str:
    """text as it can stand in an XML 1.0 document: characters XML forbids and the
    control characters it discourages (DEL, C1) become U+FFFD, and CR LF or a
    lone CR become LF (what a parser would make of them)."""
    return _NOT_XML_CHAR.sub("\ufffd", _NEWLINE.sub("\n", text))


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC date-time, e.g. ``2023-11-14T22:13:20.001Z``."""
    moment = _EPOCH + min(max(ms, 0), _LAST_MS) * _MS  # exact: no float seconds
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def feed_urn(author: bytes) -> str:
    """The feed's Atom ``<id>``: ``urn:p2pblog:feed:pb1...``."""
    return FEED_ID_PREFIX + encode_handle(author).removeprefix("@")


def entry_urn(entry_id: bytes) -> str:
    """An entry's Atom ``<id>``: ``urn:p2pblog:entry:<64 hex>``."""
    return ENTRY_ID_PREFIX + entry_id.hex()


def feed_path(author: bytes) -> str:
    """The web app's path of author's Atom feed: ``/feeds/@pb1....atom``."""
    return f"/feeds/{encode_handle(author)}.atom"


def user_path(author: bytes) -> str:
    """The web app's path of author's page: ``/u/@pb1...``."""
    return f"/u/{encode_handle(author)}"


def post_path(entry_id: bytes) -> str:
    """The web app's path of a post's thread page: ``/post/<64 hex>``."""
    return f"/post/{entry_id.hex()}"


def entry_title(text: str) -> str:
    """The first line of a post, shortened to `TITLE_CHARS` with an ellipsis (Atom requires a title)."""
    lines = xml_text(text).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > TITLE_CHARS:
        cut = first[: TITLE_CHARS - 1]
        space = cut.rfind(" ")
        # Break at a word when that keeps most of the line.
        first = (cut[:space] if space >= TITLE_CHARS // 2 else cut).rstrip() + "\u2026"
    return first or "(untitled)"


def _posts(store: Store, author: bytes, limit: int) -> tuple[list[tuple[Entry, bool]], dict[bytes, int]]:
    """The newest limit posts of author (entry, deleted), newest first, and the
    time of each delete entry by its target.

    Posts are read by kind (SQLite skips the other entries without decoding them); the
    deletes are read only when a post in the page was deleted (a delete always follows its
    target in the log)."""
    items = store.feed(author, limit=limit, kind=POST)
    posts = [(item.entry, item.deleted) for item in items]
    deleted_at: dict[bytes, int] = {}
    oldest = items[-1].entry.seq if items else None
    if any(deleted for _, deleted in posts) and oldest is not None:
        # The deletes of these posts come after them in the log: read the deletes only.
        for item in store.feed(author, kind=DELETE, limit=4 * limit):
            target = item.entry.target
            if item.entry.seq > oldest and target is not None:
                deleted_at.setdefault(target, item.entry.timestamp)
    return posts, deleted_at


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element


def _entry(feed: ET.Element, entry: Entry, deleted: bool, deleted_at: int | None, base: str | None) -> int:
    """Append entry to feed as an ``<entry>``; return its ``<updated>`` time (ms)."""
    node = _sub(feed, "entry")
    _sub(node, "id", entry_urn(entry.id))
    text = entry.text or ""
    _sub(node, "title", DELETED if deleted else entry_title(text), type="text")
    updated = entry.timestamp
    if deleted and deleted_at is not None:
        updated = max(updated, deleted_at)
    _sub(node, "published", rfc3339(entry.timestamp))
    _sub(node, "updated", rfc3339(updated))
    if base is not None:
        _sub(node, "link", rel="alternate", type="text/html", href=base + post_path(entry.id))
    parent = entry.reply_to
    if parent is not None:
        attrib = {"ref": entry_urn(parent)}
        if base is not None:
            attrib["href"] = base + post_path(parent)
            attrib["type"] = "text/html"
        ET.SubElement(node, "thr:in-reply-to", attrib)
    _sub(node, "content", DELETED if deleted else xml_text(text), type="text")
    return updated


def atom_feed(
    store: Store, author: bytes, *, base_url: str | None = None, limit: int = 100, now_ms: int | None = None
) -> bytes:
    """An Atom 1.0 document (UTF-8 XML) of author's newest limit posts held in store.

    Links to the web app's pages when base_url (e.g. ``http://127.0.0.1:8080``)
    is given.  The feed's ``<updated>`` is its newest entry's; an empty feed
    (also a feed the store does not hold) is dated now_ms (default: the clock)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    base = None if base_url is None else base_url.rstrip("/")
    handle = encode_handle(author)
    short = fingerprint(author)
    name = xml_text(store.profile(author).get("name", "")).strip()
    posts, deleted_at = _posts(store, author, limit)

    # The namespaces are declared by hand, once, on the root, and the names written
    # as they appear: ElementTree's default_namespace option refuses unprefixed
    # attributes (rel, href), and register_namespace is process-wide state.
    feed = ET.Element("feed", {"xmlns": ATOM_NS, "xmlns:thr": THREAD_NS})
    _sub(feed, "id", feed_urn(author))
    _sub(feed, "title", f"{name} ({short})" if name else handle, type="text")
    updated = _sub(feed, "updated")
    person = _sub(feed, "author")
    _sub(person, "name", name or short)
    _sub(person, "uri", handle if base is None else base + user_path(author))
    if base is not None:
        _sub(feed, "link", rel="self", type=MEDIA_TYPE, href=base + feed_path(author))
        _sub(feed, "link", rel="alternate", type="text/html", href=base + user_path(author))
    _sub(feed, "generator", "p2pblog", version=__version__)
    newest: int | None = None
    for entry, deleted in posts:
        when = _entry(feed, entry, deleted, deleted_at.get(entry.id), base)
        newest = when if newest is None else max(newest, when)
    if newest is None:
        newest = int(time.time() * 1000) if now_ms is None else now_ms
    updated.text = rfc3339(newest)
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document


def write_atom(
    store: Store,
    author: bytes,
    path: Path,
    *,
    base_url: str | None = None,
    limit: int = 100,
    now_ms: int | None = None,
) -> None:
    """Write `atom_feed` to path atomically: a reader sees the old file or the new one, never half.

    The document goes to a temporary file beside path, is flushed to disk, and
    replaces path (``os.replace``, atomic on POSIX and Windows)."""
    data = atom_feed(store, author, base_url=base_url, limit=limit, now_ms=now_ms)
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # 0o666 less the umask, as for any file the user creates (mkstemp would make it 0600).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); where directories cannot be opened, skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
