"""The DHT with real ``p2pblog run`` processes on 127.0.0.1, driven through the CLI.

Three nodes: ``lookup`` from the third finds the first.  A restarted node
rejoins from its saved routing table with no ``--bootstrap``.  A node under a
flood of 10,000 bad datagrams keeps answering lookups and counts the drops.
Commands that need the node say so clearly when it is not running.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack

from tests.nodes import NodeProcess, start_node, start_pair, wait_for
from tests.process import p2pblog


def lookup(home: Path, handle: str) -> dict[str, object] | None:
    result = p2pblog(home, "lookup", handle, "--json")
    if result.returncode != 0:
        return None
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_lookup_from_the_third_node_finds_the_first(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a, b = start_pair(tmp_path, nodes)
    c = start_node(tmp_path / "c", "--bootstrap", b.bootstrap)
    nodes.append(c)
    found: dict[str, object] = {}

    def finds_a() -> bool:
        doc = lookup(c.home, a.handle)
        if doc and doc.get("found"):
            found.update(doc)
            return True
        return False

    assert wait_for(finds_a, timeout=30), c.output()
    assert found["handle"] == a.handle
    assert ["udp", "127.0.0.1", a.dht[1]] in found["addrs"]  # type: ignore[operator]

    human = p2pblog(c.home, "lookup", a.handle)
    assert human.returncode == 0 and f"udp 127.0.0.1:{a.dht[1]}" in human.stdout

    peers = json.loads(p2pblog(c.home, "peers", "--json").stdout)
    assert peers["contacts"] >= 2
    ports = {contact["port"] for bucket in peers["buckets"] for contact in bucket["contacts"]}
    assert {a.dht[1], b.dht[1]} <= ports
    assert p2pblog(c.home, "peers").returncode == 0

    # A second node on the same home is refused while the first runs.
    twice = p2pblog(a.home, "run", "--listen", "127.0.0.1:0")
    assert twice.returncode == 1 and "already running" in twice.stderr

    # An unknown key: a clear "not found" and a non-zero exit.
    stranger = p2pblog(tmp_path / "s", "init").stdout.strip()
    missing = p2pblog(c.home, "lookup", stranger)
    assert missing.returncode == 1 and "not found" in missing.stderr

    # Ctrl-C and SIGTERM both stop a node cleanly: exit 0, state file removed.
    for node, sig in zip(nodes, (signal.SIGINT, signal.SIGTERM, signal.SIGINT), strict=True):
        assert node.stop(sig) == 0, node.output()
        assert "stopped" in node.output() and not (node.home / "node.json").exists()


def test_a_restarted_node_rejoins_without_bootstrap(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    a, b = start_pair(tmp_path, nodes)
    assert wait_for(lambda: (lookup(b.home, a.handle) or {}).get("found"), timeout=30), b.output()
    assert b.stop() == 0
    nodes.remove(b)
    # Same home, no --bootstrap: the saved routing table is enough.
    again = start_node(tmp_path / "b")
    nodes.append(again)
    assert wait_for(lambda: (lookup(again.home, a.handle) or {}).get("found"), timeout=30), again.output()
    assert "seeds answered" in again.output()


def _bad_datagrams(rng: random.Random, node_id: bytes) -> Iterator[bytes]:
    valid = b"\x00" + os.urandom(20) + msgpack.packb(["find_node", [node_id, node_id]])
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            yield valid[: rng.randrange(0, len(valid))]
        elif kind == 2:
            yield b"\x00" + rng.randbytes(20) + b"\xda" + struct.pack(">H", 9000) + b"x" * 9000
        elif kind == 3:
            yield b"\x00" + rng.randbytes(20) + msgpack.packb(["store", [1, "two", None, 4.5]])
        else:
            yield b"\x01" + rng.randbytes(20) + msgpack.packb([True, {"weird": [1, 2]}])


def test_a_flood_of_bad_datagrams_is_counted_and_lookups_still_work(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    a, b = start_pair(tmp_path, nodes)
    assert wait_for(lambda: (lookup(b.home, a.handle) or {}).get("found"), timeout=30)
    node_id = bytes.fromhex(json.loads(p2pblog(a.home, "peers", "--json").stdout)["self"]["node_id"])

    sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    try:
        for i, data in enumerate(_bad_datagrams(rng, node_id)):
            sources[i % len(sources)].sendto(data, a.dht)
            if i % 100 == 99:
                # Still a flood (10,000 in about half a second), paced so that the kernel's
                # receive buffer (which drops silently, before the node can count anything)
                # does not decide the count on a loaded machine.
                time.sleep(0.005)
    finally:
        for s in sources:
            s.close()

    assert a.process.poll() is None, f"seed {seed}: node died: {a.output()}"
    assert lookup(b.home, a.handle), f"seed {seed}"
    assert (lookup(a.home, b.handle) or {}).get("found"), f"seed {seed}"
    dropped = json.loads(p2pblog(a.home, "peers", "--json").stdout)["dropped"]
    assert sum(dropped.values()) >= 1000, f"seed {seed}: {dropped}"
    assert a.stop() == 0, a.output()


def test_commands_that_need_the_node_say_it_is_not_running(tmp_path: Path) -> None:
    home = tmp_path / "idle"
    handle = p2pblog(home, "init").stdout.strip()
    for args in (["lookup", handle], ["peers"]):
        result = p2pblog(home, *args)
        assert result.returncode == 1
        assert "node not running" in result.stderr and f"p2pblog --home {home} run" in result.stderr
        assert "Traceback" not in result.stderr
    # A stale node.json left by a killed node is detected too.
    (home / "node.json").write_text(json.dumps({"pid": 1, "control": ["127.0.0.1", 9], "token": "x"}))
    result = p2pblog(home, "peers")
    assert result.returncode == 1 and "node not running" in result.stderr


def test_run_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    home = tmp_path / "n"
    p2pblog(home, "init")
    result = p2pblog(home, "run", "--listen", "nonsense")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
