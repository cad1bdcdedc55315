"""Benchmark of local full-text search (`p2pblog.search`) over a store of 100,000 posts.

    python benchmarks/bench_search.py [--posts 100000] [--rounds 5] [--out benchmarks/results/search.md]

Setup (not timed as a query): ``--posts`` posts by 200 authors, appended
with `Store.append` in transactions of 1000 (the bulk path: rows queued and
written in multi-row INSERTs), into an on-disk store next to the repository.
The text is ~15 words drawn from a Zipf-like vocabulary of 2,000 words, with
hashtags (1 post in 3), ``@name`` words (1 in 5) and handle mentions (1 in 10,
which also fill the ``mentions`` table); 50 authors have a profile name and
10 a petname.  The store is then indexed once (`Store.update_search_index`):
the time is reported (it is what the first search after a bulk import pays).

Queries: a common word, a rare word, two words, a prefix, a phrase, a
hashtag, ``from:`` a petname, ``from:`` a profile name with a word,
``@name`` (text and mention keys).  Each of ``--rounds`` rounds opens a
fresh `Store` (a fresh connection: SQLite's page cache is cold, the OS's is
not) and runs every query once, in an order rotated each round.  Reported
per query: results, median and p90 (nearest rank) of the wall times over
the rounds; the target is a median under 50 ms.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_context import RunContext, median, rotated, status, timed  # noqa: E402

from identity import Identity, encode_handle  # noqa: E402
from p2pblog.entry import POST, PROFILE, post_body  # noqa: E402
from p2pblog.store import Store  # noqa: E402

PACKAGES = ("msgpack", "sqlite")
DEFAULT_OUT = HERE / "results" / "search.md"
AUTHORS = 200
TARGET_MS = 50.0
RARE = "zyzzyva"  # written into 20 posts
QUERIES = (
    "common word: the",
    "rare word: zyzzyva",
    "two words: network protocol",
    "prefix: synchro",
    'phrase: "open source"',
    "hashtag: #python",
    "from petname: from:pet3",
    "from profile name + word: from:name7 garden",
    "@name: @name5",
)


def vocabulary(rng: random.Random) -> list[str]:
    common = " ".join(
        (
            "the a of to and in is it that for on with as this was at by be are from or have not but",
            "what all network protocol open source peer python garden coffee music travel synchronize",
            "synchronous code weather morning evening book film rust linux kernel release today tomorrow",
            "friends family city",
        )
    ).split()
    letters = "abcdefghijklmnopqrstuvwxyz"
    made = {"".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(2000)}
    return common + sorted(made)


def build(path: Path, posts: int, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    tags = ["python", "p2p", "music", "rust", "travel", "news", "art", "food"]
    authors = [Identity(rng.randbytes(32)) for _ in range(AUTHORS)]
    handles = [encode_handle(a.public_key) for a in authors]
    started = time.perf_counter()
    with Store(path) as store:
        with store.transaction():
            for i, author in enumerate(authors[:50]):
                store.append(author, PROFILE, {"name": f"name{i}"}, 1_700_000_000_000)
        for i, author in enumerate(authors[:10]):
            store.set_petname(f"pet{i}", author.public_key)
        rare = set(rng.sample(range(posts), 20))
        for first in range(0, posts, 1000):
            with store.transaction():
                for n in range(first, min(posts, first + 1000)):
                    text = rng.choices(words, weights, k=rng.randint(8, 22))
                    if n % 3 == 0:
                        text.insert(rng.randrange(len(text)), "#" + rng.choice(tags))
                    if n % 5 == 0:
                        text.insert(rng.randrange(len(text)), f"@name{rng.randrange(50)}")
                    if n % 10 == 0:
                        text.append(rng.choice(handles))
                    if n in rare:
                        text.insert(rng.randrange(len(text)), RARE)
                    author = authors[n % AUTHORS]
                    store.append(author, POST, post_body(" ".join(text)[:500]), 1_700_000_001_000 + n * 1000)
        stored = time.perf_counter() - started
        indexing, indexed = timed(store.update_search_index)
    return {"store_seconds": stored, "index_seconds": indexing.wall, "indexed": indexed}


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=100_000, help="posts in the store")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown result file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=".bench-search-", dir=HERE))
    context = RunContext.begin("benchmarks/bench_search.py", argv, PACKAGES, workdir)
    path = workdir / "search.db"
    times: dict[str, list[float]] = {q: [] for q in QUERIES}
    found: dict[str, int] = {}
    try:
        print(f"building a store of {args.posts} posts ...", file=sys.stderr)
        setup = build(path, args.posts)
        print(f"indexed {setup['indexed']} posts in {setup['index_seconds']:.1f} s", file=sys.stderr)
        for round_index in range(args.rounds):
            with Store(path) as store:
                for label in rotated(QUERIES, round_index):
                    query = label.split(": ", 1)[1]
                    timing, hits = timed(lambda q=query, s=store: s.search(q))  # type: ignore[misc]
                    times[label].append(timing.wall * 1000)
                    found[label] = len(hits)
        size = path.stat().st_size
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    context.end()
    lines = [
        "# Search over a store of posts (bench_search.py)",
        "",
        *context.markdown(),
        "",
        f"Store: {args.posts:,} posts by {AUTHORS} authors, built in {setup['store_seconds']:.1f} s; "
        f"database {size / 1e6:.0f} MB after indexing.",
        f"Indexing all {setup['indexed']:,} posts (`Store.update_search_index`): "
        f"**{setup['index_seconds']:.2f} s** "
        f"({setup['index_seconds'] / setup['indexed'] * 1e6:.0f} us per post).",
        "",
        f"Queries: {args.rounds} rounds, a fresh connection per round, order rotated; "
        "limit 50 (the default); wall time of `Store.search` (catch-up check, query, highlights, decoding).",
        "",
        "| query | results | median ms | p90 ms | target < 50 ms |",
        "|---|---:|---:|---:|---|",
    ]
    for label in QUERIES:
        mid, high = median(times[label]), p90(times[label])
        lines.append(f"| `{label}` | {found[label]} | {mid:.1f} | {high:.1f} | {status(mid < TARGET_MS)} |")
    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
