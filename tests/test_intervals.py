"""What needs a faster answer than the 30 s maintenance pass has a deadline of its own
(docs/design.md, "Simulator at scale: protocol intervals").

Real `NodeCore`s over SQLite stores on disk, on the simulator's network
(`simulations.testbed`, 1 ms one way), started as the daemon starts them
(the `tests.test_lifecycle` helper).  Each reaction is checked right after a
maintenance pass, so the next pass is `MAINTAIN_EVERY` away and cannot be
what answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pblog.discovery import FIRST_SEARCH_RETRY
from p2pblog.node import NodeCore
from p2pblog.replication import MAINTAIN_EVERY
from simulations.endpoint import CoreEndpoint
from tests.test_lifecycle import T0, A, B, Nodes

#: Seconds within which each reaction must come (a tenth of a pass or so, plus round trips).
PROMPT = 3.0


def calls_of(obj: object, name: str) -> list[tuple[Any, ...]]:
    """Record the positional arguments of every call of ``obj.name`` (which still runs)."""
    calls: list[tuple[Any, ...]] = []
    method = getattr(obj, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return method(*args, **kwargs)

    setattr(obj, name, recording)
    return calls


def just_after_a_pass(nodes: Nodes, passes: list[tuple[Any, ...]]) -> None:
    """Advance to the first moment after the node's next maintenance pass (``(now,)`` calls)."""
    seen = len(passes)
    while len(passes) == seen:
        nodes.bed.advance(0.25)
    assert nodes.bed.now - passes[-1][0] <= 0.25


def connected(b: CoreEndpoint[NodeCore]) -> bool:
    return b.core.replicator.is_connected(A.public_key)


def test_a_follow_a_lost_connection_and_a_lost_author_do_not_wait_for_the_pass(tmp_path: Path) -> None:
    assert MAINTAIN_EVERY >= 10 * PROMPT  # else the checks below could not tell
    nodes = Nodes(tmp_path)
    nodes.start("a", A, [])
    b = nodes.start("b", B, [nodes.endpoints["a"].addr])
    nodes.bed.run(T0 + 10)  # joined, records published
    passes = calls_of(b.core, "_maintain")
    searches = calls_of(b.core.discovery, "find_providers")  # (feed, now)
    just_after_a_pass(nodes, passes)

    # A follow: the provider search and the dial at once.
    followed_at = nodes.bed.now
    b.command(lambda core, now: core.follow(A.public_key, now))
    nodes.bed.advance(PROMPT)
    assert connected(b)
    assert next(t for feed, t in searches if feed == A.public_key) - followed_at < PROMPT

    # A lost connection (A restarts at once): redialled when the backoff ends.
    just_after_a_pass(nodes, passes)
    nodes.endpoints["a"].crash()
    nodes.bed.advance(0.01)
    assert not connected(b)
    nodes.start("a", A, [])
    nodes.bed.advance(PROMPT)
    assert connected(b)

    # A lost author (A stays down): searched for FIRST_SEARCH_RETRY later, not at the pass.
    just_after_a_pass(nodes, passes)
    nodes.endpoints["a"].crash()
    lost_at = nodes.bed.now
    nodes.bed.advance(FIRST_SEARCH_RETRY + PROMPT)
    assert not connected(b)
    later = [t for feed, t in searches if feed == A.public_key and t > lost_at]
    assert later and later[0] - lost_at < FIRST_SEARCH_RETRY + PROMPT
