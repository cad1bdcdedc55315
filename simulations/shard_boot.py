"""The entry point of a sharded run's worker process (`simulations.shards`).

A worker is spawned: a fresh interpreter that imports what its target and
arguments need before the target runs.  With the compiled build
(`simulations.compiled`), the compiled modules must be chosen before any of
them is imported, so this module imports nothing of the simulator: it
activates the parent's build, if any, then unpickles the scenario (which
imports the simulator's modules) and runs the worker.
"""

from __future__ import annotations

import os
import pickle
import sys
from multiprocessing.connection import Connection
from pathlib import Path


def boot(
    build: str | None,
    scenario: bytes,
    shard: int,
    shards: int,
    lookahead: float,
    peers: dict[int, Connection],
    up: Connection,
) -> None:
    """Run worker ``shard`` on the build the coordinator runs (None: pure Python)."""
    if build is not None:
        from simulations.compiled import activate, active

        if active() is None:  # (the spawned copy of a main module may have activated it already)
            activate(Path(build))
    from simulations.shards import _worker

    _worker(pickle.loads(scenario), shard, shards, lookahead, peers, up)
    # The report went up the pipe (or the error did).  Leave without tearing down the heap:
    # a 10,000-node shard holds about 4 GB of objects, and the interpreter's final collection
    # and deallocation of them took longer than the coordinator waits (measured: the run
    # had simulated its hour at 598 s and spent past 600 s in the workers' exit).  Nothing
    # is left to write: a worker's stores are in memory.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
