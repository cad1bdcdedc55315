"""Benchmark of the DHT (issue: DHT): 100 of our nodes against 100 ``kademlia`` nodes on loopback.

Side by side in one run, on 127.0.0.1 only: N `dht.DhtCore` nodes, each on
its own `p2pblog.runtime.UdpDriver`, in one trio process
(``dht_p2pblog_side.py``), and N ``kademlia.network.Server`` nodes in one
asyncio process (``dht_kademlia_side.py``), run one after the other.  Both
get the same workload, built here from ``--seed``:

* the same node ids; node i joins through node 0 and one random earlier node,
  one join after the other; then the tables settle (until no node has a
  query or RPC in flight, at most ``--settle-max`` s, then ``--settle`` s);
* ``--ops`` random keys (text; ``kademlia`` stores ``Server.set(key, value)``
  under ``sha1(key)``, so our side puts under ``dht.kademlia_key(key)``: both
  use identical 160-bit keys) with 100-byte random values, each stored from a
  random node;
* then one get per key from a random node other than its storer.  A get
  succeeds when it returns exactly the stored bytes.

Both phases run ``--concurrency`` operations at a time, each bounded by
``--op-timeout`` s and each phase by ``--phase-budget`` s.  Reported per side:
put and get success, median and p99 get latency, process CPU seconds per get
(``time.process_time`` over the get phase: the requesting nodes and every
node that answered, all in that process), and resident memory per node
(``VmRSS`` after the gets minus ``VmRSS`` of the same process started with
``--baseline``, which imports everything and reads the workload but creates
no node, divided by N).  Targets: our get success >= 99.5% and not below
theirs; our CPU per get not above theirs.

Each side runs ``--repeat`` times (default 5), each time in a fresh process
and with the same workload; `POLICY` says how the runs are combined.  The
whole benchmark stops starting runs when ``--budget`` seconds (default 280)
would be exceeded, and kills a side process that outlives it.

Run from the repository root::

    .venv/bin/python benchmarks/bench_dht.py [--nodes 100] [--ops 500] [--seed 1] [--repeat 5] [--out PATH]

``--profile`` adds one more run of each side with cProfile over the get
phase (not used for the table).  The exit status is 0 even when a target is
missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_log import cpu_model
from dht_bench_common import SKIPPED, Spec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "bench_dht.json"
SIDES = {"p2pblog": HERE / "dht_p2pblog_side.py", "kademlia": HERE / "dht_kademlia_side.py"}
TARGET_SUCCESS = 0.995
VALUE_BYTES = 100


# --- workload ---------------------------------------------------------------------


def build_spec(args: argparse.Namespace) -> Spec:
    rng = random.Random(args.seed)
    n = args.nodes
    ids: list[bytes] = []
    while len(ids) < n:
        node_id = rng.randbytes(20)
        if node_id not in ids:
            ids.append(node_id)
    seeds: list[list[int]] = [[]] + [[0] + ([rng.randrange(1, i)] if i > 1 else []) for i in range(1, n)]
    keys: list[str] = []
    while len(keys) < args.ops:
        key = f"bench-dht-{rng.randbytes(8).hex()}"
        if key not in keys:
            keys.append(key)
    values = [rng.randbytes(VALUE_BYTES) for _ in keys]
    storers = [rng.randrange(n) for _ in keys]
    getters: list[int] = []
    for s in storers:
        g = rng.randrange(n - 1)
        getters.append(g + 1 if g >= s else g)
    return Spec(
        seed=args.seed,
        ids=ids,
        seeds=seeds,
        keys=keys,
        values=values,
        storers=storers,
        getters=getters,
        concurrency=args.concurrency,
        op_timeout=args.op_timeout,
        phase_budget=args.phase_budget,
        settle=args.settle,
        settle_max=args.settle_max,
    )


def run_side(side: str, spec_path: Path, *extra: str, timeout: float) -> dict[str, Any]:
    """Run one side process; its progress goes to our stderr, its JSON result comes on stdout."""
    command = [sys.executable, str(SIDES[side]), "--spec", str(spec_path), *extra]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the {side} side did not finish within {timeout:.0f} s") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"the {side} side failed (exit status {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- statistics -------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (the smallest value with at least q of the values at or below it)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def summarize(run: dict[str, Any], baseline: dict[str, Any], nodes: int) -> dict[str, Any]:
    puts, gets = run["puts"], run["gets"]
    gets_run = gets["operations"] - gets["outcomes"].get(SKIPPED, 0)
    rss = run["memory"]["vm_rss_kib"] - baseline["memory"]["vm_rss_kib"]
    return {
        "put_success": puts["ok"] / puts["operations"] if puts["operations"] else 0.0,
        "get_success": gets["ok"] / gets["operations"] if gets["operations"] else 0.0,
        "put_outcomes": puts["outcomes"],
        "get_outcomes": gets["outcomes"],
        "put_latency_median": quantile(puts["latencies"], 0.5),
        "get_latency_median": quantile(gets["latencies"], 0.5),
        "get_latency_p99": quantile(gets["latencies"], 0.99),
        "get_latency_max": max(gets["latencies"], default=float("nan")),
        "cpu_per_get": gets["cpu_seconds"] / gets_run if gets_run else float("nan"),
        "cpu_per_put": puts["cpu_seconds"] / puts["operations"] if puts["operations"] else float("nan"),
        "get_phase_cpu_seconds": gets["cpu_seconds"],
        "get_phase_wall_seconds": gets["wall_seconds"],
        "cpu_utilisation_gets": gets["cpu_seconds"] / gets["wall_seconds"] if gets["wall_seconds"] else 0.0,
        "datagrams_per_get": gets["rx_datagrams"] / gets_run if gets_run else float("nan"),
        "rss_kib_after_gets": run["memory"]["vm_rss_kib"],
        "baseline_rss_kib": baseline["memory"]["vm_rss_kib"],
        "rss_kib_per_node": rss / nodes,
        "max_rss_kib": run["memory"]["max_rss_kib"],
        "max_rss_kib_per_node": (run["memory"]["max_rss_kib"] - baseline["memory"]["max_rss_kib"]) / nodes,
        "joined": run["bootstrap"]["joined"],
        "bootstrap_wall_seconds": run["bootstrap"]["wall_seconds"],
        "settled_quiet": run["settle"]["quiet"],
        "settle_wall_seconds": run["settle"]["wall_seconds"],
        "records_held": run["records_held"],
    }


# --- machine ------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_state(*paths: str) -> dict[str, Any]:
    """The commit measured, and uncommitted changes under paths (default: dht/ and p2pblog/)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = git("status", "--porcelain", "--", *(paths or ("dht", "p2pblog")))
    return {"commit": git("rev-parse", "HEAD") or "unknown", "uncommitted": dirty.splitlines()}


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "trio": version("trio"),
        "msgpack": version("msgpack"),
        "kademlia": version("kademlia"),
        "rpcudp": version("rpcudp"),
        "u-msgpack-python": version("u-msgpack-python"),
    }


# --- report -----------------------------------------------------------------------


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("nan")


def markdown(result: dict[str, Any]) -> str:
    m, p = result["machine"], result["parameters"]
    ours, theirs = result["summary"]["p2pblog"], result["summary"]["kademlia"]
    uncommitted = result["source"]["uncommitted"]
    lines = [
        f"## DHT: {p['nodes']} nodes, {p['ops']} puts and {p['ops']} gets — {m['cpu']}, {m['cores']} cores",
        "",
        f"Python {m['python']}, trio {m['trio']}, msgpack {m['msgpack']}; kademlia {m['kademlia']}, "
        f"rpcudp {m['rpcudp']}, u-msgpack-python {m['u-msgpack-python']}. "
        f"Commit {result['source']['commit'][:10]}"
        + (
            f" with uncommitted changes to {', '.join(x.split()[-1] for x in uncommitted)}."
            if uncommitted
            else "."
        ),
        f"Policy: {result['policy']}.",
        f"Workload: seed {p['seed']}, {ours['runs']} runs per side, concurrency {p['concurrency']}, "
        f"op timeout {p['op_timeout']:g} s; load average before/after: "
        f"{result['load_average_before'][0]:.2f} / {result['load_average_after'][0]:.2f}",
        "",
        "| measurement | p2pblog (trio) | kademlia (asyncio) | ours / theirs |",
        "|---|---:|---:|---:|",
    ]

    def row(label: str, key: str, fmt: str, scale: float = 1.0, show_ratio: bool = True) -> None:
        a, b = ours[key] * scale, theirs[key] * scale
        r = f"{ratio(a, b):.2f}" if show_ratio else ""
        lines.append(f"| {label} | {a:{fmt}} | {b:{fmt}} | {r} |")

    row("put success (all runs)", "put_success", ".2%", show_ratio=False)
    row("get success (all runs)", "get_success", ".2%", show_ratio=False)
    row("get latency, median (ms)", "get_latency_median", ".2f", 1000)
    row("get latency, p99 (ms)", "get_latency_p99", ".2f", 1000)
    row("get latency, max (ms)", "get_latency_max", ".2f", 1000)
    row("CPU per get (ms), best run", "cpu_per_get", ".3f", 1000)
    row("datagrams received per get, same run", "datagrams_per_get", ".2f")
    row("CPU per put (ms), best run", "cpu_per_put", ".3f", 1000)
    row("put latency, median (ms)", "put_latency_median", ".2f", 1000)
    row("RSS per node (KiB): VmRSS after gets - baseline", "rss_kib_per_node", ".1f")
    row("peak RSS per node (KiB): ru_maxrss - baseline", "max_rss_kib_per_node", ".1f")
    row("baseline VmRSS (KiB): imports + workload, no node", "baseline_rss_kib", ",.0f")
    lines += ["", "| target | value | status |", "|---|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['name']} | {t['value']} | {'met' if t['met'] else '**MISSED**'} |")
    lines += [
        "",
        "| run | side | joins | get ok | put ok | CPU/get (ms) | datagrams/get | get p50 / p99 (ms) "
        "| RSS/node (KiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for side, s in (("p2pblog", ours), ("kademlia", theirs)):
        for i, r in enumerate(s["per_run"]):
            lines.append(
                f"| {i + 1} | {side} | {r['joined']}/{p['nodes'] - 1} | {r['get_success']:.1%} | "
                f"{r['put_success']:.1%} | {r['cpu_per_get'] * 1000:.3f} | {r['datagrams_per_get']:.2f} | "
                f"{r['get_latency_median'] * 1000:.2f} / {r['get_latency_p99'] * 1000:.2f} | "
                f"{r['rss_kib_per_node']:.1f} |"
            )
    for side, s in (("p2pblog", ours), ("kademlia", theirs)):
        failures = {k: v for k, v in s["get_outcomes"].items() if k != "ok"}
        if failures:
            lines.append(f"\n{side}: failed gets by outcome: {failures}")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------


def combine(runs: list[dict[str, Any]], baseline: dict[str, Any], nodes: int) -> dict[str, Any]:
    """One side's figures over its runs: see POLICY."""
    per_run = [summarize(run, baseline, nodes) for run in runs]
    best = min(range(len(runs)), key=lambda i: per_run[i]["cpu_per_get"])
    pooled_puts = {
        "operations": sum(r["puts"]["operations"] for r in runs),
        "ok": sum(r["puts"]["ok"] for r in runs),
        "latencies": [x for r in runs for x in r["puts"]["latencies"]],
    }
    pooled_gets = {
        "operations": sum(r["gets"]["operations"] for r in runs),
        "ok": sum(r["gets"]["ok"] for r in runs),
        "latencies": [x for r in runs for x in r["gets"]["latencies"]],
    }
    outcomes: dict[str, int] = {}
    for r in runs:
        for key, count in r["gets"]["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + count
    rss = sorted(s["rss_kib_per_node"] for s in per_run)
    peak = sorted(s["max_rss_kib_per_node"] for s in per_run)
    return {
        "runs": len(runs),
        "best_cpu_run": best,
        "put_success": pooled_puts["ok"] / pooled_puts["operations"],
        "get_success": pooled_gets["ok"] / pooled_gets["operations"],
        "get_outcomes": outcomes,
        "gets_total": pooled_gets["operations"],
        "get_latency_median": quantile(pooled_gets["latencies"], 0.5),
        "get_latency_p99": quantile(pooled_gets["latencies"], 0.99),
        "get_latency_max": max(pooled_gets["latencies"], default=float("nan")),
        "put_latency_median": quantile(pooled_puts["latencies"], 0.5),
        "cpu_per_get": per_run[best]["cpu_per_get"],
        "cpu_per_get_all": [s["cpu_per_get"] for s in per_run],
        "cpu_per_put": min(s["cpu_per_put"] for s in per_run),
        "datagrams_per_get": per_run[best]["datagrams_per_get"],
        "rss_kib_per_node": rss[len(rss) // 2],
        "max_rss_kib_per_node": peak[len(peak) // 2],
        "baseline_rss_kib": baseline["memory"]["vm_rss_kib"],
        "per_run": per_run,
    }


POLICY = (
    "each side runs --repeat times in its own fresh process, the order alternating "
    "(p2pblog first in odd rounds, kademlia first in even ones); success rates and latency "
    "quantiles pool every get of every run (a timed-out get counts its timeout); CPU per get "
    "(time.process_time over the get phase / gets) is the best run of each side, as noise "
    "only adds CPU time; memory per node is the median run: (VmRSS after the gets - VmRSS of "
    "the same side started with --baseline, i.e. interpreter + imports + workload) / nodes"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes per side")
    parser.add_argument("--ops", type=int, default=500, help="keys: puts, then as many gets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="runs per side (see the policy)")
    parser.add_argument("--concurrency", type=int, default=10, help="operations in flight at once")
    parser.add_argument("--op-timeout", type=float, default=10.0, help="seconds per put, get or join")
    parser.add_argument("--phase-budget", type=float, default=30.0, help="seconds per join/put/get phase")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after the tables are quiet")
    parser.add_argument("--settle-max", type=float, default=15.0, help="longest wait for quiet tables")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--profile", action="store_true", help="also cProfile one get phase per side")
    args = parser.parse_args(argv)
    if args.nodes < 3 or args.ops < 1 or args.concurrency < 1 or args.op_timeout <= 0 or args.repeat < 1:
        parser.error("need --nodes >= 3, --ops >= 1, --concurrency >= 1, --op-timeout > 0, --repeat >= 1")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    spec = build_spec(args)
    load_before = os.getloadavg()
    start = time.perf_counter()
    deadline = start + args.budget
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    baselines: dict[str, dict[str, Any]] = {}
    profiles: dict[str, str] = {}
    longest = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-dht-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec.to_json()))

        def launch(side: str, *extra: str) -> dict[str, Any]:
            nonlocal longest
            t0 = time.perf_counter()
            remaining = deadline - t0
            if remaining < 5:
                raise SystemExit(f"the time budget of {args.budget:.0f} s is spent")
            result = run_side(side, spec_path, *extra, timeout=remaining)
            longest = max(longest, time.perf_counter() - t0)
            return result

        for side in SIDES:
            print(f"{side}: baseline ...", file=sys.stderr)
            baselines[side] = launch(side, "--baseline")
        for round_ in range(args.repeat):
            order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
            if round_ and deadline - time.perf_counter() < 2.5 * longest * len(order):
                print(f"stopping after {round_} rounds: the time budget would be exceeded", file=sys.stderr)
                break
            for side in order:
                print(f"{side}: {args.nodes} nodes, round {round_ + 1} of {args.repeat} ...", file=sys.stderr)
                runs[side].append(launch(side))
        if args.profile:
            for side in SIDES:
                print(f"{side}: profiled run (not in the table) ...", file=sys.stderr)
                out = Path(tmp) / f"{side}.prof.txt"
                launch(side, "--profile-out", str(out))
                profiles[side] = out.read_text()
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    summary = {side: combine(runs[side], baselines[side], args.nodes) for side in SIDES}
    ours, theirs = summary["p2pblog"], summary["kademlia"]
    targets = [
        {
            "name": f"our get success >= {TARGET_SUCCESS:.1%}",
            "value": f"{ours['get_success']:.2%} of {ours['gets_total']}",
            "met": ours["get_success"] >= TARGET_SUCCESS,
        },
        {
            "name": "our get success >= theirs",
            "value": f"{ours['get_success']:.2%} vs {theirs['get_success']:.2%}",
            "met": ours["get_success"] >= theirs["get_success"],
        },
        {
            "name": "our CPU per get <= theirs",
            "value": f"{ratio(ours['cpu_per_get'], theirs['cpu_per_get']):.2f}x "
            f"({ours['cpu_per_get'] * 1000:.3f} vs {theirs['cpu_per_get'] * 1000:.3f} ms)",
            "met": ours["cpu_per_get"] <= theirs["cpu_per_get"],
        },
    ]
    result: dict[str, Any] = {
        "benchmark": "DHT: nodes, puts and gets against kademlia (issue: DHT)",
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_dht.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": source_state(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "policy": POLICY,
        "parameters": {
            "nodes": args.nodes,
            "ops": args.ops,
            "seed": args.seed,
            "repeat": args.repeat,
            "concurrency": args.concurrency,
            "op_timeout": args.op_timeout,
            "phase_budget": args.phase_budget,
            "settle": args.settle,
            "settle_max": args.settle_max,
            "value_bytes": VALUE_BYTES,
            "host": "127.0.0.1",
        },
        "summary": summary,
        "targets": targets,
        "baselines": baselines,
        "runs": runs,
        "wall_seconds": wall,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(markdown(result))
    print()
    for t in targets:
        if not t["met"]:
            print(f"MISSED: {t['name']} ({t['value']})")
    print(f"Wall time {wall:.1f} s; JSON written to {args.out}")
    for text in profiles.values():
        print()
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
