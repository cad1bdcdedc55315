"""Who may use the web app: sign-in links, session cookies, CSRF tokens, allowed hosts.

Theory of operation
-------------------
A web page open in the same browser is an attacker: it can make the browser
send requests to 127.0.0.1, and DNS rebinding lets it read the answers of a
server that trusts any Host.  So the web app trusts nothing but a secret.

* **Sign-in.**  ``p2pblog open`` asks the running node (control API, which
  needs the token in ``HOME/node.json``, readable by the owner only) for a
  one-time link ``/login?t=SECRET``.  `LoginLinks` keeps at most `MAX_LINKS`
  secrets, each valid `LINK_TTL` seconds and used once.  Using one creates a
  session (`Sessions`, at most `MAX_SESSIONS`, the least recently used
  dropped first) whose id goes to a cookie that is HttpOnly (no script reads
  it), SameSite=Strict (no other site's page or form sends it) and scoped to
  the path ``/``.  Sessions live in memory: a restarted node needs a new link.
* **Every request** but the sign-in link and the static assets needs a valid
  session cookie, else it answers 401.
* **Hosts.**  A request whose Host header is not the address the app is bound
  to (or ``localhost`` with its port) is refused (421): a rebound DNS name
  never reaches a page.
* **CSRF.**  Every state-changing request (any method but GET and HEAD)
  carries the session's CSRF token (a keyed hash of the session id: a hidden
  form field ``csrf`` or the header ``X-CSRF-Token``), and its Origin header,
  when the browser sends one, must be the app's own origin.  The cookie's
  SameSite=Strict already keeps other sites' forms from being signed in; the
  token is the second lock.
* **Headers.**  Every answer carries a strict Content-Security-Policy (only
  this origin's scripts, styles and images; no inline script; no framing;
  forms post only here), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: same-origin`` (no referrer leaves for other sites); pages are
  not cached.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

#: One-time sign-in links outstanding at once, and seconds each stays valid.
MAX_LINKS: Final = 8
LINK_TTL: Final = 120.0
#: Signed-in browsers remembered at once (the least recently used is signed out).
MAX_SESSIONS: Final = 16
COOKIE: Final = "p2pblog_session"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    # same-origin, not no-referrer: under no-referrer Chromium sends ``Origin: null`` on a
    # form's POST, which the Origin check would refuse; other origins still get no referrer.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)


class LoginLinks:
    """One-time sign-in secrets: at most `MAX_LINKS`, each valid `LINK_TTL` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._links: OrderedDict[str, float] = OrderedDict()

    def new(self) -> str:
        self._expire()
        while len(self._links) >= MAX_LINKS:
            self._links.popitem(last=False)
        secret = secrets.token_urlsafe(32)
        self._links[secret] = self.clock() + LINK_TTL
        return secret

    def use(self, secret: str) -> bool:
        """True once for a valid secret (it is spent)."""
        self._expire()
        for known in list(self._links):
            if hmac.compare_digest(known.encode(), secret.encode()):
                del self._links[known]
                return True
        return False

    def _expire(self) -> None:
        now = self.clock()
        for secret, expires in list(self._links.items()):
            if expires <= now:
                del self._links[secret]


class Sessions:
    """Signed-in browsers: session ids (the cookie) and their CSRF tokens."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def new(self) -> str:
        while len(self._ids) >= MAX_SESSIONS:
            self._ids.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._ids[sid] = None
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid or len(sid) > 100:
            return False
        found = next((k for k in self._ids if hmac.compare_digest(k.encode(), sid.encode())), None)
        if found is None:
            return False
        self._ids.move_to_end(found)
        return True

    def forget(self, sid: str) -> None:
        self._ids.pop(sid, None)

    def csrf(self, sid: str) -> str:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(sid).encode(), str(token).encode())


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host header values the app answers: its bound address, and ``localhost`` when
    bound to a loopback address."""
    shown = f"[{host}]" if ":" in host else host
    hosts = {f"{shown}:{port}"}
    if host in ("127.0.0.1", "::1"):
        hosts.add(f"localhost:{port}")
    if port == 80:
        hosts |= {h.rsplit(":", 1)[0] for h in hosts}
    return frozenset(hosts)


def cookie_header(sid: str) -> str:
    return f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"
