"""Simulator-only savings (issue 17, item 2): the same run with `simulations.savings` off and on.

Usage::

    .venv/bin/python benchmarks/bench_sim_savings.py                        # 200 nodes x 3600 s, 2 rounds
    .venv/bin/python benchmarks/bench_sim_savings.py --nodes 200 --duration 3600 --rounds 3
    .venv/bin/python benchmarks/bench_sim_savings.py --profile --nodes 200 --duration 600
    .venv/bin/python benchmarks/bench_sim_savings.py --cipher

Each round runs the bundled ``baseline`` scenario once with every saving off
(`Savings.none`) and once with all on, in an order that alternates from round
to round (``bench_context.rotated``), each run in a fresh child process (so no
run inherits another's signature-verification cache, allocator state or
frozen objects).  It reports per run the wall time, the CPU time
(``time.process_time``), the events and the SHA-256 of ``metrics.json``
(which must be the same for both sides: the benchmark fails otherwise), and
the median of the per-round ratios off / on.  ``--profile`` instead runs
each side once under cProfile and prints the 15 functions with the most
time of their own (``tottime``), then those of what the savings replace.
``--cipher`` times one transport message's encryption and decryption with
the real ChaCha20-Poly1305 `CipherState` and with the `NullCipher`, from an
empty keepalive to a full 65,519-byte chunk.  The load average before and after is
printed with the machine; results go in ``docs/design.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import pstats
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_context import RunContext, ratio_summary, rotated

SIDES = ("off", "on")
#: One saving alone (``--only``): its share of the difference.
ALONE = ("null_cipher", "snapshots_in_memory", "gc_tuned")


class CollectorClock:
    """A ``gc.callbacks`` entry: CPU seconds in the garbage collector, and collections per generation."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.cpu += time.process_time() - self._started
            self.collections[info["generation"]] += 1


def run_one(side: str, nodes: int, duration: float, profile: bool) -> dict[str, Any]:
    """One run in this process: timings, events and the metrics.json digest (and a profile)."""
    from simulations.report import metrics_document
    from simulations.savings import Savings
    from simulations.scenario import Scenario
    from simulations.simulation import Simulation

    scenario = Scenario.load("baseline").with_overrides(nodes=nodes, duration=duration)
    if side in ALONE:
        savings = Savings(**{name: name == side for name in ALONE})
    else:
        savings = Savings() if side == "on" else Savings.none()
    sim = Simulation(scenario, savings=savings)
    profiler = cProfile.Profile() if profile else None
    collector = CollectorClock()
    gc.callbacks.append(collector)
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    result = sim.run()
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.callbacks.remove(collector)
    text = json.dumps(metrics_document(result), sort_keys=True, indent=2) + "\n"
    out: dict[str, Any] = {
        "side": side,
        "wall": round(wall, 2),
        "cpu": round(cpu, 2),
        "events": result.events,
        "metrics_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "gc_cpu": round(collector.cpu, 2),
        "gc_collections": collector.collections,
    }
    if profiler is not None:
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer).sort_stats("tottime")
        stats.print_stats(15)
        # What the savings replace: the transport AEAD, the contact and score writes.
        stats.print_stats(r"noise.py:.*crypt|savings.py|store.py:.*(save|load)_(contacts|peer_scores)")
        out["profile"] = buffer.getvalue()
    return out


def cipher_costs(sizes: tuple[int, ...] = (0, 100, 600, 4_000, 65_519)) -> list[dict[str, float]]:
    """CPU microseconds per encrypt and per decrypt of one transport message, real AEAD vs null cipher."""
    import timeit

    from gossip.noise import CipherState
    from simulations.savings import NullCipher

    rows = []
    for size in sizes:
        plaintext, row = bytes(size), {"plaintext_bytes": float(size)}
        for cls in (CipherState, NullCipher):
            sender, receiver = cls(bytes(32)), cls(bytes(32))
            sealed = sender.encrypt_with_ad(b"", plaintext)
            sender.n = receiver.n = 0
            number = 2_000
            sealing = partial(sender.encrypt_with_ad, b"", plaintext)
            seal = min(timeit.repeat(sealing, number=number, repeat=5, timer=time.process_time))

            def opened(receiver: CipherState = receiver, sealed: bytes = sealed) -> None:
                receiver.n = 0
                receiver.decrypt_with_ad(b"", sealed)

            open_ = min(timeit.repeat(opened, number=number, repeat=5, timer=time.process_time))
            row[f"{cls.__name__}_encrypt_us"] = round(seal / number * 1e6, 2)
            row[f"{cls.__name__}_decrypt_us"] = round(open_ / number * 1e6, 2)
        rows.append(row)
    return rows


def child(side: str, args: argparse.Namespace, profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", side, "--nodes", str(args.nodes)]
    command += ["--duration", str(args.duration)] + (["--profile"] if profile else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cipher", action="store_true", help="time the two transport ciphers only")
    parser.add_argument("--only", action="store_true", help="also run each saving alone, once a round")
    parser.add_argument("--child", choices=SIDES + ALONE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cipher:
        context = RunContext.begin(__file__, argv, ["pynacl"])
        rows = cipher_costs()
        context.end()
        print("\n".join(context.markdown()))
        print(json.dumps(rows, indent=2))
        return 0
    if args.child:
        print(json.dumps(run_one(args.child, args.nodes, args.duration, args.profile)))
        return 0
    context = RunContext.begin(__file__, argv, ["pynacl", "msgpack"])
    runs: list[dict[str, Any]] = []
    rounds = 1 if args.profile else args.rounds
    for number in range(rounds):
        pair = {}
        for side in rotated(SIDES + (ALONE if args.only else ()), number):
            run = child(side, args, args.profile)
            run["round"] = number
            pair[side] = run
            runs.append(run)
            print(
                f"round {number} {side:>19}: wall {run['wall']:8.2f} s, CPU {run['cpu']:8.2f} s, "
                f"GC {run['gc_cpu']:.2f} s, {run['events']:,} events, metrics {run['metrics_sha256'][:12]}",
                file=sys.stderr,
            )
        if args.profile:
            for side in SIDES:
                print(f"\n### savings {side}\n\n```\n{pair[side].pop('profile').strip()}\n```")
    context.end()
    digests = {run["metrics_sha256"] for run in runs}
    summary = {
        "wall_ratio_off_on": ratio_summary(_ratios(runs, "wall")),
        "cpu_ratio_off_on": ratio_summary(_ratios(runs, "cpu")),
        "gc_cpu_share_off": [run["gc_cpu"] / run["cpu"] for run in runs if run["side"] == "off"],
    }
    print("\n".join(context.markdown()))
    print(json.dumps({"context": context.as_json(), "runs": runs, "summary": summary}, indent=2))
    if len(digests) != 1:
        print("metrics.json differs between the sides", file=sys.stderr)
        return 1
    return 0


def _ratios(runs: list[dict[str, Any]], key: str) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["side"]] = run[key]
    return [r["off"] / r["on"] for _, r in sorted(by_round.items()) if r.get("on")]


if __name__ == "__main__":
    sys.exit(main())
