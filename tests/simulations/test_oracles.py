"""Each oracle fires on a deliberately broken variant, and stays quiet on the same run unbroken.

The variants are built with `simulations.simulation.Hooks`, so the simulator
itself is unchanged:

* validity: honest nodes that take entries without checking signatures
  (`skip_signature_checks`), next to nodes that serve forged entries
  (``gossip_forge``);
* prefix: one honest replica's copy of a feed is corrupted on disk after
  posting stops, so two replicas disagree on an entry;
* convergence: one follower's replicator never dials and hangs up on every
  inbound connection (`DeafCore`), so it never catches up.

And the other way round: an equivocation during a partition, where honest
replicas on either side hold different branches of one seq until the heal,
must not be blamed on them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from random import Random
from typing import Any
from unittest import mock

from p2pblog import ingest_queue
from p2pblog.entry import Entry
from p2pblog.node import NodeCore
from p2pblog.verify import first_forgery
from simulations.adversary import make_core
from simulations.node import SimNode
from simulations.scenario import Scenario
from simulations.simulation import Hooks, Result, Simulation

#: Small and short, but with a deadline for the convergence oracle (250 s) inside the run.
BASE = """
nodes = 12
duration = 300.0
converge_within = 60.0

[network.latency]
kind = "lognormal"
median_ms = 40.0
sigma = 0.4

[workload]
follows = 4
posts_per_hour = 30.0
post_from = 30.0
post_until = 190.0
lookups_per_hour = 0.0
"""
FORGERS = BASE + "\n[malicious]\ngossip_forge = 0.25\n"
SEED = 7


def scenario(text: str) -> Scenario:
    return Scenario.from_toml(text, default_name="oracle-test").with_overrides(seed=SEED)


@functools.cache
def unbroken(text: str) -> Result:
    return Simulation(scenario(text)).run()


def assert_caught(result: Result, oracle: str) -> None:
    assert not result.ok
    assert result.violations[0].oracle == oracle, result.violations
    assert 0 < result.violations[0].time <= result.scenario.duration
    # The seed that reproduces it travels with the result.
    assert result.scenario.seed == SEED


# ============================================================ validity


def skip_signature_checks(node: SimNode) -> None:
    """Give the node a replicator that takes other authors' entries without checking signatures.

    The replicator decodes a peer's entries without their signatures and has
    `p2pblog.ingest_queue.VerifyQueue` check them with `first_forgery` before
    the store takes them as decoded: swap in a lenient check while this node's
    replicator ingests.  The default core factory (roles, protocol) is kept.
    """
    default_factory = node.make_core
    assert default_factory is not None
    own = node.identity.public_key

    def lenient_check(entries: Sequence[Entry]) -> int | None:
        # its own feed it still checks
        return first_forgery([e for e in entries if e.author == own])

    def make(n: SimNode, rng: Random, now: float) -> NodeCore:
        core = default_factory(n, rng, now)
        strict_ingest = core.replicator._ingest

        def ingest(*args: Any) -> None:
            with mock.patch.object(ingest_queue, "first_forgery", lenient_check):
                strict_ingest(*args)

        core.replicator._ingest = ingest  # type: ignore[method-assign]
        return core

    node.make_core = make


def test_validity_unbroken_refuses_the_forgeries() -> None:
    result = unbroken(FORGERS)
    assert result.ok, result.violations
    assert result.metrics["roles"] == {"gossip_forge": 3}
    assert result.metrics["refused"].get("entries.forged", 0) > 0


def test_validity_fires_when_stores_accept_forged_signatures() -> None:
    result = Simulation(scenario(FORGERS), hooks=Hooks(on_node=skip_signature_checks)).run()
    assert_caught(result, "validity")
    assert "never signed" in result.violations[0].detail


# ============================================================ prefix

#: When the tampering happens: after posting stops, before the check at 210 s.
TAMPER_AT = 195.0


def corrupt_latest_followed_entry(node: SimNode) -> None:
    """Flip a byte of the newest entry this node holds of a feed it follows."""
    store, own = node.store, node.identity.public_key
    feed, seq = max(
        ((author, seq) for author, seq in store.clock().items() if author != own),
        key=lambda item: (item[1], item[0]),
    )
    (raw,) = store.raw_range(feed, seq, 1)
    with store.transaction():
        store._db.execute(
            "UPDATE entries SET raw = ? WHERE author = ? AND seq = ?",
            (raw[:-1] + bytes([raw[-1] ^ 0xFF]), feed, seq),
        )


def corrupt_one_replica(node: SimNode) -> None:
    if node.index == 5:
        node.engine.at(TAMPER_AT, lambda: corrupt_latest_followed_entry(node))


def test_prefix_fires_when_two_replicas_disagree() -> None:
    result = Simulation(scenario(BASE), hooks=Hooks(on_node=corrupt_one_replica)).run()
    assert_caught(result, "prefix")
    violation = result.violations[0]
    assert violation.time == 210.0  # the first check after the tampering
    assert "disagree" in violation.detail and "5" in violation.detail


# ============================================================ convergence

DEAF = 3


class DeafCore(NodeCore):
    """A node whose replicator never dials out and hangs up on whoever dials in."""

    def dials_to_make(self) -> list[tuple[int, str, int]]:
        super().dials_to_make()
        return []

    def connection_accepted(self, addr: tuple[str, int], now: float) -> int:
        conn_id = super().connection_accepted(addr, now)
        conn = self.replicator._conns.get(conn_id)
        if conn is not None:
            self.replicator._close(conn, now, "deaf")
        return conn_id


def deaf_follower(node: SimNode, rng: Random, now: float) -> NodeCore:
    if node.index != DEAF:
        core = make_core(None, node, rng, now)
        core.replicator.prune_duplicates = True
        return core
    return DeafCore(node.identity, rng, now, store=node.store, random_bytes=rng.randbytes)


def test_base_run_is_clean() -> None:
    result = unbroken(BASE)
    assert result.ok, result.violations
    assert result.metrics["convergence"]["deadline"] == 250.0
    assert result.metrics["delivery"]["ratio"] == 1.0


def test_convergence_fires_when_a_follower_never_replicates() -> None:
    sim = Simulation(scenario(BASE), hooks=Hooks(make_core=deaf_follower))
    result = sim.run()
    assert sim.follows[DEAF], "the deaf node follows nobody: nothing to miss"
    assert_caught(result, "convergence")
    violation = result.violations[0]
    assert violation.time == result.scenario.converge_by
    assert {v.oracle for v in result.violations} == {"convergence"}
    assert result.metrics["delivery"]["ratio"] < 1.0


# ============================================================ no false alarm

#: Four authors equivocate just after the network splits: each side may hold
#: only one branch of the equivocated seq until the heal lets them meet.
EQUIVOCATION_IN_PARTITION = """
nodes = 16
duration = 420.0
converge_within = 90.0

[network.latency]
kind = "lognormal"
median_ms = 40.0
sigma = 0.4

[workload]
follows = 5
posts_per_hour = 12.0
post_until = 330.0

[malicious]
equivocators = 4
equivocate_at = 150.0

[[faults]]
kind = "partition"
at = 145.0
duration = 180.0
"""


def test_prefix_does_not_blame_honest_replicas_for_an_equivocation() -> None:
    result = Simulation(Scenario.from_toml(EQUIVOCATION_IN_PARTITION).with_overrides(seed=4)).run()
    assert result.ok, result.violations
