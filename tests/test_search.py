"""Local full-text search (`p2pblog.search`) on real SQLite stores on disk.

Every test asks what a user would: which posts a query finds, in which
order, and which parts of their text are marked.  The index is filled lazily,
so posts stored after a first search must be found by the next one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main
from identity import Identity, encode_handle
from p2pblog.entry import DELETE, POST, PROFILE, create_entry, post_body
from p2pblog.search import MAX_QUERY_CHARS, MAX_TERMS, SearchError, SearchHit, parse_query
from p2pblog.store import Store
from tests.feeds import T0

ALICE, BOB, CAROL = (Identity(bytes([i]) * 32) for i in (71, 72, 73))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "search.db") as opened:
        yield opened


class Posts:
    """Appends posts with increasing timestamps to any author's feed in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = T0

    def __call__(self, author: Identity, text: str, **extra: object) -> bytes:
        self.clock += 1000
        body = post_body(text)
        body.update(extra)
        return self.store.append(author, POST, body, self.clock).id


@pytest.fixture
def post(store: Store) -> Posts:
    return Posts(store)


def texts(hits: list[SearchHit]) -> list[str]:
    return [hit.item.entry.text or "" for hit in hits]


def marked(hit: SearchHit) -> list[str]:
    return [segment.text for segment in hit.segments if segment.match]


def test_every_word_must_match_and_the_last_is_a_prefix(store: Store, post: Posts) -> None:
    post(ALICE, "the quick brown fox")
    post(BOB, "a quick red squirrel")
    post(CAROL, "Brown bears are not quick? Pythonic!")
    both = ["Brown bears are not quick? Pythonic!", "the quick brown fox"]
    assert texts(store.search("quick brown")) == both
    assert texts(store.search("squir")) == ["a quick red squirrel"]  # prefix, last word
    assert texts(store.search("squir quick")) == []  # not a prefix when not last
    assert texts(store.search("pythonic")) == texts(store.search("PYTHONIC"))


def test_a_quoted_phrase_matches_words_in_order(store: Store, post: Posts) -> None:
    post(ALICE, "peer to peer networks")
    post(BOB, "networks peer to")
    assert texts(store.search('"peer to peer"')) == ["peer to peer networks"]
    assert texts(store.search('"networks peer')) == ["networks peer to"]  # an unclosed quote runs on


def test_accents_and_case_fold(store: Store, post: Posts) -> None:
    post(ALICE, "Un Café à Paris")
    (hit,) = store.search("cafe paris")
    assert marked(hit) == ["Café", "Paris"]


def test_a_hashtag_finds_the_tag_and_a_plain_word_finds_it_too(store: Store, post: Posts) -> None:
    post(ALICE, "learning #Rust today")
    post(BOB, "rust on my bike")
    post(CAROL, "#rusty is another tag")
    (tagged,) = store.search("#rust")
    assert tagged.item.entry.text == "learning #Rust today"
    assert marked(tagged) == ["#Rust"]
    exact = store.search("rust ")  # a trailing space: not a prefix
    assert texts(exact) == ["rust on my bike", "learning #Rust today"]


def test_at_name_in_the_text_and_through_mention_keys(store: Store, post: Posts) -> None:
    carol = encode_handle(CAROL.public_key)
    post(ALICE, "lunch with @carol?")
    post(BOB, f"hello {carol}")  # the handle in the text, the key in mentions
    post(BOB, "a reply", mentions=[CAROL.public_key])  # the key in mentions only
    post(ALICE, "carol without an at sign")
    assert texts(store.search("@carol")) == ["lunch with @carol?"]  # no key is named carol yet
    store.set_petname("carol", CAROL.public_key)
    hits = store.search("@carol")
    assert texts(hits) == ["a reply", f"hello {carol}", "lunch with @carol?"]
    assert [marked(h) for h in hits] == [[], [carol], ["@carol"]]
    assert texts(store.search(carol)) == texts(hits)[:2]  # @pb1... is the key itself


def test_at_name_by_profile_name(store: Store, post: Posts) -> None:
    store.append(CAROL, PROFILE, {"name": "Caroline"}, T0)
    post(ALICE, "ping", mentions=[CAROL.public_key])
    assert texts(store.search("@caroline")) == ["ping"]


def test_from_a_handle_a_petname_or_a_profile_name(store: Store, post: Posts) -> None:
    store.append(ALICE, PROFILE, {"name": "Alice"}, T0)
    store.append(CAROL, PROFILE, {"name": "alice"}, T0)  # two authors share the name
    post(ALICE, "news from alice")
    post(BOB, "news from bob")
    post(CAROL, "news from the other alice")
    assert texts(store.search(f"news from:{encode_handle(BOB.public_key)}")) == ["news from bob"]
    store.set_petname("bobby", BOB.public_key)
    assert texts(store.search("from:bobby")) == ["news from bob"]
    assert texts(store.search("from:ALICE news")) == ["news from the other alice", "news from alice"]
    with pytest.raises(SearchError, match="from:nobody"):
        store.search("from:nobody")


def test_deleted_posts_are_not_found_and_leave_the_index(store: Store, post: Posts) -> None:
    kept = post(ALICE, "keep this gardening post")
    gone = post(ALICE, "delete this gardening post")
    assert len(store.search("gardening")) == 2
    store.append(ALICE, DELETE, {"target": gone}, T0 + 10**6)
    assert [h.item.entry.id for h in store.search("gardening")] == [kept]
    (rows,) = store._db.execute("SELECT count(*) FROM search_index").fetchone()
    assert rows == 1


def test_blocked_authors_are_left_out(store: Store, post: Posts) -> None:
    post(ALICE, "spam spam spam")
    post(BOB, "I like spam")
    store.block(ALICE.public_key, T0)
    assert texts(store.search("spam")) == ["I like spam"]
    store.unblock(ALICE.public_key)
    assert len(store.search("spam")) == 2


def test_posts_stored_after_a_search_are_found_by_the_next(store: Store, post: Posts) -> None:
    post(ALICE, "first kayak trip")
    assert texts(store.search("kayak")) == ["first kayak trip"]
    post(BOB, "second kayak trip")
    post(CAROL, "third kayak trip")
    assert texts(store.search("kayak")) == ["third kayak trip", "second kayak trip", "first kayak trip"]
    post(ALICE, "one more kayak")
    post(ALICE, "and another kayak")
    assert store.update_search_index(limit=1) == 1
    assert store.update_search_index() == 1
    assert store.update_search_index() == 0


def test_admitted_mention_notices_are_searched(store: Store) -> None:
    stranger = Identity(bytes([99]) * 32)
    notice = create_entry(
        stranger, seq=7, prev=bytes(32), timestamp=T0, kind=POST, body=post_body("hi from a stranger")
    )
    assert store.add_loose(notice, T0)
    (hit,) = store.search("stranger")
    assert hit.item.entry.id == notice.id and marked(hit) == ["stranger"]


OPERATORS = ["AND", "OR", "NOT", "NEAR(", 'say "hi', "*", "a:b", "^start", "-minus", "x AND NOT y", "text:"]
OPERATORS += ['"']


@pytest.mark.parametrize("query", OPERATORS)
def test_fts_syntax_in_a_query_is_searched_as_text(store: Store, post: Posts, query: str) -> None:
    post(ALICE, "AND OR NOT NEAR( say hi a:b ^start -minus x y text: the end")
    try:
        hits = store.search(query)
    except SearchError:
        assert query in ("*", '"')  # nothing left to search for
        return
    assert texts(hits) == ["AND OR NOT NEAR( say hi a:b ^start -minus x y text: the end"]


def test_segments_cover_the_text_and_mark_the_matches(store: Store, post: Posts) -> None:
    post(ALICE, "Tea, then more tea; #tea time. \x02odd\x03 bytes")
    (hit,) = store.search("tea odd")
    assert "".join(s.text for s in hit.segments) == hit.item.entry.text
    assert marked(hit) == ["Tea", "tea", "tea", "odd"]
    (tag,) = store.search("#tea")
    assert marked(tag) == ["#tea"]  # not the words written without the '#'


def test_paging_with_limit_and_cursor(store: Store, post: Posts) -> None:
    for i in range(7):
        post(ALICE if i % 2 else BOB, f"page item {i}")
    first = store.search("page", limit=3)
    assert texts(first) == ["page item 6", "page item 5", "page item 4"]
    second = store.search("page", limit=3, before=first[-1].cursor)
    assert texts(second) == ["page item 3", "page item 2", "page item 1"]
    by_time = store.search("page", limit=3, before=second[-1].item.entry.timestamp)
    assert texts(by_time) == ["page item 0"]
    with pytest.raises(SearchError):
        store.search("page", limit=501)


def test_bad_queries_raise_search_error(store: Store) -> None:
    for query in ["", "   ", "!!! ?", "x" * (MAX_QUERY_CHARS + 1), " ".join(["w"] * (MAX_TERMS + 1))]:
        with pytest.raises(SearchError):
            store.search(query)
    assert issubclass(SearchError, ValueError)


def test_settings_round_trip(store: Store) -> None:
    assert store.setting("mentions.seen") is None
    store.set_setting("mentions.seen", "1700000000000")
    store.set_setting("mentions.seen", "1700000000001")
    assert store.setting("mentions.seen") == "1700000000001"


def test_parse_query_terms() -> None:
    terms = parse_query('from:bob #Tag @ann "a b" last')
    assert [(t.kind, t.value, t.prefix) for t in terms] == [
        ("from", "bob", False),
        ("tag", "Tag", False),
        ("name", "ann", False),
        ("phrase", "a b", False),
        ("word", "last", True),
    ]


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with Store(tmp_path_factory.mktemp("fuzz") / "search.db") as opened:
        posts = Posts(opened)
        posts(ALICE, 'some #text with @names and NEAR(words) AND symbols: * ^ - "quotes"')
        posts(BOB, "another post, café")
        opened.set_petname("bob", BOB.public_key)
        yield opened


SYNTAX = st.sampled_from(['"', "*", ":", "^", "-", "(", ")", "#", "@", "from:", "AND", "NEAR", " ", "\x00"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=12), SYNTAX), max_size=30).map("".join))
def test_any_query_raises_nothing_but_search_error(fuzz_store: Store, query: str) -> None:
    try:
        hits = fuzz_store.search(query)
    except SearchError:
        return
    for hit in hits:
        assert "".join(s.text for s in hit.segments) == hit.item.entry.text


def test_the_search_command(tmp_path: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--home", home, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    run("init", "--name", "Alice")
    run("post", "Learning #rust with @bob")
    run("post", "nothing to see")
    docs = json.loads(run("search", "#rust", "--json"))
    assert [d["text"] for d in docs] == ["Learning #rust with @bob"]
    assert docs[0]["segments"] == [["Learning ", False], ["#rust", True], [" with @bob", False]]
    assert "Learning [#rust] with @bob" in run("search", "#rust")
    assert "No posts found" in runner.invoke(main, ["--home", home, "search", "absent"]).stderr
    bad = runner.invoke(main, ["--home", home, "search", "*"])
    assert bad.exit_code == 1 and "nothing to search for" in bad.stderr


def test_the_command_pages_by_cursor_without_skipping_posts_of_one_millisecond(tmp_path: Path) -> None:
    """Posts stamped in the same millisecond (peers choose their stamps): the cursor is
    (time, author, seq), so the next page starts exactly after the last post shown."""
    from p2pblog.home import Home
    from tests.process import p2pblog

    home = Home(tmp_path / "n")
    identity = Identity.generate()
    home.create(identity)
    with home.open_store() as store:
        for i in range(5):
            store.append(identity, POST, {"text": f"same millisecond {i}"}, 1_700_000_000_000)
    first = json.loads(p2pblog(home.path, "search", "millisecond", "--limit", "2", "--json").stdout)
    rest = json.loads(
        p2pblog(
            home.path, "search", "millisecond", "--limit", "10", "--before", first[-1]["cursor"], "--json"
        ).stdout
    )
    assert len(first) + len(rest) == 5
    assert {d["text"] for d in first} | {d["text"] for d in rest} == {
        f"same millisecond {i}" for i in range(5)
    }
    bad = p2pblog(home.path, "search", "x", "--before", "nonsense")
    assert bad.returncode == 2 and "cursor" in bad.stderr
