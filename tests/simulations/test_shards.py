"""One run sharded across worker processes (`simulations.shards`): real processes, real cores.

What a researcher relies on: the same seed and shard count give the same
metrics.json byte for byte (run twice through the CLI, each its own process
tree); posts cross from one shard's author to another shard's followers;
the faults of the bundled scenarios work sharded with their oracles
passing; and a run the windows cannot carry (no latency floor worth the
name, attackers) is refused with one line.
"""

from __future__ import annotations

import gc
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from simulations.network import Latency
from simulations.savings import IDLE_YOUNG, gc_tuned, idle_collect
from simulations.scenario import Scenario
from simulations.shards import DEFAULT_FLOOR_MS, ShardError, ShardRun, prepare, run_sharded
from simulations.simulation import Simulation
from tests.process import p2pblog
from tests.test_sim_cli import assert_one_error

pytestmark = pytest.mark.slow  # real worker processes, ten simulated minutes each


def test_two_shards_twice_give_identical_metrics_and_deliver_everything(tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = p2pblog(
            None, "sim", "run", "baseline", "--nodes", "40", "--duration", "300", "--shards", "2",
            "--out", str(out),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "latency draws get a floor of 10 ms" in result.stderr
    first, second = ((out / "metrics.json").read_bytes() for out in outs)
    assert first == second
    metrics = json.loads(first)["metrics"]
    assert metrics["sharding"]["shards"] == 2
    assert metrics["delivery"]["expected"] > 100
    assert metrics["delivery"]["ratio"] == 1.0
    assert metrics["convergence"]["converged_after_s"] is not None


def test_posts_cross_shards_and_every_follower_gets_them() -> None:
    scenario = Scenario.load("baseline").with_overrides(seed=3, nodes=24, duration=240.0)
    seen = ShardRun()
    result = run_sharded(scenario, 2, timing=seen)
    assert result.ok, result.violations
    plan = Simulation(scenario)  # the same identities and follow graph as the shards built
    author_of = {node.identity.public_key: node.index for node in plan.nodes}
    crossing = 0
    for (feed, _), got in seen.delivered.items():
        author = author_of[feed]
        for follower in plan.followers[author]:
            assert follower in got, f"node {follower} never got a post of node {author}"
            # Node i runs in shard i % 2: from a shard-0 author to a shard-1 follower.
            crossing += author % 2 == 0 and follower % 2 == 1
    assert crossing >= 5
    assert seen.windows > 0 and len(seen.barrier_wall) == 2 and len(seen.idle_collections) == 2


def test_the_dht_model_runs_sharded_with_one_view_in_every_shard() -> None:
    # The model's global view is kept whole in every shard: a follower finds an author (its peer
    # record, its feed's providers) whatever shard published them; twice, the same bytes.
    scenario = Scenario.load("baseline").with_overrides(seed=2, nodes=40, duration=300.0, dht="model")
    runs = []
    for _ in range(2):
        seen = ShardRun()
        result = run_sharded(scenario, 2, timing=seen)
        assert result.ok, result.violations
        runs.append((json.dumps(result.metrics, sort_keys=True), seen))
    assert runs[0][0] == runs[1][0]
    metrics = json.loads(runs[0][0])
    assert metrics["dht"]["fidelity"] == "model"
    assert metrics["delivery"]["ratio"] == 1.0 and metrics["delivery"]["expected"] > 100
    # What the workers counted reaches the metrics: every shard's walks and connections.
    assert metrics["dht"]["walk_s"]["providers"]["count"] > 40
    assert metrics["dht"]["providers_per_search"]["searches"] > 40
    assert metrics["connections_per_node"] > 2
    assert len(runs[0][1].delivered) > 20


@pytest.mark.parametrize(
    ("name", "nodes", "check"),
    [
        ("crash-and-loss", 30, "crashes"),
        ("churn", 30, "churn"),
        ("partition-heal", 30, "partition"),
        ("offline-author", 30, "offline"),
        ("equivocation", 30, "forks"),
    ],
)
def test_bundled_faults_run_sharded_with_their_oracles_passing(name: str, nodes: int, check: str) -> None:
    scenario = Scenario.load(name).with_overrides(seed=None, nodes=nodes, duration=None)
    result = run_sharded(scenario, 2)
    assert result.ok, result.violations
    metrics = result.metrics
    assert metrics["sharding"]["shards"] == 2
    assert metrics["convergence"]["converged_after_s"] is not None
    if check == "forks":
        # Followers in both shards learn of the three equivocations.
        assert metrics["forks_detected_by_honest_nodes"] >= 3
        assert metrics["roles"] == {"equivocator": 3}
    elif check == "offline":
        assert metrics["posts_skipped_offline_author"] > 0
    else:
        assert metrics["traffic"]["network"]["links.broken"] > 0
        assert metrics["delivery"]["ratio"] > 0.9


def test_a_floor_too_small_for_a_window_is_refused(tmp_path: Path) -> None:
    baseline = Scenario.load("baseline")
    tiny = replace(baseline.network.latency, min_ms=0.5)
    with pytest.raises(ShardError, match=r"latency floor 0\.5 ms is below the least lookahead"):
        prepare(replace(baseline, network=replace(baseline.network, latency=tiny)), 2)
    constant = Latency(kind="constant", ms=0.2)
    with pytest.raises(ShardError, match=r"latency floor 0\.2 ms"):
        prepare(replace(baseline, network=replace(baseline.network, latency=constant)), 2)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        'nodes = 10\nduration = 300.0\n[network.latency]\nkind = "uniform"\nlow_ms = 0.1\nhigh_ms = 20.0\n'
    )
    assert_one_error(p2pblog(None, "sim", "run", str(toml), "--shards", "2"), "--shards 2", "0.1 ms")
    assert_one_error(p2pblog(None, "sim", "run", "hostile", "--shards", "2"), "[[attacks]]", "--shards 1")


def test_a_floor_clamps_draws_and_no_floor_changes_nothing() -> None:
    lognormal = Latency(kind="lognormal", median_ms=40.0, sigma=0.4)
    a, b = random.Random(5), random.Random(5)
    plain = [lognormal.sample(a) for _ in range(2000)]
    floored = [replace(lognormal, min_ms=DEFAULT_FLOOR_MS).sample(b) for _ in range(2000)]
    assert min(plain) < DEFAULT_FLOOR_MS / 1000 * 2  # the tail reaches down there
    assert min(floored) >= DEFAULT_FLOOR_MS / 1000
    assert [max(x, DEFAULT_FLOOR_MS / 1000) for x in plain] == floored
    sharded, lookahead = prepare(Scenario.load("baseline"), 2)
    assert lookahead == DEFAULT_FLOOR_MS / 1000
    assert sharded.network.latency.min_ms == DEFAULT_FLOOR_MS


def test_three_shards_with_every_message_at_the_floor_run_in_order() -> None:
    """Constant latency equal to the floor puts every message exactly on a window's edge, and
    three shards use every pair of the mesh; a message due before its receiver's clock would
    raise (`ShardNetwork.insert`) instead of being run late."""
    baseline = Scenario.load("baseline").with_overrides(seed=7, nodes=18, duration=200.0)
    at_floor = replace(baseline.network, latency=Latency(kind="constant", ms=10.0))
    scenario = replace(baseline, network=at_floor)
    seen = ShardRun()
    result = run_sharded(scenario, 3, timing=seen)
    assert result.ok, result.violations
    assert result.metrics["delivery"]["ratio"] == 1.0
    assert result.metrics["delivery"]["latency_s"]["p50"] >= 0.01
    assert all(crossed > 0 for _, crossed in seen.messages)


def test_a_waiting_worker_collects_young_garbage_only_once_there_is_enough() -> None:
    gc.collect()
    with gc_tuned():  # the thresholds a worker runs with: no automatic collection below
        assert not idle_collect()  # nothing young to collect: the wait is not spent on it
        cycles = []
        for _ in range(2 * IDLE_YOUNG):  # with room: another thread (xdist's) frees objects too
            pair: list[object] = []
            pair.append(pair)  # a reference cycle: only the collector frees it
            cycles.append(pair)
        del cycles, pair
        assert gc.get_count()[0] >= IDLE_YOUNG
        assert idle_collect()
        assert gc.get_count()[0] < IDLE_YOUNG
