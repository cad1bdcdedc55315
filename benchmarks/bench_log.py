"""Benchmark of the log: append, ingest and import against raw PyNaCl, in interleaved rounds.

Each of ``--rounds`` rounds measures, back to back, on inputs built for that
round (fresh keys, fresh entries; building is not timed):

(a) raw sign: ``nacl.signing.SigningKey.sign`` over ``--append`` content
    byte strings (``encode_content`` output of ~100-character posts);
(b) append: ``--append`` calls of ``Store.append(identity, "post",
    post_body(text), timestamp)`` into a fresh on-disk store, 1000 per
    ``store.transaction()``;

    (a) and (b) run together, in alternating blocks of 1000: a block of
    raw signs, then one append transaction (or the other way round: the
    first of each pair alternates, and so does the first block between
    rounds).  Each side's time is the sum over its blocks, so load that
    comes and goes within the round reaches both sides alike (measured one
    after the other, single rounds of the same code spread from 0.41 to
    1.04 on a busy VM);
(c) raw verify: ``nacl.bindings.crypto_sign_open`` (what ``identity.verify``
    calls) over every entry of the round's ``--entries`` feed, on this
    thread: one core's raw verify rate;
(d) ingest: ``Store.ingest_many`` of the same feed into a fresh on-disk
    store (every entry must be accepted).

A fresh store is empty unless ``--held N``: then, before (b) and (d), it
is given N entries of another feed (not timed), as a node's store holds
what it already follows.  The cost of a write grows with what the store
holds (the index of the random 32-byte entry ids), so an empty store
flatters append and ingest; ``docs/benchmarks.md`` reports both.

Even rounds run (a)+(b), (c), (d), odd rounds (d), (c), (a)+(b): a side is
next to its baseline in every round and neither always goes first.  Each round
gives its own ratios, append/raw sign and ingest/raw verify, on wall time
and on CPU time; the report is the **median** over the rounds (never the
best round), with every round's numbers beside it.

CPU time is ``time.process_time`` of this process, which counts **every
thread**: when ``Store.ingest_many`` verifies on worker threads, their CPU
time is in ingest's CPU time, so the CPU ratio compares the total CPU work
per entry (it cannot pass 1.0 for ingest, which has to verify) while the
wall ratio can pass 1.0 by using more than one core.  The main thread's own
CPU time (``time.thread_time``) is reported beside it.

Caches: ``identity.verify`` remembers successful verifications (the
process-wide cache ``identity.keys._verified``, ``VERIFY_CACHE_SIZE``
entries).  A node ingesting a feed it has never seen has none of its
entries in that cache, so neither may the benchmark: every round signs a
new feed with a new key, and each ingest runs with an empty cache of the
normal size in place of the process's (restored afterwards) that counts
its hits.  The benchmark stops if the cache served any measured verify.
The raw baseline, ``crypto_sign_open``, has no cache and verifies the same
fresh entries.

(e) import (``--import-entries``, 20,000; 0 skips it): the round's feed
file (``p2pblog.feedfile``, the ``p2pblog export`` format) imported by a
whole ``python -m p2pblog --home H import FILE`` process into a fresh home,
against a fresh ``python -c`` process that reads the same file and times
``crypto_sign_open`` over its entries.  The import's rate counts the whole
process (interpreter start, imports, opening the store, reading the file,
verifying, committing); the baseline's counts the verify loop only.  CPU
time of a child is its user + system time from ``wait4`` (all threads).
The two processes alternate which goes first.

Targets (on the medians): ingest >= 1.0x raw verify, append >= 0.7x raw
sign, import >= 1.0x raw verify.

Run from the repository root::

    .venv/bin/python benchmarks/bench_log.py [--entries N] [--append N] [--rounds N] [--out PATH]

``--profile`` adds one cProfile run of append and of ingest (not timed).  The
exit status is 0 even when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.signing
from bench_context import (
    RunContext,
    ratio_summary,
    rotated,
    status,
    timed,
)
from bench_context import cpu_model as cpu_model  # re-exported for bench_dht.py
from bench_context import filesystem as filesystem
from bench_context import libsodium_version as libsodium_version

import identity.keys
from identity import Identity, limits
from p2pblog.entry import POST, create_entry, post_body
from p2pblog.feedfile import write_feed
from p2pblog.home import Home
from p2pblog.store import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "bench_log.json"
T0 = 1_700_000_000_000
SIG = 64
TARGET_APPEND_SIGN = 0.7
TARGET_INGEST_VERIFY = 1.0
TARGET_IMPORT_VERIFY = 1.0
APPEND_BATCH = 1000
PACKAGES = ("PyNaCl", "msgpack", "sqlite")
#: The in-process sides (the report's columns).
SIDES = ("raw_sign", "append", "raw_verify", "ingest")
#: What a round measures, in order (reversed in odd rounds): raw sign and append together,
#: in alternating blocks (`measure_sign_and_append`), then raw verify and ingest.
SIGN_AND_APPEND = "raw_sign+append"
UNITS = (SIGN_AND_APPEND, "raw_verify", "ingest")
IMPORT_SIDES = ("raw_verify_process", "import_process")

WORDS = [
    "the",
    "a",
    "peer",
    "feed",
    "gossip",
    "node",
    "entry",
    "signed",
    "today",
    "coffee",
    "release",
    "tested",
    "merged",
    "network",
    "latency",
    "sqlite",
    "python",
    "key",
    "chain",
    "follow",
    "reply",
    "thread",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "weather",
    "train",
    "late",
    "again",
    "lunch",
    "meeting",
    "notes",
    "idea",
    "draft",
]

#: The fresh process of the import baseline: read the feed file, then time
#: crypto_sign_open over its entries.  argv: FILE PUBLIC_KEY_HEX.
RAW_VERIFY_CHILD = """\
import json, sys, time
import nacl.bindings
from p2pblog.feedfile import read_feed
key = bytes.fromhex(sys.argv[2])
with open(sys.argv[1], "rb") as source:
    raws = list(read_feed(source))
sign_open = nacl.bindings.crypto_sign_open
wall, cpu = time.perf_counter(), time.process_time()
for raw in raws:
    sign_open(raw, key)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"entries": len(raws), "wall": wall, "cpu": cpu}))
"""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- inputs ---------------------------------------------------------------------


def texts(count: int, seed: int) -> list[str]:
    """count deterministic post texts of 90..110 characters, no mentions."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(count):
        target = rng.randint(90, 110)
        words: list[str] = []
        length = -1
        while length < target:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        out.append(" ".join(words)[:target].rstrip() + ".")
    return out


def round_identity(label: str, round_index: int) -> Identity:
    return Identity(hashlib.sha256(f"bench-log {label} round {round_index}".encode()).digest())


def build_feed(author: Identity, post_texts: list[str]) -> list[bytes]:
    """The signed bytes of a chain of posts, seq 1.. with prev = the previous id."""
    raws: list[bytes] = []
    prev: bytes | None = None
    for seq, text in enumerate(post_texts, start=1):
        entry = create_entry(author, seq=seq, prev=prev, timestamp=T0 + seq, kind=POST, body=post_body(text))
        raws.append(entry.raw)
        prev = entry.id
    return raws


@dataclass
class RoundInputs:
    """What one round measures, built before its clock starts."""

    author: Identity
    raws: list[bytes]
    contents: list[bytes]
    appender: Identity
    append_texts: list[str]
    held: list[bytes]


def held_feed(entries: int) -> list[bytes]:
    """Another author's feed that every measured store holds before append and ingest (``--held``)."""
    return build_feed(round_identity("held", 0), texts(entries, seed=4000)) if entries else []


def fresh_store(path: Path, inputs: RoundInputs) -> Store:
    """A new on-disk store, holding ``--held`` entries of another feed (not timed)."""
    store = Store(path)
    if inputs.held and store.ingest_many(inputs.held).accepted != len(inputs.held):
        raise SystemExit("the held feed was not stored whole")
    return store


def round_inputs(round_index: int, args: argparse.Namespace, held: list[bytes]) -> RoundInputs:
    author = round_identity("author", round_index)
    raws = build_feed(author, texts(args.entries, seed=1000 + round_index))
    contents = [raw[SIG:] for raw in raws[: args.append]]
    while len(contents) < args.append:  # a short --entries: sign some contents again
        contents += contents[: args.append - len(contents)]
    return RoundInputs(
        author,
        raws,
        contents,
        round_identity("appender", round_index),
        texts(args.append, 2000 + round_index),
        held,
    )


# --- the verify cache -------------------------------------------------------------------


class CountingCache(OrderedDict[bytes, None]):
    """``identity.keys._verified`` with a count of the lookups it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if found:
            self.hits += 1
        return found


@contextlib.contextmanager
def cold_verify_cache() -> Iterator[CountingCache]:
    """An empty verify cache (of the normal size) for the block; the process's own one restored after."""
    saved = identity.keys._verified
    cache = CountingCache()
    identity.keys._verified = cache
    try:
        yield cache
    finally:
        identity.keys._verified = saved


# --- the in-process measurements -----------------------------------------------------------


def measure_sign_and_append(
    inputs: RoundInputs, args: argparse.Namespace, workdir: Path, round_index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a) and (b) in alternating blocks of `APPEND_BATCH` entries: a block of raw signs, then
    one append transaction of as many entries (or the other way round; the order alternates
    from block to block and between rounds).  Each side's time is the sum over its blocks,
    so a change of load within the round reaches both sides alike."""
    sign = nacl.signing.SigningKey(inputs.author.seed).sign
    contents, post_texts, appender = inputs.contents, inputs.append_texts, inputs.appender
    n = len(post_texts)
    path = Path(tempfile.mkdtemp(dir=workdir)) / "store.db"
    store = fresh_store(path, inputs)
    clock, cpu_clock, thread_clock = time.perf_counter, time.process_time, time.thread_time
    spent = {"raw_sign": [0.0, 0.0, 0.0], "append": [0.0, 0.0, 0.0]}

    def raw_block(first: int, last: int) -> None:
        for content in contents[first:last]:
            sign(content)

    def append_block(first: int, last: int) -> None:
        with store.transaction():
            for i in range(first, last):
                store.append(appender, POST, post_body(post_texts[i]), T0 + i + 1)

    blocks = {"raw_sign": raw_block, "append": append_block}
    try:
        gc.collect()
        for number, first in enumerate(range(0, n, APPEND_BATCH)):
            last = min(first + APPEND_BATCH, n)
            order = ("raw_sign", "append") if (number + round_index) % 2 == 0 else ("append", "raw_sign")
            for side in order:
                totals = spent[side]
                wall, cpu, thread_cpu = clock(), cpu_clock(), thread_clock()
                blocks[side](first, last)
                totals[0] += clock() - wall
                totals[1] += cpu_clock() - cpu
                totals[2] += thread_clock() - thread_cpu
        if store.latest_seq(appender.public_key) != n:
            raise SystemExit(f"append stored {store.latest_seq(appender.public_key)} of {n} entries")
    finally:
        store.close()
        shutil.rmtree(path.parent)
    (sign_wall, sign_cpu, sign_thread), (append_wall, append_cpu, append_thread) = spent.values()
    return (
        {"entries": len(contents), "wall": sign_wall, "cpu": sign_cpu, "thread_cpu": sign_thread},
        {"entries": n, "wall": append_wall, "cpu": append_cpu, "thread_cpu": append_thread},
    )


def measure_raw_verify(inputs: RoundInputs, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sign_open, key, raws = nacl.bindings.crypto_sign_open, inputs.author.public_key, inputs.raws

    def run() -> None:
        for raw in raws:
            sign_open(raw, key)

    timing, _ = timed(run)
    return {"entries": len(raws), **timing.as_json()}


def measure_ingest(inputs: RoundInputs, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(dir=workdir)) / "store.db"
    store = fresh_store(path, inputs)
    try:
        with cold_verify_cache() as cache:
            timing, report = timed(lambda: store.ingest_many(inputs.raws))
        if cache.hits:
            raise SystemExit(
                f"the verify cache served {cache.hits} of the measured verifies: the ingest was not cold"
            )
        if report.accepted != len(inputs.raws) or report.error is not None:
            raise SystemExit(f"ingest did not accept the whole feed: {report}")
    finally:
        store.close()
        shutil.rmtree(path.parent)
    return {"entries": len(inputs.raws), **timing.as_json(), "verify_cache_hits": cache.hits}


MEASURE: dict[str, Callable[[RoundInputs, argparse.Namespace, Path], dict[str, Any]]] = {
    "raw_verify": measure_raw_verify,
    "ingest": measure_ingest,
}


def speed_ratios(ours: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Our rate over the baseline's, on wall and on CPU time (equal entry counts: a ratio of times)."""
    scale = ours["entries"] / baseline["entries"]

    def over(a: float, b: float) -> float:
        return scale * b / a if a > 0 else float("nan")

    ratios = {"wall": over(ours["wall"], baseline["wall"]), "cpu": over(ours["cpu"], baseline["cpu"])}
    if "thread_cpu" in ours:
        ratios["thread_cpu"] = over(ours["thread_cpu"], baseline["cpu"])
    if "process_wall" in baseline:
        ratios["wall_whole_processes"] = over(ours["wall"], baseline["process_wall"])
    return ratios


# --- import: whole processes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A child process, timed from just before its start to its exit; CPU of all its threads."""

    wall: float
    cpu: float
    exit: int
    stdout: str
    stderr: str


def run_child(command: list[str], timeout: float) -> ChildRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        # Block in wait4 (no polling that would take CPU from the child); a
        # timer kills a child that overstays.
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            _, wait_status, usage = os.wait4(child.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(wait_status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            wall,
            usage.ru_utime + usage.ru_stime,
            child.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


@dataclass
class ImportInputs:
    file: Path
    author: Identity
    entries: int


def import_inputs(round_index: int, count: int, workdir: Path) -> ImportInputs:
    author = round_identity("import author", round_index)
    raws = build_feed(author, texts(count, seed=3000 + round_index))
    file = workdir / f"import-{round_index}.feed"
    with file.open("wb") as out:
        write_feed(out, raws)
    return ImportInputs(file, author, count)


def measure_raw_verify_process(inputs: ImportInputs, workdir: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-c", RAW_VERIFY_CHILD, str(inputs.file), inputs.author.public_key.hex()]
    child = run_child(command, timeout)
    if child.exit != 0:
        raise SystemExit(f"the raw verify process exited {child.exit}: {child.stderr[-1000:]}")
    loop = json.loads(child.stdout.strip().splitlines()[-1])
    if loop["entries"] != inputs.entries:
        raise SystemExit(f"the raw verify process read {loop['entries']} of {inputs.entries} entries")
    return {
        "entries": inputs.entries,
        "wall": loop["wall"],
        "cpu": loop["cpu"],
        "process_wall": child.wall,
        "process_cpu": child.cpu,
    }


def measure_import_process(inputs: ImportInputs, workdir: Path, timeout: float) -> dict[str, Any]:
    home = Home(Path(tempfile.mkdtemp(dir=workdir)) / "home")
    home.create(Identity.generate())
    try:
        command = [sys.executable, "-m", "p2pblog", "--home", str(home.path), "import", str(inputs.file)]
        child = run_child(command, timeout)
        if child.exit != 0:
            raise SystemExit(f"`p2pblog import` exited {child.exit}: {child.stderr[-1000:]}")
        with home.open_store() as store:
            held = store.latest_seq(inputs.author.public_key)
        if held != inputs.entries:
            raise SystemExit(f"`p2pblog import` stored {held} of {inputs.entries} entries")
    finally:
        shutil.rmtree(home.path.parent)
    return {
        "entries": inputs.entries,
        "wall": child.wall,
        "cpu": child.cpu,
        "output": child.stdout.strip(),
    }


# --- profile ---------------------------------------------------------------------------------


def profile(label: str, func: Callable[[], object], top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    func()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return f"## cProfile: {label} (sorted by tottime)\n{out.getvalue()}"


# --- the rounds -------------------------------------------------------------------------------


def run_rounds(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    if args.held:
        progress(f"building the {args.held:,}-entry feed every measured store holds (not timed) ...")
    held = held_feed(args.held)
    for r in range(args.rounds):
        progress(
            f"round {r + 1} of {args.rounds}: building a fresh {args.entries:,}-entry feed (not timed) ..."
        )
        inputs = round_inputs(r, args, held)
        order = list(UNITS) if r % 2 == 0 else list(reversed(UNITS))
        sizes = [len(raw) for raw in inputs.raws]
        row: dict[str, Any] = {
            "round": r + 1,
            "order": order,
            "load_average_before": os.getloadavg(),
            "entry_bytes": {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)},
        }
        for unit in order:
            if unit == SIGN_AND_APPEND:
                row["raw_sign"], row["append"] = measure_sign_and_append(inputs, args, workdir, r)
                measured = ["raw_sign", "append"]
            else:
                row[unit] = MEASURE[unit](inputs, args, workdir)
                measured = [unit]
            for side in measured:
                progress(f"  {side}: {row[side]['entries'] / row[side]['wall']:,.0f} entries/s")
        row["append_over_raw_sign"] = speed_ratios(row["append"], row["raw_sign"])
        row["ingest_over_raw_verify"] = speed_ratios(row["ingest"], row["raw_verify"])
        if args.import_entries:
            progress(f"  import: a {args.import_entries:,}-entry feed file (not timed) ...")
            imp = import_inputs(r, args.import_entries, workdir)
            import_order = rotated(IMPORT_SIDES, r)
            row["import_order"] = import_order
            for side in import_order:
                measure = (
                    measure_raw_verify_process if side == "raw_verify_process" else measure_import_process
                )
                row[side] = measure(imp, workdir, args.child_timeout)
                progress(f"  {side}: {imp.entries / row[side]['wall']:,.0f} entries/s")
            imp.file.unlink()
            row["import_over_raw_verify"] = speed_ratios(row["import_process"], row["raw_verify_process"])
        row["load_average_after"] = os.getloadavg()
        rounds.append(row)
    return rounds


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def ratios(key: str, target: float) -> dict[str, Any]:
        per_round = [row[key] for row in rounds if key in row]
        summary = {
            "wall": ratio_summary([x["wall"] for x in per_round], target),
            "cpu": ratio_summary([x["cpu"] for x in per_round]),
        }
        for extra in ("thread_cpu", "wall_whole_processes"):
            if all(extra in x for x in per_round):
                summary[extra] = ratio_summary([x[extra] for x in per_round])
        return summary

    summary = {
        "append_over_raw_sign": ratios("append_over_raw_sign", TARGET_APPEND_SIGN),
        "ingest_over_raw_verify": ratios("ingest_over_raw_verify", TARGET_INGEST_VERIFY),
    }
    if any("import_over_raw_verify" in row for row in rounds):
        summary["import_over_raw_verify"] = ratios("import_over_raw_verify", TARGET_IMPORT_VERIFY)
    return summary


# --- report -----------------------------------------------------------------------------------

LABELS = {
    "raw_sign": "(a) raw sign",
    "append": "(b) append",
    "raw_verify": "(c) raw verify",
    "ingest": "(d) ingest",
    "raw_verify_process": "(e) raw verify, fresh process (loop)",
    "import_process": "(e) `p2pblog import`, whole process",
}
RATIO_LABELS = {
    "append_over_raw_sign": ("append / raw sign", "(b)/(a)"),
    "ingest_over_raw_verify": ("ingest / raw verify", "(d)/(c)"),
    "import_over_raw_verify": ("import / raw verify", "(e)"),
}


def markdown(result: dict[str, Any], context: RunContext) -> str:
    p = result["parameters"]
    lines = [
        f"## Log: append, ingest and import against raw PyNaCl — {context.facts['cpu']}, "
        f"{context.facts['cores']} cores",
        "",
        *context.markdown(),
        "",
        f"{p['rounds']} interleaved rounds (order {', '.join(UNITS)} in odd-numbered rounds, reversed in "
        f"even-numbered ones; raw sign and append in alternating blocks of {p['append_transaction_batch']:,} "
        f"entries, the first of each pair alternating); fresh keys and entries every round; "
        f"ingest with an empty verify cache "
        f"(hits counted: {sum(row['ingest']['verify_cache_hits'] for row in result['rounds'])}). "
        f"Entries {p['entry_bytes_min']}..{p['entry_bytes_max']} bytes signed "
        f"(mean {p['entry_bytes_mean']:.0f}); ingest of {p['entries']:,}, append and raw sign of "
        f"{p['append']:,}, import of {p['import_entries']:,}. "
        + (
            f"Each append and ingest store already held {p['held']:,} entries of another feed."
            if p.get("held")
            else "Each append and ingest store was empty."
        ),
        "",
        "Rates in entries/s, each round's own; ratios of the round; CPU = process CPU time "
        "(all threads), main = the measuring thread's CPU time.",
        "",
    ]
    sides = [s for s in (*SIDES, *IMPORT_SIDES) if s in result["rounds"][0]]
    lines.append("| round | load | " + " | ".join(LABELS[s] for s in sides) + " | ratios: wall (CPU) |")
    lines.append("|---:|---|" + "---:|" * len(sides) + "---|")
    for row in result["rounds"]:
        rates = [f"{row[s]['entries'] / row[s]['wall']:,.0f}" for s in sides]
        ratio_text = "; ".join(
            f"{RATIO_LABELS[k][1]} {row[k]['wall']:.3f} ({row[k]['cpu']:.3f})"
            for k in RATIO_LABELS
            if k in row
        )
        load = f"{row['load_average_before'][0]:.2f}→{row['load_average_after'][0]:.2f}"
        lines.append(f"| {row['round']} | {load} | " + " | ".join(rates) + f" | {ratio_text} |")
    lines += [
        "",
        "| ratio (median over rounds) | wall | wall min..max | CPU | main-thread CPU | target (wall) "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, (label, _) in RATIO_LABELS.items():
        s = result["ratios"].get(key)
        if s is None:
            continue
        wall = s["wall"]
        main_thread = f"{s['thread_cpu']['median']:.3f}" if "thread_cpu" in s else "n/a"
        lines.append(
            f"| {label} | **{wall['median']:.3f}** | {wall['min']:.3f}..{wall['max']:.3f} | "
            f"{s['cpu']['median']:.3f} | {main_thread} | >= {wall['target']} | {status(wall['met'])} |"
        )
    lines += [
        "",
        "CPU ratios: ours and the baseline on CPU time instead of wall time. For ingest, CPU time counts "
        "every thread of the process (worker threads that verify included), so the CPU ratio is the CPU "
        "work per entry of the baseline over ours; the wall ratio can exceed it by using more cores. "
        "For import, the child's user + system time (all threads, from wait4) against the baseline "
        "process's verify loop.",
    ]
    whole = result["ratios"].get("import_over_raw_verify", {}).get("wall_whole_processes")
    if whole:
        lines += [
            "",
            f"Import against the baseline process's whole wall time (its start, imports and file read "
            f"included), median {whole['median']:.3f} ({whole['min']:.3f}..{whole['max']:.3f}).",
        ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="feed size for raw verify and ingest")
    parser.add_argument("--append", type=int, default=20_000, help="appends (and raw signs) per round")
    parser.add_argument(
        "--import-entries", type=int, default=20_000, help="entries imported per round (0: skip)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--held",
        type=int,
        default=0,
        help="entries of another feed each store holds before append and ingest (0: empty stores)",
    )
    parser.add_argument(
        "--child-timeout", type=float, default=600.0, help="seconds allowed per child process"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--profile", action="store_true", help="also cProfile one append and ingest run")
    args = parser.parse_args(argv)
    if min(args.entries, args.append, args.rounds) < 1 or min(args.import_entries, args.held) < 0:
        parser.error("counts must be positive")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Stores go next to the repository (same disk), not to a tmpfs.
    workdir = Path(tempfile.mkdtemp(prefix=".bench-log-", dir=HERE))
    context = RunContext.begin("benchmarks/bench_log.py", argv, PACKAGES, workdir)
    wall = time.perf_counter()
    try:
        rounds = run_rounds(args, workdir)
        profiles = ""
        if args.profile:
            progress("profiling (not timed) ...")
            inputs = round_inputs(args.rounds, args, held_feed(args.held))
            profiles = profile(
                f"append of {args.append} (and as many raw signs, in alternating blocks)",
                lambda: measure_sign_and_append(inputs, args, workdir, 0),
                25,
            )
            profiles += "\n" + profile(
                f"ingest_many of {args.entries}", lambda: measure_ingest(inputs, args, workdir), 25
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - wall
    context.end()

    sizes = rounds[0]["entry_bytes"]
    result: dict[str, Any] = {
        "benchmark": "log: append, ingest and import against raw PyNaCl, interleaved rounds",
        **context.as_json(),
        "policy": (
            "interleaved rounds, per-round ratios, median over rounds; wall = perf_counter, "
            "CPU = process_time (all threads) and thread_time (measuring thread); gc.collect() before "
            "each measurement; fresh keys and entries per round; ingest with an empty verify cache"
        ),
        "parameters": {
            "entries": args.entries,
            "append": args.append,
            "import_entries": args.import_entries,
            "rounds": args.rounds,
            "held": args.held,
            "append_transaction_batch": APPEND_BATCH,
            "ingest_batch": limits.INGEST_BATCH,
            "verify_cache_size": identity.keys.VERIFY_CACHE_SIZE,
            "entry_bytes_min": sizes["min"],
            "entry_bytes_mean": sizes["mean"],
            "entry_bytes_max": sizes["max"],
            "store_pragmas": "journal_mode=WAL, synchronous=FULL",
        },
        "rounds": rounds,
        "ratios": summarize(rounds),
        "wall_seconds": wall,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result, context))
    print()
    for key, s in result["ratios"].items():
        if not s["wall"]["met"]:
            print(f"MISSED: {key} median {s['wall']['median']:.3f} < target {s['wall']['target']}")
    print(f"Wall time {wall:.1f} s; JSON written to {args.out}")
    if profiles:
        print()
        print(profiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
