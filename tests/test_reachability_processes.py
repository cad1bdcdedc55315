"""Reachability between real ``p2pblog run`` processes on loopback.

A node that listens on 127.0.0.5 but dials out from 127.0.0.1 is one that
peers cannot dial back at the address its connections come from: the
loopback stand-in for a node behind a NAT router (the namespace lab in
`tests/test_nat_netns.py` has a real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodes import NodeProcess, cli_json, nodes, run, start_node, status, wait_for

pytestmark = pytest.mark.slow
__all__ = ["nodes"]


def reach(node: NodeProcess) -> dict[str, object]:
    doc = status(node)["reachability"]
    assert isinstance(doc, dict)
    return doc


def test_a_node_nobody_can_dial_goes_client_and_still_delivers(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    public = start_node(tmp_path / "public", listen="127.0.0.1:0")
    nodes.append(public)
    home = start_node(tmp_path / "home", "--bootstrap", public.bootstrap, listen="127.0.0.5:0")
    nodes.append(home)
    run(home.home, "follow", public.handle)
    run(public.home, "follow", home.handle)

    assert wait_for(lambda: reach(home)["state"] == "unreachable", 60), reach(home)
    assert wait_for(lambda: reach(public)["state"] == "reachable", 60), reach(public)
    doc = reach(home)
    assert doc["client_mode"] is True
    assert "could not dial" in str(doc["reason"]) and "127.0.0.5" not in str(doc["observed"])
    assert "client mode" in home.output() and "reachability: not reachable from outside" in home.output()

    # Its posts still reach the follower, over the connection it opened itself.
    run(home.home, "post", "posted from behind the router")
    assert wait_for(
        lambda: "posted from behind the router" in [p["text"] for p in cli_json(public.home, "timeline")],  # type: ignore[union-attr, index]
        30,
    )
