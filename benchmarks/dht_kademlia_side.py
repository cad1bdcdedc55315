"""Their side of ``bench_dht.py``: N ``kademlia.network.Server`` nodes in one asyncio process.

Run by ``bench_dht.py`` (not by hand)::

    python benchmarks/dht_kademlia_side.py --spec FILE [--tracemalloc] [--profile-out FILE]

``kademlia`` 2.2.3 on ``rpcudp`` 5.0.1, unmodified, with its defaults (k = 20,
alpha = 3, 5 s RPC timeout, no retransmits), node ids from the spec, each
Server listening on its own loopback address (`dht_bench_common.node_host`,
the same as our side's), port 0.  The only addition is a subclass of
``KademliaProtocol`` that counts received datagrams (one integer increment
per datagram).  The workload, the phases and the memory readings (before
the first node, after the gets, optionally tracemalloc) are those of
``dht_p2pblog_side.py``; settling waits until no rpcudp request is
outstanding and no asyncio task other than the benchmark's is pending.
Log records at WARNING and above (rpcudp logs every RPC timeout as an
ERROR) are counted by message, not printed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

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
from kademlia.network import Server
from kademlia.protocol import KademliaProtocol

RECEIVED = [0]


class CountingProtocol(KademliaProtocol):  # type: ignore[misc]
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        RECEIVED[0] += 1
        super().datagram_received(data, addr)


class CountingServer(Server):  # type: ignore[misc]
    protocol_class = CountingProtocol


class LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"] += 1


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

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


async def timed(awaitable: Awaitable[Any], timeout: float) -> tuple[bool, Any, float]:
    """(finished in time, result, seconds)."""
    t0 = time.perf_counter()
    try:
        value = await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        return False, None, timeout
    return True, value, time.perf_counter() - t0


def outstanding(servers: list[Any]) -> int:
    return sum(len(s.protocol._outstanding) for s in servers)


async def side(spec: Spec, logs: LogCounter, profile_out: Path | None, trace: bool) -> dict[str, Any]:
    n = spec.nodes
    result: dict[str, Any] = {"side": "kademlia", "nodes": n}
    before_nodes = memory()
    if trace:
        start_tracing()
    servers: list[Any] = []
    for i in range(n):
        server = CountingServer(node_id=spec.ids[i])
        await server.listen(0, node_host(i))
        servers.append(server)
    addrs = [(node_host(i), int(s.transport.get_extra_info("sockname")[1])) for i, s in enumerate(servers)]
    try:
        # -- join, one node after the other ---------------------------------------
        progress(f"  kademlia: {n} nodes joining ...")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        joined = 0
        for i in range(1, n):
            if time.perf_counter() - wall0 > spec.phase_budget:
                break  # joins not attempted count as not joined
            seeds = [addrs[j] for j in spec.seeds[i]]
            done, found, _ = await timed(servers[i].bootstrap(seeds), spec.op_timeout)
            joined += done and bool(found)
        result["bootstrap"] = {
            "joined": joined,
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0,
            "table_sizes": sorted(sum(len(b) for b in s.protocol.router.buckets) for s in servers),
        }

        # -- settle -------------------------------------------------------------------
        wall0 = time.perf_counter()
        me = asyncio.current_task()
        while time.perf_counter() - wall0 < spec.settle_max:
            if not outstanding(servers) and all(t is me for t in asyncio.all_tasks()):
                break
            await asyncio.sleep(0.05)
        quiet = not outstanding(servers) and all(t is me for t in asyncio.all_tasks())
        await asyncio.sleep(spec.settle)
        result["settle"] = {
            "quiet": quiet,
            "wall_seconds": time.perf_counter() - wall0,
            "table_sizes": sorted(sum(len(b) for b in s.protocol.router.buckets) for s in servers),
        }

        # -- puts -------------------------------------------------------------------
        progress(f"  kademlia: {len(spec.keys)} puts ...")
        puts = Phase("puts")

        async def put(i: int) -> tuple[str, float | None]:
            try:
                done, stored, seconds = await timed(
                    servers[spec.storers[i]].set(spec.keys[i], spec.values[i]), spec.op_timeout
                )
            except Exception:
                return ERROR, None
            if not done:
                return TIMEOUT, seconds
            return (OK if stored else NOT_STORED), seconds

        gc.collect()
        logs0 = Counter(logs.counts)
        puts.start()
        await run_pool(spec, puts, len(spec.keys), put)
        puts.stop()
        puts.extra["log_records"] = dict(logs.counts - logs0)
        result["puts"] = puts.to_json()

        # -- gets -------------------------------------------------------------------
        progress(f"  kademlia: {len(spec.keys)} gets ...")
        gets = Phase("gets")

        async def get(i: int) -> tuple[str, float | None]:
            try:
                done, value, seconds = await timed(
                    servers[spec.getters[i]].get(spec.keys[i]), spec.op_timeout
                )
            except Exception:
                return ERROR, None
            if not done:
                return TIMEOUT, seconds
            if value is None:
                return NOT_FOUND, seconds
            return (OK if type(value) is bytes and value == spec.values[i] else WRONG_VALUE), seconds

        gc.collect()
        logs0 = Counter(logs.counts)
        rx0 = RECEIVED[0]
        profiler = cProfile.Profile() if profile_out is not None else None
        if profiler is not None:
            profiler.enable()
        gets.start()
        await run_pool(spec, gets, len(spec.keys), get)
        gets.stop()
        if profiler is not None:
            profiler.disable()
        gets.extra["rx_datagrams"] = RECEIVED[0] - rx0
        gets.extra["log_records"] = dict(logs.counts - logs0)
        result["gets"] = gets.to_json()
        result["memory"] = {"before_nodes": before_nodes, "after_gets": memory()}
        if trace:
            result["tracemalloc"] = traced(n)
        result["records_held"] = sum(len(s.storage.data) for s in servers)
    finally:
        for server in servers:
            server.stop()
    if profiler is not None and profile_out is not None:
        profile_out.write_text(profile_text(profiler, f"kademlia side, {len(spec.keys)} gets"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations (slow; not timed)")
    parser.add_argument("--profile-out", type=Path)
    args = parser.parse_args()
    spec = Spec.load(args.spec)
    random.seed(spec.seed)  # kademlia draws refresh targets from the global RNG
    logs = LogCounter()
    root = logging.getLogger()
    root.addHandler(logs)
    root.setLevel(logging.WARNING)
    emit(asyncio.run(side(spec, logs, args.profile_out, args.tracemalloc)))


if __name__ == "__main__":
    main()
