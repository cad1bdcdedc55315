"""The web app over HTTP, against real ``p2pblog run`` processes on 127.0.0.1.

(The same pages in a real browser: `tests/test_web_browser.py`.)"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import feedparser
import pytest

from identity import decode_handle, fingerprint
from tests.nodes import NodeProcess, cli_json, run, start_node, wait_for
from tests.nodes import status as node_status
from tests.process import p2pblog

pytestmark = pytest.mark.slow


@dataclass
class Browser:
    """A minimal HTTP client with one cookie, like one browser signed in to the app."""

    origin: str
    cookie: str | None = None
    csrf: str = ""
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.origin)
        self.host, self.port = parsed.hostname or "", parsed.port or 80

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        cookie: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            sent = {"Host": f"{self.host}:{self.port}", **(headers or {})}
            if cookie and self.cookie:
                sent["Cookie"] = self.cookie
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
            if "set-cookie" in got:
                self.cookie = got["set-cookie"].split(";")[0]
            return response.status, got, data
        finally:
            conn.close()

    def get(self, path: str, **kwargs: object) -> tuple[int, dict[str, str], str]:
        status, headers, data = self.request("GET", path, **kwargs)  # type: ignore[arg-type]
        if status == 200 and "csrf-token" in data.decode(errors="replace"):
            found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', data.decode())
            if found:
                self.csrf = found.group(1)
        return status, headers, data.decode(errors="replace")

    def post(
        self,
        path: str,
        fields: dict[str, str],
        *,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
        json_reply: bool = False,
    ) -> tuple[int, dict[str, str], str]:
        form = dict(fields)
        if csrf:
            form["csrf"] = self.csrf
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if json_reply:
            sent["Accept"] = "application/json"
        status, got, data = self.request("POST", path, urllib.parse.urlencode(form).encode(), sent)
        return status, got, data.decode(errors="replace")


def sign_in(node: NodeProcess) -> Browser:
    url = run(node.home, "open", "--print")
    parsed = urllib.parse.urlsplit(url)
    browser = Browser(f"{parsed.scheme}://{parsed.netloc}")
    status, headers, _ = browser.request("GET", f"{parsed.path}?{parsed.query}")
    assert status == 303, status
    assert headers["location"] == "/"
    status, _, page = browser.get("/")
    assert status == 200 and "Home" in page
    return browser


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    root = tmp_path_factory.mktemp("web")
    run_a = root / "a"
    p2pblog(run_a, "init", "--name", "alice")
    a = start_node(run_a, "--web", "127.0.0.1:0")
    b = None
    try:
        p2pblog(root / "b", "init", "--name", "bob")
        b = start_node(root / "b", "--web", "127.0.0.1:0", "--bootstrap", a.bootstrap)
        yield a, b
    finally:
        a.stop()
        if b is not None:
            b.stop()


@pytest.fixture(scope="module")
def browsers(pair: tuple[NodeProcess, NodeProcess]) -> tuple[Browser, Browser]:
    a, b = pair
    return sign_in(a), sign_in(b)


# --- who may use it ------------------------------------------------------------------------------


def test_every_page_and_api_answers_401_without_the_cookie(browsers: tuple[Browser, Browser]) -> None:
    web, _ = browsers
    stranger = Browser(web.origin)
    for path in (
        "/",
        "/node",
        "/mentions",
        "/messages",
        "/search?q=x",
        "/api/unread",
        "/events",
        "/api/complete?q=a",
    ):
        status, _, _ = stranger.get(path)
        assert status == 401, path
    status, _, body = stranger.get("/")
    assert "p2pblog open" in body
    # A made-up cookie is no better.
    status, _, _ = Browser(web.origin, cookie="p2pblog_session=guess").get("/")
    assert status == 401
    # The assets are not secret.
    assert stranger.get("/static/style.css")[0] == 200


def test_a_sign_in_link_works_once_and_sets_a_strict_httponly_cookie(
    pair: tuple[NodeProcess, NodeProcess],
) -> None:
    a, _ = pair
    url = run(a.home, "open", "--print")
    parsed = urllib.parse.urlsplit(url)
    first = Browser(f"{parsed.scheme}://{parsed.netloc}")
    status, headers, _ = first.request("GET", f"{parsed.path}?{parsed.query}")
    assert status == 303
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    again = Browser(first.origin)
    status, _, body = again.request("GET", f"{parsed.path}?{parsed.query}")
    assert status == 401 and b"already used or has expired" in body
    assert again.cookie is None


def test_a_request_for_another_host_name_is_refused(browsers: tuple[Browser, Browser]) -> None:
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 must not read ours."""
    web, _ = browsers
    for host in (f"evil.example:{web.port}", "127.0.0.1", f"127.0.0.1:{web.port + 1}"):
        status, _, _ = web.request("GET", "/", headers={"Host": host})
        assert status == 421, host
    # localhost with the port is this machine too.
    assert web.request("GET", "/", headers={"Host": f"localhost:{web.port}"})[0] == 200


def test_state_changes_need_the_csrf_token_and_our_origin(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, _ = pair
    web, _ = browsers
    web.get("/")
    status, _, _ = web.post("/post", {"text": "no token"}, csrf=False)
    assert status == 403
    status, _, _ = web.post("/post", {"text": "wrong token", "csrf": "0" * 64}, csrf=False)
    assert status == 403
    status, _, _ = web.post("/post", {"text": "from evil"}, headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _, _ = web.post("/post", {"text": "cross site"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    texts = [p["text"] for p in cli_json(a.home, "timeline")]  # type: ignore[union-attr]
    assert not {"no token", "wrong token", "from evil", "cross site"} & set(texts)
    status, headers, _ = web.post("/post", {"text": "with the token"}, headers={"Origin": web.origin})
    assert status == 303 and headers["location"] == "/"
    assert "with the token" in [p["text"] for p in cli_json(a.home, "timeline")]  # type: ignore[union-attr]


def test_security_headers_and_no_inline_script_or_style(browsers: tuple[Browser, Browser]) -> None:
    web, _ = browsers
    for path in ("/", "/node", "/mentions", "/follow", "/petnames", "/names", "/search?q=token"):
        status, headers, page = web.get(path)
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), path
        assert not re.search(r"\sstyle=", page), path
        assert not re.search(r"\son[a-z]+=", page), path
        assert "http://" not in re.sub(r'href="[^"]*"|content="[^"]*"', "", page) or path == "/node"


def test_a_request_body_over_the_limit_is_refused(browsers: tuple[Browser, Browser]) -> None:
    web, _ = browsers
    status, _, _ = web.request(
        "POST", "/post", b"x" * (70 * 1024), {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 413


# --- what a user does ----------------------------------------------------------------------------


def _sse_events(
    web: Browser, stop_after: float, since: int | None = None
) -> list[tuple[str, dict[str, object]]]:
    """The events of /events read for stop_after seconds."""
    sock = socket.create_connection((web.host, web.port), timeout=stop_after)
    path = "/events" + (f"?since={since}" if since is not None else "")
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {web.host}:{web.port}\r\nCookie: {web.cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    data = b""
    deadline = time.monotonic() + stop_after
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    events = []
    for block in data.decode(errors="replace").split("\n\n"):
        name = re.search(r"^event: (\S+)$", block, re.M)
        payload = re.search(r"^data: (.*)$", block, re.M)
        if name and payload:
            events.append((name.group(1), json.loads(payload.group(1))))
    return events


def test_a_post_on_a_reaches_the_open_page_of_follower_b_live(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, b = pair
    web_a, web_b = browsers
    web_b.get("/")
    status, _, _ = web_b.post("/follow", {"handle": a.handle})
    assert status == 303
    assert a.handle in run(b.home, "status", "--json")
    assert wait_for(
        lambda: any(
            p["own"] is False and p["handle"] == a.handle and p["peers"]
            for p in cli_json(b.home, "status")["feeds"]
        ),
        30,
    )  # type: ignore[index]
    got: list[tuple[str, dict[str, object]]] = []
    reader = threading.Thread(target=lambda: got.extend(_sse_events(web_b, 10.0)))
    reader.start()
    time.sleep(1.0)
    web_a.get("/")
    status, _, body = web_a.post("/post", {"text": "live to bob <b>bold</b>"}, json_reply=True)
    assert status == 200
    posted = json.loads(body)
    reader.join()
    posts = [doc for name, doc in got if name == "post" and doc["id"] == posted["id"]]
    assert posts, got
    html = str(posts[0]["html"])
    assert "live to bob &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    # And the page B loads now has it, escaped.
    page = web_b.get("/")[2]
    assert f'id="p-{posted["id"]}"' in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_a_reconnecting_page_gets_what_it_missed(browsers: tuple[Browser, Browser]) -> None:
    web, _ = browsers
    page = web.get("/")[2]
    number = int(re.search(r'data-live="(\d+)"', page).group(1))  # type: ignore[union-attr]
    web.post("/post", {"text": "while the page was away"})
    events = _sse_events(web, 2.0, since=number)
    assert any(name == "post" and "while the page was away" in str(doc["html"]) for name, doc in events)


def test_reply_thread_and_delete(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    _a, _ = pair
    web, _ = browsers
    web.get("/")
    parent = json.loads(web.post("/post", {"text": "a parent post"}, json_reply=True)[2])
    status, headers, _ = web.post("/post", {"text": "a reply to it", "reply_to": parent["id"]})
    assert status == 303 and headers["location"] == f"/post/{parent['id']}"
    status, _, page = web.get(f"/post/{parent['id']}")
    assert status == 200 and "a parent post" in page and "a reply to it" in page
    status, _, _ = web.post("/delete", {"id": parent["id"]})
    assert status == 303
    page = web.get(f"/post/{parent['id']}")[2]
    assert "a parent post" not in page and "(deleted by its author)" in page
    assert web.get("/post/" + "0" * 64)[0] == 404
    assert web.get("/post/nonsense")[0] == 404
    # Deleting another's post, or twice, is a clear refusal, not a crash.
    status, _, body = web.post("/delete", {"id": parent["id"]}, json_reply=True)
    assert status == 400 and json.loads(body)["ok"] is False


def test_search_highlights_and_escapes(browsers: tuple[Browser, Browser]) -> None:
    web, _ = browsers
    web.get("/")
    web.post("/post", {"text": "searching for #marmalade <script>x</script>"})
    status, _, page = web.get("/search?q=%23marmalade")
    assert status == 200
    assert "<mark>#marmalade</mark>" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    status, _, page = web.get("/search?q=" + urllib.parse.quote('"unterminated NEAR('))
    assert status == 200
    assert web.get("/search?q=%20")[0] == 200


def test_mentions_unread_count_clears_when_read(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    _a, b = pair
    web_a, web_b = browsers
    web_b.get("/")
    assert json.loads(web_b.get("/api/unread")[2])["unread"] == 0
    web_a.get("/")
    web_a.post("/post", {"text": f"hello {b.handle}"})
    assert wait_for(lambda: json.loads(web_b.get("/api/unread")[2])["unread"] == 1, 30)
    page = web_b.get("/")[2]
    assert "<title>(1) Home" in page
    assert "hello @bob" in web_a.get("/")[2] or "hello" in web_b.get("/mentions")[2]
    assert json.loads(web_b.get("/api/unread")[2])["unread"] == 0


def test_profile_block_and_petname(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, b = pair
    _, web_b = browsers
    page = web_b.get(f"/u/{a.handle}")[2]
    assert "alice" in page
    web_b.post("/petnames", {"name": "ally", "handle": a.handle, "next": f"/u/{a.handle}"})
    assert "ally" in web_b.get("/petnames")[2]
    assert run(b.home, "petname", "list").count("ally") == 1
    status, _headers, _ = web_b.post("/block", {"handle": a.handle})
    assert status == 303
    page = web_b.get(f"/u/{a.handle}")[2]
    assert "Unblock" in page
    assert a.handle not in {p["author"] for p in cli_json(b.home, "timeline")}  # type: ignore[index, union-attr]
    web_b.post("/unblock", {"handle": a.handle})
    web_b.post("/follow", {"handle": a.handle})
    assert web_b.post("/block", {"handle": "@pb1nottypo"}, json_reply=True)[0] == 400


def test_direct_messages_are_sent_read_live_and_escaped(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, b = pair
    web_a, web_b = browsers
    assert "No messages yet." in web_a.get("/messages")[2]
    got: list[tuple[str, dict[str, object]]] = []
    reader = threading.Thread(target=lambda: got.extend(_sse_events(web_b, 8.0)))
    reader.start()
    time.sleep(1.0)
    status, headers, _ = web_a.post("/messages/send", {"to": b.handle, "text": "psst <i>bob</i>"})
    assert status == 303 and headers["location"] == f"/messages/{b.handle}"
    reader.join()
    assert any(name == "dms" and doc["unread"] == 1 for name, doc in got), got
    page = web_b.get("/messages")[2]
    assert "psst &lt;i&gt;bob&lt;/i&gt;" in page and "<i>bob" not in page
    assert re.search(r'id="dm-unread" class="badge" aria-label="1 unread messages">1<', page), page
    thread = web_b.get(f"/messages/{a.handle}")[2]
    assert "psst &lt;i&gt;bob&lt;/i&gt;" in thread and "A request" not in thread  # B follows A: inbox
    assert 'id="dm-unread" class="badge" hidden' in web_b.get("/messages")[2]  # read now
    assert wait_for(lambda: "delivered" in web_a.get(f"/messages/{b.handle}")[2], 30)
    assert [m["text"] for m in cli_json(b.home, "dm", "read", a.handle)] == ["psst <i>bob</i>"]  # type: ignore[index, union-attr]
    # Refusals: no CSRF token, a recipient that is nobody, empty text.
    assert web_a.post("/messages/send", {"to": b.handle, "text": "x"}, csrf=False)[0] == 403
    assert web_a.post("/messages/send", {"to": "@pb1nottypo", "text": "x"}, json_reply=True)[0] == 400
    assert web_a.post("/messages/send", {"to": b.handle, "text": "  "}, json_reply=True)[0] == 400
    assert web_a.get("/messages/@pb1nobody")[0] == 404


def test_the_node_page_shows_peers_and_replicas(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, _ = pair
    _web_a, web_b = browsers
    page = web_b.get("/node")[2]
    assert "Replicas of the feeds you hold" in page and "Connected peers" in page
    doc = json.loads(web_b.get("/api/replicas?search=1")[2])
    feeds = {f["handle"]: f for f in doc["feeds"]}
    assert a.handle in feeds and feeds[a.handle]["replicas"] >= 1


def test_the_profile_page_shows_who_follows(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, b = pair
    web_a, web_b = browsers
    run(a.home, "post", "a post for followers to hold")
    web_b.post("/follow", {"handle": a.handle})
    # A does not hold B's feed: B is known to it by the provider record B announces.
    page = ""

    def listed() -> bool:
        nonlocal page
        page = web_a.get(f"/u/{a.handle}?search=1")[2]
        return "at least 1 follower (0 from follow entries held here, 1 provider in the DHT" in page

    assert wait_for(listed, 60, interval=2), page
    assert fingerprint(decode_handle(b.handle)) in page and "(DHT provider record)" in page
    assert "peer currently holds a copy" in page or "peers currently hold a copy" in page


def test_atom_feed_parses(pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]) -> None:
    a, _ = pair
    web_a, _ = browsers
    status, headers, body = web_a.get(f"/feeds/{a.handle}.atom")
    assert status == 200 and headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(body)
    assert not feed.bozo
    assert feed.feed.author == "alice"
    assert any(e.content[0].value == "with the token" for e in feed.entries)
    assert all(link.href.startswith(web_a.origin) for e in feed.entries for link in e.links)
    assert web_a.get("/feeds/@pb1nonsense.atom")[0] == 404


def test_name_claim_progress_and_follow_by_contested_name(
    pair: tuple[NodeProcess, NodeProcess], browsers: tuple[Browser, Browser]
) -> None:
    a, b = pair
    web_a, web_b = browsers
    web_a.get("/names")
    status, _, _ = web_a.post("/names/claim", {"name": "sam"})
    assert status == 303
    assert wait_for(lambda: (json.loads(web_a.get("/api/claim")[2]) or {}).get("state") == "done", 60)
    assert "sam~" in web_a.get("/names")[2]
    run(b.home, "name", "claim", "sam")
    page = web_b.get("/follow?q=sam")[2]
    assert page.count('class="card"') == 2
    assert a.handle in page and b.handle in page
    feeds = node_status(b)["feeds"]
    assert isinstance(feeds, list)
    if a.handle in {f["handle"] for f in feeds}:
        # b follows a and calls it "ally" (earlier tests): a is listed first, marked as the one b knows.
        assert "the one you know is marked" in page and "you gave this key a petname" in page
        cards = page.index('class="cards')
        marked = page.index("<strong>The one you know:</strong>", cards)
        assert page.index(a.handle, cards) < marked < page.index(b.handle, cards)
    else:
        assert "not guessing" in page and page.count("a stranger to you") == 2


def test_open_says_what_is_wrong(tmp_path: Path) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init")
    result = p2pblog(home, "open", "--print")
    assert result.returncode == 1 and "not running" in result.stderr
    node = start_node(home)  # --no-web
    try:
        result = p2pblog(home, "open", "--print")
        assert result.returncode == 1 and "without the web app" in result.stderr
    finally:
        node.stop()


def test_an_explicit_web_port_in_use_is_an_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        home = tmp_path / "n"
        p2pblog(home, "init")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pblog",
                "--home",
                str(home),
                "run",
                "--listen",
                "127.0.0.1:0",
                "--web",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert f"web app: cannot listen on 127.0.0.1:{port}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        taken.close()


def test_timeline_follow_prints_new_posts(tmp_path: Path) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init")
    run(home, "post", "before")
    follower = subprocess.Popen(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "timeline", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(follower.stdout.readline())["text"] == "before"  # type: ignore[union-attr]
        run(home, "post", "after")
        assert json.loads(follower.stdout.readline())["text"] == "after"  # type: ignore[union-attr]
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_export_atom(tmp_path: Path) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init", "--name", "carol")
    run(home, "post", "into the feed reader")
    handle = run(home, "id")
    out = tmp_path / "carol.atom"
    run(home, "export", "--atom", handle, str(out))
    feed = feedparser.parse(out.read_bytes())
    assert not feed.bozo and feed.feed.author == "carol"
    assert [e.content[0].value for e in feed.entries] == ["into the feed reader"]
    first_ids = [e.id for e in feed.entries]
    run(home, "export", "--atom", handle, str(out))
    assert [e.id for e in feedparser.parse(out.read_bytes()).entries] == first_ids
