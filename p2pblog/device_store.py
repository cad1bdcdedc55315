"""The store's device and root-key tables (`p2pblog.devices`): a part of `p2pblog.store.Store`.

Ingesting a ``device``, ``device_of``, ``revoke``, ``commit`` or ``rotate`` entry records
it (``device_certs``, ``device_consents``, ``device_revocations``, ``root_commits``,
``rotations``; migration 8) and resolves the identity again: `p2pblog.devices` decides,
and the result is kept in ``devices`` (each device's identity, and a revoked one's
cut-off), so that a timeline is one query.  A revoked device's entries past its cut-off
are dropped here and refused at ingest (the store's caps).  `DeviceTables` is mixed into
`Store`, whose connection, transaction and feed heads it uses.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from p2pblog import entry_index
from p2pblog.devices import Cert, Device, Revocation, Rotation, resolve, root_state
from p2pblog.dm_store import text_of
from p2pblog.entry import COMMIT, DEVICE, DEVICE_OF, ROTATE, Entry

if TYPE_CHECKING:
    from p2pblog.store import FeedState

#: Certificate and revocation rows kept per author (`p2pblog.devices.MAX_DEVICES` count).
MAX_DEVICE_ROWS: Final = 64


class DeviceTables:
    """The device and root-key methods of `p2pblog.store.Store`."""

    if TYPE_CHECKING:
        _caps: dict[bytes, int]
        _heads: dict[bytes, FeedState]
        _dirty: set[bytes]
        devices_version: int

        @property
        def _db(self) -> sqlite3.Connection: ...

        def feed_state(self, author: bytes) -> FeedState: ...

        def latest_seq(self, author: bytes) -> int: ...

        def _set_head(self, state: FeedState) -> None: ...

    def _derive_device(self, entry: Entry) -> None:
        body, author, db = entry.body, entry.author, self._db
        if entry.kind == ROTATE:
            (rows,) = db.execute("SELECT count(*) FROM rotations WHERE author = ?", (author,)).fetchone()
            if rows < MAX_DEVICE_ROWS:
                db.execute(
                    "INSERT OR IGNORE INTO rotations (author, seq, identity, new, next, cut) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (author, entry.seq, body["identity"], body["new"], body["next"], body["cut"]),
                )
                self._resolve_identity(bytes(body["identity"]))
            return
        if entry.kind == COMMIT:
            db.execute(
                "INSERT OR IGNORE INTO root_commits (author, seq, next) VALUES (?, ?, ?)",
                (author, entry.seq, body["next"]),
            )
            self._resolve_identity(self.identity_of(author))
            return
        if entry.kind == DEVICE_OF:
            db.execute(
                "INSERT OR IGNORE INTO device_consents (device, identity) VALUES (?, ?)",
                (author, body["identity"]),
            )
            self._resolve_identity(bytes(body["identity"]))
            return
        if entry.kind == DEVICE:
            (rows,) = db.execute(
                "SELECT count(*) FROM device_certs WHERE certifier = ?", (author,)
            ).fetchone()
            if rows >= MAX_DEVICE_ROWS:
                return  # a feed that certifies without end: the first certificates are what count
            db.execute(
                "INSERT OR IGNORE INTO device_certs (certifier, seq, device, name, admin) "
                "VALUES (?, ?, ?, ?, ?)",
                (author, entry.seq, body["device"], body["name"], body["admin"]),
            )
        else:
            # One row per (revoker, device): the earliest cut-off (and the earliest revoking
            # entry) wins.  Rows for certified devices are bounded by the certificates; a
            # revocation may also come before the certificate it ends (from another feed), so
            # MAX_DEVICE_ROWS more per revoker are kept for devices not certified (yet).
            device = body["device"]
            if db.execute("SELECT 1 FROM device_certs WHERE device = ?", (device,)).fetchone() is None:
                (rows,) = db.execute(
                    "SELECT count(*) FROM device_revocations WHERE revoker = ?", (author,)
                ).fetchone()
                if rows >= MAX_DEVICE_ROWS:
                    return
            db.execute(
                "INSERT INTO device_revocations (revoker, device, seq, after) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (revoker, device) DO UPDATE SET after = min(after, excluded.after), "
                "seq = min(seq, excluded.seq)",
                (author, body["device"], entry.seq, body["after"]),
            )
        self._resolve_identity(self.identity_of(author))

    def _resolve_identity(self, identity: bytes) -> None:
        """Recompute the identity's devices; drop what revoked devices wrote after their cut-off."""
        db = self._db
        old = {
            bytes(d): a
            for d, a in db.execute("SELECT device, after FROM devices WHERE identity = ?", (identity,))
        }
        chain = self.root_chain(identity)
        authors = list(dict.fromkeys([*(k for k, _ in chain), *old]))
        certs = self._certs_by(authors)
        # An admin device's certificates may name devices not yet counted: resolve again with them.
        while True:
            revocations = self._revocations(authors, certs)
            devices = resolve(identity, certs, self._consents(certs), revocations, chain)
            extra = [k for k in devices if k not in authors and devices[k].admin]
            if not extra:
                break
            authors += extra
            certs += self._certs_by(extra)
        db.execute("DELETE FROM devices WHERE identity = ?", (identity,))
        db.executemany(
            "INSERT OR REPLACE INTO devices (device, identity, name, admin, consented, after, certifier) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(d.key, identity, d.name, d.admin, d.consented, d.after, d.certifier) for d in devices.values()],
        )
        for key in old:
            self._caps.pop(key, None)
        for d in devices.values():
            if d.after is not None and d.consented:
                self._caps[d.key] = d.after
                self._truncate(d.key, d.after)
        self.devices_version += 1

    def _root_state(
        self, identity: bytes
    ) -> tuple[list[tuple[bytes, int | None]], bytes | None, list[Rotation]]:
        db = self._db
        row = db.execute(
            "SELECT next FROM root_commits WHERE author = ? ORDER BY seq LIMIT 1", (identity,)
        ).fetchone()
        rotations = [
            Rotation(bytes(a), int(q), bytes(i), bytes(n), bytes(x), int(c))
            for a, q, i, n, x, c in db.execute(
                "SELECT author, seq, identity, new, next, cut FROM rotations WHERE identity = ?", (identity,)
            )
        ]
        return root_state(identity, bytes(row[0]) if row else None, rotations)

    def root_chain(self, identity: bytes) -> list[tuple[bytes, int | None]]:
        """The identity's root keys, oldest first, with their cut-offs (`p2pblog.devices.roots`)."""
        return self._root_state(identity)[0]

    def current_commitment(self, identity: bytes) -> bytes | None:
        """The digest the identity's next root key must have (None: no commitment), as the
        chain the rules pick says (a rotation filed by anyone else changes nothing)."""
        return self._root_state(identity)[1]

    def rotation_entries(self, identity: bytes) -> list[bytes]:
        """The signed ``rotate`` entries that made the identity's current chain, oldest first."""
        out = []
        for pick in self._root_state(identity)[2]:
            row = self._db.execute(
                "SELECT raw FROM entries WHERE author = ? AND seq = ?", (pick.author, pick.seq)
            ).fetchone()
            if row:
                out.append(bytes(row[0]))
        return out

    def _certs_by(self, certifiers: list[bytes]) -> list[Any]:
        marks = ",".join("?" * len(certifiers))
        rows = self._db.execute(
            f"SELECT certifier, seq, device, name, admin FROM device_certs WHERE certifier IN ({marks})",
            certifiers,
        )
        return [Cert(bytes(d), bytes(c), int(q), text_of(n), bool(a)) for c, q, d, n, a in rows]

    def _consents(self, certs: list[Any]) -> dict[bytes, bytes]:
        keys = sorted({c.device for c in certs})
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT device, identity FROM device_consents WHERE device IN ({marks})", keys
        )
        return {bytes(d): bytes(i) for d, i in rows}

    def _revocations(self, authorities: list[bytes], certs: list[Any]) -> list[Any]:
        keys = sorted({*authorities, *(c.certifier for c in certs)})
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT revoker, seq, device, after FROM device_revocations WHERE revoker IN ({marks})", keys
        )
        return [Revocation(bytes(d), bytes(r), int(q), int(a)) for r, q, d, a in rows]

    def _truncate(self, device: bytes, after: int) -> None:
        """Drop a revoked device's entries after ``after`` (they are not its identity's)."""
        state = self.feed_state(device)
        if state.latest_seq <= after:
            return
        db = self._db
        from p2pblog import search  # search imports the store, which imports this module

        rows = db.execute(
            "SELECT id, rowid FROM entries WHERE author = ? AND seq > ?", (device, after)
        ).fetchall()
        ids = [bytes(i) for i, _ in rows]
        db.executemany("DELETE FROM mentions WHERE entry_id = ?", [(i,) for i in ids])
        db.execute("DELETE FROM entries WHERE author = ? AND seq > ?", (device, after))
        entry_index.forget(db, ids)
        search.forget(db, [int(r) for _, r in rows])
        row = db.execute("SELECT id FROM entries WHERE author = ? AND seq = ?", (device, after)).fetchone()
        if row is None:  # nothing of the feed counts (after 0): no head at all
            self._heads.pop(device, None)
            self._dirty.discard(device)
            db.execute("DELETE FROM feeds WHERE author = ?", (device,))
            return
        self._set_head(dataclasses.replace(state, latest_seq=after, latest_id=bytes(row[0])))

    def identity_of(self, key: bytes) -> bytes:
        """The identity a key speaks for: its identity if it is a consented device, else itself."""
        row = self._db.execute(
            "SELECT identity FROM devices WHERE device = ? AND consented", (key,)
        ).fetchone()
        return bytes(row[0]) if row else key

    def devices_of(self, identity: bytes) -> list[Device]:
        """The identity's devices (certified; ``consented`` once the device said so), by name."""
        rows = self._db.execute(
            "SELECT device, name, admin, consented, after, certifier FROM devices WHERE identity = ? "
            "ORDER BY name, device",
            (identity,),
        )
        return [
            Device(bytes(d), text_of(n), bool(a), bool(c), None if x is None else int(x), bytes(f))
            for d, n, a, c, x, f in rows
        ]

    def device_feeds(self, identities: Iterable[bytes]) -> set[bytes]:
        """Feeds to replicate for these identities' devices: every certified device (its
        consent is in its feed), except revoked ones held up to their cut-off."""
        out: set[bytes] = set()
        for identity in identities:
            for d in self.devices_of(identity):
                if d.after is None or self.latest_seq(d.key) < d.after:
                    out.add(d.key)
        return out
