"""Simulator-only savings: work the simulator skips without changing a byte of its results.

Theory of operation
-------------------
A simulated node runs the real cores, and some of their work buys nothing
inside one process that simulates all of them.  `Savings` switches off three
such costs; each leaves ``metrics.json`` byte-identical, and
``tests/simulations/test_sim_savings.py`` runs scenarios with each saving on
and off and compares the files byte for byte.

1. **A null transport cipher** (`NullCipher`).  The Noise XX handshakes stay
   real (X25519, the identity proofs, the handshake hash); only the
   transport phase's ChaCha20-Poly1305 (`gossip.noise.CipherState`) is
   replaced, through `gossip.transport.ChannelConfig.transport_cipher`, by
   a copy of the plaintext followed by a 16-byte tag: BLAKE2b keyed with
   the direction's transport key, salted with the nonce counter, over the
   plaintext and the associated data.  Every message keeps its size, so
   every byte count, chunk and timing is the same; the nonce is still the
   implicit counter, so a peer without the key (the simulator's attackers)
   still cannot forge, alter, replay, reorder or drop a message unnoticed:
   the tag fails and the channel fails as the real AEAD makes it fail.  For
   the messages the simulator sends most (empty keepalives, clocks, pushes
   and batches of a few hundred bytes) the keyed hash costs a third to a
   quarter of libsodium's AEAD through PyNaCl (0.8 vs 3.5 us for a
   keepalive, 1.4 vs 4.3 us for 600 bytes: ``benchmarks/bench_sim_savings.py
   --cipher``); at 4 KB they are close, and a full 65,519-byte chunk costs
   1.5 times as much (BLAKE2b is slower per byte than vectorised ChaCha20),
   a rare case.  The simulated wire carries plaintext: an attacker model
   that reads it would see what a real one cannot (none does).
2. **Routing-table snapshots kept in memory** (`SnapshotStore`).  The core
   saves its routing table's contacts and its peers' scores to the store
   every `p2pblog.lifecycle.SAVE_CONTACTS_EVERY` seconds, as
   ``DELETE``-then-``INSERT`` replacements; only the last one before a
   restart is ever read.  The store keeps the latest rows of each in memory
   and writes them when the node crashes (so a crashed node's store holds
   what a killed process's file would) and before anything reads them (so a
   reader sees exactly what it would have).  Its empty database is a copy of
   a template made once per process (SQLite's backup API) instead of the
   schema's migrations run again for each node (a store opens in 0.23 ms
   instead of 1.2 ms, and a 10,000-node run opens 10,000): the same pages,
   schema and ``user_version`` (only the schema cookie, which the copy
   advances, differs), so the same database.
3. **Garbage-collector thresholds raised** for a run (`gc_tuned`): the
   objects built during set-up are frozen out of the collector
   (``gc.freeze``) and the generation thresholds raised, since a run
   allocates millions of short-lived objects and few reference cycles; both
   are restored when the run ends, so a library user's process is left as
   it was.  Nothing in the simulated cores depends on when objects are
   collected (no finalizers, weak references or ``id()``-ordered sets).

Nothing outside ``simulations`` imports this module (``tests/test_layers.py``
checks the import direction), so the daemon can never run with the null
cipher; ``test_sim_savings`` also asserts that the daemon's cores get the
real one.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import hmac
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Final

from gossip.noise import MAX_NONCE, TAGLEN, CipherState, NoiseError
from p2pblog.node import NodeCore
from p2pblog.store import Store

#: Generation thresholds during a run (Python's defaults are 700, 10, 10): a young
#: collection every 50,000 net allocations instead of 700, and the older generations
#: collected correspondingly less often.
GC_THRESHOLDS: Final = (50_000, 20, 20)


@dataclass(frozen=True, slots=True)
class Savings:
    """Which simulator-only savings a run uses (all by default; `none` for the reference run)."""

    #: Transport messages are the plaintext and a keyed BLAKE2b tag (`NullCipher`).
    null_cipher: bool = True
    #: Contact and peer-score snapshots stay in memory until a crash or a read (`SnapshotStore`).
    snapshots_in_memory: bool = True
    #: The collector's thresholds are raised and set-up's objects frozen (`gc_tuned`).
    gc_tuned: bool = True

    @classmethod
    def none(cls) -> Savings:
        return cls(null_cipher=False, snapshots_in_memory=False, gc_tuned=False)


#: Every saving: the simulator's default.
ALL_SAVINGS: Final = Savings()


# --------------------------------------------------------------------------- the null cipher


def _tag(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    # Keyed BLAKE2b (RFC 7693 section 2.5 keying) with the nonce as its salt; the
    # associated data is followed by its length, so (ad, plaintext) splits one way only.
    mac = hashlib.blake2b(plaintext, digest_size=TAGLEN, key=key, salt=n.to_bytes(16, "little"))
    if ad:
        mac.update(ad + len(ad).to_bytes(8, "little"))
    return mac.digest()


class NullCipher(CipherState):
    """A transport `CipherState` that copies the plaintext and appends a keyed 16-byte tag.

    Same sizes, nonces and failures as ChaCha20-Poly1305 (module docstring, item 1);
    for the simulator only."""

    __slots__ = ()

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        key = self._key
        if key is None:
            return bytes(plaintext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        plaintext = bytes(plaintext)
        out = plaintext + _tag(key, self.n, ad, plaintext)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        key = self._key
        if key is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        if len(ciphertext) < TAGLEN:
            raise NoiseError("ciphertext shorter than its tag")
        plaintext = bytes(ciphertext[:-TAGLEN])
        if not hmac.compare_digest(_tag(key, self.n, ad, plaintext), ciphertext[-TAGLEN:]):
            raise NoiseError("ciphertext does not authenticate")
        self.n += 1
        return plaintext


def use_null_cipher(core: NodeCore) -> None:
    """Give every channel the core's replicator opens from now on the `NullCipher`."""
    replicator = core.replicator
    replicator.channel_config = replace(replicator.channel_config, transport_cipher=NullCipher)
    replicator.inbound_config = replace(replicator.inbound_config, transport_cipher=NullCipher)


# --------------------------------------------------------------------------- snapshots


@functools.cache
def _template() -> sqlite3.Connection:
    """The migrated empty database `SnapshotStore` copies, made once per process by an ordinary
    `Store`.  Any thread may copy it (a Dask worker can run simulations in several): SQLite
    serializes use of one connection (`sqlite3.threadsafety` 3), and nothing writes it."""
    template = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    Store(":memory:")._conn.backup(template)
    return template


class SnapshotStore(Store):
    """A `Store` that holds the latest contact and peer-score snapshots in memory.

    Both tables are replaced whole by each save, so the last save is the table;
    it is written by `write_snapshots` (on a crash) and before either is read."""

    def __init__(self, path: str = ":memory:") -> None:
        super().__init__(path)
        self._contacts: list[tuple[bytes, str, int, float]] | None = None
        self._scores: list[tuple[bytes, float, float, float]] | None = None

    def _migrate(self) -> None:
        """An empty in-memory database: copy the template (`_template`); else the migrations."""
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if str(self.path) != ":memory:" or version != 0:
            super()._migrate()
            return
        _template().backup(self._conn)

    def save_contacts(self, contacts: Iterable[tuple[bytes, str, int, float]]) -> bool:
        self._contacts = list(contacts)
        return True

    def save_peer_scores(self, rows: Iterable[tuple[bytes, float, float, float]]) -> bool:
        self._scores = list(rows)
        return True

    def load_contacts(self) -> list[tuple[bytes, str, int, float]]:
        self.write_snapshots()
        return super().load_contacts()

    def load_peer_scores(self, limit: int) -> list[tuple[bytes, float, float, float]]:
        self.write_snapshots()
        return super().load_peer_scores(limit)

    def write_snapshots(self) -> None:
        """Write the snapshots held in memory, as the saves would have."""
        contacts, scores = self._contacts, self._scores
        self._contacts = self._scores = None
        if contacts is not None:
            super().save_contacts(contacts)
        if scores is not None:
            super().save_peer_scores(scores)


# --------------------------------------------------------------------------- the collector


@contextmanager
def gc_tuned(enabled: bool = True) -> Iterator[None]:
    """During the block: set-up's objects frozen, `GC_THRESHOLDS`; then as before."""
    if not enabled:
        yield
        return
    thresholds = gc.get_threshold()
    # Someone else's frozen objects stay theirs: freeze only if nothing is frozen yet.
    freeze = gc.get_freeze_count() == 0 and gc.isenabled()
    if freeze:
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


#: Young objects (net allocations of tracked objects) worth one collection while a worker
#: waits at a barrier: small, so one collection is a fraction of a window (tens of microseconds).
IDLE_YOUNG: Final = 2_000
#: Young collections after which the middle generation is collected too (Python's default ratio).
IDLE_MIDDLE: Final = 10


def idle_collect() -> bool:
    """Collect the young (or middle) generation if it has grown enough; whether it did.

    A sharded worker (`simulations.shards`) waits at every barrier for the slowest shard (a
    third of its time at 10,000 nodes).  Collecting then, in small steps, takes the
    collector's young and middle generations off the windows' critical path: the automatic
    collection (`GC_THRESHOLDS`) then rarely runs inside a window.  When objects are
    collected changes no result (nothing simulated depends on it: see `gc_tuned`)."""
    young, middle, _ = gc.get_count()
    if middle >= IDLE_MIDDLE:
        gc.collect(1)
        return True
    if young >= IDLE_YOUNG:
        gc.collect(0)
        return True
    return False


__all__ = [
    "ALL_SAVINGS",
    "GC_THRESHOLDS",
    "IDLE_MIDDLE",
    "IDLE_YOUNG",
    "NullCipher",
    "Savings",
    "SnapshotStore",
    "gc_tuned",
    "idle_collect",
    "use_null_cipher",
]
