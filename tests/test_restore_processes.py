"""Restore from the backup phrase with real ``p2pblog run`` processes (issue 15's first test).

The old node posts, a follower replicates, the old node is gone for good; a
fresh home restored from the phrase refuses to post, runs, catches up from the
follower, and then posts the next seq, which the follower accepts: no fork.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from identity import decode_handle
from p2pblog.store import Store
from tests.nodes import NodeProcess, run, start_node, status, wait_for
from tests.process import child_env, p2pblog

N = 6


def latest_seq(home: Path, handle: str) -> int:
    with Store(home / "store.sqlite3") as store:
        return store.latest_seq(decode_handle(handle))


def own_head(node: NodeProcess) -> dict[str, object]:
    head = status(node)["own_head"]
    assert isinstance(head, dict)
    return head


def feeds_of(node: NodeProcess) -> dict[str, dict[str, object]]:
    feeds = status(node)["feeds"]
    assert isinstance(feeds, list)
    return {f["handle"]: f for f in feeds}


def test_restore_from_the_phrase_while_the_old_node_is_gone(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    old = start_node(tmp_path / "old")
    nodes.append(old)
    follower = start_node(tmp_path / "follower", "--bootstrap", old.bootstrap)
    nodes.append(follower)
    run(follower.home, "follow", old.handle)
    for i in range(N):
        run(old.home, "post", f"old post {i}")
    assert wait_for(lambda: latest_seq(follower.home, old.handle) == N, timeout=20), follower.output()
    phrase = run(old.home, "identity", "phrase")
    old.stop()
    shutil.rmtree(old.home)  # the laptop is gone

    new_home = tmp_path / "restored"
    result = subprocess.run(
        [sys.executable, "-m", "p2pblog", "--home", str(new_home), "init", "--restore"],
        input=phrase + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == old.handle
    refused = p2pblog(new_home, "post", "too early")
    assert refused.returncode == 1 and "is not known here" in refused.stderr

    new = start_node(new_home, "--bootstrap", follower.bootstrap)
    nodes.append(new)
    assert wait_for(lambda: own_head(new).get("state") == "known", timeout=60), new.output()
    assert own_head(new)["held"] == N
    assert "caught up with our own feed at #6" in new.output()

    posted = p2pblog(new.home, "post", "back from the phrase")
    assert posted.returncode == 0, posted.stderr
    assert f"Posted #{N + 1}" in posted.stderr
    assert wait_for(lambda: latest_seq(follower.home, old.handle) == N + 1, timeout=20), follower.output()
    assert feeds_of(follower)[old.handle]["forked"] is False
    assert feeds_of(new)[old.handle]["forked"] is False
    assert run(follower.home, "verify").startswith("verified")
    assert run(new.home, "verify").startswith("verified")


def test_a_copied_key_file_with_nobody_to_catch_up_from_never_posts(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """The copied-key case with the node running but alone: it cannot learn its head,
    so a post through the node is refused too, and `status` says it is catching up."""
    first = tmp_path / "first"
    run(first, "init")
    run(first, "post", "the real #1")
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    shutil.copy(first / "identity.key", copy / "identity.key")
    node = start_node(copy)
    nodes.append(node)
    assert own_head(node) == {"state": "catching up", "held": 0, "reported": 0}
    refused = p2pblog(copy, "post", "a second #1")
    assert refused.returncode == 1
    assert "is not known here" in refused.stderr and "p2pblog run" in refused.stderr
    shown = p2pblog(copy, "status")
    assert "own feed: head not known, catching up (held 0, peers report 0)" in shown.stdout
    assert latest_seq(copy, node.handle) == 0
