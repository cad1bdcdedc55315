"""`CoreEndpoint`: any sans-IO core attached to the simulated `Network`.

Theory of operation
-------------------
The `Network` (`simulations.network`) delivers to `Endpoint` objects, whose
inputs carry no time: a datagram, a connection accepted, opened, failed or
lost, stream bytes.  `CoreEndpoint` is the small driver between that and one
sans-IO core, in the shape of the trio runtime's `UdpDriver` / `NodeDriver`
and aioquic's asyncio adapter:

* every input is handed to the core with ``now = epoch + engine.now``;
* after every input (and every `command`) `flush` moves the core's outputs
  into the network: datagrams, dials, stream bytes and closes; proof-of-work
  stamps a core asks for (`NodeCore.stamps_to_make`) are solved at once,
  where the runtime uses a worker thread;
* events (``next_event``) go to ``on_event``, or are kept in `events`;
* one engine timer stays armed at the core's ``get_timer()`` deadline,
  re-armed whenever the deadline moves.

What the core can do is found once, by what it has: a bare `dht.DhtCore`
speaks datagrams only, a `gossip` `Replicator` (or a test's hand-driven peer)
streams only, a `NodeCore` both.  A stream-only core does not see datagrams,
and an endpoint whose core has no stream side refuses connections
(`Network.refusing`).

A core whose deadline is still due after ``handle_timer`` gets another
pass at the same instant, as the runtime gives it (a pass may ask for one:
a lookup that finished during it wants a connection dialled "now").  One
that is still due after `MAX_PASSES_PER_INSTANT` passes would spin the
engine at one instant: by default that is a bug in the core and raises
`AssertionError`; with ``min_timer_step`` the endpoint steps past a deadline
still due after one pass, as the simulator tolerates.

One input is flushed later: ``connection_accepted`` returns the new
connection's id to the network, which only then knows it, so its outputs
(a core may refuse the connection at once) go out in a flush scheduled for
the same instant, as the runtime registers an accepted stream before it
flushes.

`crash` loses the core (the network breaks its links, the other ends learn
it after one latency, or with ``peers_notice=False`` never) and `restart`
attaches a new core at the same address, as a rebooted process would be.
An endpoint made without a core is a machine not yet switched on: it has its
address and is down until `restart` boots its first core (the simulator's
`SimNode` builds a core per incarnation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from identity.pow import NOTICE_DOMAIN, notice_subject, solve
from simulations.engine import Engine, Timer
from simulations.network import Network
from simulations.sides import DatagramCore, StampingCore, StreamCore

Address = tuple[str, int]
#: ``handle_timer`` calls at one instant after which a deadline still due is a spin.
MAX_PASSES_PER_INSTANT = 100


class TimedCore(Protocol):
    """What every driven core has: a timer and events."""

    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> object | None: ...


C = TypeVar("C", bound=TimedCore)
R = TypeVar("R")


class CoreEndpoint(Generic[C]):
    """One sans-IO core at one network address; see the module docstring."""

    #: The core driven now, or the last one if the endpoint is down (unset
    #: before an endpoint made without a core is first `restart`-ed).
    core: C

    def __init__(
        self,
        core: C | None,
        engine: Engine,
        network: Network,
        *,
        epoch: float = 0.0,
        addr: Address | None = None,
        region: int = 0,
        on_event: Callable[[object], None] | None = None,
        min_timer_step: float | None = None,
    ) -> None:
        self.engine = engine
        self.network = network
        #: The core's clock at engine time 0 (cores want Unix-like seconds).
        self.epoch = epoch
        self.region = region
        self.on_event = on_event
        self.min_timer_step = min_timer_step
        #: Events seen, when there is no ``on_event``.
        self.events: list[object] = []
        self.datagrams_received = 0
        self.up = False
        self._timer: Timer | None = None
        #: The instant of the last timer pass, and how many passes ran at it.
        self._passes = (-1.0, 0)
        self.index = len(network.nodes)
        self.addr: Address = network.add(self, addr)
        if core is not None:
            self._attach(core)
            self.flush()

    def _attach(self, core: C) -> None:
        self.core = core
        self.up = True
        sides: object = core  # what a C has beyond TimedCore is found at run time
        self._datagrams = sides if isinstance(sides, DatagramCore) else None
        self._streams = sides if isinstance(sides, StreamCore) else None
        self._stamps = sides if isinstance(sides, StampingCore) else None
        if self._streams is None:
            self.network.refusing.add(self.index)
        else:
            self.network.refusing.discard(self.index)

    @property
    def now(self) -> float:
        """The core's clock."""
        return self.epoch + self.engine.now

    # -- commands and lifecycle ----------------------------------------------------

    def command(self, action: Callable[[C, float], R]) -> R:
        """Run ``action(core, now)`` (a command: start a lookup, post, ...), then flush."""
        result = action(self.core, self.now)
        self.flush()
        return result

    def crash(self, *, peers_notice: bool = True) -> None:
        """The process dies: no more inputs or timers; its links break
        (without ``peers_notice``, silently: the peers keep half-open connections)."""
        if not self.up:
            return
        self.up = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.network.node_down(self.index, peers_notice=peers_notice)
        self.network.drop_node_links(self.index)

    def restart(self, core: C) -> None:
        """A new core (a rebooted process) at the same address."""
        self.crash()
        self._attach(core)
        self.flush()

    # -- inputs from the network (the `simulations.network.Endpoint` protocol) -------

    def receive_datagram(self, data: bytes, addr: Address) -> None:
        if self._datagrams is not None:
            self.datagrams_received += 1
            self._datagrams.receive_datagram(data, addr, self.now)
            self.flush()

    def connection_accepted(self, addr: Address) -> int:
        streams = self._stream_side()
        conn_id = streams.connection_accepted(addr, self.now)
        self.engine.after(0.0, self.flush)  # once the network knows conn_id (module docstring)
        return conn_id

    def connection_opened(self, conn_id: int) -> None:
        self._stream_side().connection_opened(conn_id, self.now)
        self.flush()

    def connection_failed(self, conn_id: int) -> None:
        self._stream_side().connection_failed(conn_id, self.now)
        self.flush()

    def data_received(self, conn_id: int, data: bytes) -> None:
        self._stream_side().data_received(conn_id, data, self.now)
        self.flush()

    def connection_lost(self, conn_id: int) -> None:
        self._stream_side().connection_lost(conn_id, self.now)
        self.flush()

    def _stream_side(self) -> StreamCore:
        if self._streams is None:  # the network only links endpoints that listen
            raise TypeError(f"{self.addr}: {type(self.core).__name__} has no stream side")
        return self._streams

    # -- the flush after every input -------------------------------------------------

    def flush(self) -> None:
        if not self.up:
            return
        network, index = self.network, self.index
        if self._stamps is not None:
            stamps = self._stamps
            for entry_id, recipient, bits in stamps.stamps_to_make():
                nonce = solve(NOTICE_DOMAIN, notice_subject(recipient, entry_id), bits)
                stamps.stamp_made(entry_id, recipient, nonce, self.now)
        if self._datagrams is not None:
            for data, addr in self._datagrams.datagrams_to_send():
                network.send_datagram(index, data, addr)
        if self._streams is not None:
            streams = self._streams
            for conn_id, host, port in streams.dials_to_make():
                network.dial(index, conn_id, (host, port))
            for conn_id, data in streams.data_to_send():
                network.stream_send(index, conn_id, data)
            for conn_id in streams.connections_to_close():
                network.close(index, conn_id)
        core = self.core
        while (event := core.next_event()) is not None:
            if self.on_event is None:
                self.events.append(event)
            else:
                self.on_event(event)
        if self.core is not core or not self.up:  # an event handler crashed us
            return
        # Keep one engine timer at the core's deadline (inline: this runs after every input).
        deadline = core.get_timer()
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        at = max(deadline - self.epoch, self.engine.now)
        if timer is not None and timer.active:
            if timer.at == at:
                return
            timer.cancel()
        self._timer = self.engine.at(at, self._fire)

    def _armed(self) -> Timer | None:
        """The timer flush armed (a method call, so mypy does not assume it is still None)."""
        return self._timer

    def _fire(self) -> None:
        at, passes = self._passes
        passes = passes + 1 if at == self.engine.now else 1
        self._passes = (self.engine.now, passes)
        self._timer = None
        self.core.handle_timer(self.now)
        self.flush()
        timer = self._armed()
        if timer is not None and timer.active and timer.at <= self.engine.now:
            if self.min_timer_step is not None:
                timer.cancel()
                self._timer = self.engine.after(self.min_timer_step, self._fire)
            elif passes >= MAX_PASSES_PER_INSTANT:
                raise AssertionError(f"{self.addr}: timer still due after {passes} passes at {self.now}")
            # else flush armed it at this instant: the core gets its next pass
