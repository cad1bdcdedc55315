"""Who follows whom, drawn in O(n·f·log n) instead of O(n²·f).

Both graphs draw exactly what the first version drew (the same calls on the same
generator, so the same graph for a seed), without building a list of every other author
for each node:

- ``random``: `random.Random.sample` over a view of the authors without the node itself;
  above a few dozen authors ``sample`` draws indexes and reads only the ones it keeps.
- ``power-law`` (preferential attachment): ``Random.choices`` with weights draws one
  ``random()`` and bisects the running sums of the weights.  The weights are whole numbers
  (1 plus the followers gained), so every running sum is exact in a float and a Fenwick
  tree over them finds the same author as the bisection over a fresh list, in log n.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import overload


class _Without(Sequence[int]):
    """``items`` without the one at ``skip`` (-1: none), read in place."""

    def __init__(self, items: list[int], skip: int) -> None:
        self._items = items
        self._skip = skip

    def __len__(self) -> int:
        return len(self._items) - (self._skip >= 0)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if 0 <= self._skip <= index:
            index += 1
        return self._items[index]


class _Fenwick:
    """Running sums of whole-number weights, with point updates and "first past x"."""

    def __init__(self, weights: list[int]) -> None:
        self.n = n = len(weights)
        tree = [0, *weights]
        for i in range(1, n + 1):
            j = i + (i & -i)
            if j <= n:
                tree[j] += tree[i]
        self._tree = tree
        self.total = sum(weights)
        self._top = 1 << n.bit_length() if n else 0

    def add(self, index: int, delta: int) -> None:
        self.total += delta
        i = index + 1
        tree = self._tree
        while i <= self.n:
            tree[i] += delta
            i += i & -i

    def first_above(self, x: float) -> int:
        """The smallest index whose running sum exceeds x (`bisect.bisect_right`)."""
        pos = 0
        tree = self._tree
        step = self._top
        while step:
            nxt = pos + step
            if nxt <= self.n and tree[nxt] <= x:
                pos = nxt
                x -= tree[nxt]
            step >>= 1
        return pos


def follow_graph(
    rng: Random, nodes: int, targets: list[int], follows: int, graph: str
) -> dict[int, list[int]]:
    """Node -> the sorted authors it follows: ``follows`` each (fewer if there are not as
    many other authors), drawn from ``targets`` (distinct node indexes) uniformly
    (``random``) or by preferential attachment (``power-law``)."""
    position = {a: j for j, a in enumerate(targets)}
    out: dict[int, list[int]] = {}
    if graph == "random":
        for i in range(nodes):
            choices = _Without(targets, position.get(i, -1))
            out[i] = sorted(rng.sample(choices, min(follows, len(choices))))
        return out
    weights = [1] * len(targets)
    tree = _Fenwick(weights)
    for i in range(nodes):
        own = position.get(i, -1)
        count = min(follows, len(targets) - (own >= 0))
        removed: list[int] = []
        if own >= 0:
            tree.add(own, -weights[own])
            removed.append(own)
        picked = []
        for _ in range(count):
            # Random.choices(keys, weights): one random() times the total, bisected.
            j = tree.first_above(rng.random() * tree.total)
            if j >= len(targets):  # a product rounded up to the total: the last one left
                j = max(k for k in range(len(targets)) if k not in removed)
            tree.add(j, -weights[j])
            removed.append(j)
            weights[j] += 1
            picked.append(targets[j])
        for j in removed:
            tree.add(j, weights[j])
        out[i] = sorted(picked)
    return out
