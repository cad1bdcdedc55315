"""The offline command line, driven exactly as a user would: real processes, real homes.

Covers the contract of the foundation issue: init, id, post, log, verify,
export, import, --home / P2PBLOG_HOME, --encrypt, python -m p2pblog, --help,
and one clear error line (no traceback) for every expected failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from identity import decode_handle, is_handle
from p2pblog.feedfile import MAGIC
from p2pblog.home import Home
from tests.feeds import make_chain
from tests.process import p2pblog

COMMANDS = [
    "init",
    "id",
    "post",
    "log",
    "verify",
    "export",
    "import",
    "demo",
    "follow",
    "unfollow",
    "timeline",
    "mentions",
    "thread",
    "delete",
    "name",
    "name claim",
    "name list",
    "resolve",
    "petname",
    "petname set",
    "petname list",
    "profile",
    "profile set",
    "profile show",
    "block",
    "unblock",
    "blocks",
]


def init(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = p2pblog(home, "init", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def post(home: Path, text: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = p2pblog(home, "post", text, *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def log_json(home: Path, *args: str) -> list[dict[str, object]]:
    result = p2pblog(home, "log", *args, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, list)
    return doc


def assert_one_line_error(result: object, fragment: str) -> None:
    assert result.returncode != 0  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert fragment in err, err


def test_init_prints_a_valid_handle_and_protects_the_key(tmp_path: Path) -> None:
    home = tmp_path / "a"
    handle = init(home)
    assert is_handle(handle) and handle.startswith("@pb1")
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    again = p2pblog(home, "init")
    assert_one_line_error(again, "already exists")
    assert p2pblog(home, "id").stdout.strip() == handle


def test_id_json(tmp_path: Path) -> None:
    home = tmp_path / "a"
    handle = init(home, "--name", "alice")
    doc = json.loads(p2pblog(home, "id", "--json").stdout)
    assert doc["handle"] == handle
    assert doc["home"] == str(home)
    assert handle[4:].startswith(doc["fingerprint"]) and len(doc["fingerprint"]) == 12


def test_post_log_and_replies(tmp_path: Path) -> None:
    home = tmp_path / "a"
    handle = init(home, "--name", "alice")
    first = post(home, "hello world")
    assert len(first) == 64 and bytes.fromhex(first)
    reply = post(home, f"answering myself, cc {handle}", "--reply-to", first)
    entries = log_json(home)
    assert [e["id"] for e in entries[:2]] == [reply, first]
    assert entries[0]["reply_to"] == first and entries[0]["mentions"] == [handle]
    assert entries[1]["text"] == "hello world" and entries[1]["author"] == handle
    assert entries[-1]["kind"] == "profile" and entries[-1]["seq"] == 1
    for key in ("id", "author", "seq", "prev", "timestamp", "kind", "text", "reply_to", "mentions"):
        assert key in entries[0]
    assert entries[0]["prev"] == first
    assert [e["seq"] for e in log_json(home, "--limit", "1")] == [3]
    assert log_json(home, handle) == entries
    human = p2pblog(home, "log").stdout
    assert "hello world" in human and first in human


def test_bad_input_gets_one_clear_line_and_stores_nothing(tmp_path: Path) -> None:
    home = tmp_path / "a"
    handle = init(home)
    post(home, "kept")
    assert_one_line_error(p2pblog(home, "post", "x" * 501), "limit is 500")
    assert_one_line_error(p2pblog(home, "post", "   "), "empty")
    assert_one_line_error(p2pblog(home, "post", "hi", "--reply-to", "nothex"), "hex digits")
    typo = handle[:20] + ("q" if handle[20] != "q" else "p") + handle[21:]
    assert_one_line_error(p2pblog(home, "post", f"hi {typo}"), "not a valid handle")
    assert_one_line_error(p2pblog(home, "log", typo), "checksum")
    assert_one_line_error(p2pblog(home, "verify", "@nonsense"), "handle")
    not_utf8 = subprocess.run(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "post", b"bad \xff text"],
        capture_output=True,
        timeout=60,
    )
    assert not_utf8.returncode == 1 and b"UTF-8" in not_utf8.stderr and b"Traceback" not in not_utf8.stderr
    assert [e["text"] for e in log_json(home)] == ["kept"]


def test_a_damaged_key_file_is_one_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    (home / "identity.key").write_text('{"format": "p2pblog-key/1", "type": "ed25519"}')
    for args in (["id"], ["log"], ["post", "x"]):
        assert_one_line_error(p2pblog(home, *args), "malformed 'public' field")


def test_commands_without_an_identity_say_how_to_start(tmp_path: Path) -> None:
    for args in (["id"], ["post", "hi"], ["log"], ["verify"]):
        assert_one_line_error(p2pblog(tmp_path / "empty", *args), "p2pblog init")


def test_export_and_import_carry_a_feed(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    handle = init(alice)
    init(bob)
    ids = [post(alice, f"post {i}") for i in range(5)]
    feed = tmp_path / "alice.feed"
    result = p2pblog(alice, "export", handle, str(feed))
    assert result.returncode == 0 and "exported 5" in result.stdout
    result = p2pblog(bob, "import", str(feed))
    assert result.returncode == 0, result.stderr
    assert "imported 5" in result.stdout
    assert [e["id"] for e in log_json(bob, handle)] == ids[::-1]
    assert p2pblog(bob, "verify", handle).returncode == 0
    again = p2pblog(bob, "import", str(feed))
    assert again.returncode == 0 and "5 already present" in again.stdout


def test_import_keeps_the_valid_prefix_and_refuses_the_rest(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    handle = init(alice)
    init(bob)
    for i in range(4):
        post(alice, f"post {i}")
    feed = tmp_path / "alice.feed"
    assert p2pblog(alice, "export", handle, str(feed)).returncode == 0
    data = bytearray(feed.read_bytes())
    # Flip one byte inside the signature of the third entry.
    offset = len(MAGIC) + 1
    for _ in range(2):
        offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
    data[offset + 4 + 10] ^= 0xFF
    feed.write_bytes(bytes(data))
    result = p2pblog(bob, "import", str(feed))
    assert_one_line_error(result, "signature")
    assert "imported 2" in result.stdout
    assert "refused 2" in result.stderr
    assert [e["seq"] for e in log_json(bob, handle)] == [2, 1]

    truncated = tmp_path / "short.feed"
    truncated.write_bytes(feed.read_bytes()[:-5])
    assert_one_line_error(p2pblog(bob, "import", str(truncated)), "truncated")
    junk = tmp_path / "junk.feed"
    junk.write_bytes(b"not a feed file at all")
    assert_one_line_error(p2pblog(bob, "import", str(junk)), "not a p2pblog feed file")
    assert_one_line_error(p2pblog(bob, "import", str(tmp_path / "missing.feed")), "does not exist")


def test_encrypted_key(tmp_path: Path) -> None:
    home = tmp_path / "secret"
    good = {"P2PBLOG_PASSPHRASE": "correct horse"}
    init(home, "--encrypt", env=good)
    assert "box" in json.loads((home / "identity.key").read_text())
    assert_one_line_error(p2pblog(home, "post", "no passphrase"), "P2PBLOG_PASSPHRASE")
    assert_one_line_error(
        p2pblog(home, "post", "bad", env={"P2PBLOG_PASSPHRASE": "wrong"}), "wrong passphrase"
    )
    entry_id = post(home, "signed with the unlocked key", env=good)
    assert log_json(home)[0]["id"] == entry_id
    assert p2pblog(home, "id").returncode == 0  # reading the handle needs no passphrase


def test_home_from_the_environment_and_console_script(tmp_path: Path) -> None:
    home = tmp_path / "envhome"
    result = p2pblog(None, "init", env={"P2PBLOG_HOME": str(home)}, module=False)
    assert result.returncode == 0, result.stderr
    handle = result.stdout.strip()
    assert (home / "identity.key").exists()
    assert p2pblog(home, "id", module=False).stdout.strip() == handle


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    result = p2pblog(None, *command.split(), "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) >= 4


def test_demo_runs_a_live_network_and_posts_arrive_everywhere() -> None:
    result = p2pblog(None, "demo", "--nodes", "3", "--duration", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    handles = [line.split()[2] for line in out.splitlines() if line.split()[1:2] == ["is"]]
    assert len(handles) == 3 and all(decode_handle(h) for h in handles)
    assert "alice resolves 'bob': bob" in out and "carol resolves 'alice': alice" in out
    assert "alice posts: Hello, peer-to-peer world!" in out
    # Each post reaches both other nodes over real sockets.
    assert "bob received alice's post" in out and "carol received alice's post" in out
    assert "alice received bob's post" in out


def test_terminal_escapes_in_posts_and_names_are_shown_not_obeyed(tmp_path: Path) -> None:
    # Text comes from other people: an OSC 52 sequence would write the clipboard,
    # a bidi override would make the line read backwards.
    home = tmp_path / "a"
    init(home)
    evil = "copy\x1b]52;c;ZXZpbA==\x07 me \u202eevil\u009b"
    entry_id = post(home, evil)
    # A name with a line break would forge the lines after the header it sits in.
    assert p2pblog(home, "profile", "set", "--name", "Ev\x1b[31mil\nforged line").returncode == 0
    for command in (("log",), ("timeline",), ("profile", "show"), ("thread", entry_id)):
        out = p2pblog(home, *command).stdout
        assert not any(c in out for c in "\x1b\x07\u202e\u009b"), (command, out)
        assert not any(line.startswith("forged line") for line in out.splitlines()), (command, out)
    timeline = p2pblog(home, "timeline").stdout
    assert "copy\\u001b]52;c;ZXZpbA==\\u0007 me \\u202eevil\\u009b" in timeline
    assert "Ev\\u001b[31mil\\u000aforged line (" in timeline
    assert log_json(home)[1]["text"] == evil  # the stored text and --json are unchanged


def test_run_on_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = p2pblog(home, "run", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_importing_another_version_of_the_own_feed_is_refused_and_posting_still_works(
    tmp_path: Path,
) -> None:
    # A copy of the home (an old backup, a second laptop) posted seq 2 elsewhere.
    home, copy = tmp_path / "a", tmp_path / "copy"
    handle = init(home)
    post(home, "one")
    shutil.copytree(home, copy)
    post(copy, "two, elsewhere")
    post(home, "two, here")
    assert p2pblog(copy, "export", handle, str(tmp_path / "copy.feed")).returncode == 0
    result = p2pblog(home, "import", str(tmp_path / "copy.feed"))
    assert_one_line_error(result, "different entry of your own feed at seq 2")
    assert "Nothing was imported" in result.stderr
    assert [e["text"] for e in log_json(home)[:2]] == ["two, here", "one"]
    post(home, "three")  # the feed is not forked: it can still be extended


def test_replies_only_to_posts_and_verify_of_an_unknown_feed_fails(tmp_path: Path) -> None:
    home, other = tmp_path / "a", tmp_path / "b"
    init(home)
    assert p2pblog(home, "follow", init(other)).returncode == 0
    follow_entry = log_json(home)[0]
    assert follow_entry["kind"] == "follow"
    result = p2pblog(home, "post", "a reply", "--reply-to", str(follow_entry["id"]))
    assert_one_line_error(result, "the entry replied to is a follow, not a post")
    unknown = p2pblog(home, "verify", init_handle(other))
    assert_one_line_error(unknown, "nothing to verify")


def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    # More than a pipe's 64 KiB buffer, so the writer really meets the closed pipe.
    identity = Home(home).load_identity()
    with Home(home).open_store() as store:
        store.ingest_many(e.raw for e in make_chain(identity, 300, text="x" * 400))
    env = {**os.environ, "P2PBLOG_HOME": str(home)}
    shell = f"{sys.executable} -m p2pblog log -n 300 | head -c 10"
    result = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=60, env=env)
    assert result.stdout and "Error" not in result.stderr and "Traceback" not in result.stderr


def test_init_does_not_orphan_a_store_whose_key_file_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    post(home, "kept")
    (home / "identity.key").rename(tmp_path / "identity.key.bak")
    assert_one_line_error(p2pblog(home, "init"), "holds 1 entries of an earlier identity")
    assert not (home / "identity.key").exists()
    (tmp_path / "identity.key.bak").rename(home / "identity.key")
    assert [e["text"] for e in log_json(home)][:1] == ["kept"]


def test_a_damaged_stored_entry_is_one_error_pointing_at_verify(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    post(home, "soon damaged")
    db = sqlite3.connect(home / "store.sqlite3")
    with db:
        db.execute("UPDATE entries SET raw = substr(raw, 1, 20) WHERE seq = 1")
    db.close()
    for command in (("log",), ("timeline",)):
        assert_one_line_error(p2pblog(home, *command), "`p2pblog verify` lists which")
    verify = p2pblog(home, "verify")
    assert verify.returncode == 1 and "problem:" in verify.stderr


def test_run_reports_a_file_problem_as_itself_not_as_a_listen_error(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    (home / "node.json.tmp").mkdir()  # the node cannot write its state file
    result = p2pblog(home, "run", "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"Is a directory: {home / 'node.json.tmp'}")
    assert "cannot listen" not in result.stderr and "Traceback" not in result.stderr


def test_run_refuses_an_advertise_address_with_a_port(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home)
    for bad in ("127.0.0.1:5555", "not a host!", "1.2.3", "fe80::1%eth0", "a..b"):
        result = p2pblog(home, "run", "--listen", "127.0.0.1:0", "--advertise", bad)
        assert result.returncode == 2 and "neither an IP address nor a host name" in result.stderr


def test_petnames_work_in_log_export_verify_and_resolve_offline(tmp_path: Path) -> None:
    home, other = tmp_path / "a", tmp_path / "b"
    init(home)
    bob = init(other)
    post(other, "bob's post")
    feed = tmp_path / "bob.feed"
    assert p2pblog(other, "export", bob, str(feed)).returncode == 0
    assert p2pblog(home, "import", str(feed)).returncode == 0
    assert p2pblog(home, "petname", "set", "bob", bob).returncode == 0
    assert [e["text"] for e in log_json(home, "bob")] == ["bob's post"]
    assert p2pblog(home, "verify", "bob").stdout.startswith("verified 1 entries in 1 feed(s): ok")
    assert p2pblog(home, "export", "bob", str(tmp_path / "again.feed")).returncode == 0
    assert (tmp_path / "again.feed").read_bytes() == feed.read_bytes()
    resolved = p2pblog(home, "resolve", "bob")  # no node running: the petname still answers
    assert resolved.returncode == 0 and bob in resolved.stdout and "not looked up" in resolved.stderr


def test_follow_and_timeline_work_offline(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    init(alice)
    bob_handle = init(bob)
    post(alice, "alice's own post")
    result = p2pblog(alice, "follow", bob_handle)
    assert result.returncode == 0, result.stderr
    assert "node replicates it when it starts" in result.stderr
    again = p2pblog(alice, "follow", bob_handle)
    assert again.returncode == 0 and "already following" in again.stderr
    doc = json.loads(p2pblog(alice, "log", "--json").stdout)
    assert [e["kind"] for e in doc][:1] == ["follow"] and doc[0]["feed"] == bob_handle
    timeline = json.loads(p2pblog(alice, "timeline", "--json").stdout)
    assert [t["text"] for t in timeline] == ["alice's own post"]
    assert timeline[0]["author"] == init_handle(alice)
    assert p2pblog(alice, "unfollow", bob_handle).returncode == 0
    assert "already not following" in p2pblog(alice, "unfollow", bob_handle).stderr
    own = p2pblog(alice, "follow", init_handle(alice))
    assert own.returncode == 1 and "your own handle" in own.stderr
    typo = p2pblog(alice, "follow", bob_handle[:-1] + ("q" if bob_handle[-1] != "q" else "p"))
    assert typo.returncode == 1 and typo.stderr.startswith("Error:")


def init_handle(home: Path) -> str:
    return p2pblog(home, "id").stdout.strip()


def test_status_says_clearly_when_the_node_is_not_running(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    init(home)
    result = p2pblog(home, "status")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"Error: node not running at {home}; start it with: p2pblog --home {home} run"
    )
