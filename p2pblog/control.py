"""The local control API between the CLI and a running node (docs/api.md).

One TCP connection per request, on 127.0.0.1 only.  The client sends one line
of JSON, ``{"token": ..., "command": ..., "args": {...}}``, and reads one line
back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.

The running node writes ``HOME/node.json`` (mode 0600) with its pid, its
addresses, the control port and a random token; only a user who can read the
home directory can talk to the node.  The file is removed on a clean stop; a
stale file (after a crash) is detected by the refused connection.

Limits: at most `MAX_CONTROL_CONNECTIONS` connections are served at once.  A new
connection over the cap evicts the oldest one still waiting for its request
line (idle clients cannot lock the owner out: the CLI sends its line as soon
as it connects); if every one is running a command, the new one is
answered ``{"ok": false, "error": "the node is busy ..."}`` at once (best effort, without
waiting) and closed.  So a flood of idle connections costs the node at
most `MAX_CONTROL_CONNECTIONS` file descriptors and tasks.  A connection must
deliver its request line (at most `MAX_REQUEST_BYTES`) within
`REQUEST_DEADLINE` seconds.  Every refusal is counted (``refused``, by
reason in ``counts``).

A handler's `CommandFailed` is the user's error.  `StorageFull` (a write
the full disk refused) goes back as ``the disk is full: ...``.  Any other
exception is a bug: it is counted (``counts["internal_error"]``), given to
``on_internal_error`` (the daemon logs the traceback) and answered
``internal error (logged by the node)``; the node goes on.  ``strict``
(tests) re-raises it after counting.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from p2pblog.errors import P2PBlogError, StorageFull

STATE_FILE = "node.json"
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Control connections served at once; more are answered "busy" and closed.
MAX_CONTROL_CONNECTIONS = 64
#: Seconds a client has to send its request line.
REQUEST_DEADLINE = 10.0
#: The answer to a connection over the cap while every served one runs a command.
BUSY = "the node is busy (too many control connections); try again"
#: Pending connections the kernel queues for the control listener.
BACKLOG = 128

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
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        os.replace(tmp, home / STATE_FILE)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Without node.json no command can find the node: it cannot usefully run.
            raise StorageFull(f"the disk is full: cannot write {home / STATE_FILE}") from None
        raise


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
    if not chunks:
        raise ControlError(f"the node at {home} closed the connection without answering; see its log")
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the node sent a malformed response") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        message = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(str(message or "the node refused the request"))
    return reply.get("result")


_BUSY = (json.dumps({"ok": False, "error": BUSY}) + "\n").encode()


class ControlServer:
    """Serves control requests on 127.0.0.1 with a token; commands are async handlers."""

    def __init__(
        self,
        token: str,
        handlers: dict[str, Handler],
        *,
        on_internal_error: Callable[[str, Exception], None] | None = None,
        strict: bool = False,
        max_connections: int = MAX_CONTROL_CONNECTIONS,
    ) -> None:
        self.token = token
        self.handlers = handlers
        self.on_internal_error = on_internal_error
        self.strict = strict
        self.max_connections = max_connections
        #: Requests refused (malformed, bad token, too slow, too large, over the cap).
        self.refused = 0
        #: What happened to connections, by reason (``busy``, ``slow``, ``internal_error``, ...).
        self.counts: Counter[str] = Counter()
        self.active = 0
        #: Connections still reading their request line, oldest first: the ones to evict.
        self._reading: dict[int, trio.CancelScope] = {}
        self._evicted: set[int] = set()
        self._next_id = 0

    def _refuse(self, reason: str) -> None:
        self.refused += 1
        self.counts[f"refused.{reason}"] += 1

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await sock.bind(("127.0.0.1", 0))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        listener = trio.SocketListener(sock)
        host, port = sock.getsockname()[:2]
        async with listener, trio.open_nursery() as nursery:
            task_status.started((str(host), int(port)))
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE / ENFILE: count, let connections finish, retry
                    self.counts[f"accept_error.{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
                    await trio.sleep(0.1)
                    continue
                if self.active - len(self._evicted) >= self.max_connections:
                    if not self._reading:
                        self._refuse("busy")
                        with contextlib.suppress(OSError):
                            stream.socket.send(_BUSY)  # non-blocking: best effort
                        stream.socket.close()
                        continue
                    oldest = next(iter(self._reading))
                    self._reading.pop(oldest).cancel()
                    self._evicted.add(oldest)
                self.active += 1
                self._next_id += 1
                nursery.start_soon(self._handle, stream, self._next_id)

    async def _handle(self, stream: trio.SocketStream, conn: int) -> None:
        try:
            async with stream:
                scope = self._reading[conn] = trio.CancelScope(
                    deadline=trio.current_time() + REQUEST_DEADLINE
                )
                try:
                    with scope:
                        data = await _read_request(stream)
                except _TooLarge:
                    self._refuse("too_large")
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(_line({"ok": False, "error": "request too large"}))
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._refuse("broken")
                    return
                finally:
                    self._reading.pop(conn, None)
                if scope.cancelled_caught:
                    self._refuse("evicted" if conn in self._evicted else "slow")
                    return
                reply = await self._dispatch(data)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(_line(reply))
        finally:
            self.active -= 1
            self._evicted.discard(conn)

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
        except StorageFull as exc:
            self.counts["storage_full"] += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            self.counts["internal_error"] += 1
            if self.on_internal_error is not None:
                self.on_internal_error(f"control.{request.get('command')}", exc)
            if self.strict:
                raise
            return {"ok": False, "error": f"internal error ({type(exc).__name__}), logged by the node"}


def _line(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply) + "\n").encode()


class _TooLarge(Exception):
    """A request line over `MAX_REQUEST_BYTES`."""


async def _read_request(stream: trio.SocketStream) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_REQUEST_BYTES:
            raise _TooLarge
    return bytes(buffer.split(b"\n", 1)[0])
