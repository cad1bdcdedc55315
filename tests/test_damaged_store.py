"""A damaged store file (pages overwritten in the middle, as a failing disk or a bad copy
leaves it): `verify` finds it with SQLite's integrity check, every command says so in one
`Error:` line with what to do, no command writes to it any more, and the own feed's readable
entries can still be exported and brought into a fresh store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from identity import Identity
from p2pblog.entry import POST
from p2pblog.errors import StoreDamaged
from p2pblog.home import Home
from p2pblog.store import Store
from tests.process import p2pblog

POSTS = 400
PAGE = 4096


def _damaged_home(path: Path) -> tuple[Home, Identity]:
    home = Home(path)
    identity = Identity.generate()
    home.create(identity)
    with home.open_store() as store, store.transaction():
        for i in range(POSTS):
            store.append(identity, POST, {"text": f"post {i} " + "x" * 200}, 1_700_000_000_000 + i)
    db = sqlite3.connect(home.store_file)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    pages = home.store_file.stat().st_size // PAGE
    with home.store_file.open("r+b") as f:  # three pages two thirds in: the entries' B-tree
        f.seek(pages * 2 // 3 * PAGE)
        f.write(b"\xa5" * 3 * PAGE)
    return home, identity


def _fingerprint(home: Home) -> str:
    digest = hashlib.sha256()
    for suffix in ("", "-wal"):
        path = Path(f"{home.store_file}{suffix}")
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()


def _one_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Home, Identity]:
    return _damaged_home(tmp_path / "node")


def test_verify_runs_the_integrity_check(damaged: tuple[Home, Identity]) -> None:
    home, _ = damaged
    result = p2pblog(home.path, "verify")
    _one_error(result, "is damaged", "export", "backup")
    assert "problem: the store file is damaged" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("timeline", "--limit", "10000"),
        ("log", "--limit", "10000"),
        ("run", "--no-web", "--listen", "127.0.0.1:0"),
    ],
)
def test_reading_commands_say_what_to_do(damaged: tuple[Home, Identity], args: tuple[str, ...]) -> None:
    home, _ = damaged
    _one_error(p2pblog(home.path, *args), "is damaged", "p2pblog export", "restore")
    assert not (home.path / "node.json").exists()


def test_no_command_writes_into_a_damaged_store(damaged: tuple[Home, Identity]) -> None:
    home, _ = damaged
    other = Identity.generate().handle
    # A read that reaches the damage records it (a write that does not reach a damaged page
    # before anything found it cannot know; one that does is rolled back and records it).
    _one_error(p2pblog(home.path, "timeline", "--limit", "10000"), "is damaged")
    assert (home.path / "store.sqlite3.damaged").exists()
    before = _fingerprint(home)
    for args in (("post", "hello"), ("follow", other), ("profile", "set", "--name", "x"), ("block", other)):
        _one_error(p2pblog(home.path, *args), "is damaged")
    assert _fingerprint(home) == before
    with Store(home.store_file) as store, pytest.raises(StoreDamaged):
        store.set_setting("k", "v")


def test_the_readable_own_feed_is_exported_and_starts_a_fresh_store(
    damaged: tuple[Home, Identity], tmp_path: Path
) -> None:
    home, identity = damaged
    feed = tmp_path / "own.feed"
    result = p2pblog(home.path, "export", identity.handle, str(feed))
    line = _one_error(result, "saved entries 1..")
    saved = int(line.split("saved entries 1..")[1].split()[0])
    assert 0 < saved < POSTS and f"exported {saved} entries" in result.stdout
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in home.path.glob("store.sqlite3*"):
        shutil.move(path, aside / path.name)
    assert p2pblog(home.path, "import", str(feed)).returncode == 0
    assert p2pblog(home.path, "verify").returncode == 0
    entries = json.loads(p2pblog(home.path, "log", "--json", "--limit", "1").stdout)
    assert entries[0]["seq"] == saved


def test_a_store_restored_from_a_backup_is_written_again(tmp_path: Path) -> None:
    home, _ = _damaged_home(tmp_path / "node")
    _one_error(p2pblog(home.path, "verify"), "is damaged")
    _one_error(p2pblog(home.path, "post", "x"), "is damaged")
    # A sound file put in its place (a new file, as `mv` or `cp` after `rm` make it): the
    # damage mark does not apply to it.  (A fresh store here stands for the good backup.)
    os.remove(home.store_file)
    with Store(home.store_file):
        pass
    assert p2pblog(home.path, "post", "after the restore").returncode == 0
    assert not (home.path / "store.sqlite3.damaged").exists()


def test_a_command_that_reads_only_sound_pages_still_warns(damaged: tuple[Home, Identity]) -> None:
    home, _ = damaged
    assert p2pblog(home.path, "log", "--limit", "10000").returncode == 1  # finds and records it
    newest = p2pblog(home.path, "log", "--limit", "1")  # the newest entry's page is sound
    assert newest.returncode == 0 and "post 399" in newest.stdout
    warnings = [line for line in newest.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "restore" in warnings[0]


def test_a_running_node_that_reads_damage_records_it_and_says_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver hands the node what an input raised: SQLite's "malformed" from a read is
    recorded (no write touches the file again; the next command says what to do), and
    logged as one line, not a traceback per read."""
    import sqlite3

    from p2pblog.daemon import NodeService

    home = Home(tmp_path / "n")
    identity = Identity.generate()
    home.create(identity)
    service = NodeService(home, identity, listen=("127.0.0.1", 0), bootstrap=[])
    service.store = home.open_store()
    try:
        for _ in range(3):
            service._internal_error("connection", sqlite3.DatabaseError("database disk image is malformed"))
        assert service.store.damaged is not None
        err = capsys.readouterr().err
        assert "refuses every write" in err and "Traceback" not in err
        assert err.count("refuses every write") == 1  # rate-limited
    finally:
        service.store.close()
    result = p2pblog(home.path, "post", "after the damage")
    assert result.returncode == 1 and "damaged" in result.stderr


def test_the_damage_stays_known_across_the_checkpoint_of_a_close(tmp_path: Path) -> None:
    """Closing the last connection writes the WAL into the file (a new mtime): the mark must
    still apply to it, or the next open would write into the damaged file again."""
    home = Home(tmp_path / "n")
    identity = Identity.generate()
    home.create(identity)
    store = home.open_store()
    for i in range(50):
        store.append(identity, POST, {"text": f"post {i}"}, 1_700_000_000_000 + i)
    store.found_damage("database disk image is malformed")
    store.close()
    with Store(home.store_file) as again:
        assert again.damaged is not None
        with pytest.raises(StoreDamaged):
            again.set_setting("k", "v")
