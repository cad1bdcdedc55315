"""Benchmark of the DHT (issue: DHT): 100 of our nodes against 100 ``kademlia`` nodes on loopback.

Side by side, on loopback only: N `dht.DhtCore` nodes, each on its own
`p2pblog.runtime.UdpDriver`, in one trio process (``dht_p2pblog_side.py``),
and N ``kademlia.network.Server`` nodes in one asyncio process
(``dht_kademlia_side.py``).  Node i of either side binds its own address,
``127.<i // 256>.<i % 256>.1`` (`dht_bench_common.node_host`): its own host
on its own /24, as on the Internet (our DHT limits per host and lets one /24
count at most twice among a lookup's k closest; 100 nodes on 127.0.0.1 are
one host on one network).  Both get the same workload, built here from
``--seed``:

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
node that answered, all in that process) and wall seconds per get (the get
phase's ``time.perf_counter``), and memory per node, measured the same way
on both sides, in the side's own process: (``VmRSS`` after the gets minus
``VmRSS`` before the first node was created) / N; the peak is ``ru_maxrss``
minus the same baseline.  One more run per side under ``tracemalloc`` (not
timed) counts the bytes allocated after the first node and still held after
the gets, per node, and names the lines that hold them.

The benchmark runs ``--repeat`` rounds (default 5).  A round runs both sides,
each in a fresh process, one right after the other, the order alternating;
a ratio (ours / theirs) is taken within each round and the report gives the
median of the rounds' ratios, never the best run (`POLICY`).  The load
average is recorded before and after the benchmark and each round.  The
whole benchmark stops starting rounds when ``--budget`` seconds (default
600) would be exceeded, says so in the report, and kills a side process
that outlives it.  Targets: our get success >= 99.5% and not below theirs;
our CPU per get and our RSS per node not above theirs.

Run from the repository root::

    .venv/bin/python benchmarks/bench_dht.py [--nodes 100] [--ops 500] [--seed 1] [--repeat 5] [--out PATH]

``--profile`` adds one more run of each side with cProfile over the get
phase (not used for the table); ``--no-tracemalloc`` skips the tracemalloc
runs.  The exit status is 0 even when a target is missed: this is a report,
not a test.
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

from bench_context import git
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


class BudgetSpent(Exception):
    """The time budget cannot hold another side run (the run in hand was killed, or not started)."""


def run_side(side: str, spec_path: Path, *extra: str, timeout: float) -> dict[str, Any]:
    """Run one side process; its progress goes to our stderr, its JSON result comes on stdout."""
    command = [sys.executable, str(SIDES[side]), "--spec", str(spec_path), *extra]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BudgetSpent(f"the {side} side did not finish within the {timeout:.0f} s left") from None
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


def median(values: list[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count); NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else float("nan")


def summarize(run: dict[str, Any], nodes: int) -> dict[str, Any]:
    """One side's figures from one run (one process)."""
    puts, gets = run["puts"], run["gets"]
    gets_run = gets["operations"] - gets["outcomes"].get(SKIPPED, 0)
    before, after = run["memory"]["before_nodes"], run["memory"]["after_gets"]
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
        "wall_per_get": gets["wall_seconds"] / gets_run if gets_run else float("nan"),
        "cpu_per_put": puts["cpu_seconds"] / puts["operations"] if puts["operations"] else float("nan"),
        "get_phase_cpu_seconds": gets["cpu_seconds"],
        "get_phase_wall_seconds": gets["wall_seconds"],
        "datagrams_per_get": gets["rx_datagrams"] / gets_run if gets_run else float("nan"),
        "rss_kib_before_nodes": before["vm_rss_kib"],
        "rss_kib_after_gets": after["vm_rss_kib"],
        "rss_kib_per_node": (after["vm_rss_kib"] - before["vm_rss_kib"]) / nodes,
        "peak_rss_kib_per_node": (after["max_rss_kib"] - before["vm_rss_kib"]) / nodes,
        "joined": run["bootstrap"]["joined"],
        "bootstrap_wall_seconds": run["bootstrap"]["wall_seconds"],
        "settled_quiet": run["settle"]["quiet"],
        "settle_wall_seconds": run["settle"]["wall_seconds"],
        "records_held": run["records_held"],
    }


def combine(runs: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """One side's figures over its rounds: see POLICY."""
    per_run = [summarize(run, nodes) for run in runs]
    latencies = [x for r in runs for x in r["gets"]["latencies"]]
    put_latencies = [x for r in runs for x in r["puts"]["latencies"]]
    puts = sum(r["puts"]["operations"] for r in runs)
    gets = sum(r["gets"]["operations"] for r in runs)
    outcomes: dict[str, int] = {}
    for r in runs:
        for key, count in r["gets"]["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + count

    def mid(key: str) -> float:
        return median([s[key] for s in per_run])

    return {
        "runs": len(runs),
        "put_success": sum(r["puts"]["ok"] for r in runs) / puts if puts else 0.0,
        "get_success": sum(r["gets"]["ok"] for r in runs) / gets if gets else 0.0,
        "get_outcomes": outcomes,
        "gets_total": gets,
        "get_latency_median": quantile(latencies, 0.5),
        "get_latency_p99": quantile(latencies, 0.99),
        "get_latency_max": max(latencies, default=float("nan")),
        "put_latency_median": quantile(put_latencies, 0.5),
        **{
            key: mid(key)
            for key in (
                "cpu_per_get",
                "wall_per_get",
                "cpu_per_put",
                "datagrams_per_get",
                "rss_kib_before_nodes",
                "rss_kib_per_node",
                "peak_rss_kib_per_node",
            )
        },
        "cpu_per_get_all": [s["cpu_per_get"] for s in per_run],
        "per_run": per_run,
    }


#: Per-round ratios (ours / theirs) reported as medians: key in `summarize` -> label.
RATIOS = {
    "cpu_per_get": "CPU per get",
    "wall_per_get": "wall time per get (get phase)",
    "rss_kib_per_node": "RSS per node",
}


def round_ratios(rounds: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """Ours / theirs within each round (same load, minutes apart), and their medians."""
    out: dict[str, Any] = {}
    for key in RATIOS:
        each = [
            ratio(summarize(r["p2pblog"], nodes)[key], summarize(r["kademlia"], nodes)[key]) for r in rounds
        ]
        out[key] = {"median": median(each), "rounds": each}
    return out


def tracemalloc_summary(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None or "tracemalloc" not in run:
        return None
    t = run["tracemalloc"]
    return {
        "bytes_per_node": t["bytes_per_node"],
        "peak_bytes_per_node": t["peak_bytes_per_node"],
        "get_success": run["gets"]["ok"] / run["gets"]["operations"] if run["gets"]["operations"] else 0.0,
        "joined": run["bootstrap"]["joined"],
        "by_file": t["by_file"][:12],
        "by_line": t["by_line"][:20],
    }


# --- machine ------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_state(*paths: str) -> dict[str, Any]:
    """The commit measured, and uncommitted changes under paths (default: dht/ and p2pblog/)."""

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


def markdown(result: dict[str, Any]) -> str:
    m, p = result["machine"], result["parameters"]
    ours, theirs = result["summary"]["p2pblog"], result["summary"]["kademlia"]
    ratios = result["ratios"]
    uncommitted = result["source"]["uncommitted"]
    rounds = result["rounds"]
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
        f"Workload: seed {p['seed']}, {len(rounds)} of {p['repeat']} rounds run"
        + (" (**the time budget stopped the rest**)" if len(rounds) < p["repeat"] else "")
        + f", concurrency {p['concurrency']}, op timeout {p['op_timeout']:g} s; load average "
        f"(1 min) before / after: {result['load_average_before'][0]:.2f} / "
        f"{result['load_average_after'][0]:.2f}",
        "",
        "| measurement | p2pblog (trio) | kademlia (asyncio) | ours / theirs |",
        "|---|---:|---:|---:|",
    ]

    def row(label: str, key: str, fmt: str, scale: float = 1.0, shown: str = "") -> None:
        a, b = ours[key] * scale, theirs[key] * scale
        lines.append(f"| {label} | {a:{fmt}} | {b:{fmt}} | {shown} |")

    def median_ratio(key: str) -> str:
        return f"**{ratios[key]['median']:.2f}** (median of rounds)"

    row("put success (all rounds)", "put_success", ".2%")
    row("get success (all rounds)", "get_success", ".2%")
    row("get latency, median (ms)", "get_latency_median", ".2f", 1000)
    row("get latency, p99 (ms)", "get_latency_p99", ".2f", 1000)
    row("CPU per get (ms), median of rounds", "cpu_per_get", ".3f", 1000, median_ratio("cpu_per_get"))
    row(
        "wall time per get (ms, get phase / gets), median",
        "wall_per_get",
        ".3f",
        1000,
        median_ratio("wall_per_get"),
    )
    row("datagrams received per get, median", "datagrams_per_get", ".2f")
    row("CPU per put (ms), median of rounds", "cpu_per_put", ".3f", 1000)
    row(
        "RSS per node (KiB): (VmRSS after gets - VmRSS before the first node) / N",
        "rss_kib_per_node",
        ".1f",
        1.0,
        median_ratio("rss_kib_per_node"),
    )
    row(
        "peak RSS per node (KiB): (ru_maxrss - VmRSS before the first node) / N",
        "peak_rss_kib_per_node",
        ".1f",
    )
    row("VmRSS before the first node (KiB): interpreter, imports, workload", "rss_kib_before_nodes", ",.0f")
    traced = result["tracemalloc"]
    if traced["p2pblog"] is not None and traced["kademlia"] is not None:
        a, b = traced["p2pblog"], traced["kademlia"]
        for label, key in (
            (
                "tracemalloc per node (KiB): held after the gets, allocated since the first node",
                "bytes_per_node",
            ),
            ("tracemalloc peak per node (KiB)", "peak_bytes_per_node"),
        ):
            lines.append(
                f"| {label} | {a[key] / 1024:.1f} | {b[key] / 1024:.1f} | {ratio(a[key], b[key]):.2f} |"
            )
    lines += ["", "| target | value | status |", "|---|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['name']} | {t['value']} | {'met' if t['met'] else '**MISSED**'} |")
    lines += [
        "",
        "| round | load before / after | side | joins | get ok | CPU/get (ms) | wall/get (ms) "
        "| datagrams/get | get p50 / p99 (ms) | RSS/node (KiB) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for i, rnd in enumerate(rounds):
        for side in rnd["order"]:
            r = summarize(rnd[side], p["nodes"])
            lines.append(
                f"| {i + 1} | {rnd['load_before'][0]:.2f} / {rnd['load_after'][0]:.2f} | {side} | "
                f"{r['joined']}/{p['nodes'] - 1} | {r['get_success']:.1%} | {r['cpu_per_get'] * 1000:.3f} | "
                f"{r['wall_per_get'] * 1000:.3f} | {r['datagrams_per_get']:.2f} | "
                f"{r['get_latency_median'] * 1000:.2f} / {r['get_latency_p99'] * 1000:.2f} | "
                f"{r['rss_kib_per_node']:.1f} |"
            )
    for side, s in (("p2pblog", ours), ("kademlia", theirs)):
        failures = {k: v for k, v in s["get_outcomes"].items() if k != "ok"}
        if failures:
            lines.append(f"\n{side}: failed gets by outcome: {failures}")
    for side in SIDES:
        t = traced[side]
        if t is None:
            continue
        lines += ["", f"{side}, tracemalloc run: largest holders after the gets (KiB per node)", ""]
        lines += [f"    {x['bytes'] / 1024 / p['nodes']:7.1f}  {x['where']}" for x in t["by_line"][:12]]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------


POLICY = (
    "rounds interleave the sides: each round runs both, each in its own fresh process, one after "
    "the other (p2pblog first in odd rounds, kademlia first in even ones), so both meet the same "
    "load; a ratio is ours / theirs within a round, reported as the median over the rounds (never "
    "the best run); per-side figures are medians over the rounds, success rates and latency "
    "quantiles pool every get; CPU per get is time.process_time over the get phase / gets, wall "
    "per get the get phase's time.perf_counter / gets; memory per node is (VmRSS after the gets - "
    "VmRSS of the same process before its first node) / nodes, measured the same way on both "
    "sides, and tracemalloc (one more run per side, not timed) counts the bytes allocated after "
    "the first node and still held after the gets"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes per side")
    parser.add_argument("--ops", type=int, default=500, help="keys: puts, then as many gets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="rounds (each runs both sides)")
    parser.add_argument("--concurrency", type=int, default=10, help="operations in flight at once")
    parser.add_argument("--op-timeout", type=float, default=10.0, help="seconds per put, get or join")
    parser.add_argument("--phase-budget", type=float, default=30.0, help="seconds per join/put/get phase")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after the tables are quiet")
    parser.add_argument("--settle-max", type=float, default=15.0, help="longest wait for quiet tables")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for the whole benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc run per side")
    parser.add_argument("--profile", action="store_true", help="also cProfile one get phase per side")
    args = parser.parse_args(argv)
    if args.nodes < 3 or args.ops < 1 or args.concurrency < 1 or args.op_timeout <= 0 or args.repeat < 1:
        parser.error("need --nodes >= 3, --ops >= 1, --concurrency >= 1, --op-timeout > 0, --repeat >= 1")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    spec = build_spec(args)
    load_before = os.getloadavg()
    start = time.perf_counter()
    deadline = start + args.budget
    rounds: list[dict[str, Any]] = []
    traced_runs: dict[str, dict[str, Any] | None] = {side: None for side in SIDES}
    profiles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dht-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec.to_json()))

        def launch(side: str, *extra: str) -> dict[str, Any]:
            remaining = deadline - time.perf_counter()
            if remaining < 5:
                raise BudgetSpent(f"the time budget of {args.budget:.0f} s is spent")
            return run_side(side, spec_path, *extra, timeout=remaining)

        longest = 0.0
        for round_ in range(args.repeat):
            if round_ and deadline - time.perf_counter() < 1.5 * longest:
                print(f"stopping after {round_} rounds: the time budget would be exceeded", file=sys.stderr)
                break
            t0 = time.perf_counter()
            order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
            this: dict[str, Any] = {"order": order, "load_before": os.getloadavg()}
            try:
                for side in order:
                    print(
                        f"{side}: {args.nodes} nodes, round {round_ + 1} of {args.repeat} ...",
                        file=sys.stderr,
                    )
                    this[side] = launch(side)
            except BudgetSpent as exc:
                print(f"stopping after {round_} rounds (this one is dropped): {exc}", file=sys.stderr)
                break
            this["load_after"] = os.getloadavg()
            rounds.append(this)
            longest = max(longest, time.perf_counter() - t0)
        if not rounds:
            raise SystemExit(f"no round finished within the time budget of {args.budget:.0f} s")
        try:
            if not args.no_tracemalloc:
                for side in SIDES:
                    print(f"{side}: tracemalloc run (not timed) ...", file=sys.stderr)
                    traced_runs[side] = launch(side, "--tracemalloc")
            if args.profile:
                for side in SIDES:
                    print(f"{side}: profiled run (not in the table) ...", file=sys.stderr)
                    out = Path(tmp) / f"{side}.prof.txt"
                    launch(side, "--profile-out", str(out))
                    profiles[side] = out.read_text()
        except BudgetSpent as exc:
            print(f"skipping the rest of the extra runs: {exc}", file=sys.stderr)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    summary = {side: combine([r[side] for r in rounds], args.nodes) for side in SIDES}
    ratios = round_ratios(rounds, args.nodes)
    ours, theirs = summary["p2pblog"], summary["kademlia"]
    cpu = ratios["cpu_per_get"]["median"]
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
            "name": "our CPU per get <= theirs (median of the rounds' ratios)",
            "value": f"{cpu:.2f}x (wall {ratios['wall_per_get']['median']:.2f}x)",
            "met": cpu <= 1.0,
        },
        {
            "name": "our RSS per node <= theirs (median of the rounds' ratios)",
            "value": f"{ratios['rss_kib_per_node']['median']:.2f}x "
            f"({ours['rss_kib_per_node']:.1f} vs {theirs['rss_kib_per_node']:.1f} KiB)",
            "met": ratios["rss_kib_per_node"]["median"] <= 1.0,
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
            "hosts": "one loopback address per node (127.0.0.1, 127.0.0.2, ...), the same on both sides",
        },
        "summary": summary,
        "ratios": ratios,
        "tracemalloc": {side: tracemalloc_summary(traced_runs[side]) for side in SIDES},
        "targets": targets,
        "rounds": rounds,
        "tracemalloc_runs": traced_runs,
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
