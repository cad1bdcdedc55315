"""The follow graph is drawn in O(n f log n) and is still the graph the first version drew."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.follows import _Fenwick, follow_graph


def reference(rng: Random, n: int, targets: list[int], follows: int, graph: str) -> dict[int, list[int]]:
    """The first version, O(n^2 f): a fresh list of the other authors for every node."""
    out: dict[int, list[int]] = {}
    weight = {a: 1.0 for a in targets}
    for i in range(n):
        choices = [a for a in targets if a != i]
        count = min(follows, len(choices))
        if graph == "random":
            picked = rng.sample(choices, count)
        else:
            picked = []
            pool = dict.fromkeys(choices)
            for _ in range(count):
                keys = list(pool)
                chosen = rng.choices(keys, weights=[weight[k] for k in keys])[0]
                del pool[chosen]
                picked.append(chosen)
                weight[chosen] += 1.0
        out[i] = sorted(picked)
    return out


@pytest.mark.parametrize("graph", ["random", "power-law"])
@pytest.mark.parametrize(("n", "share", "follows"), [(1, 1.0, 5), (2, 1.0, 5), (40, 1.0, 10), (300, 0.3, 10)])
def test_same_graph_as_the_first_version(graph: str, n: int, share: float, follows: int) -> None:
    for seed in range(3):
        pick = Random(seed)
        targets = sorted(pick.sample(range(n), max(1, int(n * share))))
        new = follow_graph(Random(seed), n, targets, follows, graph)
        assert new == reference(Random(seed), n, targets, follows, graph), f"seed {seed}"


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    follows=st.integers(0, 12),
    graph=st.sampled_from(["random", "power-law"]),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_same_graph_for_any_authors(n: int, follows: int, graph: str, seed: int, data: st.DataObject) -> None:
    targets = data.draw(st.lists(st.integers(0, n - 1), min_size=1, unique=True))
    new = follow_graph(Random(seed), n, targets, follows, graph)
    assert new == reference(Random(seed), n, targets, follows, graph)
    for i, authors in new.items():
        assert i not in authors and len(set(authors)) == len(authors)


def test_fenwick_finds_the_first_running_sum_past_x() -> None:
    weights = [3, 0, 1, 4, 0, 2]
    tree = _Fenwick(weights)
    sums = [3, 3, 4, 8, 8, 10]
    for x in [0, 0.5, 2.99, 3, 3.5, 4, 7.99, 8, 9.99, 10, 11]:
        expected = next((j for j, s in enumerate(sums) if s > x), len(weights))
        assert tree.first_above(x) == expected, x
    tree.add(3, -4)
    assert tree.total == 6 and tree.first_above(4) == 5


def test_ten_thousand_nodes_draw_quickly() -> None:
    """The first version built 10,000 lists of 10,000 authors per node (minutes for a
    power-law graph); this one draws both graphs of 10,000 nodes at once."""
    for graph in ("random", "power-law"):
        out = follow_graph(Random(1), 10_000, list(range(10_000)), 10, graph)
        assert all(len(v) == 10 for v in out.values())
