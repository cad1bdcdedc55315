"""A structure-aware mutator for msgpack inputs: change the decoded value, not just its bytes.

Theory of operation
-------------------
libFuzzer's byte mutations mostly break msgpack framing, so the decoders'
later checks (schemas, ranges, canonical form) are reached only by luck.
`MsgpackMutator` is given to ``atheris.Setup`` as the custom mutator of the
entry, DHT and gossip harnesses.  For half of the mutations it defers to
libFuzzer (``atheris.Mutate``: framing bugs stay in reach); for the other
half it splits the input at one of the harness's header lengths (a
signature, a datagram header), unpacks the rest, and changes one node of
the value tree:

* replaces it by an interesting value: the limits around each decoder
  boundary (given by the harness as ``values``, plus generic ones), a node
  copied from elsewhere in the tree, or a value of another type;
* nudges an integer by one, grows or shrinks a string, bytes, array or map,
  or wraps the node in an array;

and packs it again (smallest encoding, as an honest peer would).  An input
that does not unpack, or a result over ``max_size``, falls back to
libFuzzer's mutation.  Randomness comes from the ``seed`` libFuzzer passes,
so a mutation replays.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any, Final

import atheris
import msgpack

#: Values worth trying anywhere: the edges of msgpack's integer and length encodings.
GENERIC_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**53 - 1,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 31,
    "x" * 32,
    b"",
    bytes(20),
    bytes(32),
    bytes(64),
    [],
    {},
)


class MsgpackMutator:
    """``mutate(data, max_size, seed) -> bytes`` for ``atheris.Setup(custom_mutator=...)``."""

    def __init__(self, *, headers: Sequence[int] = (0,), values: Sequence[Any] = ()) -> None:
        self.headers = tuple(headers)
        self.values = (*GENERIC_VALUES, *values)

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return bytes(atheris.Mutate(data, max_size))
        for header in rng.sample(self.headers, len(self.headers)):
            try:
                obj = msgpack.unpackb(data[header:], raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.UnpackException):
                continue
            try:
                out = data[:header] + msgpack.packb(self._mutate(obj, rng), use_bin_type=True)
            except (ValueError, TypeError, OverflowError):
                break  # e.g. an int over 64 bits: fall back
            if len(out) <= max_size:
                return out
            break
        return bytes(atheris.Mutate(data, max_size))

    def _mutate(self, obj: Any, rng: random.Random) -> Any:
        nodes = list(_walk(obj))
        node, replace = nodes[rng.randrange(len(nodes))]
        new = self._mutate_node(node, rng, nodes)
        if replace is None:
            return new
        replace(new)
        return obj

    def _mutate_node(self, node: Any, rng: random.Random, nodes: list[tuple[Any, Any]]) -> Any:
        choice = rng.randrange(6)
        if choice == 0:
            return rng.choice(self.values)
        if choice == 1:  # a copy: the tree must stay a tree for msgpack to pack it
            return copy.deepcopy(nodes[rng.randrange(len(nodes))][0])
        if choice == 2:
            return [node]
        if isinstance(node, bool):
            return not node
        if isinstance(node, int):
            return node + rng.choice((-1, 1))
        if isinstance(node, str | bytes):
            if node and rng.random() < 0.5:
                return node[: rng.randrange(len(node))]
            return node + node[:1] * rng.randrange(1, 9) if node else node
        if isinstance(node, list):
            if node and rng.random() < 0.5:
                del node[rng.randrange(len(node))]
            else:
                node.insert(rng.randrange(len(node) + 1), rng.choice(self.values))
            return node
        if isinstance(node, dict):
            if node and rng.random() < 0.5:
                del node[rng.choice(list(node))]
            else:
                key = rng.choice([v for v in self.values if isinstance(v, str | bytes)] or [""])
                node[key] = rng.choice(self.values)
            return node
        return rng.choice(self.values)


def _walk(obj: Any) -> list[tuple[Any, Callable[[Any], None] | None]]:
    """Every node of the tree, root first, with a function that replaces it in its parent."""
    out: list[tuple[Any, Callable[[Any], None] | None]] = [(obj, None)]
    stack = [obj]
    while stack:
        parent = stack.pop()
        if isinstance(parent, list):
            for i, child in enumerate(parent):
                out.append((child, _setter(parent, i)))
                stack.append(child)
        elif isinstance(parent, dict):
            for key, child in parent.items():
                out.append((child, _setter(parent, key)))
                stack.append(child)
    return out


def _setter(container: Any, key: Any) -> Callable[[Any], None]:
    def replace(value: Any) -> None:
        container[key] = value

    return replace
