"""Atom 1.0 feeds of held feeds (web.atom): fields, stable ids, hostile text, well-formedness."""

from __future__ import annotations

import calendar
import datetime as dt
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import feedparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity import Identity, encode_handle, fingerprint, limits
from p2pblog.entry import DELETE, FOLLOW, POST, PROFILE, post_body
from p2pblog.store import Store
from tests.feeds import T0
from web.atom import (
    DELETED,
    TITLE_CHARS,
    atom_feed,
    entry_title,
    feed_path,
    rfc3339,
    write_atom,
    xml_text,
)

ANN = Identity(bytes([21]) * 32)
BOB = Identity(bytes([22]) * 32)
BASE = "http://127.0.0.1:8080"
A = "{http://www.w3.org/2005/Atom}"
THR = "{http://purl.org/syndication/thread/1.0}"
HOSTILE = (
    "<script>alert(1)</script> ]]> &amp; \x00\x01\x08\x0b\x0c\x0e\x1b[31m\x1f \ufffe\uffff\x7f\x80\x9f"
    " end\r\nnext\rlast"
)


def parse(doc: bytes) -> feedparser.FeedParserDict:
    parsed = feedparser.parse(doc)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    return parsed


def check_atom(doc: bytes) -> ET.Element:
    """Parse doc with ElementTree and check the elements RFC 4287 requires (section 4.1)."""
    assert doc.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(doc)
    assert root.tag == A + "feed"

    def one(parent: ET.Element, tag: str) -> str:
        found = parent.findall(A + tag)
        assert len(found) == 1, f"{parent.tag} has {len(found)} {tag}"
        return found[0].text or ""

    def date(text: str) -> None:
        assert dt.datetime.fromisoformat(text).tzinfo == dt.UTC and text.endswith("Z")

    assert one(root, "id") and one(root, "title")
    date(one(root, "updated"))
    author = root.findall(A + "author")
    assert len(author) == 1 and one(author[0], "name")  # on the feed, so no entry needs its own
    for entry in root.findall(A + "entry"):
        assert one(entry, "id") and one(entry, "title")
        date(one(entry, "updated"))
        date(one(entry, "published"))
        alternate = [link for link in entry.findall(A + "link") if link.get("rel") == "alternate"]
        assert entry.findall(A + "content") or alternate  # section 4.1.1.1
        for content in entry.findall(A + "content"):
            assert content.get("type") == "text"
    return root


def profile(store: Store, who: Identity, name: str, when: int) -> None:
    store.append(who, PROFILE, {"name": name}, when)


def test_fields_of_a_feed_with_a_profile_posts_and_a_reply(store: Store) -> None:
    profile(store, ANN, "Ann Example", T0)
    first = store.append(ANN, POST, post_body("Hello world\nsecond line"), T0 + 1000)
    reply = store.append(ANN, POST, post_body("me again", reply_to=first.id), T0 + 61_000)
    handle = encode_handle(ANN.public_key)

    doc = atom_feed(store, ANN.public_key, now_ms=0)
    root = check_atom(doc)
    in_reply_to = [e.find(THR + "in-reply-to") for e in root.findall(A + "entry")]
    assert in_reply_to[1] is None and in_reply_to[0] is not None
    assert in_reply_to[0].attrib == {"ref": f"urn:p2pblog:entry:{first.id.hex()}"}
    parsed = parse(doc)
    assert parsed.feed.id == "urn:p2pblog:feed:" + handle[1:]
    assert parsed.feed.title == f"Ann Example ({fingerprint(ANN.public_key)})"
    assert parsed.feed.author_detail == {"name": "Ann Example", "href": handle}
    assert parsed.feed.updated == rfc3339(T0 + 61_000)
    assert parsed.feed.generator == "p2pblog"
    assert "links" not in parsed.feed  # no base_url, no links
    assert [e.id for e in parsed.entries] == [f"urn:p2pblog:entry:{e.id.hex()}" for e in (reply, first)]
    newer, older = parsed.entries
    assert (older.title, newer.title) == ("Hello world", "me again")
    assert older.content[0].value == "Hello world\nsecond line"
    assert older.content[0].type == "text/plain"
    assert older.published == older.updated == "2023-11-14T22:13:21.000Z"
    assert calendar.timegm(older.published_parsed) == (T0 + 1000) // 1000
    assert calendar.timegm(newer.published_parsed) == (T0 + 61_000) // 1000
    assert "thr_in-reply-to" not in older
    assert newer["thr_in-reply-to"] == {"ref": f"urn:p2pblog:entry:{first.id.hex()}"}


def test_links_to_the_web_app_when_a_base_url_is_given(store: Store) -> None:
    first = store.append(ANN, POST, post_body("one"), T0)
    reply = store.append(ANN, POST, post_body("two", reply_to=first.id), T0 + 1)
    handle = encode_handle(ANN.public_key)

    parsed = parse(atom_feed(store, ANN.public_key, base_url=BASE + "/"))
    links = {link.rel: link for link in parsed.feed.links}
    assert links["self"].href == f"{BASE}/feeds/{handle}.atom" == BASE + feed_path(ANN.public_key)
    assert links["self"].type == "application/atom+xml"
    assert links["alternate"].href == f"{BASE}/u/{handle}"
    assert parsed.feed.author_detail.href == f"{BASE}/u/{handle}"
    assert [e.link for e in parsed.entries] == [f"{BASE}/post/{e.id.hex()}" for e in (reply, first)]
    assert parsed.entries[0]["thr_in-reply-to"] == {
        "ref": f"urn:p2pblog:entry:{first.id.hex()}",
        "href": f"{BASE}/post/{first.id.hex()}",
        "type": "text/html",
    }


def test_feed_path_is_the_handle_with_its_at_and_needs_no_escaping() -> None:
    path = feed_path(ANN.public_key)
    assert path == f"/feeds/{encode_handle(ANN.public_key)}.atom"
    assert path.startswith("/feeds/@pb1")
    assert urllib.parse.quote(path, safe="/@") == path


def test_ids_are_stable_across_exports_machines_and_profile_changes(store: Store, tmp_path: Path) -> None:
    posts = [store.append(ANN, POST, post_body(f"post {i}"), T0 + i) for i in range(3)]
    before = parse(atom_feed(store, ANN.public_key, now_ms=1))
    again = parse(atom_feed(store, ANN.public_key, base_url=BASE, now_ms=2))
    profile(store, ANN, "Ann", T0 + 10)
    renamed = parse(atom_feed(store, ANN.public_key, now_ms=3))
    with Store(tmp_path / "elsewhere.sqlite3") as other:  # another machine that replicated the feed
        for item in reversed(store.feed(ANN.public_key)):
            other.ingest(item.entry.raw)
        elsewhere = parse(atom_feed(other, ANN.public_key, base_url="http://other:1"))

    ids = [e.id for e in before.entries]
    assert ids == [f"urn:p2pblog:entry:{p.id.hex()}" for p in reversed(posts)]
    for parsed in (again, renamed, elsewhere):
        assert parsed.feed.id == before.feed.id
        assert [e.id for e in parsed.entries] == ids
        assert [e.published for e in parsed.entries] == [e.published for e in before.entries]
    assert before.feed.title == encode_handle(ANN.public_key)
    assert renamed.feed.title == f"Ann ({fingerprint(ANN.public_key)})"
    assert before.feed.author == fingerprint(ANN.public_key)
    assert renamed.feed.author == "Ann"


def test_hostile_text_stays_text_and_the_document_well_formed(store: Store) -> None:
    post = store.append(ANN, POST, post_body(HOSTILE), T0)
    profile(store, ANN, "<b>Ann</b>\x07 ]]>", T0 + 1)
    expected = (
        "<script>alert(1)</script> ]]> &amp; "
        + "\ufffd" * 7
        + "[31m\ufffd "
        + "\ufffd" * 5
        + " end\nnext\nlast"
    )
    assert xml_text(HOSTILE) == expected

    doc = atom_feed(store, ANN.public_key, base_url=BASE)
    assert b"<script>" not in doc and b"]]>" not in doc
    root = check_atom(doc)
    entry = root.find(A + "entry")
    assert entry is not None
    assert entry.findtext(A + "content") == expected
    assert (
        entry.findtext(A + "title")
        == "<script>alert(1)</script> ]]> &amp; " + "\ufffd" * 7 + "[31m\ufffd " + "\ufffd" * 5 + " end"
    )
    assert root.findtext(f"{A}author/{A}name") == "<b>Ann</b>\ufffd ]]>"
    parsed = parse(doc)
    assert parsed.entries[0].content[0].value == expected
    assert parsed.entries[0].id == f"urn:p2pblog:entry:{post.id.hex()}"
    assert parsed.feed.author == "<b>Ann</b>\ufffd ]]>"


def test_an_empty_feed_is_valid_and_dated_now(store: Store) -> None:
    now = T0 + 123_456
    doc = atom_feed(store, BOB.public_key, base_url=BASE, now_ms=now)
    root = check_atom(doc)
    assert root.findall(A + "entry") == []
    parsed = parse(doc)
    assert parsed.entries == []
    assert parsed.feed.updated == rfc3339(now) == "2023-11-14T22:15:23.456Z"
    assert parsed.feed.title == encode_handle(BOB.public_key)
    before = time.time()
    check_atom(atom_feed(store, BOB.public_key))  # now_ms defaults to the clock
    assert abs(calendar.timegm(parse(atom_feed(store, BOB.public_key)).feed.updated_parsed) - before) < 5


def test_a_deleted_post_is_a_tombstone_without_its_text(store: Store) -> None:
    kept = store.append(ANN, POST, post_body("kept"), T0)
    gone = store.append(ANN, POST, post_body("a secret I regret"), T0 + 1000)
    store.append(ANN, DELETE, {"target": gone.id}, T0 + 5000)

    doc = atom_feed(store, ANN.public_key)
    assert b"secret" not in doc
    check_atom(doc)
    tombstone, other = parse(doc).entries
    assert tombstone.id == f"urn:p2pblog:entry:{gone.id.hex()}"
    assert tombstone.title == tombstone.content[0].value == DELETED
    assert tombstone.published == rfc3339(T0 + 1000)
    assert tombstone.updated == rfc3339(T0 + 5000)  # readers that fetched the post replace it
    assert other.id == f"urn:p2pblog:entry:{kept.id.hex()}"
    assert parse(doc).feed.updated == rfc3339(T0 + 5000)


def test_limit_counts_posts_past_other_kinds_of_entries(store: Store) -> None:
    posts = [store.append(ANN, POST, post_body(f"post {i}"), T0 + i) for i in range(3)]
    for i in range(60):
        store.append(ANN, FOLLOW, {"feed": Identity(bytes([100, i]) * 16).public_key}, T0 + 100 + i)
    parsed = parse(atom_feed(store, ANN.public_key, limit=2))
    assert [e.id for e in parsed.entries] == [f"urn:p2pblog:entry:{p.id.hex()}" for p in posts[:0:-1]]
    assert len(parse(atom_feed(store, ANN.public_key)).entries) == 3
    assert parse(atom_feed(store, ANN.public_key, limit=0)).entries == []
    with pytest.raises(ValueError, match="limit"):
        atom_feed(store, ANN.public_key, limit=-1)


def test_entry_titles_are_the_first_line_shortened() -> None:
    assert entry_title("  first line \n second") == "first line"
    long = " ".join(["word"] * 40)
    title = entry_title(long + "\nmore")
    assert len(title) <= TITLE_CHARS and title.endswith("word\u2026")
    assert long.startswith(title[:-1])
    unbroken = "x" * 200
    assert entry_title(unbroken) == "x" * (TITLE_CHARS - 1) + "\u2026"


def test_dates_are_rfc3339_utc_and_clamped_to_what_readers_parse() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(T0 + 7) == "2023-11-14T22:13:20.007Z"
    assert rfc3339(limits.MAX_TIMESTAMP_MS) == "9999-12-31T23:59:59.999Z"


def test_write_atom_replaces_the_file_atomically(store: Store, tmp_path: Path) -> None:
    store.append(ANN, POST, post_body("one"), T0)
    out = tmp_path / "feeds" / "ann.atom"
    out.parent.mkdir()
    out.write_bytes(b"old")
    write_atom(store, ANN.public_key, out, base_url=BASE, now_ms=1)
    assert out.read_bytes() == atom_feed(store, ANN.public_key, base_url=BASE, now_ms=1)
    assert [p.name for p in out.parent.iterdir()] == ["ann.atom"]  # no temporary file left
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_atom(store, ANN.public_key, tmp_path / "taken")  # a directory is in the way
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@given(st.text(st.characters(codec=None, categories=None), max_size=200))
def test_xml_text_of_any_string_parses_back_unchanged(text: str) -> None:
    element = ET.Element("t", {"a": xml_text(text)})
    element.text = xml_text(text)
    parsed = ET.fromstring(ET.tostring(element, encoding="utf-8"))
    assert (parsed.text or "") == xml_text(text)
    assert parsed.get("a") == xml_text(text)


def as_feedparser_reads(text: str) -> str:
    """text as feedparser returns it: without the whitespace around it, and, when all of it
    is Latin-1 that happens to be valid UTF-8 (``"Ã©"``), "repaired" as double-encoded
    UTF-8 (feedparser/mixin.py, ``pop``).  ElementTree returns the exact text."""
    text = text.strip()
    try:
        return text.encode("iso-8859-1").decode("utf-8")
    except UnicodeError:
        return text


def post_texts() -> st.SearchStrategy[str]:
    """Any text a post may carry: at most 500 code points, not blank, no lone surrogates."""
    return st.text(
        st.characters(exclude_categories=["Cs"]), min_size=1, max_size=limits.MAX_POST_CHARS
    ).filter(lambda t: bool(t.strip()))


def test_any_post_text_yields_a_well_formed_feed() -> None:
    with tempfile.TemporaryDirectory() as directory, Store(Path(directory) / "s.sqlite3") as store:
        count = 0

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(post_texts(), st.text(max_size=limits.MAX_PROFILE_NAME_CHARS))
        def check(text: str, name: str) -> None:
            nonlocal count
            count += 1
            author = Identity(count.to_bytes(32, "big"))
            if name:
                profile(store, author, name, T0)
            store.append(author, POST, post_body(text), T0 + 1)
            doc = atom_feed(store, author.public_key, base_url=BASE)
            root = check_atom(doc)
            assert root.findtext(f"{A}entry/{A}content") == xml_text(text)
            assert parse(doc).entries[0].content[0].value == as_feedparser_reads(xml_text(text))

        check()
