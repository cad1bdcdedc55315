"""A node's home directory: where its key file and store live.

Layout (documented in the README's user guide)::

    HOME/identity.key     the Ed25519 key file (0600, optionally encrypted)
    HOME/store.sqlite3    the SQLite store (+ -wal / -shm files)

HOME is ``--home``, else ``$P2PBLOG_HOME``, else the platform's user data
directory.  Several nodes on one machine use several homes.

Modes: HOME is 0700 and every file in it 0600 (the key file, the store and
its ``-wal`` / ``-shm``, ``node.json`` with the control token).  A HOME
that already existed with wider modes is tightened (`Home.secure`) when an
identity is created in it and whenever the store is opened, rather than
merely warned about: what it holds (the key, whom the owner follows and
blocks, the control token) is nobody else's business, and a warning on
every command would be noise nobody acts on.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from identity import Identity, read_key_file, write_key_file
from identity.keyfile import read_public_key
from p2pblog.errors import P2PBlogError

if TYPE_CHECKING:
    from p2pblog.store import Store
    from p2pblog.verify import VerifyPool, VerifyProcesses

#: The port (UDP for the DHT, TCP for gossip) `p2pblog run` listens on by default.
DEFAULT_PORT = 7710
#: Where `p2pblog run` serves the web app (on 127.0.0.1 only, by default).
DEFAULT_WEB_PORT = 7711
#: The names of `p2pblog demo`'s nodes (here so the CLI can declare its options without
#: importing the node).
DEMO_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")

KEY_FILE = "identity.key"
STORE_FILE = "store.sqlite3"
#: HOME's mode; files in it are 0600.
HOME_MODE = 0o700


class HomeError(P2PBlogError):
    """The home directory has no identity, or already has one."""


def default_home() -> Path:
    env = os.environ.get("P2PBLOG_HOME")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("p2pblog", appauthor=False))


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def store_file(self) -> Path:
        return self.path / STORE_FILE

    def exists(self) -> bool:
        return self.key_file.exists()

    def create(self, identity: Identity, passphrase: str | None = None, *, restored: bool = False) -> None:
        """Write the identity and an empty store; refuse if one is there.

        A new identity has signed nothing anywhere: its feed's head is known (empty).
        A ``restored`` one may have a feed on the network: its store refuses to sign
        until the node caught up, or an import (`p2pblog.own_head`)."""
        from p2pblog.store import Store

        if self.exists():
            raise HomeError(f"an identity already exists in {self.path}")
        if self.store_file.exists():
            # The key file is gone but its store is not: a new key would orphan the old feed.
            store = Store(self.store_file)
            try:
                held = sum(f.latest_seq for f in store.feeds())
            finally:
                store.close()
            if held:
                raise HomeError(
                    f"{self.path} has no key file but its store holds {held} entries of an earlier "
                    f"identity: put that identity's {KEY_FILE} back, or use another --home"
                )
        self.path.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
        self.secure()
        write_key_file(self.key_file, identity, passphrase)
        with Store(self.store_file) as store:
            if restored:
                store.mark_head_unknown(identity.public_key)
            else:
                store.mark_head_known(identity.public_key)

    def secure(self) -> int | None:
        """Tighten HOME to 0700 and its key file to 0600 if they are wider (see the module
        docstring); the old mode of HOME if it was changed, else None."""
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if self.key_file.exists() and stat.S_IMODE(self.key_file.stat().st_mode) & 0o077:
                os.chmod(self.key_file, 0o600)
            if mode & 0o077:
                os.chmod(self.path, HOME_MODE)
                return mode
        except OSError:
            pass  # not ours to change: opening the files reports what matters
        return None

    def load_identity(self, passphrase: str | None = None) -> Identity:
        if not self.exists():
            raise HomeError(f"no identity in {self.path}; create one with: p2pblog init")
        return read_key_file(self.key_file, passphrase)

    def open_store(self, *, verify_pool: VerifyPool | VerifyProcesses | None = None) -> Store:
        if not self.exists():
            raise HomeError(f"no identity in {self.path}; create one with: p2pblog init")
        self.secure()
        from p2pblog.store import Store  # the store's modules only for the commands that open it

        new = not self.store_file.exists()
        store = Store(self.store_file, verify_pool=verify_pool)
        if new:
            # A key file with no store: copied from elsewhere (or the store deleted). The
            # feed may exist on the network; do not sign before its head is known.
            try:
                store.mark_head_unknown(read_public_key(self.key_file))
            except BaseException:
                store.close()
                raise
        return store
