"""What every benchmark reports about its run, and the arithmetic of interleaved rounds.

The project's rule for a comparison against a named baseline (issue 18,
"benchmarks that cannot flatter"): run ours and the baseline side by side in
*rounds*, each round measuring every side once, back to back, in an order
that changes from round to round; compute one ratio per round from that
round's own measurements; report the **median** of the per-round ratios
(never the best run), with the CPU-time ratio beside the wall-time ratio;
and say what the machine was doing (load average before and after).

This module holds the parts the benchmarks share:

- `RunContext`: the command line, the machine (CPU model from
  /proc/cpuinfo, cores), Python and library versions, the commit measured,
  and the load average when the benchmark started and when it ended, as
  JSON and as Markdown lines;
- `timed`: one measurement, wall (``perf_counter``) and CPU time
  (``process_time``: every thread of this process, and ``thread_time``:
  the calling thread alone);
- `ratio_summary`: per-round ratios, their median and range, and whether
  the median meets its target;
- `rotated`: the order of the sides in a round.

With an even number of rounds the median is the mean of the two middle
values (``statistics.median``).
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import re
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T = TypeVar("T")


# --- the machine --------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def libsodium_version() -> str:
    try:
        import nacl.bindings
    except ImportError:
        return "PyNaCl not installed"
    version = getattr(nacl.bindings, "sodium_version_string", None)
    if callable(version):
        value = version()
        return value.decode() if isinstance(value, bytes) else str(value)
    # PyNaCl does not expose it.  A system libsodium shows in the process maps;
    # otherwise the copy bundled in PyNaCl's wheel is named in its changelog.
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    system = sorted({line.split()[-1] for line in maps.splitlines() if "libsodium" in line})
    if system:
        return f"system library {system[0]} (version not exposed by PyNaCl)"
    try:
        description = metadata.metadata("PyNaCl").json.get("description", "")
    except metadata.PackageNotFoundError:
        description = ""
    match = re.search(r"[Uu]pdated? ``libsodium`` to ([0-9][^\s]*(?: \([^)]*\))?)", str(description))
    if match:
        return f"{match.group(1)} (bundled; from the PyNaCl changelog, not exposed at runtime)"
    return "unknown (not exposed by PyNaCl)"


def filesystem(path: Path) -> str:
    """The mount point and type holding path (from /proc/mounts)."""
    best = ("", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            mount, fstype = fields[1], fields[2]
            if str(path).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype)
    except (OSError, IndexError):
        pass
    return f"{best[1]} mounted at {best[0] or '?'}"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def git(*args: str) -> str:
    """``git ARGS`` in the repository: its output, or "" if git fails."""
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def commit() -> dict[str, Any]:
    """The commit measured, and whether the tree had uncommitted changes."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "uncommitted": dirty.splitlines()}


def machine(packages: Sequence[str], workdir: Path | None = None) -> dict[str, Any]:
    """The machine and the software stack: CPU, cores, Python, and each package's version."""
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in packages},
    }
    if "PyNaCl" in packages:
        facts["libsodium"] = libsodium_version()
    if "sqlite" in packages:
        facts["packages"]["sqlite"] = sqlite3.sqlite_version
    if workdir is not None:
        facts["workdir_fs"] = filesystem(workdir)
    return facts


@dataclass
class RunContext:
    """The facts every benchmark prints with its numbers: command, machine, load before and after."""

    script: str
    argv: list[str]
    packages: Sequence[str]
    workdir: Path | None = None
    started: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        script: str,
        argv: list[str] | None,
        packages: Sequence[str],
        workdir: Path | None = None,
    ) -> RunContext:
        """Take the facts and the load average now, before the first measurement."""
        context = cls(script, list(sys.argv[1:] if argv is None else argv), packages, workdir)
        context.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        context.facts = machine(packages, workdir)
        context.source = commit()
        context.load_before = load_average()
        return context

    def end(self) -> None:
        """Take the load average after the last measurement."""
        self.load_after = load_average()

    @property
    def command(self) -> str:
        return shlex.join([sys.executable, self.script, *self.argv])

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "date": self.started,
            "machine": self.facts,
            "source": self.source,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
        }

    def markdown(self) -> list[str]:
        """Lines for the head of the benchmark's Markdown report."""
        m = self.facts
        stack = ", ".join(f"{name} {v}" for name, v in m["packages"].items())
        if "libsodium" in m:
            stack += f", libsodium {m['libsodium']}"
        dirty = self.source.get("uncommitted") or []
        lines = [
            f"Command: `{self.command}`",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['platform']}.",
            f"Python {m['python']} ({m['python_impl']}); {stack}.",
            f"Commit {str(self.source.get('commit', 'unknown'))[:10]}"
            + (f" with {len(dirty)} uncommitted changes." if dirty else "."),
            f"Load average (1, 5, 15 min) before: {self.load_before}; after: {self.load_after or '?'}.",
        ]
        if "workdir_fs" in m:
            lines.append(f"Working files on {m['workdir_fs']}.")
        return lines


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """One timed measurement: wall seconds, CPU seconds of the process, CPU seconds of this thread."""

    wall: float
    cpu: float
    thread_cpu: float

    def as_json(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "thread_cpu": self.thread_cpu}


def timed(run: Callable[[], T]) -> tuple[Timing, T]:
    """run() after a gc.collect(); its wall time, the process's CPU time and this thread's CPU time.

    ``time.process_time`` counts every thread of this process (worker
    threads that verify signatures included); ``time.thread_time`` counts
    the calling thread only.
    """
    gc.collect()
    wall, cpu, thread_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    value = run()
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - thread_cpu)
    return timing, value


def rotated(sides: Sequence[T], round_index: int) -> list[T]:
    """The order of the sides in a round: rotate by one each round (two sides alternate)."""
    shift = round_index % len(sides)
    return [*sides[shift:], *sides[:shift]]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio_summary(values: Sequence[float], target: float | None = None) -> dict[str, Any]:
    """Per-round ratios, their median, min and max; whether the median meets target (>=)."""
    finite = [v for v in values if not math.isnan(v)]
    summary: dict[str, Any] = {
        "per_round": list(values),
        "median": median(finite),
        "min": min(finite, default=float("nan")),
        "max": max(finite, default=float("nan")),
    }
    if target is not None:
        summary["target"] = target
        summary["met"] = bool(finite) and summary["median"] >= target
    return summary


def status(met: bool) -> str:
    return "met" if met else "**MISSED**"
