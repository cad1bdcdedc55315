"""Track (issue 19) with real ``p2pblog run`` processes on 127.0.0.1, driven through the CLI
and the web app exactly as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from p2pblog import control
from tests.nodes import NodeProcess, cli_json, run, start_node, status, wait_for
from tests.process import child_env, p2pblog
from tests.test_web import _sse_events, sign_in

pytestmark = pytest.mark.slow


def start(nodes: list[NodeProcess], home: Path, *args: str) -> NodeProcess:
    node = start_node(home, *args)
    nodes.append(node)
    return node


def tracked_texts(home: Path) -> list[str]:
    doc = cli_json(home, "tracked")
    assert isinstance(doc, list)
    return [str(item["text"]) for item in doc]


def counters(node: NodeProcess) -> dict[str, int]:
    return status(node)["counters"]  # type: ignore[return-value]


def test_a_strangers_tagged_post_reaches_a_tracker_through_the_dht_within_ten_seconds(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """C tracks #p2p; A, whom C does not follow and never connected to, posts with #P2P;
    `p2pblog tracked --json` on C shows it within 10 s, with A as its author."""
    s = start(nodes, tmp_path / "s")
    b = start(nodes, tmp_path / "b", "--bootstrap", s.bootstrap)
    a = start(nodes, tmp_path / "a", "--bootstrap", s.bootstrap)
    c = start(nodes, tmp_path / "c", "--bootstrap", b.bootstrap)
    for node in (s, a, b, c):
        assert wait_for(lambda n=node: status(n)["contacts"] > 1, timeout=20), node.output()
    run(c.home, "track", "add", "#p2p")
    assert cli_json(c.home, "track", "list") == ["#p2p"]
    assert a.handle not in json.dumps(status(c)["peers"])  # no connection between them yet

    posted = time.monotonic()
    run(a.home, "post", "hello from a stranger #P2P")
    run(a.home, "post", "and one without the tag")
    assert wait_for(lambda: "hello from a stranger #P2P" in tracked_texts(c.home), timeout=10), c.output()
    seen = time.monotonic() - posted
    assert seen <= 10.5
    doc = cli_json(c.home, "tracked")
    assert isinstance(doc, list)
    assert [(d["author"], d["seq"]) for d in doc] == [(a.handle, 1)]
    assert "and one without the tag" not in tracked_texts(c.home)
    # Stored alone, verified: C does not replicate A's feed, and counted what it fetched.
    follows = [f for f in status(c)["feeds"] if f["handle"] == a.handle]  # type: ignore[union-attr]
    assert follows == []
    found = counters(c)
    assert found["track.fetched"] == 1 and found["track.lookup.started"] >= 1
    assert found.get("track.slice.refused.invalid", 0) == 0
    assert counters(a)["track.announce.sent"] >= 1


def test_track_commands_work_offline_and_through_a_running_node(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init")
    # Offline: the store is opened directly.
    assert p2pblog(home, "track", "add", "#Rust").returncode == 0
    assert p2pblog(home, "track", "add", "Café").returncode == 0
    assert cli_json(home, "track", "list") == ["#rust", "café"]
    bad = p2pblog(home, "track", "add", "two words")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "WORD or a #tag" in bad.stderr
    run(home, "post", "learning #rust today")
    run(home, "post", "un CAFÉ noir")
    run(home, "post", "rust without the hash")
    assert tracked_texts(home) == ["un CAFÉ noir", "learning #rust today"]
    # Through the running node: the node learns the term at once (control API).
    node = start(nodes, home)
    result = p2pblog(home, "track", "add", "#p2p")
    assert result.returncode == 0 and "tracking #p2p" in result.stderr
    assert cli_json(home, "track", "list") == ["#rust", "café", "#p2p"]
    assert status(node)["track"]["terms"] == ["#rust", "café", "#p2p"]  # type: ignore[index]
    result = p2pblog(home, "track", "remove", "#RUST")
    assert result.returncode == 0 and "stopped tracking #rust" in result.stderr
    assert cli_json(home, "track", "list") == ["café", "#p2p"]
    missing = p2pblog(home, "track", "remove", "#nothing")
    assert missing.returncode != 0 and "not tracked" in missing.stderr
    # A 65th term is refused with one clear line.
    for i in range(62):  # through the control API, as `p2pblog track add` would
        control.call(home, "track_add", {"term": f"w{i}"})
    over = p2pblog(home, "track", "add", "onemore")
    assert over.returncode != 0 and "at most 64" in over.stderr and "Traceback" not in over.stderr


def test_tracked_follow_prints_new_matching_posts(tmp_path: Path) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init")
    run(home, "track", "add", "#live")
    run(home, "post", "first #live post")
    follower = subprocess.Popen(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "tracked", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")))  # type: ignore[union-attr]
        reader.start()
        assert wait_for(lambda: len(lines) >= 1, timeout=10)
        run(home, "post", "not tracked")
        run(home, "post", "second #LIVE post")
        assert wait_for(lambda: len(lines) >= 2, timeout=10)
        time.sleep(0.5)
        assert [json.loads(line)["text"] for line in lines] == ["first #live post", "second #LIVE post"]
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_the_tracked_page_adds_removes_and_shows_posts_live(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    home = tmp_path / "w"
    p2pblog(home, "init", "--name", "wendy")
    node = start(nodes, home, "--web", "127.0.0.1:0")
    web = sign_in(node)
    status_code, headers, page = web.get("/tracked")
    assert status_code == 200 and "Nothing tracked yet" in page
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)|\sstyle=|\son[a-z]+=", page)  # no inline script or style
    assert web.get("/tracked", cookie=False)[0] == 401  # signed-in users only
    # Adding needs the CSRF token, like every form.
    assert web.post("/track", {"term": "#web"}, csrf=False)[0] == 403
    code, headers, _ = web.post("/track", {"term": "#Web"})
    assert code == 303 and headers["location"] == "/tracked"
    code, _, body = web.post("/track", {"term": "bad term"}, json_reply=True)
    assert code == 400 and "WORD or a #tag" in body
    assert cli_json(home, "track", "list") == ["#web"]
    run(home, "post", "an old #web <b>post</b>")
    page = web.get("/tracked")[2]
    assert "#web" in page and "&lt;b&gt;post&lt;/b&gt;" in page and "<b>post" not in page
    # A new matching post reaches the open page live (server-sent events).
    got: list[tuple[str, dict[str, object]]] = []
    reader = threading.Thread(target=lambda: got.extend(_sse_events(web, 6.0)))
    reader.start()
    time.sleep(1.0)
    live_id = run(home, "post", "a live #WEB post").splitlines()[-1]
    run(home, "post", "an untracked post")
    reader.join()
    live = [doc for name, doc in got if name == "tracked"]
    assert [doc["id"] for doc in live] == [live_id]
    assert f'id="p-{live_id}"' in str(live[0]["html"]) and "a live " in str(live[0]["html"])
    # Remove: the term and its posts leave the page.
    assert web.post("/track/remove", {"term": "#web"})[0] == 303
    page = web.get("/tracked")[2]
    assert "a live #WEB post" not in page and "Nothing tracked yet" in page
