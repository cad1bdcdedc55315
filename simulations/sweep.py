"""Sweeps: one scenario over many seeds, on a Dask cluster (an embedded local one by default).

Theory of operation
-------------------
A seed is one task, `run_seed`: run the scenario with that seed and render
its reports (metrics.json, report.md, latencies.csv, the figures) into a
temporary directory on the worker, and return them as bytes in a
`SeedOutcome` together with the `Result`.  The machine that asked writes the
files under ``seed-N/`` and aggregates the results (`simulations.report.
write_sweep`).  Nothing a worker does depends on where it runs, so a seed
gives the same bytes on any worker, local or remote, as `sim run` does.

`dask_client` yields a ``distributed.Client``: connected to the scheduler at
``address`` (``tcp://host:8786``; a machine joins it with ``dask worker
tcp://host:8786`` started from a checkout of the same code), or to a
`LocalCluster` it starts, with one single-threaded worker process per job
(the simulator holds the GIL: threads would not run seeds in parallel).
Both are bounded in time: an unreachable scheduler fails after
`CONNECT_TIMEOUT` seconds and a scheduler without workers after
`WORKERS_TIMEOUT`, as `ClusterUnavailable`, not a hang.

`run_seeds` submits every seed and yields outcomes as they finish.  Each
task carries the client's `code_fingerprint` (a hash of the sources the
simulation runs); a worker whose code differs refuses the seed, which comes
back as a crash naming the worker, rather than silently giving other
numbers.  A crash inside a seed (a bug) comes back as its traceback, so one
bad seed does not cost the others; so does a worker that died under a task.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

from simulations.scenario import Scenario
from simulations.simulation import Result, run_scenario

if TYPE_CHECKING:
    from distributed import Client

#: Seconds to reach a scheduler before giving up (an unreachable address fails this fast).
CONNECT_TIMEOUT: Final = 5.0
#: Seconds to wait for the first worker to join a scheduler that has none.
WORKERS_TIMEOUT: Final = 10.0
#: A scheduler address: tcp:// or tls:// (or none, meaning tcp), a host name, IPv4 or [IPv6], a port.
ADDRESS: Final = re.compile(r"(?:(?:tcp|tls)://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
#: The packages a simulation runs: their sources make up the code fingerprint.
CODE_PACKAGES: Final = ("simulations", "p2pblog", "dht", "gossip", "identity")


class ClusterUnavailable(Exception):
    """The scheduler cannot be reached, or has no worker: a user error, one line."""


@dataclass
class SeedOutcome:
    seed: int
    #: Wall seconds the seed took on its worker.
    wall: float
    result: Result | None
    #: The formatted traceback when the run crashed (then `result` is None).
    crash: str | None = None
    #: The seed's report files by name, as `simulations.report.write_run` wrote them.
    files: dict[str, bytes] = field(default_factory=dict)

    def write(self, out_dir: Path) -> None:
        """Write the report files into ``out_dir`` (created; not for a crash, which has none)."""
        if self.files:
            out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (out_dir / name).write_bytes(data)


@cache
def code_fingerprint() -> str:
    """A SHA-256 over the path and bytes of every source file of `CODE_PACKAGES`."""
    import importlib

    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        module = importlib.import_module(package)
        root = Path(module.__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_seed(scenario: Scenario, seed: int, fingerprint: str | None = None) -> SeedOutcome:
    """One seed: run it and render its reports; a crash is returned, not raised."""
    from simulations.report import write_run

    if fingerprint is not None and fingerprint != code_fingerprint():
        return SeedOutcome(seed, 0.0, None, _other_code())
    started = time.monotonic()
    try:
        result = run_scenario(scenario.with_overrides(seed=seed))
    except Exception:
        crash = (
            f"the simulation of {scenario.name} crashed (seed {seed}, {scenario.nodes} nodes, "
            f"{scenario.duration:g} s)\n{traceback.format_exc()}"
        )
        return SeedOutcome(seed, time.monotonic() - started, None, crash)
    with tempfile.TemporaryDirectory(prefix="p2pblog-seed-") as tmp:
        files = {path.name: path.read_bytes() for path in write_run(result, Path(tmp))}
    return SeedOutcome(seed, time.monotonic() - started, result, files=files)


def _other_code() -> str:
    try:
        from distributed import get_worker

        where = f"worker {get_worker().address}"
    except ValueError:  # not in a worker
        where = "this process"
    return (
        f"{where} runs other code than the machine that started the sweep (the sources of "
        f"{', '.join(CODE_PACKAGES)} differ): start every worker from a checkout of the same version"
    )


@contextmanager
def dask_client(address: str | None, workers: int) -> Iterator[Client]:
    """A client of the cluster at ``address``, or of a local cluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if address is None:
        with (
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                memory_limit=0,  # as a process pool: no nanny restarts a large run
            ) as cluster,
            Client(cluster, set_as_default=False) as client,  # type: ignore[no-untyped-call]
        ):
            yield client
        return
    if not ADDRESS.fullmatch(address):
        raise ClusterUnavailable(
            f"--cluster: {address!r} is not a scheduler address; "
            "write tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)"
        )
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterUnavailable(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT:g} s: {exc}"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except TimeoutError:
            raise ClusterUnavailable(
                f"the Dask scheduler at {address} has no worker after {WORKERS_TIMEOUT:g} s "
                f"(start one with `dask worker {address}` from a checkout of this version)"
            ) from None
        yield client


def worker_count(client: Client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def run_seeds(client: Client, scenario: Scenario, seeds: Sequence[int]) -> Iterator[SeedOutcome]:
    """Submit one task per seed; yield each outcome as it finishes (in no fixed order)."""
    from distributed import as_completed

    fingerprint = code_fingerprint()
    sweep = uuid.uuid4().hex[:12]  # keys unique to this sweep: a shared scheduler reuses equal keys
    futures = {
        client.submit(run_seed, scenario, seed, fingerprint, key=f"p2pblog-{sweep}-seed-{seed}"): seed
        for seed in seeds
    }
    for future in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
        seed = futures[future]
        try:
            outcome: SeedOutcome = future.result()
        except Exception:  # the worker died under the task (e.g. out of memory)
            outcome = SeedOutcome(seed, 0.0, None, f"seed {seed} was lost:\n{traceback.format_exc()}")
        future.release()
        yield outcome


__all__ = [
    "CONNECT_TIMEOUT",
    "WORKERS_TIMEOUT",
    "ClusterUnavailable",
    "SeedOutcome",
    "code_fingerprint",
    "dask_client",
    "run_seed",
    "run_seeds",
    "worker_count",
]
