"""The local control API between the CLI and a running node (docs/api.md).

One TCP connection per request, on 127.0.0.1 only.  The client sends one line
of JSON, ``{"token": ..., "command": ..., "args": {...}}``, and reads one line
back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.

The running node writes ``HOME/node.json`` (mode 0600) with its pid, its
addresses, the control port and a random token; only a user who can read the
home directory can talk to the node.  The file is removed on a clean stop; a
stale file (after a crash) is detected by the refused connection.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from p2pblog.errors import P2PBlogError

STATE_FILE = "node.json"
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class NodeNotRunning(P2PBlogError):
    """No node is running for this home directory."""


class ControlError(P2PBlogError):
    """The node refused or failed a control request; the message says why."""


class CommandFailed(Exception):
    """Raised by a command handler: the message goes back to the client as the error."""


@dataclass(frozen=True)
class NodeState:
    pid: int
    control: tuple[str, int]
    token: str
    info: dict[str, Any]


def new_token() -> str:
    return secrets.token_hex(32)


def write_state(home: Path, state: NodeState) -> None:
    """Atomically write HOME/node.json with mode 0600."""
    doc = {"pid": state.pid, "control": list(state.control), "token": state.token, **state.info}
    tmp = home / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
    os.replace(tmp, home / STATE_FILE)


def remove_state(home: Path, token: str) -> None:
    """Remove HOME/node.json if it is still ours (another node may have replaced it)."""
    path = home / STATE_FILE
    try:
        if json.loads(path.read_text()).get("token") == token:
            path.unlink()
    except (OSError, ValueError):
        pass


def read_state(home: Path) -> NodeState:
    path = home / STATE_FILE
    try:
        doc = json.loads(path.read_text())
        host, port = doc["control"]
        return NodeState(int(doc["pid"]), (str(host), int(port)), str(doc["token"]), doc)
    except (OSError, ValueError, KeyError, TypeError):
        raise NodeNotRunning(f"node not running at {home}; start it with: p2pblog run") from None


def call(home: Path, command: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
    """Send one command to the node running at home and return its result (blocking)."""
    state = read_state(home)
    request = json.dumps({"token": state.token, "command": command, "args": args or {}}) + "\n"
    try:
        with socket.create_connection(state.control, timeout=timeout) as conn:
            conn.sendall(request.encode())
            conn.shutdown(socket.SHUT_WR)
            chunks, size = [], 0
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ControlError("the node's response is too large")
    except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError):
        raise NodeNotRunning(f"node not running at {home}; start it with: p2pblog run") from None
    except TimeoutError:
        raise ControlError(f"the node at {home} did not answer within {timeout:.0f} s") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the node sent a malformed response") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        message = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(str(message or "the node refused the request"))
    return reply.get("result")


class ControlServer:
    """Serves control requests on 127.0.0.1 with a token; commands are async handlers."""

    def __init__(self, token: str, handlers: dict[str, Handler]) -> None:
        self.token = token
        self.handlers = handlers
        self.refused = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            task_status.started((str(host), int(port)))
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(10):
                    data = await _read_request(stream)
                reply = await self._dispatch(data)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                self.refused += 1
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all((json.dumps(reply) + "\n").encode())

    async def _dispatch(self, data: bytes) -> dict[str, Any]:
        try:
            request = json.loads(data)
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("token"), str):
            self.refused += 1
            return {"ok": False, "error": "malformed request"}
        if not hmac.compare_digest(request["token"], self.token):
            self.refused += 1
            return {"ok": False, "error": "bad token"}
        handler = self.handlers.get(str(request.get("command")))
        args = request.get("args", {})
        if handler is None:
            return {"ok": False, "error": f"unknown command {request.get('command')!r}"}
        if not isinstance(args, dict):
            return {"ok": False, "error": "'args' must be a JSON object"}
        try:
            return {"ok": True, "result": await handler(args)}
        except CommandFailed as exc:
            return {"ok": False, "error": str(exc)}


async def _read_request(stream: trio.SocketStream) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_REQUEST_BYTES:
            raise trio.BrokenResourceError("request too large")
    return bytes(buffer.split(b"\n", 1)[0])
