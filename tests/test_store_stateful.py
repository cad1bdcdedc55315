"""The store against a simple in-memory model (hypothesis RuleBasedStateMachine).

The model is a dict of feeds (lists of entry ids), fork marks and the owner's
follow set.  Rules append to the own feed, ingest remote entries in order,
re-send old ones, skip ahead (a gap), fork a feed and extend past a fork;
after every step the store's clock, feeds, follows, timeline and verify
result must agree with the model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from identity import Identity
from p2pblog.entry import FOLLOW, POST, UNFOLLOW, Entry, post_body
from p2pblog.errors import ChainError, FeedForkedError
from p2pblog.store import Ingested, Store
from tests.feeds import T0, make_entry

OWNER = Identity(bytes([7]) * 32)
AUTHORS = [Identity(bytes([8 + i]) * 32) for i in range(3)]


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="p2pblog-stateful-"))
        self.store = Store(self.dir / "store.sqlite3")
        self.feeds: dict[bytes, list[Entry]] = {}
        self.forked: dict[bytes, int] = {}
        self.follows: set[bytes] = set()
        self.clock_ms = T0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tick(self) -> int:
        self.clock_ms += 1
        return self.clock_ms

    def _next(self, author: Identity, text: str = "p") -> Entry:
        chain = self.feeds.get(author.public_key, [])
        prev = chain[-1].id if chain else None
        return make_entry(author, len(chain) + 1, prev, body=post_body(f"{text} {len(chain) + 1}"))

    # -- rules ---------------------------------------------------------------------

    @rule(text=st.text(min_size=1, max_size=20).filter(str.strip))
    def append_post(self, text: str) -> None:
        entry = self.store.append(OWNER, POST, post_body(text), self._tick())
        self.feeds.setdefault(OWNER.public_key, []).append(entry)

    @rule(author=st.sampled_from(AUTHORS), follow=st.booleans())
    def append_follow(self, author: Identity, follow: bool) -> None:
        kind = FOLLOW if follow else UNFOLLOW
        entry = self.store.append(OWNER, kind, {"feed": author.public_key}, self._tick())
        self.feeds.setdefault(OWNER.public_key, []).append(entry)
        if follow:
            self.follows.add(author.public_key)
        else:
            self.follows.discard(author.public_key)

    @rule(author=st.sampled_from(AUTHORS))
    def ingest_next(self, author: Identity) -> None:
        entry = self._next(author)
        if author.public_key in self.forked:
            try:
                self.store.ingest(entry.raw)
            except FeedForkedError:
                return
            raise AssertionError("an entry past a fork was accepted")
        assert self.store.ingest(entry.raw) is Ingested.ACCEPTED
        self.feeds.setdefault(author.public_key, []).append(entry)

    @rule(
        author=st.sampled_from(AUTHORS),
        count=st.integers(min_value=1, max_value=5),
        fork_at=st.integers(0, 5),
    )
    def ingest_batch(self, author: Identity, count: int, fork_at: int) -> None:
        """Several entries in one ingest_many transaction, maybe with a fork among them."""
        key = author.public_key
        chain = list(self.feeds.get(key, []))
        raws = []
        for _ in range(count):
            entry = make_entry(author, len(chain) + 1, chain[-1].id if chain else None)
            chain.append(entry)
            raws.append(entry.raw)
        forked_seq = None
        if 0 < fork_at <= len(chain):
            rival = make_entry(
                author, fork_at, chain[fork_at - 2].id if fork_at > 1 else None, body=post_body("rival")
            )
            raws.append(rival.raw)
            raws.append(make_entry(author, len(chain) + 1, chain[-1].id).raw)  # past the fork
            forked_seq = fork_at
        report = self.store.ingest_many(raws)
        if key in self.forked:
            assert isinstance(report.error, FeedForkedError) and report.accepted == 0
            return
        assert report.accepted == count
        self.feeds[key] = chain
        if forked_seq is not None:
            assert report.forks == 1 and isinstance(report.error, FeedForkedError)
            self.forked[key] = forked_seq
        else:
            assert report.error is None

    @precondition(lambda self: any(self.feeds.get(a.public_key) for a in AUTHORS))
    @rule(data=st.data())
    def ingest_duplicate(self, data: st.DataObject) -> None:
        author = data.draw(st.sampled_from([a for a in AUTHORS if self.feeds.get(a.public_key)]))
        entry = data.draw(st.sampled_from(self.feeds[author.public_key]))
        assert self.store.ingest(entry.raw) is Ingested.DUPLICATE

    @rule(author=st.sampled_from(AUTHORS), skip=st.integers(min_value=2, max_value=4))
    def ingest_gap(self, author: Identity, skip: int) -> None:
        chain = self.feeds.get(author.public_key, [])
        fake_prev = b"\x11" * 32
        entry = make_entry(author, len(chain) + skip, fake_prev)
        try:
            self.store.ingest(entry.raw)
        except ChainError:
            return
        raise AssertionError("an entry after a gap was accepted")

    @precondition(lambda self: any(self.feeds.get(a.public_key) for a in AUTHORS))
    @rule(data=st.data())
    def ingest_fork(self, data: st.DataObject) -> None:
        author = data.draw(st.sampled_from([a for a in AUTHORS if self.feeds.get(a.public_key)]))
        chain = self.feeds[author.public_key]
        seq = data.draw(st.integers(min_value=1, max_value=len(chain)))
        prev = chain[seq - 2].id if seq > 1 else None
        rival = make_entry(author, seq, prev, body=post_body(f"rival {seq}"))
        assert self.store.ingest(rival.raw) is Ingested.FORK
        key = author.public_key
        self.forked[key] = min(self.forked.get(key, seq), seq)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def clock_matches(self) -> None:
        assert self.store.clock() == {k: len(v) for k, v in self.feeds.items()}

    @invariant()
    def feeds_match(self) -> None:
        for key, chain in self.feeds.items():
            stored = [e.id for e in self.store.feed_range(key, 1)]
            assert stored == [e.id for e in chain]
            assert self.store.feed_state(key).forked_seq == self.forked.get(key)

    @invariant()
    def follows_and_timeline_match(self) -> None:
        assert self.store.following(OWNER.public_key) == self.follows
        visible = {OWNER.public_key} | self.follows
        expected = {e.id for k, chain in self.feeds.items() if k in visible for e in chain if e.kind == POST}
        timeline = self.store.timeline(OWNER.public_key, limit=10_000)
        assert {i.entry.id for i in timeline} == expected
        times = [i.entry.timestamp for i in timeline]
        assert times == sorted(times, reverse=True)

    @invariant()
    def verify_agrees(self) -> None:
        report = self.store.verify()
        assert report.ok == (not self.forked)
        assert report.entries == sum(len(v) for v in self.feeds.values())


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestStoreModel = StoreModel.TestCase
