"""The node's SQLite store: feeds, fork proofs and the indexes the queries need.

Theory of operation
-------------------
One database file per node, in WAL mode with ``synchronous=FULL``: a commit
that returned is on disk, so a killed process (or a lost machine) never loses
an acknowledged entry, and a transaction that did not commit leaves nothing.
Every write goes through `Store.transaction`, which opens ``BEGIN IMMEDIATE``
so that a CLI command and a running node on the same home serialize instead of
racing for the next seq.

Feeds are stored contiguously from seq 1.  An entry is accepted (`ingest`)
only if it verifies on its own (`decode_entry`) and extends the feed: seq is
latest + 1 and prev is the latest id.  All checks run before the first write,
so an entry is stored whole or not at all.  An entry with the seq of one we
hold but another id is a *fork*: both signed entries go to ``forks`` as a
proof, the feed is marked forked at that seq, and nothing past the fork is
accepted afterwards.

Bulk ingest (`Store.ingest_many`: an import, a long catch-up) is a pipeline.
This thread decodes the entries without their signatures (cheap), in chunks
of `VERIFY_CHUNK`; the chunks go to a `VerifyPool` of threads (PyNaCl
releases the GIL, so they verify on every core) through
`p2pblog.verify.verify_in_order`, which keeps at most two chunks per worker
in flight and hands them back in order.  A chunk is written only once it came
back verified, and only up to its first forgery: nothing is stored before it
is verified, and the valid prefix is kept exactly as a one-by-one ingest
would keep it.  The input is read at most those few chunks ahead of the
writes, so a feed file of any size streams through in bounded memory.
Writes go in transactions of `limits.INGEST_BATCH` entries, with a larger
page cache (`limits.BULK_CACHE_KIB`) while they last, so a commit writes each
page its inserts dirtied once; the next entry of a feed (the common case) is
checked in Python against the cached feed head and queued, and the queue goes
to SQLite in multi-row INSERTs.  A list of a few entries skips the pipeline
and verifies inline, through the verify cache.  (The replicator verifies
received entries itself, off its event loop, and stores them with
`ingest_entries`.)  Used inside a caller's transaction (a group commit), a
batch joins it; an error escaping a batch half-written (SQLite's: refusals
are reported, not raised) makes that transaction roll back rather than commit
half a batch.

Entries are found by id through the id index (``entry_ids``, in two levels),
not an index on ``entries`` (`p2pblog.entry_index`): a commit folds the
newest rows' ids into it in id order once there are `FOLD_IDS_AT` of them (a
delete entry folds first, in its transaction), and a lookup also scans the
rows not folded yet.

Our own entries (`Store.append`) take a similar shortcut inside a
transaction: a post's or profile's row is queued, not INSERTed, and the
queue goes to SQLite in the same multi-row INSERTs.  The connection is only
reached through `Store._db`, which writes the queue first, so every read,
derived-table write and ingest in the transaction sees the queued entries in
order; the transaction writes it before COMMIT and drops it on rollback.  A
failure while writing it (a constraint, a full disk) marks the transaction
half-written, so it rolls back instead of committing part of it.  An append
outside a transaction opens its own and has committed when it returns.

Derived tables are maintained as entries are stored, in seq order per feed
(which the chain guarantees): ``follows`` from follow/unfollow entries,
``mentions`` from post bodies, ``retractions`` from delete entries whose
target is an earlier entry of the same feed.  The full-text index of posts
(``search_index``) is not: `p2pblog.search` fills it lazily, at the next
search, so storing an entry costs nothing more (`Store.search`).

A full disk: SQLite reports ``SQLITE_FULL`` (or, when the WAL cannot grow,
an I/O error) on a write.  `Store.transaction` turns either into
`StorageFull` after rolling the transaction back, so nothing of it is
stored and the caller gets a declared error with one line for the user
(except for the tables that only cache what the network can tell again:
DHT contacts, the gossip address book, peer scores, whose writes are
skipped, so that a full disk does not stop sessions from opening);
``full`` then stays True (and ``refused_writes`` counts) until a write
commits again.  Reads go on working; a store opened on a full disk, where
SQLite cannot create the ``-shm`` file a WAL database needs, is opened
immutable for reading, and its writes are refused the same way.  An I/O error is taken for a full
disk only when the file system has less than `FULL_BELOW_BYTES` free:
otherwise it is reported as the `StoreError` it is.

Files: the database and its ``-wal`` / ``-shm`` files are created mode 0600
(the process umask is narrowed while SQLite creates them): they hold who
the owner follows, blocks and petnames.

A damaged file (pages overwritten by a failing disk, a bad copy): SQLite
reports ``SQLITE_CORRUPT`` ("database disk image is malformed") or
``SQLITE_NOTADB`` when a statement reaches a damaged page.  On open and on
every write transaction that is turned into `StoreDamaged`, and the damage
is recorded in ``store.sqlite3.damaged`` next to the file (with the file's
inode and modification time, so a store restored from a backup is another
file and not damaged; ``verify`` removes the record when it finds the file
sound):
from then on every write of this and every later process is refused with
`StoreDamaged` before it starts (`transaction`), so a damaged store never
gets worse.  Reads go on where the pages are readable (an ``export`` of the
own feed saves what it can); a read that reaches damage raises SQLite's
error, which the front ends report with `record_damage` (the command line
says how to recover in one line).  Finding damage costs nothing on the hot
paths: opening looks for the marker file (one ``stat``), and `check_integrity`
(``PRAGMA quick_check``, linear in the file's size) runs in ``verify`` and when
``p2pblog run`` starts.

The schema is versioned with ``PRAGMA user_version``; `MIGRATIONS` lists the
scripts that bring a database from one version to the next.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from identity import Identity, encode_handle, limits
from p2pblog import entry_index
from p2pblog.device_store import DeviceTables
from p2pblog.devices import Device
from p2pblog.dm_store import DmRow as DmRow  # re-exported: the rows of `Store.dm_*`
from p2pblog.dm_store import DmTables, text_of
from p2pblog.entry import (
    COMMIT,
    DELETE,
    DEVICE,
    DEVICE_OF,
    FOLLOW,
    POST,
    PROFILE,
    REVOKE,
    ROTATE,
    UNFOLLOW,
    Entry,
    create_entry,
    decode_entry,
)
from p2pblog.entry_index import FOLD_IDS_AT, rowid_of
from p2pblog.errors import (
    ChainError,
    DeviceRevokedError,
    EntryError,
    EntryFromFuture,
    EntrySignatureError,
    FeedForkedError,
    HeadUnknownError,
    LocalProtocolError,
    StorageFull,
    StoreDamaged,
    StoreError,
)
from p2pblog.own_head import KNOWN, OWN_HEAD, UNKNOWN_PREFIX, refusal, unknown_marker

if TYPE_CHECKING:
    # Imported where a bulk ingest needs them: they load concurrent.futures and
    # multiprocessing, which a command that only reads the store does not pay for.
    from p2pblog.search import SearchHit, Term
    from p2pblog.verify import VerifyPool, VerifyProcesses

#: Posts the search index takes in one transaction while it catches up.
SEARCH_INDEX_CHUNK: Final = 5_000
#: Free bytes under which an SQLite I/O error on a write is taken for a full disk.
FULL_BELOW_BYTES: Final = 1024 * 1024
#: SQLite's primary result codes for a full database or disk, and for an I/O error.
_SQLITE_FULL: Final = 13
_SQLITE_IOERR: Final = 10
_SQLITE_READONLY: Final = 8
#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGE_CODES: Final = (11, 26)
#: Suffix of the file that records a store's damage (`record_damage`).
DAMAGE_SUFFIX: Final = ".damaged"


def is_damage(exc: BaseException) -> bool:
    """Whether exc is SQLite saying the database file is damaged."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DAMAGE_CODES
        or "malformed" in str(exc)
        or "not a database" in str(exc)
    )


def _damage_marker(path: Path) -> Path:
    return path.with_name(path.name + DAMAGE_SUFFIX)


def record_damage(path: Path | str, reason: str) -> StoreDamaged:
    """Record that the store at path is damaged (best effort: a marker file beside it, naming
    the file's inode and mtime) and return the `StoreDamaged` to raise."""
    path = Path(path)
    try:
        marker = _damage_marker(path)
        if not marker.exists():
            marker.write_text(f"{_identity_of(path)}\n{reason}\n")
    except OSError:
        pass
    return damaged_error(path, reason)


def _identity_of(path: Path) -> str:
    """Which file path is: its inode and modification time (nothing writes a damaged store
    but the WAL checkpoint of its last close, after which `Store.close` marks it again; a copy
    restored in its place differs in one of them, even on a reused inode)."""
    stat = path.stat()
    return f"{stat.st_ino}:{stat.st_mtime_ns}"


def _remark_damage(path: Path, reason: str) -> None:
    """Name the file's current identity in its damage marker (after our own close)."""
    with suppress(OSError):
        _damage_marker(path).write_text(f"{_identity_of(path)}\n{reason}\n")


def recorded_damage(path: Path | str) -> str | None:
    """The reason the store at path was found damaged, if it was (and is still that file)."""
    path = Path(path)
    try:
        which, _, reason = _damage_marker(path).read_text().partition("\n")
        if which == _identity_of(path):
            return reason.strip() or "damaged"
    except OSError:
        return None
    with suppress(OSError):  # the store was replaced (restored from a backup): not damaged
        _damage_marker(path).unlink()
    return None


#: A device of an identity, as `Store.devices_of` lists it.
DeviceRow = Device

DEVICE_KINDS: Final = frozenset({DEVICE, DEVICE_OF, REVOKE, COMMIT, ROTATE})


def damaged_error(path: Path, reason: str) -> StoreDamaged:
    return StoreDamaged(
        f"the store {path} is damaged ({reason}); nothing more is written to it. Save your own feed "
        f"with `p2pblog export $(p2pblog id) FILE` (what is still readable), then restore {path.name} "
        f"from a backup, or move {path.name}* aside and `p2pblog import FILE` into a new one "
        "(README: A damaged store)"
    )


MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: feeds, entries, fork proofs and derived indexes.
    """
    CREATE TABLE feeds (
        author      BLOB PRIMARY KEY,
        latest_seq  INTEGER NOT NULL,
        latest_id   BLOB NOT NULL,
        forked_seq  INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE entries (
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        id          BLOB NOT NULL UNIQUE,
        timestamp   INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        reply_to    BLOB,
        raw         BLOB NOT NULL,
        UNIQUE (author, seq)
    );
    CREATE INDEX entries_reply_to ON entries (reply_to) WHERE reply_to IS NOT NULL;
    CREATE INDEX entries_kind_time ON entries (kind, timestamp);
    CREATE TABLE forks (
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        id          BLOB NOT NULL,
        raw         BLOB NOT NULL,
        PRIMARY KEY (author, seq, id)
    ) WITHOUT ROWID;
    CREATE TABLE follows (
        follower    BLOB NOT NULL,
        feed        BLOB NOT NULL,
        PRIMARY KEY (follower, feed)
    ) WITHOUT ROWID;
    CREATE INDEX follows_feed ON follows (feed);
    CREATE TABLE mentions (
        mentioned   BLOB NOT NULL,
        entry_id    BLOB NOT NULL,
        PRIMARY KEY (mentioned, entry_id)
    ) WITHOUT ROWID;
    CREATE TABLE retractions (
        target      BLOB PRIMARY KEY,
        delete_id   BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: the DHT routing table, saved so a restarted node needs no bootstrap address.
    """
    CREATE TABLE dht_contacts (
        node_id     BLOB PRIMARY KEY,
        host        TEXT NOT NULL,
        port        INTEGER NOT NULL,
        last_seen   REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: the gossip address book: peers we replicated with, and where they listen.
    """
    CREATE TABLE gossip_peers (
        public_key      BLOB PRIMARY KEY,
        host            TEXT NOT NULL,
        port            INTEGER NOT NULL,
        last_connected  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4: names, petnames, blocks, admitted mention notices and the mention outbox.
    """
    CREATE TABLE petnames (
        name        TEXT PRIMARY KEY,
        key         BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        key         BLOB PRIMARY KEY,
        since       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE name_claims (
        name        TEXT PRIMARY KEY,
        claimed     INTEGER NOT NULL,
        nonce       BLOB NOT NULL,
        work        INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE loose_entries (
        id          BLOB PRIMARY KEY,
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        timestamp   INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        reply_to    BLOB,
        raw         BLOB NOT NULL,
        received    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX loose_reply_to ON loose_entries (reply_to) WHERE reply_to IS NOT NULL;
    CREATE VIEW known_entries AS
        SELECT id, author, seq, timestamp, kind, reply_to, raw FROM entries
        UNION ALL
        SELECT l.id, l.author, l.seq, l.timestamp, l.kind, l.reply_to, l.raw FROM loose_entries l
        WHERE NOT EXISTS (SELECT 1 FROM entries x WHERE x.id = l.id);
    CREATE TABLE mention_outbox (
        entry_id    BLOB NOT NULL,
        recipient   BLOB NOT NULL,
        stamp       BLOB NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (entry_id, recipient)
    ) WITHOUT ROWID;
    """,
    # 5: peer scores and bans, kept across restarts (`p2pblog.dialing`).  ``subject``
    # is a public key or an address prefix (e.g. ``b"ip:203.0.113.0/24"``).
    """
    CREATE TABLE peer_scores (
        subject       BLOB PRIMARY KEY,
        score         REAL NOT NULL,
        banned_until  REAL NOT NULL,
        updated       REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: settings, and the full-text index of posts (`p2pblog.search`), filled lazily:
    # a row's rowid is its post's ``entries`` rowid, or minus its ``search_loose`` docid.
    """
    CREATE TABLE settings (
        key         TEXT PRIMARY KEY,
        value
    ) WITHOUT ROWID;
    CREATE VIRTUAL TABLE search_index USING fts5 (
        text, tags, names, tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TABLE search_loose (
        docid       INTEGER PRIMARY KEY,
        id          BLOB NOT NULL UNIQUE
    );
    """,
    # 7: direct messages (`p2pblog.dms`): those we sent and received (``folder`` is
    # inbox, requests or sent; ``state`` an outgoing message's delivery), the sealed ones
    # still to deliver, and those we hold for followed recipients who were offline.
    """
    CREATE TABLE dms (
        id          BLOB PRIMARY KEY,
        peer        BLOB NOT NULL,
        folder      TEXT NOT NULL,
        timestamp   INTEGER NOT NULL,
        received    INTEGER NOT NULL,
        text        TEXT NOT NULL,
        unread      INTEGER NOT NULL,
        state       TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX dms_peer_time ON dms (peer, timestamp);
    CREATE TABLE dm_outbox (
        id          BLOB PRIMARY KEY,
        recipient   BLOB NOT NULL,
        sealed      BLOB NOT NULL,
        stamp       BLOB NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE dm_held (
        id          BLOB PRIMARY KEY,
        recipient   BLOB NOT NULL,
        depositor   BLOB NOT NULL,
        sealed      BLOB NOT NULL,
        stamp       BLOB NOT NULL,
        expires     INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 8: devices (`p2pblog.devices`): the certificate, consent and revocation entries of
    # held feeds, and what they resolve to (``devices``: each device's identity).
    """
    CREATE TABLE device_certs (
        certifier   BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        device      BLOB NOT NULL,
        name        TEXT NOT NULL,
        admin       INTEGER NOT NULL,
        PRIMARY KEY (certifier, seq)
    ) WITHOUT ROWID;
    CREATE TABLE device_consents (
        device      BLOB PRIMARY KEY,
        identity    BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE device_revocations (
        revoker     BLOB NOT NULL,
        device      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        after       INTEGER NOT NULL,
        PRIMARY KEY (revoker, device)
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        device      BLOB PRIMARY KEY,
        identity    BLOB NOT NULL,
        name        TEXT NOT NULL,
        admin       INTEGER NOT NULL,
        consented   INTEGER NOT NULL,
        after       INTEGER,
        certifier   BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX devices_identity ON devices (identity);
    CREATE TABLE root_commits (
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        next        BLOB NOT NULL,
        PRIMARY KEY (author, seq)
    ) WITHOUT ROWID;
    CREATE TABLE rotations (
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        identity    BLOB NOT NULL,
        new         BLOB NOT NULL,
        next        BLOB NOT NULL,
        cut         INTEGER NOT NULL,
        PRIMARY KEY (author, seq)
    ) WITHOUT ROWID;
    CREATE INDEX rotations_identity ON rotations (identity);
    """,
    # 9: entry ids leave the entries table's write path (docs/design.md, "Entry ids, folded
    # in sorted batches"): ``entries`` loses its UNIQUE index on the random 32-byte id, which
    # dirtied a page of the index for nearly every entry at every commit; ``entry_ids`` maps
    # each id to its row and is filled in id order, many rows at once, up to the rowid in the
    # ``ids_through`` setting.  Rows past it (the tail) are found by a scan of the tail.
    # Rowids are kept (the search index's watermark counts on them).
    """
    DROP VIEW known_entries;
    CREATE TABLE entries_v9 (
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        id          BLOB NOT NULL,
        timestamp   INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        reply_to    BLOB,
        raw         BLOB NOT NULL,
        UNIQUE (author, seq)
    );
    INSERT INTO entries_v9 (rowid, author, seq, id, timestamp, kind, reply_to, raw)
        SELECT rowid, author, seq, id, timestamp, kind, reply_to, raw FROM entries ORDER BY rowid;
    DROP TABLE entries;
    ALTER TABLE entries_v9 RENAME TO entries;
    CREATE INDEX entries_reply_to ON entries (reply_to) WHERE reply_to IS NOT NULL;
    CREATE INDEX entries_kind_time ON entries (kind, timestamp);
    CREATE TABLE entry_ids (
        id          BLOB PRIMARY KEY,
        entry       INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO entry_ids (id, entry) SELECT id, rowid FROM entries ORDER BY id;
    INSERT OR REPLACE INTO settings (key, value)
        VALUES ('ids_through', (SELECT coalesce(max(rowid), 0) FROM entries));
    CREATE VIEW known_entries AS
        SELECT id, author, seq, timestamp, kind, reply_to, raw FROM entries
        UNION ALL
        SELECT l.id, l.author, l.seq, l.timestamp, l.kind, l.reply_to, l.raw FROM loose_entries l
        WHERE coalesce(
            (SELECT entry FROM entry_ids WHERE id = l.id),
            (SELECT rowid FROM entries
             WHERE rowid > coalesce((SELECT value FROM settings WHERE key = 'ids_through'), 0) AND id = l.id)
        ) IS NULL;
    """,
    # 10: the id index in two levels (`p2pblog.entry_index`): folds go to the small
    # ``entry_ids_new`` and move to ``entry_ids`` in sorted merges, so a fold no longer
    # rewrites every page of the whole index.  ``known_entries`` looks in both.
    """
    CREATE TABLE entry_ids_new (
        id          BLOB PRIMARY KEY,
        entry       INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT OR REPLACE INTO settings (key, value) VALUES ('ids_new_rows', 0);
    DROP VIEW known_entries;
    CREATE VIEW known_entries AS
        SELECT id, author, seq, timestamp, kind, reply_to, raw FROM entries
        UNION ALL
        SELECT l.id, l.author, l.seq, l.timestamp, l.kind, l.reply_to, l.raw FROM loose_entries l
        WHERE coalesce(
            (SELECT entry FROM entry_ids WHERE id = l.id),
            (SELECT entry FROM entry_ids_new WHERE id = l.id),
            (SELECT rowid FROM entries
             WHERE rowid > coalesce((SELECT value FROM settings WHERE key = 'ids_through'), 0) AND id = l.id)
        ) IS NULL;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
#: Entries decoded and sent to a verifier thread at a time by `Store.ingest_many`.
VERIFY_CHUNK: Final = 256
_INSERT_ENTRY: Final = (
    "INSERT INTO entries (author, seq, id, timestamp, kind, reply_to, raw) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_MENTION: Final = "INSERT OR IGNORE INTO mentions (mentioned, entry_id) VALUES (?, ?)"
#: Rows per multi-row INSERT: 7 parameters each stays under 999, the least
#: SQLITE_MAX_VARIABLE_NUMBER of any SQLite build (3.32 raised the default to 32766).
_ROWS_PER_INSERT: Final = 128
#: Rows `Store.append` queues in a transaction before it writes them (bounds the queue's memory).
_QUEUED_ROWS: Final = 8 * _ROWS_PER_INSERT


def cursor_of(entry: Entry) -> str:
    """The paging cursor after entry, ``TIME.AUTHOR.SEQ`` (`timeline`'s and `search`'s
    ``before``, as the web app's links and ``p2pblog search --json`` write it)."""
    return f"{entry.timestamp}.{entry.author.hex()}.{entry.seq}"


def parse_cursor(text: str | None) -> tuple[int, bytes, int] | None:
    """A `cursor_of` back as (timestamp, author, seq); None for anything else (numbers are
    bounded to SQLite's 64-bit integers)."""
    if not text:
        return None
    try:
        ts, author, seq = text.strip().split(".")
        key = bytes.fromhex(author)
        when, number = int(ts), int(seq)
    except ValueError:
        return None
    if len(key) != 32 or not (0 <= when < 2**63 and 0 <= number < 2**63):
        return None
    return when, key, number


@functools.cache
def _insert_entries(rows: int) -> str:
    """The INSERT of rows entries in one statement (the sqlite3 module caches its plan)."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO entries (author, seq, id, timestamp, kind, reply_to, raw) VALUES {values}"


#: Gossip peers whose listen address is kept (`save_peer`), the most recently connected.
MAX_SAVED_PEERS: Final = 1024


class Ingested(enum.Enum):
    """What `Store.ingest` did with a valid entry."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    FORK = "fork"


@dataclass(frozen=True, slots=True)
class FeedState:
    author: bytes
    latest_seq: int
    latest_id: bytes | None
    forked_seq: int | None


# A feed head built through its slots' setters, without the frozen dataclass's generic
# ``__init__`` (0.48 us): `Store.append` makes one per entry (as `p2pblog.entry._make_entry`).
_new_head: Final = object.__new__
_set_head_author, _set_head_seq, _set_head_id, _set_head_forked = (
    FeedState.__dict__[name].__set__ for name in ("author", "latest_seq", "latest_id", "forked_seq")
)


def _unforked_head(author: bytes, seq: int, latest_id: bytes) -> FeedState:
    """``FeedState(author, seq, latest_id, None)``, faster."""
    state = _new_head(FeedState)
    _set_head_author(state, author)
    _set_head_seq(state, seq)
    _set_head_id(state, latest_id)
    _set_head_forked(state, None)
    return state


@dataclass(frozen=True, slots=True)
class FeedItem:
    """An entry as queries show it: ``deleted`` if its author retracted it."""

    entry: Entry
    deleted: bool


@dataclass(frozen=True, slots=True)
class Thread:
    """An entry with the ancestors and replies known locally.

    ``missing_parent`` is the id of the first ancestor not (yet) stored.
    """

    entry: FeedItem
    ancestors: list[FeedItem]
    replies: list[FeedItem]
    missing_parent: bytes | None


@dataclass(slots=True)
class IngestReport:
    """Outcome of `Store.ingest_many`: counts, and the first refusal if any."""

    accepted: int = 0
    duplicates: int = 0
    forks: int = 0
    refused: int = 0
    error: EntryError | None = None
    error_index: int | None = None
    fork_seqs: list[tuple[bytes, int]] = field(default_factory=list)

    def refuse(self, error: EntryError) -> None:
        """Record the first refusal; every entry after it is refused too."""
        if self.error is None:
            self.error = error
            self.error_index = self.accepted + self.duplicates + self.forks
        self.refused += 1


@dataclass(slots=True)
class VerifyReport:
    feeds: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_ENTRY_COLUMNS: Final = "e.raw, r.target IS NOT NULL"
_ENTRY_FROM: Final = "entries e LEFT JOIN retractions r ON r.target = e.id"
#: Entries of replicated feeds plus admitted mention notices (``loose_entries``).
#: Leaves out authors the owner blocked.
_NOT_BLOCKED: Final = "e.author NOT IN (SELECT key FROM blocks)"
#: The posts mentioning a key (parameters: key, after ms, key, after ms), stored or admitted
#: as notices: each table joined by its primary key (through the ``known_entries`` view,
#: SQLite would copy every entry held first).
_MENTIONS_OF: Final = (
    "SELECT e.raw AS raw, r.target IS NOT NULL AS deleted, e.timestamp AS ts, e.author AS author, "
    f"e.seq AS seq FROM mentions m JOIN entries e ON e.rowid = {rowid_of('m.entry_id')} "
    "LEFT JOIN retractions r ON r.target = e.id "
    f"WHERE m.mentioned = ? AND e.timestamp > ? AND {_NOT_BLOCKED} "
    "UNION ALL "
    "SELECT e.raw, r.target IS NOT NULL, e.timestamp, e.author, e.seq "
    "FROM mentions m JOIN loose_entries e ON e.id = m.entry_id "
    "LEFT JOIN retractions r ON r.target = e.id "
    f"WHERE m.mentioned = ? AND e.timestamp > ? AND {_NOT_BLOCKED} "
    f"AND {rowid_of('e.id')} IS NULL"
)


#: Retract ``:target`` by the delete entry ``:delete`` if it is a stored entry (of a
#: replicated feed or an admitted notice) of the same author with a lower seq.
_RETRACT: Final = (
    "INSERT OR IGNORE INTO retractions (target, delete_id) SELECT :target, :delete "
    f"WHERE EXISTS (SELECT 1 FROM entries WHERE rowid = {rowid_of(':target')} "
    "AND author = :author AND seq < :seq) "
    "OR EXISTS (SELECT 1 FROM loose_entries WHERE id = :target AND author = :author AND seq < :seq)"
)


class Store(DeviceTables, DmTables):
    """A node's SQLite store.  Not thread-safe; one per process and home."""

    def __init__(self, path: Path | str, *, verify_pool: VerifyPool | VerifyProcesses | None = None) -> None:
        self.path = Path(path)
        # Bulk ingests verify signatures on this pool; without one the store
        # starts its own on first need (`_verify_pool`) and closes it in `close`.
        self._pool = verify_pool
        self._own_pool: VerifyPool | None = None
        #: Whether the last write was refused for a full disk (cleared by a commit).
        self.full = False
        #: Write transactions refused for a full disk.
        self.refused_writes = 0
        #: Opened for reading only, because the disk was full (`_open_read_only`).
        self.read_only = False
        #: Why the file is known to be damaged (then every write is refused), else None.
        self.damaged: str | None = recorded_damage(self.path)
        # Rows of entries `append` queued in the current transaction, and their
        # mentions: written (`_write_queued`) before anything else uses the
        # connection (`_db`), and before COMMIT; dropped on rollback.
        self._queued: list[tuple[bytes, int, bytes, int, str, bytes | None, bytes]] = []
        self._queued_mentions: list[tuple[bytes, bytes]] = []
        # 0600 for the database and the -wal / -shm files SQLite creates next to it.
        umask = os.umask(0o077)
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
            # Read TEXT as bytes: a damaged row typed TEXT must reach decode_entry
            # (and be reported), not crash the query with a UTF-8 error.
            self._conn.text_factory = bytes
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                self._conn.close()
                raise record_damage(self.path, str(exc)) from None
            if not self._disk_full(exc):
                raise StoreError(f"cannot open store {self.path}: {exc}") from None
            self._open_read_only(exc)
        finally:
            os.umask(umask)
        for suffix in ("", "-wal", "-shm"):  # files from before this rule: tighten them
            with suppress(OSError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self._depth = 0
        # Feed heads read or changed in the current write transaction; written
        # back once per commit instead of once per entry (docs/benchmarks.md).
        self._heads: dict[bytes, FeedState] = {}
        self._dirty: set[bytes] = set()
        # Set when an error escaped a batch of writes (`_write_batch` queues rows, so
        # it may stop half-way): the transaction it joined must not commit.
        self._half_written = False
        # False for one commit: leave the tail's ids to a later fold (`ingest_many`).
        self._fold_at_commit = True
        #: Revoked devices: the last seq of each one's feed that may be stored.
        self._caps: dict[bytes, int] = {}
        #: Raised whenever the devices of some identity change (the node re-reads them).
        self.devices_version = 0
        self._load_caps()
        #: The author whose feed's head this store does not know (`p2pblog.own_head`), or None.
        self._unknown_head = self._read_unknown_head()

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, once the rows `append` queued are written.

        Every use of the database but `_write_queued`'s own goes through here,
        so every read, derived-table write and ingest in the transaction sees
        the queued entries, in the order they were appended.
        """
        if self._queued:
            self._write_queued()
        return self._conn

    def _write_queued(self) -> None:
        """Write the queued rows of `append` (multi-row INSERTs, as `_flush_rows`).

        An error here (a constraint, SQLITE_FULL) may leave some of them written:
        the transaction is marked half-written, so it rolls back, never commits.
        """
        rows, mentioned = self._queued, self._queued_mentions
        self._queued, self._queued_mentions = [], []
        try:
            _insert_rows(self._conn, rows, mentioned)
        except BaseException:
            self._half_written = True
            raise

    # -- lifecycle ------------------------------------------------------------

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}; this p2pblog knows "
                f"up to {SCHEMA_VERSION}: upgrade p2pblog"
            )
        for number in range(version, SCHEMA_VERSION):
            # executescript commits first; run each migration in its own transaction.
            self._db.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        if self._own_pool is not None:
            self._own_pool.close()
            self._pool = self._own_pool = None
        self._conn.close()
        if self.damaged is not None and self.path.exists():
            # The last close checkpoints the WAL into the file (a new mtime): the marker
            # names the file as it is now, so the damage stays known.
            _remark_damage(self.path, self.damaged)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested uses join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.damaged is not None:
            raise damaged_error(self.path, self.damaged)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                if self._queued:
                    self._write_queued()
                if self._half_written:
                    raise StoreError(
                        "a batch of entries failed half-written inside this transaction: rolled back"
                    )
                self._flush_heads()
                if self._fold_at_commit:
                    self._fold_ids(force=False)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise self.found_damage(exc) from None
            if not isinstance(exc, sqlite3.OperationalError) or not self._disk_full(exc):
                raise
            self.full = True
            self.refused_writes += 1
            raise StorageFull(f"the disk is full: cannot write to {self.path} ({exc})") from None
        else:
            self.full = False
        finally:
            self._depth = 0
            self._half_written = False
            self._fold_at_commit = True
            self._heads.clear()
            self._dirty.clear()
            self._queued.clear()
            self._queued_mentions.clear()

    def _fold_ids(self, *, force: bool) -> None:
        """`entry_index.fold` (inside a write transaction, after the queued appends): once
        the tail holds `FOLD_IDS_AT` rows, or with ``force`` whenever there is one."""
        entry_index.fold(self._db, at=None if force else FOLD_IDS_AT)

    def found_damage(self, exc: BaseException | str) -> StoreDamaged:
        """SQLite found the file damaged: refuse every write from now on, record it for later
        processes, and return the error to raise."""
        self.damaged = self.damaged or str(exc)
        return record_damage(self.path, self.damaged)

    def check_integrity(self, *, quick: bool = True) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` (``integrity_check`` if not quick): the problems it
        finds, none if the file is sound.  Damage found is recorded (`found_damage`)."""
        pragma = "quick_check" if quick else "integrity_check"
        try:
            rows = [
                str(row[0], "utf-8", "replace") if isinstance(row[0], bytes) else str(row[0])
                for row in self._conn.execute(f"PRAGMA {pragma}(100)")
            ]
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            rows = [str(exc)]
        if rows == ["ok"]:
            return []
        self.found_damage(rows[0])
        return rows

    def _open_read_only(self, exc: sqlite3.Error) -> None:
        """On a full disk SQLite cannot create the -shm / -wal files a WAL database needs,
        even to read.  With no (or an empty) -wal file, the database file is complete and no
        one writes it (a writer would have a -wal): open it immutable, for reading; writes
        are refused."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:  # (the failed open may leave an empty one)
            raise StorageFull(f"the disk is full: cannot open the store {self.path} ({exc})") from None
        uri = f"{self.path.resolve().as_uri()}?immutable=1"
        try:
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._conn.text_factory = bytes
            (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error:
            raise StorageFull(f"the disk is full: cannot open the store {self.path} ({exc})") from None
        if version != SCHEMA_VERSION:
            raise StorageFull(f"the disk is full: cannot upgrade the store {self.path} ({exc})")
        self.read_only = self.full = True

    @contextmanager
    def _cache_write(self) -> Iterator[list[bool]]:
        """For the tables that only spare the next start some work (DHT contacts, the
        gossip address book, peer scores): a full disk skips the write (counted in
        ``refused_writes``) instead of failing the node's input that caused it; the
        yielded box is truthy once the write committed."""
        box: list[bool] = []
        try:
            yield box
            box.append(True)
        except StorageFull:
            pass

    def _rollback(self) -> None:
        # SQLite may already have rolled back (it does for some SQLITE_FULL cases).
        # The raw connection: queued rows are dropped, not written first.
        if self._conn.in_transaction:
            with suppress(sqlite3.OperationalError):
                self._conn.execute("ROLLBACK")
        with suppress(sqlite3.Error):
            self._load_caps()

    def _load_caps(self) -> None:
        try:
            rows = self._conn.execute(
                "SELECT device, after FROM devices WHERE after IS NOT NULL AND consented"
            ).fetchall()
        except sqlite3.OperationalError:  # a store not migrated (read-only): no devices
            rows = []
        self._caps = {bytes(d): int(a) for d, a in rows}

    def _disk_full(self, exc: sqlite3.Error) -> bool:
        """Whether exc is SQLite saying the disk is full (see the module docstring)."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL or (self.read_only and code == _SQLITE_READONLY):
            return True
        if code != _SQLITE_IOERR:
            return False
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return False
        return stat.f_bavail * stat.f_frsize < FULL_BELOW_BYTES

    def free_bytes(self) -> int | None:
        """Bytes free for us on the store's file system (None if the OS cannot say)."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def _flush_heads(self) -> None:
        self._db.executemany(
            "INSERT INTO feeds (author, latest_seq, latest_id, forked_seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (author) DO UPDATE SET latest_seq = excluded.latest_seq, "
            "latest_id = excluded.latest_id, forked_seq = excluded.forked_seq",
            [
                (h.author, h.latest_seq, h.latest_id, h.forked_seq)
                for h in map(self._heads.__getitem__, self._dirty)
            ],
        )

    # -- writing ----------------------------------------------------------------

    def append(self, identity: Identity, kind: str, body: dict[str, Any], timestamp: int) -> Entry:
        """Sign and store the next entry of identity's own feed.

        Outside a transaction, the entry is committed before this returns.  Inside
        one, a post's or a profile's row is queued (`_db`): it reaches SQLite in a
        multi-row INSERT with the entries appended after it, before anything else
        uses the database and before COMMIT.  Kinds with derived tables (follow,
        unfollow, delete) are written at once, after the queue.
        """
        if not self._depth:
            with self.transaction():
                return self.append(identity, kind, body, timestamp)
        author = identity.public_key
        if author == self._unknown_head and not self.head_known(author):
            raise HeadUnknownError(refusal(author, self.latest_seq(author)))
        state = self._heads.get(author)
        if state is None:
            state = self._heads[author] = self._read_feed_state(author)
        if state.forked_seq is not None:
            raise FeedForkedError("this feed is forked; refusing to extend it")
        entry = create_entry(
            identity,
            seq=state.latest_seq + 1,
            prev=state.latest_id,
            timestamp=timestamp,
            kind=kind,
            body=body,
        )
        if kind in (POST, PROFILE):
            seq, new_id, fields = entry.seq, entry.id, entry.body
            queued = self._queued
            queued.append((author, seq, new_id, timestamp, kind, fields.get("reply_to"), entry.raw))
            if "mentions" in fields:
                self._queued_mentions.extend((m, new_id) for m in fields["mentions"])
            self._heads[author] = _unforked_head(author, seq, new_id)
            self._dirty.add(author)
            if len(queued) >= _QUEUED_ROWS:
                self._write_queued()
        else:
            self._insert(entry)
        return entry

    def ingest(self, raw: bytes, *, now_ms: int | None = None) -> Ingested:
        """Verify and store an entry from elsewhere; raise `EntryError` if refused.

        With ``now_ms`` (the receiver's clock), an entry stamped more than
        `limits.MAX_AHEAD_MS` later is refused (`EntryFromFuture`); every
        ingest of a peer's entries passes it.
        """
        entry = decode_entry(raw)
        with self.transaction():
            return self._ingest_decoded(entry, now_ms)

    def ingest_many(self, raws: Iterable[bytes], *, now_ms: int | None = None) -> IngestReport:
        """Ingest entries in order until the first refusal; keep the valid prefix.

        Entries are decoded on this thread and their signatures verified on
        the store's `VerifyPool` (`p2pblog.verify.verify_in_order`: bounded and
        ordered); a chunk is written only once it came back verified, in
        transactions of `limits.INGEST_BATCH` entries.  raws is read at most a
        few chunks ahead of what is stored, so it may be a stream of any
        length.  The report says what was stored and why the rest was refused.
        ``now_ms`` bounds timestamps as in `ingest`.
        """
        if isinstance(raws, list | tuple) and len(raws) <= VERIFY_CHUNK:
            return self._ingest_few(raws, now_ms)
        report = IngestReport()
        source = iter(raws)
        taken = 0  # raws read from source
        ended = False
        cut: EntryError | None = None  # the decode error that ends what is read

        def chunks() -> Iterator[list[Entry]]:
            nonlocal taken, ended, cut
            while not ended and cut is None:
                chunk: list[Entry] = []
                for raw in source:
                    taken += 1
                    try:
                        chunk.append(decode_entry(raw, check_signature=False))
                    except EntryError as exc:
                        cut = exc
                        break
                    if len(chunk) >= VERIFY_CHUNK:
                        break
                else:
                    ended = True
                if chunk:
                    yield chunk

        decoded = chunks()
        first = next(decoded, None)
        # An input that fits in one chunk is verified inline, through the cache,
        # as single entries always were; a bulk one on the pool, uncached.
        small = ended or cut is not None
        pool = None if small else self._verify_pool()
        chunks_read = itertools.chain(() if first is None else (first,), decoded)
        from p2pblog.verify import verify_in_order

        stream = verify_in_order(chunks_read, pool, cache=small)
        with contextlib.closing(stream), self._page_cache(None if small else limits.BULK_CACHE_KIB):
            pending = next(stream, None)
            while pending is not None:
                with self.transaction():
                    written = 0
                    while pending is not None and written < limits.INGEST_BATCH:
                        chunk, forged = pending
                        try:
                            self._write_batch(chunk if forged is None else chunk[:forged], report, now_ms)
                        except BaseException:
                            self._half_written = True
                            raise
                        if forged is not None:
                            report.refuse(EntrySignatureError("signature does not verify against the author"))
                        written += len(chunk)
                        pending = None if report.error is not None else next(stream, None)
                    if pending is not None and self._depth == 1:
                        # The ids are folded once, at the ingest's last commit: a fold writes
                        # every page of entry_ids its ids land on, nearly all of them for a
                        # batch this size, so folding at each commit would rewrite them all.
                        self._fold_at_commit = False
        if report.error is None and cut is not None:
            report.refuse(cut)
        if report.error is not None:
            # Everything from the first refusal on is refused, read or not.
            report.refused = taken + sum(1 for _ in source) - (report.error_index or 0)
        return report

    @contextmanager
    def _page_cache(self, kib: int | None) -> Iterator[None]:
        """SQLite's page cache at ``kib`` KiB (None: unchanged) until the block ends."""
        if kib is None:
            yield
            return
        (before,) = self._conn.execute("PRAGMA cache_size").fetchone()
        self._conn.execute(f"PRAGMA cache_size = {-int(kib)}")
        try:
            yield
        finally:
            with suppress(sqlite3.Error):  # the connection may have failed with the ingest
                self._conn.execute(f"PRAGMA cache_size = {int(before)}")

    def _ingest_few(self, raws: Sequence[bytes], now_ms: int | None) -> IngestReport:
        """`ingest_many` of a few entries: verified inline, through the cache."""
        report = IngestReport()
        batch: list[Entry] = []
        for raw in raws:
            try:
                batch.append(decode_entry(raw))
            except EntryError as exc:
                self._ingest_batch(batch, report, now_ms)
                report.refuse(exc)
                break
        else:
            self._ingest_batch(batch, report, now_ms)
        if report.error is not None:
            report.refused = len(raws) - (report.error_index or 0)
        return report

    def ingest_entries(self, entries: Iterable[Entry], *, now_ms: int | None = None) -> IngestReport:
        """`ingest_many` for entries the caller decoded with `decode_entry` (signature checked).

        Cheap to call many times inside one outer `transaction` (a group
        commit): each call joins it.  An error that escapes a call (SQLite's,
        never a refused entry: those are in the report) may leave its batch
        half-written, so the outer transaction then rolls back and raises
        `StoreError` instead of committing.
        """
        report = IngestReport()
        batch: list[Entry] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) >= limits.INGEST_BATCH:
                self._ingest_batch(batch, report, now_ms)
                batch = []
        self._ingest_batch(batch, report, now_ms)
        return report

    def _verify_pool(self) -> VerifyPool | VerifyProcesses | None:
        """The pool bulk ingests verify on: the one passed in, else the store's own
        (started on first use, closed with the store); None on one core."""
        from p2pblog.verify import VerifyPool, default_workers

        if self._pool is None and default_workers() > 1:
            self._pool = self._own_pool = VerifyPool()
        return self._pool

    def _ingest_batch(self, batch: list[Entry], report: IngestReport, now_ms: int | None) -> None:
        if not batch:
            return
        with self.transaction():
            try:
                self._write_batch(batch, report, now_ms)
            except BaseException:
                self._half_written = True
                raise

    def _write_batch(self, batch: list[Entry], report: IngestReport, now_ms: int | None) -> None:
        """Store verified entries in order until the first refusal (inside a transaction).

        The common case, the next entry of a feed that is not forked, is
        checked here and its row queued; the queue goes to SQLite in one
        ``executemany`` before anything reads the entries table (duplicates,
        forks, deletes) and at the end.  Everything else takes `_ingest_decoded`.
        """
        rows: list[tuple[bytes, int, bytes, int, str, bytes | None, bytes]] = []
        mentioned: list[tuple[bytes, bytes]] = []
        heads = self._heads
        limit = None if now_ms is None else now_ms + limits.MAX_AHEAD_MS
        caps = self._caps
        # The head of the feed being extended lives in locals while entries extend it
        # (a batch is mostly runs of one feed), and goes to ``heads`` when the run ends.
        run: bytes | None = None  # its author; None: no run (or a forked feed)
        run_seq, run_id, run_start = 0, None, 0
        for i, entry in enumerate(batch):
            if report.error is not None:
                report.refused += len(batch) - i
                break
            author = entry.author
            if author != run:
                if run is not None and run_seq != run_start:
                    self._set_head(FeedState(run, run_seq, run_id, None))
                state = heads.get(author)
                if state is None:
                    state = heads[author] = self._read_feed_state(author)
                run = author if state.forked_seq is None else None
                run_seq = run_start = state.latest_seq
                run_id = state.latest_id
            if (
                run is not None
                and entry.seq == run_seq + 1
                and entry.prev == run_id
                and (limit is None or entry.timestamp <= limit)
                and (not caps or author not in caps)
            ):
                run_seq, run_id = entry.seq, entry.id
                kind = entry.kind
                body = entry.body
                reply_to = body.get("reply_to") if kind == POST else None
                rows.append((author, run_seq, run_id, entry.timestamp, kind, reply_to, entry.raw))
                report.accepted += 1
                if kind == POST:
                    if "mentions" in body:
                        mentioned.extend((m, run_id) for m in body["mentions"])
                elif kind != PROFILE:
                    self._flush_rows(rows, mentioned)
                    self._derive(entry)
                continue
            # Anything else (a duplicate, a fork, a refusal) takes the general path,
            # which reads the entries table and the heads: bring both up to date.
            if run is not None and run_seq != run_start:
                self._set_head(FeedState(run, run_seq, run_id, None))
            run = None
            self._flush_rows(rows, mentioned)
            try:
                outcome = self._ingest_decoded(entry, now_ms)
            except EntryError as exc:
                report.refuse(exc)
                continue
            if outcome is Ingested.ACCEPTED:
                report.accepted += 1
            elif outcome is Ingested.DUPLICATE:
                report.duplicates += 1
            else:
                report.forks += 1
                report.fork_seqs.append((entry.author, entry.seq))
        if run is not None and run_seq != run_start:
            self._set_head(FeedState(run, run_seq, run_id, None))
        self._flush_rows(rows, mentioned)

    def _ingest_decoded(self, entry: Entry, now_ms: int | None) -> Ingested:
        # Every check comes before the first write: an entry is stored whole or not at all.
        check_not_ahead(entry, now_ms)
        cap = self._caps.get(entry.author)
        if cap is not None and entry.seq > cap:
            raise DeviceRevokedError(
                f"device {encode_handle(entry.author)} was revoked after its seq {cap}: "
                f"seq {entry.seq} is not its identity's"
            )
        state = self.feed_state(entry.author)
        if entry.seq <= state.latest_seq:
            row = self._db.execute(
                "SELECT id, raw FROM entries WHERE author = ? AND seq = ?",
                (entry.author, entry.seq),
            ).fetchone()
            if row is None:  # pragma: no cover - feeds are contiguous from 1
                raise StoreError(f"store is missing seq {entry.seq} of a feed it holds")
            if row[0] == entry.id:
                return Ingested.DUPLICATE
            self._record_fork(entry, row[0], row[1], state)
            return Ingested.FORK
        if state.forked_seq is not None:
            raise FeedForkedError(
                f"feed {encode_handle(entry.author)} is forked at seq {state.forked_seq}; "
                f"nothing past the fork is accepted"
            )
        if entry.seq != state.latest_seq + 1:
            raise ChainError(f"seq {entry.seq} does not follow the stored seq {state.latest_seq} (gap)")
        if entry.prev != state.latest_id:
            raise ChainError(f"prev of seq {entry.seq} does not match the stored entry {state.latest_seq}")
        self._insert(entry)
        return Ingested.ACCEPTED

    def _record_fork(self, entry: Entry, other_id: bytes, other_raw: bytes, state: FeedState) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO forks (author, seq, id, raw) VALUES (?, ?, ?, ?)",
            [
                (entry.author, entry.seq, other_id, other_raw),
                (entry.author, entry.seq, entry.id, entry.raw),
            ],
        )
        forked = entry.seq if state.forked_seq is None else min(state.forked_seq, entry.seq)
        self._set_head(FeedState(state.author, state.latest_seq, state.latest_id, forked))

    def _insert(self, entry: Entry) -> None:
        if not self._depth:
            raise LocalProtocolError("writes happen inside Store.transaction()")
        self._db.execute(_INSERT_ENTRY, _entry_row(entry))
        self._set_head(FeedState(entry.author, entry.seq, entry.id, self.feed_state(entry.author).forked_seq))
        if entry.kind == POST:
            if entry.mentions:
                self._db.executemany(_INSERT_MENTION, [(m, entry.id) for m in entry.mentions])
        else:
            self._derive(entry)

    def _flush_rows(
        self,
        rows: list[tuple[bytes, int, bytes, int, str, bytes | None, bytes]],
        mentioned: list[tuple[bytes, bytes]],
    ) -> None:
        """Write the entries (and mentions) `_write_batch` queued, and empty the queues."""
        _insert_rows(self._db, rows, mentioned)

    def _derive(self, entry: Entry) -> None:
        """Maintain the tables derived from a stored follow, unfollow or delete entry."""
        kind = entry.kind
        if kind == FOLLOW:
            self._db.execute(
                "INSERT OR IGNORE INTO follows (follower, feed) VALUES (?, ?)",
                (entry.author, entry.feed),
            )
        elif kind == UNFOLLOW:
            self._db.execute(
                "DELETE FROM follows WHERE follower = ? AND feed = ?", (entry.author, entry.feed)
            )
        elif kind in DEVICE_KINDS:
            self._derive_device(entry)
        elif kind == DELETE:
            # Only the author may retract, and only an earlier entry of the same feed.
            self._fold_ids(force=True)
            self._db.execute(
                _RETRACT,
                {"delete": entry.id, "target": entry.target, "author": entry.author, "seq": entry.seq},
            )

    # -- reading ----------------------------------------------------------------

    def _set_head(self, state: FeedState) -> None:
        self._heads[state.author] = state
        self._dirty.add(state.author)

    def feed_state(self, author: bytes) -> FeedState:
        if self._depth:
            cached = self._heads.get(author)
            if cached is None:
                cached = self._heads[author] = self._read_feed_state(author)
            return cached
        return self._read_feed_state(author)

    def _read_feed_state(self, author: bytes) -> FeedState:
        row = self._db.execute(
            "SELECT latest_seq, latest_id, forked_seq FROM feeds WHERE author = ?", (author,)
        ).fetchone()
        if row is None:
            return FeedState(author, 0, None, None)
        return FeedState(author, row[0], row[1], row[2])

    def latest_seq(self, author: bytes) -> int:
        return self.feed_state(author).latest_seq

    def clock(self) -> dict[bytes, int]:
        """The latest seq of every stored feed (the vector gossip exchanges)."""
        return {bytes(a): s for a, s in self._db.execute("SELECT author, latest_seq FROM feeds")}

    def feeds(self) -> list[FeedState]:
        rows = self._db.execute("SELECT author, latest_seq, latest_id, forked_seq FROM feeds ORDER BY author")
        return [FeedState(*row) for row in rows]

    def get(self, entry_id: bytes) -> FeedItem | None:
        db = self._db
        row = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM {_ENTRY_FROM} WHERE e.rowid = {rowid_of('?1')}", (entry_id,)
        ).fetchone()
        if row is None:
            row = db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM loose_entries e LEFT JOIN retractions r ON r.target = e.id "
                "WHERE e.id = ?",
                (entry_id,),
            ).fetchone()
        return None if row is None else _item(row)

    def feed(
        self,
        author: bytes,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        kind: str | None = None,
    ) -> list[FeedItem]:
        """A feed, newest first; only entries before seq ``before_seq``, of ``kind``, if given."""
        # `seq < ?` spelled out (not "? IS NULL OR ..."), so that the (author, seq) index
        # seeks to the page instead of walking down from the newest entry.
        bound = "AND e.seq < ? " if before_seq is not None else ""
        params: tuple[object, ...] = (author, before_seq) if before_seq is not None else (author,)
        rows = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM {_ENTRY_FROM} WHERE e.author = ? {bound}"
            "AND (? IS NULL OR e.kind = ?) ORDER BY e.seq DESC LIMIT ?",
            (*params, kind, kind, -1 if limit is None else limit),
        )
        return [_item(row) for row in rows]

    def feed_range(self, author: bytes, first: int, last: int | None = None) -> Iterator[Entry]:
        """Entries first..last (inclusive) of a feed in seq order, signed bytes as stored."""
        rows = self._db.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq >= ? AND seq <= ? ORDER BY seq",
            (author, first, limits.MAX_SEQ if last is None else last),
        )
        for (raw,) in rows:
            yield _stored(raw)

    def raw_range(self, author: bytes, first: int, limit: int) -> list[bytes]:
        """Up to limit signed entries of author from seq first on, as stored (not decoded)."""
        rows = self._db.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (author, first, limit),
        )
        return [bytes(raw) for (raw,) in rows]

    def following(self, author: bytes) -> set[bytes]:
        """The feeds author follows, as its stored follow/unfollow entries say."""
        rows = self._db.execute("SELECT feed FROM follows WHERE follower = ?", (author,))
        return {bytes(feed) for (feed,) in rows}

    def followers(self, feed: bytes) -> set[bytes]:
        """The authors of held feeds that follow feed, as their follow/unfollow entries say."""
        rows = self._db.execute("SELECT follower FROM follows WHERE feed = ?", (feed,))
        return {bytes(follower) for (follower,) in rows}

    def timeline(
        self, owner: bytes, *, limit: int = 50, before: tuple[int, bytes, int] | None = None
    ) -> list[FeedItem]:
        """Posts by owner and the feeds owner follows (not blocked), newest first.

        ``before`` (timestamp, author, seq) of the last item of a page gives the next
        page: the items that sort after it."""
        after, params = "", tuple[object, ...]()
        if before is not None:
            after = (
                "AND (e.timestamp < ? OR (e.timestamp = ? AND "
                "(e.author > ? OR (e.author = ? AND e.seq < ?)))) "
            )
            t, a, q = before
            params = (t, t, a, a, q)
        # The devices of the identities followed (and of the owner's): one merged timeline.
        # A paired device (`p2pblog.devices`) also shows what its identity follows.
        followed = (
            "(SELECT feed FROM follows WHERE follower = ?1 OR follower = "
            "(SELECT identity FROM devices WHERE device = ?1 AND consented))"
        )
        rows = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM {_ENTRY_FROM} "
            f"WHERE e.kind = ?2 AND (e.author = ?1 OR e.author IN {followed} OR e.author IN "
            "  (SELECT device FROM devices WHERE consented AND (identity = ?1 OR identity IN "
            f"    {followed}))) AND {_NOT_BLOCKED} {after}"
            "ORDER BY e.timestamp DESC, e.author, e.seq DESC LIMIT ?",
            (owner, POST, *params, limit),
        )
        return [_item(row) for row in rows]

    def mentions(self, key: bytes, *, limit: int = 50) -> list[FeedItem]:
        """Posts that mention key (from replicated feeds and admitted notices), newest first.

        Posts by blocked authors are left out."""
        rows = self._db.execute(
            f"SELECT raw, deleted FROM ({_MENTIONS_OF}) ORDER BY ts DESC, author, seq DESC LIMIT ?",
            (key, -(2**63), key, -(2**63), limit),
        )
        return [_item(row) for row in rows]

    def mention_count(self, key: bytes, *, after: int = 0, limit: int = 100) -> int:
        """How many posts that `mentions` lists are stamped after ``after`` (ms), up to limit."""
        row = self._db.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM ({_MENTIONS_OF}) LIMIT ?)", (key, after, key, after, limit)
        ).fetchone()
        return int(row[0])

    def thread(self, entry_id: bytes) -> Thread | None:
        """The entry, its ancestors (oldest first) and all replies below it, by time."""
        root = self.get(entry_id)
        if root is None:
            return None
        ancestors: list[FeedItem] = []
        seen = {entry_id}
        missing = None
        parent = root.entry.reply_to
        while parent is not None and parent not in seen:  # `seen` stops reply cycles
            seen.add(parent)
            item = self.get(parent)
            if item is None:
                missing = parent
                break
            ancestors.append(item)
            parent = item.entry.reply_to
        rows = self._db.execute(
            # Each table by its reply_to index, not through the known_entries view, which
            # SQLite copies whole into the recursive step (154 ms at 100,000 entries).
            "WITH RECURSIVE below(id) AS ("
            "  SELECT id FROM entries WHERE reply_to = ?1 "
            "  UNION SELECT id FROM loose_entries WHERE reply_to = ?1 "
            "  UNION SELECT e.id FROM entries e JOIN below b ON e.reply_to = b.id "
            "  UNION SELECT l.id FROM loose_entries l JOIN below b ON l.reply_to = b.id) "
            f"SELECT {_ENTRY_COLUMNS} FROM ("
            "  SELECT x.id, x.author, x.seq, x.timestamp, x.kind, x.reply_to, x.raw "
            f"  FROM below JOIN entries x ON x.rowid = {rowid_of('below.id')} "
            "  UNION ALL SELECT x.id, x.author, x.seq, x.timestamp, x.kind, x.reply_to, x.raw "
            f"  FROM below JOIN loose_entries x ON x.id = below.id WHERE {rowid_of('x.id')} IS NULL"
            f") e LEFT JOIN retractions r ON r.target = e.id WHERE {_NOT_BLOCKED} "
            "ORDER BY e.timestamp, e.author, e.seq",
            (entry_id,),
        )
        replies = [_item(row) for row in rows]
        return Thread(root, ancestors[::-1], replies, missing)

    def profile(self, author: bytes) -> dict[str, str]:
        """The author's profile: the latest value of each field set by profile entries."""
        merged: dict[str, str] = {}
        # Through the (kind, timestamp) index: profile entries are few among all entries,
        # while the (author, seq) index would walk every entry of a long feed (10 ms at
        # 20,000 posts, for each author a web page shows).
        rows = self._db.execute(
            "SELECT raw FROM entries INDEXED BY entries_kind_time WHERE kind = ? AND author = ? ORDER BY seq",
            (PROFILE, author),
        )
        for (raw,) in rows:
            merged.update(_stored(raw).body)
        return merged

    def fork_proofs(self, author: bytes) -> list[Entry]:
        rows = self._db.execute("SELECT raw FROM forks WHERE author = ? ORDER BY seq, id", (author,))
        return [_stored(raw) for (raw,) in rows]

    # -- admitted mention notices (entries of feeds we do not replicate) -------------

    def has_entry(self, entry_id: bytes) -> bool:
        """Whether the entry is stored (in a replicated feed or as an admitted notice)."""
        row = self._db.execute(
            f"SELECT {rowid_of('?1')} IS NOT NULL OR EXISTS (SELECT 1 FROM loose_entries WHERE id = ?1)",
            (entry_id,),
        ).fetchone()
        return bool(row[0])

    def add_loose(self, entry: Entry, received: int) -> bool:
        """Keep one verified entry of a feed we may not replicate (an admitted mention notice).

        A post's mentions are indexed as a replicated post's are.  A delete
        entry retracts a stored entry of the same author with a lower seq.
        Returns False if the entry was already stored; raises `EntryFromFuture`
        if it is stamped more than `limits.MAX_AHEAD_MS` after ``received``, and
        `DeviceRevokedError` for an entry of a revoked device past its cut-off.
        """
        check_not_ahead(entry, received)
        cap = self._caps.get(entry.author)
        if cap is not None and entry.seq > cap:
            raise DeviceRevokedError(f"device {encode_handle(entry.author)} was revoked after its seq {cap}")
        if self.has_entry(entry.id):
            return False
        with self.transaction():
            db = self._db
            db.execute(
                "INSERT INTO loose_entries (id, author, seq, timestamp, kind, reply_to, raw, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.id,
                    entry.author,
                    entry.seq,
                    entry.timestamp,
                    entry.kind,
                    entry.reply_to,
                    entry.raw,
                    received,
                ),
            )
            if entry.kind == POST and entry.mentions:
                db.executemany(
                    "INSERT OR IGNORE INTO mentions (mentioned, entry_id) VALUES (?, ?)",
                    [(m, entry.id) for m in entry.mentions],
                )
            elif entry.kind == DELETE:
                self._fold_ids(force=True)
                db.execute(
                    _RETRACT,
                    {"delete": entry.id, "target": entry.target, "author": entry.author, "seq": entry.seq},
                )
        return True

    def within_follow_hops(self, owner: bytes, key: bytes) -> bool:
        """Whether owner follows key, or follows someone whose stored feed follows key."""
        row = self._db.execute(
            "SELECT 1 FROM follows WHERE follower = ? AND feed = ? UNION ALL "
            "SELECT 1 FROM follows a JOIN follows b ON b.follower = a.feed "
            "WHERE a.follower = ? AND b.feed = ? LIMIT 1",
            (owner, key, owner, key),
        ).fetchone()
        return row is not None

    # -- track (issue 19): single entries by seq -----------------------------------------

    def held_seqs(self, author: bytes, seqs: Iterable[int]) -> set[int]:
        """Which of ``seqs`` of author's feed are stored (replicated or loose)."""
        wanted = sorted(set(seqs))
        if not wanted:
            return set()
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT seq FROM entries WHERE author = ? AND seq IN ({marks}) UNION "
            f"SELECT seq FROM loose_entries WHERE author = ? AND seq IN ({marks})",
            (author, *wanted, author, *wanted),
        )
        return {int(seq) for (seq,) in rows}

    def posts_at(self, author: bytes, seqs: Iterable[int]) -> list[bytes]:
        """The signed posts of author's replicated feed at ``seqs`` (not retracted), by seq."""
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT e.raw FROM {_ENTRY_FROM} WHERE e.author = ? AND e.seq IN ({marks}) "
            "AND e.kind = ? AND r.target IS NULL ORDER BY e.seq",
            (author, *wanted, POST),
        )
        return [bytes(raw) for (raw,) in rows]

    def follows_of_follows(self, owner: bytes, key: bytes) -> int:
        """How many keys owner follows have a stored feed that follows key (issue 15)."""
        row = self._db.execute(
            "SELECT COUNT(DISTINCT a.feed) FROM follows a JOIN follows b ON b.follower = a.feed "
            "WHERE a.follower = ? AND b.feed = ? AND a.feed != ?",
            (owner, key, key),
        ).fetchone()
        return int(row[0])

    # -- settings and search ------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        """The value stored for key with `set_setting`, or None."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else _text(row[0])

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- the own feed's head (`p2pblog.own_head`) ------------------------------------------

    def _read_unknown_head(self) -> bytes | None:
        try:
            value = self.setting(OWN_HEAD)
        except sqlite3.Error:
            return None  # opened read-only before the settings table existed: nothing to guard
        if value is None or not value.startswith(UNKNOWN_PREFIX):
            return None
        with suppress(ValueError):
            return bytes.fromhex(value[len(UNKNOWN_PREFIX) :])
        return None

    def head_known(self, author: bytes) -> bool:
        """Whether this store knows the head of author's feed, so `append` may extend it
        (read again while unknown: another process may have marked it known)."""
        if author != self._unknown_head:
            return True
        self._unknown_head = self._read_unknown_head()
        return author != self._unknown_head

    def mark_head_known(self, author: bytes) -> None:
        """The head of author's feed is known from now on (caught up, imported, new)."""
        del author  # one identity per home: the marker names the key only while unknown
        self.set_setting(OWN_HEAD, KNOWN)
        self._unknown_head = None

    def mark_head_unknown(self, author: bytes) -> None:
        """Refuse to extend author's feed until its head is known (a restored home)."""
        self.set_setting(OWN_HEAD, unknown_marker(author))
        self._unknown_head = author

    def update_search_index(self, limit: int | None = None) -> int:
        """Index the posts stored since the last search (at most limit), in transactions of
        `SEARCH_INDEX_CHUNK` posts (a node writing to the same store waits for one of them
        at most, not for a whole backlog); returns how many were indexed (`p2pblog.search`)."""
        from p2pblog import search  # (it imports this module)

        done = 0
        while limit is None or done < limit:
            step = SEARCH_INDEX_CHUNK if limit is None else min(SEARCH_INDEX_CHUNK, limit - done)
            with self.transaction():
                indexed = search.catch_up(self._db, step)
            done += indexed
            if indexed < step:
                break
        return done

    def search(
        self,
        query: str,
        *,
        limit: int = 50,
        before: int | tuple[int, bytes, int] | None = None,
        index_limit: int | None = None,
    ) -> list[SearchHit]:
        """Posts held that match query, newest first, with highlight segments.

        Catches the index up first, at most ``index_limit`` posts of it (a caller on an
        event loop bounds the pause; `search_behind` says whether posts remain unindexed;
        a full disk leaves the index as it is).  ``before``
        pages: a timestamp (ms, exclusive) or a hit's ``cursor``.  Raises
        `p2pblog.search.SearchError` (a ValueError) for a query it cannot search.
        """
        from p2pblog import search

        terms = search.parse_query(query)  # a bad query writes nothing
        return self.search_terms(terms, limit=limit, before=before, index_limit=index_limit)

    def search_terms(
        self,
        terms: Sequence[Term],
        *,
        limit: int = 50,
        before: int | tuple[int, bytes, int] | None = None,
        index_limit: int | None = None,
    ) -> list[SearchHit]:
        """`search` for terms already parsed (`p2pblog.track` builds them itself)."""
        from p2pblog import search

        if not self.read_only and search.behind(self._db):  # no write lock when up to date
            with suppress(StorageFull, StoreDamaged):  # search what is indexed
                self.update_search_index(index_limit)
        return search.search(self._db, terms, limit=limit, before=before)

    def search_behind(self) -> bool:
        """Whether posts are stored that the search index does not hold yet."""
        from p2pblog import search

        return bool(search.behind(self._db))

    # -- petnames, blocks, own name claims --------------------------------------------

    def set_petname(self, name: str, key: bytes) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO petnames (name, key) VALUES (?, ?)", (name, key))

    def remove_petname(self, name: str) -> bool:
        with self.transaction():
            return self._db.execute("DELETE FROM petnames WHERE name = ?", (name,)).rowcount > 0

    def petnames(self) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT name, key FROM petnames ORDER BY name")
        return [(_text(name), bytes(key)) for name, key in rows]

    def petname(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT key FROM petnames WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def block(self, key: bytes, since: int) -> bool:
        """Block key; False if it was already blocked."""
        with self.transaction():
            cursor = self._db.execute("INSERT OR IGNORE INTO blocks (key, since) VALUES (?, ?)", (key, since))
            return cursor.rowcount > 0

    def unblock(self, key: bytes) -> bool:
        with self.transaction():
            return self._db.execute("DELETE FROM blocks WHERE key = ?", (key,)).rowcount > 0

    def blocks(self) -> list[tuple[bytes, int]]:
        """Blocked keys with the time (ms) they were blocked, oldest first."""
        rows = self._db.execute("SELECT key, since FROM blocks ORDER BY since, key")
        return [(bytes(key), int(since)) for key, since in rows]

    def save_name_claim(self, name: str, claimed: int, nonce: bytes, work: int) -> None:
        """Remember our own claim of name (republished by the node on a timer)."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO name_claims (name, claimed, nonce, work) VALUES (?, ?, ?, ?)",
                (name, claimed, nonce, work),
            )

    def name_claims(self) -> list[tuple[str, int, bytes, int]]:
        """Our own name claims: ``(name, claimed, nonce, work)``."""
        rows = self._db.execute("SELECT name, claimed, nonce, work FROM name_claims ORDER BY name")
        return [(_text(name), int(claimed), bytes(nonce), int(work)) for name, claimed, nonce, work in rows]

    # -- mention outbox -----------------------------------------------------------------

    def outbox_add(self, entry_id: bytes, recipient: bytes, stamp: bytes) -> None:
        """Queue a mention notice (an empty stamp: not made yet), or set its stamp."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO mention_outbox (entry_id, recipient, stamp) VALUES (?, ?, ?) "
                "ON CONFLICT (entry_id, recipient) DO UPDATE SET stamp = excluded.stamp",
                (entry_id, recipient, stamp),
            )

    def outbox_attempted(self, entry_id: bytes, recipient: bytes, attempts: int) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE mention_outbox SET attempts = ? WHERE entry_id = ? AND recipient = ?",
                (attempts, entry_id, recipient),
            )

    def outbox_remove(self, entry_id: bytes, recipient: bytes) -> None:
        with self.transaction():
            self._db.execute(
                "DELETE FROM mention_outbox WHERE entry_id = ? AND recipient = ?", (entry_id, recipient)
            )

    def outbox_remove_recipient(self, recipient: bytes) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM mention_outbox WHERE recipient = ?", (recipient,))

    def outbox(self) -> list[tuple[bytes, bytes, bytes, int]]:
        """Mention notices not yet acknowledged: ``(entry_id, recipient, stamp, attempts)``."""
        rows = self._db.execute("SELECT entry_id, recipient, stamp, attempts FROM mention_outbox")
        return [(bytes(e), bytes(r), bytes(s), int(a)) for e, r, s, a in rows]

    # -- DHT contacts -------------------------------------------------------------

    def save_contacts(self, contacts: Iterable[tuple[bytes, str, int, float]]) -> bool:
        """Replace the saved routing table with (node_id, host, port, last_seen) rows.

        Best effort (see `_cache_write`): False if a full disk refused it."""
        with self._cache_write() as saved, self.transaction():
            self._db.execute("DELETE FROM dht_contacts")
            self._db.executemany(
                "INSERT OR REPLACE INTO dht_contacts (node_id, host, port, last_seen) VALUES (?, ?, ?, ?)",
                contacts,
            )
        return bool(saved)

    def load_contacts(self) -> list[tuple[bytes, str, int, float]]:
        """The saved routing table, most recently seen first."""
        rows = self._db.execute(
            "SELECT node_id, host, port, last_seen FROM dht_contacts ORDER BY last_seen DESC"
        )
        out = []
        for node_id, host, port, last_seen in rows:
            text = host.decode("utf-8", "replace") if isinstance(host, bytes) else str(host)
            out.append((bytes(node_id), text, int(port), float(last_seen)))
        return out

    # -- gossip address book ----------------------------------------------------------

    def save_peer(self, public_key: bytes, host: str, port: int, last_connected: float) -> bool:
        """Remember where a gossip peer listens and when we last replicated with it.

        Best effort (see `_cache_write`): False if a full disk refused it."""
        with self._cache_write() as saved, self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO gossip_peers (public_key, host, port, last_connected) "
                "VALUES (?, ?, ?, ?)",
                (public_key, host, port, last_connected),
            )
            # Bounded: the least recently connected go first.
            self._db.execute(
                "DELETE FROM gossip_peers WHERE public_key NOT IN "
                "(SELECT public_key FROM gossip_peers ORDER BY last_connected DESC LIMIT ?)",
                (MAX_SAVED_PEERS,),
            )
        return bool(saved)

    def load_peers(self, limit: int) -> list[tuple[bytes, str, int, float]]:
        """Up to limit saved gossip peers, most recently connected first."""
        rows = self._db.execute(
            "SELECT public_key, host, port, last_connected FROM gossip_peers "
            "ORDER BY last_connected DESC LIMIT ?",
            (limit,),
        )
        out = []
        for key, host, port, when in rows:
            text = host.decode("utf-8", "replace") if isinstance(host, bytes) else str(host)
            out.append((bytes(key), text, int(port), float(when)))
        return out

    # -- peer scores --------------------------------------------------------------

    def save_peer_scores(self, rows: Iterable[tuple[bytes, float, float, float]]) -> bool:
        """Replace the saved peer scores: ``(subject, score, banned_until, updated)`` rows.

        The caller bounds how many it keeps; this stores what it is given.  Best effort
        (see `_cache_write`): False if a full disk refused it.
        """
        with self._cache_write() as saved, self.transaction():
            self._db.execute("DELETE FROM peer_scores")
            self._db.executemany(
                "INSERT OR REPLACE INTO peer_scores (subject, score, banned_until, updated) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
        return bool(saved)

    def load_peer_scores(self, limit: int) -> list[tuple[bytes, float, float, float]]:
        """Up to limit saved peer scores, the most recently updated first."""
        rows = self._db.execute(
            "SELECT subject, score, banned_until, updated FROM peer_scores ORDER BY updated DESC LIMIT ?",
            (limit,),
        )
        return [(bytes(k), float(s), float(b), float(u)) for k, s, b, u in rows]

    # -- checking -----------------------------------------------------------------

    def verify(self, author: bytes | None = None) -> VerifyReport:
        """Check the file (SQLite's quick_check), then re-verify every stored entry of one feed
        or all: signature, seq, chain, ids.  Damage SQLite reports while reading is a problem
        of the report (and recorded: `found_damage`), not an exception."""
        report = VerifyReport()
        report.problems += [f"the store file is damaged: {p}" for p in self.check_integrity()]
        try:
            self._verify_entries(author, report)
            if author is None:
                self._verify_ids(report)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self.found_damage(exc)
            report.problems.append(f"entries cannot be read: {exc}")
        if report.ok and self.damaged is not None and not self.check_integrity(quick=False):
            # Found sound throughout, by SQLite's full integrity check too (quick_check does
            # not compare indexes with their tables, a damage SQLite reports at run time):
            # repaired in place, writes may resume.
            with suppress(OSError):
                _damage_marker(self.path).unlink()
            self.damaged = None
        return report

    def _verify_ids(self, report: VerifyReport) -> None:
        """The id index (``entry_ids`` and ``entry_ids_new``) holds the id and rowid of every
        entry up to ``ids_through``, each once, and nothing else (`p2pblog.entry_index`)."""
        missing, stray = entry_index.disagreements(self._db)
        if not missing and not stray:
            return
        # Derived from the entries alone: rebuilt in place when the store can be written.
        fixed = ""
        if not self.read_only and self.damaged is None:
            with suppress(StoreError, sqlite3.OperationalError), self.transaction():
                entry_index.rebuild(self._db)
                fixed = " (rebuilt from the entries)"
        if missing:
            report.problems.append(f"the id index (entry_ids) misses {missing} stored entries{fixed}")
        if stray:
            report.problems.append(f"the id index (entry_ids) has {stray} rows of no stored entry{fixed}")

    def _verify_entries(self, author: bytes | None, report: VerifyReport) -> None:
        states = [self.feed_state(author)] if author is not None else self.feeds()
        for state in states:
            if state.latest_seq == 0:
                continue
            report.feeds += 1
            name = encode_handle(state.author)
            expected_seq, prev = 1, None
            rows = self._db.execute(
                "SELECT seq, id, raw FROM entries WHERE author = ? ORDER BY seq", (state.author,)
            )
            for seq, stored_id, raw in rows:
                report.entries += 1
                where = f"{name} seq {seq}"
                if seq != expected_seq:
                    report.problems.append(f"{where}: expected seq {expected_seq} (gap)")
                try:
                    entry = decode_entry(raw)
                except EntryError as exc:
                    report.problems.append(f"{where}: {exc}")
                    expected_seq, prev = seq + 1, stored_id
                    continue
                if entry.id != stored_id or entry.author != state.author or entry.seq != seq:
                    report.problems.append(f"{where}: stored bytes do not match the index")
                if seq == expected_seq and entry.prev != prev:
                    report.problems.append(f"{where}: prev does not match the previous entry")
                expected_seq, prev = seq + 1, entry.id
            if expected_seq - 1 != state.latest_seq or prev != state.latest_id:
                report.problems.append(f"{name}: feed head does not match the stored entries")
            for proof in self._db.execute(
                "SELECT seq, raw FROM forks WHERE author = ?", (state.author,)
            ).fetchall():
                try:
                    forked = decode_entry(proof[1])
                except EntryError as exc:
                    report.problems.append(f"{name} fork proof at seq {proof[0]}: {exc}")
                    continue
                if forked.author != state.author or forked.seq != proof[0]:
                    report.problems.append(f"{name} fork proof at seq {proof[0]} is misfiled")
            if state.forked_seq is not None:
                report.problems.append(f"{name}: feed is forked at seq {state.forked_seq} (proof kept)")


def check_not_ahead(entry: Entry, now_ms: int | None) -> None:
    """Raise `EntryFromFuture` if entry is stamped more than `limits.MAX_AHEAD_MS` after now_ms."""
    if now_ms is not None and entry.timestamp > now_ms + limits.MAX_AHEAD_MS:
        raise EntryFromFuture(
            f"seq {entry.seq} is stamped {(entry.timestamp - now_ms) / 3_600_000:.1f} hours ahead of "
            f"our clock; the limit is {limits.MAX_AHEAD_MS // 3_600_000} hours"
        )


def _insert_rows(
    db: sqlite3.Connection,
    rows: list[tuple[bytes, int, bytes, int, str, bytes | None, bytes]],
    mentioned: list[tuple[bytes, bytes]],
) -> None:
    """Write queued entry rows (and their mentions), and empty the queues.

    Many rows per INSERT statement, not ``executemany``: one statement step
    per `_ROWS_PER_INSERT` rows instead of one per row.  It binds faster
    (queued writes: 5.2 -> 4.6 us per entry), and the sqlite3 module
    releases the GIL around every step, so the writing thread has to win
    it back from the verifier threads 128 times less often.

    The blobs are bound as ``bytearray``: the sqlite3 module binds an exact
    int, float, str or bytearray at once, but looks every other value up in
    its adapter registry first (CPython's ``need_adapt``), which costs more
    than the copy (binding 128 rows: 1.66 -> 0.87 us per row; with the copies,
    about 0.5 us less).  A run of one feed shares one copy of its author.
    """
    for first in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[first : first + _ROWS_PER_INSERT]
        params: list[object] = []
        extend = params.extend
        author: bytes | None = None
        author_blob = bytearray()
        for key, seq, entry_id, timestamp, kind, reply_to, raw in part:
            if key is not author:
                author, author_blob = key, bytearray(key)
            extend((author_blob, seq, bytearray(entry_id), timestamp, kind, reply_to, bytearray(raw)))
        db.execute(_insert_entries(len(part)), params)
    rows.clear()
    if mentioned:
        db.executemany(_INSERT_MENTION, mentioned)
        mentioned.clear()


def _entry_row(entry: Entry) -> tuple[bytes, int, bytes, int, str, bytes | None, bytes]:
    return (entry.author, entry.seq, entry.id, entry.timestamp, entry.kind, entry.reply_to, entry.raw)


#: The connection reads TEXT as bytes (see Store.__init__).
_text = text_of


def _stored(raw: bytes) -> Entry:
    """An entry read back from the store: it was checked when stored, so failing to
    decode now means the database file was damaged."""
    try:
        return decode_entry(raw, check_signature=False)
    except EntryError as exc:
        raise StoreError(f"a stored entry is damaged ({exc}); `p2pblog verify` lists which") from None


def _item(row: tuple[Any, ...]) -> FeedItem:
    return FeedItem(_stored(row[0]), bool(row[1]))
