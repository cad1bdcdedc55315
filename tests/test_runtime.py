"""The trio runtime (`p2pblog.runtime.NodeDriver`) in one process, on trio's testing tools.

Time is a `trio.testing.MockClock` that starts at `T0` (Unix seconds) and
autojumps, and the drivers' clock is ``trio.current_time``: the cores' ``now``
is the virtual clock, so minutes of protocol time take milliseconds and every
timer fires at an exact, repeatable instant.  Gossip connections are
`trio.testing.memory_stream_pair` streams handed out by `MemoryNet` (one
`GossipTransport` per node, dials by address, refused and unanswered
addresses); the DHT runs on real UDP sockets on 127.0.0.1, since the driver
reads its socket directly.  The clock only jumps after `AUTOJUMP` real
seconds with every task blocked, so a loopback datagram in flight is read
before time moves on.  Cores are real `NodeCore`s on real SQLite stores,
subclassed only to note the inputs the driver gives them.
"""

from __future__ import annotations

import errno
import functools
import itertools
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from random import Random
from typing import Any

import pytest
import trio
import trio.testing

from dht.core import RPC_TIMEOUT
from dht.events import BootstrapFinished
from gossip.transport import DEFAULT_IDLE_TIMEOUT
from identity import Identity
from p2pblog.lifecycle import SAVE_CONTACTS_EVERY
from p2pblog.node import MAINTAIN_EVERY, JoinFinished, NodeCore, RecordPublished, StartupFinished
from p2pblog.replication import EntriesStored, PeerConnected, PeerDisconnected
from p2pblog.runtime import DIAL_TIMEOUT, NodeDriver
from p2pblog.store import Store

T0 = 1_800_000_000.0
#: Real seconds all tasks must be blocked before the mock clock jumps (loopback UDP in flight).
AUTOJUMP = 0.01
#: Virtual seconds a test step may take.
BUDGET = 120.0
HOST = "127.0.0.1"
Address = tuple[str, int]


def run(test: Callable[[], Awaitable[None]]) -> None:
    clock = trio.testing.MockClock(autojump_threshold=AUTOJUMP)
    clock.jump(T0)
    trio.run(test, clock=clock)


class ClockHold:
    """Keeps the mock clock from jumping while real work runs off the event loop.

    The clock jumps to the next deadline once every task has been blocked for
    `AUTOJUMP` real seconds, and a task waiting for a verifier thread or process
    is blocked.  On a loaded machine a batch (or a worker process starting) takes
    far longer than that, and without a hold a few hundred jumps spend a test's
    whole virtual budget in under a second of real time.  In real use a batch
    takes milliseconds of the same clock the timers run on.
    """

    def __init__(self) -> None:
        self.clock = trio.lowlevel.current_clock()
        self.held = 0

    @staticmethod
    def current() -> ClockHold:
        """The hold of this run's clock, shared by every node of the run."""
        try:
            return _HOLD.get()
        except LookupError:
            hold = ClockHold()
            _HOLD.set(hold)
            return hold

    def wrap(self, work: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        clock = self.clock
        if not isinstance(clock, trio.testing.MockClock):
            return work

        async def held(*args: Any) -> None:
            self.held += 1
            clock.autojump_threshold = math.inf
            try:
                await work(*args)
            finally:
                self.held -= 1
                if not self.held:
                    clock.autojump_threshold = AUTOJUMP

        return held


_HOLD: trio.lowlevel.RunVar[ClockHold] = trio.lowlevel.RunVar("clock_hold")


# -- gossip "TCP" in memory --------------------------------------------------------------


class MemoryNet:
    """Gossip connections between the drivers of one test, as `trio.testing` memory streams.

    A dial to a listening address gives the dialler one end of a
    `memory_stream_pair` and queues the other for the listener's `accept`,
    from an ephemeral port as TCP would.  A dial to an address nobody listens
    on is refused at once; one in `unanswered` hangs (a dropped SYN).
    """

    def __init__(self) -> None:
        self.listening: dict[Address, MemoryTransport] = {}
        self.unanswered: set[Address] = set()
        #: Every dial: (from, to).
        self.dials: list[tuple[Address, Address]] = []
        self._next_port = 40000

    def transport(self, addr: Address) -> MemoryTransport:
        transport = self.listening[addr] = MemoryTransport(self, addr)
        return transport

    async def connect(self, source: Address, target: Address) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.dials.append((source, target))
        if target in self.unanswered:
            await trio.sleep_forever()
        listener = self.listening.get(target)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens on {target}")
        ours, theirs = trio.testing.memory_stream_pair()
        self._next_port += 1
        listener.incoming.send_nowait((theirs, (source[0], self._next_port)))
        return ours


class MemoryTransport:
    """One node's `p2pblog.runtime.GossipTransport` on a `MemoryNet`."""

    def __init__(self, net: MemoryNet, addr: Address) -> None:
        self.net = net
        self.addr = addr
        self.incoming, self._accepts = trio.open_memory_channel[tuple[trio.abc.Stream, Address]](math.inf)

    @property
    def listen_addr(self) -> Address:
        return self.addr

    async def accept(self) -> tuple[trio.abc.Stream, Address]:
        return await self._accepts.receive()

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await self.net.connect(self.addr, (host, port))

    def close(self) -> None:
        if self.net.listening.get(self.addr) is self:
            del self.net.listening[self.addr]


# -- real cores that note what the driver tells them --------------------------------------


class RecordingCore(NodeCore):
    """A real `NodeCore` that notes the driver's timer and connection inputs.

    Every input also wakes `wait_until`, so a test waits for a state of the
    node rather than for time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (now, the deadline `get_timer` gave) for every `handle_timer` call.
        self.timer_calls: list[tuple[float, float | None]] = []
        #: ("opened" | "failed" | "accepted" | "lost", conn_id, now).
        self.conn_inputs: list[tuple[str, int, float]] = []
        #: (now, conn_id, host, port) for every dial asked of the driver.
        self.dials: list[tuple[float, int, str, int]] = []
        #: Events the driver dispatched to `on_event` (not those a `request` took).
        self.events: list[object] = []
        self._changed = trio.Event()

    def _input(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        with trio.fail_after(BUDGET):
            while not done():
                await self._changed.wait()

    def on_event(self, event: object) -> None:
        self.events.append(event)
        self._input()

    def dials_to_make(self) -> list[tuple[int, str, int]]:
        dials = super().dials_to_make()
        self.dials += [(trio.current_time(), *dial) for dial in dials]
        return dials

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append((now, self.get_timer()))
        super().handle_timer(now)
        self._input()

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        super().receive_datagram(data, addr, now)
        self._input()

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        super().data_received(conn_id, data, now)
        self._input()

    def connection_accepted(self, addr: Address, now: float) -> int:
        conn_id = super().connection_accepted(addr, now)
        self.conn_inputs.append(("accepted", conn_id, now))
        self._input()
        return conn_id

    def connection_opened(self, conn_id: int, now: float) -> None:
        self.conn_inputs.append(("opened", conn_id, now))
        super().connection_opened(conn_id, now)
        self._input()

    def connection_failed(self, conn_id: int, now: float) -> None:
        self.conn_inputs.append(("failed", conn_id, now))
        super().connection_failed(conn_id, now)
        self._input()

    def connection_lost(self, conn_id: int, now: float) -> None:
        self.conn_inputs.append(("lost", conn_id, now))
        super().connection_lost(conn_id, now)
        self._input()

    def inputs(self, kind: str, conn_id: int) -> list[float]:
        return [now for what, cid, now in self.conn_inputs if what == kind and cid == conn_id]


class Node:
    """One node of a test: a recording core on a SQLite store, its driver, its run task."""

    def __init__(self, tmp_path: Path, seed: int, net: MemoryNet, **driver: Any) -> None:
        self.identity = Identity(bytes([seed]) * 32)
        self.store = Store(tmp_path / f"node{seed}.db")
        self.core = RecordingCore(
            self.identity,
            Random(seed),
            trio.current_time(),
            store=self.store,
            random_bytes=Random(1000 + seed).randbytes,
        )
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((HOST, 0))
        self.udp: Address = (HOST, udp.getsockname()[1])
        # One port for both, as `NodeDriver.bind_both` does.
        self.driver = NodeDriver(
            self.core,
            udp,
            net.transport(self.udp),
            clock=trio.current_time,
            on_event=self.core.on_event,
            **driver,
        )
        # The driver starts each batch's check (`_verify`) and each notice stamp's proof of
        # work (`_make_stamp`) as a task waiting for a worker: hold the mock clock while
        # one runs (see `ClockHold`).
        hold = ClockHold.current()
        self.driver._verify = hold.wrap(self.driver._verify)  # type: ignore[method-assign]
        self.driver._make_stamp = hold.wrap(self.driver._make_stamp)  # type: ignore[method-assign]
        self.addrs = [("udp", *self.udp), ("tcp", *self.driver.gossip_addr)]
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def start(self, nursery: trio.Nursery) -> None:
        async def run() -> None:
            with self.scope:
                await self.driver.run()
            self.stopped.set()

        nursery.start_soon(run)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()
        self.driver.close()

    def command(self, command: Callable[[float], object]) -> None:
        """Run a user command on the core at the current time, then flush (as the daemon does)."""
        command(self.driver.clock())
        self.driver.flush()

    def sessions(self) -> set[bytes]:
        """Peers a gossip session is open with, from the events the driver dispatched."""
        peers: set[bytes] = set()
        for event in self.core.events:
            if isinstance(event, PeerConnected):
                peers.add(event.peer)
            elif isinstance(event, PeerDisconnected):
                peers.discard(event.peer)
        return peers


@asynccontextmanager
async def running(tmp_path: Path, count: int, **driver: Any) -> AsyncIterator[tuple[MemoryNet, list[Node]]]:
    """Start ``count`` nodes; at the end stop them and check every timer fired when due."""
    net = MemoryNet()
    nodes = [Node(tmp_path, 11 + i, net, **driver) for i in range(count)]
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                node.start(nursery)
            yield net, nodes
            with trio.fail_after(1):
                for node in nodes:
                    await node.stop()
    finally:
        for node in nodes:
            node.driver.close()
            node.store.close()
    for node in nodes:
        # The timer fires at the core's deadline: not before (an early wake-up
        # re-reads the deadline) and, on the mock clock, not a moment later.
        assert node.core.timer_calls
        assert all(now == deadline for now, deadline in node.core.timer_calls), node.core.timer_calls


async def join(a: Node, b: Node) -> None:
    """b joins the DHT through a; both publish their peer records (what `p2pblog run` does)."""
    with trio.fail_after(BUDGET):
        joined = await b.driver.request(lambda now: b.core.bootstrap([a.udp], now))
        assert isinstance(joined, BootstrapFinished) and joined.seeds_answered == 1
        for node in (a, b):
            published = await node.driver.request(functools.partial(node.core.publish, node.addrs))
            assert isinstance(published, RecordPublished) and published.stored_at >= 1
    # A request's result goes to its waiter, not to on_event as well.
    for node in (a, b):
        assert not [e for e in node.core.events if isinstance(e, (BootstrapFinished, RecordPublished))]


async def catch_up(author: Node, follower: Node, text: str) -> None:
    """The author posts, then the follower follows it: wait for their session and the post.

    The follower finds the author in the DHT (both joined), dials it through
    its driver, and catches up with what it missed.
    """
    author.command(lambda now: author.core.post(text, now))
    follower.command(lambda now: follower.core.follow(author.key, now))
    await follower.core.wait_until(lambda: author.key in follower.sessions())
    await author.core.wait_until(lambda: follower.key in author.sessions())
    await follower.core.wait_until(lambda: follower.store.latest_seq(author.key) == 1)


def open_connections(core: RecordingCore) -> list[int]:
    """Connections the driver reported opened or accepted and not lost since."""
    live = [cid for what, cid, _ in core.conn_inputs if what in ("opened", "accepted")]
    return [cid for cid in live if not core.inputs("lost", cid)]


# -- tests ----------------------------------------------------------------------------------


def test_the_mock_clock_does_not_jump_while_work_off_the_loop_is_held() -> None:
    async def main() -> None:
        async def check() -> None:
            await trio.to_thread.run_sync(time.sleep, 20 * AUTOJUMP)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 1000)  # a deadline to jump to
            start = trio.current_time()
            await ClockHold.current().wrap(check)()
            assert trio.current_time() == start
            await check()  # not held: the clock jumps to the sleeper's deadline
            assert trio.current_time() == start + 1000

    run(main)


def test_a_post_reaches_a_follower_over_the_runtime(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, 2) as (net, (a, b)):
            await join(a, b)
            await catch_up(a, b, "before the follow")
            assert [item.entry.text for item in b.store.feed(a.key)] == ["before the follow"]
            assert (b.udp, a.udp) in net.dials
            # Live push: a post made while connected arrives without another dial.
            dials = len(net.dials)
            a.command(lambda now: a.core.post("while connected", now))
            await b.core.wait_until(lambda: b.store.latest_seq(a.key) == 2)
            assert b.store.feed(a.key)[0].entry.text == "while connected"
            assert len(net.dials) == dials
            stored = [e for e in b.core.events if isinstance(e, EntriesStored) and e.feed == a.key]
            assert sum(e.count for e in stored) == 2
            assert a.driver.connections == b.driver.connections == 1
            # Quiet for longer than the idle timeout: the timers run (keepalives,
            # maintenance) and the connection stays.
            quiet = trio.current_time()
            await trio.sleep(DEFAULT_IDLE_TIMEOUT + MAINTAIN_EVERY)
            assert a.driver.connections == b.driver.connections == 1
            assert len(net.dials) == dials
            for node in (a, b):
                times = [
                    quiet,
                    *(now for now, _ in node.core.timer_calls if now > quiet),
                    trio.current_time(),
                ]
                assert max(later - t for t, later in itertools.pairwise(times)) <= MAINTAIN_EVERY

    run(main)


def test_nodes_started_as_the_daemon_starts_them_join_publish_and_save_contacts(tmp_path: Path) -> None:
    # `p2pblog run` calls NodeCore.start and flushes: the core's lifecycle does
    # the rest over the runtime (join, publish with retries, save contacts).
    async def main() -> None:
        async with running(tmp_path, 2) as (_, (a, b)):
            a.command(lambda now: a.core.start(a.addrs, [], now))
            b.command(lambda now: b.core.start(b.addrs, [a.udp], now))
            for node in (a, b):
                await node.core.wait_until(
                    lambda node=node: any(
                        isinstance(e, StartupFinished) and e.stored_at >= 1 for e in node.core.events
                    )
                )
            (joined,) = [e for e in b.core.events if isinstance(e, JoinFinished)]
            assert (joined.seeds, joined.answered) == (1, 1)
            await trio.sleep(SAVE_CONTACTS_EVERY + MAINTAIN_EVERY)
            assert a.udp in {(host, port) for _, host, port, _ in b.store.load_contacts()}

    run(main)


def test_the_timer_fires_at_the_core_deadline_and_rearms_after_an_input(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a seed that never answers
    silent.bind((HOST, 0))
    silent.setblocking(False)
    seed: Address = silent.getsockname()

    async def main() -> None:
        async with running(tmp_path, 1) as (_, (node,)):
            core = node.core
            # Alone, the node polls for a first contact every second from T0 on, exactly then.
            await trio.sleep_until(T0 + 3.25)
            assert [now for now, _ in core.timer_calls] == [T0, T0 + 1, T0 + 2, T0 + 3]
            idle_deadline = core.get_timer()
            assert idle_deadline == T0 + 4
            arrivals: list[float] = []

            async def listen() -> None:
                while True:
                    await trio.lowlevel.wait_readable(silent)
                    silent.recv(65536)
                    arrivals.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                calls = len(core.timer_calls)
                with trio.fail_after(BUDGET):
                    joined = await node.driver.request(lambda now: core.bootstrap([seed], now))
                nursery.cancel_scope.cancel()
            # The request resolved with its result event when the core gave up: after the RPC timeout.
            assert isinstance(joined, BootstrapFinished) and joined.seeds_answered == 0
            assert trio.current_time() == T0 + 3.25 + RPC_TIMEOUT
            # The ping went out with the flush after the command, and its deadline (a
            # retransmit, earlier than the idle poll) re-armed the timer.
            fired = [now for now, _ in core.timer_calls[calls:]]
            assert arrivals[0] == T0 + 3.25
            assert T0 + 3.25 < fired[0] < idle_deadline
            # Each retransmit left with the flush after the timer that made it.
            assert len(arrivals) > 1 and set(arrivals[1:]) <= set(fired)

    try:
        run(main)
    finally:
        silent.close()


@pytest.mark.parametrize("unanswered", [False, True], ids=["refused", "unanswered"])
def test_a_failing_dial_is_reported_to_the_core_as_connection_failed(
    tmp_path: Path, unanswered: bool
) -> None:
    async def main() -> None:
        async with running(tmp_path, 2) as (net, (a, b)):
            dead: Address = (HOST, 1)  # where a's records say it listens; nothing does
            if unanswered:
                net.unanswered.add(dead)
            a.addrs = [("udp", *a.udp), ("tcp", *dead)]
            await join(a, b)
            b.command(lambda now: b.core.follow(a.key, now))
            await b.core.wait_until(
                lambda: (
                    len(b.core.dials) >= 2
                    and all(b.core.inputs("failed", cid) for _, cid, _, _ in b.core.dials)
                )
            )
            # Every dial ended in exactly one connection_failed: at once when refused,
            # after DIAL_TIMEOUT (virtual seconds) when nobody answers; never opened or lost.
            wait = DIAL_TIMEOUT if unanswered else 0.0
            for at, conn_id, host, port in b.core.dials:
                assert (host, port) == dead
                assert b.core.inputs("failed", conn_id) == [at + wait]
                assert not b.core.inputs("opened", conn_id) and not b.core.inputs("lost", conn_id)
            # The core backs off and tries again later, not in a tight loop.
            assert b.core.dials[1][0] > b.core.dials[0][0] + wait
            assert b.driver.connections == 0 and not b.sessions()

    run(main)


def test_stopping_a_node_closes_its_connections_and_the_peer_sees_them_lost(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, 2) as (_, (a, b)):
            await join(a, b)
            await catch_up(a, b, "kept")
            [a_conn], [b_conn] = open_connections(a.core), open_connections(b.core)
            # Cancelling a's run is prompt: no virtual time passes, nothing is left running.
            stopped_at = trio.current_time()
            with trio.fail_after(1):
                await a.stop()
            assert trio.current_time() == stopped_at
            assert a.core.inputs("lost", a_conn) == [stopped_at] and a.driver.connections == 0
            assert a.driver.sock.fileno() == -1
            # b reads the end of the stream, and reports the connection lost.
            await b.core.wait_until(lambda: bool(b.core.inputs("lost", b_conn)))
            assert b.core.inputs("lost", b_conn) == [stopped_at]
            assert a.key not in b.sessions() and b.driver.connections == 0
            # b tries to reconnect later; a no longer listens, so the dial fails.
            await b.core.wait_until(
                lambda: any(b.core.inputs("failed", cid) for at, cid, _, _ in b.core.dials if at > stopped_at)
            )
            # The stores are untouched by it: a's post, and b's copy of it.
            assert [i.entry.text for i in a.store.feed(a.key)] == [i.entry.text for i in b.store.feed(a.key)]

    run(main)
