"""Hostile gossip peers against a real ``p2pblog run`` process on 127.0.0.1 (issue 4, test 5).

Node B follows node A.  From this process, peers built on the sans-IO
transport (``tests/peers/gossip_attacker.py``) then attack B's gossip port:

1. an impostor whose identity proof presents A's key but is signed by
   another key, and a dialler that expected someone else than B;
2. 10 KB of random bytes instead of a handshake;
3. a valid handshake followed by a frame header announcing more than
   ``MAX_FRAME_BYTES``;
4. a valid session that sends A's feed: an entry signed by the wrong key, a
   genuine entry with one byte changed, a validly signed entry of another
   author, and a batch that skips seqs.

Each is refused, closed where the transport fails, and counted in ``status
--json`` under ``dropped``; nothing of it reaches B's store; and A's posts
still reach B over the connection that was open before the attacks.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gossip.messages import Ack, Clock, Entries, Note
from gossip.transport import FRAME_HEADER_BYTES, MAX_CHUNK_BYTES, ChannelFailed, HandshakeCompleted
from identity import Identity, decode_handle
from identity.limits import MAX_FRAME_BYTES
from p2pblog.entry import POST, create_entry, decode_entry, encode_content
from p2pblog.errors import EntrySignatureError
from p2pblog.feedfile import read_feed
from tests.nodes import NodeProcess, cli_json, run, start_pair, status, timeline_texts, wait_for
from tests.peers.gossip_attacker import Connection, GossipDialer, RawDialer


def gossip_dropped(node: NodeProcess) -> dict[str, int]:
    dropped = status(node)["dropped"]
    assert isinstance(dropped, dict)
    return {k: v for k, v in dropped.items() if k.startswith("gossip.")}


def connected(node: NodeProcess) -> dict[str, float]:
    """Handle -> ``since`` of every open gossip session."""
    peers = status(node)["peers"]
    assert isinstance(peers, list)
    return {p["handle"]: p["since"] for p in peers}


def stored_log(home: Path, handle: str) -> list[tuple[int, str, str | None]]:
    """``(seq, id, text)`` of every stored entry of handle's feed, oldest first."""
    doc = cli_json(home, "log", handle, "--limit", "1000")
    assert isinstance(doc, list)
    return sorted((e["seq"], e["id"], e["text"]) for e in doc)


def feed_state(node: NodeProcess, handle: str) -> dict[str, object]:
    feeds = status(node)["feeds"]
    assert isinstance(feeds, list)
    (state,) = [f for f in feeds if f["handle"] == handle]
    assert isinstance(state, dict)
    return state


def send_batch(dialer: GossipDialer, batch: Entries) -> Ack:
    """Send one ENTRIES batch and wait for B's ACK of it (one batch in flight, as a sender should)."""
    dialer.send(batch)
    messages = dialer.receive_until(lambda ms: any(isinstance(m, Ack) for m in ms))
    (ack,) = [m for m in messages if isinstance(m, Ack)]
    return ack


def test_hostile_peers_are_refused_and_counted_and_honest_gossip_goes_on(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    a, b = start_pair(tmp_path, nodes)
    a_key, b_key = decode_handle(a.handle), decode_handle(b.handle)
    run(b.home, "follow", a.handle)
    assert wait_for(lambda: a.handle in connected(b), timeout=20), b.output()
    run(a.home, "post", "before the attacks")
    assert wait_for(lambda: "before the attacks" in timeline_texts(b.home), timeout=15), b.output()
    a_since = connected(b)[a.handle]
    genuine_log = stored_log(b.home, a.handle)
    assert gossip_dropped(b) == {}

    # 1. An impostor: presents A's key, but proves it with Mallory's.  B proves
    # itself in message 2, then refuses message 3 and hangs up.
    mallory = Identity.generate()
    with Connection(b.gossip) as conn:
        impostor = RawDialer(conn, mallory, presented=a_key)
        assert impostor.run_handshake() == b_key
        assert conn.wait_closed(), "B kept a connection whose identity proof is forged"
    assert wait_for(lambda: gossip_dropped(b).get("gossip.handshake.failed") == 1, timeout=10), b.output()
    assert "identity proof signature does not verify" in b.output()
    assert connected(b) == {a.handle: a_since}, "the impostor displaced A's session"

    # ... and a dialler that expected A at B's address refuses B before message 3.
    with Connection(b.gossip) as conn:
        dialer = GossipDialer(conn, mallory, expected_peer=a_key)
        event = dialer.run_handshake()
        assert isinstance(event, ChannelFailed) and "different identity" in event.reason, event
        assert dialer.channel.data_to_send() == b""

    # 2. Garbage instead of a handshake.
    with Connection(b.gossip) as conn:
        conn.send(rng.randbytes(10 * 1024))
        assert conn.wait_closed(), f"seed {seed}: B kept a connection that sent garbage"
    assert wait_for(lambda: gossip_dropped(b).get("gossip.handshake.failed") == 2, timeout=10), (
        f"seed {seed}: {b.output()}"
    )

    # 3. A valid handshake, then one full first chunk whose header announces
    # MAX_FRAME_BYTES + 1: B fails the channel without waiting for the rest.
    with Connection(b.gossip) as conn:
        oversize = RawDialer(conn, Identity.generate())
        assert oversize.run_handshake() == b_key
        header = (MAX_FRAME_BYTES + 1).to_bytes(FRAME_HEADER_BYTES, "big")
        oversize.send_transport(header + bytes(MAX_CHUNK_BYTES - FRAME_HEADER_BYTES))
        assert conn.wait_closed(), "B kept a connection that announced an oversized frame"
    assert wait_for(lambda: gossip_dropped(b).get("gossip.channel.failed") == 1, timeout=10), b.output()
    assert f"over the {MAX_FRAME_BYTES}-byte limit" in b.output()

    # 4. A peer with a valid session lies about A's feed.  The genuine entries
    # come from B itself (``export``), as a relaying peer would hold them.
    export = tmp_path / "a.feed"
    run(b.home, "export", a.handle, str(export))
    with export.open("rb") as source:
        genuine = list(read_feed(source))
    latest = decode_entry(genuine[-1])
    n = latest.seq
    assert [(e.seq, e.id.hex()) for e in map(decode_entry, genuine)] == [(s, i) for s, i, _ in genuine_log]
    timestamp = latest.timestamp + 1
    # Seq n + 1 of A's feed, chained to A's latest entry, signed by Mallory:
    # were signatures not checked, B would store it as A's next post.
    forged = mallory.sign(encode_content(a_key, n + 1, latest.id, timestamp, POST, {"text": "forged post"}))
    assert decode_entry(forged, check_signature=False).author == a_key
    with pytest.raises(EntrySignatureError):
        decode_entry(forged)
    # A's genuine latest entry with one letter of its text changed.
    tampered = genuine[-1].replace(b"before the attacks", b"before the attackz")
    assert tampered != genuine[-1]
    with pytest.raises(EntrySignatureError):
        decode_entry(tampered)
    # A validly signed entry by Mallory, sent as A's.
    misattributed = create_entry(
        mallory, seq=n + 1, prev=latest.id, timestamp=timestamp, kind=POST, body={"text": "not A's post"}
    ).raw

    with Connection(b.gossip) as conn:
        liar = GossipDialer(conn, Identity.generate(), expected_peer=b_key)
        assert isinstance(liar.run_handshake(), HandshakeCompleted)
        # Claim to hold A's feed well past B, so B expects entries from us.
        liar.send(Clock({a_key: Note(n + 5)}))
        clock = liar.receive_until(lambda ms: any(isinstance(m, Clock) for m in ms))
        (b_clock,) = [m for m in clock if isinstance(m, Clock)]
        assert b_clock.notes[a_key] == Note(n, True)
        # B acknowledges every batch, and each ACK says it still holds A's feed at n.
        for what, batch in (
            ("forged entry", Entries(a_key, n + 1, (forged,))),
            ("tampered entry", Entries(a_key, n, (tampered,))),
            ("misattributed entry", Entries(a_key, n + 1, (misattributed,))),
            ("batch skipping seqs", Entries(a_key, n + 3, (forged,))),
        ):
            assert send_batch(liar, batch) == Ack(1, {a_key: n}), f"B stored the {what}"
    expected = {
        "gossip.handshake.failed": 2,
        "gossip.channel.failed": 1,
        "gossip.entries.forged": 2,
        "gossip.entries.malformed": 1,
        "gossip.misbehaved.entries skip seqs": 1,
    }
    assert wait_for(lambda: gossip_dropped(b) == expected, timeout=10), (gossip_dropped(b), b.output())
    output = b.output()
    assert "entries.forged signature does not verify" in output
    assert "entries.malformed entries do not match their header" in output

    # Nothing invalid was stored: A's feed in B is exactly what A signed.
    assert stored_log(b.home, a.handle) == genuine_log
    state = feed_state(b, a.handle)
    assert (state["seq"], state["forked"]) == (n, False), state
    run(b.home, "verify")
    texts = timeline_texts(b.home)
    assert "forged post" not in texts and "not A's post" not in texts and "before the attackz" not in texts

    # The honest flow goes on, over the session that was open before the attacks.
    run(a.home, "post", "after the attacks")
    assert wait_for(lambda: "after the attacks" in timeline_texts(b.home), timeout=15), b.output()
    after = stored_log(b.home, a.handle)
    assert after[:-1] == genuine_log and after[-1][::2] == (n + 1, "after the attacks")
    assert after[-1][1] != decode_entry(forged, check_signature=False).id.hex()
    assert feed_state(b, a.handle)["forked"] is False
    run(b.home, "verify")
    assert b.process.poll() is None, b.output()
    assert wait_for(lambda: connected(b) == {a.handle: a_since}, timeout=10), connected(b)
    assert wait_for(lambda: status(b)["connections"] == 1, timeout=10), status(b)
    assert gossip_dropped(b) == expected
    assert gossip_dropped(a) == {}
    for node in (b, a):
        assert node.stop() == 0, node.output()
