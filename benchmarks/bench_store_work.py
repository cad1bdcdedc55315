"""Store work per entry: `Store.ingest_many` with signature checks taken out, now against before.

Issue 18 asks for the store's work per ingested entry to be halved, measured
with a profile before and after.  "Store work" is everything ingest does
except the Ed25519 check: reading and decoding the entry, the chain checks,
the bookkeeping around verification, SQLite.  To measure it alone, each
side runs in a fresh child process in which ``nacl.bindings.crypto_sign_open``
(what ``identity.keys.verify`` calls, before and now) is replaced by a stub
that returns the message without checking it; the child counts the stub's
calls and refuses to report unless every entry went through it once, so a
path that verified some other way could not hide in the figure.

The sides:

- **before**: the code at ``--baseline-rev`` (default 128d77c, the last
  commit before issue 18's work), checked out in a temporary ``git
  worktree``;
- **now**: this checkout.

Each of ``--rounds`` rounds builds a fresh feed of ``--entries`` posts with a
fresh key (with this checkout's code; building is not timed), writes it to a
file, and runs both sides back to back, in an order that alternates from
round to round.  Each child reads the file, opens a fresh on-disk store
(WAL, ``synchronous=FULL``: the store's own settings, on the disk next to the
repository) and times one ``Store.ingest_many`` of the whole list, with
whatever that side's code does by default (its verify pool, its caches, its
transaction size).  Wall time is ``perf_counter``, CPU time ``process_time``
(every thread of the child).  The ratio of a round is now / before per
entry; the report is the **median** over the rounds, wall and CPU, with the
load average before and after every round.  Target: at most 0.5.

``--profile`` adds one cProfile run of each side (not timed): the functions
that hold the most time, before and after.

Run from the repository root::

    .venv/bin/python benchmarks/bench_store_work.py [--entries N] [--rounds N] [--baseline-rev REV]

The exit status is 0 even when the target is missed: this is a report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_context import RunContext, git, load_average, median, ratio_summary, rotated, status  # noqa: E402
from bench_log import build_feed, progress, texts  # noqa: E402

from identity import Identity  # noqa: E402

DEFAULT_OUT = HERE / "results" / "bench_store_work.json"
DEFAULT_BASELINE = "128d77c"
TARGET = 0.5
PACKAGES = ("PyNaCl", "msgpack")

# The child: argv = tree, feed pickle, store directory, "time" | "profile".
CHILD = r"""
import cProfile, io, json, pstats, sys, threading, time
tree, feed, where, mode = sys.argv[1:5]
sys.path.insert(0, tree)
import nacl.bindings
calls = [0]
lock = threading.Lock()
def unchecked_open(signed, public_key):
    with lock:
        calls[0] += 1
    return signed[64:]
nacl.bindings.crypto_sign_open = unchecked_open  # before the project imports anything
import pickle
from pathlib import Path
from p2pblog.store import Store
author, raws = pickle.loads(Path(feed).read_bytes())
store = Store(Path(where) / "store.sqlite3")
profiler = cProfile.Profile() if mode == "profile" else None
wall, cpu = time.perf_counter(), time.process_time()
if profiler is not None:
    profiler.enable()
report = store.ingest_many(raws)
if profiler is not None:
    profiler.disable()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
held = store.latest_seq(author)
store.close()
if report.accepted != len(raws) or held != len(raws) or calls[0] != len(raws):
    sys.exit(f"accepted {report.accepted}, held {held}, signature stub called {calls[0]} of {len(raws)}")
out = {"entries": len(raws), "wall": wall, "cpu": cpu}
if profiler is not None:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
    out["profile"] = text.getvalue()
print(json.dumps(out))
"""


def run_child(tree: Path, feed: Path, workdir: Path, mode: str, timeout: float) -> dict[str, Any]:
    where = Path(tempfile.mkdtemp(dir=workdir))
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(tree), str(feed), str(where), mode],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tree,
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"the {tree} side failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def write_feed(round_index: int, entries: int, workdir: Path) -> Path:
    author = Identity(hashlib.sha256(f"bench-store-work round {round_index}".encode()).digest())
    raws = build_feed(author, texts(entries, 3000 + round_index))
    path = workdir / f"feed-{round_index}.pickle"
    path.write_bytes(pickle.dumps((author.public_key, raws)))
    return path


def per_entry_us(side: dict[str, Any], key: str) -> float:
    return float(side[key]) / int(side["entries"]) * 1e6


def markdown(result: dict[str, Any], context: RunContext) -> str:
    lines = [
        f"## Store work per entry (signature checks stubbed out) — {context.facts['cpu']}, "
        f"{context.facts['cores']} cores",
        "",
        *context.markdown(),
        "",
        f"{result['parameters']['rounds']} interleaved rounds (before first in odd-numbered rounds); "
        f"`Store.ingest_many` of {result['parameters']['entries']:,} posts into a fresh on-disk store, "
        f"each side in a fresh process; before = `{result['parameters']['baseline_rev']}`, "
        "now = this checkout. Times in µs per entry; ratio = now / before.",
        "",
        "| round | load before → after | before: wall (CPU) | now: wall (CPU) | ratio: wall (CPU) |",
        "|---:|---|---:|---:|---|",
    ]
    for row in result["rounds"]:
        b, n = row["before"], row["now"]
        lines.append(
            f"| {row['round']} | {row['load_before']:.2f} → {row['load_after']:.2f} "
            f"| {per_entry_us(b, 'wall'):.2f} ({per_entry_us(b, 'cpu'):.2f}) "
            f"| {per_entry_us(n, 'wall'):.2f} ({per_entry_us(n, 'cpu'):.2f}) "
            f"| {row['ratio_wall']:.3f} ({row['ratio_cpu']:.3f}) |"
        )
    wall, cpu = result["ratio"]["wall"], result["ratio"]["cpu"]
    lines += [
        "",
        "| measurement (median over rounds) | before | now | now / before | target | status |",
        "|---|---:|---:|---:|---:|---|",
        f"| store work per entry, wall (µs) | {result['before_us']['wall']:.2f} | "
        f"{result['now_us']['wall']:.2f} | **{wall['median']:.3f}** "
        f"({wall['min']:.3f}..{wall['max']:.3f}) | <= {TARGET} | {status(wall['met'])} |",
        f"| store work per entry, CPU (µs, all threads) | {result['before_us']['cpu']:.2f} | "
        f"{result['now_us']['cpu']:.2f} | {cpu['median']:.3f} ({cpu['min']:.3f}..{cpu['max']:.3f}) | | |",
    ]
    for side in ("before", "now"):
        if side in result.get("profiles", {}):
            lines += ["", f"cProfile of one `ingest_many`, {side} (not timed), by own time:", "", "```"]
            lines += [line.rstrip() for line in result["profiles"][side].strip().splitlines()]
            lines += ["```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="posts ingested per side and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--baseline-rev", default=DEFAULT_BASELINE, help="the commit 'before' is checked out at"
    )
    parser.add_argument("--child-timeout", type=float, default=600.0, help="seconds allowed per child")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--profile", action="store_true", help="also cProfile one run of each side")
    args = parser.parse_args(argv)
    if min(args.entries, args.rounds) < 1:
        parser.error("counts must be positive")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix=".bench-store-work-", dir=HERE))
    before_tree = workdir / "before"
    subprocess.run(
        ["git", "worktree", "add", "--quiet", "--detach", str(before_tree), args.baseline_rev],
        cwd=HERE.parent,
        check=True,
    )
    context = RunContext.begin("benchmarks/bench_store_work.py", argv, PACKAGES, workdir)
    trees = {"before": before_tree, "now": HERE.parent}
    rounds: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for index in range(args.rounds):
            feed = write_feed(index, args.entries, workdir)
            row: dict[str, Any] = {"round": index + 1, "load_before": load_average()[0]}
            for side in rotated(("before", "now"), index):
                progress(f"round {index + 1} of {args.rounds}: {side} ...")
                row[side] = run_child(trees[side], feed, workdir, "time", args.child_timeout)
            row["load_after"] = load_average()[0]
            row["ratio_wall"] = row["now"]["wall"] / row["before"]["wall"]
            row["ratio_cpu"] = row["now"]["cpu"] / row["before"]["cpu"]
            rounds.append(row)
            feed.unlink()
        if args.profile:
            feed = write_feed(args.rounds, args.entries, workdir)
            for side in ("before", "now"):
                progress(f"profiling {side} (not timed) ...")
                profiled = run_child(trees[side], feed, workdir, "profile", args.child_timeout)
                profiles[side] = profiled["profile"]
    finally:
        git("worktree", "remove", "--force", str(before_tree))
        shutil.rmtree(workdir, ignore_errors=True)
    context.end()

    def ratio(key: str, target: float | None) -> dict[str, Any]:
        # ratio_summary judges ">= target"; the store-work target is "<= 0.5".
        summary = ratio_summary([r[key] for r in rounds])
        if target is not None:
            summary["target"] = f"<= {target}"
            summary["met"] = summary["median"] <= target
        return summary

    result: dict[str, Any] = {
        "benchmark": "store work per entry: Store.ingest_many with crypto_sign_open stubbed, now vs before",
        **context.as_json(),
        "parameters": {"entries": args.entries, "rounds": args.rounds, "baseline_rev": args.baseline_rev},
        "rounds": rounds,
        "before_us": {k: median([per_entry_us(r["before"], k) for r in rounds]) for k in ("wall", "cpu")},
        "now_us": {k: median([per_entry_us(r["now"], k) for r in rounds]) for k in ("wall", "cpu")},
        "ratio": {"wall": ratio("ratio_wall", TARGET), "cpu": ratio("ratio_cpu", None)},
        "profiles": profiles,
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result, context))
    print()
    if not result["ratio"]["wall"]["met"]:
        print(f"MISSED: store work now / before, median {result['ratio']['wall']['median']:.3f} > {TARGET}")
    print(f"Wall time {result['wall_seconds']:.1f} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
