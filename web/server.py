"""Serving the web app inside the node's trio run, with Hypercorn's trio worker.

`serve_web` binds the listening socket itself (so a port in use is one clear
error, and port 0 tells the app the port it got before the first request),
hands it to Hypercorn as ``fd://``, and runs until cancelled with the node.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2pblog.daemon import NodeService
from p2pblog.errors import ListenError
from web.app import WebApp

#: Seconds a connection may idle between requests, and that a shutdown waits for.
KEEP_ALIVE: Final = 30
GRACE: Final = 1.0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(f"web app: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def serve_web(
    service: NodeService,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[WebApp] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the web app of service on host:port until cancelled; ``started`` gives the
    `WebApp` (its ``origin`` has the port bound)."""
    sock = bind(host, port)
    try:
        bound_port = sock.getsockname()[1]
        app = WebApp(service, host, bound_port)
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.keep_alive_timeout = KEEP_ALIVE
        config.graceful_timeout = GRACE
        config.accesslog = None
        config.errorlog = logging.getLogger("p2pblog.web")
        config.h11_max_incomplete_size = 16 * 1024
        async with trio.open_nursery() as nursery:
            app.nursery = nursery
            await nursery.start(serve, app, config)
            task_status.started(app)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
