"""The bundled scenarios: they load, bad scenario files are refused by field, and each one runs.

Every bundled scenario runs here at a reduced size (`SMALL` nodes, its own
duration, so its faults and its convergence deadline still fall inside the
run) with its oracles clean and metrics that show its trouble happened:
losses and broken links, refused forgeries, detected forks, flood's extra
duplicates.  Runs are cached per (scenario, seed), so the whole module costs
about as much as running each scenario once.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dht import PeerMisbehaved
from simulations.node import SimNode
from simulations.scenario import Scenario, ScenarioError, bundled_names
from simulations.simulation import Hooks, Result, run_scenario

BUNDLED = [
    "baseline",
    "churn",
    "crash-and-loss",
    "crash-loss-1000",
    "devices-churn",
    "dm-churn",
    "equivocation",
    "equivocation-1000",
    "flood",
    "hostile",
    "lying-dht-1000",
    "offline-author",
    "partition-heal",
    "partitions-1000",
    "sybil-cold-1000",
    "sybil-dht",
    "sybil-eclipse-1000",
    "sybil-flash-1000",
]
#: Nodes in the reduced runs: enough for halves, 30% crashes and a few liars.
SMALL = 16


@functools.cache
def run(name: str, seed: int = 1) -> Result:
    return run_scenario(Scenario.load(name).with_overrides(seed=seed, nodes=SMALL))


@functools.cache
def run_counting_dht_misbehaviour(name: str) -> tuple[Result, Counter[str]]:
    """Run a scenario and count the DHT protocol violations honest and lying nodes reported."""
    reasons: Counter[str] = Counter()

    def on_node(node: SimNode) -> None:
        inner = node.on_event

        def on_event(n: SimNode, event: Any) -> None:
            if isinstance(event, PeerMisbehaved):
                reasons[event.reason] += 1
            inner(n, event)

        node.on_event = on_event

    scenario = Scenario.load(name).with_overrides(nodes=SMALL)
    return run_scenario(scenario, hooks=Hooks(on_node=on_node)), reasons


def assert_converged(result: Result) -> None:
    """The convergence oracle ran inside the run, and every honest follower caught up."""
    assert result.ok, result.violations
    convergence = result.metrics["convergence"]
    assert convergence["deadline"] is not None, "the convergence deadline falls after the end of the run"
    assert convergence["converged_after_s"] is not None
    assert convergence["converged_after_s"] <= result.scenario.converge_within


# ============================================================ loading


def test_the_bundled_scenarios_are_the_issue_list() -> None:
    assert bundled_names() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scenario_loads_and_checks_convergence_inside_the_run(name: str) -> None:
    scenario = Scenario.load(name)
    assert scenario.name == name
    assert scenario.description and "\n" not in scenario.description
    # The convergence oracle runs only if its deadline falls inside the run.
    assert scenario.converge_by <= scenario.duration
    assert scenario.last_fault_end < scenario.converge_by
    # The reduced runs below keep the schedule, and so the deadline.
    assert Scenario.load(name).with_overrides(nodes=SMALL).converge_by == scenario.converge_by


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("nodez = 5", "nodez: unknown field"),
        ("[workload]\nfollowz = 3", "workload.followz: unknown field"),
        ("[network.latency]\nmedain_ms = 4.0", "network.latency.medain_ms: unknown field"),
        ("[[faults]]\nkind = 'crash'\nfraktion = 0.3", "faults[0].fraktion: unknown field"),
        ("nodes = 'many'", "nodes: expected an integer"),
        ("nodes = true", "nodes: expected an integer"),
        ("nodes = 12.5", "nodes: expected an integer"),
        ("duration = 'long'", "duration: expected a number"),
        ("[network]\nloss = 'some'", "network.loss: expected a number"),
        ("protocol = 3", "protocol: expected a string"),
        ("workload = 5", "workload: expected a table"),
        ("faults = 3", "faults: an array of tables"),
        ("nodes = 1", "nodes: 2 .. 100000, not 1"),
        ("duration = 0", "duration: 0 .. 1e+07 seconds (not 0), not 0"),
        ("duration = 1e12", "duration: 0 .. 1e+07 seconds"),
        ("[network.latency]\nsigma = 1000.0", "network.latency.sigma: 0 .. 5, not 1000"),
        ("protocol = 'smoke-signals'", "protocol: 'gossip' or 'flood'"),
        ("converge_within = -1", "converge_within: must be >= 0"),
        ("[workload]\nauthors = 1.5", "workload.authors: a fraction 0 .. 1, not 1.5"),
        ("nodes = 10\n[workload]\nfollows = 10", "workload.follows: 0 .. nodes-1 (9), not 10"),
        ("[workload]\nfollow_graph = 'small-world'", "workload.follow_graph"),
        ("[workload]\nposts_per_hour = -1.0", "workload.posts_per_hour: 0 .. 3600 per node, not -1"),
        ("[network]\nloss = 1.5", "network.loss: a probability 0 .. 1, not 1.5"),
        ("[network.latency]\nkind = 'warp'", "network.latency.kind: one of constant"),
        ("[malicious]\ndht_bogus = 2.0", "malicious.dht_bogus: a fraction 0 .. 1"),
        ("nodes = 10\n[malicious]\nequivocators = 10", "malicious.equivocators: 0 .. nodes-1 (9"),
        ("[[faults]]\nkind = 'meteor'", "faults[0].kind: one of crash, partition, churn, loss"),
        ("[[faults]]\nkind = 'crash'\n[[faults]]\nkind = 'flood'", "faults[1].kind: one of"),
        ("[[faults]]\nkind = 'crash'\nfraction = 1.3", "faults[0].fraction: a fraction 0 .. 1, not 1.3"),
        ("[[faults]]\nkind = 'partition'\nshape = 'thirds'", "faults[0].shape: 'halves' or 'bridge'"),
        ("[[faults]]\nkind = 'loss'\nat = -5.0", "faults[0].at: must be >= 0 seconds, not -5"),
        ("[[faults]]\nkind = 'churn'\nsession_mean = 0.0", "faults[0].session_mean: at least 1 s, not 0"),
        ("duration = 120.0\n[workload]\npost_from = 120.0", "workload.post_from: below duration (120)"),
        # NaN passes every comparison and inf never ends: both are refused, in every table.
        ("duration = nan", "duration: must be a finite number, not nan"),
        ("duration = inf", "duration: must be a finite number, not inf"),
        ("converge_within = nan", "converge_within: must be a finite number"),
        ("[network]\nbandwidth = nan", "network.bandwidth: must be a finite number"),
        ("[network.latency]\nsigma = inf", "network.latency.sigma: must be a finite number"),
        ("[network.latency]\nkind = 'regions'\nmatrix_ms = [[inf]]", "latency.matrix_ms: every entry"),
        ("[workload]\njoin_over = nan", "workload.join_over: must be a finite number"),
        ("[[faults]]\nkind = 'crash'\nrestart_after = nan", "faults[0].restart_after: must be a finite"),
        ("[malicious]\nequivocate_at = inf", "malicious.equivocate_at: must be a finite number"),
        # Times after the end of the run, and windows the wrong way round.
        ("duration = 120.0\n[[faults]]\nkind = 'crash'\nat = 500.0", "faults[0].at: must be below"),
        ("duration = 120.0\n[workload]\njoin_over = 200.0", "workload.join_over: below duration (120)"),
        ("[workload]\npost_from = 60.0\npost_until = 10.0", "workload.post_until: >= post_from (60)"),
        ("duration = 120.0\n[workload]\noffline_authors = 0.2\noffline_at = 300.0", "workload.offline_at"),
        ("duration = 100.0\n[malicious]\nequivocators = 1\nequivocate_at = 150.0", "malicious.equivocate_at"),
        ("[workload]\nposts_per_hour = 1e9", "workload.posts_per_hour: 0 .. 3600"),
        ("nodes = 10\n[malicious]\ndht_bogus = 0.5\ngossip_forge = 0.5", "malicious: the fractions and"),
        # Fields without a default are typed too, and a name must say something.
        ("name = 5", "name: expected a string"),
        ("name = ''", "name: a non-empty string"),
        ("[[faults]]\nkind = 3", "faults[0].kind: expected a string"),
        ("[network.latency]\nkind = 'uniform'\nhigh_ms = 5.0", "latency.high_ms: must be >= low_ms (10)"),
        ("nodes = ", "not valid TOML"),
    ],
)
def test_malformed_scenario_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_toml(text)
    assert field in str(caught.value)


def test_missing_fault_kind_names_the_fault() -> None:
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.kind: required \(crash, partition, churn, loss\)"):
        Scenario.from_toml("[[faults]]\nat = 10.0")


def test_a_scenario_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfenodes = 5\n")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        Scenario.load(str(path))


def test_the_default_posting_window_lets_the_convergence_oracle_run() -> None:
    defaults = Scenario.from_toml("")
    assert defaults.workload.post_from < defaults.post_until
    assert defaults.converge_by <= defaults.duration  # checked inside the run
    # Too short for that: posting still happens, until a minute before the end.
    short = Scenario.from_toml("duration = 150.0")
    assert (short.workload.post_from, short.post_until) == (60.0, 90.0)


def test_unknown_scenario_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ScenarioError, match=r"no scenario 'no-such-scenario'.*baseline"):
        Scenario.load("no-such-scenario")


def test_overrides_are_checked() -> None:
    with pytest.raises(ScenarioError, match="nodes"):
        Scenario.load("baseline").with_overrides(nodes=1)
    with pytest.raises(ScenarioError, match=r"follows.*\(with --nodes 5\)"):
        Scenario.load("baseline").with_overrides(nodes=5)  # follows = 5 needs 6 nodes
    with pytest.raises(ScenarioError, match=r"duration: must be a finite number, not nan \(with --duration"):
        Scenario.load("baseline").with_overrides(duration=float("nan"))


# ============================================================ runs


def test_baseline_delivers_everything_quickly() -> None:
    result = run("baseline")
    assert_converged(result)
    m = result.metrics
    assert m["posts"] > 0
    assert m["delivery"]["ratio"] == 1.0
    assert m["delivery"]["latency_s"]["p99"] < 1.0  # pushes, not periodic pulls
    assert m["refused"] == {}
    assert m["traffic"]["network"]["datagrams.lost"] == 0
    assert m["traffic"]["network"]["links.broken"] == 0
    assert m["forks_detected_by_honest_nodes"] == 0


def test_crash_and_loss_converges_after_restart() -> None:
    result = run("crash-and-loss")
    assert_converged(result)
    m = result.metrics
    network = m["traffic"]["network"]
    assert network["datagrams.lost"] > 0
    assert network["links.broken"] > 0
    assert network["dials.failed"] > 0  # dials into crashed nodes
    # Every post reached every honest follower in the end; some only after a restart.
    assert m["delivery"]["ratio"] == 1.0
    assert m["delivery"]["latency_s"]["max"] > 10.0


def test_partition_heal_converges_after_the_heal() -> None:
    result = run("partition-heal")
    assert_converged(result)
    m = result.metrics
    assert m["traffic"]["network"]["datagrams.unreachable"] > 0
    assert m["traffic"]["network"]["links.broken"] > 0
    # Posts made during the split reach the far half only after the heal.
    assert m["delivery"]["latency_s"]["max"] > 10.0


def test_churn_converges_once_churn_stops() -> None:
    result = run("churn")
    assert_converged(result)
    m = result.metrics
    assert m["traffic"]["network"]["links.broken"] > 0
    assert m["delivery"]["ratio"] == 1.0


def test_sybil_dht_is_resisted() -> None:
    result, reasons = run_counting_dht_misbehaviour("sybil-dht")
    assert_converged(result)
    m = result.metrics
    assert m["roles"] == {"dht_bogus": 2, "dht_forged": 2}
    # Forged records were caught by honest nodes' validators ...
    assert reasons["invalid returned value"] + reasons["invalid returned provider"] > 0
    # ... and bogus referrals sent them to addresses where nobody listens (the
    # only unreachable datagrams in a run with no crash and no partition).
    assert m["traffic"]["network"]["datagrams.unreachable"] > 0
    assert m["dht"]["lookups"] >= 100
    assert m["delivery"]["ratio"] == 1.0


@functools.cache
def run_keeping_nodes(name: str) -> tuple[Result, tuple[SimNode, ...]]:
    nodes: list[SimNode] = []
    scenario = Scenario.load(name).with_overrides(nodes=SMALL)
    return run_scenario(scenario, hooks=Hooks(on_node=nodes.append)), tuple(nodes)


def test_equivocation_is_detected_and_contained() -> None:
    result, nodes = run_keeping_nodes("equivocation")
    assert_converged(result)  # honest feeds are unaffected, and nobody stored past a known fork
    assert result.metrics["roles"] == {"equivocator": 3}
    assert result.metrics["delivery"]["ratio"] == 1.0
    forked = [
        (node.index, state.author) for node in nodes for state in node.store.feeds() if state.forked_seq
    ]
    # Many nodes hold a fork proof, and only of the three equivocators' feeds.
    assert len(forked) >= SMALL // 2
    assert 1 <= len({feed for _, feed in forked}) <= 3


def test_equivocation_forks_are_counted_in_the_metrics() -> None:
    result, _ = run_keeping_nodes("equivocation")
    assert result.metrics["forks_detected_by_honest_nodes"] > 0


def test_offline_authors_feeds_are_served_by_their_followers() -> None:
    result = run("offline-author")
    assert_converged(result)
    m = result.metrics
    # Posts an offline author would have made are not made (and not counted).
    assert m["posts_skipped_offline_author"] > 0
    # Offline authors are followers too: posts made after they left never
    # reach them, so the ratio is below 1 while convergence (of the nodes up) holds.
    assert 0.5 < m["delivery"]["ratio"] < 1.0


def test_flood_costs_more_duplicates_than_gossip() -> None:
    result = run("flood")
    assert_converged(result)
    assert set(result.compare) == {"flood"}
    gossip, flood = result.metrics, result.compare["flood"]
    assert flood["delivery"]["ratio"] == gossip["delivery"]["ratio"] == 1.0
    assert flood["posts"] == gossip["posts"]
    assert (
        flood["amplification"]["duplicates_per_delivery"] > gossip["amplification"]["duplicates_per_delivery"]
    )
    assert flood["traffic"]["bytes_total"] > gossip["traffic"]["bytes_total"]


def test_devices_churn_keeps_its_oracles_through_a_revocation_a_rotation_and_a_recovery() -> None:
    result = run("devices-churn")
    assert_converged(result)  # the device oracles included: no cut, delivery, fork or agreement violation
    d = result.metrics["devices"]
    assert d["identities"] == 6 and d["devices_paired"] == 6
    assert (d["revocations"], d["rotations"], d["recoveries"]) == (1, 1, 1)
    assert d["delivery"]["expected"] > 0 and d["delivery"]["ratio"] == 1.0
    assert d["thief_posts"] >= 1 and d["thief_posts_shown"] == 0
    for kind in ("revocation", "rotation", "recovery"):
        held = d["held_after_s"][kind]
        assert 0 < held["max"] <= result.scenario.converge_within, (kind, held)


# ============================================================ determinism


def test_same_seed_gives_identical_metrics_and_another_seed_does_not() -> None:
    def metrics(seed: int) -> str:
        scenario = Scenario.load("crash-and-loss").with_overrides(seed=seed, nodes=12)
        return json.dumps(run_scenario(scenario).metrics, sort_keys=True)

    first = metrics(1)
    assert metrics(1) == first
    assert metrics(2) != first
