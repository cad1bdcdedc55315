"""The local web app: pages and a small JSON API over the running node.

Theory of operation
-------------------
`WebApp` is an ASGI application (Starlette routes, Jinja2 templates) that
runs in the node's own trio run (`web.server.serve_web`, Hypercorn's trio
worker), so it reads the node's store and calls its commands directly, on
the node's thread, with no second copy of any behaviour:

* **Reads** (timeline, threads, profiles, mentions, search) are the same
  `p2pblog.store.Store` queries the command line runs.
* **Writes** (post, reply, follow, block, delete, profile, name claims) are
  the control API's commands, called in-process (`NodeService.command`): a
  post made in the browser is the post ``p2pblog post`` makes.
* **Live updates**: the app listens to the node's events (entries stored,
  mentions admitted, our own appends) and publishes each new timeline post,
  rendered by the same template as the page, to open pages as server-sent
  events (`web.live`).  Pages insert it without reloading.

Every page is rendered on the server and readable with JavaScript off;
``static/app.js`` adds live updates, posting without reload, the character
counter, mention completion and the name claim's progress.  Text from peers
(posts, names, bios) only ever reaches a page through Jinja2's autoescaping
or `markupsafe.escape`.  Who may use the app is `web.security`'s business.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import trio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from identity import decode_handle, encode_handle
from identity.handle import HandleError, fingerprint
from identity.limits import MAX_POST_CHARS, NAME_CLAIM_MIN_WORK
from identity.records import RecordError, check_name
from p2pblog import actions
from p2pblog.control import CommandFailed
from p2pblog.daemon import Appended, NodeService
from p2pblog.entry import DELETE, POST, Entry, parse_entry_id
from p2pblog.errors import P2PBlogError, StorageFull
from p2pblog.events import TrackedPostFetched
from p2pblog.names import relation_words, witnessed_words
from p2pblog.node import MentionAdmitted
from p2pblog.replication import EntriesStored
from p2pblog.search import MAX_QUERY_CHARS, SearchError
from p2pblog.store import FeedItem, Store, cursor_of, parse_cursor
from p2pblog.targets import TargetError, parse_target, petname_matches, pick_claims, suggested_claim
from p2pblog.track import text_matches, tracked_posts, tracked_terms
from web.atom import atom_feed, feed_path, user_path
from web.live import LiveHub
from web.security import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    LoginLinks,
    Sessions,
    allowed_hosts,
    cookie_header,
)

#: Posts on a page of the timeline, a profile, the mentions.
PAGE: Final = 50
#: Largest request body accepted (a post is at most 500 characters).
MAX_BODY: Final = 64 * 1024
#: New posts of one stored batch published live (a long catch-up sends a reload hint).
LIVE_PER_BATCH: Final = 20
#: Mention-completion answers.
COMPLETIONS: Final = 8
#: Posts a search indexes at most before answering (the node's loop waits meanwhile:
#: about 16 µs a post), and replies a thread page shows at most.
SEARCH_INDEX_STEP: Final = 20_000
MAX_REPLIES: Final = 500
#: Unread mentions counted at most (the page shows "99+").
UNREAD_MAX: Final = 100
SEEN_SETTING: Final = "web.mentions_seen"
#: Followers a profile page lists (then "and N more").
FOLLOWERS_SHOWN: Final = 20
_HERE = Path(__file__).parent
_TOKEN_RE: Final = re.compile(
    r"(@pb1[0-9a-z]{58})(?![0-9a-z])|(#\w{1,64})|(https?://[^\s<>\"']{1,300})", re.I
)


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def handle_path(key: bytes) -> str:
    return user_path(key)


@dataclass(frozen=True, slots=True)
class Person:
    key: bytes
    handle: str
    fingerprint: str
    name: str | None  # petname, else profile name
    petname: str | None
    path: str
    feed: str


@dataclass(frozen=True, slots=True)
class PostView:
    id: str
    seq: int
    author: Person
    own: bool
    time_iso: str
    time_shown: str
    timestamp: int
    text: Markup
    deleted: bool
    reply_to: str | None
    cursor: str


class People:
    """Names for keys, for one request (petnames over profile names)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pets: dict[bytes, str] | None = None
        self._cache: dict[bytes, Person] = {}

    def pets(self) -> dict[bytes, str]:
        if self._pets is None:
            self._pets = {}
            for name, key in self.store.petnames():
                self._pets.setdefault(key, name)
        return self._pets

    def __call__(self, key: bytes) -> Person:
        person = self._cache.get(key)
        if person is None:
            pet = self.pets().get(key)
            name = pet or self.store.profile(key).get("name")
            person = self._cache[key] = Person(
                key, encode_handle(key), fingerprint(key), name, pet, user_path(key), feed_path(key)
            )
        return person


def followers_context(doc: dict[str, Any], people: People) -> dict[str, Any]:
    """The profile page's part for a ``followers`` document: the first `FOLLOWERS_SHOWN`
    followers (person, source) and how many more there are."""
    shown = [(people(decode_handle(f["handle"])), f["source"]) for f in doc["followers"][:FOLLOWERS_SHOWN]]
    return {"followers": doc, "followers_shown": shown, "followers_more": doc["count"] - len(shown)}


def render_text(text: str, people: People) -> Markup:
    """Post text as HTML: escaped, with mentions, hashtags and links made links."""
    out: list[str] = []
    last = 0
    for match in _TOKEN_RE.finditer(text):
        out.append(escape(text[last : match.start()]))
        token = match.group(0)
        if match.group(1):
            try:
                person = people(decode_handle(token))
            except HandleError:
                out.append(escape(token))
            else:
                label = f"@{person.name}" if person.name else f"@{person.fingerprint}"
                out.append(
                    Markup('<a class="mention" href="{}" title="{}">{}</a>').format(
                        person.path, person.handle, label
                    )
                )
        elif match.group(2):
            out.append(Markup('<a class="tag" href="/search?q={}">{}</a>').format(quote(token), token))
        else:
            out.append(Markup('<a href="{}" rel="nofollow noopener noreferrer">{}</a>').format(token, token))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def safe_next(value: Any, default: str = "/") -> str:
    """A local path to go back to (never another origin)."""
    text = str(value or "")
    if text.startswith("/") and not text.startswith("//") and "\\" not in text and len(text) < 500:
        return text
    return default


class Refused(Exception):
    """A request the app refuses with a status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ClaimJob:
    name: str
    work: int
    started: float
    tries: int = 0
    state: str = "working"  # working, publishing, done, failed
    message: str = ""
    cancelled: bool = False

    def doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "work": self.work,
            "tries": self.tries,
            "expected": 2**self.work,
            "state": self.state,
            "message": self.message,
            "seconds": round(time.monotonic() - self.started, 1),
        }


class WebApp:
    def __init__(self, service: NodeService, host: str, port: int) -> None:
        self.service = service
        self.host, self.port = host, port
        self.hosts = allowed_hosts(host, port)
        shown = f"[{host}]" if ":" in host else host
        self.origin = f"http://{shown}:{port}"
        self.links = LoginLinks()
        self.sessions = Sessions()
        self.live = LiveHub()
        self.claim: ClaimJob | None = None
        self.nursery: trio.Nursery | None = None
        self.stats = {"refused.host": 0, "refused.auth": 0, "refused.csrf": 0, "refused.size": 0}
        self.env = Environment(
            loader=FileSystemLoader(str(_HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["max_chars"] = MAX_POST_CHARS
        from web.messages import Messages  # (it imports this module's helpers)

        self.messages = Messages(self)
        self.routes = self._routes()
        self.app = Starlette(routes=self.routes)
        service.listeners.append(self._on_event)
        service.handlers["web_login"] = self._web_login

    # -- sign-in ------------------------------------------------------------------------

    async def _web_login(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return {"url": self.login_link(), "origin": self.origin}

    def login_link(self) -> str:
        """A fresh one-time sign-in link (what `p2pblog open` opens)."""
        return f"{self.origin}/login?t={self.links.new()}"

    # -- ASGI: the checks every request passes -------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS:
                    if name.encode() not in names:
                        headers.append((name.encode(), value.encode()))
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> Response | None:
        if headers.get("host", "").lower() not in self.hosts:
            self.stats["refused.host"] += 1
            return PlainTextResponse("wrong Host: this app answers only at its own address\n", 421)
        try:
            if int(headers.get("content-length") or 0) > MAX_BODY:
                raise ValueError
        except ValueError:
            self.stats["refused.size"] += 1
            return PlainTextResponse("request too large\n", 413)
        path = scope["path"]
        if path.startswith("/static/") or path == "/login":
            return None
        sid = self._cookie(headers.get("cookie", ""))
        if not self.sessions.valid(sid):
            self.stats["refused.auth"] += 1
            if path.startswith(("/api/", "/events")):
                return JSONResponse({"error": "not signed in: run `p2pblog open`"}, 401)
            return HTMLResponse(self._render("signin.html", {}), 401)
        scope.setdefault("state", {})["sid"] = sid
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            if origin == "null" and site == "same-origin":
                origin = None  # a browser's own form POST under a strict referrer policy
            if (origin is not None and origin != self.origin) or site not in (None, "same-origin", "none"):
                self.stats["refused.csrf"] += 1
                return PlainTextResponse("cross-origin request refused\n", 403)
        return None

    @staticmethod
    def _cookie(header: str) -> str | None:
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    # -- routes --------------------------------------------------------------------------

    def _routes(self) -> list[Route | Mount]:
        get = self._page
        change = self._change
        return [
            Route("/login", self.login),
            Route("/", get(self.home)),
            Route("/post/{id}", get(self.thread)),
            Route("/u/{handle}", get(self.profile)),
            Route("/mentions", get(self.mentions)),
            Route("/follow", get(self.follow_page)),
            Route("/petnames", get(self.petnames)),
            Route("/names", get(self.names)),
            Route("/node", get(self.node)),
            Route("/search", get(self.search)),
            Route("/tracked", get(self.tracked)),
            Route("/events", self.events),
            Route("/feeds/{handle}.atom", self.atom),
            Route("/api/complete", self.complete),
            Route("/api/unread", self.unread_api),
            Route("/api/claim", self.claim_api),
            Route("/api/replicas", self.replicas_api),
            Route("/post", change(self.post), methods=["POST"]),
            Route("/delete", change(self.delete), methods=["POST"]),
            Route("/follow", change(self.follow), methods=["POST"]),
            Route("/unfollow", change(self.unfollow), methods=["POST"]),
            Route("/block", change(self.block), methods=["POST"]),
            Route("/unblock", change(self.unblock), methods=["POST"]),
            Route("/profile", change(self.set_profile), methods=["POST"]),
            Route("/petnames", change(self.set_petname), methods=["POST"]),
            Route("/petnames/remove", change(self.remove_petname), methods=["POST"]),
            Route("/names/claim", change(self.start_claim), methods=["POST"]),
            Route("/logout", change(self.logout), methods=["POST"]),
            *self.messages.routes(),
            Route("/track", change(self.track_add), methods=["POST"]),
            Route("/track/remove", change(self.track_remove), methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ]

    def _page(
        self, handler: Callable[[Request, People], Awaitable[tuple[str, dict[str, Any]]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                template, context = await handler(request, People(self.store))
            except Refused as exc:
                return self._error(request, exc.status, str(exc))
            return HTMLResponse(self._render(template, {**self._common(request), **context}))

        return endpoint

    def _change(
        self, handler: Callable[[Request, FormData], Awaitable[tuple[str, dict[str, Any]]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A state-changing endpoint: checks the CSRF token, then answers JSON to scripts
        (``Accept: application/json``) and a redirect to forms."""

        async def endpoint(request: Request) -> Response:
            wants_json = "application/json" in request.headers.get("accept", "")
            try:
                form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_BODY)
            except Exception:
                return self._error(request, 400, "malformed form", wants_json)
            sid = request.scope["state"]["sid"]
            token = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
            if not self.sessions.csrf_ok(sid, token if isinstance(token, str) else None):
                self.stats["refused.csrf"] += 1
                return self._error(request, 403, "missing or wrong CSRF token: reload the page", wants_json)
            try:
                where, doc = await handler(request, form)
            except Refused as exc:
                return self._error(request, exc.status, str(exc), wants_json)
            except (CommandFailed, P2PBlogError, HandleError, TargetError) as exc:
                status = 507 if isinstance(exc, StorageFull) else 400
                return self._error(request, status, str(exc), wants_json)
            if wants_json:
                return JSONResponse({"ok": True, **doc})
            return RedirectResponse(safe_next(form.get("next"), where), 303)

        return endpoint

    def _error(self, request: Request, status: int, message: str, wants_json: bool = False) -> Response:
        if wants_json:
            return JSONResponse({"ok": False, "error": message}, status)
        return HTMLResponse(
            self._render("error.html", {**self._common(request), "status": status, "message": message}),
            status,
        )

    def _render(self, template: str, context: dict[str, Any]) -> str:
        return self.env.get_template(template).render(context)

    @property
    def store(self) -> Store:
        assert self.service.store is not None
        return self.service.store

    @property
    def own(self) -> bytes:
        return self.service.identity.public_key

    def _common(self, request: Request) -> dict[str, Any]:
        sid = request.scope.get("state", {}).get("sid")
        me = People(self.store)(self.own)
        return {
            "me": me,
            "csrf": self.sessions.csrf(sid) if sid else "",
            "unread": self.unread(),
            "dm_unread": self.messages.unread(),
            "path": request.url.path,
            "request_path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }

    # -- helpers ---------------------------------------------------------------------------

    def view(self, item: FeedItem, people: People) -> PostView:
        e = item.entry
        return PostView(
            id=e.id.hex(),
            seq=e.seq,
            author=people(self.store.identity_of(e.author)),  # a device posts as its identity
            own=e.author == self.own,
            time_iso=iso(e.timestamp),
            time_shown=shown_time(e.timestamp),
            timestamp=e.timestamp,
            text=Markup("") if item.deleted else render_text(e.text or "", people),
            deleted=item.deleted,
            reply_to=e.reply_to.hex() if e.reply_to else None,
            cursor=cursor_of(e),
        )

    def post_html(self, item: FeedItem, people: People | None = None, *, csrf: str = "") -> str:
        """A post as the timeline shows it: for every open page (no session's token, so
        no controls that need one), or with ``csrf`` for one session's page."""
        return self.env.get_template("_post.html").render(
            {"p": self.view(item, people or People(self.store)), "csrf": csrf, "live": not csrf}
        )

    def unread(self) -> int:
        seen = int(self.store.setting(SEEN_SETTING) or 0)
        return self.store.mention_count(self.own, after=seen, limit=UNREAD_MAX)

    def _key(self, text: str) -> bytes:
        try:
            return decode_handle(text)
        except HandleError as exc:
            raise Refused(404, f"no such person: {exc}") from None

    # -- pages ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        secret = request.query_params.get("t", "")
        if not self.links.use(secret):
            return HTMLResponse(self._render("signin.html", {"expired": bool(secret)}), 401)
        sid = self.sessions.new()
        response = RedirectResponse("/", 303)
        response.headers.append("set-cookie", cookie_header(sid))
        return response

    async def logout(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del form
        self.sessions.forget(request.scope["state"]["sid"])
        return "/", {}

    async def home(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        before = parse_cursor(request.query_params.get("before"))
        items = self.store.timeline(self.own, limit=PAGE, before=before)
        posts = [self.view(i, people) for i in items]
        reply_to = request.query_params.get("reply")
        return "home.html", {
            "posts": posts,
            "more": posts[-1].cursor if len(posts) == PAGE else None,
            "paged": before is not None,
            "live_number": self.live.number,
            "reply_to": reply_to if reply_to and len(reply_to) == 64 else None,
        }

    async def thread(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        try:
            eid = parse_entry_id(request.path_params["id"])
        except ValueError as exc:
            raise Refused(404, str(exc)) from None
        found = self.store.thread(eid)
        if found is None:
            raise Refused(404, "this post is not held here (yet)")
        depth = {eid: 0}
        replies = []
        for item in found.replies[:MAX_REPLIES]:
            d = depth.get(item.entry.reply_to or b"", 0) + 1
            depth[item.entry.id] = d
            replies.append((min(d, 6), self.view(item, people)))
        return "thread.html", {
            "root": self.view(found.entry, people),
            "ancestors": [self.view(i, people) for i in found.ancestors],
            "replies": replies,
            "missing": found.missing_parent.hex() if found.missing_parent else None,
            "more_replies": max(0, len(found.replies) - MAX_REPLIES),
        }

    async def profile(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        key = self._key(request.path_params["handle"])
        person = people(key)
        profile = self.store.profile(key)
        before = parse_cursor(request.query_params.get("before"))
        items = self.store.feed(key, limit=PAGE, before_seq=before[2] if before else None, kind=POST)
        posts = [self.view(i, people) for i in items]
        blocked = {k for k, _ in self.store.blocks()}
        state = self.store.feed_state(key)
        return "profile.html", {
            **await self._followers(request, key, people),
            "person": person,
            "profile_name": profile.get("name"),
            "bio": profile.get("bio"),
            "posts": posts,
            "own": key == self.own,
            "following": key in self.service.core.following(),
            "blocked": key in blocked,
            "held": state.latest_seq,
            "forked": state.forked_seq is not None,
            "more": posts[-1].cursor if len(posts) == PAGE else None,
        }

    async def _followers(self, request: Request, key: bytes, people: People) -> dict[str, Any]:
        """The profile page's followers (`p2pblog.followers`): a provider search when asked
        (``?search=1``) or never made for this feed, else the node's latest answer."""
        search = request.query_params.get("search") == "1"
        search |= key not in self.service.core.discovery.last_providers
        doc = await self.service.command("followers", {"handle": encode_handle(key), "search": search})
        return followers_context(doc, people)

    async def mentions(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        del request
        items = self.store.mentions(self.own, limit=PAGE)
        seen = int(self.store.setting(SEEN_SETTING) or 0)
        posts = [(i.entry.timestamp > seen, self.view(i, people)) for i in items]
        if items:
            # Not past now: a mention stamped ahead of our clock must not mark later ones read.
            newest = min(max(i.entry.timestamp for i in items), int(time.time() * 1000))
            if newest > seen:
                self.store.set_setting(SEEN_SETTING, str(newest))
                self.live.publish("unread", {"unread": 0})
        return "mentions.html", {"posts": posts}

    async def follow_page(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        query = request.query_params.get("q", "").strip()[:200]
        context: dict[str, Any] = {"q": query, "candidates": [], "message": None}
        following = self.service.core.following()
        context["followed"] = [people(k) for k in sorted(following) if k != self.own]
        if not query:
            return "follow.html", context
        try:
            target = parse_target(query)
        except (TargetError, HandleError) as exc:
            context["message"] = str(exc)
            return "follow.html", context
        candidates: list[dict[str, Any]] = []
        if target.key is not None:
            candidates.append({"person": people(target.key), "how": "handle"})
        else:
            pet = self.store.petname(target.name)
            if petname_matches(target, pet):
                assert pet is not None
                candidates.append({"person": people(pet), "how": "your petname (local; overrides the DHT)"})
            else:
                try:
                    result = await self.service.command("resolve", {"name": target.name})
                except CommandFailed as exc:
                    context["message"] = str(exc)
                    return "follow.html", context
                claims = pick_claims(target, result["claims"])
                suggested = suggested_claim(claims) if len(claims) > 1 else None
                for claim in claims:
                    candidates.append(
                        {
                            "person": people(decode_handle(claim["handle"])),
                            "how": f"claims the name {target.name!r}",
                            "claim": claim,
                            "claimed": shown_time(int(claim["claimed"]) * 1000),
                            "relation": relation_words(claim),
                            "witnessed": witnessed_words(claim, time.time()),
                            "suggested": claim is suggested,
                        }
                    )
        for c in candidates:
            c["following"] = c["person"].key in following
            c["own"] = c["person"].key == self.own
        context["candidates"] = candidates
        if not candidates:
            context["message"] = f"nobody has claimed the name {query!r} (no valid claim found in the DHT)"
        elif len(candidates) > 1:
            known = any(c.get("suggested") for c in candidates)
            verdict = "the one you know is marked" if known else "not guessing, you know none of them"
            context["message"] = (
                f"{len(candidates)} keys claim the name {target.name!r}: {verdict}. They are shown people "
                "you know first, then the claim the network saw first, then most work: follow one."
            )
        return "follow.html", context

    async def search(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        query = request.query_params.get("q", "")[: MAX_QUERY_CHARS * 2]
        context: dict[str, Any] = {"q": query, "hits": [], "message": None, "more": None}
        if not query.strip():
            return "search.html", context
        before = parse_cursor(request.query_params.get("before"))
        try:
            hits = self.store.search(query, limit=PAGE, before=before, index_limit=SEARCH_INDEX_STEP)
        except SearchError as exc:
            context["message"] = str(exc)
            return "search.html", context
        if self.store.search_behind():
            context["message"] = (
                "Still indexing posts that arrived lately: some of them are not searched yet. "
                "Search again in a moment."
            )
        views = []
        for hit in hits:
            view = self.view(hit.item, people)
            marked = Markup("").join(
                Markup("<mark>{}</mark>").format(seg.text) if seg.match else escape(seg.text)
                for seg in hit.segments
            )
            views.append(dataclasses.replace(view, text=marked))
        context["hits"] = views
        context["more"] = views[-1].cursor if len(views) == PAGE else None
        return "search.html", context

    async def tracked(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        """The tracked terms (add and remove forms) and the posts that match them (issue 19)."""
        before = parse_cursor(request.query_params.get("before"))
        terms = tracked_terms(self.store)
        hits = tracked_posts(self.store, terms, limit=PAGE, before=before, index_limit=SEARCH_INDEX_STEP)
        posts = [self.view(hit.item, people) for hit in hits]
        return "tracked.html", {
            "terms": terms,
            "posts": posts,
            "more": posts[-1].cursor if len(posts) == PAGE else None,
            "paged": before is not None,
            "live_number": self.live.number,
        }

    async def track_add(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        return "/tracked", await self.service.command("track_add", {"term": str(form.get("term") or "")})

    async def track_remove(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        return "/tracked", await self.service.command("track_remove", {"term": str(form.get("term") or "")})

    async def petnames(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        del request
        return "petnames.html", {"petnames": [(n, people(k)) for n, k in self.store.petnames()]}

    async def names(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        del request, people
        claims = [
            {"name": n, "pick": f"{n}~{fingerprint(self.own)}", "claimed": shown_time(c * 1000), "work": w}
            for n, c, _, w in self.store.name_claims()
        ]
        return "names.html", {
            "claims": claims,
            "job": self.claim.doc() if self.claim else None,
            "min_work": NAME_CLAIM_MIN_WORK,
        }

    async def node(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        del request
        status = await self.service.command("status", {})
        replicas = await self.service.command("replicas", {})
        for feed in replicas["feeds"]:
            feed["person"] = people(decode_handle(feed["handle"]))
        for peer in status["peers"]:
            peer["person"] = people(decode_handle(peer["handle"]))
        return "node.html", {"status": status, "replicas": replicas["feeds"], "web": self.stats}

    # -- state changes -------------------------------------------------------------------

    async def post(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        csrf = self.sessions.csrf(request.scope["state"]["sid"])
        text = str(form.get("text") or "")
        if not text.strip():
            raise Refused(400, "write something first")
        args: dict[str, Any] = {"text": text}
        reply_to = form.get("reply_to")
        if reply_to:
            args["reply_to"] = str(reply_to)
        result = await self.service.command("post", args)
        item = self.store.get(bytes.fromhex(result["id"]))
        html = self.post_html(item, csrf=csrf) if item else ""
        where = f"/post/{args['reply_to']}" if reply_to else "/"
        return where, {"id": result["id"], "seq": result["seq"], "html": html}

    async def delete(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        result = await self.service.command("delete", {"id": str(form.get("id") or "")})
        return "/", {"id": result["id"], "target": result["target"]}

    def _handle(self, form: FormData) -> str:
        return str(form.get("handle") or "")

    async def follow(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        result = await self.service.command("follow", {"handle": self._handle(form)})
        return handle_path(decode_handle(result["handle"])), result

    async def unfollow(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        result = await self.service.command("unfollow", {"handle": self._handle(form)})
        return handle_path(decode_handle(result["handle"])), result

    async def block(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        result = await self.service.command("block", {"handle": self._handle(form)})
        return handle_path(decode_handle(result["handle"])), result

    async def unblock(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        result = await self.service.command("unblock", {"handle": self._handle(form)})
        return handle_path(decode_handle(result["handle"])), result

    async def set_profile(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        fields = {k: str(form.get(k) or "") for k in ("name", "bio") if form.get(k) is not None}
        result = await self.service.command("profile_set", fields)
        return handle_path(self.own), result

    async def set_petname(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        try:
            name = check_name(str(form.get("name") or "").strip())
        except RecordError as exc:
            raise Refused(400, f"petname: {exc}") from None
        key = decode_handle(self._handle(form))
        self.store.set_petname(name, key)
        return "/petnames", {"petname": name, "handle": encode_handle(key)}

    async def remove_petname(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        name = str(form.get("name") or "")
        if not self.store.remove_petname(name):
            raise Refused(404, f"no petname {name!r}")
        return "/petnames", {"petname": name}

    async def start_claim(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        try:
            name = check_name(str(form.get("name") or "").strip())
            work = int(str(form.get("work") or NAME_CLAIM_MIN_WORK))
        except (RecordError, ValueError) as exc:
            raise Refused(400, str(exc)) from None
        if not NAME_CLAIM_MIN_WORK <= work <= 32:
            raise Refused(400, f"work is {NAME_CLAIM_MIN_WORK}..32 bits")
        if self.claim is not None and self.claim.state in ("working", "publishing"):
            raise Refused(409, f"a claim of {self.claim.name!r} is still in progress")
        if self.nursery is None:
            raise Refused(503, "the web app is not running")
        job = self.claim = ClaimJob(name, work, time.monotonic())
        self.nursery.start_soon(self._run_claim, job)
        return "/names", job.doc()

    async def _run_claim(self, job: ClaimJob) -> None:
        def progress(tries: int) -> None:
            job.tries = tries
            if job.cancelled:
                raise _Stopped

        try:
            stamp = actions.held_stamp(self.store, job.name, job.work)
            if stamp is None:
                own, now_s = self.own, int(time.time())
                stamp = await trio.to_thread.run_sync(
                    lambda: actions.new_stamp(own, job.name, job.work, now_s, progress=progress),
                    abandon_on_cancel=True,
                )
            job.state = "publishing"
            claimed, nonce = stamp
            result = await self.service.command(
                "name_claim", {"name": job.name, "claimed": claimed, "nonce": nonce.hex()}
            )
        except (CommandFailed, P2PBlogError, ValueError) as exc:
            job.state, job.message = "failed", str(exc)
            return
        finally:
            job.cancelled = True  # a thread left running after a cancel stops at its next report
        job.state = "done"
        where = f"stored at {result['stored_at']} node(s)" if result["stored_at"] else "the node retries"
        job.message = f"claimed {job.name!r} with {result['work']} bits of work ({where})"

    # -- JSON API --------------------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        prefix = request.query_params.get("q", "").lstrip("@").lower()[:64]
        people = People(self.store)
        seen: set[bytes] = set()
        out: list[dict[str, str]] = []
        candidates = [k for _, k in self.store.petnames()] + sorted(self.service.core.following())
        for key in candidates:
            if key in seen or key == self.own:
                continue
            seen.add(key)
            person = people(key)
            labels = [person.name or "", person.petname or "", person.fingerprint]
            if any(label.lower().startswith(prefix) for label in labels if label):
                out.append(
                    {
                        "handle": person.handle,
                        "label": person.name or person.fingerprint,
                        "fingerprint": person.fingerprint,
                    }
                )
            if len(out) >= COMPLETIONS:
                break
        return JSONResponse(out)

    async def unread_api(self, request: Request) -> Response:
        del request
        return JSONResponse({"unread": self.unread()})

    async def claim_api(self, request: Request) -> Response:
        del request
        return JSONResponse(self.claim.doc() if self.claim else None)

    async def replicas_api(self, request: Request) -> Response:
        search = request.query_params.get("search") == "1"
        result = await self.service.command("replicas", {"search": search})
        return JSONResponse(result)

    async def atom(self, request: Request) -> Response:
        try:
            key = decode_handle(request.path_params["handle"])
        except HandleError:
            key = None
        if key is None or self.store.latest_seq(key) == 0:
            return PlainTextResponse("no such feed is held here\n", 404)
        body = atom_feed(self.store, key, base_url=self.origin)
        return Response(body, media_type="application/atom+xml; charset=utf-8")

    async def events(self, request: Request) -> Response:
        try:
            last: int | None = int(request.headers.get("last-event-id", ""))
        except ValueError:
            last = None
        if last is None:
            try:
                last = int(request.query_params.get("since", ""))
            except ValueError:
                last = None
        return StreamingResponse(
            self.live.stream(last),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    # -- the node's events -------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Appended):
            self._publish_entries([event.entry])
        elif isinstance(event, EntriesStored):
            first = max(1, event.latest - event.count + 1, event.latest - LIVE_PER_BATCH + 1)
            if event.count > LIVE_PER_BATCH:
                self.live.publish("more", {"count": event.count - LIVE_PER_BATCH})
            self._publish_entries(list(self.store.feed_range(event.feed, first, event.latest)))
        elif isinstance(event, MentionAdmitted):
            self.live.publish("unread", {"unread": self.unread()})
        elif isinstance(event, TrackedPostFetched):
            item = self.store.get(event.entry_id)
            if item is not None:
                self._publish_tracked(item, People(self.store))

    def _publish_tracked(self, item: FeedItem, people: People) -> None:
        """A post for open Tracked pages, if it has a tracked word or tag."""
        entry = item.entry
        if not item.deleted and text_matches(self.service.core.tracker.terms, entry.text):
            html = self.post_html(item, people)
            self.live.publish("tracked", {"id": entry.id.hex(), "ts": entry.timestamp, "html": html})

    def _publish_entries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        author = entries[0].author
        shown = author == self.own or author in self.service.core.following()
        if author in {k for k, _ in self.store.blocks()}:
            return
        people = People(self.store)
        mentioned = False
        for entry in entries:
            if entry.kind == POST:
                mentioned |= self.own in entry.mentions
                if self.service.core.tracker.terms:
                    found = self.store.get(entry.id)
                    if found is not None:
                        self._publish_tracked(found, people)
                if shown:
                    item = self.store.get(entry.id)
                    if item is not None:
                        self.live.publish(
                            "post",
                            {
                                "id": entry.id.hex(),
                                "ts": entry.timestamp,
                                "html": self.post_html(item, people),
                            },
                        )
            elif entry.kind == DELETE and entry.body.get("target"):
                self.live.publish("retract", {"id": bytes(entry.body["target"]).hex()})
        if mentioned:
            self.live.publish("unread", {"unread": self.unread()})


class _Stopped(Exception):
    """Stops a proof of work whose claim was abandoned."""
