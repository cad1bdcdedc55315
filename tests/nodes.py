"""Test helper: real ``p2pblog run`` processes on 127.0.0.1, each in its own home."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.process import child_env, p2pblog


@dataclass
class NodeProcess:
    home: Path
    process: subprocess.Popen[str]
    dht: tuple[str, int]
    handle: str
    log: Path
    gossip: tuple[str, int] = ("127.0.0.1", 0)
    stopped: bool = field(default=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.dht[0]}:{self.dht[1]}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if not self.stopped:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.stopped = True
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def init_home(home: Path) -> str:
    result = p2pblog(home, "init")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _ephemeral_ports() -> range:
    """The ports the kernel hands to sockets bound to port 0 (Linux's default if unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def fixed_port() -> int:
    """A port for a node that will be restarted on it (as a home node keeps its port).

    Outside the kernel's ephemeral range: a port a stopped node held, taken from that
    range, could be handed to any socket bound to port 0 (another test's node, an
    outgoing connection) before the node comes back, and it would fail to listen (seen in
    CI: "cannot listen on 127.0.0.1:51152: Address already in use").  Free now for both
    UDP and TCP, as the node binds both.
    """
    ephemeral = _ephemeral_ports()
    rng = random.Random()
    for _ in range(1000):  # bounded: nearly every port tried is free
        port = rng.randrange(10_000, 65_536)
        if port in ephemeral:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port outside the ephemeral range")


def start_node(home: Path, *args: str, listen: str = "127.0.0.1:0", timeout: float = 20.0) -> NodeProcess:
    """Start ``p2pblog run`` and wait until it has written HOME/node.json."""
    if not (home / "identity.key").exists():
        init_home(home)
    state = home / "node.json"
    if state.exists():
        state.unlink()
    log = home / f"run-{time.monotonic_ns()}.log"
    env = child_env()
    out = log.open("w")
    if "--web" not in args:
        args = ("--no-web", *args)  # the web app's tests ask for it (port 0); others skip its start-up
    process = subprocess.Popen(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "run", "--listen", listen, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"node exited with {process.returncode}: {log.read_text()}")
        try:
            doc = json.loads(state.read_text())
            host, port = doc["dht"]
            ghost, gport = doc["gossip"]
            return NodeProcess(home, process, (host, int(port)), doc["handle"], log, (ghost, int(gport)))
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"node did not start within {timeout} s: {log.read_text()}")


def wait_for(predicate: object, timeout: float, interval: float = 0.2) -> bool:
    """Poll predicate() until it is true or timeout seconds pass."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run(home: Path, *args: str) -> str:
    """Run a p2pblog command that must succeed; its stdout, stripped."""
    result = p2pblog(home, *args)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout.strip()


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Node processes a test starts (append them); all stopped when it ends."""
    running: list[NodeProcess] = []
    yield running
    for node in running:
        node.stop()


def start_pair(tmp_path: Path, nodes: list[NodeProcess]) -> tuple[NodeProcess, NodeProcess]:
    """Nodes A and B (B joined through A) in tmp_path/a and tmp_path/b, stopped at the end."""
    a = start_node(tmp_path / "a")
    nodes.append(a)
    b = start_node(tmp_path / "b", "--bootstrap", a.bootstrap)
    nodes.append(b)
    return a, b


def cli_json(home: Path, *args: str) -> object:
    """Run a p2pblog command that prints JSON (``--json`` is added) and parse its output."""
    result = p2pblog(home, *args, "--json")
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return json.loads(result.stdout)


def status(node: NodeProcess) -> dict[str, object]:
    doc = cli_json(node.home, "status")
    assert isinstance(doc, dict)
    return doc


def timeline_texts(home: Path, limit: int = 1000) -> list[str]:
    """Texts of the home's timeline, newest first."""
    doc = cli_json(home, "timeline", "--limit", str(limit))
    assert isinstance(doc, list)
    return [str(item["text"]) for item in doc]
