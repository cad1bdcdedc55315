"""Web app: a post reaching a follower's open page, and the timeline page over 10,000 posts.

The web app issue's targets, measured on loopback with real ``p2pblog run``
processes and Debian's headless chromium (Playwright):

(a) **Live delivery**: the time from issuing a post on node A to the post
    being in node B's open timeline page (B follows A), measured *in the
    browser*: B's page runs a MutationObserver that records
    ``performance.timeOrigin + performance.now()`` when ``#p-<id>`` is
    inserted; the benchmark records ``time.time()`` just before it sends the
    post.  Both clocks are this machine's; their offset is measured (the
    probe with the shortest round trip, before and after) and taken out.
    Two ways to post, interleaved in rotated order each round: A's web API
    (``POST /post`` with the session's CSRF token, over a warm HTTP
    connection, as the compose box does) and A's control API (what
    ``p2pblog post`` sends, without the CLI's process start-up).  Target:
    p50 under 100 ms.
(b) **Timeline render**: ``GET /`` (the home timeline's first page, 50
    posts) of a node whose store holds 10,000 posts of 5 followed feeds,
    timed as the request round trip over a warm loopback connection (server
    time plus a loopback hop).  Interleaved with the same request to a node
    holding 100 posts, to show what the size costs.  Target: median under
    200 ms.

(c) search over 100,000 posts is ``benchmarks/bench_search.py``'s.

Results: ``benchmarks/results/web.md`` (``--out``); ``--quick`` is a smoke
run (a few rounds, 1,000 posts) for tests/test_bench_web.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_context import RunContext, load_average, rotated  # noqa: E402

from identity import Identity  # noqa: E402
from p2pblog.control import call  # noqa: E402
from p2pblog.entry import FOLLOW, POST, create_entry, post_body  # noqa: E402
from p2pblog.home import Home  # noqa: E402
from tests.browser import CHROMIUM_ARGS  # noqa: E402
from tests.nodes import NodeProcess, run, start_node  # noqa: E402

DEFAULT_OUT = HERE / "results" / "web.md"
LIVE_TARGET_MS = 100.0
RENDER_TARGET_MS = 200.0
FEEDS = 5
SMALL = 100
OBSERVER = """() => {
    window.__seen = {};
    new MutationObserver((records) => {
        const now = performance.timeOrigin + performance.now();
        for (const r of records) for (const n of r.addedNodes) {
            const id = n.id && n.id.startsWith("p-") ? n.id.slice(2) : null;
            if (id && !(id in window.__seen)) window.__seen[id] = now;
        }
    }).observe(document.getElementById("timeline"), {childList: true});
}"""
SEEN = """(id) => new Promise((resolve) => {
    const deadline = Date.now() + 10000;
    const check = () => {
        if (id in window.__seen) resolve(window.__seen[id]);
        else if (Date.now() > deadline) resolve(null);
        else setTimeout(check, 2);
    };
    check();
})"""


# --- the web app over HTTP ------------------------------------------------------------------


@dataclass
class Session:
    """A signed-in HTTP/1.1 connection to one node's web app (kept open: warm)."""

    conn: http.client.HTTPConnection
    origin: str
    cookie: str
    csrf: str

    @classmethod
    def open(cls, home: Path) -> Session:
        url = urlsplit(run(home, "open", "--print"))
        assert url.hostname and url.port, url
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"{url.path}?{url.query}")
        answer = conn.getresponse()
        answer.read()
        cookie = (answer.getheader("set-cookie") or "").split(";")[0]
        assert answer.status == 303 and cookie, (answer.status, cookie)
        session = cls(conn, f"{url.scheme}://{url.netloc}", cookie, "")
        status, body = session.get("/")
        assert status == 200, status
        found = re.search(rb'name="csrf-token" content="([0-9a-f]+)"', body)
        assert found, "no CSRF token on the page"
        session.csrf = found.group(1).decode()
        return session

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        answer = self.conn.getresponse()
        return answer.status, answer.read()

    def post(self, text: str) -> str:
        self.conn.request(
            "POST",
            "/post",
            body=urlencode({"text": text}),
            headers={
                "Cookie": self.cookie,
                "X-CSRF-Token": self.csrf,
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": self.origin,
            },
        )
        answer = self.conn.getresponse()
        body = answer.read()
        assert answer.status == 200, (answer.status, body[:200])
        return str(json.loads(body)["id"])


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method: a value that was measured."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p90": percentile(values, 0.9),
        "max": max(values),
        "min": min(values),
    }


# --- (a) live delivery ----------------------------------------------------------------------


def clock_offset(page: Any, probes: int = 7) -> tuple[float, float]:
    """The browser clock minus time.time(), in ms, from the probe with the shortest round
    trip; and that round trip's half (the offset's uncertainty)."""
    best: tuple[float, float] | None = None
    for _ in range(probes):
        before = time.time() * 1000
        browser = float(page.evaluate("performance.timeOrigin + performance.now()"))
        after = time.time() * 1000
        half = (after - before) / 2
        if best is None or half < best[1]:
            best = (browser - (before + half), half)
    assert best is not None
    return best


def measure_live(args: argparse.Namespace, workdir: Path, browser: Any) -> dict[str, Any]:
    a_home, b_home = workdir / "alice", workdir / "bob"
    run(a_home, "init", "--name", "alice")
    run(b_home, "init", "--name", "bob")
    nodes: list[NodeProcess] = []
    try:
        a = start_node(a_home, "--web", "127.0.0.1:0")
        nodes.append(a)
        b = start_node(b_home, "--web", "127.0.0.1:0", "--bootstrap", a.bootstrap)
        nodes.append(b)
        run(b_home, "follow", a.handle)
        session = Session.open(a_home)
        context = browser.new_context(viewport={"width": 1000, "height": 2000})
        page = context.new_page()
        page.goto(run(b_home, "open", "--print"))
        deadline = time.monotonic() + 15
        while page.evaluate("document.body.dataset.live") != "open":
            assert time.monotonic() < deadline, "B's page never opened its event stream"
            time.sleep(0.02)
        page.evaluate(OBSERVER)

        def by_web(text: str) -> str:
            return session.post(text)

        def by_control(text: str) -> str:
            return str(call(a_home, "post", {"text": text})["id"])

        sides: dict[str, Callable[[str], str]] = {"web API": by_web, "control API": by_control}
        # Warm up both paths (first connection, template compile, first gossip push).
        for name, post in sides.items():
            warm = post(f"warm-up via the {name}")
            assert page.evaluate(SEEN, warm) is not None, "B's page never showed the warm-up post"
        offset_before = clock_offset(page)
        latencies: dict[str, list[float]] = {name: [] for name in sides}
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            load = load_average()[0]
            row: dict[str, Any] = {"round": r + 1, "load": load, "order": []}
            for name in rotated(list(sides), r):
                time.sleep(args.gap)
                text = f"round {r + 1} via the {name}: {random.getrandbits(64):x}"
                sent = time.time() * 1000
                post_id = sides[name](text)
                seen = page.evaluate(SEEN, post_id)
                assert seen is not None, f"post {post_id} never reached B's page"
                ms = float(seen) - offset_before[0] - sent
                latencies[name].append(ms)
                row[name] = ms
                row["order"].append(name)
            rounds.append(row)
        offset_after = clock_offset(page)
        context.close()
        session.conn.close()
    finally:
        for node in nodes:
            node.stop()
    both = [ms for values in latencies.values() for ms in values]
    return {
        "sides": {name: summary(values) for name, values in latencies.items()},
        "both": summary(both),
        "rounds": rounds,
        "offset_before": offset_before,
        "offset_after": offset_after,
    }


# --- (b) timeline render --------------------------------------------------------------------


def build_home(home: Path, posts: int, feeds: int, seed: int) -> None:
    """A home whose owner follows feeds authors and holds posts of theirs (signed by them)."""
    run(home, "init", "--name", f"reader{posts}")
    rng = random.Random(seed)
    authors = [Identity.generate() for _ in range(feeds)]
    words = [
        "peer",
        "feed",
        "gossip",
        "trio",
        "sqlite",
        "kademlia",
        "follow",
        "timeline",
        "signed",
        "replica",
    ]
    now = int(time.time() * 1000)
    start = now - posts * 60_000
    with Home(home).open_store() as store:
        owner = Home(home).load_identity()
        for author in authors:
            store.append(owner, FOLLOW, {"feed": author.public_key}, now - 3_600_000)
        heads: dict[bytes, Any] = {}
        entries = []
        for i in range(posts):
            author = authors[i % feeds]
            prev = heads.get(author.public_key)
            text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
            entry = create_entry(
                author,
                seq=1 if prev is None else prev.seq + 1,
                prev=None if prev is None else prev.id,
                timestamp=start + i * 60_000 + rng.randint(0, 59_000),
                kind=POST,
                body=post_body(f"#{i} {text}"),
            )
            heads[author.public_key] = entry
            entries.append(entry)
        with store.transaction():
            report = store.ingest_entries(entries, now_ms=now)
        stored = sum(1 for _ in store.timeline(owner.public_key, limit=posts + 10))
        assert stored == posts, (stored, posts, report)


def measure_render(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sizes = [args.posts, SMALL] if args.posts != SMALL else [args.posts]
    nodes: list[NodeProcess] = []
    try:
        sessions: dict[int, Session] = {}
        build: dict[int, float] = {}
        for n in sizes:
            home = workdir / f"held-{n}"
            started = time.perf_counter()
            build_home(home, n, FEEDS, seed=n)
            build[n] = time.perf_counter() - started
            nodes.append(start_node(home, "--web", "127.0.0.1:0"))
            sessions[n] = Session.open(home)
        sizes_bytes: dict[int, int] = {}
        for n, session in sessions.items():  # warm: templates compiled, SQLite pages cached
            for _ in range(3):
                status, body = session.get("/")
                assert status == 200, status
            sizes_bytes[n] = len(body)
            assert body.count(b'class="post') >= min(n, 50), "the page lacks its 50 posts"
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(args.requests):
            for n in rotated(sizes, r):
                started = time.perf_counter()
                status, body = sessions[n].get("/")
                times[n].append((time.perf_counter() - started) * 1000)
                assert status == 200, status
        for session in sessions.values():
            session.conn.close()
    finally:
        for node in nodes:
            node.stop()
    return {
        "sizes": {n: {**summary(times[n]), "bytes": sizes_bytes[n], "build_s": build[n]} for n in sizes},
    }


# --- the report -----------------------------------------------------------------------------


def status(met: bool) -> str:
    return "met" if met else "**MISSED**"


def markdown(
    context: RunContext, live: dict[str, Any], render: dict[str, Any], args: argparse.Namespace
) -> str:
    cores = context.facts["cores"]
    out = [
        f"## Web app: live delivery to an open page, timeline render — {context.facts['cpu']}, {cores} cores",
        "",
        *context.markdown(),
        "Browser: Debian chromium (headless), driven by Playwright "
        f"{context.facts['packages'].get('playwright')}.",
        "",
        f"### (a) Post on A → visible in B's open page ({args.rounds} interleaved rounds)",
        "",
        "Measured in the browser (MutationObserver on B's timeline) against `time.time()` just before",
        "the post is sent; nodes A and B are `p2pblog run` processes on 127.0.0.1, B follows A.",
        f"Clock offset browser - Python: {live['offset_before'][0]:+.2f} ms "
        f"(±{live['offset_before'][1]:.2f}) "
        f"before, {live['offset_after'][0]:+.2f} ms (±{live['offset_after'][1]:.2f}) after; the 'before'",
        f"offset is taken out. {args.gap * 1000:.0f} ms pause before each post.",
        "",
        "| posted through | posts | p50 ms | p90 ms | max ms | min ms | target p50 | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [*live["sides"].items(), ("both", live["both"])]
    for name, s in rows:
        out.append(
            f"| {name} | {s['n']} | **{s['p50']:.1f}** | {s['p90']:.1f} | {s['max']:.1f} | {s['min']:.1f} "
            f"| < {LIVE_TARGET_MS:.0f} | {status(s['p50'] < LIVE_TARGET_MS)} |"
        )
    out += [
        "",
        "<details><summary>Per round (ms)</summary>",
        "",
        "| round | load | order | web API | control API |",
    ]
    out.append("|---:|---:|---|---:|---:|")
    for row in live["rounds"]:
        out.append(
            f"| {row['round']} | {row['load']} | {', '.join(row['order'])} "
            f"| {row['web API']:.1f} | {row['control API']:.1f} |"
        )
    out += ["", "</details>", ""]
    out += [
        f"### (b) `GET /` with the store holding N posts ({args.requests} interleaved requests per size)",
        "",
        f"Posts of {FEEDS} followed feeds, signed by their authors and ingested; the page is the first 50.",
        "Request round trip on a warm keep-alive connection over loopback (server time + one hop).",
        "",
        "| posts held | requests | median ms | p90 ms | max ms | min ms | page bytes | target median "
        "| status |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, s in render["sizes"].items():
        out.append(
            f"| {n:,} | {s['n']} | **{s['p50']:.1f}** | {s['p90']:.1f} | {s['max']:.1f} | {s['min']:.1f} "
            f"| {s['bytes']:,} | < {RENDER_TARGET_MS:.0f} | {status(s['p50'] < RENDER_TARGET_MS)} |"
        )
    out += ["", "(c) search over 100,000 posts: `benchmarks/bench_search.py`.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of (a): one post per side each")
    parser.add_argument("--posts", type=int, default=10_000, help="posts held for (b)")
    parser.add_argument("--requests", type=int, default=30, help="timed GET / per size for (b)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between posts in (a)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 rounds, 1,000 posts, 5 requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown result file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.posts, args.requests, args.gap = 4, 1_000, 5, 0.05
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("bench_web needs playwright (pip install -e '.[test]')", file=sys.stderr)
        return 2
    chromium = next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None
    )
    if chromium is None:
        print("bench_web needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    context = RunContext.begin(
        "benchmarks/bench_web.py", argv, ["starlette", "hypercorn", "playwright", "sqlite"]
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        workdir = Path(tmp)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                live = measure_live(args, workdir, browser)
            finally:
                browser.close()
        render = measure_render(args, workdir)
    context.end()
    report = markdown(context, live, render, args)
    report += f"Wall time {time.perf_counter() - started:.1f} s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
