"""`SimNode`: one p2pblog node (the real `NodeCore`) driven by the simulator.

It is the simulator's version of `p2pblog.runtime.NodeDriver`: after every
input it flushes the core's outputs into the `Network` (datagrams, dials,
stream data, closes), hands its events to the `Simulation` (metrics and
oracles), and keeps exactly one engine timer armed at the core's earliest
deadline.  Time given to the core is ``EPOCH + engine.now``, so records carry
plausible absolute expiry times.

A crash drops the core (routing table, sessions, timers: volatile state) and
keeps the `Store` object (the disk); a restart builds a new core over the same
store, which rejoins from the contacts it saved (every `SAVE_CONTACTS_EVERY`
seconds, as the real node does) and reconnects from its address book.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from random import Random
from typing import Any

from dht import BootstrapFinished
from dht.ids import Address
from identity import Identity
from p2pblog.node import NodeCore, RecordPublished
from p2pblog.store import Store
from simulations.engine import Engine, Timer
from simulations.network import Network

#: Virtual time 0 of every scenario, as Unix seconds (2027-01-15).
EPOCH = 1_800_000_000.0
SAVE_CONTACTS_EVERY = 60.0
#: Smallest step between two timer firings, so a core whose deadline does
#: not move cannot spin the engine at one instant.
MIN_TIMER_STEP = 0.001
#: Seconds between attempts to publish the peer record while no node stored
#: it (the daemon's ``PUBLISH_RETRY``); then NodeCore's own republish timer.
PUBLISH_RETRY = (2.0, 5.0, 10.0, 30.0, 60.0)


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
        self._save_timer: Timer | None = None
        self._addrs: list[tuple[str, str, int]] = []
        self._join_query: int | None = None
        self._publish_query: int | None = None
        self._publish_tries = 0

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
        saved = [(host, port) for _, host, port, _ in self.store.load_contacts()[:32]]
        seeds = list(dict.fromkeys([*seeds, *saved]))
        seeds = [s for s in seeds if s != self.addr]
        addrs = [("udp", self.addr[0], self.addr[1]), ("tcp", self.addr[0], self.addr[1])]
        core.set_addresses(addrs)
        self._addrs = addrs
        self._join_query = self._publish_query = None
        self._publish_tries = 0
        # As the daemon does (`p2pblog.daemon.Node._join`): publish the peer
        # record once the bootstrap lookup has filled the routing table, and
        # again while no node stored it.
        if seeds:
            self._join_query = core.bootstrap(seeds, self.now)
        else:
            self._publish_query = core.publish(addrs, self.now)
        self.flush()
        self._save_timer = self.engine.after(SAVE_CONTACTS_EVERY, self._save_contacts)

    def crash(self) -> None:
        """Lose all volatile state; the store survives."""
        if not self.up:
            return
        self.up = False
        if self.core is not None:
            self.crashed_stats.update(self.core.replicator.stats)
        self.core = None
        for timer in (self._timer, self._save_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._save_timer = None
        self.network.node_down(self.index)
        self.network.drop_node_links(self.index)

    def _publish(self, incarnation: int) -> None:
        if self.core is None or incarnation != self.incarnation:
            return
        self._publish_query = self.core.publish(self._addrs, self.now)
        self.flush()

    def _save_contacts(self) -> None:
        core = self.core
        if core is None:
            return
        rows = core.dht.table.saved_rows()
        if rows:
            self.store.save_contacts(rows)
        self._save_timer = self.engine.after(SAVE_CONTACTS_EVERY, self._save_contacts)

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
            if isinstance(event, BootstrapFinished) and event.query_id == self._join_query:
                self._join_query = None
                self.engine.after(0.0, partial(self._publish, self.incarnation))
            elif isinstance(event, RecordPublished) and event.query_id == self._publish_query:
                self._publish_query = None
                if not event.stored_at and self._publish_tries < len(PUBLISH_RETRY):
                    delay = PUBLISH_RETRY[self._publish_tries]
                    self._publish_tries += 1
                    self.engine.after(delay, partial(self._publish, self.incarnation))
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
