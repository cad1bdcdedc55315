"""One run on one process against the same run on N (`simulations.shards`): wall, CPU, barrier wait.

Usage: ``python benchmarks/bench_shards.py NODES SHARDS [DURATION] [OUT.jsonl]``.  Runs the
bundled ``baseline`` with the 10 ms latency floor a sharded run applies (given to the
single-process run too, so both simulate the same model) and prints one JSON line: wall and
CPU seconds, the load average before and after, windows and barrier wait per worker,
messages crossing shards, and the metrics to compare (delivery, latency, duplicates, events).
"""

from __future__ import annotations

import json
import os
import sys
import time

from simulations.scenario import Scenario
from simulations.shards import ShardRun, prepare, run_sharded
from simulations.simulation import run_scenario


def main() -> None:
    nodes, shards = int(sys.argv[1]), int(sys.argv[2])
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
    scenario = Scenario.load("baseline").with_overrides(seed=None, nodes=nodes, duration=duration)
    scenario = prepare(scenario, 2)[0]  # the same floor for one shard and for many
    seen = ShardRun()
    load = os.getloadavg()
    cpu, started = time.process_time(), time.time()
    result = run_sharded(scenario, shards, timing=seen) if shards > 1 else run_scenario(scenario)
    m = result.metrics
    record = {
        "nodes": nodes,
        "shards": shards,
        "duration": duration,
        "wall": round(time.time() - started, 1),
        "cpu": round(time.process_time() - cpu + sum(seen.worker_cpu), 1),
        "load_before": load,
        "load_after": os.getloadavg(),
        "windows": seen.windows,
        "barrier_wait": [round(b, 1) for b in seen.barrier_wall],
        "messages_sent_crossed": seen.messages,
        "ok": result.ok,
        "delivery": m["delivery"]["ratio"],
        "expected": m["delivery"]["expected"],
        "latency_p50_p99": [m["delivery"]["latency_s"]["p50"], m["delivery"]["latency_s"]["p99"]],
        "duplicates": m["amplification"]["duplicates_per_delivery"],
        "events": m["events"],
    }
    print(json.dumps(record))
    if len(sys.argv) > 4:
        with open(sys.argv[4], "a") as out:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":  # the workers are spawned: they import this module
    main()
