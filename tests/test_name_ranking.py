"""Property tests over the ranking of a name's claimants (`p2pblog.names`, issue 15).

The rules: the relationship class dominates the witnessed age and the work;
within a class the age the network witnessed dominates the work; a squatter
with any amount of work and any self-asserted ``claimed`` never outranks an
earlier claim by a followed key, and fewer than half of the DHT nodes lying
cannot backdate a claim; the order is total and deterministic, and the
command line and the web app (which see the ``resolve`` answer's JSON) order
exactly as the node does.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from identity import encode_handle, fingerprint
from identity.records import NAME, Record
from p2pblog.names import (
    MIN_WITNESSES,
    RELATION_NAMES,
    Claimant,
    Relation,
    answer_order,
    rank,
    suggestion,
    witnessed_at,
)
from p2pblog.targets import Target, pick_claims, suggested_claim

T0 = 1_800_000_000
times = st.integers(0, 2 * T0)
works = st.integers(20, 64)
relations = st.sampled_from(list(Relation))
reports = st.lists(times, max_size=12)


def claim(signer: int, work: int = 20, claimed: int = 0) -> Record:
    """An unsigned stand-in: the ranking only reads the fields."""
    return Record(
        bytes([signer]), NAME, bytes([signer]) * 32, 1, T0, (), None, "alice", claimed, bytes(8), work
    )


def claimant(signer: int, relation: Relation, seen: list[int], work: int = 20, claimed: int = 0) -> Claimant:
    return Claimant(claim(signer, work, claimed), relation, witnessed_at(seen, claimed), len(seen), 0)


claimants = st.builds(claimant, st.integers(0, 255), relations, reports, works, times)


def answer(c: Claimant) -> dict[str, object]:
    """The claim as the daemon's ``resolve`` command answers it."""
    return {
        "handle": encode_handle(c.record.signer),
        "fingerprint": fingerprint(c.record.signer),
        "claimed": c.record.claimed,
        "work": c.record.work,
        "relation": RELATION_NAMES[c.relation],
        "witnessed": c.witnessed,
        "witnesses": c.witnesses,
        "followed_by": c.followed_by,
    }


@given(relations, relations, reports, reports, works, works, times, times)
def test_the_relationship_dominates_age_and_work(
    r1: Relation, r2: Relation, s1: list[int], s2: list[int], w1: int, w2: int, c1: int, c2: int
) -> None:
    first, second = claimant(1, r1, s1, w1, c1), claimant(2, r2, s2, w2, c2)
    if r1 != r2:
        better = first if r1 < r2 else second
        assert rank([first, second])[0] is better
        assert rank([second, first])[0] is better


@given(relations, st.lists(times, min_size=MIN_WITNESSES, max_size=12), st.integers(1, 10**6), works, works)
def test_within_a_class_the_witnessed_age_dominates_work(
    relation: Relation, seen: list[int], later_by: int, w1: int, w2: int
) -> None:
    early = claimant(1, relation, seen, w1)
    late = claimant(2, relation, [t + later_by for t in seen], w2)
    assert rank([late, early]) == [early, late]
    # Equal ages: more work first.
    if w1 != w2:
        a, b = claimant(3, relation, seen, w1), claimant(4, relation, seen, w2)
        assert rank([a, b])[0].record.work == max(w1, w2)


@given(
    st.lists(times, min_size=MIN_WITNESSES, max_size=12),
    st.integers(1, 10**7),
    st.data(),
    works,
    times,
    st.sampled_from([Relation.FOLLOWING, Relation.PETNAME]),
)
def test_a_squatter_never_outranks_an_earlier_claim_by_a_key_the_user_knows(
    honest: list[int],
    later_by: int,
    data: st.DataObject,
    squatter_work: int,
    squatter_claimed: int,
    known: Relation,
) -> None:
    """Whatever the squatter's work and ``claimed``, and with fewer than half of the DHT
    nodes reporting on its claim lying (any times), the known key's earlier claim wins
    and `follow NAME` picks it; between strangers, the earlier claim still ranks first."""
    owner = claimant(1, known, honest)
    # Every honest node stored the squatter's claim after it stored the owner's.
    squatter_honest = [max(honest) + later_by + t - min(honest) for t in honest]
    lies = data.draw(st.lists(times, max_size=len(squatter_honest)))
    squatter_seen = squatter_honest + lies
    squatter = claimant(2, Relation.STRANGER, squatter_seen, squatter_work, squatter_claimed)
    assert rank([squatter, owner]) == [owner, squatter]
    chosen = suggestion(rank([squatter, owner]))
    assert chosen is not None and chosen.record.signer == owner.record.signer

    # The same two as strangers: the earlier claim still comes first, and nobody is picked.
    if len(lies) <= len(squatter_honest) // 2:
        stranger = claimant(1, Relation.STRANGER, honest)
        assert rank([squatter, stranger])[0] is stranger
        assert suggestion(rank([squatter, stranger])) is None


@given(st.lists(times, min_size=MIN_WITNESSES, max_size=12), st.data(), times)
def test_fewer_than_half_lying_nodes_cannot_backdate_a_claim(
    honest: list[int], data: st.DataObject, claimed: int
) -> None:
    lies = data.draw(st.lists(times, max_size=len(honest)))
    got = witnessed_at(honest + lies, claimed)
    assert got is not None
    assert got >= claimed  # a claim is never older than its signer says
    assert got >= min(honest)  # the lies (at most half the reports) cannot pull it earlier
    assert witnessed_at([], claimed) is None
    # Fewer than MIN_WITNESSES reports give no age at all: one node of the squatter's own
    # cannot date its claim (found by a review).
    assert witnessed_at(honest[: MIN_WITNESSES - 1], claimed) is None


@given(st.lists(claimants, max_size=12, unique_by=lambda c: c.record.signer), st.randoms())
def test_the_order_is_total_deterministic_and_the_same_in_every_front_end(
    found: list[Claimant], rng: random.Random
) -> None:
    ranked = rank(found)
    shuffled = list(found)
    rng.shuffle(shuffled)
    assert rank(shuffled) == ranked
    orders = [c.order() for c in ranked]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)  # total: no ties
    # The command line and the web app re-order the JSON answers the same way.
    answers = [answer(c) for c in shuffled]
    assert [a["handle"] for a in pick_claims(Target(name="alice"), answers)] == [
        encode_handle(c.record.signer) for c in ranked
    ]
    assert [answer_order(answer(c)) for c in ranked] == orders
    picked, json_picked = suggestion(ranked), suggested_claim(answers)
    assert (picked is None) == (json_picked is None)
    if picked is not None and json_picked is not None:
        assert json_picked["handle"] == encode_handle(picked.record.signer)


@given(st.lists(claimants, min_size=1, max_size=12, unique_by=lambda c: c.record.signer))
def test_follow_name_picks_only_the_only_claimant_or_a_known_one_alone_in_its_class(
    found: list[Claimant],
) -> None:
    ranked = rank(found)
    chosen = suggestion(ranked)
    if len(ranked) == 1:
        assert chosen is ranked[0]
        return
    strangers = [c for c in ranked if c.relation is Relation.STRANGER]
    if len(strangers) == len(ranked):
        assert chosen is None  # conflicting strangers: listed, none picked
    if chosen is not None:
        assert chosen is ranked[0] and chosen.relation is not Relation.STRANGER
        assert all(c.relation > chosen.relation for c in ranked[1:])
