"""Many `DhtCore`s on the simulator's network (aioquic's ``client_and_server``, scaled up).

`SimNetwork` puts DHT cores on a `simulations.testbed.Testbed`: the
simulator's engine and network model (uniform latency, i.i.d. loss), one
`CoreEndpoint` per core running the driver loop ``dht/__init__.py`` documents
(input, then flush datagrams / events / timer).  It adds what DHT tests ask
about: each node's result event per query id, its notices, crashes, and
running until a set of queries has finished.  Same seed, same run.  No trio,
no sockets, no wall clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

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
from simulations.network import Latency, LinkModel
from simulations.testbed import Testbed

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


class SimNode:
    """One DHT core on the network, and what it reported."""

    def __init__(self, bed: Testbed, core: DhtCore) -> None:
        self.results: dict[int, ResultEvent] = {}
        self.notices: Counter[str] = Counter()
        self.other_events: list[Event] = []
        self.endpoint = bed.attach(core, on_event=self.record)

    @property
    def core(self) -> DhtCore:
        return self.endpoint.core

    @property
    def addr(self) -> Address:
        return self.endpoint.addr

    @property
    def alive(self) -> bool:
        return self.endpoint.up

    def record(self, event: object) -> None:
        """The endpoint's event sink: results by query id, the rest as notices."""
        assert isinstance(event, Event)
        query_id = getattr(event, "query_id", None)
        if query_id is not None:
            assert query_id not in self.results, "two result events for one query"
            self.results[query_id] = event  # type: ignore[assignment]
        else:
            self.notices[type(event).__name__] += 1
            self.other_events.append(event)


class SimNetwork:
    """Cores on virtual addresses ``10.a.b.1`` (a /24 each); uniform latency, i.i.d. loss."""

    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.05,
        latency: tuple[float, float] = (0.01, 0.1),
        config: DhtConfig | None = None,
    ) -> None:
        low, high = latency
        model = LinkModel(Latency("uniform", low_ms=low * 1000, high_ms=high * 1000), loss=loss)
        self.bed = Testbed(model, seed=seed)
        self.config = config
        self.nodes: list[SimNode] = []

    @property
    def now(self) -> float:
        return self.bed.now

    @property
    def delivered(self) -> int:
        """Datagrams that reached a live core."""
        return sum(n.endpoint.datagrams_received for n in self.nodes)

    @property
    def lost(self) -> int:
        return self.bed.network.stats["datagrams.lost"]

    # ------------------------------------------------------------------ topology

    def add_node(self, node_id: bytes, **core_kwargs: object) -> SimNode:
        rng = self.bed.rng(f"node:{len(self.nodes)}")
        core = DhtCore(node_id, rng, self.now, config=self.config, **core_kwargs)  # type: ignore[arg-type]
        node = SimNode(self.bed, core)
        self.nodes.append(node)
        return node

    def crash(self, node: SimNode) -> None:
        """The node stops: it neither receives nor sends nor runs timers again."""
        node.endpoint.crash()

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive]

    # ------------------------------------------------------------------ driving

    def command(self, node: SimNode, action: Command) -> int:
        """Run a command on a core now and flush its outputs; returns the query id."""
        return node.endpoint.command(action)

    def step(self) -> bool:
        """Run the next action; False when nothing is left."""
        return self.bed.step()

    def run_until(self, t_end: float) -> None:
        self.bed.run(t_end)

    def run_until_done(
        self, pending: Iterable[tuple[SimNode, int]], *, limit: float = 3600.0
    ) -> list[ResultEvent]:
        """Run until every (node, query id) has its result event; return them in order."""
        wanted = list(pending)
        try:
            self.bed.run_until_true(lambda: all(q in n.results for n, q in wanted), within=limit)
        except AssertionError:
            raise AssertionError("queries did not finish in time") from None
        return [n.results[q] for n, q in wanted]
