"""Benchmark of gossip replication (issue 4) with real ``p2pblog run`` processes on 127.0.0.1.

Three parts, each against a baseline or target measured in the same run:

1. **catch-up** (``--part catchup``): a ``--entries`` (100,000) post feed is
   built offline in A's store (timed, not counted).  ``--rounds`` (5)
   rounds; each measures three sides once, back to back, in an order
   rotated by one every round:

   - *p2pblog*: two fresh ``p2pblog run`` processes, A (a copy of the
     built store) and B (empty), replicate the feed over Noise TCP on
     loopback: B follows A (control API ``follow``) and the clock runs from
     just before that command until B's store holds A's feed up to seq
     ``--entries`` (polled every ``--poll`` s with a read-only SQLite
     connection).  CPU: B's utime + stime (/proc/PID/stat, all threads, and its verifier processes)
     over the same span.
   - *hypercore*: if ``npm`` is here and ``hypercore@11.37.1`` installs
     (``npm install`` in a temp dir, bounded by ``--npm-timeout``), the same
     entries as hypercore blocks, replicated between two fresh node
     processes over TCP on loopback (``gossip_bench_hypercore.js``), timed
     in the fetching process from just before its connect to the last block;
     CPU: the fetching process's ``process.cpuUsage()`` (all threads).
   - *raw verify*: ``crypto_sign_open`` over every entry on one thread of
     this process (one core's raw verify rate); CPU: ``process_time``.

   Each round gives p2pblog / raw verify and p2pblog / hypercore, on wall
   time (rate over rate) and on CPU time (the baseline's CPU seconds over
   B's); the report is the median over the rounds, every round beside it.
   Targets on the wall medians: >= 0.9x one core's raw verify, >= 1.5x
   hypercore.  Every run starts fresh processes, so no verify cache is warm.
2. **live delivery** (``--part live``): one author and ``--followers`` (10)
   follower processes, all following the author and connected to it; then
   ``--posts`` (200) posts through the author's control API, spaced
   uniformly at random between ``--gap-min`` and ``--gap-max`` s.  Latency of
   a (post, follower) pair: from just before the ``post`` command is sent to
   the moment the benchmark reads the follower's ``received ... (now at
   #SEQ)`` log line with SEQ >= the post's seq (the node prints it after the
   entry is committed to its store; see `gossip_bench_nodes.LogPump` for
   the cost of watching).  Reported: p50 and p99 over all pairs; target p50 <
   50 ms.
3. **footprint** (``--part footprint``): one node F that follows ``--feeds``
   (20) feeds served by ``--peers`` (10) peer processes (each peer follows
   and holds 2 of the feeds, ``--feed-entries`` entries each, built offline
   and signed by the feeds' own identities).  Once F holds every feed and is
   connected to every peer, after ``--settle-idle`` s: F's VmRSS, and F's CPU
   over ``--idle-seconds`` (30) s from /proc/PID/stat (utime + stime) and
   /proc/PID/task/*/schedstat (every thread).  Targets: RSS < 80 MB, idle CPU
   < 1% of a core.

Every process runs on 127.0.0.1 only, every wait is bounded, and every
process and temp directory is removed at the end, also on failure or
SIGTERM (`gossip_bench_nodes.Cluster`).

Run from the repository root::

    .venv/bin/python benchmarks/bench_gossip.py [--part catchup|live|footprint ...] [--out PATH]

``--profile`` adds a cProfile run of the catch-up (A and B under
``python -m cProfile``; not timed).  The exit status is 0 even when a target
is missed: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pstats
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import nacl.bindings
from bench_context import RunContext, median, ratio_summary, rotated, status, timed
from bench_dht import quantile
from bench_log import texts
from gossip_bench_nodes import (
    Cluster,
    NodeProcess,
    _die_with_parent,
    proc_cpu_seconds,
    proc_schedstat,
    proc_status_kib,
    proc_tasks_schedstat,
    proc_threads,
    quiet_calls,
    signals_as_exit,
    wait_until,
)

from identity import Identity
from p2pblog.entry import FOLLOW, POST, post_body
from p2pblog.store import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "bench_gossip.json"
HYPERCORE_SCRIPT = HERE / "gossip_bench_hypercore.js"
HYPERCORE_PACKAGE = "hypercore@11.37.1"
PARTS = ("catchup", "live", "footprint")
PACKAGES = ("PyNaCl", "trio", "msgpack", "sqlite")
TIMER = time.perf_counter

TARGET_CATCHUP_OVER_VERIFY = 0.9
TARGET_CATCHUP_OVER_HYPERCORE = 1.5
TARGET_LIVE_P50 = 0.050
#: 80 MB (decimal), in KiB.
TARGET_RSS_KIB = 80_000_000 / 1024
TARGET_IDLE_CPU = 0.01
#: Seconds to wait for a node to log "joined the DHT".
JOIN_TIMEOUT = 30.0
#: Appends per store transaction when building feeds offline (as bench_log.py).
BUILD_BATCH = 1000


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def deterministic_identity(label: str) -> Identity:
    return Identity(hashlib.sha256(f"bench-gossip {label}".encode()).digest())


def build_posts(store: Store, identity: Identity, post_texts: list[str], first_ts: int) -> list[bytes]:
    """Append posts signed by identity to its feed in store; return their signed bytes."""
    raws: list[bytes] = []
    for first in range(0, len(post_texts), BUILD_BATCH):
        with store.transaction():
            for i in range(first, min(first + BUILD_BATCH, len(post_texts))):
                entry = store.append(identity, POST, post_body(post_texts[i]), first_ts + i)
                raws.append(entry.raw)
    return raws


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?:info|warn|error) (?P<message>.*)")


def log_message(line: str) -> str:
    """The message of a node's log line (`p2pblog.daemon.log`: ``STAMP LEVEL MESSAGE``)."""
    match = _LOG_LINE.fullmatch(line)
    return match["message"] if match else line


def wait_joined(cluster: Cluster, nodes: list[NodeProcess]) -> None:
    for node in nodes:
        line = cluster.pump.wait_for_line(
            node.name, lambda text: log_message(text).startswith("joined the DHT"), JOIN_TIMEOUT
        )
        if line is None:
            raise RuntimeError(f"{node.name} did not join the DHT: {cluster.tail(node.name)}")


def cpu_of(nodes: list[NodeProcess]) -> dict[str, float]:
    return {n.name: proc_cpu_seconds(n.pid) for n in nodes}


def sched_of(nodes: list[NodeProcess]) -> dict[str, tuple[int, int]]:
    return {n.name: proc_schedstat(n.pid) for n in nodes}


def time_split(before: tuple[int, int], after: tuple[int, int], wall: float) -> dict[str, float]:
    """Seconds of wall on a CPU, waiting for one (run queue), and blocked (the rest: I/O, idle)."""
    if before[0] < 0 or after[0] < 0:
        return {}
    run, queued = (after[0] - before[0]) / 1e9, (after[1] - before[1]) / 1e9
    return {"run": run, "runqueue": queued, "blocked": max(0.0, wall - run - queued)}


# --- part 1: catch-up -----------------------------------------------------------------------


def raw_verify(raws: list[bytes], public_key: bytes) -> dict[str, Any]:
    """One pass of ``crypto_sign_open`` (what ``identity.verify`` calls) over every entry, on this thread.

    One core's raw verify rate.  CPU time is ``process_time`` of this
    process; its only other thread, the log pump, sleeps while no node runs.
    """
    sign_open = nacl.bindings.crypto_sign_open

    def run() -> None:
        for raw in raws:
            sign_open(raw, public_key)

    timing, _ = timed(run)
    return {
        "entries": len(raws),
        "seconds": timing.wall,
        "cpu_seconds": timing.cpu,
        "rate": len(raws) / timing.wall,
        "cpu_rate": len(raws) / timing.cpu if timing.cpu > 0 else float("nan"),
    }


def catchup_run(
    cluster: Cluster, template: Path, author: Identity, rep: int, args: argparse.Namespace, *, profile: bool
) -> dict[str, Any]:
    """One catch-up: fresh A (a copy of the template store) and fresh B; B follows A."""
    a_name, b_name = f"a{rep}", f"b{rep}"
    a_home, _ = cluster.create_home(a_name, author)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{a_home.store_file}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, a_home.store_file)
    cluster.create_home(b_name)
    a = cluster.start(a_name, profile=profile)
    b = cluster.start(b_name, bootstrap=[a], profile=profile)
    try:
        wait_joined(cluster, [b])
        # A announces its feed at its first maintenance pass with B in its table
        # (an empty table polls every FIRST_CONTACT_POLL = 1 s); B's follow searches at once.
        time.sleep(args.settle)
        cpu0, sched0 = cpu_of([a, b]), sched_of([a, b])
        start = TIMER()
        b.call("follow", {"handle": a.handle})
        follow_returned = TIMER()
        deadline = start + args.catchup_timeout
        seq = 0
        polls = 0
        while TIMER() < deadline:
            seq = b.latest_seq(author.public_key)
            polls += 1
            if seq >= args.entries:
                break
            time.sleep(args.poll)
        done = TIMER()
        cpu1, sched1 = cpu_of([a, b]), sched_of([a, b])
        arrivals = [x for x in cluster.pump.arrivals[b_name] if x.feed == a.fingerprint]
        last_line = next((x.at for x in arrivals if x.seq >= args.entries), None)
        status = quiet_calls(lambda: b.call("status"))
        counters = status["counters"] if status else {}
        a_status = quiet_calls(lambda: a.call("status"))
        rss = {n.name: proc_status_kib(n.pid, "VmHWM") for n in (a, b)}
    finally:
        cluster.stop([a_name, b_name])
    finished = seq >= args.entries
    seconds = done - start
    result: dict[str, Any] = {
        "finished": finished,
        "latest_seq": seq,
        "seconds": seconds,
        "rate": args.entries / seconds if finished else 0.0,
        "follow_command_seconds": follow_returned - start,
        "first_batch_seconds": arrivals[0].at - start if arrivals else None,
        "first_batch_entries": arrivals[0].count if arrivals else None,
        "last_line_seconds": last_line - start if last_line is not None else None,
        "batches_logged": len(arrivals),
        "polls": polls,
        "cpu_seconds_a": cpu1[a_name] - cpu0[a_name],
        "cpu_seconds_b": cpu1[b_name] - cpu0[b_name],
        "time_split_a": time_split(sched0[a_name], sched1[a_name], done - start),
        "time_split_b": time_split(sched0[b_name], sched1[b_name], done - start),
        "peak_rss_kib_a": rss[a_name],
        "peak_rss_kib_b": rss[b_name],
        "counters_b": counters,
        "counters_a": a_status["counters"] if a_status else {},
    }
    if arrivals and finished:
        stream_seconds = (last_line if last_line is not None else done) - arrivals[0].at
        result["stream_rate"] = (
            (args.entries - arrivals[0].count) / stream_seconds if stream_seconds > 0 else None
        )
    if profile:
        result["profiles"] = {
            name: profile_text(path, 30)
            for name, node in (("A (sender)", a), ("B (receiver)", b))
            if (path := node.profile_out) is not None and path.exists()
        }
    return result


def profile_text(path: Path, top: int) -> str:
    parts = []
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).sort_stats(order).print_stats(top)
        parts.append(f"### sorted by {order}\n{out.getvalue()}")
    return "\n".join(parts)


def read_json_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The first line a child prints on stdout, as JSON, within timeout seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line from the child within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the child exited ({process.poll()}) without a line")
            buffer += chunk
    result: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return result


class HypercoreSide:
    """The reference: ``hypercore@11.37.1`` replicating the same entries (``gossip_bench_hypercore.js``).

    `install` runs ``npm install`` in a temp dir (bounded by ``--npm-timeout``)
    and writes the entries as blocks; it returns None, or why it cannot run.
    Each `run` starts a fresh serving process (a new core holding every
    block, built before the clock starts) and a fresh fetching process, and
    times the download in the fetching process, from just before its TCP
    connect to the last block.
    """

    def __init__(self, raws: list[bytes], workdir: Path, args: argparse.Namespace) -> None:
        self.raws = raws
        self.dir = workdir / "hypercore"
        self.args = args
        self.node = shutil.which("node")
        self.npm = shutil.which("npm")
        self.info: dict[str, Any] = {}

    def install(self) -> str | None:
        if self.npm is None or self.node is None:
            return f"npm {'found' if self.npm else 'not found'}, node {'found' if self.node else 'not found'}"
        for tool, path in (("node", self.node), ("npm", self.npm)):
            try:
                self.info[tool] = subprocess.run(
                    [path, "--version"], capture_output=True, text=True, timeout=30, check=False
                ).stdout.strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.info[tool] = f"unknown ({exc})"
        self.dir.mkdir()
        (self.dir / "package.json").write_text('{"name": "bench-gossip-hypercore", "private": true}\n')
        command = [self.npm, "install", HYPERCORE_PACKAGE, "--no-audit", "--no-fund", "--loglevel=error"]
        timeout = self.args.npm_timeout
        progress(f"hypercore: {' '.join(command[1:])} (timeout {timeout:.0f} s) ...")
        started = TIMER()
        try:
            done = subprocess.run(
                command, cwd=self.dir, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return f"`npm install {HYPERCORE_PACKAGE}` timed out after {timeout:.0f} s"
        self.info["install_seconds"] = TIMER() - started
        if done.returncode != 0:
            error = (done.stderr or done.stdout).strip().splitlines()
            return f"`npm install {HYPERCORE_PACKAGE}` exited {done.returncode}: " + " | ".join(error[-8:])
        manifest = self.dir / "node_modules" / "hypercore" / "package.json"
        try:
            self.info["package"] = f"hypercore@{json.loads(manifest.read_text())['version']}"
        except (OSError, ValueError, KeyError):
            self.info["package"] = "hypercore@unknown"
        # Next to node_modules, so that require() finds hypercore.
        shutil.copyfile(HYPERCORE_SCRIPT, self.dir / HYPERCORE_SCRIPT.name)
        with (self.dir / "entries.bin").open("wb") as out:
            for raw in self.raws:
                out.write(struct.pack(">I", len(raw)))
                out.write(raw)
        return None

    def run(self, rep: int) -> dict[str, Any]:
        assert self.node is not None
        script, count, timeout = (
            str(self.dir / HYPERCORE_SCRIPT.name),
            len(self.raws),
            self.args.catchup_timeout,
        )
        serve = subprocess.Popen(
            [
                self.node,
                script,
                "serve",
                "--entries",
                str(self.dir / "entries.bin"),
                "--dir",
                str(self.dir / f"serve{rep}"),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            preexec_fn=_die_with_parent,
        )
        try:
            ready = read_json_line(serve, 120)
            fetch_command = [
                self.node, script, "fetch",
                "--port", str(ready["port"]), "--key", str(ready["key"]),
                "--dir", str(self.dir / f"fetch{rep}"), "--expect", str(count), "--timeout", str(timeout),
            ]  # fmt: skip
            wall = TIMER()
            fetched = subprocess.run(
                fetch_command, cwd=self.dir, capture_output=True, text=True, timeout=timeout + 30, check=False
            )
            wall = TIMER() - wall
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(timeout=5)
            if serve.stdout is not None:
                serve.stdout.close()
            for side in ("serve", "fetch"):
                shutil.rmtree(self.dir / f"{side}{rep}", ignore_errors=True)
        if fetched.returncode != 0 or not fetched.stdout.strip():
            return {
                "finished": False,
                "rate": 0.0,
                "exit": fetched.returncode,
                "stdout": fetched.stdout[-500:],
                "stderr": fetched.stderr[-1000:],
            }
        out = json.loads(fetched.stdout.strip().splitlines()[-1])
        finished = out.get("contiguous_length") == count
        return {
            "finished": finished,
            "seconds": out["seconds"],
            "rate": count / out["seconds"] if finished else 0.0,
            "first_block_seconds": out.get("first_block_seconds"),
            "process_wall_seconds": wall,
            "cpu_seconds_fetch": out["cpu_user_seconds"] + out["cpu_system_seconds"],
            "build_seconds": ready["build_seconds"],
        }


def part_catchup(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"load_before": load()}
    author = deterministic_identity("catch-up author")
    with Cluster("catchup", workdir=workdir) as cluster:
        progress(f"catch-up: building a {args.entries:,}-entry feed in A's store (not counted) ...")
        template_home, _ = cluster.create_home("template", author)
        post_texts = texts(args.entries, seed=1)
        started = TIMER()
        with Store(template_home.store_file) as store:
            first_ts = int(time.time() * 1000) - args.entries - 60_000
            raws = build_posts(store, author, post_texts, first_ts)
            assert store.latest_seq(author.public_key) == args.entries
        result["build_seconds"] = TIMER() - started
        sizes = [len(r) for r in raws]
        result["entry_bytes"] = {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)}
        result["feed_megabytes"] = sum(sizes) / 1e6

        hypercore: HypercoreSide | None = None
        reason = "--no-hypercore"
        if args.hypercore:
            hypercore = HypercoreSide(raws, cluster.root, args)
            reason = hypercore.install() or ""
            if reason:
                progress(f"hypercore: not run: {reason}")
                hypercore = None

        sides = ["p2pblog", "hypercore", "raw_verify"] if hypercore is not None else ["p2pblog", "raw_verify"]
        rounds: list[dict[str, Any]] = []
        for rep in range(args.rounds):
            # Every side once per round, back to back, in an order rotated each
            # round; the ratios of a round use that round's measurements only.
            row: dict[str, Any] = {"round": rep + 1, "order": rotated(sides, rep), "load_before": load()}
            for side in row["order"]:
                if side == "hypercore" and hypercore is not None:
                    progress(f"hypercore: {len(raws):,} blocks, round {rep + 1} of {args.rounds} ...")
                    row["hypercore"] = hypercore.run(rep)
                    progress(f"  {row['hypercore']['rate']:,.0f} blocks/s")
                elif side == "raw_verify":
                    progress(
                        f"catch-up: raw crypto_sign_open of the {len(raws):,} entries, round {rep + 1} ..."
                    )
                    row["raw_verify"] = raw_verify(raws, author.public_key)
                    progress(f"  {row['raw_verify']['rate']:,.0f} entries/s")
                elif side == "p2pblog":
                    progress(f"catch-up: p2pblog A -> B, round {rep + 1} of {args.rounds} ...")
                    run = catchup_run(cluster, template_home.store_file, author, rep, args, profile=False)
                    progress(
                        f"  {'done' if run['finished'] else 'NOT FINISHED'}: seq {run['latest_seq']:,} "
                        f"in {run['seconds']:.2f} s ({run['rate']:,.0f} entries/s)"
                    )
                    row["p2pblog"] = run
            row["load_after"] = load()
            row["ratios"] = round_ratios(row)
            progress(
                f"  round {rep + 1}: "
                + "; ".join(f"{k} {v['wall']:.3f} (CPU {v['cpu']:.3f})" for k, v in row["ratios"].items())
            )
            rounds.append(row)
        result["rounds"] = rounds
        result["summary"] = {
            key: {
                "wall": ratio_summary([r["ratios"][key]["wall"] for r in rounds], target),
                "cpu": ratio_summary([r["ratios"][key]["cpu"] for r in rounds]),
            }
            for key, target in (
                ("over_raw_verify", TARGET_CATCHUP_OVER_VERIFY),
                ("over_hypercore", TARGET_CATCHUP_OVER_HYPERCORE),
            )
            if all(key in r["ratios"] for r in rounds)
        }
        result["rates"] = {
            side: median([r[side]["rate"] for r in rounds])
            for side in sides
            if all(side in r for r in rounds)
        }
        if args.profile:
            progress("catch-up: profiled run (A and B under cProfile; not timed) ...")
            profiled = catchup_run(cluster, template_home.store_file, author, args.rounds, args, profile=True)
            result["profiled_run"] = {k: v for k, v in profiled.items() if k != "profiles"}
            result["profiles"] = profiled.get("profiles", {})

        if hypercore is None:
            result["hypercore"] = {"status": "not run", "reason": reason}
        else:
            ok = [r["hypercore"] for r in rounds if r["hypercore"]["finished"]]
            result["hypercore"] = {
                "status": "run" if ok else "failed",
                "reason": "" if ok else f"no run finished: {[r['hypercore'] for r in rounds]}",
                **hypercore.info,
            }
    result["load_after"] = load()
    return result


def round_ratios(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A round's ratios of p2pblog's catch-up to each baseline, on wall time and on CPU time.

    Wall: entries/s over entries/s (0 when our run did not finish).  CPU: the
    baseline's CPU seconds over ours for the same entries.  Ours is B's
    (the follower's) utime + stime from /proc/PID/stat, all its threads,
    from just before the ``follow`` command to the last entry stored; the
    raw verify's is this process's ``process_time`` over the pass;
    hypercore's is the fetching process's ``process.cpuUsage()`` (user +
    system, all threads), from just before its TCP connect to the last block.
    """
    ours = row["p2pblog"]
    nan = float("nan")
    cpu_b = ours["cpu_seconds_b"] if ours["finished"] and ours["cpu_seconds_b"] > 0 else nan
    verify = row["raw_verify"]
    ratios = {
        "over_raw_verify": {"wall": ours["rate"] / verify["rate"], "cpu": verify["cpu_seconds"] / cpu_b},
    }
    hyper = row.get("hypercore")
    if hyper is not None:
        if hyper["finished"]:
            wall = ours["rate"] / hyper["rate"]
            cpu = hyper["cpu_seconds_fetch"] / cpu_b
        else:  # the baseline failed: the round says nothing about the ratio
            wall = cpu = nan
        ratios["over_hypercore"] = {"wall": wall, "cpu": cpu}
    return ratios


# --- part 2: live delivery ------------------------------------------------------------------


def part_live(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"load_before": load()}
    rng = random.Random(args.seed)
    with Cluster("live", workdir=workdir) as cluster:
        cluster.create_home("author", deterministic_identity("live author"))
        author = cluster.start("author")
        followers = []
        progress(f"live: starting {args.followers} followers ...")
        for i in range(args.followers):
            name = f"f{i:02d}"
            cluster.create_home(name)
            followers.append(cluster.start(name, bootstrap=[author]))
        wait_joined(cluster, followers)
        time.sleep(args.settle)
        setup = TIMER()
        for follower in followers:
            follower.call("follow", {"handle": author.handle})

        def connected_to_author(follower: NodeProcess) -> bool:
            return author.handle in (quiet_calls(follower.peer_handles) or set())

        for follower in followers:
            if not wait_until(partial(connected_to_author, follower), args.connect_timeout, interval=0.2):
                raise RuntimeError(
                    f"{follower.name} did not connect to the author: {cluster.tail(follower.name)}"
                )
        result["connect_seconds"] = TIMER() - setup
        topology = {f.name: sorted(quiet_calls(f.peer_handles) or set()) for f in followers}
        result["followers_connected_to_author"] = sum(author.handle in peers for peers in topology.values())
        result["follower_peer_counts"] = [len(p) for p in topology.values()]

        progress(f"live: {args.warmup} warm-up posts ...")
        for i in range(args.warmup):
            author.call("post", {"text": f"warm-up post {i}"})
            time.sleep(0.1)

        def warmed_up(follower: NodeProcess) -> bool:
            return follower.latest_seq(author.public_key) >= int(args.warmup)

        if not all(wait_until(partial(warmed_up, f), 20, interval=0.05) for f in followers):
            raise RuntimeError("the warm-up posts did not reach every follower")
        time.sleep(1.0)

        progress(
            f"live: {args.posts} posts, {args.gap_min * 1000:.0f}-{args.gap_max * 1000:.0f} ms apart ..."
        )
        sends: list[tuple[int, float, float]] = []
        nodes = [author, *followers]
        cpu0, cpu_t0 = cpu_of(nodes), TIMER()
        next_at = TIMER() + 0.2
        for i in range(args.posts):
            delay = next_at - TIMER()
            if delay > 0:
                time.sleep(delay)
            text = f"live post {i}: " + texts(1, seed=1000 + i)[0]
            sent = TIMER()
            reply = author.call("post", {"text": text}, timeout=10)
            returned = TIMER()
            sends.append((int(reply["seq"]), sent, returned))
            next_at = sent + rng.uniform(args.gap_min, args.gap_max)
        last_seq = sends[-1][0]

        def all_arrived() -> bool:
            return all(
                any(x.seq >= last_seq for x in cluster.pump.arrivals[f.name] if x.feed == author.fingerprint)
                for f in followers
            )

        wait_until(all_arrived, args.arrival_timeout, interval=0.05)
        cpu1, cpu_t1 = cpu_of(nodes), TIMER()
        stored = {f.name: f.latest_seq(author.public_key) for f in followers}

    latencies: list[float] = []
    per_follower: dict[str, dict[str, Any]] = {}
    missing = 0
    relayed = 0
    for f in followers:
        arrivals = sorted(
            (x for x in cluster.pump.arrivals[f.name] if x.feed == author.fingerprint), key=lambda x: x.at
        )
        relayed += sum(1 for x in arrivals if x.peer != author.fingerprint)
        mine = []
        for seq, sent, _ in sends:
            arrival = next((x.at for x in arrivals if x.seq >= seq and x.at >= sent), None)
            if arrival is None:
                missing += 1
            else:
                mine.append(arrival - sent)
        latencies += mine
        per_follower[f.name] = {
            "p50_ms": quantile(mine, 0.5) * 1000,
            "p99_ms": quantile(mine, 0.99) * 1000,
            "max_ms": max(mine, default=float("nan")) * 1000,
            "lines": len(arrivals),
            "stored_seq": stored[f.name],
        }
    post_calls = [returned - sent for _, sent, returned in sends]
    wall = cpu_t1 - cpu_t0
    result.update(
        {
            "followers": args.followers,
            "posts": args.posts,
            "pairs": len(sends) * len(followers),
            "missing": missing,
            "relayed_lines": relayed,
            "last_seq": last_seq,
            "all_stored": all(s >= last_seq for s in stored.values()),
            "p50_ms": quantile(latencies, 0.5) * 1000,
            "p90_ms": quantile(latencies, 0.9) * 1000,
            "p99_ms": quantile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=float("nan")) * 1000,
            "min_ms": min(latencies, default=float("nan")) * 1000,
            "post_call_p50_ms": quantile(post_calls, 0.5) * 1000,
            "post_call_p99_ms": quantile(post_calls, 0.99) * 1000,
            "phase_seconds": wall,
            "cpu_author_share": (cpu1["author"] - cpu0["author"]) / wall,
            "cpu_followers_share": sum(cpu1[f.name] - cpu0[f.name] for f in followers) / wall,
            "per_follower": per_follower,
            "target_met": quantile(latencies, 0.5) < TARGET_LIVE_P50 and missing == 0,
            "load_after": load(),
        }
    )
    return result


# --- part 3: footprint ----------------------------------------------------------------------


def part_footprint(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"load_before": load()}
    feeds = [deterministic_identity(f"footprint feed {i}") for i in range(args.feeds)]
    with Cluster("footprint", workdir=workdir) as cluster:
        progress(
            f"footprint: building {args.feeds} feeds of {args.feed_entries:,} entries "
            f"in {args.peers} peer stores (not counted) ..."
        )
        started = TIMER()
        first_ts = int(time.time() * 1000) - args.feed_entries - 60_000
        held: dict[str, list[int]] = {}
        for p in range(args.peers):
            name = f"p{p:02d}"
            home, identity = cluster.create_home(name)
            mine = [i for i in range(args.feeds) if i % args.peers == p]
            held[name] = mine
            with Store(home.store_file) as store:
                with store.transaction():
                    for i in mine:
                        store.append(identity, FOLLOW, {"feed": feeds[i].public_key}, first_ts)
                for i in mine:
                    build_posts(store, feeds[i], texts(args.feed_entries, seed=100 + i), first_ts)
        result["build_seconds"] = TIMER() - started
        cluster.create_home("follower")

        progress(f"footprint: starting {args.peers} peers and the follower ...")
        first = cluster.start("p00")
        peers = [first] + [cluster.start(f"p{p:02d}", bootstrap=[first]) for p in range(1, args.peers)]
        follower = cluster.start("follower", bootstrap=[first])
        wait_joined(cluster, [*peers[1:], follower])
        time.sleep(args.settle)
        result["rss_kib_fresh"] = follower.rss_kib()

        progress(f"footprint: the follower follows {args.feeds} feeds ...")
        setup = TIMER()
        for feed in feeds:
            follower.call("follow", {"handle": feed.handle})

        def caught_up() -> bool:
            return all(follower.latest_seq(f.public_key) >= args.feed_entries for f in feeds)

        def connected() -> bool:
            handles = quiet_calls(follower.peer_handles) or set()
            return all(p.handle in handles for p in peers)

        if not wait_until(caught_up, args.connect_timeout, interval=0.2):
            have = sum(follower.latest_seq(f.public_key) >= args.feed_entries for f in feeds)
            raise RuntimeError(f"the follower holds {have} of {args.feeds} feeds: {cluster.tail('follower')}")
        result["catch_up_seconds"] = TIMER() - setup
        if not wait_until(connected, args.connect_timeout, interval=0.5):
            raise RuntimeError(f"the follower is not connected to all peers: {cluster.tail('follower')}")
        result["connected_seconds"] = TIMER() - setup
        follower.close_reader()  # our own read connection lives in this process, but keep F's view clean

        progress(
            f"footprint: settling {args.settle_idle:.0f} s, then measuring {args.idle_seconds:.0f} s idle ..."
        )
        time.sleep(args.settle_idle)
        pid = follower.pid
        lines0 = len(cluster.pump.lines["follower"])
        cpu0, (ns0, _), t0 = proc_cpu_seconds(pid), proc_tasks_schedstat(pid), TIMER()
        peer_cpu0 = cpu_of(peers)
        rss_samples = []
        end = t0 + args.idle_seconds
        while TIMER() < end:
            rss_samples.append(proc_status_kib(pid, "VmRSS"))
            time.sleep(min(1.0, max(0.0, end - TIMER())))
        cpu1, (ns1, _), t1 = proc_cpu_seconds(pid), proc_tasks_schedstat(pid), TIMER()
        peer_cpu1 = cpu_of(peers)
        window = t1 - t0
        status = follower.call("status")
        peer_rss = sorted(p.rss_kib() for p in peers)
        result.update(
            {
                "feeds": args.feeds,
                "peers": args.peers,
                "feed_entries": args.feed_entries,
                "peers_connected": len(status["peers"]),
                "connections": status["connections"],
                "feeds_held": sum(
                    1 for f in status["feeds"] if not f["own"] and f["seq"] >= args.feed_entries
                ),
                "rss_kib": rss_samples[-1],
                "rss_kib_max_in_window": max(rss_samples),
                "rss_kib_min_in_window": min(rss_samples),
                "hwm_kib": proc_status_kib(pid, "VmHWM"),
                "threads": proc_threads(pid),
                "idle_window_seconds": window,
                "idle_cpu_seconds_stat": cpu1 - cpu0,
                "idle_cpu_share_stat": (cpu1 - cpu0) / window,
                "idle_cpu_share_schedstat": (ns1 - ns0) / 1e9 / window if ns0 >= 0 else None,
                "log_lines_in_window": len(cluster.pump.lines["follower"]) - lines0,
                "peer_idle_cpu_share_mean": sum(peer_cpu1[p.name] - peer_cpu0[p.name] for p in peers)
                / len(peers)
                / window,
                "peer_rss_kib_median": peer_rss[len(peer_rss) // 2],
                "counters": status["counters"],
                "dht_contacts": status["contacts"],
            }
        )
        result["rss_target_met"] = result["rss_kib"] < TARGET_RSS_KIB
        cpu_share = result["idle_cpu_share_schedstat"] or result["idle_cpu_share_stat"]
        result["cpu_target_met"] = cpu_share < TARGET_IDLE_CPU
        result["held"] = {k: [feeds[i].handle for i in v] for k, v in held.items()}
    result["load_after"] = load()
    return result


# --- report -----------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def catchup_markdown(c: dict[str, Any], entries: int, targets: list[tuple[str, str, bool]]) -> list[str]:
    size = c["entry_bytes"]
    h = c["hypercore"]
    hyper_name = h.get("package", HYPERCORE_PACKAGE)
    lines = [
        f"### Catch-up of a {entries:,}-entry feed, A -> B over Noise TCP on loopback",
        "",
        f"Load before/after: {c['load_before']} / {c['load_after']}. Feed built offline in "
        f"{c['build_seconds']:.1f} s (not counted); entries {size['min']}..{size['max']} bytes "
        f"(mean {size['mean']:.0f}). {len(c['rounds'])} rounds; in each, every side once, back to back, "
        f"in an order rotated each round; ratios per round, then the median.",
        "",
        "CPU seconds counted: p2pblog = B, the follower process and its verifier processes "
        "(utime + stime, all threads, /proc/PID/stat); "
        "hypercore = the fetching node process (process.cpuUsage, all threads); "
        "raw verify = this process's process_time (one thread verifying).",
        "",
        f"| round | order | load | p2pblog entries/s (wall; B CPU s) | {hyper_name} blocks/s (wall; "
        "fetch CPU s) | raw verify entries/s (wall; CPU s) | p2pblog / raw verify: wall (CPU) "
        "| p2pblog / hypercore: wall (CPU) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    for row in c["rounds"]:
        ours, verify, hyper = row["p2pblog"], row["raw_verify"], row.get("hypercore")
        ratios = row["ratios"]
        ours_text = (
            f"{fmt_rate(ours['rate'])} ({ours['seconds']:.2f} s; {ours['cpu_seconds_b']:.2f})"
            if ours["finished"]
            else f"NOT FINISHED (seq {ours['latest_seq']:,})"
        )
        hyper_text = "not run"
        if hyper is not None:
            hyper_text = (
                f"{fmt_rate(hyper['rate'])} ({hyper['seconds']:.2f} s; {hyper['cpu_seconds_fetch']:.2f})"
                if hyper["finished"]
                else f"FAILED (exit {hyper.get('exit')})"
            )
        over_h = ratios.get("over_hypercore", {"wall": nan, "cpu": nan})
        lines.append(
            f"| {row['round']} | {', '.join(row['order'])} | "
            f"{row['load_before'][0]}→{row['load_after'][0]} | "
            f"{ours_text} | {hyper_text} | {fmt_rate(verify['rate'])} ({verify['seconds']:.2f} s; "
            f"{verify['cpu_seconds']:.2f}) | {ratios['over_raw_verify']['wall']:.3f} "
            f"({ratios['over_raw_verify']['cpu']:.3f}) | {over_h['wall']:.3f} ({over_h['cpu']:.3f}) |"
        )
    lines += ["", "| ratio (median over rounds) | wall | wall min..max | CPU | target (wall) | status |"]
    lines += ["|---|---:|---:|---:|---:|---|"]
    for key, label in (
        ("over_raw_verify", "catch-up / one core's raw verify"),
        ("over_hypercore", "p2pblog / hypercore"),
    ):
        s = c["summary"].get(key)
        if s is None:
            continue
        wall = s["wall"]
        lines.append(
            f"| {label} | **{wall['median']:.3f}** | {wall['min']:.3f}..{wall['max']:.3f} | "
            f"{s['cpu']['median']:.3f} | >= {wall['target']} | {status(wall['met'])} |"
        )
        targets.append((f"{label} >= {wall['target']} (median)", f"{wall['median']:.3f}", wall["met"]))
    if h.get("status") != "run":
        lines.append(f"\nhypercore: **not run**: {h.get('reason')}")
        targets.append((f"p2pblog / hypercore >= {TARGET_CATCHUP_OVER_HYPERCORE}", "not run", False))
    else:
        lines.append(f"\n{hyper_name} under node {h.get('node', '?')} (npm {h.get('npm', '?')}).")
    split_lines = []
    for row in c["rounds"]:
        r = row["p2pblog"]
        split = r.get("time_split_b") or {}
        first = r["first_batch_seconds"]
        split_lines.append(
            f"round {row['round']}: first batch stored at "
            f"{first * 1000 if first is not None else nan:.0f} ms; B's main thread on a CPU "
            f"{split.get('run', nan):.1f} s, waiting for one {split.get('runqueue', nan):.1f} s, "
            f"blocked {split.get('blocked', nan):.1f} s; A's CPU {r['cpu_seconds_a']:.1f} s"
        )
    lines += ["", "Where B's time went (schedstat of its main thread): " + "; ".join(split_lines) + ".", ""]
    return lines


def markdown(result: dict[str, Any], context: RunContext) -> str:
    m = context.facts
    lines = [f"## Gossip (issue 4) — {m['cpu']}, {m['cores']} cores", "", *context.markdown(), ""]
    targets: list[tuple[str, str, bool]] = []
    c = result.get("catchup")
    if c:
        lines += catchup_markdown(c, result["parameters"]["entries"], targets)
    live = result.get("live")
    if live:
        lines += [
            f"### Live delivery: {live['followers']} followers, {live['posts']} posts",
            "",
            f"Load before/after: {live['load_before']} / {live['load_after']}. "
            f"{live['followers_connected_to_author']}/{live['followers']} followers connected to the author "
            f"({live['connect_seconds']:.1f} s after the follows).",
            "",
            "| measurement | value |",
            "|---|---:|",
            f"| (post, follower) pairs | {live['pairs']:,} ({live['missing']} missing) |",
            f"| latency p50 | {live['p50_ms']:.1f} ms |",
            f"| latency p90 | {live['p90_ms']:.1f} ms |",
            f"| latency p99 | {live['p99_ms']:.1f} ms |",
            f"| latency min / max | {live['min_ms']:.1f} / {live['max_ms']:.1f} ms |",
            f"| `post` control call, p50 / p99 | {live['post_call_p50_ms']:.1f} / "
            f"{live['post_call_p99_ms']:.1f} ms |",
            f"| arrivals relayed by another follower | {live['relayed_lines']} |",
            f"| CPU during the posts: author / all followers | {live['cpu_author_share']:.1%} / "
            f"{live['cpu_followers_share']:.1%} of a core |",
            "",
        ]
        targets.append(
            (f"live p50 < {TARGET_LIVE_P50 * 1000:.0f} ms", f"{live['p50_ms']:.1f} ms", live["target_met"])
        )
    fp = result.get("footprint")
    if fp:
        cpu_share = (
            fp["idle_cpu_share_schedstat"]
            if fp["idle_cpu_share_schedstat"] is not None
            else fp["idle_cpu_share_stat"]
        )
        lines += [
            f"### Footprint: one node following {fp['feeds']} feeds, connected to {fp['peers']} peers",
            "",
            f"Load before/after: {fp['load_before']} / {fp['load_after']}. "
            f"{fp['feed_entries']:,} entries per feed; "
            f"all {fp['feeds_held']} feeds held after {fp['catch_up_seconds']:.1f} s, "
            f"{fp['peers_connected']} peers connected.",
            "",
            "| measurement | value |",
            "|---|---:|",
            f"| VmRSS, fresh node (before following) | {fp['rss_kib_fresh'] / 1024:.1f} MiB |",
            f"| VmRSS after settling (window min..max) | {fp['rss_kib'] / 1024:.1f} MiB "
            f"({fp['rss_kib_min_in_window'] / 1024:.1f}..{fp['rss_kib_max_in_window'] / 1024:.1f}) |",
            f"| VmHWM (peak, includes the catch-up) | {fp['hwm_kib'] / 1024:.1f} MiB |",
            f"| idle CPU over {fp['idle_window_seconds']:.0f} s, schedstat (all threads) | "
            f"{(fp['idle_cpu_share_schedstat'] or 0):.3%} of a core |",
            f"| idle CPU, utime+stime | {fp['idle_cpu_seconds_stat']:.2f} s = "
            f"{fp['idle_cpu_share_stat']:.3%} |",
            f"| peers: mean idle CPU, median VmRSS | {fp['peer_idle_cpu_share_mean']:.3%}, "
            f"{fp['peer_rss_kib_median'] / 1024:.1f} MiB |",
            "",
        ]
        rss = f"{fp['rss_kib'] * 1024 / 1e6:.1f} MB ({fp['rss_kib'] / 1024:.1f} MiB)"
        targets.append(("follower VmRSS < 80 MB", rss, fp["rss_target_met"]))
        targets.append(("follower idle CPU < 1% of a core", f"{cpu_share:.3%}", fp["cpu_target_met"]))
    lines += ["| target | value | status |", "|---|---:|---|"]
    for name, value, met in targets:
        lines.append(f"| {name} | {value} | {'met' if met else '**MISSED**'} |")
    result["targets"] = [{"name": n, "value": v, "met": m} for n, v, m in targets]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--part", action="append", choices=PARTS, help="a part to run (repeatable; default all)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds after the DHT joins, before following"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=90.0, help="longest wait for follows to connect"
    )
    group = parser.add_argument_group("catch-up")
    group.add_argument("--entries", type=int, default=100_000)
    group.add_argument(
        "--rounds",
        "--catchup-repeat",
        dest="rounds",
        type=int,
        default=5,
        help="interleaved rounds (p2pblog, hypercore, raw verify); the median ratio is reported",
    )
    group.add_argument("--poll", type=float, default=0.05, help="seconds between store polls")
    group.add_argument("--catchup-timeout", type=float, default=300.0)
    group.add_argument("--no-hypercore", dest="hypercore", action="store_false")
    group.add_argument("--npm-timeout", type=float, default=300.0)
    group.add_argument("--profile", action="store_true", help="add a cProfile run of the catch-up")
    group = parser.add_argument_group("live delivery")
    group.add_argument("--followers", type=int, default=10)
    group.add_argument("--posts", type=int, default=200)
    group.add_argument("--warmup", type=int, default=5)
    group.add_argument("--gap-min", type=float, default=0.05)
    group.add_argument("--gap-max", type=float, default=0.10)
    group.add_argument("--arrival-timeout", type=float, default=15.0)
    group = parser.add_argument_group("footprint")
    group.add_argument("--feeds", type=int, default=20)
    group.add_argument("--peers", type=int, default=10)
    group.add_argument("--feed-entries", type=int, default=1000)
    group.add_argument("--settle-idle", type=float, default=10.0)
    group.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    parts = args.part or list(PARTS)
    if min(args.entries, args.rounds, args.followers, args.posts) < 1:
        parser.error("counts must be positive")
    if args.peers < 1 or args.feeds < args.peers or not 0 < args.gap_min <= args.gap_max:
        parser.error("need --feeds >= --peers >= 1 and 0 < --gap-min <= --gap-max")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.gettempdir())
    context = RunContext.begin("benchmarks/bench_gossip.py", argv, PACKAGES, workdir)
    result: dict[str, Any] = {
        "benchmark": "gossip: catch-up, live delivery, footprint (issue 4)",
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    started = TIMER()
    runners = {"catchup": part_catchup, "live": part_live, "footprint": part_footprint}
    with signals_as_exit():
        for part in parts:
            progress(f"== {part} (load average {load()}) ==")
            try:
                result[part] = runners[part](args, workdir)
            except (RuntimeError, TimeoutError, OSError) as exc:
                progress(f"{part} FAILED: {exc}")
                result.setdefault("failures", {})[part] = str(exc)
    context.end()
    result.update(context.as_json())
    result["wall_seconds"] = TIMER() - started
    report = markdown(result, context)
    profiles = result.get("catchup", {}).pop("profiles", {})
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(report)
    print()
    for target in result["targets"]:
        if not target["met"]:
            print(f"MISSED: {target['name']} ({target['value']})")
    for part, error in result.get("failures", {}).items():
        print(f"FAILED: {part}: {error}")
    print(f"Wall time {result['wall_seconds']:.0f} s; JSON written to {args.out}")
    for name, text in profiles.items():
        print(f"\n## cProfile of {name} during the catch-up\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
