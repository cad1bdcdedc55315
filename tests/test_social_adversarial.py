"""Bad name claims and mention notices against real ``p2pblog run`` processes (issue 6, test 5).

Two nodes on 127.0.0.1, B bootstrapped from A, so the DHT has two p2pblog
nodes.  From this process, hostile peers (``tests/peers/dht_attacker.py``,
``tests/peers/gossip_attacker.py``) then send B:

1. ``p2pb_add_provider`` datagrams under ``name_key("victim")`` carrying a
   claim of "victim" whose signature bytes are flipped (its work is valid), a
   correctly signed claim whose stamp has 12..19 bits (below
   `NAME_CLAIM_MIN_WORK`), a valid claim of "other" filed under "victim"'s
   key, and garbage (random bytes, and random bytes that start like a
   record).  B answers ``false`` to each, counts them, and ``p2pblog resolve
   victim`` lists none of them, also when the attacker, as a DHT contact of
   B, hands them back in its ``p2pb_get_providers`` answers (dropped and
   counted too).  After A's genuine ``name claim victim`` it lists exactly A;
   and the same datagram path with a valid claim of "other" under its own key
   is held (the control that the refusals are not a transport failure).
2. Over one gossip session from an unknown key: mention notices of B whose
   entries have one signature byte flipped (with a valid stamp): refused as
   invalid, counted, nothing stored.  They go first, while the sender's
   mention rate limit still has tokens, so they are counted as
   ``refused_invalid`` and not ``refused_rate``.
3. On the same session, a flood of 1,000 validly signed notices of B without
   stamps.  What happens: B admits nothing; it refuses each notice it reads
   (``refused_work`` while the sender's rate limit has tokens, then
   ``refused_rate``) until the session's control budget (`CONTROL_BURST`
   tokens, `MENTION_COST` per notice) is spent; the next notices are
   ``misbehaved.too many messages``, and at `MISBEHAVIOUR_LIMIT` of them B
   fails the session (``session.failed``), hangs up without reading the rest,
   and bans the key: its next connection is refused (``refused.banned``).
   Every count is visible in ``p2pblog status --json``.  B answers ``status``
   promptly during and after the flood, a stranger's notice with a proper
   stamp is still admitted and shows in ``p2pblog mentions``, and A's new
   post still reaches B.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import msgpack
import pytest

from gossip.messages import Mention, MentionAck, MentionStatus, Message
from gossip.session import CONTROL_BURST, MENTION_COST, MISBEHAVIOUR_LIMIT
from gossip.transport import HandshakeCompleted
from identity import Identity, decode_handle
from identity.handle import fingerprint
from identity.limits import MENTION_WORK, NAME_CLAIM_MIN_WORK
from identity.pow import NAME_DOMAIN, NOTICE_DOMAIN, name_subject, notice_subject, solve, work_bits
from identity.records import NAME, RecordError, create_name_claim, decode_record, name_key
from p2pblog.entry import POST, Entry, create_entry, decode_entry, entry_id, post_body
from p2pblog.errors import EntrySignatureError
from p2pblog.mentions import MENTION_BURST, MENTION_RATE
from tests.nodes import NodeProcess, cli_json, run, start_pair, status, timeline_texts, wait_for
from tests.peers.dht_attacker import DhtAttacker
from tests.peers.gossip_attacker import Connection, GossipDialer
from tests.process import p2pblog

#: Forged notices sent first (fewer than the sender's rate-limit burst).
FORGED = 5
#: Validly signed, unstamped notices in the flood.
FLOOD = 1000
#: Longest a ``p2pblog status`` may take under attack (the CLI's own start-up included).
PROMPT = 5.0


def dropped(node: NodeProcess) -> dict[str, int]:
    doc = status(node)["dropped"]
    assert isinstance(doc, dict)
    return doc


def gossip_counters(node: NodeProcess) -> dict[str, int]:
    doc = status(node)["counters"]
    assert isinstance(doc, dict)
    return doc


def dht_counters(node: NodeProcess) -> dict[str, int]:
    doc = cli_json(node.home, "peers")
    assert isinstance(doc, dict)
    counters = doc["counters"]
    assert isinstance(counters, dict)
    return counters


def contacts(node: NodeProcess) -> int:
    count = status(node)["contacts"]
    assert isinstance(count, int)
    return count


def resolve(node: NodeProcess, name: str) -> list[dict[str, object]]:
    """The claimants ``p2pblog resolve NAME --json`` lists (it exits 1, with the JSON, for none)."""
    result = p2pblog(node.home, "resolve", name, "--json")
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["name"] == name and doc["petname"] is None
    claims = doc["claims"]
    assert isinstance(claims, list)
    assert (result.returncode == 0) == bool(claims), result.stderr
    return claims


def mentions(node: NodeProcess) -> list[dict[str, object]]:
    doc = cli_json(node.home, "mentions", "--limit", "10000")
    assert isinstance(doc, list)
    return doc


def connected(node: NodeProcess) -> set[str]:
    peers = status(node)["peers"]
    assert isinstance(peers, list)
    return {str(p["handle"]) for p in peers}


def timed_status(node: NodeProcess) -> float:
    """Seconds ``p2pblog status --json`` took; it must answer, and within `PROMPT`."""
    started = time.monotonic()
    status(node)
    took = time.monotonic() - started
    assert took < PROMPT, f"status took {took:.1f} s"
    return took


# --- 1. name claims ---------------------------------------------------------------------------


def weak_nonce(signer: bytes, name: str, claimed: int) -> tuple[bytes, int]:
    """A nonce with some work, but less than a claim needs: 12..19 bits."""
    for counter in range(2**20):
        nonce = counter.to_bytes(8, "big")
        bits = work_bits(NAME_DOMAIN, name_subject(signer, name, claimed), nonce)
        if 12 <= bits < NAME_CLAIM_MIN_WORK:
            return nonce, bits
    raise AssertionError("no nonce with 12..19 bits in 2**20 tries")


def signed_claim(identity: Identity, name: str, claimed: int, nonce: bytes, expires: int) -> bytes:
    """A name claim signed by identity, however little work its nonce carries."""
    body = {"claimed": claimed, "name": name, "nonce": nonce}
    content: bytes = msgpack.packb([1, NAME, identity.public_key, 1, expires, body])
    return identity.sign(content)


def test_bad_name_claims_are_refused_counted_and_never_resolved(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    a, b = start_pair(tmp_path, nodes)
    assert wait_for(lambda: contacts(b) >= 1 and contacts(a) >= 1, timeout=20), b.output()

    mallory = Identity.generate()
    claimed = int(time.time())
    expires = claimed + 3600
    victim = name_key("victim")

    # (a) A claim of "victim" with valid work whose signature has two bytes flipped.
    nonce = solve(NAME_DOMAIN, name_subject(mallory.public_key, "victim", claimed), NAME_CLAIM_MIN_WORK)
    genuine = create_name_claim(mallory, name="victim", claimed=claimed, nonce=nonce, seq=1, expires=expires)
    raw = bytearray(genuine.raw)
    raw[5] ^= 0x01
    raw[40] ^= 0x80
    forged = bytes(raw)
    with pytest.raises(RecordError, match="signature does not verify"):
        decode_record(forged, now=time.time(), key=victim)
    # (b) Correctly signed, but its stamp is short of the required work.
    weak, weak_bits = weak_nonce(mallory.public_key, "victim", claimed)
    underpaid = signed_claim(mallory, "victim", claimed, weak, expires)
    with pytest.raises(RecordError, match=f"has {weak_bits} bits of proof of work"):
        decode_record(underpaid, now=time.time(), key=victim)
    # (c) A valid claim of "other", filed under "victim"'s key.
    other_nonce = solve(NAME_DOMAIN, name_subject(mallory.public_key, "other", claimed), NAME_CLAIM_MIN_WORK)
    other = create_name_claim(
        mallory, name="other", claimed=claimed, nonce=other_nonce, seq=1, expires=expires
    )
    with pytest.raises(RecordError, match="not its own"):
        decode_record(other.raw, now=time.time(), key=victim)
    # (d) Garbage: random bytes, and random bytes that start like a record.
    garbage = rng.randbytes(200)
    lookalike = rng.randbytes(64) + b"\x96\x01" + rng.randbytes(150)
    bad = {
        "forged signature": forged,
        "insufficient work": underpaid,
        "wrong key": other.raw,
        "garbage": garbage,
        "record-like garbage": lookalike,
    }

    # The attacker also plants every bad value in its own p2pb_get_providers
    # answers, for when B asks it (it becomes B's contact with its first request).
    with DhtAttacker(planted={victim: list(bad.values())}) as attacker:
        for what, value in bad.items():
            assert attacker.add_provider(b.dht, victim, value) is False, f"seed {seed}: B held the {what}"
        # The control: the same path with a valid claim under its own key is held.
        assert attacker.add_provider(b.dht, name_key("other"), other.raw) is True
        refused = len(bad)
        assert dht_counters(b)["providers.invalid"] == refused
        assert dropped(b)["dht.misbehaved.invalid provider value"] == refused

        # Nobody has claimed "victim": B holds none of the bad values, and drops
        # the attacker's copies of them from its answers.
        assert resolve(b, "victim") == [], f"seed {seed}"
        asked = attacker.answered(b.dht, "p2pb_get_providers", victim)
        assert asked >= 1, "B never asked its attacker contact; the returned-value path went untested"
        assert wait_for(
            lambda: dropped(b).get("dht.misbehaved.invalid returned provider") == refused * asked, timeout=10
        ), (dropped(b), asked)

        # A genuine claim by A: B then lists exactly A.
        run(a.home, "name", "claim", "victim")
        claims = resolve(b, "victim")
        assert [c["handle"] for c in claims] == [a.handle], f"seed {seed}: {claims}"
        work = claims[0]["work"]
        assert isinstance(work, int) and work >= NAME_CLAIM_MIN_WORK
        assert [c["handle"] for c in resolve(a, "victim")] == [a.handle]
        # The control claim resolves, to Mallory alone.
        assert [decode_handle(str(c["handle"])) for c in resolve(b, "other")] == [mallory.public_key]

        # Every bad value the attacker handed back was dropped and counted, by A
        # too (B passed the attacker's address on to A in its find_node answers).
        for node in (b, a):
            asked = attacker.answered(node.dht, "p2pb_get_providers", victim)
            assert wait_for(
                lambda node=node, asked=asked: (
                    dropped(node).get("dht.misbehaved.invalid returned provider", 0) == refused * asked
                ),
                timeout=10,
            ), (dropped(node), asked)
        counted = dht_counters(b)
        assert counted["providers.invalid"] == refused, counted
        assert dropped(b)["dht.misbehaved.invalid provider value"] == refused
        assert "dht.misbehaved.invalid provider value" not in dropped(a)
    assert status(b)["names"] == [] and status(a)["names"] == ["victim"]
    for node in (b, a):
        assert node.stop() == 0, node.output()


# --- 2 and 3. mention notices -----------------------------------------------------------------


def mention_entries(author: Identity, recipient: str, count: int) -> list[Entry]:
    """The first ``count`` posts of author's feed, each mentioning recipient (a handle).

    Each notice of them carries no stamp; its empty stamp must not happen to
    carry the work B asks for (a 2**-16 chance), so such an entry is re-signed."""
    key = decode_handle(recipient)
    out: list[Entry] = []
    prev: bytes | None = None
    now_ms = int(time.time() * 1000)
    for seq in range(1, count + 1):
        for bump in range(100):
            entry = create_entry(
                author,
                seq=seq,
                prev=prev,
                timestamp=now_ms + seq + bump,
                kind=POST,
                body=post_body(f"notice {seq} for {recipient}"),
            )
            if work_bits(NOTICE_DOMAIN, notice_subject(key, entry.id), b"") < MENTION_WORK:
                break
        else:
            raise AssertionError("100 entries in a row carried work without a stamp")
        out.append(entry)
        prev = entry.id
    return out


def acks(messages: list[Message]) -> list[MentionAck]:
    return [m for m in messages if isinstance(m, MentionAck)]


def delta(after: dict[str, int], before: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def test_forged_and_flooded_mention_notices_are_refused_counted_and_the_node_stays_responsive(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, b = start_pair(tmp_path, nodes)
    b_key = decode_handle(b.handle)
    run(b.home, "follow", a.handle)
    assert wait_for(lambda: a.handle in connected(b), timeout=20), b.output()
    run(a.home, "post", "before the attacks")
    assert wait_for(lambda: "before the attacks" in timeline_texts(b.home), timeout=15), b.output()
    assert mentions(b) == []
    before = gossip_counters(b)
    assert not any(k.startswith("gossip.mentions.") for k in dropped(b)), dropped(b)

    stranger = Identity.generate()
    entries = mention_entries(stranger, b.handle, FORGED + FLOOD)
    # 2. Forged: one signature byte flipped, but a valid stamp for the bytes sent.
    forged = []
    for entry in entries[:FORGED]:
        raw = entry.raw[:7] + bytes([entry.raw[7] ^ 0x01]) + entry.raw[8:]
        with pytest.raises(EntrySignatureError):
            decode_entry(raw)
        stamp = solve(NOTICE_DOMAIN, notice_subject(b_key, entry_id(raw)), MENTION_WORK)
        forged.append(Mention(raw, stamp))
    flood: list[Message] = [Mention(entry.raw, b"") for entry in entries[FORGED:]]
    flood_ids = {entry.id for entry in entries[FORGED:]}

    with Connection(b.gossip) as conn:
        dialer = GossipDialer(conn, stranger, expected_peer=b_key)
        assert isinstance(dialer.run_handshake(), HandshakeCompleted)
        first_notice = time.monotonic()
        for message in forged:
            dialer.send(message)
        got = acks(dialer.receive_until(lambda ms: len(acks(ms)) >= FORGED))
        assert [(m.entry_id, m.status) for m in got] == [
            (entry_id(m.entry), MentionStatus.INVALID) for m in forged
        ]
        after_forged = gossip_counters(b)
        assert delta(after_forged, before, "gossip.mentions.refused_invalid") == FORGED
        assert all(
            delta(after_forged, before, f"gossip.mentions.{name}") == 0
            for name in ("refused_rate", "refused_work", "refused_blocked", "admitted")
        ), after_forged
        assert dropped(b)["gossip.mentions.refused_invalid"] == FORGED
        assert mentions(b) == []

        # 3. The flood, written all at once on the same session.
        dialer.send_all(flood)
        timed_status(b)
        messages, closed = dialer.read_until_closed(timeout=20)
        assert closed, "B kept reading a session that flooded it"
    flood_done = time.monotonic()

    assert wait_for(lambda: delta(gossip_counters(b), before, "gossip.session.failed") == 1, timeout=10), (
        b.output()
    )
    after = gossip_counters(b)
    too_many = delta(after, before, "gossip.misbehaved.too many messages")
    work = delta(after, before, "gossip.mentions.refused_work")
    rate = delta(after, before, "gossip.mentions.refused_rate")
    processed = work + rate
    # The forged notices took FORGED of the sender's MENTION_BURST tokens; the
    # flood's first notices take the rest (refused for want of a stamp), and
    # from then on only the tokens refilled since are not refused for the rate.
    spare = int(MENTION_BURST) - FORGED
    refilled = math.ceil((flood_done - first_notice) * MENTION_RATE)
    assert spare <= work <= spare + refilled, (work, after)
    # B refused every notice it read, until the control budget ran out; then
    # MISBEHAVIOUR_LIMIT notices over it failed the session, and B hung up
    # without reading the rest.
    assert too_many == MISBEHAVIOUR_LIMIT, after
    assert CONTROL_BURST // MENTION_COST <= processed <= FLOOD - too_many, after
    unread = FLOOD - processed - too_many
    assert unread > 0, "the whole flood was read: the control budget did not apply"
    assert delta(after, before, "gossip.mentions.refused_invalid") == FORGED
    assert delta(after, before, "gossip.mentions.admitted") == 0
    assert delta(after, before, "gossip.mentions.refused_blocked") == 0
    # The acknowledgements that reached us before B hung up are refusals of flood notices.
    answered = acks(messages)
    assert len(answered) <= processed
    assert {m.entry_id for m in answered} <= flood_ids
    assert {m.status for m in answered} <= {MentionStatus.NEED_WORK, MentionStatus.RATE_LIMITED}
    assert all(m.need == MENTION_WORK for m in answered if m.status == MentionStatus.NEED_WORK)
    # All of it is in status's "dropped".
    shown = dropped(b)
    assert shown["gossip.mentions.refused_invalid"] == FORGED
    assert shown["gossip.mentions.refused_work"] == work
    assert shown["gossip.mentions.refused_rate"] == rate
    assert shown["gossip.misbehaved.too many messages"] == too_many
    assert shown["gossip.session.failed"] == 1
    assert mentions(b) == []
    output = b.output()
    who = fingerprint(stranger.public_key)
    # Logged once: refusals of one kind from one peer are logged at most every 10 s.
    assert output.count(f"refused a mention notice from {who}: invalid") == 1
    assert f"disconnected from {who}: misbehaviour limit reached (last: too many messages)" in output
    timed_status(b)

    # The flooding key is banned: its next session is closed after the handshake.
    with Connection(b.gossip) as conn:
        again = GossipDialer(conn, stranger, expected_peer=b_key)
        assert isinstance(again.run_handshake(), HandshakeCompleted)
        assert conn.wait_closed(), "B took a new session from the key that flooded it"
    assert wait_for(lambda: dropped(b).get("gossip.refused.banned") == 1, timeout=10), dropped(b)

    # Honest traffic goes on: a stranger's notice with a proper stamp is admitted ...
    carol = Identity.generate()
    (hello,) = mention_entries(carol, b.handle, 1)
    stamp = solve(NOTICE_DOMAIN, notice_subject(b_key, hello.id), MENTION_WORK)
    with Connection(b.gossip) as conn:
        polite = GossipDialer(conn, carol, expected_peer=b_key)
        assert isinstance(polite.run_handshake(), HandshakeCompleted)
        polite.send(Mention(hello.raw, stamp))
        (ack,) = acks(polite.receive_until(lambda ms: bool(acks(ms))))
        assert (ack.entry_id, ack.status) == (hello.id, MentionStatus.ADMITTED)
    shown_mentions = mentions(b)
    assert [(m["id"], m["text"]) for m in shown_mentions] == [(hello.id.hex(), hello.text)]
    assert delta(gossip_counters(b), before, "gossip.mentions.admitted") == 1
    # ... and A's posts still reach B.
    run(a.home, "post", "after the flood")
    assert wait_for(lambda: "after the flood" in timeline_texts(b.home), timeout=15), b.output()
    assert b.process.poll() is None, b.output()
    for node in (b, a):
        assert node.stop() == 0, node.output()
