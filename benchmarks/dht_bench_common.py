"""What the two side processes of ``bench_dht.py`` share: the workload, memory and the result.

``bench_dht.py`` writes one workload file (JSON) and starts each side as its
own process with ``--spec FILE``; a side prints one JSON object on stdout.
Everything a side measures goes through the helpers here, so the trio side
(``dht_p2pblog_side.py``) and the asyncio side (``dht_kademlia_side.py``)
measure in the same way.  This module imports neither trio, asyncio, ``dht``
nor ``kademlia``.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import resource
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Per-operation outcomes (one per put or get, in the result's ``outcomes`` list).
OK = "ok"
WRONG_VALUE = "wrong value"
NOT_FOUND = "not found"
NOT_STORED = "not stored"
TIMEOUT = "timeout"
ERROR = "error"
SKIPPED = "skipped (phase budget spent)"


@dataclass(frozen=True)
class Spec:
    """The workload, identical for both sides (built by ``bench_dht.py`` from the seed)."""

    seed: int
    ids: list[bytes]
    #: Node indices each node ``i >= 1`` bootstraps from (all < i).
    seeds: list[list[int]]
    keys: list[str]
    values: list[bytes]
    storers: list[int]
    getters: list[int]
    concurrency: int
    op_timeout: float
    phase_budget: float
    settle: float
    settle_max: float

    @property
    def nodes(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ids": [i.hex() for i in self.ids],
            "seeds": self.seeds,
            "keys": self.keys,
            "values": [v.hex() for v in self.values],
            "storers": self.storers,
            "getters": self.getters,
            "concurrency": self.concurrency,
            "op_timeout": self.op_timeout,
            "phase_budget": self.phase_budget,
            "settle": self.settle,
            "settle_max": self.settle_max,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        return cls(
            seed=int(data["seed"]),
            ids=[bytes.fromhex(x) for x in data["ids"]],
            seeds=[[int(j) for j in s] for s in data["seeds"]],
            keys=[str(k) for k in data["keys"]],
            values=[bytes.fromhex(v) for v in data["values"]],
            storers=[int(x) for x in data["storers"]],
            getters=[int(x) for x in data["getters"]],
            concurrency=int(data["concurrency"]),
            op_timeout=float(data["op_timeout"]),
            phase_budget=float(data["phase_budget"]),
            settle=float(data["settle"]),
            settle_max=float(data["settle_max"]),
        )

    @classmethod
    def load(cls, path: Path) -> Spec:
        return cls.from_json(json.loads(path.read_text()))


def vm_rss_kib() -> int:
    """Resident set size now (``VmRSS`` of /proc/self/status), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def max_rss_kib() -> int:
    """Peak resident set size of this process (``ru_maxrss``; KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def memory() -> dict[str, int]:
    """``VmRSS`` and ``ru_maxrss`` now, after a full garbage collection (KiB)."""
    gc.collect()
    return {"vm_rss_kib": vm_rss_kib(), "max_rss_kib": max_rss_kib()}


def node_host(i: int) -> str:
    """The loopback address node ``i`` binds to: its own host on its own /24, as on the Internet.

    Linux routes all of 127.0.0.0/8 to the loopback interface.  Node i gets
    ``127.<i // 256>.<i % 256>.1``.  p2pblog's DHT rate-limits and verifies
    per *host* (`identity.netaddr.host_key`, not per port), so 100 nodes on
    127.0.0.1 would be one host sharing one budget; and its lookups count at
    most two contacts of one /24 (`dht.routing.MAX_CLOSEST_PER_NETWORK`), so
    100 nodes in one /24 would make every lookup walk past the rest.  Both
    sides bind the same addresses.
    """
    if not 0 <= i < 1 << 16:
        raise ValueError("at most 65,536 nodes")
    return f"127.{i >> 8}.{i & 255}.1"


def start_tracing() -> None:
    """Trace allocations from now on (``--tracemalloc`` runs; one frame per allocation)."""
    gc.collect()
    tracemalloc.start(1)


def traced(nodes: int, top: int = 30) -> dict[str, Any]:
    """What tracemalloc saw since `start_tracing`, still held now: total, per node, and by line.

    Counts only Python allocations made after the start (so not the
    interpreter, the imports or the workload), at their size as requested
    from the allocator (no allocator overhead, no fragmentation): the
    allocator-level figure beside the RSS one.
    """
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    )
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    by_line = snapshot.statistics("lineno")
    by_file = snapshot.statistics("filename")
    held = sum(s.size for s in by_file)
    return {
        "bytes": held,
        "bytes_per_node": held / nodes,
        "peak_bytes": peak,
        "peak_bytes_per_node": peak / nodes,
        "current_bytes": current,
        "by_line": [
            {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "bytes": s.size, "count": s.count}
            for s in by_line[:top]
        ],
        "by_file": [
            {"where": s.traceback[0].filename, "bytes": s.size, "count": s.count} for s in by_file[:top]
        ],
    }


@dataclass
class Phase:
    """One timed phase (puts or gets): per-operation outcomes and latencies, CPU and wall time."""

    name: str
    outcomes: list[str] = field(default_factory=list)
    #: Seconds per operation in the order operations were issued; a timed-out
    #: operation counts its timeout, a skipped one is absent.
    latencies: list[float] = field(default_factory=list)
    cpu_start: float = 0.0
    wall_start: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.cpu_start = time.process_time()
        self.wall_start = time.perf_counter()

    def stop(self) -> None:
        self.cpu = time.process_time() - self.cpu_start
        self.wall = time.perf_counter() - self.wall_start

    def record(self, outcome: str, latency: float | None) -> None:
        self.outcomes.append(outcome)
        if latency is not None:
            self.latencies.append(latency)

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": len(self.outcomes),
            "ok": self.outcomes.count(OK),
            "outcomes": {o: self.outcomes.count(o) for o in sorted(set(self.outcomes))},
            "latencies": self.latencies,
            "cpu_seconds": self.cpu,
            "wall_seconds": self.wall,
            **self.extra,
        }


def profile_text(profiler: cProfile.Profile, label: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"## cProfile: {label} (sorted by tottime)\n")
    stats.sort_stats("tottime").print_stats(35)
    out.write(f"## cProfile: {label} (sorted by cumulative)\n")
    stats.sort_stats("cumulative").print_stats(35)
    return out.getvalue()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Hand the result to ``bench_dht.py`` (the only thing a side writes on stdout)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
