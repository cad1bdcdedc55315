"""The people commands without a running node: petnames, profiles, threads, mentions,
blocks and deletes work on the store; name commands say they need the node."""

from __future__ import annotations

import json
from pathlib import Path

from tests.process import p2pblog


def ok(home: Path, *args: str) -> str:
    result = p2pblog(home, *args)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout.strip()


def error(home: Path, *args: str) -> str:
    result = p2pblog(home, *args)
    assert result.returncode == 1, f"{args}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") or "Error:" in result.stderr, result.stderr
    return result.stderr


def test_a_reply_to_an_unknown_post_is_linked_when_the_parent_arrives(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice_handle = ok(alice, "init").splitlines()[-1]
    ok(bob, "init")
    parent = ok(alice, "post", "the parent").splitlines()[-1]
    ok(bob, "follow", alice_handle)
    assert "--force" in error(bob, "post", "a reply", "--reply-to", parent)  # not held: a typo?
    reply = ok(bob, "post", "a reply", "--reply-to", parent, "--force").splitlines()[-1]

    lonely = json.loads(ok(bob, "thread", reply, "--json"))
    assert lonely["missing_parent"] == parent and lonely["ancestors"] == []
    assert f"reply to an unknown post {parent}" in ok(bob, "thread", reply)

    ok(alice, "export", alice_handle, str(tmp_path / "alice.feed"))
    ok(bob, "import", str(tmp_path / "alice.feed"))  # the parent arrives
    linked = json.loads(ok(bob, "thread", reply, "--json"))
    assert linked["missing_parent"] is None
    assert [a["id"] for a in linked["ancestors"]] == [parent]
    top = json.loads(ok(bob, "thread", parent, "--json"))
    assert [r["id"] for r in top["replies"]] == [reply] and top["replies"][0]["depth"] == 1
    assert "no entry" in error(bob, "thread", "00" * 32)


def test_mentions_delete_and_profile_offline(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice_handle = ok(alice, "init").splitlines()[-1]
    bob_handle = ok(bob, "init").splitlines()[-1]
    mention = ok(bob, "post", f"hello {alice_handle}").splitlines()[-1]
    posted = p2pblog(bob, "post", f"again {alice_handle}")
    assert "1 mention notice(s) go out when the node runs" in posted.stderr
    ok(bob, "profile", "set", "--name", "Bob", "--bio", "I post")
    ok(bob, "export", bob_handle, str(tmp_path / "bob.feed"))
    ok(alice, "import", str(tmp_path / "bob.feed"))

    mentions = json.loads(ok(alice, "mentions", "--json"))
    assert [m["text"] for m in mentions] == [f"again {alice_handle}", f"hello {alice_handle}"]
    assert mentions[0]["name"] == "Bob" and mentions[0]["following"] is False
    shown = json.loads(ok(alice, "profile", "show", bob_handle, "--json"))
    assert (shown["name"], shown["bio"], shown["feed_stored"]) == ("Bob", "I post", True)
    unknown = p2pblog(bob, "profile", "show", alice_handle)
    assert unknown.returncode == 0 and "follow it to get its profile" in unknown.stderr

    ok(bob, "delete", mention)
    assert "already deleted" in error(bob, "delete", mention)
    assert "own feed" in error(alice, "delete", mention)
    ok(bob, "export", bob_handle, str(tmp_path / "bob.feed"))
    ok(alice, "import", str(tmp_path / "bob.feed"))
    by_id = {m["id"]: m for m in json.loads(ok(alice, "mentions", "--json"))}
    assert by_id[mention]["deleted"] is True and by_id[mention]["text"] is None
    assert "(deleted by its author)" in ok(alice, "mentions")


def test_petnames_and_blocks_offline(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(alice, "init")
    bob_handle = ok(bob, "init").splitlines()[-1]
    ok(alice, "petname", "set", "bobby", bob_handle)
    assert json.loads(ok(alice, "petname", "list", "--json")) == [
        {"name": "bobby", "handle": bob_handle, "fingerprint": bob_handle[4:16]}
    ]
    # A petname resolves with no node and no DHT, and wins over claimed names.
    assert bob_handle in p2pblog(alice, "follow", "bobby").stderr
    assert bob_handle in p2pblog(alice, "unfollow", f"bobby~{bob_handle[4:12]}").stderr
    ok(alice, "follow", "bobby")

    blocked = p2pblog(alice, "block", "bobby")
    assert blocked.returncode == 0 and "and unfollowed it" in blocked.stderr
    assert [b["handle"] for b in json.loads(ok(alice, "blocks", "--json"))] == [bob_handle]
    assert "is blocked" in error(alice, "follow", bob_handle)
    assert "already blocked" in p2pblog(alice, "block", bob_handle).stderr
    ok(alice, "unblock", bob_handle)
    assert json.loads(ok(alice, "blocks", "--json")) == []
    ok(alice, "petname", "remove", "bobby")
    assert "no petname" in error(alice, "petname", "remove", "bobby")


def test_names_need_the_node_and_bad_names_are_one_clear_line(tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    ok(alice, "init")
    assert "start the node" in error(alice, "name", "claim", "alice")
    assert "start the node" in error(alice, "resolve", "alice")
    assert "start the node" in error(alice, "follow", "alice")
    for bad in ("Alice", "a" * 33, "has space", "ünï"):
        result = p2pblog(alice, "resolve", bad)
        assert result.returncode == 2 and "a-z, 0-9" in result.stderr, result.stderr
    assert "fingerprint" in p2pblog(alice, "follow", "alice~abc").stderr
    assert json.loads(ok(alice, "name", "list", "--json")) == []
