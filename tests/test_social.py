"""Names, mention notices, blocks and deletes between NodeCores, sans IO.

Nodes have real SQLite stores on disk and meet over `tests.gossip.wire.Wire`
(in-memory TCP and UDP, fake clock).  Proof-of-work stamps and name-claim
nonces are real: the wire solves stamps at once, claims are solved here.
Every test asserts what a user would see: who resolves to whom, which
mentions are stored, what was refused and counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import msgpack
import pytest

from gossip.messages import MentionStatus
from identity import Identity, encode_handle
from identity.limits import MENTION_WORK, NAME_CLAIM_MIN_WORK
from identity.pow import NAME_DOMAIN, NOTICE_DOMAIN, name_subject, notice_subject, solve, work_bits
from identity.records import RecordError
from p2pblog.entry import POST, create_entry, entry_id, post_body
from p2pblog.names import Relation, claimants_for, suggestion
from p2pblog.node import MentionAdmitted, MentionDelivered, NameResolved, NodeCore
from p2pblog.store import Store
from tests.feeds import make_entry
from tests.gossip.wire import PORT, T0, Wire

A, B, C, D, E = (Identity(bytes([i]) * 32) for i in (51, 52, 53, 54, 55))
NAMES = dict(zip("abcde", (A, B, C, D, E), strict=True))
HOST = {name: f"10.0.1.{i}" for i, name in enumerate("abcde", start=1)}
CLAIMED = 1_790_000_000


@functools.cache
def nonce_for(
    identity: Identity, name: str, bits: int = NAME_CLAIM_MIN_WORK, claimed: int = CLAIMED
) -> bytes:
    return solve(NAME_DOMAIN, name_subject(identity.public_key, name, claimed), bits)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Callable[..., tuple[Wire, dict[str, NodeCore]]]]:
    """Builds a network of NodeCores named from "abcde", all joined through "c"."""
    stores: list[Store] = []

    def build(names: str = "abcde", **core_args: int) -> tuple[Wire, dict[str, NodeCore]]:
        wire = Wire()
        cores: dict[str, NodeCore] = {}
        for seed, name in enumerate(names, start=1):
            store = Store(tmp_path / f"{name}.db")
            stores.append(store)
            cores[name] = NodeCore(
                NAMES[name],
                Random(seed),
                T0,
                store=store,
                random_bytes=Random(seed + 100).randbytes,
                **core_args,
            )
            wire.add(name, cores[name], HOST[name])
        for name, core in cores.items():
            if name != "c":
                core.bootstrap([wire.addr("c")], wire.now)
            core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
        wire.advance(5)
        return wire, cores

    yield build
    for store in stores:
        store.close()


def resolve(wire: Wire, core: NodeCore, name: str) -> NameResolved:
    qid = core.start_resolve_name(name, wire.now)
    wire.advance(10)
    found = [e for e in wire.events_of(_name_of(wire, core), NameResolved) if e.query_id == qid]
    assert len(found) == 1
    result = found[0]
    assert isinstance(result, NameResolved)
    return result


def _name_of(wire: Wire, core: NodeCore) -> str:
    return next(name for name, node in wire.nodes.items() if node is core)


# --- names --------------------------------------------------------------------------------------


def test_a_claimed_name_resolves_to_its_claimant_anywhere(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net()
    cores["a"].claim_name("alice", CLAIMED, nonce_for(A, "alice"), wire.now)
    wire.advance(5)
    result = resolve(wire, cores["d"], "alice")
    assert [r.signer for r in result.claims] == [A.public_key]
    assert result.claims[0].work >= NAME_CLAIM_MIN_WORK
    assert resolve(wire, cores["d"], "nobody").claims == ()


def test_two_claimants_seen_together_are_listed_most_work_first(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    # Claims the network first saw at the same second: work decides (`p2pblog.names`).
    wire, cores = net()
    weak, strong = nonce_for(A, "sam"), nonce_for(E, "sam", NAME_CLAIM_MIN_WORK + 2)
    cores["a"].claim_name("sam", CLAIMED, weak, wire.now)
    cores["e"].claim_name("sam", CLAIMED, strong, wire.now)
    wire.advance(5)
    claims = resolve(wire, cores["d"], "sam").claims
    assert [r.signer for r in claims] == [E.public_key, A.public_key]
    assert claims[0].work > claims[1].work


def test_a_claim_without_enough_work_is_refused_before_it_is_sent(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("ac")
    subject = name_subject(A.public_key, "cheap", CLAIMED)
    nonce = next(
        n
        for i in range(1000)
        if work_bits(NAME_DOMAIN, subject, n := i.to_bytes(8, "big")) < NAME_CLAIM_MIN_WORK
    )
    with pytest.raises(RecordError, match="proof of work"):
        cores["a"].claim_name("cheap", CLAIMED, nonce, wire.now)
    assert cores["a"].store.name_claims() == []


def test_own_claims_survive_a_restart_and_are_republished(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("acd")
    cores["a"].claim_name("alice", CLAIMED, nonce_for(A, "alice"), wire.now)
    wire.advance(5)
    wire.crash("a")
    # A restarted node with the same store re-adds its claim by itself.
    restarted = NodeCore(A, Random(9), wire.now, store=cores["a"].store, random_bytes=Random(19).randbytes)
    wire.restart("a", restarted)
    restarted.bootstrap([wire.addr("c")], wire.now)
    wire.advance(5)
    assert restarted.name_records["alice"].seq > cores["a"].name_records["alice"].seq
    assert [r.signer for r in resolve(wire, cores["d"], "alice").claims] == [A.public_key]


# --- names squatters cannot take (issue 15) -----------------------------------------------------
#
# A claims "alice"; two minutes later a squatter E claims "alice" too, with more
# proof of work and a self-asserted ``claimed`` a year earlier.  DHT nodes remember
# when they first stored each claim, so the network's witnessed age puts A first;
# B follows A and D follows B, so both are told A; C knows neither and is told nobody.


def test_a_later_claim_with_more_work_does_not_outrank_an_earlier_one(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net()
    cores["a"].claim_name("alice", CLAIMED, nonce_for(A, "alice"), wire.now)
    wire.advance(120)  # two minutes later, the squatter, with 2 more bits and a backdated claim
    strong = nonce_for(E, "alice", NAME_CLAIM_MIN_WORK + 2, claimed=CLAIMED - 365 * 86400)
    cores["e"].claim_name("alice", CLAIMED - 365 * 86400, strong, wire.now)
    cores["b"].follow(A.public_key, wire.now)
    cores["d"].follow(B.public_key, wire.now)
    wire.advance(60)

    # C follows neither: both are listed, A first (the network saw it first), nobody picked.
    seen_by_c = resolve(wire, cores["c"], "alice")
    assert [r.signer for r in seen_by_c.claims] == [A.public_key, E.public_key]
    assert seen_by_c.claims[1].work > seen_by_c.claims[0].work
    ranked = claimants_for(cores["c"].store, C.public_key, seen_by_c)
    assert [c.record.signer for c in ranked] == [A.public_key, E.public_key]
    assert [c.relation for c in ranked] == [Relation.STRANGER, Relation.STRANGER]
    a_seen, s_seen = ranked[0].witnessed, ranked[1].witnessed
    assert a_seen is not None and s_seen is not None
    assert s_seen - a_seen >= 120  # the backdated `claimed` did not help
    assert ranked[0].witnesses >= 2
    assert suggestion(ranked) is None

    # B follows A: A first, and A is what `follow alice` picks.
    ranked_b = claimants_for(cores["b"].store, B.public_key, resolve(wire, cores["b"], "alice"))
    assert [(c.record.signer, c.relation) for c in ranked_b] == [
        (A.public_key, Relation.FOLLOWING),
        (E.public_key, Relation.STRANGER),
    ]
    chosen = suggestion(ranked_b)
    assert chosen is not None and chosen.record.signer == A.public_key

    # D follows B, who follows A: A is "followed by 1 person you follow", and picked.
    ranked_d = claimants_for(cores["d"].store, D.public_key, resolve(wire, cores["d"], "alice"))
    assert [(c.record.signer, c.relation, c.followed_by) for c in ranked_d] == [
        (A.public_key, Relation.FOLLOWED_BY_FOLLOWS, 1),
        (E.public_key, Relation.STRANGER, 0),
    ]
    chosen = suggestion(ranked_d)
    assert chosen is not None and chosen.record.signer == A.public_key


def test_one_lying_dht_node_cannot_backdate_a_squatter_s_claim(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    wire, cores = net()
    # D's DHT node says it stored every claim it holds at the start of 1970.
    held = cores["d"].dht.providers
    honest = held.get_with_seen
    monkeypatch.setattr(held, "get_with_seen", lambda key, now: [(p, v, 0.0) for p, v, _ in honest(key, now)])
    cores["a"].claim_name("alice", CLAIMED, nonce_for(A, "alice"), wire.now)
    wire.advance(120)
    squatted_at = wire.now
    cores["e"].claim_name("alice", CLAIMED, nonce_for(E, "alice", NAME_CLAIM_MIN_WORK + 2), wire.now)
    wire.advance(5)
    result = resolve(wire, cores["c"], "alice")
    by_signer = dict(zip((r.signer for r in result.claims), result.seen, strict=True))
    assert 0 in by_signer[E.public_key]  # the lie arrived ...
    assert len(by_signer[E.public_key]) >= 3
    ranked = claimants_for(cores["c"].store, C.public_key, result)
    assert [c.record.signer for c in ranked] == [A.public_key, E.public_key]
    squatter = ranked[1].witnessed
    assert squatter is not None and squatter >= int(squatted_at)  # ... and changed nothing


def test_republishing_a_claim_keeps_its_first_seen_time(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net()
    cores["a"].claim_name("alice", CLAIMED, nonce_for(A, "alice"), wire.now)
    wire.advance(5)
    before = resolve(wire, cores["c"], "alice")
    first = claimants_for(cores["c"].store, C.public_key, before)[0].witnessed
    assert first is not None and first >= int(T0)
    wire.advance(9 * 3600)  # the node re-signs (a higher seq) and re-adds its claim every 4 hours
    again = resolve(wire, cores["c"], "alice")
    assert again.claims[0].seq > before.claims[0].seq
    assert claimants_for(cores["c"].store, C.public_key, again)[0].witnessed == first


# --- mention notices ----------------------------------------------------------------------------


def admitted(wire: Wire, name: str) -> list[MentionAdmitted]:
    return [e for e in wire.events_of(name, MentionAdmitted) if isinstance(e, MentionAdmitted)]


def test_a_stranger_s_mention_with_a_stamp_is_admitted_without_the_feed(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abc")
    parent = cores["a"].post("a post of A", wire.now)
    cores["b"].store.add_loose(parent, int(wire.now * 1000))  # B saw A's post (e.g. as someone's mention)
    reply = cores["b"].post("I disagree", wire.now, reply_to=parent.id)
    assert reply.mentions == (A.public_key,)  # a reply mentions the parent's author
    wire.advance(1)  # resolve A, connect, send: no waiting for a retry or a maintenance pass
    assert [m.id for m in (i.entry for i in cores["a"].store.mentions(A.public_key))] == [reply.id]
    assert cores["a"].store.latest_seq(B.public_key) == 0  # stored alone, not B's feed
    thread = cores["a"].store.thread(parent.id)
    assert thread is not None and [r.entry.id for r in thread.replies] == [reply.id]
    delivered = wire.events_of("b", MentionDelivered)
    assert delivered == [MentionDelivered(reply.id, A.public_key, True, MentionStatus.ADMITTED)]
    assert cores["b"].pending_mentions() == []
    assert cores["b"].store.outbox() == []


def test_a_mention_without_enough_work_is_refused_then_paid_for(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abc")
    post = cores["b"].post(f"hello {encode_handle(A.public_key)}", wire.now)
    # B's stamp will be the first nonce with MENTION_WORK bits (solve is deterministic);
    # A asks for one bit more than that stamp happens to have.
    subject = notice_subject(A.public_key, post.id)
    first = work_bits(NOTICE_DOMAIN, subject, solve(NOTICE_DOMAIN, subject, MENTION_WORK))
    cores["a"].admission.mention_work = first + 1
    wire.advance(10)
    assert cores["a"].mention_stats["mentions.refused_work"] == 1
    assert [m.entry.id for m in admitted(wire, "a")] == [post.id]


def test_mentions_within_two_follow_hops_need_no_work(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abcd")
    a, b, d = cores["a"], cores["b"], cores["d"]
    a.follow(D.public_key, wire.now)
    d.follow(B.public_key, wire.now)  # A -> D -> B: B is two hops from A
    wire.advance(20)
    assert a.store.within_follow_hops(A.public_key, B.public_key)
    entry = b.post(f"hi {encode_handle(A.public_key)}", wire.now)
    assert a.admission.admit(B.public_key, entry.raw, b"", wire.now) == (MentionStatus.ADMITTED, 0)
    assert a.store.mentions(A.public_key)[0].entry.id == entry.id


def test_a_blocked_key_is_refused_and_counted(net: Callable[..., tuple[Wire, dict[str, NodeCore]]]) -> None:
    wire, cores = net("abc")
    a, b = cores["a"], cores["b"]
    first = b.post(f"one {encode_handle(A.public_key)}", wire.now)
    wire.advance(10)
    assert [m.entry.id for m in a.store.mentions(A.public_key)] == [first.id]
    a.block(B.public_key, wire.now)
    assert a.store.mentions(A.public_key) == []  # a blocked key's mentions are hidden
    b.post(f"two {encode_handle(A.public_key)}", wire.now)
    wire.advance(60)
    assert len(admitted(wire, "a")) == 1
    assert a.replicator.stats["refused.blocked"] >= 1
    assert not a.replicator.is_connected(B.public_key)
    a.unblock(B.public_key)
    wire.advance(120)  # B retries with backoff
    assert len(admitted(wire, "a")) == 2


def test_forged_and_unrelated_notices_are_refused(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("ac")
    a = cores["a"]
    entry = cores["c"].post(f"hi {encode_handle(A.public_key)}", wire.now)
    forged = entry.raw[:10] + bytes([entry.raw[10] ^ 1]) + entry.raw[11:]
    # The signature is checked last (after the stamp): the forged bytes carry a valid stamp.
    forged_stamp = solve(NOTICE_DOMAIN, notice_subject(A.public_key, entry_id(forged)), MENTION_WORK)
    assert a.admission.admit(C.public_key, forged, forged_stamp, wire.now) == (MentionStatus.INVALID, 0)
    stamp = solve(NOTICE_DOMAIN, notice_subject(A.public_key, entry.id), MENTION_WORK)
    unrelated = cores["c"].post("mentions nobody", wire.now)
    assert a.admission.admit(C.public_key, unrelated.raw, b"", wire.now) == (MentionStatus.INVALID, 0)
    assert a.admission.admit(C.public_key, entry.raw, b"", wire.now) == (
        MentionStatus.NEED_WORK,
        MENTION_WORK,
    )
    assert a.admission.admit(C.public_key, entry.raw, stamp, wire.now) == (MentionStatus.ADMITTED, 0)
    assert a.admission.admit(C.public_key, entry.raw, stamp, wire.now) == (MentionStatus.DUPLICATE, 0)
    stats = a.mention_stats
    assert (stats["mentions.refused_invalid"], stats["mentions.refused_work"]) == (2, 1)


def test_a_notice_with_a_bytes_field_name_is_refused_not_a_crash(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("ac")
    hostile = C.sign(msgpack.packb([1, C.public_key, 1, None, 0, "post", {b"zz": 1, "text": "hi"}]))
    assert cores["a"].admission.admit(C.public_key, hostile, b"", wire.now) == (MentionStatus.INVALID, 0)
    assert cores["a"].mention_stats["mentions.refused_invalid"] == 1


def test_a_flood_from_one_sender_is_rate_limited(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("ac")
    a = cores["a"]
    entry = cores["c"].post(f"hi {encode_handle(A.public_key)}", wire.now)
    results = [a.admission.admit(C.public_key, entry.raw, b"", wire.now)[0] for _ in range(1000)]
    assert results.count(MentionStatus.RATE_LIMITED) >= 985
    assert a.mention_stats["mentions.refused_rate"] == results.count(MentionStatus.RATE_LIMITED)
    assert a.store.mentions(A.public_key) == []


def test_strangers_notices_cost_more_as_the_day_fills_and_are_capped(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abc")
    a, b = cores["a"], cores["b"]
    a.admission.mention_work = 4  # small, so the test solves its stamps fast
    a.admission.stranger_mentions_per_day = 4  # extra work: 0, 2, 4, 6 bits as it fills
    a.follow(B.public_key, wire.now)
    wire.advance(20)

    def send(author: Identity) -> tuple[int, int]:
        """Send as a sender does: pay what is asked, once, and resend."""
        entry = make_entry(author, 1, None, body=post_body(f"hi {encode_handle(A.public_key)}"))
        subject = notice_subject(A.public_key, entry.id)
        cheap = solve(NOTICE_DOMAIN, subject, 4)
        status, need = a.admission.admit(author.public_key, entry.raw, cheap, wire.now)
        if status == MentionStatus.NEED_WORK:
            stamp = solve(NOTICE_DOMAIN, subject, need)
            return a.admission.admit(author.public_key, entry.raw, stamp, wire.now)[0], need
        return status, 4

    strangers = [Identity(bytes([100 + i]) * 32) for i in range(6)]  # fresh keys: one notice each
    results = [send(s) for s in strangers]
    assert [status for status, _ in results] == [MentionStatus.ADMITTED] * 4 + [MentionStatus.BUSY] * 2
    assert [need for _, need in results[:4]][1:] == [6, 8, 10]  # 4 + 2, 4 + 4, 4 + 6 bits
    assert len(a.store.mentions(A.public_key)) == 4
    assert a.mention_stats["mentions.refused_busy"] == 2
    # Someone A follows is not a stranger: not capped, and needs no stamp.
    friend = b.post(f"hey {encode_handle(A.public_key)}", wire.now)
    assert a.admission.admit(B.public_key, friend.raw, b"", wire.now) == (MentionStatus.ADMITTED, 0)
    # A day later the window has room again, at the base price.
    wire.advance(86_400)
    assert send(strangers[4]) == (MentionStatus.ADMITTED, 4)


def test_a_delete_reaches_followers_and_mentioned_strangers(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abc")
    a, b, c = cores["a"], cores["b"], cores["c"]
    c.follow(B.public_key, wire.now)
    post = b.post(f"oops {encode_handle(A.public_key)}", wire.now)
    wire.advance(10)
    assert [i.entry.id for i in a.store.mentions(A.public_key)] == [post.id]
    assert [i.entry.text for i in c.store.timeline(C.public_key)] == ["oops " + encode_handle(A.public_key)]
    b.delete(post.id, wire.now)
    wire.advance(10)
    assert [i.deleted for i in c.store.timeline(C.public_key)] == [True]
    assert [i.deleted for i in a.store.mentions(A.public_key)] == [True]
    with pytest.raises(Exception, match="already deleted"):
        b.delete(post.id, wire.now)
    with pytest.raises(Exception, match="own feed"):
        c.delete(post.id, wire.now)


def test_undelivered_notices_survive_a_restart(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    wire, cores = net("abc")
    wire.crash("a")
    post = cores["b"].post(f"later {encode_handle(A.public_key)}", wire.now)
    wire.advance(30)
    assert cores["b"].store.outbox()[0][:2] == (post.id, A.public_key)
    wire.crash("b")
    restarted_b = NodeCore(B, Random(7), wire.now, store=cores["b"].store, random_bytes=Random(17).randbytes)
    wire.restart("b", restarted_b)
    restarted_a = NodeCore(A, Random(8), wire.now, store=cores["a"].store, random_bytes=Random(18).randbytes)
    wire.restart("a", restarted_a)
    for core in (restarted_a, restarted_b):
        core.bootstrap([wire.addr("c")], wire.now)
    restarted_a.publish([("udp", HOST["a"], PORT), ("tcp", HOST["a"], PORT)], wire.now)
    wire.advance(120)
    assert [i.entry.id for i in restarted_a.store.mentions(A.public_key)] == [post.id]
    assert restarted_b.store.outbox() == []


def test_a_mention_stamped_days_ahead_is_refused_for_now(
    net: Callable[..., tuple[Wire, dict[str, NodeCore]]],
) -> None:
    """A stranger's notice stamped far in the future (it would sort first in the
    victim's `mentions` forever) is refused as "try later", with full work paid."""
    wire, cores = net("ac")
    ahead = create_entry(
        E,
        seq=1,
        prev=None,
        timestamp=2**53 - 1,
        kind=POST,
        body=post_body(f"hi {encode_handle(A.public_key)}", also_mention=A.public_key),
    )
    stamp = solve(NOTICE_DOMAIN, notice_subject(A.public_key, ahead.id), 20)
    status, _ = cores["a"].admission.admit(E.public_key, ahead.raw, stamp, wire.now)
    assert status == MentionStatus.BUSY
    assert cores["a"].mention_stats["mentions.refused_future"] == 1
    assert not cores["a"].store.has_entry(ahead.id)
    assert cores["a"].store.mentions(A.public_key) == []
