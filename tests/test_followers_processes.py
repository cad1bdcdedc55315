"""`p2pblog followers` with real ``p2pblog run`` processes (issue 19).

B and C follow A.  A follows B back, so A holds B's feed and with it B's
signed follow entry; A does not hold C's feed, so C is known to A only by the
provider record C announces, in the DHT, for A's feed.  The test checks both
ways of knowing, the offline view, and that an unfollow removes a follower
even while its provider record lives on in the DHT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2pblog import control
from tests.nodes import NodeProcess, cli_json, run, start_node, status, wait_for
from tests.process import p2pblog


def start(nodes: list[NodeProcess], home: Path, *args: str) -> NodeProcess:
    node = start_node(home, *args)
    nodes.append(node)
    return node


def followers(node: NodeProcess, *target: str) -> dict[str, Any]:
    doc = cli_json(node.home, "followers", *target)
    assert isinstance(doc, dict)
    return doc


def sources(doc: dict[str, Any]) -> dict[str, str]:
    return {f["handle"]: f["source"] for f in doc["followers"]}


def wait_for_sources(node: NodeProcess, want: dict[str, str], seen: list[dict[str, Any]]) -> bool:
    """Whether node's followers come to be want (with their sources) within 60 s; the
    answers asked for are appended to seen (the last one explains a failure)."""

    def done() -> bool:
        seen.append(followers(node))
        return sources(seen[-1]) == want

    return wait_for(done, timeout=60, interval=2)


def test_a_node_lists_who_follows_it(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    s = start(nodes, tmp_path / "s")
    a = start(nodes, tmp_path / "a", "--bootstrap", s.bootstrap)
    b = start(nodes, tmp_path / "b", "--bootstrap", s.bootstrap)
    c = start(nodes, tmp_path / "c", "--bootstrap", s.bootstrap)
    for node in (a, b, c):
        assert wait_for(lambda n=node: status(n)["contacts"] > 0, timeout=20), node.output()
    run(a.home, "post", "hello")
    run(b.home, "profile", "set", "--name", "Bob")
    run(b.home, "follow", a.handle)
    run(c.home, "follow", a.handle)
    run(a.home, "follow", b.handle)

    # A learns of B through B's follow entry (and provider record), of C through the DHT only.
    want = {b.handle: "both", c.handle: "DHT provider record"}
    seen: list[dict[str, Any]] = []
    assert wait_for_sources(a, want, seen), (seen[-1], a.output())
    doc = seen[-1]
    assert (doc["count"], doc["from_entries"], doc["from_dht"], doc["in_both"]) == (2, 1, 2, 1)
    assert doc["dht_asked"] and doc["searched"] is not None
    assert doc["holders"] >= 2
    assert next(f["name"] for f in doc["followers"] if f["handle"] == b.handle) == "Bob"
    assert doc["summary"] == (
        "at least 2 followers (1 from follow entries held here, 2 providers in the DHT, 1 in both)"
    )

    # The text output says the same; B asks about A by handle and sees C (through the DHT).
    result = p2pblog(a.home, "followers")
    assert result.returncode == 0, result.stderr
    assert b.handle in result.stdout and c.handle in result.stdout and "Bob" in result.stdout
    assert "at least 2 followers" in result.stdout and "currently hold a copy" in result.stdout
    assert wait_for(lambda: c.handle in sources(followers(b, a.handle)), timeout=30, interval=2)

    # A malformed handle is one clear error from the node, and from the command line.
    with pytest.raises(control.ControlError, match="handle"):
        control.call(a.home, "followers", {"handle": "@pb1nottypo", "search": True})
    result = p2pblog(a.home, "followers", "@pb1nottypo")
    assert result.returncode == 1 and result.stderr.count("Error:") == 1, result.stderr

    # B unfollows A.  Its provider record stays in the DHT until it expires, but A holds
    # B's unfollow entry, so B is no longer counted; C still is.
    run(b.home, "unfollow", a.handle)
    assert wait_for_sources(a, {c.handle: "DHT provider record"}, seen), seen[-1]
    assert seen[-1]["unfollowed"] == 1

    # B follows again: its latest follow/unfollow entry about A decides.
    run(b.home, "follow", a.handle)
    assert wait_for(lambda: b.handle in sources(followers(a)), timeout=60, interval=2)

    # Offline, A knows only what its store holds: B's follow entry, not C's provider record.
    a.stop()
    offline = followers(a)
    assert sources(offline) == {b.handle: "follow entry"}
    assert (offline["count"], offline["dht_asked"], offline["holders"]) == (1, False, None)
    result = p2pblog(a.home, "followers")
    assert "at least 1 follower (from follow entries held here; the DHT was not asked" in result.stdout
