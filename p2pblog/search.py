"""Local full-text search over every post the node holds (SQLite FTS5).

Theory of operation
-------------------
The index is the FTS5 table ``search_index(text, tags, names)`` (migration 6
in `p2pblog.store`).  A post of a replicated feed is the row whose rowid is
its ``entries`` rowid; an admitted mention notice (``loose_entries``, which
has no rowid) gets a number in ``search_loose`` and the row ``-docid``.
``text`` is the post's text; ``tags`` and ``names`` hold the words written
``#tag`` and ``@name`` in it, so a ``#tag`` query can ask for the tag column
while a plain word finds the same text anywhere.  The tokenizer is
``unicode61 remove_diacritics 2``: case and accents fold ("cafe" finds
"Café"), ``#`` and ``@`` separate words (a plain ``tag`` finds ``#tag``), and
there is no stemming (English-only, and surprising in other languages).

Indexing is lazy (`catch_up`): storing an entry costs nothing more.  The
highest ``entries`` rowid indexed is kept in ``settings`` (`WATERMARK`);
every search first indexes the posts stored since, in one transaction, and
drops the rows of posts that delete entries since then retracted.  Loose
notices are few; the ones not yet indexed are found by an anti-join.  The
query also leaves out retracted posts and blocked authors itself, so the
index may lag a retraction or a block but a result never does.  Rowids are
stable: the store runs no VACUUM, and deletes entries only when it truncates a
revoked device's feed, which drops their documents and lowers the watermark
to the highest rowid left, so rows that take those rowids again are indexed.

The query language (`parse_query`):

- ``word`` every word must appear (the last one also as a prefix: ``pyth``
  finds "python");
- ``"a phrase"`` the words in that order;
- ``#tag`` posts where ``#tag`` is written (any case);
- ``@name`` posts whose text says ``@name``, or that mention (in their
  ``mentions``) a key whose petname or profile name is ``name``; ``@pb1...``
  (a handle) is that key;
- ``from:X`` posts by X: a handle, a petname or a profile name (every author
  held here with that name); several ``from:`` are alternatives.

The user's text never reaches MATCH as syntax: each term becomes an FTS5
string that this module quotes (``"..."`` with ``"`` doubled), combined with
``AND`` / ``OR`` and column filters written here, so ``NEAR(``, ``AND``,
``*``, ``:`` or ``^`` are searched as text.  Words with no letter or digit
are dropped; a query with nothing left raises `SearchError`, as does one over
`MAX_QUERY_CHARS` or `MAX_TERMS`.

Highlights: a second MATCH over the text column (every term, as an OR) on
the page of results only, through ``highlight()`` with the sentinels
``\\x02`` / ``\\x03`` (which the indexed text never contains: they are
replaced by spaces, one for one, so offsets hold).  `Segment` lists give the
front end text to escape and the parts to mark; a ``#tag`` or ``@name``
match takes its ``#`` / ``@`` with it, and a word only a ``#tag`` or
``@name`` term asked for is not marked where it is written without one.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from identity import decode_handle, encode_handle
from identity.handle import HandleError
from p2pblog.entry import DELETE, POST, PROFILE, decode_entry
from p2pblog.entry_index import rowid_of
from p2pblog.store import FeedItem

#: Longest query accepted, in characters.
MAX_QUERY_CHARS: Final = 200
#: Most terms (words, phrases, tags, names, from:) in a query.
MAX_TERMS: Final = 16
#: Default and largest page of results.
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: Keys a ``@name`` or ``from:`` term may stand for (authors sharing a profile name).
MAX_KEYS_PER_NAME: Final = 64
#: The ``settings`` key of the highest ``entries`` rowid indexed.
WATERMARK: Final = "search.indexed_rowid"
#: Posts indexed per INSERT batch while catching up.
_BATCH: Final = 2000

_OPEN, _CLOSE = "\x02", "\x03"
_HIDDEN: Final = str.maketrans({"\x00": " ", _OPEN: " ", _CLOSE: " "})
_HASHTAG: Final = re.compile(r"(?<![\w#])#(\w+)")
_AT_NAME: Final = re.compile(r"(?<![\w@])@(\w[\w-]*)")
_TOKEN: Final = re.compile(r"[^\W_]+")
_QUERY_TERM: Final = re.compile(r'"([^"]*)"?|(\S+)')
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class SearchError(ValueError):
    """A query that cannot be searched (empty, too long, an unknown ``from:`` author)."""


@dataclass(frozen=True, slots=True)
class Term:
    """One term of a query: kind is word, phrase, tag, name or from; prefix for the last word."""

    kind: str
    value: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of a post's text; ``match`` if the query matched it (a front end marks it)."""

    text: str
    match: bool


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A post found, and its text cut into segments for highlighting."""

    item: FeedItem
    segments: tuple[Segment, ...]

    @property
    def cursor(self) -> tuple[int, bytes, int]:
        """The ``before`` argument that asks for the page after this hit."""
        e = self.item.entry
        return (e.timestamp, e.author, e.seq)


Before = int | tuple[int, bytes, int] | None


# --- parsing ------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Roughly FTS5's unicode61 tokens: letter and digit runs, case and accents folded."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _TOKEN.findall(folded.casefold())


def parse_query(text: str) -> list[Term]:
    """The terms of a query (see the module docstring); raises `SearchError`."""
    if not isinstance(text, str):
        raise SearchError("a query is text")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(f"a query is at most {MAX_QUERY_CHARS} characters")
    text = _CONTROL.sub(" ", text)
    terms: list[Term] = []
    for match in _QUERY_TERM.finditer(text):
        phrase, word = match.group(1), match.group(2)
        if phrase is not None:
            term = Term("phrase", phrase) if _tokens(phrase) else None
        elif word[:5].lower() == "from:" and len(word) > 5:
            term = Term("from", word[5:])
        elif word.startswith("#") and _tokens(word):
            term = Term("tag", word.lstrip("#"))
        elif word.startswith("@") and _tokens(word):
            term = Term("name", word.lstrip("@"))
        else:
            term = Term("word", word) if _tokens(word) else None
        if term is not None:
            terms.append(term)
    if len(terms) > MAX_TERMS:
        raise SearchError(f"a query has at most {MAX_TERMS} terms")
    if not terms:
        raise SearchError('nothing to search for: give words, a "phrase", #tag, @name or from:NAME')
    last = terms[-1]
    if last.kind == "word" and not text[-1:].isspace():
        terms[-1] = Term("word", last.value, prefix=True)
    return terms


def _quote(text: str) -> str:
    """text as one FTS5 string: the tokenizer splits it into a phrase; no operator survives."""
    return '"' + text.replace('"', '""') + '"'


def _key(text: str) -> bytes | None:
    """The key of a handle (``@pb1...`` or ``pb1...``), None if text is not one."""
    if not text.lower().removeprefix("@").startswith("pb1"):
        return None
    try:
        return decode_handle(text)
    except HandleError:
        return None


# --- resolving names ------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _profile_names(db: sqlite3.Connection) -> dict[bytes, str]:
    """Every author's current profile name, folded."""
    names: dict[bytes, str] = {}
    done: set[bytes] = set()
    # Newest first: an author's entries older than its newest that names it are not decoded.
    rows = db.execute(
        "SELECT author, raw FROM entries INDEXED BY entries_kind_time WHERE kind = ? "
        "ORDER BY author, seq DESC",
        (PROFILE,),
    )
    for author_raw, raw in rows:
        author = bytes(author_raw)
        if author in done:
            continue
        name = decode_entry(bytes(raw), check_signature=False).body.get("name")
        if isinstance(name, str):
            names[author] = name.casefold()
            done.add(author)
    return names


class _Names:
    """Resolves handles, petnames and profile names to keys (profiles read once per search)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._profiles: dict[bytes, str] | None = None

    def keys(self, name: str) -> list[bytes]:
        key = _key(name)
        if key is not None:
            return [key]
        folded = name.casefold()
        found = [
            bytes(k) for (k,) in self._db.execute("SELECT key FROM petnames WHERE lower(name) = ?", (folded,))
        ]
        if self._profiles is None:
            self._profiles = _profile_names(self._db)
        found += [k for k, n in self._profiles.items() if n == folded and k not in found]
        return found[:MAX_KEYS_PER_NAME]


# --- indexing ---------------------------------------------------------------------------------


def _document(text: str) -> tuple[str, str, str]:
    """The indexed columns of a post's text: text (sentinels hidden), tags, @names."""
    clean = text.translate(_HIDDEN)
    tags = " ".join(m.lower() for m in _HASHTAG.findall(clean))
    names = " ".join(m.lower() for m in _AT_NAME.findall(clean))
    return clean, tags, names


def watermark(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM settings WHERE key = ?", (WATERMARK,)).fetchone()
    return 0 if row is None else int(row[0])


def behind(db: sqlite3.Connection) -> bool:
    """Whether `catch_up` has anything to do (checked without a write transaction)."""
    (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM entries").fetchone()
    if top > watermark(db):
        return True
    row = db.execute(
        "SELECT 1 FROM search_loose s JOIN retractions r ON r.target = s.id UNION ALL "
        "SELECT 1 FROM loose_entries l WHERE l.kind = ? "
        "AND NOT EXISTS (SELECT 1 FROM search_loose s WHERE s.id = l.id) "
        "AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = l.id) LIMIT 1",
        (POST,),
    ).fetchone()
    return row is not None


def catch_up(db: sqlite3.Connection, limit: int | None = None) -> int:
    """Index the posts stored since the watermark (at most limit), inside the caller's
    write transaction; drop retracted posts from the index.  Returns the posts indexed."""
    mark = watermark(db)
    last = mark
    docs: list[tuple[int, str, str, str]] = []
    deletes: list[tuple[bytes]] = []
    posts = 0
    rows = db.execute(
        "SELECT rowid, kind, raw FROM entries WHERE rowid > ? AND kind IN (?, ?) ORDER BY rowid",
        (mark, POST, DELETE),
    )
    for rowid, kind, raw in rows:
        if limit is not None and posts >= limit:
            break
        last = rowid
        entry = decode_entry(bytes(raw), check_signature=False)
        if _text(kind) == POST:
            docs.append((rowid, *_document(entry.text or "")))
            posts += 1
            if len(docs) >= _BATCH:  # bounded memory for a catch-up of any size
                _insert_documents(db, docs)
        else:
            deletes.append((entry.id,))
    else:
        (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM entries").fetchone()
        last = max(last, top)
    _insert_documents(db, docs)
    if deletes:
        db.executemany(
            "DELETE FROM search_index WHERE rowid IN "
            f"(SELECT {rowid_of('r.target')} FROM retractions r WHERE r.delete_id = ?)",
            deletes,
        )
    if last != mark:
        db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (WATERMARK, str(last)),
        )
    return posts + _catch_up_loose(db)


def forget(db: sqlite3.Connection, rowids: Sequence[int]) -> None:
    """After the entries at ``rowids`` were deleted (a truncated feed): their documents leave
    the index, and the watermark drops to the highest rowid left, so the rows that take
    the freed rowids next are indexed."""
    db.executemany("DELETE FROM search_index WHERE rowid = ?", [(r,) for r in rowids])
    db.execute(
        "UPDATE settings SET value = CAST(min(CAST(value AS INTEGER), "
        "(SELECT coalesce(max(rowid), 0) FROM entries)) AS TEXT) WHERE key = ?",
        (WATERMARK,),
    )


def _insert_documents(db: sqlite3.Connection, docs: list[tuple[int, str, str, str]]) -> None:
    db.executemany("INSERT INTO search_index (rowid, text, tags, names) VALUES (?, ?, ?, ?)", docs)
    docs.clear()


def _catch_up_loose(db: sqlite3.Connection) -> int:
    """Index admitted mention notices not indexed yet; drop retracted ones."""
    for (docid,) in db.execute(
        "SELECT s.docid FROM search_loose s JOIN retractions r ON r.target = s.id"
    ).fetchall():
        db.execute("DELETE FROM search_index WHERE rowid = ?", (-docid,))
        db.execute("DELETE FROM search_loose WHERE docid = ?", (docid,))
    rows = db.execute(
        "SELECT l.id, l.raw FROM loose_entries l WHERE l.kind = ? "
        "AND NOT EXISTS (SELECT 1 FROM search_loose s WHERE s.id = l.id) "
        "AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = l.id)",
        (POST,),
    ).fetchall()
    for entry_id, raw in rows:
        (docid,) = db.execute(
            "INSERT INTO search_loose (id) VALUES (?) RETURNING docid", (bytes(entry_id),)
        ).fetchone()
        text = decode_entry(bytes(raw), check_signature=False).text or ""
        db.execute(
            "INSERT INTO search_index (rowid, text, tags, names) VALUES (?, ?, ?, ?)",
            (-docid, *_document(text)),
        )
    return len(rows)


# --- searching --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """A parsed query turned into SQL conditions and their parameters."""

    where: list[str]
    params: list[Any]
    highlight: list[str]


def _fts_in(docid: str, match: str, params: list[Any]) -> str:
    params.append(match)
    return f"{docid} IN (SELECT rowid FROM search_index WHERE search_index MATCH ?)"


def _plan(terms: Sequence[Term], names: _Names, docid: str) -> _Plan:
    plan = _Plan([], [], [])
    required: list[str] = []
    authors: list[bytes] = []
    for term in terms:
        quoted = _quote(term.value)
        if term.kind in ("word", "phrase"):
            text = f"text : {quoted}" + (" *" if term.prefix else "")
            required.append(text)
            plan.highlight.append(text)
        elif term.kind == "tag":
            required.append(f"tags : {quoted}")
            plan.highlight.append(f"text : {quoted}")
        elif term.kind == "name":
            keys = names.keys(term.value)
            either = [f"names : {quoted}"] + [f'text : "{encode_handle(k)[1:]}"' for k in keys]
            plan.highlight.extend(f"text : {quoted}" if t.startswith("names") else t for t in either)
            condition = _fts_in(docid, " OR ".join(either), plan.params)
            if keys:
                marks = ", ".join("?" * len(keys))
                condition = (
                    f"({condition} OR e.id IN (SELECT entry_id FROM mentions WHERE mentioned IN ({marks})))"
                )
                plan.params.extend(keys)
            plan.where.append(condition)
        else:
            keys = names.keys(term.value)
            if not keys:
                raise SearchError(f"from:{term.value}: no handle, petname or profile name here matches")
            authors.extend(k for k in keys if k not in authors)
    if required:
        plan.where.append(_fts_in(docid, " AND ".join(f"({r})" for r in required), plan.params))
    if authors:
        plan.where.append(f"e.author IN ({', '.join('?' * len(authors))})")
        plan.params.extend(authors)
    return plan


def _before(before: Before) -> tuple[str, list[Any]]:
    if before is None:
        return "", []
    if isinstance(before, int):
        return " AND e.timestamp < ?", [before]
    timestamp, author, seq = before
    return " AND (e.timestamp, e.author, e.seq) < (?, ?, ?)", [timestamp, author, seq]


def search(
    db: sqlite3.Connection, query: str | Sequence[Term], *, limit: int = DEFAULT_LIMIT, before: Before = None
) -> list[SearchHit]:
    """Posts held that match query, newest first (read-only: `catch_up` first)."""
    terms = parse_query(query) if isinstance(query, str) else list(query)
    if not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"limit is 1 .. {MAX_LIMIT}")
    names = _Names(db)
    cursor, cursor_params = _before(before)
    found: list[tuple[int, int, bytes, int, bytes]] = []  # (timestamp, docid, author, seq, raw)
    for docid, source, extra in (
        ("e.rowid", "entries e", f"e.kind = '{POST}'"),
        (
            "-s.docid",
            "search_loose s JOIN loose_entries e ON e.id = s.id",
            f"{rowid_of('e.id')} IS NULL",
        ),
    ):
        plan = _plan(terms, names, docid)
        where = " AND ".join([extra, *plan.where])
        rows = db.execute(
            f"SELECT e.timestamp, {docid}, e.author, e.seq, e.raw FROM {source} WHERE {where} "
            "AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = e.id) "
            f"AND e.author NOT IN (SELECT key FROM blocks){cursor} "
            "ORDER BY e.timestamp DESC, e.author DESC, e.seq DESC LIMIT ?",
            [*plan.params, *cursor_params, limit],
        )
        found += [(t, d, bytes(a), s, bytes(r)) for t, d, a, s, r in rows]
    found.sort(key=lambda row: (row[0], row[2], row[3]), reverse=True)
    found = found[:limit]
    entries = {docid: decode_entry(raw, check_signature=False) for _, docid, _, _, raw in found}
    marked = _highlights(db, plan.highlight, {docid: e.text or "" for docid, e in entries.items()})
    return [
        SearchHit(FeedItem(e, False), _segments(e.text or "", marked.get(docid), terms))
        for docid, e in entries.items()
    ]


def _highlights(db: sqlite3.Connection, phrases: list[str], texts: dict[int, str]) -> dict[int, str]:
    """highlight() of each text (by docid) where any phrase matches.

    Run on a TEMP table holding this page's texts, not on ``search_index``:
    with a prefix term, highlight() on the big index merges the doclists of
    every word with that prefix for each row (165 ms for ``the*`` over
    100,000 posts), where the page's 50 texts take a millisecond.
    """
    if not phrases or not texts:
        return {}
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_page USING fts5 "
        "(text, tokenize = 'unicode61 remove_diacritics 2')"
    )
    db.execute("DELETE FROM temp.search_page")
    db.executemany(
        "INSERT INTO temp.search_page (rowid, text) VALUES (?, ?)",
        [(docid, text.translate(_HIDDEN)) for docid, text in texts.items()],
    )
    rows = db.execute(
        f"SELECT rowid, highlight(search_page, 0, '{_OPEN}', '{_CLOSE}') FROM temp.search_page "
        "WHERE search_page MATCH ?",
        (" OR ".join(f"({p})" for p in phrases),),
    ).fetchall()
    db.execute("DELETE FROM temp.search_page")
    return {rowid: _text(marked) for rowid, marked in rows}


def _spans(marked: str) -> list[tuple[int, int]]:
    """The (start, end) offsets, in the unmarked text, of the parts between sentinels."""
    spans: list[tuple[int, int]] = []
    offset, start = 0, None
    for char in marked:
        if char == _OPEN:
            start = offset
        elif char == _CLOSE:
            if start is not None:
                spans.append((start, offset))
            start = None
        else:
            offset += 1
    return spans


def _prefixed(tokens: list[str], prefixes: list[str]) -> bool:
    return len(tokens) == 1 and any(tokens[0].startswith(p) for p in prefixes)


def _segments(text: str, marked: str | None, terms: Iterable[Term]) -> tuple[Segment, ...]:
    """text cut into segments at the matches highlight() marked (see the module docstring)."""
    if marked is None:
        return (Segment(text, False),) if text else ()
    plain: list[list[str]] = []
    prefixes: list[str] = []
    sigils: dict[tuple[str, ...], str] = {}
    for term in terms:
        tokens = _tokens(term.value)
        if term.kind in ("word", "phrase"):
            plain.append(tokens)
            if term.prefix and tokens:
                prefixes.append(tokens[-1])
        elif term.kind == "tag":
            sigils[tuple(tokens)] = "#"
        elif term.kind == "name":
            sigils[tuple(tokens)] = "@"
    spans: list[tuple[int, int]] = []
    for start, end in _spans(marked):
        tokens = _tokens(text[start:end])
        before = text[start - 1] if start else ""
        sigil = sigils.get(tuple(tokens))
        handle = len(tokens) == 1 and tokens[0].startswith("pb1") and "@" in sigils.values()
        if (sigil is not None and before == sigil) or (handle and before == "@"):
            start -= 1  # the '#' or '@' is part of what was asked for
        elif sigil is not None and tokens not in plain and not _prefixed(tokens, prefixes):
            continue  # a tag or name written without its '#' or '@'
        spans.append((start, end))
    out: list[Segment] = []
    offset = 0
    for start, end in spans:
        if start < offset:
            continue
        if start > offset:
            out.append(Segment(text[offset:start], False))
        out.append(Segment(text[start:end], True))
        offset = end
    if offset < len(text):
        out.append(Segment(text[offset:], False))
    return tuple(out)
