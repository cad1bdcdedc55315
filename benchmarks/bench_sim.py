"""Simulator speed (issue 5): how much faster than real time, and how many nodes fit.

Usage::

    .venv/bin/python benchmarks/bench_sim.py                  # both parts, the issue's sizes
    .venv/bin/python benchmarks/bench_sim.py --part speed --nodes 1000 --duration 3600
    .venv/bin/python benchmarks/bench_sim.py --part scale --max-wall 600

*speed*: the bundled ``baseline`` scenario with ``--nodes`` nodes for
``--duration`` simulated seconds; reports wall time and the speed-up over real
time (target: 1,000 nodes for one simulated hour at >= 60x, i.e. <= 60 s).
A run that would exceed ``--max-wall`` seconds is stopped there, and the
simulated time it reached is reported (so the speed-up is still measured).

*scale*: one simulated hour of ``baseline`` at 100, 200, 400, ... nodes until a
run does not finish within ``--max-wall`` wall seconds (the issue: ten
minutes); reports the largest node count that completed.  Bounded: at most
``--max-steps`` sizes.

Both print the machine facts and the command; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulations.scenario import Scenario
from simulations.simulation import Simulation


class _Stop(Exception):
    pass


def timed_run(nodes: int, duration: float, max_wall: float) -> dict[str, float | int | bool]:
    """Run baseline; stop at max_wall seconds of wall time."""
    scenario = Scenario.load("baseline").with_overrides(nodes=nodes, duration=duration)
    sim = Simulation(scenario)
    start = time.perf_counter()
    reached = [0.0]

    def progress(sim_time: float, events: int) -> None:
        reached[0] = sim_time
        elapsed = time.perf_counter() - start
        print(
            f"  {nodes} nodes: {sim_time:7.0f}/{duration:.0f} s simulated, {elapsed:6.1f} s wall, "
            f"{events} events",
            file=sys.stderr,
            end="\r",
        )
        if elapsed > max_wall:
            raise _Stop

    finished = True
    try:
        result = sim.run(progress)
        events = result.events
    except _Stop:
        finished = False
        events = sim.engine.events_run
    wall = time.perf_counter() - start
    print(file=sys.stderr)
    simulated = duration if finished else reached[0]
    return {
        "nodes": nodes,
        "simulated_s": round(simulated, 1),
        "wall_s": round(wall, 2),
        "speedup": round(simulated / wall, 2),
        "node_seconds_per_s": round(nodes * simulated / wall, 1),
        "events": events,
        "events_per_s": round(events / wall, 1),
        "finished": finished,
    }


def machine() -> dict[str, object]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["speed", "scale", "both"], default="both")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--max-wall", type=float, default=600.0, help="wall seconds allowed per run")
    parser.add_argument("--start", type=int, default=100, help="first size of the scale search")
    parser.add_argument("--max-steps", type=int, default=6)
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    out: dict[str, object] = {"machine": machine()}
    if args.part in ("speed", "both"):
        run = timed_run(args.nodes, args.duration, args.max_wall)
        out["speed"] = {**run, "target_speedup": 60.0, "met": bool(run["finished"] and run["speedup"] >= 60)}
    if args.part in ("scale", "both"):
        runs = []
        nodes = args.start
        for _ in range(args.max_steps):
            run = timed_run(nodes, 3600.0, args.max_wall)
            runs.append(run)
            if not run["finished"]:
                break
            nodes *= 2
        completed = [r["nodes"] for r in runs if r["finished"]]
        out["scale"] = {"runs": runs, "largest_completed": max(completed, default=0), "target_nodes": 10_000}
    out["machine_after"] = machine()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
