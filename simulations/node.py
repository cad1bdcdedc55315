"""`SimNode`: one p2pblog node (the real `NodeCore`) driven by the simulator.

The driving is `simulations.endpoint.CoreEndpoint`'s, the same driver the
unit tests use: after every input it flushes the core's outputs into the
`Network`, hands its events on, and keeps one engine timer at the core's
deadline, so ``handle_timer`` runs when the deadline is due, as in the trio
runtime.  Time given to the core is ``EPOCH + engine.now``, so records carry
plausible absolute expiry times.

What `SimNode` adds is the simulated machine: its index, identity and
region, the `Store` (the disk), and incarnations.  A crash drops the core
(routing table, sessions, timers: volatile state), keeping its counters in
`crashed_stats` for the metrics, and keeps the store; a restart builds a new
core over the same store and starts it like the daemon does
(`NodeCore.start`: the core's own lifecycle rejoins from the contacts it
saved and reconnects from its address book).  With `Savings` (all on by
default; `simulations.savings`) the store keeps its contact snapshots in
memory until a crash and every core's channels use the null transport
cipher, which change no result.  Events go to
``on_event(node, event)``, the `Simulation`'s metrics and oracles.  This
driver holds no policy of its own.
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
from simulations.endpoint import CoreEndpoint
from simulations.engine import Engine
from simulations.network import Network
from simulations.savings import ALL_SAVINGS, Savings, SnapshotStore, use_null_cipher

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
        savings: Savings = ALL_SAVINGS,
    ) -> None:
        self.index = index
        self.identity = identity
        self.engine = engine
        self.network = network
        self.region = region
        self.on_event = on_event
        self.make_core = make_core
        self.savings = savings
        self.store = SnapshotStore() if savings.snapshots_in_memory else Store(":memory:")
        self.incarnation = 0
        #: The replication counters of the cores a crash took away (the metrics sum them).
        self.crashed_stats: Counter[str] = Counter()
        #: When each crash happened (`simulations.reliability`: who stayed up through a window).
        self.downs: list[float] = []
        #: The driver, at this node's network address; down until `start`.
        self.endpoint: CoreEndpoint[NodeCore] = CoreEndpoint(
            None,
            engine,
            network,
            epoch=EPOCH,
            region=region,
            on_event=self._event,
            min_timer_step=MIN_TIMER_STEP,
        )
        if self.endpoint.index != index:
            raise ValueError(f"node {index} added as the network's node {self.endpoint.index}")
        self.addr: Address = self.endpoint.addr

    @property
    def up(self) -> bool:
        return self.endpoint.up

    @property
    def core(self) -> NodeCore | None:
        """The running core; None while the node is down."""
        return self.endpoint.core if self.endpoint.up else None

    @property
    def now(self) -> float:
        return self.endpoint.now

    # -- lifecycle ---------------------------------------------------------------

    def start(self, seeds: list[Address]) -> None:
        """Boot (or reboot) the node: a new core over the kept store."""
        self.crash()
        self.incarnation += 1
        rng = self.engine.rng(f"node:{self.index}:{self.incarnation}")
        now = self.now
        if self.make_core is not None:
            core = self.make_core(self, rng, now)
        else:
            core = NodeCore(self.identity, rng, now, store=self.store, random_bytes=rng.randbytes)
        if self.savings.null_cipher:
            use_null_cipher(core)  # every core, a test hook's too: all ends must agree
        addrs = [("udp", self.addr[0], self.addr[1]), ("tcp", self.addr[0], self.addr[1])]
        core.start(addrs, seeds, now)
        self.endpoint.restart(core)  # attaches it and flushes what start asked for

    def crash(self) -> None:
        """Lose all volatile state; the store survives."""
        if not self.endpoint.up:
            return
        self.crashed_stats.update(self.endpoint.core.counters())
        self.downs.append(self.engine.now)
        self.endpoint.crash()
        if isinstance(self.store, SnapshotStore):
            self.store.write_snapshots()  # what a killed process's file would hold

    def flush(self) -> None:
        """Move the core's outputs out after a command (a post, a follow, ...)."""
        self.endpoint.flush()

    def _event(self, event: object) -> None:
        self.on_event(self, event)
