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

This module is the client's side and the shared names; it imports no trio,
so a CLI command that only talks to a running node starts quickly.  The
node's side, `ControlServer`, is `p2pblog.control_server`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class NodeNotRunning(P2PBlogError):
    """No node is running for this home directory."""

    def __init__(self, home: Path, detail: str = "") -> None:
        self.home = home
        self.detail = detail
        super().__init__(self.explained())

    def explained(self, start: str = "p2pblog run") -> str:
        """The message, with ``start`` as the command that starts the node (the CLI adds the
        ``--home`` the user gave)."""
        return f"node not running at {self.home}{self.detail}; start it with: {start}"


class NodeUnreachable(P2PBlogError):
    """HOME/node.json names a live node process, but its control port refuses connections
    (it runs in another network namespace: a container, ``ip netns exec``)."""


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
        raise NodeNotRunning(home) from None


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
        raise _not_answering(home, state) from None
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


def _started_before(pid: int, path: Path) -> bool:
    """Whether process pid started before path was last written (True when unknown): a
    process that started later cannot have written node.json, whatever its command line."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime: clock ticks after boot (field 22)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
        return started <= path.stat().st_mtime + 1.0
    except (OSError, ValueError, IndexError, OverflowError):
        return True


def _not_answering(home: Path, state: NodeState) -> NodeNotRunning | NodeUnreachable:
    """What a refused control connection means.  node.json is removed on every clean stop, so
    either its node was killed (a stale file: not running), or its process lives where our
    connection does not reach: the same pid, another network namespace."""
    pid = state.pid
    stale = NodeNotRunning(home, f" (node.json is stale: process {pid} is not a p2pblog node)")
    if pid <= 0 or pid == os.getpid() or not _started_before(pid, home / STATE_FILE):
        return stale  # this very process (a container's PID 1 again), or a process newer than the file
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return stale  # gone
    except OSError:  # no /proc (not Linux): is the pid alive at all?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return stale
        except OSError:
            pass
        cmdline = b"p2pblog"
    if b"p2pblog" not in cmdline:
        return stale  # the pid was reused by another program
    where = f"{state.control[0]}:{state.control[1]}"
    try:
        ours, theirs = os.readlink("/proc/self/ns/net"), os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        ours = theirs = ""
    if ours and ours != theirs:
        return NodeUnreachable(
            f"the node at {home} runs (pid {pid}) in another network namespace (a container, "
            f"`ip netns exec`): its control port {where} is not reachable from here; run this "
            "command in that namespace"
        )
    return NodeUnreachable(
        f"the node at {home} runs (pid {pid}) but its control port {where} refuses connections "
        "(another network namespace, or it is stopping); run this command where the node runs, "
        "or try again"
    )
