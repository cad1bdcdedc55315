"""The web app's direct messages: conversations, one conversation, sending.

The pages read the store (`Store.dm_conversations`, `Store.dm_thread`); sending
and marking read go through the node's control handlers (``dm_send``,
``dm_read``), as `p2pblog dm send` / `dm read` do.  A recipient is typed as
anywhere else: a handle, a petname, ``NAME~FINGERPRINT``, or a NAME that
exactly one key claims (with several, the page says so and sends nothing).
Live: a message stored (`DmStored`) updates the Messages badge on every open
page; a delivery state change (`DmStateChanged`) updates the state shown
beside our own message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.routing import Route

from identity import decode_handle, encode_handle
from identity.handle import HandleError
from identity.limits import MAX_DM_CHARS
from p2pblog.control import CommandFailed
from p2pblog.events import DmStateChanged, DmStored
from p2pblog.store import DmRow
from p2pblog.targets import TargetError, parse_target, petname_matches, pick_claims, suggested_claim
from web.app import People, Refused, iso, shown_time
from web.atom import user_path

if TYPE_CHECKING:
    from web.app import WebApp

#: Messages a conversation page shows (the newest).
THREAD_LIMIT = 500


def messages_path(key: bytes) -> str:
    return "/messages/" + encode_handle(key)


class Messages:
    """The Messages pages of one `web.app.WebApp`."""

    def __init__(self, app: WebApp) -> None:
        self.app = app
        app.service.listeners.append(self._on_event)
        app.env.globals["max_dm_chars"] = MAX_DM_CHARS

    def routes(self) -> list[Route]:
        get, change = self.app._page, self.app._change
        return [
            Route("/messages", get(self.list_page)),
            Route("/messages/send", change(self.send), methods=["POST"]),
            Route("/messages/{handle}", get(self.thread_page)),
        ]

    def unread(self) -> int:
        return self.app.store.dm_unread()

    def _row(self, row: DmRow, people: People) -> dict[str, Any]:
        return {
            "id": row.id.hex(),
            "person": people(row.peer),
            "out": row.folder == "sent",
            "request": row.folder == "requests",
            "text": row.text,
            "unread": row.unread,
            "state": row.state,
            "time_iso": iso(row.timestamp),
            "time_shown": shown_time(row.timestamp),
        }

    async def list_page(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        store = self.app.store
        inbox: list[dict[str, Any]] = []
        requests: list[dict[str, Any]] = []
        for row, unread, folder in store.dm_conversations():
            doc = self._row(row, people)
            doc["unread_count"] = unread
            doc["path"] = messages_path(row.peer)
            (requests if folder == "requests" else inbox).append(doc)
        to = request.query_params.get("to", "").strip()[:200]
        return "messages.html", {"inbox": inbox, "requests": requests, "to": to}

    async def thread_page(self, request: Request, people: People) -> tuple[str, dict[str, Any]]:
        try:
            key = decode_handle(request.path_params["handle"])
        except HandleError as exc:
            raise Refused(404, f"no such person: {exc}") from None
        rows = self.app.store.dm_thread(key, THREAD_LIMIT)
        if any(r.unread for r in rows):
            await self.app.service.command("dm_read", {"handle": encode_handle(key)})
            self.app.live.publish("dms", {"unread": self.unread()})
        return "conversation.html", {
            "person": people(key),
            "messages": [self._row(r, people) for r in rows],
            "profile_path": user_path(key),
            "stranger": bool(rows) and all(r.folder == "requests" for r in rows),
            "following": key in self.app.service.core.following(),
        }

    async def send(self, request: Request, form: FormData) -> tuple[str, dict[str, Any]]:
        del request
        text = str(form.get("text") or "")
        if not text.strip():
            raise Refused(400, "write something first")
        key = await self._recipient(str(form.get("to") or ""))
        result = await self.app.service.command("dm_send", {"handle": encode_handle(key), "text": text})
        return messages_path(key), result

    async def _recipient(self, text: str) -> bytes:
        """The key a typed recipient names; `Refused` with the reason when it names no one
        key (a bare NAME with several claimants is taken only as `suggested_claim` allows)."""
        try:
            target = parse_target(text)
        except (TargetError, HandleError) as exc:
            raise Refused(400, f"recipient: {exc}") from None
        if target.key is not None:
            return target.key
        pet = self.app.store.petname(target.name)
        if petname_matches(target, pet):
            assert pet is not None
            return pet
        try:
            result = await self.app.service.command("resolve", {"name": target.name})
        except CommandFailed as exc:
            raise Refused(400, f"recipient: {exc}") from None
        claims = pick_claims(target, result["claims"])
        if not claims:
            raise Refused(404, f"nobody has claimed the name {text.strip()!r}")
        chosen = suggested_claim(claims)  # the only claimant, or the one you know (issue 15)
        if chosen is None:
            shown = ", ".join(f"{target.name}~{c['fingerprint']}" for c in claims[:5])
            raise Refused(
                409,
                f"{len(claims)} keys claim the name {target.name!r}: not guessing. "
                f"Write one of {shown}, or a handle.",
            )
        return decode_handle(str(chosen["handle"]))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, DmStored):
            self.app.live.publish("dms", {"unread": self.unread()})
        elif isinstance(event, DmStateChanged):
            self.app.live.publish("dm_state", {"id": event.dm_id.hex(), "state": event.state})
