"""Simulator speed (issue 5): how much faster than real time, and how many nodes fit.

Usage::

    .venv/bin/python benchmarks/bench_sim.py                  # both parts, the issue's sizes
    .venv/bin/python benchmarks/bench_sim.py --part speed --nodes 1000 --duration 3600
    .venv/bin/python benchmarks/bench_sim.py --part scale --max-wall 600
    .venv/bin/python benchmarks/bench_sim.py --part budget --nodes 200 --duration 1200

*speed*: the bundled ``baseline`` scenario with ``--nodes`` nodes for
``--duration`` simulated seconds; reports wall time and the speed-up over real
time (target: 1,000 nodes for one simulated hour at >= 60x, i.e. <= 60 s).
A run that would exceed ``--max-wall`` seconds is stopped there, and the
simulated time it reached is reported (so the speed-up is still measured).

*scale*: one simulated hour of ``baseline`` at 100, 200, 400, ... nodes until a
run does not finish within ``--max-wall`` wall seconds (the issue: ten
minutes); reports the largest node count that completed.  Bounded: at most
``--max-steps`` sizes.

*budget*: why the targets are out of reach, from a run small enough to
finish.  Splits a ``baseline`` run at ``--join`` simulated seconds into the
join (events per node, microseconds per event) and the steady state (events
per node-second, microseconds per event), times the cheapest things an event
does with a warm cache (a DHT node serving a PING and a FIND_NODE), and
projects the wall time of the speed target (1,000 nodes, one hour) from both.
``--nodes`` and ``--duration`` default to 200 and 1200 here (a run that
finishes in under a minute). The projections are lower bounds: per-event cost grows with the node count
(cache misses), and so do join events per node (lookup hops grow like log N).

All print the machine facts and the command; results go in docs/benchmarks.md.
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


def phase_costs(nodes: int, duration: float, join: float) -> dict[str, float | int]:
    """Events and wall time of baseline's join (up to ``join`` s) and its steady state."""
    scenario = Scenario.load("baseline").with_overrides(nodes=nodes, duration=duration)
    sim = Simulation(scenario)
    start = time.perf_counter()
    split: list[tuple[float, int, float]] = []

    def progress(sim_time: float, events: int) -> None:
        if not split and sim_time >= join:
            split.append((sim_time, events, time.perf_counter() - start))

    result = sim.run(progress)
    wall = time.perf_counter() - start
    if not split:
        raise SystemExit(f"--duration {duration} ends before --join {join}")
    join_s, join_events, join_wall = split[0]
    steady_events = result.events - join_events
    steady_s = duration - join_s
    if steady_s <= 0:
        raise SystemExit(f"--duration {duration} leaves no steady state after --join {join}")
    return {
        "nodes": nodes,
        "join_s": round(join_s, 1),
        "join_events_per_node": round(join_events / nodes, 1),
        "join_us_per_event": round(join_wall / join_events * 1e6, 1),
        "steady_s": round(steady_s, 1),
        "steady_events_per_node_s": round(steady_events / nodes / steady_s, 4),
        "steady_us_per_event": round((wall - join_wall) / max(1, steady_events) * 1e6, 1),
        "wall_s": round(wall, 2),
    }


def warm_op_costs(rounds: int = 20_000) -> dict[str, float]:
    """Microseconds for a DHT core with a 95-contact table to serve one PING / FIND_NODE
    (decode, routing-table update, answer, timer), everything in cache."""
    from random import Random

    from dht import wire
    from dht.core import DhtCore
    from dht.ids import Contact

    rng = Random(1)
    now = 1000.0
    core = DhtCore(rng.randbytes(20), Random(2), now)
    for i in range(200):
        core.table.update(Contact(rng.randbytes(20), (f"127.0.0.{i % 250 + 1}", 4000 + i)), now)
    senders = [rng.randbytes(20) for _ in range(50)]
    out: dict[str, float] = {"table_contacts": len(core.table)}
    for name in ("ping", "find_node"):
        batch = [
            wire.encode_request(
                wire.Ping(rng.randbytes(20), senders[i % 50])
                if name == "ping"
                else wire.FindNode(rng.randbytes(20), senders[i % 50], rng.randbytes(20))
            )
            for i in range(rounds)
        ]
        start = time.perf_counter()
        for i, data in enumerate(batch):
            now += 0.001
            core.receive_datagram(data, (f"10.0.0.{i % 50 + 1}", 5000), now)
            core.datagrams_to_send()
            while core.next_event() is not None:
                pass
            core.get_timer()
        out[f"serve_{name}_us"] = round((time.perf_counter() - start) / rounds * 1e6, 2)
    return out


def budget(nodes: int, duration: float, join: float) -> dict[str, object]:
    phases = phase_costs(nodes, duration, join)
    ops = warm_op_costs()
    target_nodes, hour, target_wall = 1000, 3600.0, 60.0
    join_events = target_nodes * float(phases["join_events_per_node"])
    steady_rate = float(phases["steady_events_per_node_s"])
    steady_events = target_nodes * steady_rate * (hour - float(phases["join_s"]))
    events = join_events + steady_events
    join_us, steady_us = float(phases["join_us_per_event"]), float(phases["steady_us_per_event"])
    as_measured = (join_events * join_us + steady_events * steady_us) / 1e6
    return {
        "phases": phases,
        "warm_ops": ops,
        "target": {"nodes": target_nodes, "simulated_s": hour, "wall_s": target_wall},
        "projected_events": round(events),
        "projected_wall_s_at_measured_cost": round(as_measured, 1),
        "projected_wall_s_if_every_event_cost_a_warm_ping": round(events * ops["serve_ping_us"] / 1e6, 1),
        "projected_wall_s_if_every_event_cost_a_warm_find_node": round(
            events * ops["serve_find_node_us"] / 1e6, 1
        ),
        "us_per_event_allowed": round(target_wall / events * 1e6, 2),
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
    parser.add_argument("--part", choices=["speed", "scale", "both", "budget"], default="both")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--max-wall", type=float, default=600.0, help="wall seconds allowed per run")
    parser.add_argument("--start", type=int, default=100, help="first size of the scale search")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--join", type=float, default=120.0, help="budget: simulated seconds of the join")
    args = parser.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    out: dict[str, object] = {"machine": machine()}
    if args.part in ("speed", "both"):
        run = timed_run(args.nodes, args.duration, args.max_wall)
        out["speed"] = {**run, "target_speedup": 60.0, "met": bool(run["finished"] and run["speedup"] >= 60)}
    if args.part == "budget":
        # A run small enough to finish; the sizes are what it projects to.
        nodes = args.nodes if "--nodes" in sys.argv else 200
        duration = args.duration if "--duration" in sys.argv else 1200.0
        out["budget"] = budget(nodes, duration, args.join)
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
