"""The local control API server (p2pblog/control.py) over a real TCP socket on 127.0.0.1:
what it answers to well-formed, malformed and unauthorised requests, and what it counts."""

from __future__ import annotations

import json
from typing import Any

import trio

from p2pblog.control import CommandFailed
from p2pblog.control_server import ControlServer

TOKEN = "s3cret"


async def _status(args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args}


async def _fails(args: dict[str, Any]) -> dict[str, Any]:
    raise CommandFailed("that did not work")


async def _ask(addr: tuple[str, int], line: bytes) -> dict[str, Any]:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(line + b"\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    reply = json.loads(data)
    assert isinstance(reply, dict)
    return reply


def test_requests_are_answered_refused_and_counted() -> None:
    async def main() -> None:
        server = ControlServer(TOKEN, {"status": _status, "fails": _fails})
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(server.serve)

            def request(**fields: Any) -> bytes:
                return json.dumps(fields).encode()

            ok = await _ask(addr, request(token=TOKEN, command="status", args={"x": 1}))
            assert ok == {"ok": True, "result": {"echo": {"x": 1}}}
            assert await _ask(addr, b"not json") == {"ok": False, "error": "malformed request"}
            assert await _ask(addr, request(token="guess", command="status")) == {
                "ok": False,
                "error": "bad token",
            }
            wrong_args = await _ask(addr, request(token=TOKEN, command="status", args=[]))
            assert wrong_args == {"ok": False, "error": "'args' must be a JSON object"}
            unknown = await _ask(addr, request(token=TOKEN, command="reboot", args={}))
            assert unknown == {"ok": False, "error": "unknown command 'reboot'"}
            failed = await _ask(addr, request(token=TOKEN, command="fails", args={}))
            assert failed == {"ok": False, "error": "that did not work"}
            # Only requests that never reached a command are counted as refused.
            assert server.refused == 2
            nursery.cancel_scope.cancel()

    trio.run(main)
