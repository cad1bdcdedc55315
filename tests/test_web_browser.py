"""The web app in a real browser: headless chromium (Playwright) against real nodes.

Three ``p2pblog run`` processes on 127.0.0.1 with ``--web 127.0.0.1:0``: alice (A),
bob (B, follows A and C) and carol (C).  One browser serves the whole module; each
test opens signed-in contexts through ``p2pblog open --print`` links, as a user
would, and asserts what the page shows.  Tests run in file order and build on
each other's posts (the nodes are shared), so each one names the posts it made.

Without chromium or Playwright the module skips locally, and fails when the
environment variable CI is set (``.ci/run`` installs chromium).  With
``P2PBLOG_SCREENSHOTS=1`` it also writes docs/screenshots/timeline.png and node.png.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.browser import CHROMIUM_ARGS
from tests.nodes import NodeProcess, cli_json, run, start_node, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Milliseconds a page waits for something live (replication, DHT) before failing.
LIVE_MS = 15_000
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}: the browser tests must run in CI (.ci/run installs chromium)", pytrace=False)
    pytest.skip(why)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _missing("chromium is not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


@dataclass
class Web:
    """One node and its web app."""

    name: str
    node: NodeProcess
    origin: str

    @property
    def home(self) -> Path:
        return self.node.home

    @property
    def handle(self) -> str:
        return self.node.handle

    def link(self) -> str:
        url = run(self.home, "open", "--print")
        assert url.startswith(self.origin + "/login?t="), url
        return url


@dataclass
class Net:
    a: Web
    b: Web
    c: Web
    browser: Any
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def context(self, web: Web | None, **options: Any) -> Any:
        """A new browser context, signed in to web's app unless web is None."""
        ctx = self.browser.new_context(**options)
        ctx.set_default_timeout(LIVE_MS)
        ctx.on("page", self._watch)
        if web is not None:
            page = ctx.new_page()
            response = page.goto(web.link())
            assert response is not None and response.ok, response and response.status
            assert page.url == web.origin + "/"
            page.close()
        return ctx

    def page(self, web: Web, path: str = "/", **options: Any) -> Any:
        page = self.context(web, **options).new_page()
        page.goto(web.origin + path)
        return page

    def _watch(self, page: Any) -> None:
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text} ({page.url})"))
        page.on("pageerror", lambda e: self.page_errors.append(f"{e} ({page.url})"))


def _origin(node: NodeProcess) -> str:
    url = run(node.home, "open", "--print")
    return url.split("/login", 1)[0]


def api_post(page: Any, text: str, reply_to: str | None = None) -> str:
    """Post text through the page's own app (as app.js does), from inside the page; its id."""
    doc = page.evaluate(
        """async ([text, replyTo]) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const fields = {text};
            if (replyTo) fields.reply_to = replyTo;
            const r = await fetch("/post", {method: "POST", body: new URLSearchParams(fields),
                headers: {"Accept": "application/json", "X-CSRF-Token": csrf}});
            return await r.json();
        }""",
        [text, reply_to],
    )
    assert doc["ok"], doc
    return str(doc["id"])


def until(page: Any, expression: str, timeout: float = LIVE_MS / 1000) -> None:
    """Wait until expression is true in page.  (Not ``wait_for_function``: its polling
    evaluates a string, which the app's Content-Security-Policy rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.03)


def live(page: Any) -> None:
    """Wait until page's event stream is open (live updates reach it from now on)."""
    until(page, "document.body.dataset.live === 'open'")


def submit(page: Any, button: Any) -> None:
    """Click a form's submit button and check the page it leads to is not an error."""
    with page.expect_navigation(timeout=5000) as navigation:
        button.click()
    response = navigation.value
    assert response is not None and response.ok, (
        f"{response.status} {response.url}: {page.inner_text('body')}"
    )


def mark_page(page: Any) -> None:
    """Leave a marker in the page's window: it is gone if the page navigates."""
    page.evaluate("window.__still = 'same page'")


def same_page(page: Any) -> bool:
    return bool(page.evaluate("window.__still === 'same page'"))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright is not installed ({exc})")
    executable = _chromium()
    root = tmp_path_factory.mktemp("web")
    started: list[NodeProcess] = []
    try:
        for name in ("alice", "bob", "carol"):
            run(root / name, "init", "--name", name)
        a = start_node(root / "alice", "--web", "127.0.0.1:0")
        started.append(a)
        b = start_node(root / "bob", "--web", "127.0.0.1:0", "--bootstrap", a.bootstrap)
        started.append(b)
        c = start_node(root / "carol", "--web", "127.0.0.1:0", "--bootstrap", a.bootstrap)
        started.append(c)
        webs = [Web(n, p, _origin(p)) for n, p in zip(("alice", "bob", "carol"), started, strict=True)]
        run(b.home, "follow", a.handle)
        run(b.home, "follow", c.handle)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                yield Net(*webs, browser=browser)
            finally:
                browser.close()
    finally:
        for node in started:
            node.stop()


# --- sign-in -----------------------------------------------------------------------------------


def test_the_login_link_signs_in_once_and_nothing_answers_without_it(net: Net) -> None:
    link = net.a.link()
    ctx = net.context(None)
    page = ctx.new_page()
    page.goto(link)
    assert page.url == net.a.origin + "/"
    assert page.locator("h1").inner_text() == "Home"
    assert page.locator("#timeline").count() == 1
    assert page.locator("#compose-text").is_visible()
    ctx.close()

    stranger = net.context(None)
    page = stranger.new_page()
    response = page.goto(link)  # the same link, a second time
    assert response is not None and response.status == 401
    assert page.locator("h1").inner_text() == "Not signed in"
    assert "already used or has expired" in page.locator("p.error").inner_text()
    for path in ("/", "/node"):
        response = page.goto(net.a.origin + path)
        assert response is not None and response.status == 401, path
        assert page.locator("h1").inner_text() == "Not signed in"
        assert page.locator("#timeline, #replicas").count() == 0
    response = stranger.request.get(net.a.origin + "/api/unread")
    assert response.status == 401
    assert "unread" not in response.json()
    stranger.close()


def test_screenshots_of_a_timeline_and_the_node_page(net: Net) -> None:
    if os.environ.get("P2PBLOG_SCREENSHOTS") != "1":
        pytest.skip("set P2PBLOG_SCREENSHOTS=1 to write docs/screenshots/")
    posts = [
        (net.a, "Just set up my p2pblog node. Every post is signed and hash-chained; #p2pblog"),
        (net.c, "Carol here, reading my timeline in the web app. It works with JavaScript off too."),
        (net.a, "Followers keep a copy of my feed, so it stays readable while my laptop sleeps."),
        (net.c, "Names are not unique: the Follow page shows every claimant side by side."),
    ]
    ids = []
    for web, text in posts:
        page = net.page(web)
        ids.append(api_post(page, text))
        page.context.close()
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    b = net.page(net.b, viewport={"width": 900, "height": 720}, color_scheme="light")
    for post_id in ids:
        b.locator(f"#p-{post_id}").wait_for()
    b.reload()
    b.screenshot(path=str(out / "timeline.png"))
    # The node page once B knows whether peers can dial it back (a few seconds after start).
    for _ in range(100):
        b.goto(net.b.origin + "/node")
        if "not checked yet" not in b.locator("#reachability").inner_text():
            break
        b.wait_for_timeout(200)
    b.screenshot(path=str(out / "node.png"), full_page=True)
    b.context.close()


# --- posting and live updates ------------------------------------------------------------------


def test_a_post_made_on_a_page_appears_live_on_the_followers_open_page(net: Net) -> None:
    a = net.page(net.a)
    b = net.page(net.b)
    live(b)
    mark_page(b)
    count = a.locator("#compose-count")
    assert count.inner_text() == "500 characters left"
    a.locator("#compose-text").press_sequentially("Hello from alice, live")
    assert count.inner_text() == "478 characters left"
    a.locator("#compose-text").fill("x" * 503)
    assert count.inner_text() == "3 characters too many"
    assert a.locator("#compose button[type=submit]").is_disabled()
    a.locator("#compose-text").fill("Hello from alice, live")
    a.locator("#compose button[type=submit]").click()
    mine = a.locator("#timeline article.post", has_text="Hello from alice, live")
    mine.wait_for()
    assert a.locator("#compose-text").input_value() == ""
    assert count.inner_text() == "500 characters left"
    post_id = mine.get_attribute("data-id")
    b.locator(f"#p-{post_id}").wait_for()
    assert "Hello from alice, live" in b.locator(f"#p-{post_id} .text").inner_text()
    assert b.locator(f"#p-{post_id} .name").inner_text() == "alice"
    assert same_page(b), "B's page navigated instead of inserting the post"
    a.context.close()
    b.context.close()


def test_a_post_made_on_the_page_can_be_deleted_without_reload(net: Net) -> None:
    a = net.page(net.a)
    a.locator("#compose-text").fill("posted, then thought better of it")
    a.locator("#compose button[type=submit]").click()
    mine = a.locator("#timeline article.post", has_text="posted, then thought better of it")
    mine.wait_for()
    assert mine.locator("button", has_text="Delete").count() == 1
    a.context.close()


@pytest.mark.parametrize("width", [800, 375])
def test_posts_wait_behind_a_new_posts_button_while_the_reader_is_scrolled_down(net: Net, width: int) -> None:
    a = net.page(net.a)
    for i in range(8):
        api_post(a, f"filler post {i} to make the page long enough to scroll ({width})")
    b = net.page(net.b, viewport={"width": width, "height": 500})
    b.locator(
        "#timeline article.post", has_text=f"filler post 7 to make the page long enough to scroll ({width})"
    ).wait_for()
    live(b)
    mark_page(b)
    b.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    until(b, "window.scrollY > 200")
    first = api_post(a, "new while bob reads older posts (1)")
    second = api_post(a, "new while bob reads older posts (2)")
    button = b.locator("#new-posts")
    until(b, "document.getElementById('new-posts').textContent === '2 new posts'")
    assert button.is_visible()
    box = button.bounding_box()
    assert box is not None
    on_top = b.evaluate(
        "([x, y]) => document.elementFromPoint(x, y)?.id", [box["x"] + box["width"] / 2, box["y"] + 2]
    )
    assert on_top == "new-posts", f"the button is covered by {on_top!r}"  # e.g. by the sticky header
    assert b.locator(f"#p-{first}, #p-{second}").count() == 0  # nothing jumps under the reader
    button.click()
    b.locator(f"#p-{second}").wait_for()
    assert b.locator(f"#p-{first}").count() == 1
    assert button.is_hidden()
    assert b.evaluate("window.scrollY") < 80
    ids = b.locator("#timeline > article.post").evaluate_all("els => els.map(e => e.dataset.id)")
    assert ids[:2] == [second, first]  # newest first
    assert same_page(b)
    a.context.close()
    b.context.close()


def test_many_tabs_of_the_app_all_load_and_all_update_live(net: Net) -> None:
    # A browser opens 6 connections per host; an event stream per tab would hold them all.
    ctx = net.context(net.b)
    tabs = []
    for _ in range(8):
        tab = ctx.new_page()
        response = tab.goto(net.b.origin + "/", timeout=5000)
        assert response is not None and response.ok
        tabs.append(tab)
    for tab in tabs:
        live(tab)
    a = net.page(net.a)
    shared = api_post(a, "one post, eight tabs")
    for tab in tabs:
        tab.locator(f"#p-{shared}").wait_for()
    tabs[0].close()  # the tab holding the stream: another takes over
    later = api_post(a, "and still live after the first tab closed")
    for tab in tabs[1:]:
        tab.locator(f"#p-{later}").wait_for()
    a.context.close()
    ctx.close()


def test_a_reply_from_the_thread_page_shows_in_the_thread(net: Net) -> None:
    a = net.page(net.a)
    root = api_post(a, "what do you think of trio?")
    a.context.close()
    b = net.page(net.b)
    b.locator(f"#p-{root}").wait_for()
    b.locator(f"#p-{root} a.action", has_text="Reply").click()
    b.wait_for_url(f"**/post/{root}#reply")
    assert b.locator(".focus .post .text").inner_text() == "what do you think of trio?"
    assert b.locator("h2", has_text="Replies (0)").is_visible()
    text = b.locator("#compose-text")
    assert text.input_value() == net.a.handle + " "  # the reply starts with its author's handle
    text.fill("structured concurrency is great")
    b.locator("#compose button[type=submit]").click()
    reply = b.locator(".replies .post", has_text="structured concurrency is great")
    reply.wait_for()
    assert b.locator("h2", has_text="Replies (1)").is_visible()
    assert reply.locator(".name").inner_text() == "bob"
    b.context.close()


def test_mention_completion_offers_followed_people_by_name(net: Net) -> None:
    b = net.page(net.b)
    text = b.locator("#compose-text")
    text.press_sequentially("thanks @ali")
    option = b.locator("#complete li[role=option]", has_text="alice")
    option.wait_for()
    assert b.locator("#complete li").count() == 1  # carol does not start with "ali"
    assert option.get_attribute("aria-selected") == "true"
    assert text.get_attribute("aria-activedescendant") == "complete-0"
    text.press("Enter")
    assert text.input_value() == f"thanks {net.a.handle} "
    assert b.locator("#complete").is_hidden()
    assert b.locator("#compose-count").inner_text() == f"{500 - len(text.input_value())} characters left"
    text.press_sequentially("and @zz")
    b.wait_for_timeout(300)
    assert b.locator("#complete").is_hidden()  # nobody matches: no empty list
    b.context.close()


def test_the_node_page_counts_replicas_on_demand(net: Net) -> None:
    b = net.page(net.b, "/node")
    assert net.b.handle in b.locator(".facts").inner_text()
    assert b.locator("#replicas tr[data-handle]").count() >= 2
    assert "not searched" in b.locator("#replicas .providers").all_inner_texts()  # our own feed
    b.locator("#count-replicas").click()
    b.locator("#replicas-status", has_text="updated").wait_for()
    cells = b.locator("#replicas .providers").all_inner_texts()
    assert cells and all(c.isdigit() for c in cells), cells
    row = b.locator(f"#replicas tr[data-handle='{net.a.handle}']")
    assert row.locator(".connected").inner_text() == "1"
    assert b.locator("#count-replicas").is_enabled()
    b.context.close()


@pytest.fixture(scope="module")
def searchable(net: Net) -> str:
    """A post of A's, held by B, with the word "kademlia": its id."""
    a = net.page(net.a)
    post_id = api_post(a, "Lookups converge by Kademlia distance, one bucket at a time.")
    a.context.close()
    b = net.page(net.b)
    b.locator(f"#p-{post_id}").wait_for()
    b.context.close()
    return post_id


def test_search_marks_the_matching_word(net: Net, searchable: str) -> None:
    b = net.page(net.b)
    b.locator("nav a", has_text="Search").click()
    b.locator("#search-q").fill("kademlia")
    b.locator("#search-q").press("Enter")
    b.wait_for_url("**/search?q=kademlia")
    hit = b.locator(f"#p-{searchable}")
    assert "converge by" in hit.locator(".text").inner_text()
    assert hit.locator(".text mark").all_inner_texts() == ["Kademlia"]
    assert b.locator("h2", has_text="1 result").is_visible()
    b.context.close()


def test_search_results_show_the_posts_and_nothing_else(net: Net, searchable: str) -> None:
    b = net.page(net.b, "/search?q=kademlia")
    assert b.locator(f"#p-{searchable}").is_visible()
    assert "PostView(" not in b.locator("main").inner_text()
    assert b.locator(".timeline article.post .snippet").count() == 0
    b.context.close()


def test_tags_links_and_mentions_in_a_post_are_links(net: Net) -> None:
    a = net.page(net.a)
    post_id = api_post(a, f"#webtest see https://example.org/a?b=1 with {net.c.handle}")
    a.context.close()
    b = net.page(net.b)
    text = b.locator(f"#p-{post_id} .text")
    text.wait_for()
    assert text.locator("a.mention").inner_text() == "@carol"  # bob follows carol: her name
    assert text.locator("a.mention").get_attribute("href") == f"/u/{net.c.handle}"
    link = text.locator("a[rel~=nofollow]")
    assert link.get_attribute("href") == "https://example.org/a?b=1"
    assert "noopener" in (link.get_attribute("rel") or "")
    text.locator("a.tag").click()
    b.wait_for_url("**/search?q=%23webtest")
    assert b.locator("#search-q").input_value() == "#webtest"
    assert b.locator(f"#p-{post_id}").is_visible()
    b.context.close()


# --- names, follow, block ----------------------------------------------------------------------


def test_a_name_is_claimed_on_the_names_page_with_its_progress(net: Net) -> None:
    c = net.page(net.c, "/names")
    c.locator("#claim-name").fill("cee")
    submit(c, c.locator("#claim-form button[type=submit]"))
    c.wait_for_url("**/names")
    job = c.locator("#claim-job")
    assert job.get_attribute("data-state") in ("working", "publishing", "done")
    c.locator("table.list td.mono", has_text="cee~").wait_for()  # app.js reloads when done
    assert "claimed 'cee'" in c.locator("#claim-job p").inner_text()
    c.context.close()


def sam_cards(net: Net, page: Any) -> Any:
    """Search "sam" on page's Follow page until both claims resolve: the cards."""

    def two_cards() -> bool:
        page.goto(net.a.origin + "/follow")
        page.locator("#follow-q").fill("sam")
        page.locator("#follow-q").press("Enter")
        page.wait_for_url("**/follow?q=sam")
        return bool(page.locator(".cards.conflict section.card").count() == 2)

    assert wait_for(two_cards, timeout=15, interval=0.5), page.locator("main").inner_text()
    return page.locator("section.card")


def test_a_name_two_keys_claim_shows_both_side_by_side_and_follows_neither(net: Net) -> None:
    run(net.b.home, "name", "claim", "sam")
    run(net.c.home, "name", "claim", "sam")
    a = net.page(net.a, "/follow")
    assert a.locator("h2", has_text="Following (0)").is_visible()
    cards = sam_cards(net, a)
    assert "2 keys claim the name 'sam': not guessing" in a.locator("p[role=status]").inner_text()
    assert cards.filter(has_text=net.b.handle).count() == 1
    assert cards.filter(has_text=net.c.handle).count() == 1
    boxes = [cards.nth(i).bounding_box() for i in range(2)]
    assert boxes[0] is not None and boxes[1] is not None
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] != boxes[1]["x"]  # side by side
    assert a.locator("h2", has_text="Following (0)").is_visible()  # nothing followed yet
    assert cards.locator("button", has_text="Follow").count() == 2
    assert cards.locator("p.meta", has_text="Following.").count() == 0
    status = cli_json(net.a.home, "status")
    assert isinstance(status, dict)
    followed = {feed["handle"] for feed in status["feeds"] if not feed["own"]}
    assert not followed & {net.b.handle, net.c.handle}, followed
    a.context.close()


def test_following_one_claimant_by_its_card(net: Net) -> None:
    a = net.page(net.a, "/follow")
    cards = sam_cards(net, a)
    carol = cards.filter(has_text=net.c.handle)
    submit(a, carol.locator("button", has_text="Follow"))
    a.wait_for_url("**/u/*")
    assert net.c.handle in a.locator(".profile .handle").inner_text()
    assert a.locator(".actions button", has_text="Unfollow").is_visible()
    a.goto(net.a.origin + "/follow")
    assert a.locator("h2", has_text="Following (1)").is_visible()
    assert a.locator(f"ul.people a[href='/u/{net.c.handle}']").count() == 1
    a.context.close()


def test_blocking_from_a_profile_hides_the_authors_posts(net: Net) -> None:
    c = net.page(net.c)
    carols = api_post(c, "carol's post that bob will stop seeing")
    c.context.close()
    b = net.page(net.b)
    b.locator(f"#p-{carols}").wait_for()
    b.locator(f"#p-{carols} a.who").click()
    b.wait_for_url(f"**/u/{net.c.handle}")
    submit(b, b.locator(".actions button", has_text="Block"))
    b.wait_for_url(f"**/u/{net.c.handle}")
    assert b.locator(".actions button", has_text="Unblock").is_visible()
    assert b.locator(".actions button", has_text="Block").filter(has_not_text="Unblock").count() == 0
    assert "Blocked" in b.locator(".profile p.note").inner_text()
    b.goto(net.b.origin + "/")
    assert b.locator("#timeline article.post").count() > 0
    assert b.locator(f"#p-{carols}").count() == 0
    assert b.locator("#timeline .name", has_text="carol").count() == 0
    b.context.close()


# --- delete, mentions --------------------------------------------------------------------------


def test_deleting_an_own_post_asks_and_followers_see_it_retracted(net: Net) -> None:
    a = net.page(net.a)
    doomed = api_post(a, "a post alice regrets")
    b = net.page(net.b)
    b.locator(f"#p-{doomed}").wait_for()
    live(b)
    mark_page(b)
    a.reload()
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    a.on("dialog", answer)
    submit(a, a.locator(f"#p-{doomed} button", has_text="Delete"))
    a.locator(f"#p-{doomed} .text", has_text="(deleted by its author)").wait_for()
    assert asked and asked[0].startswith("Delete this post?")
    assert a.locator(f"#p-{doomed} button", has_text="Delete").count() == 0
    assert "a post alice regrets" not in a.locator("#timeline").inner_text()
    b.locator(f"#p-{doomed} .text", has_text="(deleted by its author)").wait_for()
    assert "a post alice regrets" not in b.locator("#timeline").inner_text()
    assert same_page(b)
    a.context.close()
    b.context.close()


def test_an_unread_mention_shows_in_the_title_and_badge_until_mentions_is_visited(net: Net) -> None:
    b = net.page(net.b)
    live(b)
    mark_page(b)
    assert not b.title().startswith("(")
    assert b.locator("#unread").is_hidden()
    a = net.page(net.a)
    api_post(a, f"hey {net.b.handle}, did you see this?")
    a.context.close()
    until(b, "document.title.startsWith('(1) ')")
    assert b.locator("#unread").is_visible()
    assert b.locator("#unread").inner_text() == "1"
    assert same_page(b)
    b.locator("nav a", has_text="Mentions").click()
    b.wait_for_url("**/mentions")
    assert b.locator(".unread .post", has_text="did you see this?").is_visible()
    assert b.locator("#unread").is_hidden()
    assert b.title() == "Mentions · p2pblog"
    b.goto(net.b.origin + "/")
    assert b.locator("#unread").is_hidden()
    assert not b.title().startswith("(")
    b.context.close()


# --- security ----------------------------------------------------------------------------------


def test_markup_in_a_post_is_shown_as_text_and_never_runs(net: Net) -> None:
    b = net.page(net.b)
    live(b)
    a = net.page(net.a)
    evil = api_post(a, XSS)
    a.context.close()
    b.locator(f"#p-{evil}").wait_for()  # inserted live
    assert b.locator(f"#p-{evil} .text").inner_text() == XSS
    assert b.locator(f"#p-{evil} script, #p-{evil} img").count() == 0
    b.reload()  # and rendered by the server
    assert b.locator(f"#p-{evil} .text").inner_text() == XSS
    assert b.locator(f"#p-{evil} script, #p-{evil} img").count() == 0
    b.wait_for_timeout(300)
    assert b.evaluate("typeof window.__pwned") == "undefined"
    b.context.close()


class _Attacker(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>cute cats</title>"
            f'<form id="f" method="post" action="{self.target}/post">'
            '<input name="text" value="forged by another origin">'
            '<input name="csrf" value="guessed"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    handler = type("Handler", (_Attacker,), {"target": target})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_form_on_another_origin_cannot_post(net: Net) -> None:
    ctx = net.context(net.a)  # signed in: the browser holds A's session cookie
    page = ctx.new_page()
    with attacker_site(net.a.origin) as evil, page.expect_response(net.a.origin + "/post") as answer:
        page.goto(evil)
    assert answer.value.status in (401, 403)
    page.goto(net.a.origin + "/")
    assert page.locator("article.post", has_text="forged").count() == 0
    texts = [str(item.get("text")) for item in cli_json(net.a.home, "timeline", "--limit", "200")]  # type: ignore[union-attr]
    assert texts and not any("forged" in t for t in texts)
    ctx.close()


# --- without JavaScript, on a phone ------------------------------------------------------------


def test_pages_read_without_javascript(net: Net, searchable: str) -> None:
    page = net.page(net.b, java_script_enabled=False)
    assert page.locator(f"#timeline #p-{searchable}").is_visible()
    assert "Kademlia distance" in page.locator(f"#p-{searchable} .text").inner_text()
    page.locator(f"#p-{searchable} a.who").click()
    assert page.locator(f"#p-{searchable}").is_visible()  # on alice's profile
    assert page.locator(".profile .handle").inner_text() == net.a.handle
    page.goto(net.b.origin + "/search?q=kademlia")
    assert page.locator(f"#p-{searchable} mark").inner_text() == "Kademlia"
    page.goto(net.b.origin + f"/post/{searchable}")
    assert page.locator(".focus .post .text").inner_text().startswith("Lookups converge")
    page.context.close()


def test_a_form_post_works_without_javascript(net: Net) -> None:
    page = net.page(net.a, java_script_enabled=False)
    page.locator("#compose-text").fill("posted with scripts off")
    submit(page, page.locator("#compose button[type=submit]"))
    page.wait_for_url(net.a.origin + "/")
    assert page.locator("#timeline article.post", has_text="posted with scripts off").is_visible()
    page.context.close()


@pytest.fixture(scope="module")
def phone_post(net: Net) -> str:
    """A post of A's with long unbreakable parts, held by B: its id."""
    a = net.page(net.a)
    post_id = api_post(a, f"read on a phone: {net.a.handle} https://example.org/{'long-path-' * 8}")
    a.context.close()
    b = net.page(net.b)
    b.locator(f"#p-{post_id}").wait_for()
    b.context.close()
    return post_id


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_buttons_are_readable_in_both_colour_schemes(net: Net, scheme: str) -> None:
    a = net.page(net.a, color_scheme=scheme)
    api_post(a, f"a post with a Delete button ({scheme})")
    a.reload()
    styles = """el => { const s = getComputedStyle(el); return [s.color, s.backgroundColor]; }"""
    delete = a.locator("#timeline article.post button", has_text="Delete").first
    color, background = delete.evaluate(styles)
    assert background == "rgba(0, 0, 0, 0)", f"Delete is {color} on {background}"
    for button in [a.locator("#compose button[type=submit]"), a.locator("footer.foot button")]:
        color, background = button.evaluate(styles)
        assert color != background, (color, background)
    a.context.close()
    b = net.page(net.b, f"/u/{net.c.handle}", color_scheme=scheme)
    block = b.locator(".actions button", has_text="Block")
    if block.count():  # before bob blocks carol
        color, background = block.evaluate(styles)
        assert color != background and background != "rgba(0, 0, 0, 0)", (color, background)
    b.context.close()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/node",
        "/follow?q=sam",
        "/names",
        "/petnames",
        "/mentions",
        "/messages",
        "CONVERSATION",
        "PROFILE",
        "THREAD",
        "/search?q=phone",
    ],
)
def test_a_phone_sized_viewport_needs_no_horizontal_scrolling(net: Net, phone_post: str, path: str) -> None:
    path = {
        "PROFILE": f"/u/{net.a.handle}",
        "THREAD": f"/post/{phone_post}",
        "CONVERSATION": f"/messages/{net.a.handle}",
    }.get(path, path)
    page = net.page(net.b, path, viewport={"width": 375, "height": 667}, is_mobile=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{path} is {width} px wide"
    if path == "/":
        assert page.locator("#compose-text").is_visible()
        box = page.locator("#compose-text").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        assert page.locator("#timeline article.post").first.is_visible()
        assert page.locator("#compose button[type=submit]").is_visible()
    page.context.close()


def test_signing_out_ends_the_session(net: Net) -> None:
    page = net.page(net.c)
    with page.expect_navigation():
        page.locator("footer button", has_text="Sign out").click()
    page.goto(net.c.origin + "/")
    assert page.locator("h1").inner_text() == "Not signed in"
    page.context.close()


def test_no_csp_violations_or_script_errors_in_normal_use(net: Net) -> None:
    violations = [m for m in net.console if re.search(r"Content.Security.Policy|Refused to", m, re.I)]
    assert not violations, "\n".join(violations)
    assert not net.page_errors, "\n".join(net.page_errors)


def test_the_console_stays_quiet(net: Net) -> None:
    # Failed loads are the refusal tests' 401s and 403s (and a favicon of a plain-text page).
    noise = [m for m in net.console if m.startswith("error:") and "Failed to load resource" not in m]
    assert not noise, "\n".join(noise)
