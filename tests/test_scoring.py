"""Peer scores (`p2pblog.scoring`): offences, credits, decay, bans, bounds and persistence."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
from hypothesis import given, settings

from p2pblog.scoring import (
    BAN_BELOW,
    BAN_SECONDS,
    MAX_SCORE,
    MIN_SCORE,
    NEGATIVE_HALF_LIFE,
    POSITIVE_HALF_LIFE,
    Offence,
    PeerScores,
    address_prefix,
)
from p2pblog.store import Store

T0 = 1_800_000_000.0
KEY = bytes([1]) * 32
OTHER = bytes([2]) * 32
NET = address_prefix("192.0.2.9")


def test_prefixes_are_the_24_and_the_48_and_mapped_addresses_are_ipv4() -> None:
    assert address_prefix("192.0.2.9") == b"net:192.0.2.0/24"
    assert address_prefix("::ffff:192.0.2.200") == b"net:192.0.2.0/24"
    assert address_prefix("2001:db8:1:ff::6") == b"net:2001:db8:1::/48"
    assert address_prefix("not an address").startswith(b"net:")


def test_a_failed_session_bans_the_key_for_a_while_and_a_few_faults_do_not() -> None:
    scores = PeerScores()
    for _ in range(4):  # a confused peer: a few bad entries in one session
        assert not scores.penalize(Offence.BAD_ENTRIES, KEY, NET, T0)
    assert not scores.banned(KEY, T0) and scores.score(KEY, T0) > BAN_BELOW
    assert scores.penalize(Offence.SESSION_FAILED, KEY, NET, T0)
    assert scores.banned(KEY, T0) and scores.banned_until(KEY) == T0 + BAN_SECONDS
    assert not scores.banned(NET, T0)  # the prefix took only a fraction
    assert not scores.banned(KEY, T0 + BAN_SECONDS)
    # Still below the threshold: the next offence bans it again at once.
    assert scores.score(KEY, T0 + BAN_SECONDS) < BAN_BELOW
    assert scores.penalize(Offence.MISBEHAVED, KEY, None, T0 + BAN_SECONDS)
    assert scores.bans == 2


def test_scores_decay_towards_zero_at_their_half_lives() -> None:
    scores = PeerScores()
    scores.penalize(Offence.SESSION_FAILED, KEY, None, T0)
    assert scores.score(KEY, T0 + NEGATIVE_HALF_LIFE) == Offence.SESSION_FAILED.key_weight / 2
    scores.credit(OTHER, 8.0, T0)
    assert scores.score(OTHER, T0 + POSITIVE_HALF_LIFE) == 4.0


def test_scores_are_bounded_and_credit_never_goes_to_a_prefix() -> None:
    scores = PeerScores()
    for _ in range(100):
        scores.credit(KEY, 5.0, T0)
        scores.penalize(Offence.SESSION_FAILED, OTHER, NET, T0)
    assert scores.score(KEY, T0) == MAX_SCORE
    assert scores.score(OTHER, T0) == MIN_SCORE
    assert scores.standing(KEY, NET, T0) == MAX_SCORE + scores.score(NET, T0)


def test_a_flood_of_throwaway_keys_keeps_the_table_bounded_and_honest_history_kept() -> None:
    scores = PeerScores(max_subjects=64)
    honest = [bytes([200, i]) * 16 for i in range(8)]
    for key in honest:
        scores.credit(key, 10.0, T0)
    scores.penalize(Offence.HANDSHAKE_FAILED, None, NET, T0)
    for i in range(1000):
        scores.penalize(Offence.SESSION_FAILED, i.to_bytes(32, "big"), None, T0 + i)
        assert len(scores) <= 64
    assert all(scores.score(key, T0 + 1000) > 0 for key in honest)
    assert scores.score(NET, T0 + 1000) < 0


def test_rows_round_trip_through_the_store(tmp_path: Path) -> None:
    scores = PeerScores()
    scores.penalize(Offence.SESSION_FAILED, KEY, NET, T0)
    scores.credit(OTHER, 3.0, T0)
    with Store(tmp_path / "s.db") as store:
        store.save_peer_scores(scores.rows())
    with Store(tmp_path / "s.db") as store:
        again = PeerScores(store.load_peer_scores(10))
    for subject in (KEY, OTHER, NET):
        assert again.score(subject, T0 + 60) == scores.score(subject, T0 + 60)
        assert again.banned(subject, T0 + 60) == scores.banned(subject, T0 + 60)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*Offence, None]),
            st.integers(0, 40),
            st.floats(0, 3600, allow_nan=False),
        ),
        max_size=200,
    )
)
def test_any_sequence_keeps_scores_in_range_and_the_table_bounded(
    steps: list[tuple[Offence | None, int, float]],
) -> None:
    scores = PeerScores(max_subjects=16)
    now = T0
    for offence, who, dt in steps:
        now += dt
        key = who.to_bytes(32, "big")
        net = address_prefix(f"10.{who}.0.1")
        if offence is None:
            scores.credit(key, 1.0, now)
        else:
            scores.penalize(offence, key, net, now)
        assert len(scores) <= 16
        for subject in (key, net):
            assert MIN_SCORE <= scores.score(subject, now) <= MAX_SCORE
    assert len(scores.rows()) == len(scores)


def test_the_lifecycle_saves_the_replicators_scores_with_the_contacts(tmp_path: Path) -> None:
    from random import Random

    from identity import Identity
    from p2pblog.lifecycle import Lifecycle
    from p2pblog.node import NodeCore
    from p2pblog.replication import Replicator

    with Store(tmp_path / "n.db") as store:
        core = NodeCore(
            Identity(bytes([5]) * 32), Random(1), T0, store=store, random_bytes=Random(2).randbytes
        )
        lifecycle = Lifecycle(core.store, core.dht, core.records, core.replicator)
        core.replicator.scores.penalize(Offence.SESSION_FAILED, KEY, NET, T0)
        lifecycle.save_contacts()
        again = Replicator(
            Identity(bytes([5]) * 32), store, Random(1), T0 + 1, random_bytes=Random(2).randbytes
        )
        assert again.refuses(KEY, T0 + 1) and not again.refuses(OTHER, T0 + 1)
        assert again.scores.score(NET, T0 + 1) < 0
