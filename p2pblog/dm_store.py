"""The store's direct-message tables (`p2pblog.dms`): a part of `p2pblog.store.Store`.

``dms`` holds the messages sent and received (``folder`` inbox, requests or sent;
``state`` an outgoing message's delivery), ``dm_outbox`` the sealed ones still to
deliver, ``dm_held`` those held for followed recipients who were offline (migration 7).
`DmTables` is mixed into `Store`, whose connection and transactions it uses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


def text_of(value: Any) -> str:
    """A TEXT column as str (the store's connection returns bytes for text)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class DmRow:
    """A direct message as stored: ``peer`` is the other party; ``folder`` inbox,
    requests (a stranger's) or sent; ``state`` an outgoing message's delivery."""

    id: bytes
    peer: bytes
    folder: str
    timestamp: int
    received: int
    text: str
    unread: bool
    state: str


def _dm_row(row: Sequence[Any]) -> DmRow:
    i, peer, folder, timestamp, received, text, unread, state = row
    return DmRow(
        bytes(i),
        bytes(peer),
        text_of(folder),
        int(timestamp),
        int(received),
        text_of(text),
        bool(unread),
        text_of(state),
    )


class DmTables:
    """The direct-message methods of `p2pblog.store.Store`."""

    if TYPE_CHECKING:

        @property
        def _db(self) -> sqlite3.Connection: ...

        def transaction(self) -> AbstractContextManager[None]: ...

    def dm_add(self, row: DmRow, sealed: tuple[bytes, bytes] | None = None) -> bool:
        """Store a direct message; with ``sealed`` (recipient, sealed bytes) also queue it
        for delivery.  False if its id is already stored."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO dms (id, peer, folder, timestamp, received, text, unread, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.peer,
                    row.folder,
                    row.timestamp,
                    row.received,
                    row.text,
                    int(row.unread),
                    row.state,
                ),
            )
            if cur.rowcount and sealed is not None:
                self._db.execute(
                    "INSERT INTO dm_outbox (id, recipient, sealed, stamp) VALUES (?, ?, ?, x'')",
                    (row.id, *sealed),
                )
        return bool(cur.rowcount)

    def dm_has(self, dm_id: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM dms WHERE id = ?", (dm_id,)).fetchone() is not None

    def dm_set_state(self, dm_id: bytes, state: str) -> None:
        with self.transaction():
            self._db.execute("UPDATE dms SET state = ? WHERE id = ?", (state, dm_id))

    def dm_counts(self, peer: bytes) -> tuple[int, int]:
        """Messages received from ``peer``, and received in all (the admission's bounds)."""
        (mine,) = self._db.execute(
            "SELECT count(*) FROM dms WHERE peer = ? AND folder != 'sent'", (peer,)
        ).fetchone()
        (total,) = self._db.execute("SELECT count(*) FROM dms WHERE folder != 'sent'").fetchone()
        return int(mine), int(total)

    def dm_conversations(self) -> list[tuple[DmRow, int, str]]:
        """Each correspondent's latest message, newest first, with its unread count and the
        conversation's folder: ``requests`` while every message in it came from a stranger,
        else ``inbox``."""
        rows = self._db.execute(
            "SELECT d.id, d.peer, d.folder, d.timestamp, d.received, d.text, d.unread, d.state, "
            "(SELECT count(*) FROM dms u WHERE u.peer = d.peer AND u.unread), "
            "EXISTS (SELECT 1 FROM dms o WHERE o.peer = d.peer AND o.folder != 'requests') "
            "FROM dms d WHERE d.id = (SELECT id FROM dms x WHERE x.peer = d.peer "
            "ORDER BY x.timestamp DESC, x.id DESC LIMIT 1) ORDER BY d.timestamp DESC"
        )
        return [(_dm_row(row[:8]), int(row[8]), "inbox" if row[9] else "requests") for row in rows]

    def dm_thread(self, peer: bytes, limit: int = 500) -> list[DmRow]:
        """The latest ``limit`` messages exchanged with ``peer``, oldest first."""
        rows = self._db.execute(
            "SELECT id, peer, folder, timestamp, received, text, unread, state FROM dms "
            "WHERE peer = ? ORDER BY timestamp DESC, id DESC LIMIT ?",
            (peer, limit),
        ).fetchall()
        return [_dm_row(row) for row in reversed(rows)]

    def dm_mark_read(self, peer: bytes) -> int:
        with self.transaction():
            cur = self._db.execute("UPDATE dms SET unread = 0 WHERE peer = ? AND unread", (peer,))
        return int(cur.rowcount)

    def dm_unread(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM dms WHERE unread").fetchone()
        return int(count)

    def dm_outbox(self) -> list[tuple[bytes, bytes, bytes, bytes, int]]:
        """Sealed messages not yet delivered: ``(id, recipient, sealed, stamp, attempts)``."""
        rows = self._db.execute("SELECT id, recipient, sealed, stamp, attempts FROM dm_outbox")
        return [(bytes(i), bytes(r), bytes(s), bytes(t), int(a)) for i, r, s, t, a in rows]

    def dm_outbox_update(self, dm_id: bytes, stamp: bytes, attempts: int) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE dm_outbox SET stamp = ?, attempts = ? WHERE id = ?", (stamp, attempts, dm_id)
            )

    def dm_outbox_done(self, dm_id: bytes, state: str) -> None:
        """A message's delivery ended (delivered, refused, given up): its final state."""
        with self.transaction():
            self._db.execute("DELETE FROM dm_outbox WHERE id = ?", (dm_id,))
            self._db.execute("UPDATE dms SET state = ? WHERE id = ?", (state, dm_id))

    def dm_hold(
        self, dm_id: bytes, recipient: bytes, depositor: bytes, sealed: bytes, stamp: bytes, expires: int
    ) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO dm_held (id, recipient, depositor, sealed, stamp, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (dm_id, recipient, depositor, sealed, stamp, expires),
            )

    def dm_unhold(self, dm_id: bytes) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM dm_held WHERE id = ?", (dm_id,))

    def dm_held(self) -> list[tuple[bytes, bytes, bytes, bytes, bytes, int]]:
        """Messages held for others: ``(id, recipient, depositor, sealed, stamp, expires)``."""
        rows = self._db.execute("SELECT id, recipient, depositor, sealed, stamp, expires FROM dm_held")
        return [(bytes(i), bytes(r), bytes(d), bytes(s), bytes(t), int(e)) for i, r, d, s, t, e in rows]
