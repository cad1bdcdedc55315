"""bench_sim.py's ``--max-wall`` is a wall-time limit, checked at least once a second (issue 18).

The simulator's own progress checkpoints can be minutes of wall time apart in
a large run (a 300 s limit once ran 349 s), so the benchmark arms a
watchdog.  These tests are not timed: they check that a run longer than its
limit is stopped, says so, and reports how far it got.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sim import WallLimitHit, wall_watchdog  # noqa: E402


def test_the_watchdog_stops_a_block_that_never_reaches_a_checkpoint() -> None:
    start = time.perf_counter()
    with pytest.raises(WallLimitHit) as hit, wall_watchdog(0.2):
        while True:
            pass
    assert hit.value.elapsed >= 0.2
    assert time.perf_counter() - start >= 0.2
    assert "wall-time limit hit" in str(hit.value)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_watchdog_is_quiet_and_disarmed_when_the_block_ends_in_time() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with wall_watchdog(30.0):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) == before


def test_a_run_longer_than_max_wall_stops_at_the_limit_and_says_so(tmp_path: Path) -> None:
    # 1,000 nodes: the first progress checkpoint (36 simulated seconds) is
    # minutes of wall time away, so only the watchdog can stop this run.
    out = tmp_path / "bench_sim.json"
    command = [sys.executable, "benchmarks/bench_sim.py", "--part", "speed", "--nodes", "1000"]
    command += ["--max-wall", "1", "--out", str(out)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr
    assert "wall-time limit hit" in done.stderr
    assert "reported as not finished" in done.stderr
    speed = json.loads(out.read_text())["speed"]
    assert speed["wall_limit_hit"] is True
    assert speed["finished"] is False
    assert speed["met"] is False
    assert speed["simulated_s"] < 36.0
    assert "no: wall-time limit 1.0 s hit" in done.stdout
