"""Our side of ``bench_dht.py``: N `dht.DhtCore` nodes, each on its own `UdpDriver`, in one trio process.

Run by ``bench_dht.py`` (not by hand)::

    python benchmarks/dht_p2pblog_side.py --spec FILE [--tracemalloc] [--profile-out FILE]

Every node is a bare `DhtCore` with the default `DhtConfig` (the protocol's
k = 20, alpha = 3, retransmits at 0.5/1/2/3 s, 5 s RPC timeout, per-source
rate limit) and the process's one ``random.Random(seed)`` (the ``kademlia`` side has
its global RNG: a per-process cost, not a per-node one), bound to its own loopback
address (`dht_bench_common.node_host`: 127.0.0.1, 127.0.1.1, ...), port 0.
Node i joins with ``core.bootstrap`` through the nodes named in the spec, one
join after the other; then the side waits until no node has a query or an
RPC in flight (the post-join bucket refreshes), sleeps ``settle`` seconds,
and runs the puts and then the gets, ``concurrency`` at a time, each under
``op_timeout``.  Memory is read twice in this process, the same way as on
the ``kademlia`` side: before the first node is created (interpreter,
imports, workload) and after the gets.  ``--tracemalloc`` also traces every
allocation from before the first node to after the gets (slow: this run's
times are not used).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import trio
from dht_bench_common import (
    ERROR,
    NOT_FOUND,
    NOT_STORED,
    OK,
    SKIPPED,
    TIMEOUT,
    WRONG_VALUE,
    Phase,
    Spec,
    emit,
    memory,
    node_host,
    profile_text,
    progress,
    start_tracing,
    traced,
)

from dht import DhtCore, PutFinished, ValueFound, ValueNotFound, kademlia_key
from p2pblog.runtime import UdpDriver, unix_now


def total_stats(cores: list[DhtCore]) -> Counter[str]:
    total: Counter[str] = Counter()
    for core in cores:
        total.update(core.stats)
    return total


def stats_delta(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] != before[k]}


async def run_pool(
    spec: Spec, phase: Phase, count: int, op: Callable[[int], Awaitable[tuple[str, float | None]]]
) -> None:
    """Run op(0..count-1), ``spec.concurrency`` at a time; stop starting new ones after the budget."""
    indices: Iterator[int] = iter(range(count))
    deadline = time.perf_counter() + spec.phase_budget

    async def worker() -> None:
        for i in indices:  # the iterator is shared: each index is taken once
            if time.perf_counter() > deadline:
                phase.record(SKIPPED, None)
                continue
            outcome, latency = await op(i)
            phase.record(outcome, latency)

    async with trio.open_nursery() as nursery:
        for _ in range(spec.concurrency):
            nursery.start_soon(worker)


async def request(driver: UdpDriver, start: Callable[[float], int], timeout: float) -> tuple[Any, float]:
    """(result event or None on timeout, seconds)."""
    t0 = time.perf_counter()
    with trio.move_on_after(timeout):
        event = await driver.request(start)
        return event, time.perf_counter() - t0
    return None, timeout


async def side(spec: Spec, profile_out: Path | None, trace: bool) -> dict[str, Any]:
    n = spec.nodes
    result: dict[str, Any] = {"side": "p2pblog", "nodes": n}
    # One RNG for the process, as the ``kademlia`` side has (its global `random`): a
    # `random.Random` holds 2.5 KiB of state, a cost per process, not per node.
    rng = random.Random(spec.seed)
    before_nodes = memory()
    if trace:
        start_tracing()
    cores: list[DhtCore] = []
    drivers: list[UdpDriver] = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            core = DhtCore(spec.ids[i], rng, unix_now())
            driver = UdpDriver.bind(core, node_host(i), 0)
            cores.append(core)
            drivers.append(driver)
            nursery.start_soon(driver.run)
        addrs = [d.local_addr for d in drivers]

        # -- join, one node after the other ---------------------------------------
        progress(f"  p2pblog: {n} nodes joining ...")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        joined = 0
        for i in range(1, n):
            if time.perf_counter() - wall0 > spec.phase_budget:
                break  # joins not attempted count as not joined
            seeds = [addrs[j] for j in spec.seeds[i]]
            event, _ = await request(drivers[i], partial(cores[i].bootstrap, seeds), spec.op_timeout)
            joined += event is not None and event.seeds_answered > 0 and len(event.closest) > 0
        result["bootstrap"] = {
            "joined": joined,
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0,
            "table_sizes": sorted(len(c.table) for c in cores),
        }

        # -- settle: wait for the post-join refreshes, then a fixed pause ----------
        wall0 = time.perf_counter()
        while time.perf_counter() - wall0 < spec.settle_max:
            if not any(c.active_queries or c.outstanding_rpcs for c in cores):
                break
            await trio.sleep(0.05)
        quiet = not any(c.active_queries or c.outstanding_rpcs for c in cores)
        await trio.sleep(spec.settle)
        result["settle"] = {
            "quiet": quiet,
            "wall_seconds": time.perf_counter() - wall0,
            "table_sizes": sorted(len(c.table) for c in cores),
        }

        # -- puts -------------------------------------------------------------------
        progress(f"  p2pblog: {len(spec.keys)} puts ...")
        keys = [kademlia_key(k) for k in spec.keys]
        puts = Phase("puts")
        stored_at: list[int] = []

        async def put(i: int) -> tuple[str, float | None]:
            s = spec.storers[i]
            try:
                event, seconds = await request(
                    drivers[s], partial(cores[s].start_put, keys[i], spec.values[i]), spec.op_timeout
                )
            except Exception:
                return ERROR, None
            if event is None:
                return TIMEOUT, seconds
            assert isinstance(event, PutFinished)
            stored_at.append(len(event.stored_at))
            return (OK if event.ok else NOT_STORED), seconds

        gc.collect()
        before = total_stats(cores)
        puts.start()
        await run_pool(spec, puts, len(keys), put)
        puts.stop()
        puts.extra["stats"] = stats_delta(before, total_stats(cores))
        puts.extra["stored_at_mean"] = sum(stored_at) / len(stored_at) if stored_at else 0.0
        result["puts"] = puts

        # -- gets -------------------------------------------------------------------
        progress(f"  p2pblog: {len(spec.keys)} gets ...")
        gets = Phase("gets")
        queried: list[int] = []

        async def get(i: int) -> tuple[str, float | None]:
            g = spec.getters[i]
            try:
                event, seconds = await request(
                    drivers[g], partial(cores[g].start_get, keys[i]), spec.op_timeout
                )
            except Exception:
                return ERROR, None
            if event is None:
                return TIMEOUT, seconds
            assert isinstance(event, ValueFound | ValueNotFound)
            queried.append(event.queried)
            if isinstance(event, ValueNotFound):
                return NOT_FOUND, seconds
            value = event.value
            return (OK if type(value) is bytes and value == spec.values[i] else WRONG_VALUE), seconds

        gc.collect()
        before = total_stats(cores)
        profiler = cProfile.Profile() if profile_out is not None else None
        if profiler is not None:
            profiler.enable()
        gets.start()
        await run_pool(spec, gets, len(keys), get)
        gets.stop()
        if profiler is not None:
            profiler.disable()
        after = total_stats(cores)
        gets.extra["stats"] = stats_delta(before, after)
        gets.extra["rx_datagrams"] = after["rx.datagrams"] - before["rx.datagrams"]
        gets.extra["queried_mean"] = sum(queried) / len(queried) if queried else 0.0
        result["gets"] = gets
        result["memory"] = {"before_nodes": before_nodes, "after_gets": memory()}
        if trace:
            result["tracemalloc"] = traced(n)
        result["records_held"] = sum(len(c.records) for c in cores)
        result["send_errors"] = sum(sum(d.stats.values()) for d in drivers)
        nursery.cancel_scope.cancel()
    for d in drivers:
        d.close()
    if profiler is not None and profile_out is not None:
        profile_out.write_text(profile_text(profiler, f"p2pblog side, {len(spec.keys)} gets"))
    result["puts"] = result["puts"].to_json()
    result["gets"] = result["gets"].to_json()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations (slow; not timed)")
    parser.add_argument("--profile-out", type=Path)
    args = parser.parse_args()
    spec = Spec.load(args.spec)
    emit(trio.run(side, spec, args.profile_out, args.tracemalloc))


if __name__ == "__main__":
    main()
