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

from typing import Final

#: Rows in the tail after which a commit folds their ids into ``entry_ids``: the
#: longest tail a lookup scans outside a write transaction.
FOLD_IDS_AT: Final = 4096

#: SQL: the rowid up to which ``entry_ids`` holds the ids of ``entries``.
IDS_THROUGH: Final = "coalesce((SELECT value FROM settings WHERE key = 'ids_through'), 0)"


def rowid_of(expr: str) -> str:
    """SQL: the ``entries`` rowid of the entry whose id is ``expr``, or NULL if none is stored.

    The folded ids first; the tail is scanned only for an id not among them
    (``coalesce`` stops at its first non-NULL argument).
    """
    return (
        f"coalesce((SELECT entry FROM entry_ids WHERE id = {expr}), "
        f"(SELECT rowid FROM entries WHERE rowid > {IDS_THROUGH} AND id = {expr}))"
    )
