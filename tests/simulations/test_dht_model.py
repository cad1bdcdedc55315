"""The DHT model and the fidelity switch (issue 17): the model agrees with the full DHT.

The calibration test runs ``baseline`` at 200 nodes twice, once with the real
DHT over simulated datagrams and once with the model, and fails when what a
researcher reads off the two drifts apart beyond the tolerances below (the
issue's uncalibrated prototype held 19.6 connections per node instead of 12.9,
and 0.70 duplicates per delivery instead of 0.16; this model before its
`holders` calibration, 0.47 instead of 0.27: all outside them).  The other
tests check what the model must keep: same seed, same bytes; no DHT datagram
on the wire; faults (crashes, partitions) seen through the global view; the
switch's defaults and its refusal of adversarial-DHT scenarios.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulations.dhtmodel import ModelDht
from simulations.report import metrics_document
from simulations.scenario import MODEL_FROM_NODES, Scenario, ScenarioError
from simulations.simulation import Simulation
from tests.process import p2pblog

#: The comparison run: every node joins, follows, searches and replicates (a seed the
#: calibration runs did not use).
NODES = 200
DURATION = 300.0
SEED = 2
#: Tolerances: (full, model) -> within.  Relative ones are shares of the full run's value.
DELIVERY_ABS = 0.02
LATENCY_P50_REL = 0.25
LATENCY_P99_REL = 0.5
DUPLICATES_ABS = 0.18
CONNECTIONS_REL = 0.15
PROVIDERS_REL = 0.2
WALK_MEDIAN_REL = 0.25
DHT_BYTES_REL = 0.2


def run(scenario: Scenario) -> tuple[Simulation, dict[str, Any]]:
    sim = Simulation(scenario)
    result = sim.run()
    assert result.ok, result.violations[:3]
    return sim, result.metrics


def close(full: float, model: float, rel: float) -> bool:
    return abs(full - model) <= rel * abs(full)


@pytest.fixture(scope="module")
def pair() -> dict[str, dict[str, Any]]:
    base = Scenario.load("baseline").with_overrides(nodes=NODES, duration=DURATION, seed=SEED)
    return {mode: run(base.with_overrides(dht=mode))[1] for mode in ("full", "model")}


def test_the_model_agrees_with_the_full_dht(pair: dict[str, dict[str, Any]]) -> None:
    full, model = pair["full"], pair["model"]
    assert full["dht"]["fidelity"] == "full" and model["dht"]["fidelity"] == "model"
    drift = []

    def check(name: str, ok: bool, a: Any, b: Any) -> None:
        if not ok:
            drift.append(f"{name}: full {a} vs model {b}")

    fd, md = full["delivery"], model["delivery"]
    check("delivery ratio", abs(fd["ratio"] - md["ratio"]) <= DELIVERY_ABS, fd["ratio"], md["ratio"])
    for q, rel in (("p50", LATENCY_P50_REL), ("p99", LATENCY_P99_REL)):
        a, b = fd["latency_s"][q], md["latency_s"][q]
        check(f"latency {q}", close(a, b, rel), a, b)
    a, b = (m["amplification"]["duplicates_per_delivery"] for m in (full, model))
    check("duplicates per delivery", abs(a - b) <= DUPLICATES_ABS, a, b)
    a, b = full["connections_per_node"], model["connections_per_node"]
    check("connections per node", close(a, b, CONNECTIONS_REL), a, b)
    a, b = (m["dht"]["providers_per_search"]["mean"] for m in (full, model))
    check("providers per search", close(a, b, PROVIDERS_REL), a, b)
    for kind in ("get", "providers", "add_provider", "bootstrap"):
        a, b = (m["dht"]["walk_s"][kind]["p50"] for m in (full, model))
        check(f"{kind} walk median", close(a, b, WALK_MEDIAN_REL), a, b)
    a, b = full["dht"]["bytes_per_node"], model["dht"]["bytes_per_node"]
    check("DHT bytes per node", close(a, b, DHT_BYTES_REL), a, b)
    assert not drift, (
        "the model drifted from the full DHT (recalibrate: p2pblog sim calibrate): " + "; ".join(drift)
    )


def test_a_model_run_sends_no_dht_datagram_and_replays_byte_identically() -> None:
    scenario = Scenario.load("baseline").with_overrides(nodes=60, duration=240.0, dht="model")
    documents = []
    for _ in range(2):
        sim = Simulation(scenario)
        sent: list[object] = []
        real_send = sim.network.send_datagram

        def send(*args: Any, sent: list[object] = sent, real: Any = real_send, **kw: Any) -> None:
            sent.append(args)
            real(*args, **kw)

        sim.network.send_datagram = send  # type: ignore[method-assign]
        result = sim.run()
        assert result.ok
        assert sent == []  # no UDP at all: every DHT query was modelled ...
        assert all(isinstance(n.core.dht, ModelDht) for n in sim.nodes if n.core is not None)
        assert result.metrics["dht"]["bytes_per_node"] > 0  # ... and its bytes accounted
        assert result.metrics["delivery"]["ratio"] == 1.0
        documents.append(json.dumps(metrics_document(result), sort_keys=True))
    assert documents[0] == documents[1]


FAULTY = """\
name = "model-faults"
nodes = 40
duration = 600.0
converge_within = 120.0
dht = "model"

[workload]
follows = 4
posts_per_hour = 30.0
post_until = 420.0

[[faults]]
kind = "partition"
at = 120.0
duration = 120.0

[[faults]]
kind = "crash"
at = 150.0
fraction = 0.2
restart_after = 150.0
"""


def test_the_oracles_hold_through_a_partition_and_crashes_in_model_mode() -> None:
    sim = Simulation(Scenario.from_toml(FAULTY))
    result = sim.run()
    assert result.ok, result.violations[:3]
    assert result.metrics["dht"]["fidelity"] == "model"
    assert result.metrics["delivery"]["ratio"] == 1.0
    assert result.metrics["convergence"]["converged_after_s"] is not None


def test_the_view_hides_the_far_side_of_a_partition_and_forgets_crashed_nodes_at_expiry() -> None:
    scenario = Scenario.load("baseline").with_overrides(nodes=20, duration=120.0, dht="model")
    sim = Simulation(scenario)
    sim.run()
    view = sim.dht_view
    assert view is not None
    # A feed key several nodes provide: its author and its followers.
    key, providers = max(view.providers.items(), key=lambda item: len(item[1]))
    publishers = sorted({p.publisher for p in providers.values()})
    asker = next(i for i in range(scenario.nodes) if i not in publishers)
    now = sim.engine.now + 1.0
    assert len(view.provider_values(key, asker, now)) == len(publishers)
    far = publishers[: len(publishers) // 2 or 1]
    sim.network.set_partition([[i for i in range(scenario.nodes) if i not in far], far])
    assert len(view.provider_values(key, asker, now)) == len(publishers) - len(far)
    sim.network.set_partition(None)
    # A crashed node's announcement is kept by the holders until it expires, then gone.
    crashed = publishers[0]
    sim.nodes[crashed].crash()
    expires = next(p.expires_at for p in providers.values() if p.publisher == crashed)
    assert expires > now + 3600  # announcements live for hours (PROVIDER_TTL)

    def crashed_seen(at: float) -> bool:
        return any(providers[pid].publisher == crashed for pid, _, _ in view.provider_values(key, asker, at))

    assert crashed_seen(expires - 1.0)
    assert not crashed_seen(expires + 1.0)


def test_the_fidelity_default_depends_on_the_node_count_and_the_adversary() -> None:
    base = Scenario.load("baseline")
    assert base.with_overrides(nodes=MODEL_FROM_NODES - 1).dht_fidelity == "full"
    assert base.with_overrides(nodes=MODEL_FROM_NODES).dht_fidelity == "model"
    assert base.with_overrides(nodes=MODEL_FROM_NODES, dht="full").dht_fidelity == "full"
    assert base.with_overrides(nodes=10, dht="model").dht_fidelity == "model"
    hostile = Scenario.load("sybil-dht").with_overrides(nodes=MODEL_FROM_NODES)
    assert hostile.adversarial_dht and hostile.dht_fidelity == "full"
    with pytest.raises(ScenarioError, match="dht: 'model' cannot run an adversarial-DHT scenario"):
        hostile.with_overrides(dht="model")
    with pytest.raises(ScenarioError, match="adversarial-DHT"):
        Scenario.from_toml('dht = "model"\nduration = 60.0\n[[attacks]]\nkind = "censor"\nat = 10.0\n')
    with pytest.raises(ScenarioError, match="dht: 'auto', 'full' or 'model'"):
        Scenario.from_toml('dht = "fast"\n')


def test_the_command_line_switch_and_the_reports_say_which_fidelity_ran(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = p2pblog(
        None,
        "sim",
        "run",
        "baseline",
        "--nodes",
        "20",
        "--duration",
        "90",
        "--dht",
        "model",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "DHT model" in result.stdout
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["scenario"]["dht"] == "model" and doc["metrics"]["dht"]["fidelity"] == "model"
    assert "**DHT fidelity**: model" in (out / "report.md").read_text()
    refused = p2pblog(None, "sim", "run", "sybil-dht", "--dht", "model", "--out", str(tmp_path / "x"))
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "adversarial-DHT" in errors[0] and "--dht model" in errors[0]
