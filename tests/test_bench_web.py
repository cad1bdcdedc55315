"""benchmarks/bench_web.py runs end to end in its --quick form and writes its Markdown tables.

Not a measurement (the numbers of a smoke run mean nothing): it checks that the
benchmark still works against the current web app, within 30 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.process import child_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_quick_run_writes_both_tables(tmp_path: Path) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it", pytrace=False)
        pytest.skip("chromium is not installed")
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is missing: pip install -e '.[test]'", pytrace=False)
        pytest.skip("playwright is not installed")
    out = tmp_path / "web.md"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_web.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 30, f"the quick run took {elapsed:.1f} s"
    report = out.read_text()
    assert "| posted through | posts | p50 ms | p90 ms | max ms |" in report
    for side in ("| web API | 4 |", "| control API | 4 |", "| both | 8 |"):
        assert side in report
    assert "| posts held | requests | median ms |" in report
    assert "| 1,000 | 5 |" in report and "| 100 | 5 |" in report
    assert "Load average (1, 5, 15 min) before:" in report
