"""Direct messages between real ``p2pblog run`` processes on 127.0.0.1 (issue 19).

1. A messages B while B is offline.  F follows B (it replicates B's feed and
   announces itself as a provider of it), so A's node finds F in the DHT and
   leaves the sealed message with it; A then stops for good.  When B comes
   back, F passes the message on: B reads it, A's own copy said "held by 1".
   F cannot read it: no `dm list` entry, and the text is nowhere in F's store
   files.
2. From a raw gossip peer (``tests/peers/gossip_attacker.py``), a stranger's
   DM without a stamp is refused with NEED_WORK and stored nowhere; the same
   with a proper stamp is admitted and lands in B's requests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gossip.messages import Dm, DmAck, DmStatus
from gossip.transport import HandshakeCompleted
from identity import Identity, decode_handle
from identity.limits import MENTION_WORK
from identity.pow import NOTICE_DOMAIN, notice_subject, solve
from identity.sealed import dm_id, seal
from tests.nodes import NodeProcess, cli_json, fixed_port, run, start_node, wait_for
from tests.peers.gossip_attacker import Connection, GossipDialer


def conversations(home: Path) -> list[dict[str, Any]]:
    docs = cli_json(home, "dm", "list")
    assert isinstance(docs, list)
    return docs


def thread(home: Path, handle: str) -> list[dict[str, Any]]:
    docs = cli_json(home, "dm", "read", handle)
    assert isinstance(docs, list)
    return docs


def held_for_others(home: Path) -> int:
    doc = cli_json(home, "status")
    assert isinstance(doc, dict)
    return int(doc["dms"]["held_for_others"])


def test_a_message_to_an_offline_recipient_is_held_by_its_follower_and_read_later(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    secret = "the door code is 4711, tell nobody"
    f = start_node(tmp_path / "f")
    nodes.append(f)
    b = start_node(tmp_path / "b", "--bootstrap", f.bootstrap, listen=f"127.0.0.1:{fixed_port()}")
    nodes.append(b)
    a = start_node(tmp_path / "a", "--bootstrap", f.bootstrap)
    nodes.append(a)
    run(b.home, "follow", a.handle)  # A is someone B follows: its message goes to the inbox
    run(f.home, "follow", b.handle)
    run(b.home, "post", "hello from B")
    assert wait_for(lambda: "hello from B" in run(f.home, "timeline"), timeout=30), f.output()
    assert b.stop() == 0

    sent = run(a.home, "dm", "send", b.handle, secret)
    assert len(sent) == 64  # the message id
    assert wait_for(lambda: [d["state"] for d in conversations(a.home)] == ["held by 1"], timeout=60), (
        conversations(a.home),
        a.output(),
    )
    assert a.stop() == 0

    # B comes back where it was (a home node restarts on its port).
    b = start_node(tmp_path / "b", "--bootstrap", f.bootstrap, listen=f"127.0.0.1:{b.dht[1]}")
    nodes.append(b)
    assert wait_for(lambda: any(d["text"] == secret for d in conversations(b.home)), timeout=60), (
        b.output() + f.output()
    )
    (conversation,) = conversations(b.home)
    assert (conversation["peer"], conversation["folder"], conversation["unread_count"]) == (
        a.handle,
        "inbox",
        1,
    )
    messages = thread(b.home, a.handle)
    assert [(m["direction"], m["text"], m["unread"]) for m in messages] == [("in", secret, True)]
    assert conversations(b.home)[0]["unread_count"] == 0  # `dm read` marked it read
    assert sent == messages[0]["id"]
    # F relayed it and cannot read it.
    assert conversations(f.home) == []
    assert wait_for(lambda: held_for_others(f.home) == 0, timeout=20)
    assert f.stop() == 0
    for path in (tmp_path / "f").iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert b.stop() == 0


def test_a_stranger_needs_a_stamp_and_lands_in_requests(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    b = start_node(tmp_path / "b")
    nodes.append(b)
    b_key = decode_handle(b.handle)
    stranger = Identity.generate()
    sealed = seal(stranger, b_key, int(time.time() * 1000), "want to buy a bridge?", os.urandom(32))
    did = dm_id(sealed)
    stamp = solve(NOTICE_DOMAIN, notice_subject(b_key, did), MENTION_WORK)
    with Connection(b.gossip) as conn:
        dialer = GossipDialer(conn, stranger, expected_peer=b_key)
        assert isinstance(dialer.run_handshake(), HandshakeCompleted)
        dialer.send(Dm(b_key, sealed, b""))
        (ack,) = [
            m
            for m in dialer.receive_until(lambda ms: any(isinstance(m, DmAck) for m in ms))
            if isinstance(m, DmAck)
        ]
        assert (ack.dm_id, ack.status, ack.need) == (did, DmStatus.NEED_WORK, MENTION_WORK)
        assert conversations(b.home) == []
        dialer.send(Dm(b_key, sealed, stamp))
        acks = [
            m
            for m in dialer.receive_until(lambda ms: any(isinstance(m, DmAck) for m in ms))
            if isinstance(m, DmAck)
        ]
        assert [(m.dm_id, m.status) for m in acks] == [(did, DmStatus.ADMITTED)]
    (conversation,) = conversations(b.home)
    assert (conversation["folder"], conversation["text"]) == ("requests", "want to buy a bridge?")
    doc = cli_json(b.home, "status")
    assert isinstance(doc, dict)
    counters = doc["dropped"]
    assert counters.get("gossip.dms.refused_work") == 1, counters
    assert b.stop() == 0
