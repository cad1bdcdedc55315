"""Simulator speed (issues 5 and 17): how much faster than real time, and how many nodes fit.

Usage::

    .venv/bin/python benchmarks/bench_sim.py --compiled       # issue 17's targets (the default part)
    .venv/bin/python benchmarks/bench_sim.py --part both      # issue 5's speed and scale parts
    .venv/bin/python benchmarks/bench_sim.py --part speed --nodes 1000 --duration 3600
    .venv/bin/python benchmarks/bench_sim.py --part scale --max-wall 600
    .venv/bin/python benchmarks/bench_sim.py --part budget --nodes 200 --duration 1200

Options: ``--max-wall`` (600 s per run), ``--start`` and ``--max-steps`` (the
scale search), ``--join`` (budget), ``--out`` (the JSON file, default
``benchmarks/results/bench_sim.json``; stdout has the Markdown and the JSON).

*targets* (issue 17, the default): one simulated hour of ``baseline`` at
1,000 nodes with the DHT model (target: at most 60 s of wall time), at
10,000 nodes with the DHT model on ``--shards`` processes (default 2; target:
at most 600 s), and at 1,000 nodes with the full DHT, reported beside them.
Each run is a fresh process (``--child``), so no cache is warm that a real
run would not have, and the compiled build is used only with
``--compiled`` (which builds it first if the sources changed: ``python -m
simulations.compiled build``).  Reports wall time, the CPU seconds of the run
and of its shard workers, events, and whether the target was met.  The
10,000-node run's limit is ``max(--max-wall, 600)``.

*speed*: the bundled ``baseline`` scenario with ``--nodes`` nodes for
``--duration`` simulated seconds; reports wall time and the speed-up over real
time (target: 1,000 nodes for one simulated hour at >= 60x, i.e. <= 60 s).
A run that would exceed ``--max-wall`` seconds is stopped there, and the
simulated time it reached is reported (so the speed-up is still measured).
The limit is enforced by a watchdog (`wall_watchdog`: ``SIGALRM`` from
``setitimer``, checked at least once a second of wall time), not at the
simulation's own progress checkpoints, which can be minutes apart in a large
run: a stopped run says so on stderr ("wall-time limit hit") and in its JSON
(``"wall_limit_hit": true``).

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

All print the command, the machine (CPU model, cores), the load average
before and after, and the Python and library versions, as Markdown lines and
in the JSON; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_context import RunContext

from simulations import compiled

if compiled.wanted():  # P2PBLOG_COMPILED=1: the mypyc build (`python -m simulations.compiled build`)
    print(f"compiled build: {compiled.activate()}", file=sys.stderr)

from simulations.scenario import Scenario
from simulations.simulation import Simulation

PACKAGES = ("PyNaCl", "msgpack")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_sim.json"
#: Seconds of wall time between two checks of the limit, at most.
WATCHDOG_TICK = 1.0


class WallLimitHit(BaseException):
    """The wall-time limit of a run passed; raised in the main thread by `wall_watchdog`.

    A BaseException, like KeyboardInterrupt: the simulator turns an
    ``Exception`` from a core under attack into an oracle violation, and
    this must not be taken for one.
    """

    def __init__(self, limit: float, elapsed: float) -> None:
        super().__init__(f"wall-time limit hit: {elapsed:.2f} s of wall time, limit {limit:g} s")
        self.limit = limit
        self.elapsed = elapsed


@contextmanager
def wall_watchdog(limit: float) -> Iterator[None]:
    """Raise `WallLimitHit` in the block once ``limit`` seconds of wall time have passed.

    ``setitimer(ITIMER_REAL)`` delivers SIGALRM at least every `WATCHDOG_TICK`
    seconds (and exactly at the limit when it is nearer); the handler runs in
    the main thread between two bytecodes, so a pure-Python simulation stops
    within a tick of the limit, wherever it is (a progress checkpoint of a
    large run can be minutes of wall time away).  Main thread only.
    """
    start = time.perf_counter()

    def arm() -> None:
        remaining = limit - (time.perf_counter() - start)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, min(WATCHDOG_TICK, remaining)))

    def check(signum: int, frame: FrameType | None) -> None:
        elapsed = time.perf_counter() - start
        if elapsed >= limit:
            raise WallLimitHit(limit, elapsed)
        arm()

    previous = signal.signal(signal.SIGALRM, check)
    try:
        arm()
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_run(
    nodes: int, duration: float, max_wall: float, *, dht: str | None = None, shards: int = 1
) -> dict[str, float | int | bool | str]:
    """Run baseline; stop at max_wall seconds of wall time (building the nodes included).

    ``dht``: the fidelity (`Scenario.dht`; None: the scenario's "auto"); ``shards``: worker
    processes for the one run (`simulations.shards`; 1: this process)."""
    start = time.perf_counter()
    sims: list[Simulation] = []
    #: The last progress report (simulated seconds, events): what a sharded run reached.
    last: list[float] = [0.0, 0]

    def progress(sim_time: float, events: int) -> None:
        last[:] = [sim_time, events]
        elapsed = time.perf_counter() - start
        print(
            f"  {nodes} nodes: {sim_time:7.0f}/{duration:.0f} s simulated, {elapsed:6.1f} s wall, "
            f"{events} events",
            file=sys.stderr,
            end="\r",
        )

    finished = True
    fidelity = dht or "auto"
    outcome: dict[str, float | bool] = {}
    try:
        with wall_watchdog(max_wall):
            scenario = Scenario.load("baseline").with_overrides(nodes=nodes, duration=duration, dht=dht)
            fidelity = scenario.dht_fidelity
            if shards > 1:
                from simulations.shards import run_sharded

                result = run_sharded(scenario, shards, progress=progress)
            else:
                sims.append(Simulation(scenario))
                result = sims[0].run(progress)
            events = result.events
            outcome = {"delivery_ratio": result.metrics["delivery"]["ratio"], "oracles_ok": result.ok}
    except WallLimitHit as hit:
        finished = False
        # A single process is asked where it is; a sharded run's coordinator knows the last
        # progress its workers reported (every 36 simulated seconds).
        events = sims[0].engine.events_run if sims else int(last[1])
        reached = sims[0].engine.now if sims else last[0]
        print(file=sys.stderr)
        print(
            f"bench_sim: {hit} ({nodes} nodes): stopped at {reached:.1f} of {duration:g} simulated "
            f"seconds, {events} events; reported as not finished",
            file=sys.stderr,
        )
    wall = time.perf_counter() - start
    print(file=sys.stderr)
    simulated = duration if finished else reached
    return {
        "nodes": nodes,
        "dht": fidelity,
        "shards": shards,
        "compiled": compiled_in_use(),
        "simulated_s": round(simulated, 1),
        "wall_s": round(wall, 2),
        "speedup": round(simulated / wall, 2),
        "node_seconds_per_s": round(nodes * simulated / wall, 1),
        "events": events,
        "events_per_s": round(events / wall, 1),
        "finished": finished,
        "wall_limit_s": max_wall,
        "wall_limit_hit": not finished,
        **outcome,
    }


def phase_costs(nodes: int, duration: float, join: float, max_wall: float) -> dict[str, float | int]:
    """Events and wall time of baseline's join (up to ``join`` s) and its steady state."""
    scenario = Scenario.load("baseline").with_overrides(nodes=nodes, duration=duration)
    sim = Simulation(scenario)
    start = time.perf_counter()
    split: list[tuple[float, int, float]] = []

    def progress(sim_time: float, events: int) -> None:
        if not split and sim_time >= join:
            split.append((sim_time, events, time.perf_counter() - start))

    try:
        with wall_watchdog(max_wall):
            result = sim.run(progress)
    except WallLimitHit as hit:
        raise SystemExit(
            f"bench_sim: {hit}: the budget run reached {sim.engine.now:.1f} of {duration:g} simulated "
            "seconds; choose a smaller --nodes or --duration"
        ) from None
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


def budget(nodes: int, duration: float, join: float, max_wall: float) -> dict[str, object]:
    phases = phase_costs(nodes, duration, join, max_wall)
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


def compiled_in_use() -> bool:
    """Whether this process runs the mypyc build (its engine is an extension module, not a .py)."""
    import simulations.engine

    return not str(simulations.engine.__file__).endswith(".py")


#: Issue 17's runs: (name, nodes, dht, shards or None for ``--shards``, wall target in seconds or None).
TARGET_RUNS: tuple[tuple[str, int, str, int | None, float | None], ...] = (
    ("model-1000", 1000, "model", 1, 60.0),
    ("model-10000", 10_000, "model", None, 600.0),
    ("full-1000", 1000, "full", 1, None),
)
#: Seconds a child may overrun its own ``--max-wall`` (start-up, writing its JSON) before it is killed.
CHILD_GRACE = 120.0


def child_run(
    nodes: int, duration: float, dht: str, shards: int, max_wall: float, *, compiled_build: bool
) -> dict[str, object]:
    """One run in a fresh process (no warm caches, the compiled build only when asked): its JSON,
    with the CPU seconds of the child and of the shard workers it waited for."""
    import resource
    import subprocess

    env = dict(os.environ)
    env["P2PBLOG_COMPILED"] = "1" if compiled_build else "0"
    spec = {"nodes": nodes, "duration": duration, "dht": dht, "shards": shards, "max_wall": max_wall}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            timeout=max_wall + CHILD_GRACE,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "finished": False, "error": f"killed after {max_wall + CHILD_GRACE:g} s of wall time"}
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not done.stdout.strip():
        return {**spec, "finished": False, "error": f"exit status {done.returncode}"}
    run: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    run["process_wall_s"] = round(wall, 2)
    run["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    return run


def targets(
    duration: float, shards: int, max_wall: float, *, compiled_build: bool, only: list[str] | None = None
) -> dict[str, object]:
    """Issue 17's table: 1,000 nodes with the model (<= 60 s), 10,000 with the model on
    ``shards`` processes (<= 600 s), and 1,000 at full fidelity beside them."""
    if compiled_build:
        from simulations.compiled import build

        print(f"compiled build: {build()}", file=sys.stderr)
    runs = []
    for name, nodes, dht, run_shards, target in TARGET_RUNS:
        if only is not None and name not in only:
            continue
        print(f"{name}: {nodes} nodes, {duration:g} s, dht {dht}", file=sys.stderr)
        limit = max_wall if target is None else max(max_wall, target)
        run = child_run(nodes, duration, dht, run_shards or shards, limit, compiled_build=compiled_build)
        run["name"] = name
        run["target_wall_s"] = target
        run["met"] = (
            None if target is None else bool(run.get("finished") and float(str(run["wall_s"])) <= target)
        )
        print(f"  {json.dumps(run)}", file=sys.stderr)
        runs.append(run)
    return {"runs": runs, "compiled": compiled_build, "duration": duration}


def markdown(out: dict[str, object], context: RunContext) -> str:
    lines = [f"## Simulator speed — {context.facts['cpu']}, {context.facts['cores']} cores", ""]
    lines += [*context.markdown(), ""]
    table = out.get("targets")
    if isinstance(table, dict):
        build = "the compiled build (mypyc)" if table["compiled"] else "pure Python"
        lines += [
            f"Issue 17 targets, `baseline` for {table['duration']:g} simulated seconds, {build}, "
            "each run in a fresh process:",
            "",
            "| run | nodes | DHT | processes | simulated s | wall s | CPU s | events | target | met |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for run in table["runs"]:
            target = "reported" if run["target_wall_s"] is None else f"<= {run['target_wall_s']:g} s wall"
            met = {None: "", True: "yes", False: "**no**"}[run["met"]]
            if not run.get("finished"):
                met = f"{met} (not finished: {run.get('error') or 'wall-time limit hit'})".strip()
            lines.append(
                f"| {run['name']} | {run['nodes']} | {run['dht']} | {run['shards']} | "
                f"{run.get('simulated_s', '')} | {run.get('wall_s', '')} | {run.get('cpu_s', '')} | "
                f"{run.get('events', '')} | {target} | {met} |"
            )
        lines.append("")
    runs: list[dict[str, object]] = []
    speed = out.get("speed")
    if isinstance(speed, dict):
        runs.append(speed)
    scale = out.get("scale")
    if isinstance(scale, dict):
        runs += scale["runs"]
    if runs:
        lines += [
            "| nodes | simulated s | wall s | speed-up | events | finished |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for run in runs:
            finished = "yes" if run["finished"] else f"no: wall-time limit {run['wall_limit_s']} s hit"
            lines.append(
                f"| {run['nodes']} | {run['simulated_s']} | {run['wall_s']} | {run['speedup']}x | "
                f"{run['events']} | {finished} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["targets", "speed", "scale", "both", "budget"], default="targets")
    parser.add_argument("--dht", choices=["full", "model"], default=None, help="speed/scale: the fidelity")
    parser.add_argument(
        "--shards", type=int, default=2, help="targets: processes of the 10,000-node run (speed: 1)"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="targets: run the mypyc build (built first if needed; `python -m simulations.compiled build`)",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"targets: a comma-separated subset of {', '.join(run[0] for run in TARGET_RUNS)}",
    )
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=None, help="speed: 1000; budget: 200")
    parser.add_argument("--duration", type=float, default=None, help="speed: 3600; budget: 1200")
    parser.add_argument("--max-wall", type=float, default=600.0, help="wall seconds allowed per run")
    parser.add_argument("--start", type=int, default=100, help="first size of the scale search")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--join", type=float, default=120.0, help="budget: simulated seconds of the join")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = parser.parse_args(argv)
    if args.max_wall <= 0:
        parser.error("--max-wall must be positive")
    if args.child is not None:  # one run of `targets`, in a fresh process: its JSON on the last line
        spec = json.loads(args.child)
        run = timed_run(
            spec["nodes"], spec["duration"], spec["max_wall"], dht=spec["dht"], shards=spec["shards"]
        )
        print(json.dumps(run))
        return
    context = RunContext.begin("benchmarks/bench_sim.py", argv, PACKAGES)
    print("command:", context.command, file=sys.stderr)
    out: dict[str, object] = {}
    if args.part == "targets":
        duration = args.duration if args.duration is not None else 3600.0
        only = None if args.only is None else args.only.split(",")
        out["targets"] = targets(
            duration, args.shards, args.max_wall, compiled_build=args.compiled, only=only
        )
    if args.part in ("speed", "both"):
        nodes = args.nodes if args.nodes is not None else 1000
        duration = args.duration if args.duration is not None else 3600.0
        run = timed_run(nodes, duration, args.max_wall, dht=args.dht)
        out["speed"] = {
            **run,
            "target_speedup": 60.0,
            "met": bool(run["finished"] and float(run["speedup"]) >= 60),
        }
    if args.part == "budget":
        # A run small enough to finish; the sizes are what it projects to.
        nodes = args.nodes if args.nodes is not None else 200
        duration = args.duration if args.duration is not None else 1200.0
        out["budget"] = budget(nodes, duration, args.join, args.max_wall)
    if args.part in ("scale", "both"):
        runs = []
        nodes = args.start
        for _ in range(args.max_steps):
            run = timed_run(nodes, 3600.0, args.max_wall, dht=args.dht)
            runs.append(run)
            if not run["finished"]:
                break
            nodes *= 2
        completed = [r["nodes"] for r in runs if r["finished"]]
        out["scale"] = {"runs": runs, "largest_completed": max(completed, default=0), "target_nodes": 10_000}
    context.end()
    document = json.dumps(
        {"benchmark": "simulator speed (issues 5 and 17)", **context.as_json(), **out}, indent=2
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document + "\n")
    print(markdown(out, context))
    print()
    print("```json")
    print(document)
    print("```")
    print(f"JSON written to {args.out}")


if __name__ == "__main__":
    main()
