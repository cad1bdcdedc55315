"""`ControlServer`: the node's side of the local control API (`p2pblog.control`
has the protocol, the limits and the client)."""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pblog.control import (
    BACKLOG,
    BUSY,
    MAX_CONTROL_CONNECTIONS,
    MAX_REQUEST_BYTES,
    REQUEST_DEADLINE,
    CommandFailed,
)
from p2pblog.errors import OwnFeedRefused, StorageFull, StoreDamaged

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

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
        except (CommandFailed, OwnFeedRefused) as exc:  # incl. HeadUnknownError (`p2pblog.own_head`)
            return {"ok": False, "error": str(exc)}
        except StorageFull as exc:
            self.counts["storage_full"] += 1
            return {"ok": False, "error": str(exc)}
        except StoreDamaged as exc:  # a write refused: the store file is damaged
            self.counts["store_damaged"] += 1
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
