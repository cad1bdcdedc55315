"""A bounded hostile load against one ``p2pblog run`` node, from one host (127.66.0.1).

Run by ``bench_hostile.py`` as its own process (so its CPU is not the
victim's), for ``--duration`` seconds; every loop is bounded in count and
time, and it only ever sends to the 127.0.0.1 addresses it is given.  At the
end it writes what it sent and received to ``--stats`` (JSON).  Every socket
is bound to ``--source`` (default 127.66.0.1), so the attacker is one host
and the honest nodes on 127.0.0.1 are others, as on a real network.

The attacks, all at once (issue "Survive strangers"):

``dht``
    From `DHT_SOCKETS` UDP sockets (one host rotating source ports), at
    ``--rate`` datagrams per second in total, a mix of:
    validly signed ``p2pb_add_provider`` records for random feeds from
    `FLOOD_KEYS` keys (provider-store flooding); ``STORE`` of validly signed
    peer records of fresh keys, and the same STOREs again (record-store
    flooding and timer-heap growth by refreshes); ``FIND_NODE`` and ``PING``
    from random node ids that never answer (routing-table poisoning); and
    ``p2pb_get_providers`` for keys with many providers (amplification,
    measured: bytes received per byte sent on that socket).
``gossip``
    Up to `IDLE_CONNECTIONS` TCP connections to the gossip port that never
    start the handshake (connection exhaustion), reopened when closed.
``clock``
    Every `CLOCK_EVERY` seconds, a fresh key completes the Noise handshake
    and sends CLOCK frames naming `CLOCK_FEEDS` random feeds (tracked-feed
    memory), then idles; at most `CLOCK_SESSIONS` at a time.
``control``
    Up to `CONTROL_CONNECTIONS` idle TCP connections to the control port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import socket
import threading
import time
from typing import Any

from dht import wire
from gossip.messages import MAX_NOTES_PER_FRAME, Clock, Note, encode_message
from gossip.transport import FrameReceived, HandshakeCompleted, SecureChannel
from identity import Identity
from identity.records import PEER, PROVIDER, create_record, peer_key, provider_key

DHT_SOCKETS = 64
FLOOD_KEYS = 4
FLOOD_FEEDS_PER_KEY = 2_000
AMP_KEYS = 20
AMP_FEEDS = 50
FRESH_PEERS = 1_000
IDLE_CONNECTIONS = 150
CLOCK_EVERY = 2.0
CLOCK_FEEDS = 65_536
CLOCK_SESSIONS = 20
CONTROL_CONNECTIONS = 1_100
#: The attacker's address (set from --source).
SOURCE = ["127.66.0.1"]
#: Shares of the DHT mix, out of 100.
MIX = (
    ("provider", 35),
    ("store", 10),
    ("refresh", 15),
    ("find_node", 20),
    ("ping", 10),
    ("get_providers", 10),
)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _records(rng: random.Random) -> dict[str, list[tuple[bytes, bytes]]]:
    """(dht key, signed value) pools, made before the clock starts."""
    expires = int(time.time()) + 3600
    addrs = [("tcp", "127.0.0.1", 9)]

    def ident() -> Identity:
        return Identity(rng.randbytes(32))

    providers = []
    for _ in range(FLOOD_KEYS):
        who = ident()
        for _ in range(FLOOD_FEEDS_PER_KEY):
            feed = rng.randbytes(32)
            rec = create_record(who, type=PROVIDER, seq=1, expires=expires, addrs=addrs, feed=feed)
            providers.append((provider_key(feed), rec.raw))
    amp_feeds = [rng.randbytes(32) for _ in range(AMP_FEEDS)]
    for _ in range(AMP_KEYS):
        who = ident()
        for feed in amp_feeds:
            rec = create_record(who, type=PROVIDER, seq=1, expires=expires, addrs=addrs, feed=feed)
            providers.append((provider_key(feed), rec.raw))
    rng.shuffle(providers)
    peers = []
    for _ in range(FRESH_PEERS):
        who = ident()
        rec = create_record(who, type=PEER, seq=1, expires=expires, addrs=addrs)
        peers.append((peer_key(who.public_key), rec.raw))
    return {"providers": providers, "peers": peers, "amp": [(provider_key(f), b"") for f in amp_feeds]}


def dht_attack(
    target: tuple[str, int], rate: float, deadline: float, rng: random.Random, stats: Stats
) -> None:
    pools = _records(rng)
    socks = []
    for _ in range(DHT_SOCKETS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((SOURCE[0], 0))
        s.setblocking(False)
        socks.append(s)
    amp_sock = socks[0]
    kinds = [k for k, share in MIX for _ in range(share)]
    held: list[tuple[bytes, bytes]] = []
    p_i = s_i = 0
    sent = 0
    start = time.monotonic()
    try:
        while time.monotonic() < deadline:
            # Pace: sent datagrams never run ahead of rate * elapsed.
            ahead = sent - rate * (time.monotonic() - start)
            if ahead > 0:
                time.sleep(min(ahead / rate, 0.05))
                continue
            kind = rng.choice(kinds)
            msg_id = rng.randbytes(wire.MSG_ID_BYTES)
            sender = rng.randbytes(20)
            sock = rng.choice(socks[1:])
            request: wire.Request
            if kind == "provider":
                key, value = pools["providers"][p_i % len(pools["providers"])]
                p_i += 1
                request = wire.AddProvider(msg_id, sender, key, value)
            elif kind == "store" or (kind == "refresh" and not held):
                key, value = pools["peers"][s_i % len(pools["peers"])]
                s_i += 1
                held.append((key, value))
                request = wire.Store(msg_id, sender, key, value)
            elif kind == "refresh":
                key, value = held[rng.randrange(min(len(held), 2))]  # the same 2 records, again and again
                request = wire.Store(msg_id, sender, key, value)
            elif kind == "find_node":
                request = wire.FindNode(msg_id, sender, rng.randbytes(20))
            elif kind == "ping":
                request = wire.Ping(msg_id, sender)
            else:
                key, _ = rng.choice(pools["amp"])
                request = wire.GetProviders(msg_id, sender, key)
                sock = amp_sock
            data = wire.encode_request(request)
            with contextlib.suppress(BlockingIOError):
                sock.sendto(data, target)
                stats.add(f"dht.sent.{kind}")
                stats.add("dht.sent_bytes", len(data))
                if sock is amp_sock:
                    stats.add("amp.sent_bytes", len(data))
            sent += 1
            for s in socks:  # drain answers (and the victim's verification pings, unanswered)
                for _ in range(64):
                    try:
                        got = s.recv(65536)
                    except BlockingIOError:
                        break
                    stats.add("dht.received_bytes", len(got))
                    if s is amp_sock and got[:1] == b"\x01":
                        stats.add("amp.received_bytes", len(got))
                        stats.add("amp.answers")
    finally:
        for s in socks:
            s.close()


def still_open(conns: list[socket.socket], stats: Stats, label: str) -> list[socket.socket]:
    """The non-blocking connections the victim has not closed (what they received is
    discarded); the closed ones are closed here and counted as ``<label>.closed_by_victim``."""
    alive = []
    for s in conns:
        try:
            if s.recv(65536) == b"":
                raise ConnectionResetError
            alive.append(s)
        except BlockingIOError:
            alive.append(s)
        except OSError:
            s.close()
            stats.add(f"{label}.closed_by_victim")
    return alive


def idle_connections(target: tuple[str, int], count: int, deadline: float, stats: Stats, label: str) -> None:
    """Keep up to count idle TCP connections open to target; reopen closed ones (at most 50/s)."""
    conns: list[socket.socket] = []
    try:
        while time.monotonic() < deadline:
            opened = 0
            while len(conns) < count and opened < 50 and time.monotonic() < deadline:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((SOURCE[0], 0))
                s.settimeout(0.5)
                try:
                    s.connect(target)
                    s.setblocking(False)
                    conns.append(s)
                    stats.add(f"{label}.connected")
                except OSError:
                    s.close()
                    stats.add(f"{label}.refused")
                    break
                opened += 1
            conns = still_open(conns, stats, label)
            stats.add(f"{label}.open_samples")
            stats.add(f"{label}.open_sum", len(conns))
            time.sleep(1.0)
    finally:
        for s in conns:
            s.close()


def _clock_session(
    target: tuple[str, int], victim: bytes, deadline: float, stats: Stats
) -> socket.socket | None:
    me = Identity(os.urandom(32))
    now = time.monotonic()
    channel = SecureChannel.initiator(me, now=now, expected_peer=victim, random_bytes=os.urandom)
    s = socket.create_connection(target, timeout=5.0, source_address=(SOURCE[0], 0))
    s.settimeout(5.0)
    try:
        s.sendall(channel.data_to_send())
        while time.monotonic() < min(deadline, now + 10):
            data = s.recv(65536)
            if not data:
                raise ConnectionResetError
            channel.receive_data(data, time.monotonic())
            out = channel.data_to_send()
            if out:
                s.sendall(out)
            done = False
            while (event := channel.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    done = True
                elif not isinstance(event, FrameReceived):
                    raise ConnectionResetError(str(event))
            if done:
                break
        else:
            raise TimeoutError
        stats.add("clock.handshakes")
        feeds = os.urandom(32 * CLOCK_FEEDS)
        for first in range(0, CLOCK_FEEDS, MAX_NOTES_PER_FRAME):
            last = min(first + MAX_NOTES_PER_FRAME, CLOCK_FEEDS)
            notes: dict[bytes, Note | None] = {
                feeds[i * 32 : i * 32 + 32]: Note(5) for i in range(first, last)
            }
            channel.send_frame(encode_message(Clock(notes)), time.monotonic())
            s.sendall(channel.data_to_send())
            stats.add("clock.feeds_named", last - first)
        s.setblocking(False)
        return s
    except (OSError, ValueError):
        stats.add("clock.failed")
        s.close()
        return None


def clock_attack(target: tuple[str, int], victim: bytes, deadline: float, stats: Stats) -> None:
    sessions: list[socket.socket] = []
    try:
        while time.monotonic() < deadline:
            sessions = still_open(sessions, stats, "clock")
            if len(sessions) < CLOCK_SESSIONS:
                s = _clock_session(target, victim, deadline, stats)
                if s is not None:
                    sessions.append(s)
            time.sleep(CLOCK_EVERY)
    finally:
        for s in sessions:
            s.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError("only 127.0.0.0/8 targets")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dht", type=_addr, required=True)
    parser.add_argument("--gossip", type=_addr, required=True)
    parser.add_argument("--victim-key", required=True, help="the victim's public key, hex")
    parser.add_argument("--control", type=_addr, required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1500.0, help="DHT datagrams per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--source", default="127.66.0.1", help="the attacker's address (in 127.0.0.0/8)")
    args = parser.parse_args()
    if not args.source.startswith("127."):
        parser.error("--source must be in 127.0.0.0/8")
    SOURCE[0] = args.source
    if not 0 < args.duration <= 600:
        parser.error("--duration is 0..600 s")
    _raise_fd_limit()
    stats = Stats()
    rng = random.Random(args.seed)
    start = time.monotonic()
    deadline = start + args.duration
    threads = [
        threading.Thread(target=dht_attack, args=(args.dht, args.rate, deadline, rng, stats)),
        threading.Thread(
            target=idle_connections, args=(args.gossip, IDLE_CONNECTIONS, deadline, stats, "gossip")
        ),
        threading.Thread(
            target=clock_attack, args=(args.gossip, bytes.fromhex(args.victim_key), deadline, stats)
        ),
        threading.Thread(
            target=idle_connections, args=(args.control, CONTROL_CONNECTIONS, deadline, stats, "control")
        ),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
    out: dict[str, Any] = dict(sorted(stats.counts.items()))
    out["seconds"] = round(time.monotonic() - start, 1)
    if out.get("amp.sent_bytes"):
        out["amp.ratio"] = round(out.get("amp.received_bytes", 0) / out["amp.sent_bytes"], 2)
    with open(args.stats, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
