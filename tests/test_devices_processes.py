"""One identity on two devices, with real ``p2pblog run`` processes on 127.0.0.1 (issue 15).

The root node R and a new home X: ``device add`` on X prints a pairing code,
``device approve CODE`` on R certifies X, and X's node finds the approval in
the DHT and joins.  Followers C, D and E follow R's handle only.  R and X post
100 entries each at the same time (through the control API, from two
threads); every follower shows the 200 posts in one timeline under R's
handle, and no feed is forked anywhere.  After ``device revoke`` on R, X's
next post is refused by the followers, while a later post of R still arrives.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from p2pblog import control
from tests.nodes import NodeProcess, cli_json, init_home, run, start_node, wait_for


def timeline(home: Path) -> list[dict[str, Any]]:
    docs = cli_json(home, "timeline", "--limit", "500")
    assert isinstance(docs, list)
    return docs


def test_a_second_device_joins_posts_under_the_identity_and_is_revoked(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    r = start_node(tmp_path / "r")
    nodes.append(r)
    init_home(tmp_path / "x")
    code = run(tmp_path / "x", "device", "add", "--name", "phone").splitlines()[-1]
    assert code.startswith("pair-")
    device_key = run(r.home, "device", "approve", code)
    x = start_node(tmp_path / "x", "--bootstrap", r.bootstrap)
    nodes.append(x)
    assert wait_for(lambda: run(x.home, "id") == r.handle, timeout=60), x.output()
    assert cli_json(x.home, "id")["device"] == device_key  # type: ignore[index]
    followers = []
    for name in "cde":
        follower = start_node(tmp_path / name, "--bootstrap", r.bootstrap)
        nodes.append(follower)
        run(follower.home, "follow", r.handle)  # the identity, not the device
        followers.append(follower)
    c = followers[0]
    run(r.home, "post", "from the root device")
    run(x.home, "post", "from the phone")

    def texts(home: Path = c.home) -> dict[str, dict[str, Any]]:
        return {d["text"]: d for d in timeline(home)}

    assert wait_for(lambda: {"from the root device", "from the phone"} <= set(texts()), timeout=60), (
        c.output() + x.output()
    )
    shown = texts()
    assert shown["from the phone"]["author"] == shown["from the root device"]["author"] == r.handle
    assert shown["from the phone"]["device"] == device_key

    def post_many(node: NodeProcess, prefix: str) -> None:
        for i in range(100):
            control.call(node.home, "post", {"text": f"{prefix} {i}"})

    writers = [threading.Thread(target=post_many, args=(n, p)) for n, p in ((r, "root"), (x, "phone"))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    expected = {f"root {i}" for i in range(100)} | {f"phone {i}" for i in range(100)}
    for follower in followers:
        assert wait_for(lambda f=follower: expected <= set(texts(f.home)), timeout=90), follower.output()
        shown = texts(follower.home)
        assert {shown[t]["author"] for t in expected} == {r.handle}
        feeds = cli_json(follower.home, "status")["feeds"]  # type: ignore[index]
        assert not any(feed["forked"] for feed in feeds), feeds
    devices = cli_json(r.home, "device", "list")
    assert [d["state"].split(" ")[0] for d in devices["devices"]] == ["root", "active"]  # type: ignore[index]

    run(r.home, "device", "revoke", "phone")
    time.sleep(1.0)
    run(x.home, "post", "after the revocation")
    run(r.home, "post", "the root goes on")
    for follower in followers:
        assert wait_for(lambda f=follower: "the root goes on" in texts(f.home), timeout=60), follower.output()
    time.sleep(3.0)  # time for the phone's post to arrive, if it were accepted
    for follower in followers:
        shown = texts(follower.home)
        assert "after the revocation" not in shown and "from the phone" in shown
    states = [d["state"] for d in cli_json(c.home, "device", "list")["devices"]]  # type: ignore[index]
    assert states == ["root"]  # C is its own identity; the devices are R's
    for node in (x, *followers, r):
        assert node.stop() == 0, node.output()
