"""``p2pblog sim sweep --cluster``: seeds on a real Dask scheduler and worker give the local sweep's bytes.

The scheduler and the worker are real processes (``dask scheduler`` and
``dask worker`` on 127.0.0.1, real ports), started from this checkout as a
remote machine would be; the default path is the embedded local cluster
(``--jobs 2``).  Both sweeps must write the same files, byte for byte:
sweep.json, sweep.md, the figures and every seed's metrics.json,
latencies.csv and report.  An unreachable scheduler, a scheduler without
workers and a malformed address are each one ``Error:`` line within a few
seconds, and a worker that runs other code refuses its seeds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import Client

from simulations.scenario import Scenario
from simulations.sweep import CONNECT_TIMEOUT, WORKERS_TIMEOUT, code_fingerprint, run_seed
from tests.process import ROOT, child_env, p2pblog

pytestmark = pytest.mark.slow  # real scheduler and worker processes: about 2 minutes on a busy 2-core VM

DASK = str(Path(sys.executable).parent / "dask")
SWEEP = ("sim", "sweep", "baseline", "--seeds", "1..3", "--nodes", "10", "--duration", "120")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def scheduler(tmp_path: Path) -> Iterator[str]:
    """A ``dask scheduler`` on 127.0.0.1 (a free port); yields its address."""
    info = tmp_path / "scheduler.json"
    log = (tmp_path / "scheduler.log").open("wb")
    args = [
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(info),
    ]
    process = subprocess.Popen([DASK, *args], stdout=log, stderr=log, env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "scheduler.log"
            ).read_text()
            time.sleep(0.2)
        yield str(json.loads(info.read_text())["address"])
    finally:
        stop(process)
        log.close()


@contextmanager
def worker(address: str, log_path: Path, root: Path = ROOT) -> Iterator[None]:
    """A ``dask worker`` (one single-threaded process) that imports p2pblog from ``root``; joined."""
    log = log_path.open("wb")
    env = child_env({"PYTHONPATH": str(root)})
    args = ["worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
    process = subprocess.Popen([DASK, *args], stdout=log, stderr=log, env=env, cwd=root)
    try:
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        yield
    finally:
        stop(process)
        log.close()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_sweep_on_a_cluster_writes_the_bytes_of_the_local_sweep(tmp_path: Path) -> None:
    local = p2pblog(None, *SWEEP, "--jobs", "2", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    with scheduler(tmp_path) as address, worker(address, tmp_path / "worker.log"):
        remote = p2pblog(None, *SWEEP, "--cluster", address, "--out", str(tmp_path / "remote"))
    assert remote.returncode == 0, remote.stderr
    assert f"with 1 worker(s) on the Dask cluster at {address}" in remote.stderr
    for seed in (1, 2, 3):  # one progress line per finished seed, as before
        assert sum(f"] seed {seed}  ok" in line for line in remote.stderr.splitlines()) == 1
    local_files, remote_files = tree(tmp_path / "local"), tree(tmp_path / "remote")
    names = {"sweep.json", "sweep.md", "sweep_spread.png", "sweep_within.png"}
    for seed in (1, 2, 3):
        names |= {
            f"seed-{seed}/{n}" for n in ("metrics.json", "latencies.csv", "report.md", "latency_cdf.png")
        }
    assert names <= set(local_files)
    assert set(remote_files) == set(local_files)
    for name in sorted(local_files):
        assert remote_files[name] == local_files[name], name
    # And a seed of the sweep is that seed's `sim run`.
    ran = p2pblog(None, "sim", "run", "baseline", "--seed", "2", *SWEEP[5:], "--out", str(tmp_path / "run"))
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "run" / "metrics.json").read_bytes() == local_files["seed-2/metrics.json"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_an_unreachable_or_malformed_cluster_address_is_one_error_line_within_seconds(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    error = one_error(p2pblog(None, *SWEEP, "--cluster", address, "--out", str(tmp_path)))
    assert time.monotonic() - started < CONNECT_TIMEOUT + 15  # start-up of the CLI included
    assert f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT:g} s" in error
    assert not (tmp_path / "seed-1").exists()
    error = one_error(p2pblog(None, *SWEEP, "--cluster", "127.0.0.1", "--out", str(tmp_path)))
    assert "is not a scheduler address; write tcp://HOST:PORT" in error


def test_a_scheduler_without_workers_is_one_error_line(tmp_path: Path) -> None:
    with scheduler(tmp_path) as address:
        started = time.monotonic()
        error = one_error(p2pblog(None, *SWEEP, "--cluster", address, "--out", str(tmp_path / "out")))
        assert time.monotonic() - started < WORKERS_TIMEOUT + CONNECT_TIMEOUT + 15
    assert f"has no worker after {WORKERS_TIMEOUT:g} s" in error and f"dask worker {address}" in error


def test_a_worker_that_runs_other_code_refuses_its_seeds(tmp_path: Path) -> None:
    other = tmp_path / "other-checkout"
    for package in ("cli", "web", "simulations", "p2pblog", "dht", "gossip", "identity"):
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "simulations" / "engine.py").open("a") as source:
        source.write("\n# an older or newer checkout\n")
    with scheduler(tmp_path) as address, worker(address, tmp_path / "worker.log", root=other):
        result = p2pblog(None, *SWEEP, "--cluster", address, "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "seed 1  CRASHED" in result.stderr and "runs other code than the machine" in result.stderr
    assert "the simulation crashed in seed(s) 1, 2, 3" in result.stderr
    assert not (tmp_path / "out" / "seed-1").exists()  # a refused seed writes nothing
    # In-process: the same check, and the fingerprint is what a seed's task carries.
    outcome = run_seed(Scenario.load("baseline"), 1, "0" * 64)
    assert outcome.result is None and outcome.crash is not None and "other code" in outcome.crash
    assert len(code_fingerprint()) == 64
