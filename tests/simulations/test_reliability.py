"""The reliability goals at 1,000 nodes (issue 17): the bundled scenarios load, run scaled
down with their oracles passing, and each new metric and oracle moves when what it
measures breaks.

The runs are scaled down (20-60 nodes, most shortened; `scaled`) so that each test
stays well under half a minute of CPU; they are cached per variant.  A broken run
("the oracle fires") may be smaller than its good run: its figure is then held to a
fixed bound well clear of the good run's goal.  The full-size runs
and their figures are in docs/design.md ("Simulator at scale: reliability goals at
1,000 nodes").  A "break" is a `Hooks.make_core` that disables one mechanism of the
honest nodes (pushing a post, passing a fork proof on, publishing a name claim, the
DHT's network diversity), so the test shows the metric measures that mechanism.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import pytest

import dht.lookup
import dht.routing
from p2pblog.node import NodeCore
from simulations.adversary import SilentFeeds, SybilCore, SybilPlan, make_core
from simulations.node import SimNode
from simulations.report import metrics_document, summary, write_run
from simulations.scenario import Scenario, ScenarioError
from simulations.simulation import Hooks, Result, Simulation

NEW = [
    "crash-loss-1000",
    "equivocation-1000",
    "lying-dht-1000",
    "partitions-1000",
    "sybil-cold-1000",
    "sybil-eclipse-1000",
    "sybil-flash-1000",
]


def scaled(name: str, nodes: int, duration: float | None = None, **changes: Any) -> Scenario:
    """A bundled scenario at ``nodes`` (and ``duration``), with tables replaced by
    ``changes`` (``workload={...}``, ``sybil={...}``, ``expect={...}``, ...)."""
    scenario = Scenario.load(name)
    scenario = dataclasses.replace(scenario, nodes=nodes, duration=duration or scenario.duration)
    for table, values in changes.items():
        value = (
            dataclasses.replace(getattr(scenario, table), **values) if isinstance(values, dict) else values
        )
        scenario = dataclasses.replace(scenario, **{table: value})
    scenario.check()
    return scenario


def run(
    scenario: Scenario, make: Callable[[SimNode, Random, float], NodeCore | None] | None = None
) -> Result:
    return Simulation(scenario, hooks=Hooks(make_core=make)).run()


def honest_core(node: SimNode, rng: Random, now: float) -> NodeCore:
    return make_core(None, node, rng, now)


def breaking(patch: Callable[[NodeCore], None]) -> Callable[[SimNode, Random, float], NodeCore]:
    """A core factory: the honest core with one mechanism broken by ``patch``."""

    def make(node: SimNode, rng: Random, now: float) -> NodeCore:
        core = honest_core(node, rng, now)
        patch(core)
        return core

    return make


# ============================================================ the scenarios


@pytest.mark.parametrize("name", NEW)
def test_reliability_scenario_is_bundled_at_1000_nodes_with_its_oracle(name: str) -> None:
    scenario = Scenario.load(name)
    assert scenario.nodes == 1000
    assert 600.0 <= scenario.duration <= 1200.0
    assert scenario.converge_by <= scenario.duration
    # Every one has an oracle beyond the three every run has.
    e = scenario.expect
    assert any((e.delivery_ratio, e.live_within_30s, e.fork_proof_within, e.name_lookup_success))
    # What makes it that goal.
    if name.startswith("sybil"):
        assert scenario.sybils == 800 and scenario.sybil.mode == name.split("-")[1]
    if name == "lying-dht-1000":
        assert scenario.malicious.dht_bogus + scenario.malicious.dht_forged == pytest.approx(0.2)
        assert scenario.names.claims > 0 and e.lookup_success and e.name_lookup_success
    if name == "partitions-1000":
        assert [f.shape for f in scenario.faults] == ["halves", "bridge"]
    if name == "crash-loss-1000":
        assert {f.kind for f in scenario.faults} == {"crash", "loss"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[sybil]\nfraction = 1.5", "sybil.fraction: a fraction"),
        ("[sybil]\nfraction = 0.5\nmode = 'warm'", "sybil.mode: one of cold, flash, eclipse"),
        ("nodes = 10\n[sybil]\nfraction = 1.0", "sybil.fraction: 10 Sybils"),
        ("duration = 100.0\n[sybil]\nfraction = 0.5\nmode = 'flash'\nturn_at = 100.0", "sybil.turn_at"),
        ("nodes = 1000\n[sybil]\nfraction = 0.8\nnetworks = 3", "sybil.networks: 800 Sybils need at least 4"),
        ("nodes = 10\n[names]\nclaims = 10", "names.claims: 0 .. nodes-1"),
        ("duration = 100.0\n[names]\nclaims = 1\nclaim_at = 100.0", "names.claim_at"),
        ("[expect]\nfork_proof_within = -1.0", "expect.fork_proof_within"),
        ("[expect]\nlive_within_30s = 2.0", "expect.live_within_30s: a fraction"),
    ],
)
def test_bad_reliability_fields_are_refused_by_name(text: str, field: str) -> None:
    with pytest.raises(ScenarioError, match=field.replace("(", r"\(").replace(")", r"\)")):
        Scenario.from_toml(text)


def test_the_new_tables_stay_out_of_the_echo_of_scenarios_without_them() -> None:
    doc = metrics_document(Result(Scenario.load("hostile"), {}, [], 0))
    assert "sybil" not in doc["scenario"] and "names" not in doc["scenario"]
    assert "fork_proof_within" not in doc["scenario"]["expect"]
    doc = metrics_document(Result(Scenario.load("sybil-flash-1000"), {}, [], 0))
    assert doc["scenario"]["sybil"]["turn_at"] == 300.0


# ============================================================ crashes and loss: live followers


CRASH: dict[str, Any] = {"workload": {"join_over": 10.0}}


@functools.cache
def crash_loss(broken: bool = False) -> Result:
    silent_authors = breaking(lambda core: setattr(core.replicator, "feed_appended", lambda feed, now: None))
    # The broken run is smaller: its share is checked against a fixed figure too.
    return run(scaled("crash-loss-1000", 24 if broken else 30, **CRASH), silent_authors if broken else None)


def test_crash_loss_scaled_down_meets_its_live_follower_goals() -> None:
    result = crash_loss()
    assert result.ok, result.violations
    live = result.metrics["reliability"]["live_followers_within"]
    assert live["30s"]["posts"] > 20 and live["120s"]["posts"] > 20
    assert live["30s"]["ratio"] >= 0.9 and live["120s"]["ratio"] >= live["30s"]["ratio"]
    # Live followers are fewer than the honest followers: the crashed third is not among them.
    assert live["30s"]["pairs"] < result.metrics["delivery"]["expected"]
    assert result.metrics["traffic"]["network"]["datagrams.lost"] > 0


def test_live_share_within_30s_drops_when_authors_stop_pushing() -> None:
    good, broken = crash_loss(), crash_loss(broken=True)
    live = broken.metrics["reliability"]["live_followers_within"]["30s"]
    assert live["posts"] > 20 and live["pairs"] > 50
    assert live["ratio"] < 0.5
    assert live["ratio"] < good.metrics["reliability"]["live_followers_within"]["30s"]["ratio"] - 0.2
    assert [v.oracle for v in broken.violations if v.oracle == "live delivery"]
    # The terminal summary names the figure and the oracles that ran.
    assert any(line.startswith("reliability: live followers within 30 s 100.00%") for line in summary(good))
    assert any("reliability: live delivery, delivery" in line for line in summary(good))


# ============================================================ partitions


def test_partitions_scaled_down_converge_after_the_last_heal() -> None:
    result = run(scaled("partitions-1000", 20, workload={"join_over": 10.0}))
    assert result.ok, result.violations
    m = result.metrics
    assert m["convergence"]["converged_after_s"] is not None
    assert m["convergence"]["converged_after_s"] <= result.scenario.converge_within
    assert m["traffic"]["network"]["datagrams.unreachable"] > 0
    # Posts made during a cut reach the far side only after the heal: late for the window.
    assert m["reliability"]["live_followers_within"]["30s"]["min_share"] < 1.0


# ============================================================ equivocation: fork proofs


EQUIVOCATION: dict[str, Any] = {
    "workload": {"join_over": 10.0, "follows": 6},
    "malicious": {"equivocators": 4},
}


@functools.cache
def equivocation(broken: bool = False) -> Result:
    mute = breaking(lambda core: setattr(core.replicator, "_fork_found", lambda feed, now: None))
    return run(
        scaled("equivocation-1000", 24 if broken else 30, 420.0, **EQUIVOCATION), mute if broken else None
    )


def test_every_honest_follower_holds_the_fork_proof_in_time() -> None:
    result = equivocation()
    assert result.ok, result.violations
    fork = result.metrics["reliability"]["fork_proof"]
    assert fork["equivocators"] >= 2 and fork["followers"] >= 8
    assert fork["held"] == fork["followers"]
    assert fork["all_held_after_s"] is not None
    assert fork["all_held_after_s"] <= result.scenario.expect.fork_proof_within


def test_fork_proof_oracle_fires_when_nodes_do_not_pass_the_proof_on() -> None:
    fork = equivocation(broken=True).metrics["reliability"]["fork_proof"]
    assert fork["equivocators"] >= 2 and fork["followers"] >= 8
    assert fork["held"] < fork["followers"] and fork["all_held_after_s"] is None
    assert "fork proof" in {v.oracle for v in equivocation(broken=True).violations}


# ============================================================ lying DHT: names and peer records


LYING: dict[str, Any] = {
    "workload": {"join_over": 10.0, "lookups_per_hour": 60.0},
    "names": {"claims": 3, "lookups_per_hour": 75.0},
}


@functools.cache
def lying(broken: bool = False) -> Result:
    roles: dict[int, str] = {}

    def no_claims(node: SimNode, rng: Random, now: float) -> NodeCore | None:
        core = make_core(roles.get(node.index), node, rng, now)  # the liars keep lying
        core.claim_name = lambda *args, **kwargs: 0  # type: ignore[method-assign]
        return core

    # The broken run is smaller and shorter: a name lookup there never finds a claim.
    scenario = scaled("lying-dht-1000", *((24, 180.0) if broken else (36, 300.0)), **LYING)
    sim = Simulation(scenario, hooks=Hooks(make_core=no_claims if broken else None))
    roles.update(sim.roles)
    return sim.run()


def test_lying_dht_scaled_down_returns_the_right_names_and_records() -> None:
    result = lying()
    assert result.ok, result.violations
    rel = result.metrics["reliability"]
    assert result.metrics["roles"] == {"dht_bogus": 4, "dht_forged": 4}
    assert rel["names"]["claimed"] == 3 and rel["names"]["lookups"] >= 100
    assert rel["names"]["ratio"] >= 0.95
    assert rel["peer_records"]["lookups"] >= 100 and rel["peer_records"]["ratio"] >= 0.9


def test_name_lookup_oracle_fires_when_the_claims_never_reach_the_dht() -> None:
    result = lying(broken=True)
    assert result.metrics["roles"] == {"dht_bogus": 2, "dht_forged": 2}  # the liars are there too
    names = result.metrics["reliability"]["names"]
    assert names["claimed"] == 3 and names["lookups"] >= 15 and names["ratio"] == 0.0
    assert "name lookup" in {v.oracle for v in result.violations}


# ============================================================ Sybils


def plan(sim: Simulation) -> SybilPlan:
    assert sim.sybil_plan is not None
    return sim.sybil_plan


def sybil_run(
    mode: str, nodes: int, duration: float, *, make: Any = None, lookups_per_hour: float = 60.0, **sybil: Any
) -> tuple[Simulation, Result]:
    scenario = scaled(
        f"sybil-{mode}-1000",
        nodes,
        duration,
        workload={
            "join_over": 10.0,
            "post_from": 20.0,
            "post_until": 0.0,
            "lookups_per_hour": lookups_per_hour,
        },
        sybil=sybil,
        converge_within=60.0,
    )
    sim = Simulation(scenario, hooks=Hooks(make_core=make))
    return sim, sim.run()


@functools.cache
def cold() -> tuple[Simulation, Result]:
    return sybil_run("cold", 24, 240.0, fraction=0.5, networks=2)


def test_cold_boot_sybils_lie_and_honest_nodes_still_deliver() -> None:
    sim, result = cold()
    assert result.ok, result.violations
    s = result.metrics["reliability"]["sybil"]
    assert s["sybils"] == 12 and s["lies"]["closer"] > 100 and s["lies"]["providers"] > 0
    # Two /24s for 12 Sybils; honest nodes keep their own.
    sybil_nets = {sim.nodes[i].addr[0].rsplit(".", 1)[0] for i in plan(sim).indices}
    assert sybil_nets == {"10.254.0", "10.254.1"}
    assert all(isinstance(sim.nodes[i].core, SybilCore) for i in plan(sim).indices)
    assert result.metrics["delivery"]["expected"] > 20 and result.metrics["delivery"]["ratio"] >= 0.95


@functools.cache
def flash() -> tuple[Simulation, Result]:
    return sybil_run("flash", 30, 240.0, fraction=0.5, networks=2, turn_at=120.0)


def test_flash_sybils_turn_at_once_and_are_measured_before_and_after() -> None:
    sim, result = flash()
    assert result.ok, result.violations
    s = result.metrics["reliability"]["sybil"]
    assert s["turn_at"] == 120.0 and s["lies"]["closer"] > 0
    assert s["delivery_before_turn"]["expected"] > 0 and s["delivery_after_turn"]["expected"] > 0
    assert s["delivery_after_turn"]["ratio"] >= 0.9
    turned = [sim.nodes[i].core for i in plan(sim).indices]
    assert all(isinstance(c, SybilCore) and isinstance(c.replicator.source, SilentFeeds) for c in turned)


def test_flash_sybils_are_honest_before_the_turn() -> None:
    _, result = sybil_run("flash", 20, 100.0, fraction=0.5, networks=2, turn_at=99.0)
    assert result.metrics["reliability"]["sybil"]["lies"] == {}


ECLIPSE: dict[str, Any] = {"fraction": 0.8, "networks": 1, "prefix_bits": 24}
# 60 nodes (fewer no longer show the eclipse without the defence); 90 s with twice the
# lookups of the other Sybil runs gives as many lookups of the victim as 150 s did.
ECLIPSE_RUN: dict[str, Any] = {"nodes": 60, "duration": 90.0, "lookups_per_hour": 120.0}


@functools.cache
def eclipse(defended: bool = True) -> Result:
    if defended:
        return sybil_run("eclipse", **ECLIPSE_RUN, **ECLIPSE)[1]
    with pytest.MonkeyPatch.context() as patch:
        for module in (dht.routing, dht.lookup):
            patch.setattr(module, "MAX_CLOSEST_PER_NETWORK", 1000)
        return sybil_run("eclipse", **ECLIPSE_RUN, **ECLIPSE)[1]


def test_eclipse_of_one_author_is_held_off_by_network_diversity() -> None:
    defended, open_ = eclipse(), eclipse(defended=False)
    s, t = defended.metrics["reliability"]["sybil"], open_.metrics["reliability"]["sybil"]
    assert s["victim_lookups"] >= 20 and t["victim_lookups"] >= 20 and s["lies"]["closer"] > 0
    # 48 Sybils from one /24 next to the victim's keys: with at most 2 per /24 among
    # the k closest, the victim's record is found; without that rule it mostly is not.
    assert s["victim_lookup_success"] >= 0.9
    assert t["victim_lookup_success"] < s["victim_lookup_success"] - 0.4


def test_victim_delivery_oracle_fires_when_the_victim_is_silenced() -> None:
    victims: list[int] = []

    def silenced(node: SimNode, rng: Random, now: float) -> NodeCore | None:
        if node.index not in victims:
            return None
        core = honest_core(node, rng, now)
        core.replicator.source = SilentFeeds(core.replicator.source, b"")
        return core

    scenario = scaled(
        "sybil-eclipse-1000",
        26,
        200.0,
        workload={
            "join_over": 10.0,
            "post_from": 20.0,
            "post_until": 0.0,
            "follows": 8,
            "posts_per_hour": 120.0,
        },
        sybil={"fraction": 0.3},
        converge_within=60.0,
    )
    sim = Simulation(scenario, hooks=Hooks(make_core=silenced))
    victims.extend(plan(sim).victims)
    result = sim.run()
    d = result.metrics["reliability"]["sybil"]["victim_delivery"]
    assert d["expected"] >= 20 and d["ratio"] < 0.5
    assert "victim delivery" in {v.oracle for v in result.violations}


def test_the_report_shows_each_figure(tmp_path: Path) -> None:
    texts = {}
    for name, result in (("flash", flash()[1]), ("equivocation", equivocation()), ("lying", lying())):
        write_run(result, tmp_path / name)
        texts[name] = (tmp_path / name / "report.md").read_text()
    assert all("## Reliability" in text and "| 30s |" in text for text in texts.values())
    assert "Delivery of posts after the turn" in texts["flash"] and "answers they changed: " in texts["flash"]
    assert "Fork proofs: 26 of 26 honest followers" in texts["equivocation"]
    assert "Name lookups that returned the claimant's claim" in texts["lying"]


def test_a_sybil_run_replays_byte_for_byte() -> None:
    def once() -> str:
        _, result = sybil_run("eclipse", 16, 50.0, fraction=0.5, networks=2)
        return json.dumps(metrics_document(result), sort_keys=True)

    first = once()
    assert '"lies"' in first and first == once()
