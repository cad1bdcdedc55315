"""Names, mentions, blocks and deletes with real ``p2pblog run`` processes (issue 6, tests 1-4).

Each test starts its own nodes on 127.0.0.1 and drives them through the
CLI exactly as a user would (``name claim``, ``resolve``, ``follow NAME``,
``post --reply-to``, ``mentions``, ``block``, ``delete``), reading results
from ``--json`` output.
"""

from __future__ import annotations

import json
from pathlib import Path

from identity import decode_handle, fingerprint
from tests.nodes import NodeProcess, cli_json, run, start_node, status, timeline_texts, wait_for
from tests.process import p2pblog


def start(nodes: list[NodeProcess], home: Path, *args: str) -> NodeProcess:
    node = start_node(home, *args)
    nodes.append(node)
    return node


def network(nodes: list[NodeProcess], tmp_path: Path, names: str) -> dict[str, NodeProcess]:
    """A bootstrap node "s" and one node per letter of names, all joined through s."""
    s = start(nodes, tmp_path / "s")
    out = {"s": s}
    for name in names:
        out[name] = start(nodes, tmp_path / name, "--bootstrap", s.bootstrap)
    # Every node has published its peer record once it has contacts.
    for node in out.values():
        assert wait_for(lambda n=node: status(n)["contacts"] > 0, timeout=20), node.output()
    return out


def claimants(node: NodeProcess, name: str) -> list[str]:
    doc = cli_json(node.home, "resolve", name)
    assert isinstance(doc, dict)
    return [c["handle"] for c in doc["claims"]]


def mention_ids(node: NodeProcess) -> list[str]:
    doc = cli_json(node.home, "mentions")
    assert isinstance(doc, list)
    return [m["id"] for m in doc]


def following(node: NodeProcess) -> set[str]:
    feeds = status(node)["feeds"]
    assert isinstance(feeds, list)
    return {f["handle"] for f in feeds if not f["own"]}


def counter(node: NodeProcess, name: str) -> int:
    counters = status(node)["counters"]
    assert isinstance(counters, dict)
    return int(counters.get(name, 0))


def test_a_claimed_name_resolves_and_is_followed_by_name(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    net = network(nodes, tmp_path, "abcd")
    a, d = net["a"], net["d"]
    assert run(a.home, "name", "claim", "alice") == f"alice~{fingerprint(decode_handle(a.handle))}"

    # D knows only the bootstrap address; the claim is found in the DHT.
    assert wait_for(lambda: claimants(d, "alice") == [a.handle], timeout=10)
    result = p2pblog(d.home, "follow", "alice")
    assert result.returncode == 0, result.stderr
    assert a.handle in result.stderr
    assert following(d) == {a.handle}

    run(a.home, "post", "hello, followers by name")
    assert wait_for(lambda: "hello, followers by name" in timeline_texts(d.home), timeout=10), d.output()


def test_a_name_claimed_twice_is_never_guessed(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    net = network(nodes, tmp_path, "aed")
    a, e, d = net["a"], net["e"], net["d"]
    run(a.home, "name", "claim", "sam")
    run(e.home, "name", "claim", "sam")
    assert wait_for(lambda: sorted(claimants(d, "sam")) == sorted([a.handle, e.handle]), timeout=10)

    text = p2pblog(d.home, "resolve", "sam")
    assert text.returncode == 0
    assert a.handle in text.stdout and e.handle in text.stdout

    refused = p2pblog(d.home, "follow", "sam")
    assert refused.returncode == 1
    assert "not guessing" in refused.stderr
    assert a.handle in refused.stderr and e.handle in refused.stderr
    assert following(d) == set()

    fp = fingerprint(decode_handle(e.handle))
    assert claimants(d, f"sam~{fp}") == [e.handle]
    run(d.home, "follow", f"sam~{fp}")
    assert following(d) == {e.handle}


def test_a_squatter_with_more_work_is_never_the_suggestion(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    """Issue 15: a claims alice; a little later e claims alice with more work.  b follows
    a, d follows b: both are told a.  c knows neither: both listed, a first (the network
    saw it first), and `follow alice` picks none."""
    net = network(nodes, tmp_path, "aebcd")
    a, e, b, c, d = net["a"], net["e"], net["b"], net["c"], net["d"]
    run(a.home, "name", "claim", "alice")
    assert wait_for(lambda: claimants(c, "alice") == [a.handle], timeout=10)
    # More work than a's claim happens to carry (a stamp often has a few bits over its minimum).
    first_work = cli_json(c.home, "resolve", "alice")["claims"][0]["work"]  # type: ignore[index]
    run(e.home, "name", "claim", "alice", "--work", str(max(23, int(first_work) + 1)))
    run(b.home, "follow", a.handle)
    run(d.home, "follow", b.handle)
    assert wait_for(lambda: claimants(c, "alice") == [a.handle, e.handle], timeout=30)

    doc = cli_json(c.home, "resolve", "alice")
    assert isinstance(doc, dict)
    first, second = doc["claims"]
    assert second["work"] > first["work"] and first["witnessed"] < second["witnessed"]
    assert first["relation"] == second["relation"] == "stranger"
    assert doc["suggested"] is None
    assert "picks none of them" in p2pblog(c.home, "resolve", "alice").stderr
    refused = p2pblog(c.home, "follow", "alice")
    assert refused.returncode == 1 and "not guessing" in refused.stderr
    assert following(c) == set()

    by_b = cli_json(b.home, "resolve", "alice")
    assert isinstance(by_b, dict)
    assert by_b["suggested"] == a.handle
    assert [(x["handle"], x["relation"]) for x in by_b["claims"]] == [
        (a.handle, "following"),
        (e.handle, "stranger"),
    ]
    # d replicates b's feed, and with it b's follow of a.
    assert wait_for(lambda: claimants(d, "alice")[0] == a.handle, timeout=15), d.output()
    picked = p2pblog(d.home, "follow", "alice")
    assert picked.returncode == 0, picked.stderr
    assert "followed by 1 person you follow" in picked.stderr
    assert following(d) == {b.handle, a.handle}


def test_a_mention_from_a_stranger_arrives_and_a_block_stops_the_next(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    net = network(nodes, tmp_path, "ab")
    a, b = net["a"], net["b"]
    parent = run(a.home, "post", "what do you all think?")

    # b does not follow a, so a's post is not held at b: replying to it takes --force.
    reply = run(b.home, "post", f"I think {a.handle} is right", "--reply-to", parent, "--force")
    assert wait_for(lambda: reply in mention_ids(a), timeout=5, interval=0.1), a.output()
    thread = cli_json(a.home, "thread", parent)
    assert isinstance(thread, dict)
    assert [r["id"] for r in thread["replies"]] == [reply]

    run(a.home, "block", b.handle)
    blocked = cli_json(a.home, "blocks")
    assert isinstance(blocked, list) and [x["handle"] for x in blocked] == [b.handle]
    assert mention_ids(a) == []  # a blocked key's mentions are hidden too
    refused_before = counter(a, "gossip.refused.blocked") + counter(a, "gossip.mentions.refused_blocked")
    second = run(b.home, "post", f"{a.handle} are you there?")
    assert wait_for(
        lambda: (
            counter(a, "gossip.refused.blocked") + counter(a, "gossip.mentions.refused_blocked")
            > refused_before
        ),
        timeout=15,
    ), a.output()
    assert second not in mention_ids(a)
    dropped = status(a)["dropped"]
    assert isinstance(dropped, dict) and any("blocked" in k for k in dropped)


def test_a_deleted_post_disappears_from_followers_timelines(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    net = network(nodes, tmp_path, "abc")
    a, b, c = net["a"], net["b"], net["c"]
    for follower in (b, c):
        run(follower.home, "follow", a.handle)
    keep = run(a.home, "post", "this one stays")
    gone = run(a.home, "post", "this one I regret")
    for follower in (b, c):
        assert wait_for(lambda f=follower: "this one I regret" in timeline_texts(f.home), timeout=15), (
            follower.output()
        )

    run(a.home, "delete", gone)
    for follower in (b, c):
        assert wait_for(lambda f=follower: "this one I regret" not in timeline_texts(f.home), timeout=10)
        doc = cli_json(follower.home, "timeline")
        assert isinstance(doc, list)
        by_id = {item["id"]: item for item in doc}
        assert by_id[gone]["deleted"] is True and by_id[gone]["text"] is None
        assert by_id[keep]["text"] == "this one stays"
    again = p2pblog(a.home, "delete", gone)
    assert again.returncode == 1 and "already deleted" in again.stderr
    assert json.loads(p2pblog(a.home, "log", "--json").stdout)[0]["kind"] == "delete"
