"""An in-memory network that links many `DhtCore`s (aioquic's ``client_and_server``, scaled up).

A tiny deterministic discrete-event loop: a heap of ``(time, seq, action)``,
a seeded ``random.Random`` for latency and loss, and the exact driver loop
``dht/__init__.py`` documents (input, then flush datagrams / events / timer).
Same seed, same run.  No trio, no sockets, no wall clock.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random

from dht import (
    BootstrapFinished,
    DhtConfig,
    DhtCore,
    Event,
    LookupFinished,
    ProvidersAdded,
    ProvidersFound,
    PutFinished,
    ValueFound,
    ValueNotFound,
)
from dht.ids import Address
from dht.wire import Value

ResultEvent = (
    LookupFinished
    | BootstrapFinished
    | ValueFound
    | ValueNotFound
    | PutFinished
    | ProvidersAdded
    | ProvidersFound
)
#: A command for `SimNetwork.command`: runs on a core at ``now``, returns a query id.
Command = Callable[[DhtCore, float], int]


def bootstrap_via(*addrs: Address) -> Command:
    return lambda core, now: core.bootstrap(list(addrs), now)


def lookup_of(target: bytes) -> Command:
    return lambda core, now: core.start_lookup(target, now)


def get_of(key: bytes, quorum: int = 1) -> Command:
    return lambda core, now: core.start_get(key, now, quorum=quorum)


def put_of(key: bytes, value: Value) -> Command:
    return lambda core, now: core.start_put(key, value, now)


def add_provider_of(key: bytes, value: bytes) -> Command:
    return lambda core, now: core.start_add_provider(key, value, now)


def get_providers_of(key: bytes, want: int = 20) -> Command:
    return lambda core, now: core.start_get_providers(key, now, want=want)


@dataclass
class SimNode:
    addr: Address
    core: DhtCore
    alive: bool = True
    results: dict[int, ResultEvent] = field(default_factory=dict)
    notices: Counter[str] = field(default_factory=Counter)
    other_events: list[Event] = field(default_factory=list)
    timer_at: float | None = None
    timer_gen: int = 0


@dataclass(frozen=True)
class _Action:
    """A datagram delivery (``data`` from ``src``) or a timer (generation ``gen``) at ``node``."""

    node: Address
    data: bytes | None = None
    src: Address | None = None
    gen: int = 0


class SimNetwork:
    """Cores on virtual addresses ``10.0.x.y:4000``; datagrams get latency and i.i.d. loss."""

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.05,
        latency: tuple[float, float] = (0.01, 0.1),
        config: DhtConfig | None = None,
    ) -> None:
        self.rng = Random(seed)
        self.loss = loss
        self.latency = latency
        self.config = config
        self.now = 0.0
        self.nodes: dict[Address, SimNode] = {}
        self._heap: list[tuple[float, int, _Action]] = []
        self._seq = 0
        self.delivered = 0
        self.lost = 0

    # ------------------------------------------------------------------ topology

    def add_node(self, node_id: bytes, **core_kwargs: object) -> SimNode:
        n = len(self.nodes) + 1
        addr = (f"10.0.{n // 250}.{n % 250 + 1}", 4000)
        core = DhtCore(
            node_id,
            Random(self.rng.getrandbits(64)),
            self.now,
            config=self.config,
            **core_kwargs,  # type: ignore[arg-type]
        )
        node = SimNode(addr, core)
        self.nodes[addr] = node
        self._flush(node)
        return node

    def crash(self, node: SimNode) -> None:
        """The node stops: it neither receives nor sends nor runs timers again."""
        node.alive = False

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    # ------------------------------------------------------------------ driving

    def command(self, node: SimNode, action: Command) -> int:
        """Run a command on a core now and flush its outputs; returns the query id."""
        query_id = action(node.core, self.now)
        self._flush(node)
        return query_id

    def _push(self, at: float, action: _Action) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, action))

    def _flush(self, node: SimNode) -> None:
        core = node.core
        for data, dst in core.datagrams_to_send():
            if self.rng.random() < self.loss:
                self.lost += 1
                continue
            self._push(self.now + self.rng.uniform(*self.latency), _Action(dst, data, node.addr))
        while (event := core.next_event()) is not None:
            query_id = getattr(event, "query_id", None)
            if query_id is not None:
                assert query_id not in node.results, "two result events for one query"
                node.results[query_id] = event  # type: ignore[assignment]
            else:
                node.notices[type(event).__name__] += 1
                node.other_events.append(event)
        deadline = core.get_timer()
        if deadline is not None and deadline != node.timer_at:
            node.timer_gen += 1
            node.timer_at = deadline
            self._push(max(deadline, self.now), _Action(node.addr, gen=node.timer_gen))

    def step(self) -> bool:
        """Run the next action; False when nothing is left."""
        if not self._heap:
            return False
        at, _, action = heapq.heappop(self._heap)
        self.now = max(self.now, at)
        node = self.nodes.get(action.node)
        if node is None or not node.alive:
            return True
        if action.data is not None:
            assert action.src is not None
            self.delivered += 1
            node.core.receive_datagram(action.data, action.src, self.now)
        else:
            if action.gen != node.timer_gen:
                return True  # superseded by a later get_timer()
            node.timer_at = None
            node.core.handle_timer(self.now)
            again = node.core.get_timer()
            # A core whose timer stays due after handle_timer would spin forever.
            assert again is None or again > self.now, f"{node.addr}: timer still due after handle_timer"
        self._flush(node)
        return True

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            self.step()
        self.now = max(self.now, t_end)

    def run_until_done(
        self, pending: Iterable[tuple[SimNode, int]], *, limit: float = 3600.0
    ) -> list[ResultEvent]:
        """Run until every (node, query id) has its result event; return them in order."""
        wanted = list(pending)
        t_end = self.now + limit
        while any(q not in n.results for n, q in wanted):
            if not self._heap or self._heap[0][0] > t_end:
                raise AssertionError("queries did not finish in time")
            self.step()
        return [n.results[q] for n, q in wanted]
