"""`SimNode`: one p2pblog node (the real `NodeCore`) driven by the simulator.

It is the simulator's version of `p2pblog.runtime.NodeDriver`: after every
input it flushes the core's outputs into the `Network` (datagrams, dials,
stream data, closes), hands its events to the `Simulation` (metrics and
oracles), and keeps exactly one engine timer armed at the core's earliest
deadline.  Time given to the core is ``EPOCH + engine.now``, so records carry
plausible absolute expiry times.

A crash drops the core (routing table, sessions, timers: volatile state) and
keeps the `Store` object (the disk); a restart builds a new core over the same
store and starts it like the daemon does (`NodeCore.start`: the core's own
lifecycle rejoins from the contacts it saved and reconnects from its address
book).  This driver holds no policy of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from random import Random
from typing import Any

from dht.ids import Address
from identity import Identity
from p2pblog.node import NodeCore
from p2pblog.store import Store
from simulations.engine import Engine, Timer
from simulations.network import Network

#: Virtual time 0 of every scenario, as Unix seconds (2027-01-15).
EPOCH = 1_800_000_000.0
#: Smallest step between two timer firings, so a core whose deadline does
#: not move cannot spin the engine at one instant.
MIN_TIMER_STEP = 0.001


class SimNode:
    def __init__(
        self,
        index: int,
        identity: Identity,
        engine: Engine,
        network: Network,
        *,
        region: int = 0,
        on_event: Callable[[SimNode, Any], None],
        make_core: Callable[[SimNode, Random, float], NodeCore] | None = None,
    ) -> None:
        self.index = index
        self.identity = identity
        self.engine = engine
        self.network = network
        self.region = region
        self.on_event = on_event
        self.make_core = make_core
        self.store = Store(":memory:")
        self.up = False
        self.core: NodeCore | None = None
        self.incarnation = 0
        #: The replication counters of the cores a crash took away (the metrics sum them).
        self.crashed_stats: Counter[str] = Counter()
        self.addr: Address = network.add(self)
        self._timer: Timer | None = None

    @property
    def now(self) -> float:
        return EPOCH + self.engine.now

    # -- lifecycle ---------------------------------------------------------------

    def start(self, seeds: list[Address]) -> None:
        """Boot (or reboot) the node: a new core over the kept store."""
        self.incarnation += 1
        rng = self.engine.rng(f"node:{self.index}:{self.incarnation}")
        if self.make_core is not None:
            core = self.make_core(self, rng, self.now)
        else:
            core = NodeCore(self.identity, rng, self.now, store=self.store, random_bytes=rng.randbytes)
        self.core = core
        self.up = True
        addrs = [("udp", self.addr[0], self.addr[1]), ("tcp", self.addr[0], self.addr[1])]
        core.start(addrs, seeds, self.now)
        self.flush()

    def crash(self) -> None:
        """Lose all volatile state; the store survives."""
        if not self.up:
            return
        self.up = False
        if self.core is not None:
            self.crashed_stats.update(self.core.counters())
        self.core = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.network.node_down(self.index)
        self.network.drop_node_links(self.index)

    # -- inputs from the network (the Endpoint protocol) ---------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.core is not None:
            self.core.receive_datagram(data, addr, self.now)
            self.flush()

    def connection_accepted(self, addr: tuple[str, int]) -> int:
        assert self.core is not None
        conn_id = self.core.connection_accepted(addr, self.now)
        self.flush()
        return conn_id

    def connection_opened(self, conn_id: int) -> None:
        if self.core is not None:
            self.core.connection_opened(conn_id, self.now)
            self.flush()

    def connection_failed(self, conn_id: int) -> None:
        if self.core is not None:
            self.core.connection_failed(conn_id, self.now)
            self.flush()

    def data_received(self, conn_id: int, data: bytes) -> None:
        if self.core is not None:
            self.core.data_received(conn_id, data, self.now)
            self.flush()

    def connection_lost(self, conn_id: int) -> None:
        if self.core is not None:
            self.core.connection_lost(conn_id, self.now)
            self.flush()

    # -- the flush after every input ---------------------------------------------------

    def flush(self) -> None:
        core = self.core
        if core is None:
            return
        network, index = self.network, self.index
        for data, addr in core.datagrams_to_send():
            network.send_datagram(index, data, addr)
        for conn_id, host, port in core.dials_to_make():
            network.dial(index, conn_id, (host, port))
        for conn_id, data in core.data_to_send():
            network.stream_send(index, conn_id, data)
        for conn_id in core.connections_to_close():
            network.close(index, conn_id)
        while (event := core.next_event()) is not None:
            self.on_event(self, event)
        if self.core is not core:  # an event handler crashed us
            return
        deadline = core.get_timer()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        at = max(deadline - EPOCH, self.engine.now)
        if self._timer is not None and self._timer.active:
            if self._timer.at <= at:
                return  # fires no later than needed; handle_timer may be called early
            self._timer.cancel()
        self._timer = self.engine.at(at, self._fire)

    def _armed(self) -> Timer | None:
        """The timer flush armed (a method call, so mypy does not assume it is still None)."""
        return self._timer

    def _fire(self) -> None:
        core = self.core
        self._timer = None
        if core is None:
            return
        core.handle_timer(self.now)
        self.flush()
        timer = self._armed()
        if timer is not None and timer.active and timer.at <= self.engine.now:
            # The deadline did not move: step past it rather than spin.
            timer.cancel()
            self._timer = self.engine.after(MIN_TIMER_STEP, self._fire)
