"""Connection admission under attack, sans IO: a `Replicator` driven by hand against hostile input.

The test plays the trio runtime for one node N (it follows author A) and
for everyone who connects to it: strangers that open connections and say
nothing, send half a handshake or garbage, or finish a handshake and idle,
from a few addresses in a few prefixes, while time passes.  After every
step the budgets must hold (`MAX_HANDSHAKING`, `MAX_INBOUND`,
`MAX_OUTBOUND`, the per-address and per-prefix caps, the handshake
deadline, the score table and address book bounds); and at any step an
honest follower from a fresh prefix must complete its inbound handshake,
and N must keep (or regain) its own connection to A, the author it follows.
"""

from __future__ import annotations

from collections import Counter
from random import Random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gossip.transport import ChannelState, SecureChannel
from identity import Identity
from p2pblog import replication
from p2pblog.dialing import MAX_BACKOFF, MAX_BOOK, MAX_CANDIDATES
from p2pblog.entry import FOLLOW
from p2pblog.replication import (
    EVICT_AFTER,
    HANDSHAKING_PER_IP,
    HANDSHAKING_PER_NET,
    INBOUND_HANDSHAKE_TIMEOUT,
    INBOUND_PER_IP,
    INBOUND_PER_NET,
    MAINTAIN_EVERY,
    MAX_CONNECTIONS,
    MAX_HANDSHAKING,
    MAX_INBOUND,
    MAX_OUTBOUND,
    Replicator,
)
from p2pblog.scoring import MAX_SUBJECTS
from p2pblog.store import Store

T0 = 1_800_000_000.0
N = Identity(bytes([7]) * 32)
A = Identity(bytes([8]) * 32)
A_ADDR = ("10.200.0.1", 7000)
#: Where the attack comes from: a few addresses in one IPv4 /24, four more /24s, one IPv6 /48
#: (together more than MAX_HANDSHAKING handshakes under the per-address and per-prefix caps).
ATTACKERS = [
    *(f"192.0.2.{i}" for i in range(1, 7)),
    "198.51.100.7",
    "198.51.100.8",
    "100.64.3.9",
    "100.64.4.9",
    "100.64.5.9",
    "2001:db8:1::5",
    "2001:db8:1:ff::6",
]


class Harness:
    """The driver: N's replicator, and the far ends of its connections that the test plays."""

    def __init__(self) -> None:
        self.now = T0
        self.store = Store(":memory:")
        self.store.append(N, FOLLOW, {"feed": A.public_key}, int(T0 * 1000))
        self.rng = Random(1)
        self.rep = Replicator(N, self.store, Random(2), T0, random_bytes=Random(3).randbytes)
        #: conn id -> the far end's channel, for connections whose far end speaks (None: it is silent).
        self.far: dict[int, SecureChannel | None] = {}
        self.author_conn: int | None = None
        self.rep.add_candidates(A.public_key, [(A.public_key, *A_ADDR)], self.now)
        self.flush()

    def close(self) -> None:
        self.store.close()

    def flush(self) -> None:
        """Move bytes both ways, make dials and closes happen, until quiet (bounded)."""
        rep = self.rep
        for _ in range(100):
            busy = False
            for conn_id, host, port in rep.dials_to_make():
                busy = True
                assert (host, port) == A_ADDR, "N dialled someone it does not follow"
                # The author is always up: the dial connects and A answers.
                self.far[conn_id] = SecureChannel.responder(A, now=self.now, random_bytes=self.rng.randbytes)
                self.author_conn = conn_id
                rep.connection_opened(conn_id, self.now)
            for conn_id in rep.connections_to_close():
                busy = True
                self.far.pop(conn_id, None)
                if conn_id == self.author_conn:
                    self.author_conn = None
                rep.connection_lost(conn_id, self.now)
            for conn_id, data in rep.data_to_send():
                far = self.far.get(conn_id)
                if far is None or far.state is ChannelState.CLOSED:
                    continue
                far.receive_data(data, self.now)
                while far.next_event() is not None:
                    pass
                reply = far.data_to_send()
                if reply:
                    busy = True
                    rep.data_received(conn_id, reply, self.now)
            while rep.next_event() is not None:
                pass
            if not busy:
                return
        raise AssertionError("the replicator did not settle")

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the replicator's timers at their deadlines (as the runtime does)."""
        end = self.now + seconds
        for _ in range(10_000):
            due = self.rep.get_timer()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.rep.handle_timer(self.now)
            self.flush()
        self.now = end

    def accept(self, ip: str, first: bytes = b"", far: SecureChannel | None = None) -> int:
        conn_id = self.rep.connection_accepted((ip, 40000 + len(self.far) % 20000), self.now)
        self.far[conn_id] = far
        if first:
            self.rep.data_received(conn_id, first, self.now)
        self.flush()
        return conn_id

    def handshake(self, ip: str, identity: Identity) -> tuple[int, SecureChannel]:
        """A peer dials N from ip and runs the whole handshake."""
        channel = SecureChannel.initiator(
            identity, now=self.now, expected_peer=N.public_key, random_bytes=self.rng.randbytes
        )
        conn_id = self.accept(ip, channel.data_to_send(), channel)
        return conn_id, channel


class AdmissionUnderAttack(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.honest = 0

    def teardown(self) -> None:
        self.h.close()

    @initialize()
    def n_connects_to_its_author(self) -> None:
        assert self.h.rep.is_connected(A.public_key)

    # -------------------------------------------------------------- hostile input

    @rule(ip=st.sampled_from(ATTACKERS), count=st.integers(1, 12))
    def idle_connections(self, ip: str, count: int) -> None:
        for _ in range(count):
            self.h.accept(ip)

    @rule(ip=st.sampled_from(ATTACKERS))
    def half_a_handshake(self, ip: str) -> None:
        # Message 1 of XX, then silence: N answers with message 2 and waits for message 3.
        stranger = Identity(self.h.rng.randbytes(32))
        channel = SecureChannel.initiator(stranger, now=self.h.now, random_bytes=self.h.rng.randbytes)
        self.h.accept(ip, channel.data_to_send())

    @rule(ip=st.sampled_from(ATTACKERS), data=st.binary(min_size=1, max_size=300))
    def garbage(self, ip: str, data: bytes) -> None:
        self.h.accept(ip, data)

    @rule(ip=st.sampled_from(ATTACKERS), count=st.integers(1, 8))
    def strangers_finish_handshakes_and_idle(self, ip: str, count: int) -> None:
        for _ in range(count):
            self.h.handshake(ip, Identity(self.h.rng.randbytes(32)))

    @rule(seconds=st.sampled_from([0.2, EVICT_AFTER, 2.0, INBOUND_HANDSHAKE_TIMEOUT, MAINTAIN_EVERY, 60.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.advance(seconds)

    @precondition(lambda self: self.h.author_conn is not None)
    @rule()
    def the_network_drops_the_author(self) -> None:
        conn_id = self.h.author_conn
        assert conn_id is not None
        self.h.author_conn = None
        self.h.far.pop(conn_id, None)
        self.h.rep.connection_lost(conn_id, self.h.now)
        self.h.flush()

    # -------------------------------------------------------------- what must still work

    @rule()
    def an_honest_follower_gets_in(self) -> None:
        self.honest += 1
        ip = f"203.0.{self.honest % 250}.{self.honest % 200 + 1}"  # a fresh prefix, never an attacker's
        follower = Identity(bytes([100 + self.honest % 100]) * 31 + bytes([self.honest // 100]))
        conn_id, channel = self.h.handshake(ip, follower)
        assert self.h.rep.is_connected(follower.public_key), self.h.rep.admission(self.h.now)
        assert channel.state is ChannelState.OPEN
        # It stays a while; then it leaves, freeing its slot.
        self.h.rep.connection_lost(conn_id, self.h.now)
        self.h.far.pop(conn_id, None)
        self.h.flush()

    @rule()
    def n_reaches_the_author_it_follows(self) -> None:
        # Whatever the inbound side holds, N redials A within its backoff and a maintenance pass.
        for _ in range(3):
            if self.h.rep.is_connected(A.public_key):
                break
            self.h.advance(MAX_BACKOFF + MAINTAIN_EVERY)
        assert self.h.rep.is_connected(A.public_key), self.h.rep.admission(self.h.now)

    # -------------------------------------------------------------- bounds

    @invariant()
    def budgets_hold(self) -> None:
        rep, now = self.h.rep, self.h.now
        conns = rep.connections()
        kinds = Counter(kind for kind, *_ in conns)
        assert kinds["handshaking"] <= MAX_HANDSHAKING
        assert kinds["inbound"] <= MAX_INBOUND
        assert kinds["outbound"] <= MAX_OUTBOUND
        assert rep.connection_count <= MAX_CONNECTIONS
        for kind, per_ip, per_net in (
            ("handshaking", HANDSHAKING_PER_IP, HANDSHAKING_PER_NET),
            ("inbound", INBOUND_PER_IP, INBOUND_PER_NET),
        ):
            ips = Counter(ip for k, ip, _, _ in conns if k == kind)
            nets = Counter(net for k, _, net, _ in conns if k == kind)
            assert max(ips.values(), default=0) <= per_ip, (kind, ips)
            assert max(nets.values(), default=0) <= per_net, (kind, nets)
        for kind, _, _, since in conns:
            if kind == "handshaking":
                assert now - since <= INBOUND_HANDSHAKE_TIMEOUT, "a handshake outlived its deadline"
        assert len(rep.scores) <= MAX_SUBJECTS
        assert len(rep.book) <= MAX_BOOK
        assert all(len(c) <= MAX_CANDIDATES for c in rep.dial_policy.candidates.values())


AdmissionUnderAttack.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAdmissionUnderAttack = AdmissionUnderAttack.TestCase


def test_idle_connections_from_one_prefix_cannot_stop_honest_handshakes_or_dials() -> None:
    """The issue's attack, spelled out: 100 idle connections from a few addresses of one /24."""
    h = Harness()
    try:
        for i in range(100):
            h.accept(f"192.0.2.{i % 5 + 1}")
        assert h.rep.admission(h.now)["handshaking"] <= HANDSHAKING_PER_NET
        assert h.rep.stats["refused.handshake_ip"] + h.rep.stats["refused.handshake_net"] > 0
        follower = Identity(bytes([99]) * 32)
        h.handshake("203.0.113.5", follower)
        assert h.rep.is_connected(follower.public_key)
        # The silent ones are closed at the deadline, and counted against their prefix.
        h.advance(INBOUND_HANDSHAKE_TIMEOUT + 0.1)
        assert h.rep.admission(h.now)["handshaking"] == 0
        assert h.rep.stats["handshake.timeout"] >= HANDSHAKING_PER_NET
        assert h.rep.scores.score(b"net:192.0.2.0/24", h.now) < 0
        # N still dials out: drop its author and it reconnects.
        assert h.author_conn is not None
        h.rep.connection_lost(h.author_conn, h.now)
        h.author_conn = None
        h.advance(MAX_BACKOFF + MAINTAIN_EVERY)
        assert h.rep.is_connected(A.public_key)
    finally:
        h.close()


def test_strangers_cannot_push_out_a_peer_with_a_good_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eviction rule's promise: a fresh key displaces only strangers with no positive history."""
    monkeypatch.setattr(replication, "MAX_INBOUND", 4)
    h = Harness()
    try:
        good = Identity(bytes([60]) * 32)
        h.rep.scores.credit(good.public_key, 5.0, h.now)  # as if it had delivered entries
        h.handshake("198.51.100.1", good)
        crowd = [Identity(bytes([61 + i]) * 32) for i in range(3)]
        for i, stranger in enumerate(crowd):
            h.handshake(f"192.0.2.{i + 1}", stranger)
        assert h.rep.admission(h.now)["inbound"] == 4
        # Newcomers from fresh prefixes: the crowded /24 gives up strangers to them, until
        # no prefix is more crowded than a newcomer's by two; the good peer stays throughout.
        newcomers = [Identity(bytes([70 + i]) * 32) for i in range(20)]
        for i, newcomer in enumerate(newcomers):
            h.handshake(f"100.64.{i}.1", newcomer)
            assert h.rep.is_connected(good.public_key)
            assert h.rep.admission(h.now)["inbound"] <= 4
        admitted = [n for n in newcomers if h.rep.is_connected(n.public_key)]
        assert 1 <= len(admitted) <= 3 and h.rep.stats["refused.capacity"] >= 17
        assert sum(h.rep.is_connected(s.public_key) for s in crowd) <= 1
        # A newcomer of higher standing than the worst stranger displaces it.
        better = Identity(bytes([95]) * 32)
        h.rep.scores.credit(better.public_key, 1.0, h.now)
        h.handshake("100.64.200.1", better)
        assert h.rep.is_connected(better.public_key) and h.rep.is_connected(good.public_key)
    finally:
        h.close()
