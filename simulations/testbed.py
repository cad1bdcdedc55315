"""`Testbed`: sans-IO cores on the simulator's network, for tests.

Theory of operation
-------------------
The unit tests and the simulator share one in-memory network: a `Testbed`
is an `Engine` (virtual time, a heap of ``(time, seq, action)``, seeded
randomness), a `Network` (latency, loss, streams, partitions, crashes) with
the given `LinkModel`, and a `CoreEndpoint` per attached core (a bare
`dht.DhtCore`, a gossip `Replicator`, a `NodeCore`, or a peer the test drives
by hand).  Nothing runs until the test says so: `settle` runs every action
due now, `run` every action due up to a time, `step` one action,
`run_until_true` actions until a condition holds.  A test may call a core's
methods directly (post, follow, a hand-made frame) instead of through
`CoreEndpoint.command`: `settle`, `run`, `advance` and `run_until_true`
first flush every endpoint, so those outputs go out and the timers follow
the cores' deadlines.  Same seed and same calls, same run: no trio, no
sockets, no clock.

Times the test sees (`now`, `run`'s argument) are the cores' clock, which is
``epoch + engine.now``: NodeCore wants Unix-like seconds, a bare DhtCore is
happy from 0.  A zero-latency, lossless model (``LinkModel(Latency(ms=0))``)
delivers everything at the instant it is sent, in the order it was sent:
the engine runs actions due at one instant in the order they were
scheduled, so a dial is accepted, then opened, and each chunk arrives,
before anything a later output caused.

For tests the network keeps a log of dials (`Network.dial_log`, engine
times); it can firewall a node (`Network.firewalled`), `reset` one link and
crash a node without its peers noticing (``crash(peers_notice=False)``).
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import Any, TypeVar

from simulations.endpoint import Address, CoreEndpoint, TimedCore
from simulations.engine import Engine
from simulations.network import LinkModel, Network

C = TypeVar("C", bound=TimedCore)


class Testbed:
    """An engine, a network and the cores attached to it; see the module docstring."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, model: LinkModel, *, seed: int = 0, epoch: float = 0.0) -> None:
        self.engine = Engine(seed)
        self.network = Network(self.engine, model)
        self.network.dial_log = []
        self.epoch = epoch

    @property
    def now(self) -> float:
        return self.epoch + self.engine.now

    def rng(self, concern: str) -> Random:
        """A seeded random source for one concern (``"node:3"``, ``"workload"``)."""
        return self.engine.rng(concern)

    def attach(
        self,
        core: C,
        *,
        addr: Address | None = None,
        region: int = 0,
        on_event: Callable[[object], None] | None = None,
        min_timer_step: float | None = None,
    ) -> CoreEndpoint[C]:
        """Put core on the network (at addr, or the next ``10.x.y.z`` address)."""
        endpoint = CoreEndpoint(
            core,
            self.engine,
            self.network,
            epoch=self.epoch,
            addr=addr,
            region=region,
            on_event=on_event,
            min_timer_step=min_timer_step,
        )
        return endpoint

    @property
    def endpoints(self) -> list[CoreEndpoint[Any]]:
        return [node for node in self.network.nodes if isinstance(node, CoreEndpoint)]

    def endpoint(self, addr: Address) -> CoreEndpoint[Any]:
        node = self.network.nodes[self.network.addrs[addr]]
        assert isinstance(node, CoreEndpoint)
        return node

    def send_datagram(self, src: Address, data: bytes, dst: Address) -> None:
        """Send a datagram from an attached address, as if its core had (a hand-made request)."""
        self.network.send_datagram(self.network.addrs[src], data, dst)

    # -- running -------------------------------------------------------------------

    def flush(self) -> None:
        """Flush every endpoint: what tests made cores do directly goes out, timers re-arm."""
        for node in self.network.nodes:
            if isinstance(node, CoreEndpoint):
                node.flush()

    def settle(self, max_steps: int = 100_000) -> None:
        """Flush, then run every action due now (at zero latency: until nobody has anything to say)."""
        self.flush()
        engine = self.engine
        for _ in range(max_steps):
            when = engine.next_time()
            if when is None or when > engine.now:
                return
            engine.step()
        raise AssertionError(f"not settled after {max_steps} actions at {self.now:.3f}")

    def run(self, until: float) -> None:
        """Flush, then run every action due up to the core time until; then now = until."""
        self.flush()
        self.engine.run(until - self.epoch)

    def advance(self, seconds: float) -> None:
        self.flush()
        self.engine.run(self.engine.now + seconds)

    def step(self) -> bool:
        """Run the next action, whenever it is due; False if nothing is left."""
        return self.engine.step()

    def run_until_true(self, done: Callable[[], bool], *, within: float) -> None:
        """Run actions until done() holds; AssertionError if it does not within the time."""
        self.flush()
        deadline = self.engine.now + within
        while not done():
            when = self.engine.next_time()
            if when is None or when > deadline:
                raise AssertionError(f"not done within {within:g} s (at {self.now:.3f})")
            self.engine.step()
