"""Connection admission and peer scores against real ``p2pblog run`` processes on 127.0.0.1.

1. A flood of idle TCP connections to a node's gossip port, from many
   addresses in several /24s of the loopback network (Linux accepts all of
   127.0.0.0/8), kept up while an honest follower (from 127.0.0.1) joins:
   the follower still connects and receives a post, and the node still
   dials out to an author it starts following during the flood.
2. A peer that sent forged entries is banned, and still refused after the
   node restarts (the ban is kept in the store), while a new key from the
   same address is welcome.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gossip.messages import Clock, Entries, Note
from gossip.transport import HandshakeCompleted
from identity import Identity, decode_handle
from p2pblog.entry import POST, encode_content
from p2pblog.store import Store
from tests.nodes import NodeProcess, fixed_port, init_home, run, start_node, status, wait_for
from tests.peers.gossip_attacker import Connection, GossipDialer

#: The flood's source addresses: 5 addresses in each of 5 /24s, none in 127.0.0.0/24 (the honest one's).
FLOOD_SOURCES = [f"127.0.{net}.{host}" for net in range(11, 16) for host in range(2, 7)]
FLOOD_CONNECTIONS = 100
#: Seconds between the flood's passes that reopen what the node closed.
REOPEN_EVERY = 1.0


def counters(node: NodeProcess) -> dict[str, int]:
    doc = status(node)["counters"]
    assert isinstance(doc, dict)
    return doc


def banned(home: Path, key: bytes) -> bool:
    """Whether the node's store holds a ban of key that runs past now."""
    with Store(home / "store.sqlite3") as store:
        rows = store.load_peer_scores(10_000)
    return any(subject == key and until > time.time() for subject, _, until, _ in rows)


def latest_seq(home: Path, handle: str) -> int:
    with Store(home / "store.sqlite3") as store:
        return store.latest_seq(decode_handle(handle))


class Flood:
    """Idle connections to ``addr`` from FLOOD_SOURCES, reopened as the node closes them."""

    def __init__(self, addr: tuple[str, int], count: int) -> None:
        self.addr = addr
        self.count = count
        self.socks: list[socket.socket | None] = [None] * count
        self.opened = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((FLOOD_SOURCES[i % len(FLOOD_SOURCES)], 0))
            sock.settimeout(2.0)
            sock.connect(self.addr)
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.failed += 1
            return
        self.socks[i] = sock
        self.opened += 1

    def _closed_by_peer(self, sock: socket.socket) -> bool:
        try:
            return sock.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in range(self.count):
                sock = self.socks[i]
                if sock is not None and self._closed_by_peer(sock):
                    sock.close()
                    self.socks[i] = sock = None
                if sock is None and not self._stop.is_set():
                    self._open(i)
            self._stop.wait(REOPEN_EVERY)

    def start(self) -> None:
        for i in range(self.count):
            self._open(i)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.socks:
            if sock is not None:
                sock.close()


@pytest.fixture
def running() -> list[NodeProcess]:
    return []


def in_parallel(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs (CLI commands, node starts) in threads; their results, in order."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result(timeout=120) for f in [pool.submit(job) for job in jobs]]


def test_a_flood_of_idle_connections_does_not_stop_honest_followers_or_dials(
    tmp_path: Path, running: list[NodeProcess]
) -> None:
    node = start_node(tmp_path / "n")
    running.append(node)
    try:
        init_home(tmp_path / "author")
        run(tmp_path / "author", "post", "the author's post")  # offline, into its store
        author, follower = in_parallel(
            lambda: start_node(tmp_path / "author", "--bootstrap", node.bootstrap),
            lambda: start_node(tmp_path / "follower", "--bootstrap", node.bootstrap),
        )
        assert isinstance(author, NodeProcess) and isinstance(follower, NodeProcess)
        running += [author, follower]

        flood = Flood(node.gossip, FLOOD_CONNECTIONS)
        flood.start()
        try:
            assert flood.opened >= FLOOD_CONNECTIONS * 0.9, (flood.opened, flood.failed)
            # During the flood: an honest follower connects and gets a post, and
            # the node dials out to an author it starts following.
            in_parallel(
                lambda: run(follower.home, "follow", node.handle),
                lambda: run(node.home, "post", "posted during the flood"),
                lambda: run(node.home, "follow", author.handle),
            )
            assert wait_for(lambda: latest_seq(follower.home, node.handle) >= 1, timeout=20), (
                counters(node),
                counters(follower),
            )
            assert wait_for(lambda: latest_seq(node.home, author.handle) >= 1, timeout=20), counters(node)
            # The flood's connections are cut (5 s handshake deadline, evictions) and it
            # reconnects: honest peers got in while it kept trying.
            assert wait_for(lambda: flood.opened > FLOOD_CONNECTIONS, timeout=20), flood.opened
            doc = status(node)
            reopened = flood.opened
        finally:
            flood.stop()
        peer_list = doc["peers"]
        assert isinstance(peer_list, list)
        sessions = {p["handle"]: p["direction"] for p in peer_list}  # handle -> "in" / "out"
        assert sessions.get(author.handle) == "out" and sessions.get(follower.handle) == "in", sessions
        # The flood was refused, evicted or timed out, never served; and it kept trying.
        assert reopened > FLOOD_CONNECTIONS, reopened
        seen = doc["counters"]
        assert isinstance(seen, dict)
        refused = sum(v for k, v in seen.items() if k.startswith("gossip.refused."))
        cut = seen.get("gossip.handshake.timeout", 0) + seen.get("gossip.evicted.handshaking", 0)
        assert refused > 0 and cut > 0, seen
        print({k: v for k, v in seen.items() if k.split(".")[1] in ("refused", "evicted", "handshake")})
        assert node.process.poll() is None, node.output()
    finally:
        for proc in running:
            proc.stop()


def test_a_peer_that_forged_entries_is_still_refused_after_a_restart(
    tmp_path: Path, running: list[NodeProcess]
) -> None:
    node = start_node(tmp_path / "n", listen=f"127.0.0.1:{fixed_port()}")  # restarted on it below
    running.append(node)
    try:
        node_key = decode_handle(node.handle)
        author = Identity(bytes([77]) * 32)
        liar = Identity(bytes([78]) * 32)
        run(node.home, "follow", author.handle)
        forged = liar.sign(encode_content(author.public_key, 1, None, 1, POST, {"text": "forged"}))

        # The liar claims the author's feed and sends entries it signed itself,
        # until the node hangs up (bounded: the session gives up after 8).
        with Connection(node.gossip) as conn:
            dialer = GossipDialer(conn, liar, expected_peer=node_key)
            assert isinstance(dialer.run_handshake(), HandshakeCompleted)
            dialer.send(Clock({author.public_key: Note(5)}))
            for _ in range(20):
                if not dialer.send_all([Entries(author.public_key, 1, (forged,))]):
                    break
                time.sleep(0.05)
            _, closed = dialer.read_until_closed(timeout=10)
            assert closed, "the node kept a session that sent forged entries"
        # The ban is in the store at once (a crash would not lose it).
        assert wait_for(lambda: banned(node.home, liar.public_key), timeout=10), node.output()

        def refused(target: NodeProcess, identity: Identity) -> bool:
            with Connection(target.gossip) as conn:
                dialer = GossipDialer(conn, identity, expected_peer=node_key)
                if not isinstance(dialer.run_handshake(), HandshakeCompleted):
                    return True
                return conn.wait_closed(timeout=5)

        assert refused(node, liar)
        assert node.stop() == 0, node.output()

        node = start_node(node.home, listen=f"{node.dht[0]}:{node.dht[1]}")
        running.append(node)
        assert refused(node, liar), "the ban did not survive the restart"
        assert counters(node).get("gossip.refused.banned") == 1, counters(node)
        # A new key from the same address is welcome (the prefix is not banned).
        with Connection(node.gossip) as conn:
            honest = GossipDialer(conn, Identity(bytes([79]) * 32), expected_peer=node_key)
            assert isinstance(honest.run_handshake(), HandshakeCompleted)
            assert not conn.wait_closed(timeout=1.5)
    finally:
        for proc in running:
            proc.stop()
