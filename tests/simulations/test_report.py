"""Simulation reports: valid, deterministic PNGs; the run directory; byte-identical metrics per seed; sweeps.

The runs are small (15 nodes, 180 simulated seconds, a loss window) and
shared by the module, so the whole file takes seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from simulations.network import Latency, LinkModel
from simulations.plot import PALETTE, PNG_SIGNATURE, SHADE, Color, bar_plot, line_plot
from simulations.report import metrics_document, summary, write_run, write_sweep
from simulations.scenario import Fault, Scenario, Workload
from simulations.simulation import Result, Violation, run_scenario

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
PLOT_NAMES = ["latency_cdf.png", "delivery_over_time.png", "hops.png"]


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Check a PNG's structure (signature, chunk CRCs, 8-bit RGB, filter 0); return width, height, rows."""
    assert data[:8] == PNG_SIGNATURE
    chunks: list[tuple[bytes, bytes]] = []
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride  # every pixel is there, and nothing else
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def leaf(metrics: dict[str, Any], path: str) -> float:
    value: Any = metrics
    for key in path.split("."):
        value = value[key]
    return float(value)


def has_color(rows: list[bytes], color: Color) -> bool:
    pixel = bytes(color)
    return any(row[i : i + 3] == pixel for row in rows for i in range(0, len(row), 3))


# ============================================================ plot


def draw_line(path: Path) -> Path:
    return line_plot(
        path,
        [("gossip", [(0.02, 0.01), (0.05, 0.5), (1.5, 1.0)]), ("flood", [(0.01, 0.01), (0.9, 1.0)])],
        title="Delivery latency CDF",
        xlabel="latency (s)",
        ylabel="fraction",
        shaded=[(0.03, 0.04, "loss"), (0.5, 0.5, "crash")],
        ylim=(0.0, 1.0),
        xlog=True,
    )


def test_plots_are_valid_pngs_with_every_pixel(tmp_path: Path) -> None:
    width, height, rows = read_png(draw_line(tmp_path / "line.png").read_bytes())
    assert (width, height) == (720, 440) and len(rows) == height
    assert has_color(rows, PALETTE[0]) and has_color(rows, PALETTE[1]) and has_color(rows, SHADE)
    bars = bar_plot(tmp_path / "bars.png", [("0", 2.0), ("1", 7.0)], title="Hops", xlabel="hops", ylabel="n")
    width, height, rows = read_png(bars.read_bytes())
    assert (width, height) == (720, 440) and has_color(rows, PALETTE[0])


def test_plots_are_deterministic(tmp_path: Path) -> None:
    first, second = draw_line(tmp_path / "a.png"), draw_line(tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    other = line_plot(
        tmp_path / "c.png", [("x", [(1.0, 2.0), (2.0, 1.0)])], title="t", xlabel="x", ylabel="y"
    )
    assert other.read_bytes() != first.read_bytes()


def test_plots_survive_degenerate_data(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"title": "T", "xlabel": "x", "ylabel": "y"}
    cases = [
        line_plot(tmp_path / "empty.png", [], **kwargs),
        line_plot(tmp_path / "no-points.png", [("a", [])], **kwargs),
        line_plot(tmp_path / "one.png", [("a", [(5.0, 0.0)])], **kwargs),
        line_plot(tmp_path / "log-zero.png", [("a", [(0.0, 0.0), (0.0, 1.0)])], xlog=True, **kwargs),
        line_plot(tmp_path / "nan.png", [("a", [(float("nan"), 1.0), (1.0, float("inf"))])], **kwargs),
        bar_plot(tmp_path / "no-bars.png", [], **kwargs),
        bar_plot(tmp_path / "zero-bars.png", [("0", 0.0), ("1", 0.0)], **kwargs),
    ]
    for path in cases:
        assert read_png(path.read_bytes())[:2] == (720, 440), path.name


# ============================================================ one run


@pytest.fixture(scope="module")
def runs() -> dict[int, Result]:
    return {seed: run_scenario(dataclasses.replace(SCENARIO, seed=seed)) for seed in (1, 2, 3)}


def test_write_run_writes_metrics_report_and_plots(tmp_path: Path, runs: dict[int, Result]) -> None:
    result = runs[1]
    written = write_run(result, tmp_path / "out" / "seed-1")
    assert [p.name for p in written] == ["metrics.json", "report.md", *PLOT_NAMES]
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
    assert all(f"]({name})" in report for name in PLOT_NAMES)
    for path in written[2:]:
        assert read_png(path.read_bytes())[:2] == (720, 440)


def test_metrics_json_is_byte_identical_for_one_seed(tmp_path: Path, runs: dict[int, Result]) -> None:
    """Same scenario + seed + code: the same bytes, in this process and in another with other hash seeds."""
    write_run(runs[1], tmp_path / "a")
    write_run(run_scenario(dataclasses.replace(SCENARIO, seed=1)), tmp_path / "b")
    for name in ["metrics.json", "report.md", *PLOT_NAMES]:
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
    assert (tmp_path / "c" / "metrics.json").read_bytes() == (tmp_path / "a" / "metrics.json").read_bytes()
    write_run(runs[2], tmp_path / "seed-2")
    assert (tmp_path / "seed-2" / "metrics.json").read_bytes() != (
        tmp_path / "a" / "metrics.json"
    ).read_bytes()


def test_summary_names_seed_delivery_and_oracles(runs: dict[int, Result]) -> None:
    lines = summary(runs[1])
    assert 4 <= len(lines) <= 8
    assert "seed 1" in lines[0]
    assert any(line.startswith("delivery ") and "p99" in line for line in lines)
    assert lines[-1].startswith("oracles: ok")
    broken = dataclasses.replace(
        runs[1],
        violations=[Violation("prefix", 95.5, "nodes 3 and 4 disagree"), Violation("validity", 99, "x")],
    )
    assert summary(broken)[-1] == "oracles: 2 violation(s); first at t=95.5 s [prefix] nodes 3 and 4 disagree"


def test_report_sets_a_comparison_side_by_side(tmp_path: Path, runs: dict[int, Result]) -> None:
    gossip, flood = runs[1].metrics, runs[2].metrics
    result = dataclasses.replace(runs[1], compare={"flood": flood})
    write_run(result, tmp_path)
    report = (tmp_path / "report.md").read_text()
    ours, theirs = (m["amplification"]["duplicates_per_delivery"] for m in (gossip, flood))
    assert f"| duplicates per delivery | {ours:.3f} | {theirs:.3f} | x{theirs / ours:.2f} |" in report
    bytes_ratio = flood["traffic"]["bytes_total"] / gossip["traffic"]["bytes_total"]
    assert any(
        line.startswith("| bytes sent |") and f"x{bytes_ratio:.2f}" in line for line in report.splitlines()
    )
    assert any(line.startswith("flood: ") for line in summary(result))
    assert has_color(read_png((tmp_path / "latency_cdf.png").read_bytes())[2], PALETTE[1])  # a second curve
    assert json.loads((tmp_path / "metrics.json").read_text())["compare"]["flood"] == json.loads(
        json.dumps(flood)
    )


# ============================================================ sweeps


def test_write_sweep_aggregates_seeds(tmp_path: Path, runs: dict[int, Result]) -> None:
    failing = dataclasses.replace(runs[2], violations=[Violation("convergence", 170.0, "node 4 behind")])
    results = [runs[3], failing, runs[1]]  # any order: the sweep sorts by seed
    written = write_sweep(results, tmp_path)
    assert [p.name for p in written] == ["sweep.json", "sweep.md"]
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
        "p50": 0, "p99": 1, "worst": 1, "worst_seed": 2, "worse": "higher", "values": [0, 1, 0]
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
        "p50": 0.8, "p99": 0.9, "worst": 0.8, "worst_seed": 2, "worse": "lower", "values": None
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
