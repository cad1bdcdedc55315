"""The control port's limits, with real sockets: a cap on connections (the oldest idle one is
evicted), a bound on request size, and a handler's bug answered and counted, not fatal."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pblog import control
from p2pblog.control import MAX_CONTROL_CONNECTIONS, MAX_REQUEST_BYTES
from p2pblog.control_server import ControlServer
from tests.nodes import NodeProcess, start_node

#: Idle connections the attack opens.
ATTACK = 1000
#: Seconds `status` may take while the attack runs.
STATUS_WITHIN = 1.0


def _status_time(home: Path) -> float:
    started = time.monotonic()
    result = control.call(home, "status", timeout=10)
    assert result["handle"]
    return time.monotonic() - started


def test_status_answers_within_a_second_while_1000_idle_connections_are_attempted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = start_node(tmp_path / "n")
    nodes.append(node)
    state = control.read_state(node.home)
    idle: list[socket.socket] = []
    slowest = 0.0
    try:
        for i in range(ATTACK):
            with contextlib.suppress(OSError):  # refused or reset by the node: it defends itself
                idle.append(socket.create_connection(state.control, timeout=5))
            if i % 100 == 99:
                slowest = max(slowest, _status_time(node.home))
        slowest = max(slowest, _status_time(node.home))
        assert slowest < STATUS_WITHIN, f"status took {slowest:.3f} s"
        fds = len(os.listdir(f"/proc/{node.process.pid}/fd"))
        assert fds < MAX_CONTROL_CONNECTIONS + 100, f"the node holds {fds} file descriptors"
        status = control.call(node.home, "status")
        assert status["dropped"]["control.refused.evicted"] >= ATTACK - MAX_CONTROL_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()
    assert node.process.poll() is None
    print(f"slowest status {slowest * 1000:.0f} ms with {ATTACK} idle connections; {fds} fds")


async def _boom(args: dict[str, Any]) -> Any:
    raise RuntimeError("planted handler bug")


async def _ok(args: dict[str, Any]) -> Any:
    return "fine"


def _ask(addr: tuple[str, int], data: bytes) -> dict[str, Any]:
    with socket.create_connection(addr, timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks))
    assert isinstance(reply, dict)
    return reply


@pytest.mark.parametrize("strict", [False, True])
def test_a_handler_bug_is_answered_counted_and_the_server_goes_on(strict: bool) -> None:
    errors: list[tuple[str, Exception]] = []

    async def main() -> None:
        server = ControlServer(
            "t",
            {"boom": _boom, "ok": _ok},
            on_internal_error=lambda k, e: errors.append((k, e)),
            strict=strict,
        )
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(server.serve)
            line = json.dumps({"token": "t", "command": "boom", "args": {}}).encode() + b"\n"
            reply = await trio.to_thread.run_sync(_ask, addr, line)
            assert reply == {"ok": False, "error": "internal error (RuntimeError), logged by the node"}
            assert server.counts["internal_error"] == 1 and [k for k, _ in errors] == ["control.boom"]
            big = b"x" * (MAX_REQUEST_BYTES + 10)
            assert await trio.to_thread.run_sync(_ask, addr, big) == {
                "ok": False,
                "error": "request too large",
            }
            line = json.dumps({"token": "t", "command": "ok", "args": {}}).encode() + b"\n"
            assert await trio.to_thread.run_sync(_ask, addr, line) == {"ok": True, "result": "fine"}
            assert server.counts["refused.too_large"] == 1
            nursery.cancel_scope.cancel()

    if strict:
        with pytest.raises(BaseExceptionGroup):
            trio.run(main)
        assert [k for k, _ in errors] == ["control.boom"]
    else:
        trio.run(main)
