"""Finding a stored entry by its id: ``entry_ids``, folded in sorted batches, and the tail.

Entry ids are BLAKE2b hashes, so an index on them is written at random: every
commit used to dirty a page of that index for nearly every entry it added, and
wrote it whole to the WAL, so the cost of a write grew with the store
(docs/design.md, "Entry ids, folded in sorted batches").  Since schema 9 the
``entries`` table has no index on ``id``; ``entry_ids`` (id -> rowid) holds the
ids of the rows up to the rowid in the ``ids_through`` setting, and is filled
many rows at a time in id order (`p2pblog.store.Store._fold_ids`), so a page of
it is written once per fold rather than once per commit.  Rows past
``ids_through`` (the *tail*: fewer than `FOLD_IDS_AT` of them after any commit)
are found by scanning it; `rowid_of` looks in both.  A lookup never writes: a
scan of 1,000 rows takes 0.05 ms, where a fold and its commit take 1.5-7.5 ms.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

#: Rows in the tail after which a commit folds their ids into ``entry_ids``: the
#: longest tail a lookup scans outside a write transaction.
FOLD_IDS_AT: Final = 4096

#: SQL: the rowid up to which ``entry_ids`` holds the ids of ``entries``.
IDS_THROUGH: Final = "coalesce((SELECT value FROM settings WHERE key = 'ids_through'), 0)"
_SET_THROUGH: Final = "INSERT OR REPLACE INTO settings (key, value) VALUES ('ids_through', ?)"


def rowid_of(expr: str) -> str:
    """SQL: the ``entries`` rowid of the entry whose id is ``expr``, or NULL if none is stored.

    The folded ids first; the tail is scanned only for an id not among them
    (``coalesce`` stops at its first non-NULL argument).
    """
    return (
        f"coalesce((SELECT entry FROM entry_ids WHERE id = {expr}), "
        f"(SELECT rowid FROM entries WHERE rowid > {IDS_THROUGH} AND id = {expr}))"
    )


def fold(db: sqlite3.Connection, *, at: int | None) -> None:
    """Fold the tail's ids into ``entry_ids``, in id order (inside a write transaction):
    once the tail holds ``at`` rows, or whenever there is one (``at`` None)."""
    (through,) = db.execute(f"SELECT {IDS_THROUGH}").fetchone()
    (top,) = db.execute("SELECT coalesce(max(rowid), 0) FROM entries").fetchone()
    if top <= through or (at is not None and top - through < at):
        return
    db.execute(
        "INSERT OR IGNORE INTO entry_ids (id, entry) SELECT id, rowid FROM entries WHERE rowid > ? "
        "ORDER BY id",
        (through,),
    )
    db.execute(_SET_THROUGH, (top,))


def disagreements(db: sqlite3.Connection) -> tuple[int, int]:
    """(stored entries up to ``ids_through`` missing from ``entry_ids``, rows of ``entry_ids``
    that are no such entry): both 0 in a sound store."""
    (missing,) = db.execute(
        f"SELECT count(*) FROM entries e WHERE e.rowid <= {IDS_THROUGH} AND NOT EXISTS "
        "(SELECT 1 FROM entry_ids i WHERE i.id = e.id AND i.entry = e.rowid)"
    ).fetchone()
    (stray,) = db.execute(
        "SELECT count(*) FROM entry_ids i WHERE NOT EXISTS (SELECT 1 FROM entries e "
        f"WHERE e.rowid = i.entry AND e.id = i.id AND e.rowid <= {IDS_THROUGH})"
    ).fetchone()
    return int(missing), int(stray)


def rebuild(db: sqlite3.Connection) -> None:
    """``entry_ids`` made again from the entries (inside a write transaction)."""
    db.execute("DELETE FROM entry_ids")
    db.execute(_SET_THROUGH, (0,))
    fold(db, at=None)


def forget(db: sqlite3.Connection, ids: Sequence[bytes]) -> None:
    """After entries with ``ids`` were deleted (a truncated feed): their ids leave
    ``entry_ids``, and ``ids_through`` drops to the highest rowid left, so the rows that
    take the freed rowids next are in the tail."""
    db.executemany("DELETE FROM entry_ids WHERE id = ?", [(i,) for i in ids])
    db.execute(
        "UPDATE settings SET value = min(value, (SELECT coalesce(max(rowid), 0) FROM entries)) "
        "WHERE key = 'ids_through'"
    )
