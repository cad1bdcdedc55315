"""Ctrl-C stops `p2pblog run` and `p2pblog demo` with one line and exit status 0.

Real processes, interrupted as a terminal does it (SIGINT to the whole process
group, the node's verifier processes included), at several moments: while the
command line is still importing, while the node starts (trio running, node.json
not yet written), and while it runs.  trio wraps a `KeyboardInterrupt` in
exception groups, and click turns one into "Aborted!" and status 1: neither
may reach the user.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.nodes import init_home, wait_for

pytestmark = pytest.mark.slow


def _as_a_foreground_job() -> None:
    """In the child before it runs p2pblog: SIGINT and SIGQUIT as a terminal's foreground job
    has them.  A suite started in the background by a shell without job control (``cmd &``
    in a script: bash's rule for asynchronous commands) inherits both ignored, and p2pblog
    keeps an inherited "ignore SIGINT" on purpose (nohup), so a Ctrl-C sent before the node's
    own handler is up is lost and the test hangs.  Measured: two fresh-clone runs of .ci/run
    started that way each had the same 4 tests here time out; with this, the same launch
    passed (this file alone passed either way: the loss also needs a slow start-up)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    return subprocess.Popen(
        [sys.executable, "-m", "p2pblog", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        preexec_fn=_as_a_foreground_job,
    )


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def _assert_stopped(status: int, err: str) -> None:
    assert "Traceback" not in err and "Aborted" not in err, err
    assert status == 0, err
    lines = err.strip().splitlines()
    assert lines[-1] == "stopped" or lines[-1].endswith(" info stopped"), err
    assert sum("stop" in line for line in lines) == 1, err


@pytest.mark.parametrize("delay", [0.15, 0.25, 0.35, 0.5])
def test_ctrl_c_while_run_starts(tmp_path: Path, delay: float) -> None:
    home = tmp_path / "node"
    init_home(home)
    process = _start("--home", str(home), "run", "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0")
    time.sleep(delay)
    status, _, err = _interrupt(process)
    _assert_stopped(status, err)
    assert not (home / "node.json").exists()


def test_ctrl_c_while_run_runs(tmp_path: Path) -> None:
    home = tmp_path / "node"
    init_home(home)
    process = _start("--home", str(home), "run", "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0")
    assert wait_for(lambda: (home / "node.json").exists(), 30)
    time.sleep(0.5)
    status, _, err = _interrupt(process)
    _assert_stopped(status, err)
    assert "listening on" in err
    assert not (home / "node.json").exists()


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8])
def test_ctrl_c_while_the_demo_starts(delay: float) -> None:
    process = _start("demo")
    time.sleep(delay)
    status, _, err = _interrupt(process)
    _assert_stopped(status, err)


@pytest.mark.parametrize("wait_for_line", ["Claiming names", "Posting"])
def test_ctrl_c_while_the_demo_runs(wait_for_line: str) -> None:
    process = _start("demo")
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while wait_for_line not in seen and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    assert wait_for_line in seen, seen
    status, _, err = _interrupt(process)
    _assert_stopped(status, err)
    demo_home = next(line for line in seen.splitlines() if "homes in" in line).split("homes in ")[1]
    assert not Path(demo_home.rstrip("):")).exists()  # the throw-away homes are removed


def test_ctrl_c_in_an_import_says_interrupted_and_keeps_a_sound_store(tmp_path: Path) -> None:
    from identity import Identity
    from p2pblog.feedfile import write_feed
    from tests.feeds import make_chain

    feed = tmp_path / "big.feed"
    with feed.open("wb") as out:
        write_feed(out, (e.raw for e in make_chain(Identity.generate(), 30_000)))
    home = tmp_path / "node"
    init_home(home)
    process = _start("--home", str(home), "import", str(feed))
    time.sleep(0.6)
    status, _, err = _interrupt(process)
    assert "Traceback" not in err and "Aborted" not in err, err
    assert (status, err.strip()) == (130, "interrupted")
    verify = subprocess.run(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "verify"], capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": ok"), verify.stdout + verify.stderr
