"""Finding a stored entry by its id: ``entry_ids`` in two levels, folded in sorted batches, and the tail.

Entry ids are BLAKE2b hashes, so an index on them is written at random: every
commit used to dirty a page of that index for nearly every entry it added, and
wrote it whole to the WAL, so the cost of a write grew with the store
(docs/design.md, "Entry ids, folded in sorted batches").  Since schema 9 the
``entries`` table has no index on ``id``; the id index (id -> rowid) holds the
ids of the rows up to the rowid in the ``ids_through`` setting, and is filled
many rows at a time in id order (a *fold*, `p2pblog.store.Store._fold_ids`).
Rows past ``ids_through`` (the *tail*: fewer than `FOLD_IDS_AT` of them after
any commit) are found by scanning it; `rowid_of` looks in all three places.
A lookup never writes: a scan of 1,000 rows takes 0.05 ms, where a fold and
its commit take 1.5-7.5 ms.

Since schema 10 the index has two levels.  A fold of 4,096 ids into one big
table touched nearly every page of it, so each fold rewrote the whole index
(about 1.1 KB of writes per entry in a store of 100,000).  Folds now go to the
small ``entry_ids_new``; once it holds `merge_at` rows (about the square root
of the big table's rows times a fold, at least `MERGE_IDS_MIN`), they move to
``entry_ids`` in one sorted pass.  A fold as large as a merge (a bulk ingest,
a rebuild), or the first one into an empty index, goes straight to
``entry_ids``.  Each id is in exactly one of the two tables; the setting
``ids_new_rows`` counts the rows of ``entry_ids_new`` (only the merges' timing
depends on it).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Final

#: Rows in the tail after which a commit folds their ids into ``entry_ids``: the
#: longest tail a lookup scans outside a write transaction.
FOLD_IDS_AT: Final = 4096

#: The least rows ``entry_ids_new`` gathers before they move to ``entry_ids`` (`merge_at`).
MERGE_IDS_MIN: Final = 16384

#: SQL: the rowid up to which the id index holds the ids of ``entries``.
IDS_THROUGH: Final = "coalesce((SELECT value FROM settings WHERE key = 'ids_through'), 0)"
_SET_THROUGH: Final = "INSERT OR REPLACE INTO settings (key, value) VALUES ('ids_through', ?)"
_NEW_ROWS: Final = "coalesce((SELECT value FROM settings WHERE key = 'ids_new_rows'), 0)"
_SET_NEW_ROWS: Final = "INSERT OR REPLACE INTO settings (key, value) VALUES ('ids_new_rows', ?)"


def merge_at(main_rows: int) -> int:
    """Rows of ``entry_ids_new`` that move to ``entry_ids`` (with ``main_rows`` rows).

    A fold writes about every page of ``entry_ids_new`` and a merge every page of
    ``entry_ids``: per entry, about ``new / FOLD_IDS_AT`` and ``main / merge_at`` pages,
    least in sum when ``merge_at`` is near ``sqrt(main * FOLD_IDS_AT)``.
    """
    return max(MERGE_IDS_MIN, math.isqrt(max(0, main_rows) * FOLD_IDS_AT))


def rowid_of(expr: str) -> str:
    """SQL: the ``entries`` rowid of the entry whose id is ``expr``, or NULL if none is stored.

    The folded ids first (the big level, then the small one); the tail is scanned only
    for an id not among them (``coalesce`` stops at its first non-NULL argument).
    """
    return (
        f"coalesce((SELECT entry FROM entry_ids WHERE id = {expr}), "
        f"(SELECT entry FROM entry_ids_new WHERE id = {expr}), "
        f"(SELECT rowid FROM entries WHERE rowid > {IDS_THROUGH} AND id = {expr}))"
    )


def fold(db: sqlite3.Connection, *, at: int | None) -> None:
    """Fold the tail's ids into the id index, in id order (inside a write transaction):
    once the tail holds ``at`` rows, or whenever there is one (``at`` None)."""
    (through,) = db.execute(f"SELECT {IDS_THROUGH}").fetchone()
    (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM entries").fetchone()
    if top <= through or (at is not None and top - through < at):
        return
    (new_rows,) = db.execute(f"SELECT {_NEW_ROWS}").fetchone()
    main_rows = through - new_rows  # (rowids: an estimate once a feed was truncated)
    threshold = merge_at(main_rows)
    if top - through >= threshold or (main_rows <= 0 and new_rows == 0):
        # As many as a merge would move (a bulk ingest), or the first ids: one pass, no
        # stop in the small table.
        db.execute(
            "INSERT OR IGNORE INTO entry_ids (id, entry) SELECT id, rowid FROM entries WHERE rowid > ? "
            "ORDER BY id",
            (through,),
        )
    else:
        db.execute(
            "INSERT OR IGNORE INTO entry_ids_new (id, entry) SELECT id, rowid FROM entries "
            "WHERE rowid > ? ORDER BY id",
            (through,),
        )
        (added,) = db.execute("SELECT changes()").fetchone()
        new_rows += added
        if new_rows >= threshold:
            _merge(db)
            new_rows = 0
        db.execute(_SET_NEW_ROWS, (new_rows,))
    db.execute(_SET_THROUGH, (top,))


def _merge(db: sqlite3.Connection) -> None:
    """Move every row of ``entry_ids_new`` to ``entry_ids``, in id order."""
    db.execute("INSERT OR IGNORE INTO entry_ids (id, entry) SELECT id, entry FROM entry_ids_new ORDER BY id")
    db.execute("DELETE FROM entry_ids_new")


def disagreements(db: sqlite3.Connection) -> tuple[int, int]:
    """(stored entries up to ``ids_through`` missing from the id index, rows of the index
    that are no such entry or that both levels hold): both 0 in a sound store."""
    (missing,) = db.execute(
        f"SELECT count(*) FROM entries e WHERE e.rowid <= {IDS_THROUGH} "
        "AND NOT EXISTS (SELECT 1 FROM entry_ids i WHERE i.id = e.id AND i.entry = e.rowid) "
        "AND NOT EXISTS (SELECT 1 FROM entry_ids_new n WHERE n.id = e.id AND n.entry = e.rowid)"
    ).fetchone()
    stray = 0
    for table in ("entry_ids", "entry_ids_new"):
        (count,) = db.execute(
            f"SELECT count(*) FROM {table} i WHERE NOT EXISTS (SELECT 1 FROM entries e "
            f"WHERE e.rowid = i.entry AND e.id = i.id AND e.rowid <= {IDS_THROUGH})"
        ).fetchone()
        stray += count
    (both,) = db.execute(
        "SELECT count(*) FROM entry_ids_new n WHERE EXISTS (SELECT 1 FROM entry_ids i WHERE i.id = n.id)"
    ).fetchone()
    return int(missing), int(stray) + int(both)


def rebuild(db: sqlite3.Connection) -> None:
    """The id index made again from the entries (inside a write transaction)."""
    db.execute("DELETE FROM entry_ids")
    db.execute("DELETE FROM entry_ids_new")
    db.execute(_SET_THROUGH, (0,))
    db.execute(_SET_NEW_ROWS, (0,))
    fold(db, at=None)


def forget(db: sqlite3.Connection, ids: Sequence[bytes]) -> None:
    """After entries with ``ids`` were deleted (a truncated feed): their ids leave the id
    index, and ``ids_through`` drops to the highest rowid left, so the rows that take the
    freed rowids next are in the tail."""
    params = [(i,) for i in ids]
    db.executemany("DELETE FROM entry_ids WHERE id = ?", params)
    removed = db.executemany("DELETE FROM entry_ids_new WHERE id = ?", params).rowcount
    if removed > 0:
        (new_rows,) = db.execute(f"SELECT {_NEW_ROWS}").fetchone()
        db.execute(_SET_NEW_ROWS, (max(0, new_rows - removed),))
    db.execute(
        "UPDATE settings SET value = min(value, (SELECT coalesce(max(rowid), 0) FROM entries)) "
        "WHERE key = 'ids_through'"
    )
