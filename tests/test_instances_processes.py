"""Two nodes, one key (issue 15), with real ``p2pblog run`` processes on 127.0.0.1.

A user copies ``identity.key`` into a second home and runs both: each node's
``status`` and log warn of the other; once the copy stops, ``lookup`` from a
third node finds the original's address within one republication period.  The
period is shortened to `REPUBLISH` seconds with ``run``'s hidden
``--peer-republish`` option (30 minutes otherwise), so the test waits seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tests.nodes import NodeProcess, start_node, status, wait_for
from tests.process import p2pblog

#: Seconds between re-signings of each node's peer record in this test.
REPUBLISH = 6.0
#: What a ``lookup`` command itself may take (a process start and a DHT walk on a busy machine).
LOOKUP_SLACK = 8.0


def lookup_addrs(home: Path, handle: str) -> list[list[object]]:
    result = p2pblog(home, "lookup", handle, "--json")
    if result.returncode != 0:
        return []
    doc = json.loads(result.stdout)
    return list(doc.get("addrs") or []) if doc.get("found") else []


def duplicates(node: NodeProcess) -> list[dict[str, object]]:
    found = status(node).get("duplicate_instances")
    assert isinstance(found, list)
    return found


def test_a_copied_key_is_warned_about_and_lookups_return_to_the_original(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    seed = start_node(tmp_path / "seed")
    nodes.append(seed)
    short = ("--peer-republish", str(REPUBLISH), "--bootstrap", seed.bootstrap)
    original = start_node(tmp_path / "original", *short)
    nodes.append(original)
    observer = start_node(tmp_path / "observer", "--bootstrap", seed.bootstrap)
    nodes.append(observer)
    (tmp_path / "copy").mkdir()
    shutil.copy2(original.home / "identity.key", tmp_path / "copy" / "identity.key")
    copy = start_node(tmp_path / "copy", *short)
    nodes.append(copy)
    assert copy.handle == original.handle

    # Each is warned of the other: in status (its instance and addresses) and in its log.
    own = {"original": status(original)["instance"], "copy": status(copy)["instance"]}
    assert own["original"] != own["copy"]
    for node, other, other_node in ((original, "copy", copy), (copy, "original", original)):
        assert wait_for(lambda n=node: duplicates(n), timeout=6 * REPUBLISH), node.output()
        [seen] = duplicates(node)
        assert seen["instance"] == own[other]
        assert ["tcp", "127.0.0.1", other_node.gossip[1]] in seen["addrs"]  # type: ignore[operator]
        assert "another node runs with this identity's key at 127.0.0.1:" in node.output()
        human = p2pblog(node.home, "status")
        assert human.returncode == 0 and "WARNING: another node runs with this identity's key" in human.stdout
    # A single node is not warned about itself.
    assert duplicates(observer) == []

    # The copy stops while the observer's lookup names it: within one republication the
    # lookup names the original, and keeps naming it.
    dead = ["tcp", "127.0.0.1", copy.gossip[1]]
    assert wait_for(lambda: dead in lookup_addrs(observer.home, original.handle), timeout=6 * REPUBLISH)
    copy.stop()
    stopped = time.monotonic()
    alive = ["tcp", "127.0.0.1", original.gossip[1]]
    assert wait_for(
        lambda: alive in lookup_addrs(observer.home, original.handle),
        timeout=REPUBLISH + LOOKUP_SLACK,
        interval=0.5,
    ), original.output()
    assert time.monotonic() - stopped <= REPUBLISH + LOOKUP_SLACK
    for _ in range(3):
        assert alive in lookup_addrs(observer.home, original.handle)
        time.sleep(REPUBLISH / 3)
