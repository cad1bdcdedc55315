"""CI smoke run of the fuzzers in ``fuzz/``: each harness runs a few seconds and must not crash.

All harnesses start at once (one subprocess each, a module fixture) and run
for `SMOKE_SECONDS` each under a fixed libFuzzer seed, so the whole file
takes about ten seconds of wall time on two cores; each test then checks one
harness's exit.  A crash, an undeclared exception, a timeout or the memory
limit makes libFuzzer exit non-zero, and the test shows the end of its output
(the traceback and the crashing input's path).  New coverage goes to a
temporary corpus, crash files to a temporary directory, never into the
checkout.  The longer runs are documented in ``docs/fuzzing.md``.

atheris is in the ``test`` extra, so the README's test command installs it
on Linux x86-64 (the only platform with atheris wheels).  Where it is missing
the tests skip, except in CI (``CI`` set) on that platform, where they fail:
a fuzz job that silently does nothing is worse than none.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
HARNESSES: Final = ("entry", "dht_wire", "gossip_messages", "feedfile", "gossip_channel", "records")
#: Fuzzing time of each harness (they run in parallel), after its seeds.
SMOKE_SECONDS: Final = 5
#: libFuzzer's seed: the same mutations on every CI run, as far as the time bound allows.
SMOKE_SEED: Final = 1
#: Where the ``test`` extra installs atheris (pyproject.toml's marker).
ATHERIS_PLATFORM: Final = sys.platform == "linux" and platform.machine() == "x86_64"
#: A harness that has not exited by then is hung (start-up takes about a second).
HARD_TIMEOUT: Final = 120


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") and ATHERIS_PLATFORM:
            pytest.fail(message + "; CI must run the fuzz smoke test")
        pytest.skip(message)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: dict[str, subprocess.Popen[str]] = {}
    for name in HARNESSES:
        work = tmp_path_factory.mktemp(f"fuzz-{name}")
        (work / "corpus").mkdir()
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "fuzz" / f"{name}.py"),
                f"-max_total_time={SMOKE_SECONDS}",
                f"-seed={SMOKE_SEED}",
                f"-artifact_prefix={work}/",
                str(work / "corpus"),
            ],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_survives_a_smoke_run(runs: dict[str, subprocess.Popen[str]], name: str) -> None:
    proc = runs[name]
    try:
        output, _ = proc.communicate(timeout=HARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"fuzz/{name}.py did not finish within {HARD_TIMEOUT} s:\n{output[-3000:]}")
    assert proc.returncode == 0, f"fuzz/{name}.py failed:\n{output[-3000:]}"
    assert "Done " in output, f"fuzz/{name}.py did not report a finished run:\n{output[-3000:]}"
