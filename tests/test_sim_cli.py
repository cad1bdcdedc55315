"""``p2pblog sim`` driven as a user would: the real CLI in a subprocess, small scenarios.

Covers the simulator issue's command-line contract: ``sim list``, ``sim run``
(outputs, the seed, byte-identical metrics.json on a rerun, an oracle
violation exits non-zero naming the seed), ``sim sweep`` (aggregate and
per-seed outputs, the violating seeds listed) and one ``Error:`` line for a
scenario the user got wrong.  Scenarios are shrunk with --nodes/--duration
to keep the file to a few seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click
import pytest

from cli.sim import parse_seeds
from tests.process import p2pblog

#: A legitimate convergence failure: the partition heals at the very deadline
#: (converge_within = 0, posting stops when it heals), so followers on the far
#: side of the cut cannot hold what their authors posted during it.
PARTITIONED_AT_DEADLINE = """\
name = "partitioned-at-deadline"
description = "Heals exactly at the convergence deadline: the far side must lag."
nodes = 12
duration = 120.0
converge_within = 0.0

[workload]
follows = 4
posts_per_hour = 360.0
post_from = 30.0
post_until = 90.0

[[faults]]
kind = "partition"
at = 40.0
duration = 50.0
"""


def assert_one_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def test_list_names_every_bundled_scenario_with_its_description() -> None:
    result = p2pblog(None, "sim", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines]
    assert "baseline" in names
    assert names == sorted(names)
    baseline = lines[names.index("baseline")]
    assert "fault-free" in baseline  # the scenario's description


def test_run_writes_the_outputs_and_prints_the_seed(tmp_path: Path) -> None:
    result = p2pblog(
        None, "sim", "run", "baseline", "--nodes", "12", "--duration", "150", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "seed 1" in result.stdout  # the scenario's seed, which reproduces the run
    assert "events/s" in result.stderr  # progress goes to stderr ...
    assert "events/s" not in result.stdout  # ... and only there
    assert json.loads((tmp_path / "metrics.json").read_text())["seed"] == 1
    assert (tmp_path / "report.md").is_file()
    assert list(tmp_path.glob("*.png"))


def test_a_rerun_writes_a_byte_identical_metrics_file(tmp_path: Path) -> None:
    # Each run in its own process with its own hash seed: a result that
    # depends on the iteration order of a set or dict of bytes or str keys
    # (randomised per process) fails here every time.  20 nodes for 200 s is
    # about the smallest run in which such orders reach the metrics.
    files = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        args = ("sim", "run", "baseline", "--nodes", "20", "--duration", "200", "--out", str(out))
        result = p2pblog(None, *args, env={"PYTHONHASHSEED": hash_seed})
        assert result.returncode == 0, result.stderr
        files.append((out / "metrics.json").read_bytes())
    assert files[0] == files[1]


def test_seed_option_changes_the_run(tmp_path: Path) -> None:
    result = p2pblog(
        None,
        "sim",
        "run",
        "baseline",
        "--seed",
        "7",
        "--nodes",
        "10",
        "--duration",
        "100",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "seed 7" in result.stdout


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('description = "x"\nnodez = 12\n', "nodez: unknown field"),
        ("nodes = 12\n[workload]\nfollows = 3.5\n", "workload.follows"),
        ("nodes = [12\n", "not valid TOML"),
        ("nodes = 1\n", "nodes"),
    ],
    ids=["unknown-field", "mistyped-field", "bad-toml", "out-of-range"],
)
def test_a_bad_scenario_file_is_one_error_line(tmp_path: Path, toml: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    result = p2pblog(None, "sim", "run", str(path), "--out", str(tmp_path / "out"))
    assert_one_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_an_unknown_scenario_is_one_error_line(tmp_path: Path) -> None:
    assert_one_error(p2pblog(None, "sim", "run", "no-such-scenario"), "no-such-scenario", "baseline")
    assert_one_error(p2pblog(None, "sim", "run", str(tmp_path / "missing.toml")), "missing.toml")
    assert_one_error(p2pblog(None, "sim", "sweep", "no-such-scenario", "--seeds", "1..2"), "no-such-scenario")


def test_an_unwritable_out_directory_fails_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = p2pblog(None, "sim", "run", "baseline", "--nodes", "200", "--out", str(blocker / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot write to {blocker / 'out'}")
    assert "sim " not in result.stderr  # no progress: nothing was simulated


def test_an_override_out_of_range_is_one_error_line() -> None:
    assert_one_error(p2pblog(None, "sim", "run", "baseline", "--nodes", "1"), "nodes")
    assert_one_error(p2pblog(None, "sim", "run", "baseline", "--duration", "0"), "duration")


def test_an_oracle_violation_exits_non_zero_naming_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "partitioned.toml"
    path.write_text(PARTITIONED_AT_DEADLINE)
    out = tmp_path / "out"
    result = p2pblog(None, "sim", "run", str(path), "--seed", "3", "--out", str(out))
    assert_one_error(result, "seed 3", "convergence")
    assert (out / "metrics.json").is_file()  # the reports are written all the same


def test_sweep_writes_the_aggregate_and_every_seed(tmp_path: Path) -> None:
    result = p2pblog(
        None,
        "sim",
        "sweep",
        "baseline",
        "--seeds",
        "1..3",
        "--jobs",
        "2",
        "--nodes",
        "10",
        "--duration",
        "120",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sweep.json").is_file()
    assert (tmp_path / "sweep.md").is_file()
    for seed in (1, 2, 3):
        assert (tmp_path / f"seed-{seed}" / "metrics.json").is_file()
        assert f"seed {seed}  ok" in result.stderr  # one progress line per finished seed
    assert not (tmp_path / "seed-4").exists()


def test_sweep_matches_run_for_the_same_seed(tmp_path: Path) -> None:
    common = ("--nodes", "10", "--duration", "100")
    swept = p2pblog(
        None, "sim", "sweep", "baseline", "--seeds", "2", "--jobs", "1", *common, "--out", str(tmp_path / "s")
    )
    assert swept.returncode == 0, swept.stderr
    ran = p2pblog(None, "sim", "run", "baseline", "--seed", "2", *common, "--out", str(tmp_path / "r"))
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "s" / "seed-2" / "metrics.json").read_bytes() == (
        tmp_path / "r" / "metrics.json"
    ).read_bytes()


def test_sweep_lists_the_seeds_that_violated_an_oracle(tmp_path: Path) -> None:
    path = tmp_path / "partitioned.toml"
    path.write_text(PARTITIONED_AT_DEADLINE)
    result = p2pblog(
        None, "sim", "sweep", str(path), "--seeds", "4,6", "--jobs", "2", "--out", str(tmp_path / "out")
    )
    assert_one_error(result, "seed(s) 4, 6", "convergence")
    assert "seed 4  VIOLATION convergence" in result.stderr


@pytest.mark.parametrize("spec", ["", "x", "1..", "..3", "5..1", "1,,2", "-1", "1..100001"])
def test_a_bad_seeds_option_is_one_error_line(spec: str) -> None:
    assert_one_error(p2pblog(None, "sim", "sweep", "baseline", "--seeds", spec), "--seeds")


@pytest.mark.parametrize(
    ("spec", "seeds"),
    [
        ("1..20", list(range(1, 21))),
        ("3", [3]),
        ("1,5,9", [1, 5, 9]),
        ("9, 1..3,2", [1, 2, 3, 9]),
        ("0", [0]),
    ],
)
def test_seeds_forms(spec: str, seeds: list[int]) -> None:
    assert parse_seeds(spec) == seeds


def test_seeds_errors_are_click_errors() -> None:
    with pytest.raises(click.ClickException, match="empty"):
        parse_seeds("3..1")
