"""What a node keeps under a bounded hostile load from one host (issue "Survive strangers").

    python benchmarks/bench_hostile.py [--rounds 2] [--duration 60] [--json OUT]

Each run starts real ``p2pblog run`` processes on 127.0.0.1: a seed, an
author, and the *victim* (which follows the author).  In the ``attack`` runs
`hostile_load.py` (its own process, so its CPU is not the victim's; one
host: every socket bound to 127.66.0.1, the honest nodes are on 127.0.0.1,
another network: a network that misbehaves is banned as a whole) attacks
the victim for ``--duration`` seconds with every attack of the issue at once:
DHT provider/record flooding, refreshes, table poisoning and amplification
probes from 64 rotating source ports, 150 idle gossip connections, fresh keys
naming 65,536 feeds each in CLOCK frames, and 1,100 idle control connections.
The ``quiet`` runs do the same measurements without the attacker.  Runs are
interleaved (quiet, attack, attack, quiet, ...), and the report gives each
figure's median over the rounds, side by side, with the targets:

* the victim's RSS (peak of 1 s samples) under 150 MB;
* ``status`` answering in under 1 s (worst of the samples taken every 2 s);
* an honest follower's handshake succeeding: a new node started halfway
  through follows the victim and must receive the victim's new post (time
  from ``follow`` to the post in its store);
* an honest lookup succeeding, halfway through: the victim resolves the
  author's peer record (``lookup``; in a network this small every node holds
  every record, so this shows the victim's own DHT still works), and an
  honest host (127.0.0.1, a fresh socket) asks the victim for the victim's
  own peer record with FIND_VALUE, answering the victim's verification
  ping as any node does: answered within `PROBE_TIMEOUT` seconds, up to
  `PROBE_TRIES` tries (the victim still serves honest lookups).

The victim's CPU seconds over the run and the load average are reported
beside them; the attacker's own counters (what it sent, how many of its
connections the victim closed, the amplification it saw) are kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gossip_bench_nodes import Cluster, quiet_calls, signals_as_exit, wait_until  # noqa: E402

from dht import wire  # noqa: E402
from identity.records import peer_key  # noqa: E402
from p2pblog import control  # noqa: E402

TARGET_RSS_MB = 150.0
TARGET_STATUS_S = 1.0
#: Seconds an honest follower / lookup may take before it counts as failed.
HONEST_TIMEOUT = 20.0
STATUS_EVERY = 2.0
PROBE_TIMEOUT = 2.0
PROBE_TRIES = 3
STATUS_TIMEOUT = 10.0


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def probe_find_value(dht: tuple[str, int], key: bytes) -> float | None:
    """Seconds until the node at dht answers FIND_VALUE(key) with a value; None if it never does."""
    rng = os.urandom
    node_id = rng(20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(PROBE_TIMEOUT)
        t0 = time.perf_counter()
        for _ in range(PROBE_TRIES):
            msg_id = rng(wire.MSG_ID_BYTES)
            s.sendto(wire.encode_request(wire.FindValue(msg_id, node_id, key)), ("127.0.0.1", dht[1]))
            deadline = time.monotonic() + PROBE_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    break
                try:
                    message = wire.decode_datagram(data)
                except wire.WireError:
                    continue
                if isinstance(message, wire.Ping):  # the node verifies us, as any honest node answers
                    s.sendto(wire.ping_response(message.msg_id, node_id), ("127.0.0.1", dht[1]))
                    continue
                if isinstance(message, wire.Response) and message.msg_id == msg_id:
                    found = wire.parse_find_value_response(message.body)
                    if isinstance(found, bytes):
                        return time.perf_counter() - t0
                    break
    return None


def one_run(mode: str, duration: float, rate: float, seed: int, workdir: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode, "load_before": [round(x, 2) for x in os.getloadavg()]}
    with Cluster(f"hostile-{mode}", workdir=workdir) as cluster:
        for name in ("seed", "author", "victim", "follower"):
            cluster.create_home(name)
        seed_node = cluster.start("seed")
        author = cluster.start("author", bootstrap=[seed_node])
        victim = cluster.start("victim", bootstrap=[seed_node])
        author.call("post", {"text": "the author's first post"})
        victim.call("follow", {"handle": author.handle})
        time.sleep(3.0)  # joined, records published
        state = control.read_state(victim.home)
        attacker = None
        stats_path = cluster.root / "attacker.json"
        cpu0 = victim.cpu_seconds()
        start = time.monotonic()
        if mode == "attack":
            attacker = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "hostile_load.py"),
                    "--dht",
                    f"127.0.0.1:{victim.dht[1]}",
                    "--gossip",
                    f"127.0.0.1:{victim.gossip[1]}",
                    "--victim-key",
                    victim.public_key.hex(),
                    "--control",
                    f"127.0.0.1:{state.control[1]}",
                    "--duration",
                    str(duration),
                    "--rate",
                    str(rate),
                    "--seed",
                    str(seed),
                    "--stats",
                    str(stats_path),
                ],
                cwd=HERE.parent,
            )
        rss: list[int] = []
        status_s: list[float] = []
        status_failed = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal status_failed
            next_status = time.monotonic()
            while not stop.is_set():
                try:
                    rss.append(victim.rss_kib())
                except (OSError, RuntimeError):
                    return
                if time.monotonic() >= next_status:
                    next_status += STATUS_EVERY
                    t0 = time.perf_counter()
                    try:
                        control.call(victim.home, "status", {}, timeout=STATUS_TIMEOUT)
                        status_s.append(time.perf_counter() - t0)
                    except (control.ControlError, control.NodeNotRunning, OSError):
                        status_failed += 1
                        status_s.append(STATUS_TIMEOUT)
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            # Halfway: an honest follower arrives, and the victim looks someone up.
            time.sleep(duration / 2)
            follower = cluster.start("follower", bootstrap=[seed_node])
            t0 = time.monotonic()
            follower.call("follow", {"handle": victim.handle})
            victim.call("post", {"text": f"hello from the victim ({mode})"})
            got = wait_until(lambda: follower.latest_seq(victim.public_key) >= 2, HONEST_TIMEOUT, 0.1)
            result["follower_ok"] = got
            result["follower_s"] = round(time.monotonic() - t0, 2) if got else None
            t0 = time.monotonic()
            found = quiet_calls(
                lambda: victim.call("lookup", {"handle": author.handle}, timeout=HONEST_TIMEOUT)
            )
            result["lookup_ok"] = bool(found and found.get("found"))
            result["lookup_s"] = round(time.monotonic() - t0, 2) if result["lookup_ok"] else None
            probe_s = probe_find_value(victim.dht, peer_key(victim.public_key))
            result["probe_ok"] = probe_s is not None
            result["probe_s"] = round(probe_s, 3) if probe_s is not None else None
            remaining = duration - (time.monotonic() - start)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            stop.set()
            sampler.join(timeout=STATUS_TIMEOUT + 5)
            if attacker is not None:
                try:
                    attacker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    attacker.kill()
                    attacker.wait()
        result["alive"] = victim.process.poll() is None
        result["victim_cpu_s"] = round(victim.cpu_seconds() - cpu0, 2) if result["alive"] else None
        result["rss_peak_mb"] = round(max(rss) * 1024 / 1e6, 1) if rss else None
        result["status_worst_s"] = round(max(status_s), 3) if status_s else None
        result["status_median_s"] = round(statistics.median(status_s), 3) if status_s else None
        result["status_failed"] = status_failed
        if result["alive"]:
            counters = quiet_calls(lambda: victim.call("status", timeout=STATUS_TIMEOUT))
            if counters:
                result["victim_counters"] = {
                    k: v for k, v in sorted(counters.items()) if isinstance(v, (int, float, dict))
                }
        if stats_path.exists():
            result["attacker"] = json.loads(stats_path.read_text())
        if not result["alive"]:
            result["victim_log_tail"] = cluster.tail("victim", 30)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(mode: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["mode"] == mode and r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    def rate(mode: str, key: str) -> str:
        values = [bool(r.get(key)) for r in runs if r["mode"] == mode]
        return f"{sum(values)}/{len(values)}"

    table: dict[str, Any] = {}
    for key in (
        "rss_peak_mb",
        "status_worst_s",
        "status_median_s",
        "follower_s",
        "lookup_s",
        "probe_s",
        "victim_cpu_s",
    ):
        quiet, attack = med("quiet", key), med("attack", key)
        ratio = round(attack / quiet, 2) if quiet and attack is not None else None
        table[key] = {"quiet": quiet, "attack": attack, "ratio": ratio}
    for key in ("alive", "follower_ok", "lookup_ok", "probe_ok"):
        table[key] = {"quiet": rate("quiet", key), "attack": rate("attack", key)}
    attack_runs = [r for r in runs if r["mode"] == "attack"]
    table["targets_met"] = all(
        r.get("alive")
        and r.get("follower_ok")
        and r.get("lookup_ok")
        and r.get("probe_ok")
        and (r.get("rss_peak_mb") or 1e9) < TARGET_RSS_MB
        and (r.get("status_worst_s") or 1e9) < TARGET_STATUS_S
        for r in attack_runs
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (quiet, attack) runs, interleaved")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each run's attack window")
    parser.add_argument("--rate", type=float, default=1500.0, help="attacker's DHT datagrams per second")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    parser.add_argument("--workdir", type=Path, help="where the nodes' homes go (default: the temp dir)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10 or not 5 <= args.duration <= 600:
        parser.error("--rounds is 1..10, --duration 5..600")
    runs = []
    with signals_as_exit():
        for r in range(args.rounds):
            order = ("quiet", "attack") if r % 2 == 0 else ("attack", "quiet")
            for mode in order:
                progress(f"round {r + 1}/{args.rounds}: {mode} run ({args.duration:.0f} s)")
                run = one_run(mode, args.duration, args.rate, seed=r + 1, workdir=args.workdir)
                progress("  " + json.dumps({k: v for k, v in run.items() if not isinstance(v, (dict, str))}))
                runs.append(run)
    summary = summarize(runs)
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "summary": summary,
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    print(f"{'figure':<18}{'quiet':>10}{'attack':>10}{'ratio':>8}")
    for key, row in summary.items():
        if isinstance(row, dict):
            print(f"{key:<18}{row['quiet']!s:>10}{row['attack']!s:>10}{row.get('ratio', '')!s:>8}")
    print(f"targets met under attack: {summary['targets_met']}")
    if not summary["targets_met"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
