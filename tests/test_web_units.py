"""The web app's parts on their own: sign-in links, sessions, hosts, escaping, live updates."""

from __future__ import annotations

import html
import re

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import Identity, encode_handle
from p2pblog.store import Store
from p2pblog.targets import Target, TargetError, parse_target, pick_claims, suggested_claim
from web.app import People, parse_cursor, render_text, safe_next
from web.live import MAX_SUBSCRIBERS, QUEUE, RING, LiveHub
from web.security import LINK_TTL, MAX_LINKS, MAX_SESSIONS, LoginLinks, Sessions, allowed_hosts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_sign_in_link_works_once_and_expires() -> None:
    clock = Clock()
    links = LoginLinks(clock)
    secret = links.new()
    assert not links.use("not-" + secret)
    assert links.use(secret)
    assert not links.use(secret)
    late = links.new()
    clock.now += LINK_TTL + 1
    assert not links.use(late)


def test_sign_in_links_are_bounded() -> None:
    links = LoginLinks(Clock())
    first = links.new()
    others = [links.new() for _ in range(MAX_LINKS)]
    assert not links.use(first)  # the oldest made room
    assert all(links.use(s) for s in others)


def test_sessions_are_bounded_and_csrf_tokens_bound_to_them() -> None:
    sessions = Sessions()
    first = sessions.new()
    assert sessions.valid(first)
    token = sessions.csrf(first)
    assert sessions.csrf_ok(first, token)
    assert not sessions.csrf_ok(first, None) and not sessions.csrf_ok(first, "")
    second = sessions.new()
    assert not sessions.csrf_ok(second, token)
    for _ in range(MAX_SESSIONS):
        sessions.new()
    assert len(sessions) == MAX_SESSIONS
    assert not sessions.valid(first) and not sessions.valid(second)
    assert not sessions.valid(None) and not sessions.valid("") and not sessions.valid("x" * 1000)
    third = sessions.new()
    sessions.forget(third)
    assert not sessions.valid(third)
    # Another node's sessions (another key) do not make valid tokens here.
    assert not Sessions().csrf_ok(third, sessions.csrf(third))


def test_allowed_hosts() -> None:
    assert allowed_hosts("127.0.0.1", 7711) == {"127.0.0.1:7711", "localhost:7711"}
    assert allowed_hosts("::1", 7711) == {"[::1]:7711", "localhost:7711"}
    assert allowed_hosts("192.0.2.7", 8080) == {"192.0.2.7:8080"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/u/@pb1x", "/u/@pb1x"),
        ("//evil.example/", "/"),
        ("http://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
        (None, "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_safe_next_stays_on_this_origin(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_parse_cursor_refuses_garbage() -> None:
    key = bytes(range(32))
    assert parse_cursor(f"5.{key.hex()}.3") == (5, key, 3)
    for bad in ("", "1.2", "x.y.z", f"5.{key.hex()[:-2]}.3", "1.zz.2", None):
        assert parse_cursor(bad) is None


@pytest.fixture
def people(tmp_path: object) -> People:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    return People(Store(tmp_path / "s.db"))


_ALLOWED_TAG = re.compile(
    r'<a class="(mention|tag)" href="[^"<>]*"( title="[^"<>]*")?>|<a href="[^"<>]*" rel="[^"]*">|</a>'
)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_post_text_never_becomes_markup(text: str) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "s.db")
        try:
            out = str(render_text(text, People(store)))
        finally:
            store.close()
    rest = _ALLOWED_TAG.sub("", out)
    assert "<" not in rest and ">" not in rest
    if not re.search(r"@pb1|#\w|https?://", text, re.I):
        assert html.unescape(out) == text


def test_mentions_tags_and_links_render_as_links(people: People) -> None:
    key = Identity.generate().public_key
    handle = encode_handle(key)
    out = str(render_text(f'hi {handle} #tag <b> "http://x.example/a?b=<c>"', people))
    assert f'href="/u/{handle}"' in out
    assert 'href="/search?q=%23tag"' in out
    assert "&lt;b&gt;" in out
    assert 'href="http://x.example/a?b=' in out and "<c>" not in out


def test_targets() -> None:
    key = Identity.generate().public_key
    assert parse_target(encode_handle(key)) == Target(key=key)
    assert parse_target(encode_handle(key)[1:]) == Target(key=key)
    assert parse_target(" alice ") == Target(name="alice")
    assert parse_target("alice~ABCDEF") == Target(name="alice", prefix="abcdef")
    for bad in ("Alice Smith", "alice~ab", "~abcdef", ""):
        with pytest.raises(TargetError):
            parse_target(bad)
    x, y = (encode_handle(Identity(bytes([i]) * 32).public_key) for i in (1, 2))
    stranger = {
        "fingerprint": "abcdef123456",
        "handle": x,
        "work": 30,
        "relation": "stranger",
        "witnessed": 5,
    }
    followed = {
        "fingerprint": "abcxyz123456",
        "handle": y,
        "work": 20,
        "relation": "following",
        "witnessed": 9,
    }
    claims = [stranger, followed]
    assert pick_claims(Target(name="a", prefix="abcdef"), claims) == [stranger]
    # The key the user follows first, whatever the stranger's work and age; and it is picked.
    assert pick_claims(Target(name="a"), claims) == [followed, stranger]
    assert suggested_claim(claims) is followed
    # Two strangers (an older daemon's answers have no relation): the earlier first, none picked.
    older = [{**stranger, "witnessed": 10}, {**followed, "relation": None}]
    assert pick_claims(Target(name="a"), older) == older[::-1]
    assert suggested_claim(older) is None


# --- live updates --------------------------------------------------------------------------------


async def _take(stream: object, count: int) -> list[bytes]:
    got = []
    async for chunk in stream:  # type: ignore[attr-defined]
        got.append(chunk)
        if len(got) == count:
            break
    return got


def test_a_page_gets_updates_and_what_it_missed() -> None:
    async def main() -> None:
        hub = LiveHub()
        hub.publish("post", {"n": 1})
        hub.publish("post", {"n": 2})
        stream = hub.stream(1)
        got = await _take(stream, 2)  # retry line, then the missed event 2
        assert b'"n":2' in got[1] and b"id: 2" in got[1]
        hub.publish("post", {"n": 3})
        got = await _take(stream, 1)
        assert b'"n":3' in got[0]
        await stream.aclose()  # type: ignore[attr-defined]
        assert not hub.subscribers

    trio.run(main)


def test_a_page_too_far_behind_is_told_to_reload() -> None:
    async def main() -> None:
        hub = LiveHub()
        for i in range(RING + 5):
            hub.publish("post", {"n": i})
        stream = hub.stream(1)
        got = await _take(stream, 2)
        assert b"event: reload" in got[1]
        await stream.aclose()  # type: ignore[attr-defined]

    trio.run(main)


def test_a_stalled_page_is_dropped_not_buffered() -> None:
    async def main() -> None:
        hub = LiveHub()
        stream = hub.stream(None)
        await _take(stream, 1)  # subscribed
        for i in range(QUEUE + 10):
            hub.publish("post", {"n": i})
        assert not hub.subscribers and hub.stats["dropped_slow"] == 1
        await stream.aclose()  # type: ignore[attr-defined]

    trio.run(main)


def test_subscribers_are_capped() -> None:
    async def main() -> None:
        hub = LiveHub()
        streams = [hub.stream(None) for _ in range(MAX_SUBSCRIBERS + 3)]
        for stream in streams:
            await _take(stream, 1)
        assert len(hub.subscribers) == MAX_SUBSCRIBERS
        assert hub.stats["dropped_over_cap"] == 3
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]

    trio.run(main)


def test_a_page_numbered_by_an_earlier_run_is_told_to_reload() -> None:
    async def main() -> None:
        hub = LiveHub()
        hub.publish("post", {"n": 1})
        stream = hub.stream(5000)  # a tab that saw event 5000 of the node's previous run
        got = await _take(stream, 2)
        assert b"event: reload" in got[1]
        await stream.aclose()  # type: ignore[attr-defined]

    trio.run(main)


def test_a_cursor_past_sqlite_integers_is_no_cursor() -> None:
    key = bytes(range(32))
    assert parse_cursor(f"{2**63}.{key.hex()}.1") is None
    assert parse_cursor(f"5.{key.hex()}.{2**70}") is None
    assert parse_cursor(f"-1.{key.hex()}.1") is None
