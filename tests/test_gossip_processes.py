"""Gossip replication with real ``p2pblog run`` processes on 127.0.0.1 (issue 4's tests 1-4).

Each test starts its own nodes, drives them through the CLI (``follow``,
``post``, ``timeline --json``, ``status --json``) and stops them.  Arrival is
checked in the followers' own stores, read with a separate SQLite connection
while the node runs (WAL readers never block the writer).
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from identity import decode_handle
from p2pblog import control
from p2pblog.store import Store
from tests.nodes import NodeProcess, fixed_port, run, start_node, status, timeline_texts, wait_for
from tests.process import p2pblog


def latest_seq(home: Path, handle: str) -> int:
    with Store(home / "store.sqlite3") as store:
        return store.latest_seq(decode_handle(handle))


def connected(node: NodeProcess, handle: str) -> bool:
    peers = status(node)["peers"]
    assert isinstance(peers, list)
    return any(p["handle"] == handle for p in peers)


def start(nodes: list[NodeProcess], home: Path, *args: str, listen: str = "") -> NodeProcess:
    """A node on a port of its own (`fixed_port`): `restart` brings it back there."""
    node = start_node(home, *args, listen=listen or f"127.0.0.1:{fixed_port()}")
    nodes.append(node)
    return node


def restart(nodes: list[NodeProcess], node: NodeProcess) -> NodeProcess:
    """Start a stopped node again on the same ports (as a user's node on its fixed port)."""
    assert node.stopped
    return start(nodes, node.home, listen=f"{node.dht[0]}:{node.dht[1]}")


def follow_and_connect(follower: NodeProcess, author: NodeProcess) -> None:
    run(follower.home, "follow", author.handle)
    assert wait_for(lambda: connected(follower, author.handle), timeout=20), follower.output()


def test_followers_see_a_post_within_two_seconds(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a = start(nodes, tmp_path / "a")
    b = start(nodes, tmp_path / "b", "--bootstrap", a.bootstrap)
    c = start(nodes, tmp_path / "c", "--bootstrap", a.bootstrap)
    follow_and_connect(b, a)
    follow_and_connect(c, a)

    run(a.home, "post", "hello from a, live")
    posted = time.monotonic()
    for follower in (b, c):
        assert wait_for(lambda f=follower: latest_seq(f.home, a.handle) == 1, timeout=2, interval=0.02), (
            follower.output()
        )
    assert time.monotonic() - posted < 2.0
    for follower in (b, c):
        assert "hello from a, live" in timeline_texts(follower.home)


def test_a_new_follower_gets_the_feed_from_other_followers_while_the_author_is_down(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = start(nodes, tmp_path / "a")
    b = start(nodes, tmp_path / "b", "--bootstrap", a.bootstrap)
    c = start(nodes, tmp_path / "c", "--bootstrap", a.bootstrap)
    for i in range(5):
        run(a.home, "post", f"a's post {i}")
    follow_and_connect(b, a)
    follow_and_connect(c, a)
    for follower in (b, c):
        assert wait_for(lambda f=follower: latest_seq(f.home, a.handle) == 5, timeout=10), follower.output()
    # B and C announce themselves as providers of A's feed once they hold it.
    time.sleep(3)
    a.stop()

    d = start(nodes, tmp_path / "d", "--bootstrap", b.bootstrap)
    run(d.home, "follow", a.handle)
    assert wait_for(lambda: latest_seq(d.home, a.handle) == 5, timeout=30), d.output()
    assert timeline_texts(d.home) == [f"a's post {i}" for i in reversed(range(5))]
    assert run(d.home, "verify").startswith("verified")
    served_by = {p["handle"] for p in status(d)["peers"]}  # type: ignore[union-attr]
    assert served_by & {b.handle, c.handle}
    assert a.handle not in served_by


def test_posts_made_offline_go_out_when_the_node_starts(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a = start(nodes, tmp_path / "a")
    b = start(nodes, tmp_path / "b", "--bootstrap", a.bootstrap)
    c = start(nodes, tmp_path / "c", "--bootstrap", a.bootstrap)
    follow_and_connect(b, a)
    follow_and_connect(c, a)
    run(a.home, "post", "online post")
    for follower in (b, c):
        assert wait_for(lambda f=follower: latest_seq(f.home, a.handle) == 1, timeout=10), follower.output()
    time.sleep(1)  # let A learn where B and C listen (saved in its address book)
    a.stop()

    for i in range(3):
        result = p2pblog(a.home, "post", f"offline post {i}")
        assert result.returncode == 0, result.stderr
        assert "follower" not in result.stderr  # stored offline, not pushed by a node
    assert latest_seq(a.home, a.handle) == 4

    a = restart(nodes, a)
    for follower in (b, c):
        assert wait_for(lambda f=follower: latest_seq(f.home, a.handle) == 4, timeout=15), follower.output()
        texts = timeline_texts(follower.home)
        assert [f"offline post {i}" for i in (2, 1, 0)] == texts[:3]


def test_a_restarted_follower_catches_up_to_exactly_the_authors_feed(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = start(nodes, tmp_path / "a")
    b = start(nodes, tmp_path / "b", "--bootstrap", a.bootstrap)
    follow_and_connect(b, a)
    b.stop()

    for i in range(50):  # through A's control API, as `p2pblog post` would (without 50 processes)
        control.call(a.home, "post", {"text": f"post {i}"})
    assert latest_seq(a.home, a.handle) == 50

    b = restart(nodes, b)
    assert wait_for(lambda: latest_seq(b.home, a.handle) >= 50, timeout=20), b.output()
    time.sleep(1)  # nothing more arrives: exactly A's 50
    assert latest_seq(b.home, a.handle) == 50
    texts = timeline_texts(b.home)
    assert texts == [f"post {i}" for i in reversed(range(50))]
    state = status(b)
    feeds = {f["handle"]: f["seq"] for f in state["feeds"]}  # type: ignore[union-attr]
    assert feeds[a.handle] == 50
    # The catch-up's batch was checked on a worker thread, and nothing waits any more.
    verify = state["verify"]
    assert isinstance(verify, dict)
    assert verify["offloaded"] >= 1 and verify["waiting"] == 0 and verify["queued_bytes"] == 0
    assert verify["in"] == "processes"
    assert not [k for k in state["counters"] if "verify_process_error" in k]  # type: ignore[union-attr]


def descendants(pid: int) -> set[int]:
    """Live descendants of a process, from /proc/PID/task/*/children."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(c) for c in children.read_text().split()]
                out.update(kids)
                todo.extend(kids)
    return out


def test_a_killed_node_leaves_no_verifier_processes(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a = start(nodes, tmp_path / "a")
    for i in range(40):  # one batch of 40: checked in a verifier process
        control.call(a.home, "post", {"text": f"post {i}"})
    b = start(nodes, tmp_path / "b", "--bootstrap", a.bootstrap)
    run(b.home, "follow", a.handle)
    assert wait_for(lambda: latest_seq(b.home, a.handle) == 40, timeout=20), b.output()
    verify = status(b)["verify"]
    assert isinstance(verify, dict) and verify["in"] == "processes" and verify["offloaded"] >= 1
    workers = descendants(b.process.pid)
    assert workers  # the forkserver and its verifier processes
    b.stop(signal.SIGKILL)
    # However the node ended, its verifier processes (and so the forkserver) follow it.
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=10), workers
