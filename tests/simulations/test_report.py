"""Simulation reports: valid, deterministic PNGs; the run directory; byte-identical metrics per seed; sweeps.

The runs are small (15 nodes, 180 simulated seconds, a loss window) and
shared by the module, so the whole file takes seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from simulations.network import Latency, LinkModel
from simulations.plot import PALETTE, SHADE, hops_plot, latency_cdf_plot, shares_plot, spread_plot
from simulations.report import better, metrics_document, summary, write_run, write_sweep
from simulations.scenario import Fault, Scenario, Workload
from simulations.simulation import Result, Violation, percentile, run_scenario

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = Scenario(
    name="report-test",
    nodes=15,
    duration=180.0,
    network=LinkModel(latency=Latency(kind="lognormal", median_ms=40.0, sigma=0.4)),
    workload=Workload(posts_per_hour=24.0, post_until=140.0),
    faults=(Fault("loss", at=80.0, duration=30.0, rate=0.2),),
    converge_within=30.0,
)
PLOT_NAMES = ["delivery_within.png", "latency_cdf.png", "hops.png"]


def read_png(path: Path) -> Image.Image:
    """Open a PNG that `simulations.plot` wrote: decoded in full, and made by matplotlib."""
    image = Image.open(path)
    image.load()  # decodes every pixel: a truncated or corrupt file raises here
    assert image.format == "PNG"
    assert str(image.info.get("Software", "")).startswith("Matplotlib version"), image.info
    return image


def leaf(metrics: dict[str, Any], path: str) -> float:
    value: Any = metrics
    for key in path.split("."):
        value = value[key]
    return float(value)


def has_color(image: Image.Image, color: str) -> bool:
    rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return any(c == rgb for _, c in colors)


# ============================================================ plot


def draw_shares(path: Path) -> Path:
    return shares_plot(
        path,
        [
            ("within 30 s", [(0.0, [1.0]), (10.0, [0.2, 0.4, 0.5]), (20.0, [1.0])]),
            ("by the end", [(0.0, [1.0])]),
        ],
        windows=[(8.0, 16.0, "loss"), (25.0, 25.0, "crash")],
        duration=30.0,
        bucket=10.0,
        title="Delivery within the deadline",
    )


def test_plots_are_valid_pngs_made_by_matplotlib(tmp_path: Path) -> None:
    image = read_png(draw_shares(tmp_path / "shares.png"))
    assert image.size == (800, 450)
    assert has_color(image, PALETTE[0]) and has_color(image, PALETTE[1]) and has_color(image, SHADE)
    cdf = read_png(latency_cdf_plot(tmp_path / "cdf.png", [("gossip", [0.05, 0.02, 1.5])], title="CDF"))
    assert cdf.size == (800, 450) and has_color(cdf, PALETTE[0]) and not has_color(cdf, PALETTE[1])
    hops = read_png(hops_plot(tmp_path / "hops.png", {"0": 2, "1": 7}, title="Hops"))
    assert hops.size == (800, 450) and has_color(hops, PALETTE[0])


def test_plots_are_deterministic(tmp_path: Path) -> None:
    first, second = draw_shares(tmp_path / "a.png"), draw_shares(tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    other = hops_plot(tmp_path / "c.png", {"1": 3}, title="t")
    assert other.read_bytes() != first.read_bytes()


def test_plots_survive_degenerate_data(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"windows": [], "duration": 10.0, "bucket": 1.0, "title": "T"}
    cases = [
        shares_plot(tmp_path / "empty.png", [], **kwargs),
        shares_plot(tmp_path / "no-points.png", [("a", [])], **kwargs),
        shares_plot(tmp_path / "no-values.png", [("a", [(1.0, [])])], **kwargs),
        latency_cdf_plot(tmp_path / "no-samples.png", [("a", [])], title="T"),
        latency_cdf_plot(tmp_path / "zero-nan.png", [("a", [0.0, float("nan"), float("inf")])], title="T"),
        hops_plot(tmp_path / "no-bars.png", {}, title="T"),
        spread_plot(tmp_path / "no-panels.png", [], seeds=[], title="T"),
        spread_plot(tmp_path / "nulls.png", [("x", [None, None])], seeds=[1, 2], title="T"),
    ]
    for path in cases:
        assert read_png(path).size[0] >= 800, path.name


# ============================================================ one run


@pytest.fixture(scope="module")
def runs() -> dict[int, Result]:
    return {seed: run_scenario(dataclasses.replace(SCENARIO, seed=seed)) for seed in (1, 2, 3)}


def test_write_run_writes_metrics_report_and_plots(tmp_path: Path, runs: dict[int, Result]) -> None:
    result = runs[1]
    written = write_run(result, tmp_path / "out" / "seed-1")
    assert [p.name for p in written] == ["metrics.json", "report.md", "latencies.csv", *PLOT_NAMES]
    assert all(p.parent == tmp_path / "out" / "seed-1" and p.stat().st_size > 0 for p in written)
    doc = json.loads(written[0].read_text())
    assert doc == json.loads(json.dumps(metrics_document(result)))
    assert doc["seed"] == 1 and doc["scenario"]["faults"][0]["kind"] == "loss"
    assert doc["oracles"] == {"ok": result.ok, "violations": []}
    assert doc["metrics"]["delivery"]["ratio"] == result.metrics["delivery"]["ratio"]
    report = written[1].read_text()
    for needle in [
        "# Simulation report: report-test",
        "- **Seed**: 1",
        "extra loss 20% 80-110 s",
        "## Oracles",
    ]:
        assert needle in report
    for section in ["Delivery", "Amplification", "Traffic", "DHT", "Convergence", "Refused input", "Plots"]:
        assert f"## {section}" in report
    lines = report.splitlines()
    for name in PLOT_NAMES:  # each figure embedded, then a caption in italics that says what it shows
        at = next(i for i, line in enumerate(lines) if line.startswith("![") and line.endswith(f"]({name})"))
        assert lines[at + 1] == "" and lines[at + 2].startswith("*") and lines[at + 2].endswith("*")
    assert "within 30 s and within 120 s" in report and "fault windows" in report
    for path in written[3:]:
        assert read_png(path).size == (800, 450)
    # latencies.csv: every delivery, the very samples the latency percentiles come from.
    header, *rows = written[2].read_text().splitlines()
    samples = [float(row) for row in rows]
    assert header == "latency_s" and samples == result.latencies
    assert len(samples) == result.metrics["delivery"]["delivered"] > 0
    for q in ("p50", "p90", "p99"):
        assert percentile(samples, float(q[1:])) == result.metrics["delivery"]["latency_s"][q]


def test_metrics_json_is_byte_identical_for_one_seed(tmp_path: Path, runs: dict[int, Result]) -> None:
    """Same scenario + seed + code: the same bytes, in this process and in another with other hash seeds."""
    write_run(runs[1], tmp_path / "a")
    write_run(run_scenario(dataclasses.replace(SCENARIO, seed=1)), tmp_path / "b")
    names = ["metrics.json", "report.md", "latencies.csv", *PLOT_NAMES]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    script = (
        "import dataclasses, sys; from pathlib import Path; "
        "from tests.simulations.test_report import SCENARIO; "
        "from simulations.simulation import run_scenario; from simulations.report import write_run; "
        "write_run(run_scenario(dataclasses.replace(SCENARIO, seed=1)), Path(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")], cwd=ROOT, env=env, check=True, timeout=120
    )
    for name in names:  # the figures too: same data, same matplotlib, same bytes
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    write_run(runs[2], tmp_path / "seed-2")
    assert (tmp_path / "seed-2" / "metrics.json").read_bytes() != (
        tmp_path / "a" / "metrics.json"
    ).read_bytes()


def test_summary_names_seed_delivery_and_oracles(runs: dict[int, Result]) -> None:
    lines = summary(runs[1])
    assert 4 <= len(lines) <= 8
    assert "seed 1" in lines[0]
    delivery = next(line for line in lines if line.startswith("delivery "))
    assert "p99" in delivery and "within 30 s" in delivery and "within 120 s" in delivery
    assert lines[-1].startswith("oracles: ok")
    broken = dataclasses.replace(
        runs[1],
        violations=[Violation("prefix", 95.5, "nodes 3 and 4 disagree"), Violation("validity", 99, "x")],
    )
    assert summary(broken)[-1] == "oracles: 2 violation(s); first at t=95.5 s [prefix] nodes 3 and 4 disagree"


def test_report_sets_a_comparison_side_by_side(tmp_path: Path, runs: dict[int, Result]) -> None:
    gossip, flood = runs[1].metrics, runs[2].metrics
    result = dataclasses.replace(
        runs[1], compare={"flood": flood}, compare_latencies={"flood": runs[2].latencies}
    )
    write_run(result, tmp_path)
    report = (tmp_path / "report.md").read_text()
    ours, theirs = (m["amplification"]["duplicates_per_delivery"] for m in (gossip, flood))
    assert f"| duplicates per delivery | {ours:.3f} | {theirs:.3f} | x{theirs / ours:.2f} |" in report
    bytes_ratio = flood["traffic"]["bytes_total"] / gossip["traffic"]["bytes_total"]
    assert any(
        line.startswith("| bytes sent |") and f"x{bytes_ratio:.2f}" in line for line in report.splitlines()
    )
    assert any(line.startswith("flood: ") for line in summary(result))
    assert has_color(read_png(tmp_path / "latency_cdf.png"), PALETTE[1])  # a second curve
    assert (tmp_path / "latencies-flood.csv").read_text().splitlines()[1:] == [
        repr(v) for v in runs[2].latencies
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["compare"]["flood"] == json.loads(
        json.dumps(flood)
    )


# ============================================================ sweeps


def test_write_sweep_aggregates_seeds(tmp_path: Path, runs: dict[int, Result]) -> None:
    failing = dataclasses.replace(runs[2], violations=[Violation("convergence", 170.0, "node 4 behind")])
    results = [runs[3], failing, runs[1]]  # any order: the sweep sorts by seed
    written = write_sweep(results, tmp_path)
    assert [p.name for p in written] == ["sweep.json", "sweep.md", "sweep_spread.png", "sweep_within.png"]
    assert all(read_png(p).size[0] >= 800 for p in written[2:])
    doc = json.loads(written[0].read_text())
    assert doc["seeds"] == [1, 2, 3] and "seed" not in doc["scenario"]
    by_seed = [runs[1], failing, runs[3]]
    for path, higher_is_worse in [
        ("delivery.latency_s.p99", True),
        ("traffic.bytes_total", True),
        ("delivery.ratio", False),
    ]:
        values = [leaf(r.metrics, path) for r in by_seed]
        worst = max(values) if higher_is_worse else min(values)
        agg = doc["metrics"][path]
        assert agg["values"] == values
        assert agg["p50"] == sorted(values)[1]  # nearest rank, 3 seeds: the middle one
        assert agg["p99"] == max(values)
        assert agg["worst"] == worst
        expected_seed = None if len(set(values)) == 1 else [1, 2, 3][values.index(worst)]  # ties: lowest
        assert agg["worst_seed"] == expected_seed
    assert doc["metrics"]["oracles.violations"] == {
        "p50": 0, "p99": 1, "min": 0, "max": 1, "worst": 1, "worst_seed": 2, "worse": "higher",
        "values": [0, 1, 0],
    }  # fmt: skip
    assert not any(key.endswith(("latency_cdf", "over_time", "fault_windows")) for key in doc["metrics"])
    assert doc["violations"] == [
        {"seed": 2, "count": 1, "first": {"oracle": "convergence", "time": 170.0, "detail": "node 4 behind"}}
    ]
    markdown = written[1].read_text()
    assert (
        "**FAILED** on 1 of 3 seeds" in markdown
        and "| 2 | 1 | 170 | convergence | node 4 behind |" in markdown
    )
    again = write_sweep(list(reversed(results)), tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_sweep_worst_rule_nulls_and_absent_counters(tmp_path: Path, runs: dict[int, Result]) -> None:
    """A null (never converged) is the worst value; a counter absent from a run is 0."""
    results = []
    for seed, ratio, converged, refused in [(1, 0.9, 3.0, {}), (2, 0.8, None, {}), (3, 0.8, 1.0, {"bad": 2})]:
        metrics = copy.deepcopy(runs[1].metrics)
        metrics["delivery"]["ratio"] = ratio
        metrics["convergence"]["converged_after_s"] = converged
        metrics["refused"] = refused
        results.append(
            dataclasses.replace(runs[1], scenario=dataclasses.replace(SCENARIO, seed=seed), metrics=metrics)
        )
    metrics = json.loads(write_sweep(results, tmp_path)[0].read_text())["metrics"]
    assert metrics["delivery.ratio"] | {"values": None} == {
        "p50": 0.8, "p99": 0.9, "min": 0.8, "max": 0.9, "worst": 0.8, "worst_seed": 2, "worse": "lower",
        "values": None,
    }  # fmt: skip
    converged = metrics["convergence.converged_after_s"]
    assert (converged["p50"], converged["p99"], converged["worst"], converged["worst_seed"]) == (
        3.0,
        None,
        None,
        2,
    )
    assert metrics["refused.bad"]["values"] == [0, 0, 2] and metrics["refused.bad"]["worst_seed"] == 3


def test_write_sweep_refuses_mixed_scenarios(tmp_path: Path, runs: dict[int, Result]) -> None:
    other = dataclasses.replace(runs[2], scenario=dataclasses.replace(runs[2].scenario, nodes=16))
    with pytest.raises(ValueError, match="one scenario"):
        write_sweep([runs[1], other], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        write_sweep([], tmp_path)


def test_sweep_names_no_worst_seed_for_a_count_when_every_ratio_is_one(
    tmp_path: Path, runs: dict[int, Result]
) -> None:
    """Seeds that all deliver everything differ only in how much there was to deliver: no seed is worst."""
    results = []
    for seed, posts, expected in [(1, 10, 40), (2, 12, 48), (3, 9, 36)]:
        metrics = copy.deepcopy(runs[1].metrics)
        metrics["posts"] = posts
        metrics["delivery"] |= {"expected": expected, "delivered": expected, "ratio": 1.0, "within_30s": 1.0}
        results.append(
            dataclasses.replace(runs[1], scenario=dataclasses.replace(SCENARIO, seed=seed), metrics=metrics)
        )
    written = write_sweep(results, tmp_path)
    metrics = json.loads(written[0].read_text())["metrics"]
    for count in ("posts", "delivery.expected", "delivery.delivered", "dht.lookups", "events"):
        agg = metrics[count]
        assert (agg["worst"], agg["worst_seed"], agg["worse"]) == (None, None, None), count
    assert (metrics["posts"]["min"], metrics["posts"]["max"]) == (9, 12)
    for ratio in ("delivery.ratio", "delivery.within_30s"):
        assert (metrics[ratio]["worst"], metrics[ratio]["worst_seed"], metrics[ratio]["worse"]) == (
            1.0,
            None,
            "lower",
        )
    rows = {
        line.split(" | ")[0][2:]: line
        for line in written[1].read_text().splitlines()
        if line.startswith("| ")
    }
    assert rows["posts"] == "| posts |  | 10 | 12 | 9 | 12 | — (a count) |"
    assert rows["delivery.expected"].endswith("| — (a count) |")
    assert rows["delivery.ratio"] == "| delivery.ratio | higher | 1 | 1 | 1 | 1 | all equal |"
    # And the direction is chosen per metric: lower is better for latency and bytes, higher for shares.
    assert (better("delivery.latency_s.p99"), better("traffic.bytes_total")) == ("lower", "lower")
    assert (better("delivery.within_120s"), better("compare.flood.dht.success_ratio")) == ("higher", "higher")
    assert better("delivery.within.30.expected") is None
