"""Benchmark of the log (issue: foundation): append and ingest against raw PyNaCl.

One run on one machine measures four rates, in entries per second:

(a) raw sign: ``nacl.signing.SigningKey.sign`` over the content bytes of real
    post entries (``encode_content`` output, ~100-character texts);
(b) append: ``Store.append(identity, "post", post_body(text), timestamp)`` into
    a fresh on-disk store, 1000 appends per ``store.transaction()``;
(c) raw verify: ``nacl.bindings.crypto_sign_open`` (what ``identity.verify``
    calls) over signed entries of the feed used in (d);
(d) ingest: ``Store.ingest_many`` of a pre-built chain of signed entries into a
    fresh on-disk store (the report must say that all were accepted).

and reports append/raw_sign (target >= 0.4) and ingest/raw_verify (target >=
0.6).  Every rate, raw baseline or ours, is the best of ``--repeat`` timed
repetitions of the same work; the JSON file keeps every repetition.

Run from the repository root::

    .venv/bin/python benchmarks/bench_log.py [--entries N] [--append N] [--out PATH]

``--profile`` adds one cProfile run of append and of ingest (not timed).  The
exit status is 0 even when a target is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import nacl
import nacl.bindings
import nacl.signing

from identity import Identity, limits
from p2pblog.entry import POST, Entry, create_entry, post_body
from p2pblog.store import Store

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_log.json"
T0 = 1_700_000_000_000
SIG = 64
TARGET_APPEND_SIGN = 0.4
TARGET_INGEST_VERIFY = 0.6
TIMER = time.perf_counter

WORDS = (
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
)


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


def build_feed(identity: Identity, post_texts: list[str]) -> list[Entry]:
    """A chain of signed posts, seq 1.. with prev = the previous id."""
    feed: list[Entry] = []
    prev: bytes | None = None
    for seq, text in enumerate(post_texts, start=1):
        entry = create_entry(
            identity, seq=seq, prev=prev, timestamp=T0 + seq, kind=POST, body=post_body(text)
        )
        feed.append(entry)
        prev = entry.id
    return feed


# --- timing -----------------------------------------------------------------------


def best_of(repeat: int, count: int, run: Callable[[], float]) -> dict[str, Any]:
    """run() returns the seconds of one timed repetition of count entries."""
    seconds: list[float] = []
    for _ in range(repeat):
        gc.collect()
        seconds.append(run())
    rates = [count / s for s in seconds]
    return {
        "entries": count,
        "rate": max(rates),
        "rates": rates,
        "seconds": seconds,
        "spread": max(rates) / min(rates) - 1.0,
    }


def raw_sign(contents: list[bytes], seed: bytes) -> float:
    sign = nacl.signing.SigningKey(seed).sign
    start = TIMER()
    for content in contents:
        sign(content)
    return TIMER() - start


def raw_verify(signed: list[bytes], public_key: bytes) -> float:
    sign_open = nacl.bindings.crypto_sign_open
    start = TIMER()
    for raw in signed:
        sign_open(raw, public_key)
    return TIMER() - start


def append_run(workdir: Path, identity: Identity, post_texts: list[str], batch: int) -> float:
    path = Path(tempfile.mkdtemp(dir=workdir)) / "store.db"
    store = Store(path)
    try:
        n = len(post_texts)
        start = TIMER()
        for first in range(0, n, batch):
            with store.transaction():
                for i in range(first, min(first + batch, n)):
                    store.append(identity, POST, post_body(post_texts[i]), T0 + i + 1)
        elapsed = TIMER() - start
        if store.latest_seq(identity.public_key) != n:
            raise SystemExit(f"append stored {store.latest_seq(identity.public_key)} of {n} entries")
    finally:
        store.close()
        shutil.rmtree(path.parent)
    return elapsed


def ingest_run(workdir: Path, raws: list[bytes]) -> float:
    path = Path(tempfile.mkdtemp(dir=workdir)) / "store.db"
    store = Store(path)
    try:
        start = TIMER()
        report = store.ingest_many(raws)
        elapsed = TIMER() - start
        if report.accepted != len(raws) or report.error is not None:
            raise SystemExit(f"ingest did not accept the whole feed: {report}")
    finally:
        store.close()
        shutil.rmtree(path.parent)
    return elapsed


def profile(label: str, func: Callable[[], object], top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    func()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return f"## cProfile: {label} (sorted by tottime)\n{out.getvalue()}"


# --- machine -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def libsodium_version() -> str:
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


def machine(workdir: Path) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "pynacl": getattr(nacl, "__version__", "unknown"),
        "libsodium": libsodium_version(),
        "msgpack": metadata.version("msgpack"),
        "sqlite": sqlite3.sqlite_version,
        "store_dir_fs": filesystem(workdir),
    }


# --- main ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="feed size for ingest (d)")
    parser.add_argument("--append", type=int, default=20_000, help="appends per repetition (b)")
    parser.add_argument("--samples", type=int, default=20_000, help="entries per raw sign/verify rep")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per rate; the best is kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--profile", action="store_true", help="also cProfile one append and ingest run")
    args = parser.parse_args(argv)
    if min(args.entries, args.append, args.samples, args.repeat) < 1:
        parser.error("counts must be positive")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Stores go next to the repository (same disk), not to a tmpfs.
    workdir = Path(tempfile.mkdtemp(prefix=".bench-log-", dir=HERE))
    load_before = os.getloadavg()
    wall = TIMER()
    try:
        print(f"building a {args.entries}-entry feed (not timed) ...", file=sys.stderr)
        author = Identity(b"\x01" * 32)
        feed = build_feed(author, texts(args.entries, seed=1))
        raws = [e.raw for e in feed]
        sample = raws[: args.samples]
        if len(sample) < args.samples:  # a small --entries: reuse the feed's entries
            sample = (sample * (args.samples // len(sample) + 1))[: args.samples]
        contents = [raw[SIG:] for raw in sample]
        sizes = [len(r) for r in raws]
        append_texts = texts(args.append, seed=2)
        appender = Identity(b"\x02" * 32)
        batch = 1000

        print("(a) raw sign ...", file=sys.stderr)
        sign = best_of(args.repeat, len(contents), lambda: raw_sign(contents, b"\x01" * 32))
        print("(b) append ...", file=sys.stderr)
        append = best_of(args.repeat, args.append, lambda: append_run(workdir, appender, append_texts, batch))
        print("(c) raw verify ...", file=sys.stderr)
        verify = best_of(args.repeat, len(sample), lambda: raw_verify(sample, author.public_key))
        print("(d) ingest ...", file=sys.stderr)
        ingest = best_of(args.repeat, len(raws), lambda: ingest_run(workdir, raws))

        profiles = ""
        if args.profile:
            print("profiling (not timed) ...", file=sys.stderr)
            profiles = profile(
                f"append of {args.append}",
                lambda: append_run(workdir, appender, append_texts, batch),
                25,
            )
            profiles += "\n" + profile(f"ingest_many of {len(raws)}", lambda: ingest_run(workdir, raws), 25)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = TIMER() - wall
    load_after = os.getloadavg()

    ratios = {
        "append_over_raw_sign": {
            "value": append["rate"] / sign["rate"],
            "target": TARGET_APPEND_SIGN,
        },
        "ingest_over_raw_verify": {
            "value": ingest["rate"] / verify["rate"],
            "target": TARGET_INGEST_VERIFY,
        },
    }
    for ratio in ratios.values():
        ratio["met"] = ratio["value"] >= ratio["target"]
    noisy = max(r["spread"] for r in (sign, append, verify, ingest)) > 0.10
    policy = (
        f"best of {args.repeat} repetitions for every rate (raw baselines and store alike); "
        f"gc.collect() before each repetition; time.perf_counter"
    )
    result: dict[str, Any] = {
        "benchmark": "log: append and ingest (issue: foundation)",
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_log.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(workdir.parent),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "policy": policy,
        "parameters": {
            "entries": args.entries,
            "append": args.append,
            "samples": args.samples,
            "repeat": args.repeat,
            "append_transaction_batch": batch,
            "ingest_batch": limits.INGEST_BATCH,
            "entry_bytes_min": min(sizes),
            "entry_bytes_mean": sum(sizes) / len(sizes),
            "entry_bytes_max": max(sizes),
            "store_pragmas": "journal_mode=WAL, synchronous=FULL",
        },
        "rates": {
            "raw_sign": sign,
            "append": append,
            "raw_verify": verify,
            "ingest": ingest,
        },
        "ratios": ratios,
        "noisy": noisy,
        "wall_seconds": wall,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    m = result["machine"]
    print(f"## Log: append and ingest — {m['cpu']}, {m['cores']} cores")
    print()
    print(
        f"Python {m['python']}, PyNaCl {m['pynacl']}, libsodium {m['libsodium']}, "
        f"SQLite {m['sqlite']}, store on {m['store_dir_fs']}"
    )
    print(f"Policy: {policy}.")
    print(
        f"Entries: {min(sizes)}..{max(sizes)} bytes signed (mean {sum(sizes) / len(sizes):.0f}); "
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
    )
    print()
    print("| measurement | entries per rep | best (entries/s) | all reps (entries/s) | spread |")
    print("|---|---:|---:|---|---:|")
    labels = {
        "raw_sign": "(a) raw sign `SigningKey.sign`",
        "append": f"(b) `Store.append`, {batch} per transaction",
        "raw_verify": "(c) raw verify `crypto_sign_open`",
        "ingest": "(d) `Store.ingest_many`",
    }
    for key, label in labels.items():
        r = result["rates"][key]
        reps = ", ".join(f"{x:,.0f}" for x in r["rates"])
        print(f"| {label} | {r['entries']:,} | {r['rate']:,.0f} | {reps} | {r['spread']:.1%} |")
    print()
    print("| ratio | value | target | status |")
    print("|---|---:|---:|---|")
    for key, label in (
        ("append_over_raw_sign", "append / raw sign"),
        ("ingest_over_raw_verify", "ingest / raw verify"),
    ):
        r = ratios[key]
        status = "met" if r["met"] else "**MISSED**"
        print(f"| {label} | {r['value']:.3f} | >= {r['target']} | {status} |")
    print()
    if noisy:
        print("NOTE: repetitions differ by more than 10%: the machine was busy; numbers are noisy.")
    for key, r in ratios.items():
        if not r["met"]:
            print(f"MISSED: {key} = {r['value']:.3f} < target {r['target']}")
    print(f"Wall time {wall:.1f} s; JSON written to {args.out}")
    if profiles:
        print()
        print(profiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
