"""One identity on two devices, with real ``p2pblog run`` processes on 127.0.0.1 (issue 15).

The root node R and a new home X: ``device add`` on X prints a pairing code,
``device approve CODE`` on R certifies X, and X's node finds the approval in
the DHT and joins.  A follower C follows R's handle only, and shows R's and
X's posts in one timeline under R's handle.  After ``device revoke`` on R,
X's next post is refused by C, while a later post of R still arrives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.nodes import NodeProcess, cli_json, init_home, run, start_node, wait_for


def timeline(home: Path) -> list[dict[str, Any]]:
    docs = cli_json(home, "timeline", "--limit", "200")
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
    c = start_node(tmp_path / "c", "--bootstrap", r.bootstrap)
    nodes.append(c)
    run(c.home, "follow", r.handle)  # the identity, not the device
    run(r.home, "post", "from the root device")
    run(x.home, "post", "from the phone")

    def texts() -> dict[str, dict[str, Any]]:
        return {d["text"]: d for d in timeline(c.home)}

    assert wait_for(lambda: {"from the root device", "from the phone"} <= set(texts()), timeout=60), (
        c.output() + x.output()
    )
    shown = texts()
    assert shown["from the phone"]["author"] == shown["from the root device"]["author"] == r.handle
    assert shown["from the phone"]["device"] == device_key
    devices = cli_json(r.home, "device", "list")
    assert [d["state"].split(" ")[0] for d in devices["devices"]] == ["root", "active"]  # type: ignore[index]

    run(r.home, "device", "revoke", "phone")
    time.sleep(1.0)
    run(x.home, "post", "after the revocation")
    run(r.home, "post", "the root goes on")
    assert wait_for(lambda: "the root goes on" in texts(), timeout=60), c.output()
    time.sleep(3.0)  # time for the phone's post to arrive, if it were accepted
    shown = texts()
    assert "after the revocation" not in shown and "from the phone" in shown
    states = [d["state"] for d in cli_json(c.home, "device", "list")["devices"]]  # type: ignore[index]
    assert states == ["root"]  # C is its own identity; the devices are R's
    for node in (x, c, r):
        assert node.stop() == 0, node.output()
