"""Benchmark of the command line's start-up: CPU time of a whole ``p2pblog`` process.

For each command, ``--runs`` pairs of child processes, interleaved: a bare
``python -c pass`` and ``python -m p2pblog --home H COMMAND``, alternating
which goes first.  The CPU time of a child is its user + system time, read
with ``resource.getrusage(RUSAGE_CHILDREN)`` before and after it (all its
threads).  A pair gives the command's CPU time *over* the bare interpreter;
the report is the **median of those differences** (never the best run),
with the medians of both sides beside it.  Pairs cancel out what a busy
machine adds to both (the farm's paired-runs method); the machine's load
average is recorded before and after.

Commands (the ones that only read the store or talk to the control port):
``--help``, ``id``, ``timeline`` (of a home holding ``--posts`` posts),
``post`` with no node running (offline: writes the store), and ``status``
and ``post`` with the home's node running (``run --no-web``), which go
through the control port.  The target (issue 16) is under 0.1 s of CPU
each.

``--tree DIR`` measures another checkout (``PYTHONPATH=DIR``, run from DIR),
e.g. the code before a change: ``git archive REV | tar -x -C /tmp/before``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cli.py [--runs N] [--posts N] [--tree DIR] [--out PATH]

The exit status is 0 even when the target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.1


def _cpu_of(command: list[str], env: dict[str, str], cwd: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed: {result.stderr.decode(errors='replace')}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _paired(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[list[float], list[float]]:
    bare = [sys.executable, "-c", "pass"]
    base, cost = [], []
    for i in range(runs):
        if i % 2:
            cost.append(_cpu_of(command, env, cwd))
            base.append(_cpu_of(bare, env, cwd))
        else:
            base.append(_cpu_of(bare, env, cwd))
            cost.append(_cpu_of(command, env, cwd))
    return base, cost


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {os.cpu_count()} CPUs, {system}, Python {platform.python_version()}"


def _start_node(
    p2pblog: Callable[..., list[str]], home: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    node = subprocess.Popen(
        p2pblog("run", "--no-web", "--listen", "127.0.0.1:0"),
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (home / "node.json").exists():
        if time.monotonic() > deadline or node.poll() is not None:
            raise SystemExit("the node did not start")
        time.sleep(0.1)
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="pairs per command")
    parser.add_argument("--posts", type=int, default=200, help="posts in the home timeline reads")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args()
    tree = args.tree.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    env["PYTHONPATH"] = str(tree)
    # As installed: modules load from their bytecode caches (the first run of each command
    # writes them; it is not measured).  With PYTHONDONTWRITEBYTECODE every run would
    # compile every module again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    load_before = os.getloadavg()
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp) / "home"

        def p2pblog(*words: str) -> list[str]:
            return [sys.executable, "-m", "p2pblog", "--home", str(home), *words]

        subprocess.run(p2pblog("init"), env=env, cwd=tree, check=True, capture_output=True)
        if args.posts:
            script = (
                "import sys, time\n"
                "from pathlib import Path\n"
                "from p2pblog.home import Home\n"
                "from p2pblog import actions\n"
                "home = Home(Path(sys.argv[1])); identity = home.load_identity()\n"
                "with home.open_store() as store, store.transaction():\n"
                f"    for i in range({args.posts}):\n"
                "        actions.post(store, identity, f'post {i} about #things', time.time_ns() // 10**6)\n"
            )
            subprocess.run([sys.executable, "-c", script, str(home)], env=env, cwd=tree, check=True)
        subprocess.run(p2pblog("post", "warm-up"), env=env, cwd=tree, check=True, capture_output=True)
        offline = {
            "--help": ["--help"],
            "id": ["id"],
            "timeline": ["timeline"],
            "post (offline)": ["post", "benchmark post"],
        }
        for name, words in offline.items():
            base, cost = _paired(p2pblog(*words), env, tree, args.runs)
            rows.append((name, statistics.median(base), statistics.median(cost), _median_diff(base, cost)))
            print(f"{name:22} {rows[-1][3] * 1000:7.1f} ms CPU over python -c pass", flush=True)
        node = _start_node(p2pblog, home, env, tree)
        try:
            for name, words in {
                "status (node running)": ["status"],
                "post (node running)": ["post", "hi"],
            }.items():
                base, cost = _paired(p2pblog(*words), env, tree, args.runs)
                rows.append(
                    (name, statistics.median(base), statistics.median(cost), _median_diff(base, cost))
                )
                print(f"{name:22} {rows[-1][3] * 1000:7.1f} ms CPU over python -c pass", flush=True)
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)
    load_after = os.getloadavg()
    report = _report(args, tree, rows, load_before, load_after)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)
    print(json.dumps({name: round(diff, 4) for name, _, _, diff in rows}))


def _median_diff(base: list[float], cost: list[float]) -> float:
    return statistics.median(c - b for b, c in zip(base, cost, strict=True))


def _report(
    args: argparse.Namespace,
    tree: Path,
    rows: list[tuple[str, float, float, float]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = ""
    lines = [
        "# CLI start-up CPU (benchmarks/bench_cli.py)",
        "",
        f"Command: `python benchmarks/bench_cli.py --runs {args.runs} --posts {args.posts}"
        + (f" --tree {tree}" if tree != ROOT else "")
        + "`",
        f"Tree: {tree}{f' (git {rev})' if rev else ''}",
        f"Machine: {_machine()}",
        "Load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after),
        "",
        f"Each row: {args.runs} interleaved pairs of `python -c pass` and the command; CPU = user + system",
        "time of the child (getrusage RUSAGE_CHILDREN); the command's cost is the median of the",
        f"per-pair differences.  Target: under {TARGET * 1000:.0f} ms.",
        "",
        "| command | `python -c pass` (median) | command (median) | command - pass (median of pairs) "
        "| target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, base, cost, diff in rows:
        verdict = "met" if diff < TARGET else "missed"
        cells = [f"`{name}`", f"{base * 1000:.1f} ms", f"{cost * 1000:.1f} ms", f"**{diff * 1000:.1f} ms**"]
        lines.append("| " + " | ".join([*cells, verdict]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
