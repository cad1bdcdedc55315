"""Posts from behind a NAT: delivery time, direct and relayed, and the relay's overhead.

Run as root (it builds network namespaces: `tests/netns.py`)::

    python benchmarks/bench_nat.py [--posts 30] [--out benchmarks/results/nat.md]

Two set-ups, each with real ``p2pblog run`` processes:

* **direct**: a home node behind a NAT router (client mode) and a public
  follower; the post leaves over the connection the home node opened.
* **relayed**: two home nodes behind two routers and a public node that
  relays for both; the second home node follows the first through a circuit.

For each post the benchmark records the wall time just before the author's
node is asked to post (its control API, from a process in the author's
namespace) and the time the follower's store first holds it (a process in
the follower's namespace polls its control API every 5 ms); both read the one
kernel clock.  It reports p50, p90 and max of the delivery times, and, for
the relayed set-up, the bytes the relay forwarded per post (its
``gossip.relay.bytes`` counter) against the signed entry's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.bench_context import RunContext  # noqa: E402
from identity import decode_handle  # noqa: E402
from p2pblog.home import Home  # noqa: E402
from tests.netns import ROOT, ROUTABLE_NET, Host, LabNode, NatLab, require_lab, wait_for  # noqa: E402

#: Runs in the follower's namespace: for each seq read from stdin, wait until the feed
#: holds it and print the time it did.
WAITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from p2pblog import control
    home, handle = Path(sys.argv[1]), sys.argv[2]
    for line in sys.stdin:
        want = int(line)
        while True:
            feeds = control.call(home, "status")["feeds"]
            seq = next((f["seq"] for f in feeds if f["handle"] == handle), 0)
            if seq >= want:
                print(time.time(), flush=True)
                break
            time.sleep(0.005)
    """
)
#: Runs in the author's namespace: post the text on each stdin line; print when asked.
POSTER = textwrap.dedent(
    """
    import sys, time, json
    from pathlib import Path
    from p2pblog import control
    home = Path(sys.argv[1])
    for line in sys.stdin:
        started = time.time()
        result = control.call(home, "post", {"text": line.strip()})
        print(json.dumps([started, result["seq"]]), flush=True)
    """
)


def helper(host: Host, code: str, *args: str) -> subprocess.Popen[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return host.popen(
        sys.executable, "-c", code, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def measure(author: LabNode, follower: LabNode, posts: int) -> list[float]:
    """Delivery times (ms) of ``posts`` posts from author to follower."""
    poster = helper(author.host, POSTER, str(author.home))
    waiter = helper(follower.host, WAITER, str(follower.home), author.handle)
    assert poster.stdin and poster.stdout and waiter.stdin and waiter.stdout
    times = []
    try:
        for i in range(posts):
            poster.stdin.write(f"benchmark post {i} {time.time()}\n")
            poster.stdin.flush()
            started, seq = json.loads(poster.stdout.readline())
            waiter.stdin.write(f"{seq}\n")
            waiter.stdin.flush()
            arrived = float(waiter.stdout.readline())
            times.append((arrived - started) * 1000)
            time.sleep(0.05)
    finally:
        for proc in (poster, waiter):
            proc.kill()
            proc.wait()
    return times


def status(node: LabNode) -> dict[str, Any]:
    doc: dict[str, Any] = node.json("status")
    return doc


def seed(lab: NatLab, tmp: Path, port: int) -> tuple[Host, LabNode]:
    public = lab.add_public_host()
    node = lab.start_node(public, tmp / "public", "--no-port-mapping", "--advertise", public.addr, port=port)
    return public, node


def direct(lab: NatLab, tmp: Path, posts: int) -> list[float]:
    _, follower = seed(lab, tmp, 4800)
    home = lab.add_home_host(lab.add_router())
    author = lab.start_node(home, tmp / "home", "--no-port-mapping", "--bootstrap", follower.addr, port=4801)
    author.cli("follow", follower.handle)
    follower.cli("follow", author.handle)
    if not wait_for(lambda: status(author)["reachability"]["state"] == "unreachable", 60):
        raise SystemExit(f"the home node did not find it is unreachable: {status(author)['reachability']}")
    author.cli("post", "warm-up")
    wait_for(
        lambda: any(f["seq"] >= 1 for f in status(follower)["feeds"] if f["handle"] == author.handle), 30
    )
    return measure(author, follower, posts)


def relayed(lab: NatLab, tmp: Path, posts: int) -> tuple[list[float], float, int]:
    public, relay = seed(lab, tmp, 4900)
    homes = [lab.add_home_host(lab.add_router()) for _ in range(2)]
    a = lab.start_node(homes[0], tmp / "a", "--no-port-mapping", "--bootstrap", relay.addr, port=4901)
    b = lab.start_node(homes[1], tmp / "b", "--no-port-mapping", "--bootstrap", relay.addr, port=4902)
    for node in (a, b):
        node.cli("follow", relay.handle)
    for node in (a, b):
        if not wait_for(lambda n=node: status(n)["relay"]["via"] == [f"{public.addr}:4900"], 90):
            raise SystemExit(f"no relay reservation: {status(node)['relay']}")
    a.cli("post", "warm-up")
    b.cli("follow", a.handle)
    if not wait_for(lambda: any(f["seq"] >= 2 for f in status(b)["feeds"] if f["handle"] == a.handle), 120):
        raise SystemExit("the follower never reached the author through the relay")
    before = status(relay)["counters"].get("gossip.relay.bytes", 0)
    times = measure(a, b, posts)
    after = status(relay)["counters"].get("gossip.relay.bytes", 0)
    with Home(a.home).open_store() as store:  # the same files the node writes; reading is safe
        key = decode_handle(a.handle)
        latest = store.latest_seq(key)
        sizes = [len(e.raw) for e in store.feed_range(key, latest - posts + 1, latest)]
    return times, (after - before) / posts, round(statistics.mean(sizes))


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return f"| {name} | {len(times)} | {statistics.median(times):.1f} | {p90:.1f} | {max(times):.1f} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=30, help="posts timed per set-up")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "nat.md")
    args = parser.parse_args(argv)
    require_lab()
    context = RunContext.begin(__file__, argv, ["trio", "pynacl"])
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        with NatLab(public_net=ROUTABLE_NET) as lab:
            direct_times = direct(lab, tmp / "direct", args.posts)
        with NatLab(public_net=ROUTABLE_NET) as lab:
            relay_times, relay_bytes, entry_bytes = relayed(lab, tmp / "relayed", args.posts)
    context.end()
    lines = [
        "# Posts from behind a NAT (`benchmarks/bench_nat.py`)",
        "",
        *context.markdown(),
        "",
        "Time from the author's node being asked to post to the follower's store holding it (ms):",
        "",
        "| set-up | posts | p50 | p90 | max |",
        "|---|---:|---:|---:|---:|",
        summary("direct (home node in client mode -> public follower)", direct_times),
        summary("relayed (home -> public relay -> home)", relay_times),
        "",
        f"Relay overhead: the relay forwarded {relay_bytes:,.0f} bytes per post (both directions: the "
        f"pushed batch, the acknowledgement, frame and encryption overhead) for a post of about "
        f"{entry_bytes} bytes signed (the mean of the timed posts).",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
