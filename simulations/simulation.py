"""`Simulation`: a scenario run over simulated nodes, with oracles and metrics.

Theory of operation
-------------------
`Simulation(scenario).run()` builds ``scenario.nodes`` `SimNode`s (the real
`NodeCore`, each with its own in-memory SQLite store and seeded RNG) on one
`Network`, and schedules on the `Engine`:

* **joins** spread over ``workload.join_over`` seconds, each node
  bootstrapping from node 0 and a random node started before it;
* **follows** a few seconds after each join, from the follow graph;
* **posts**: a Poisson process per author in the posting window (a node that
  is down posts offline, into its store, as a user would; it goes out on
  restart); **lookups** of random peers' records (DHT metrics);
* **faults** (crash and restart, partitions and heals, churn, loss windows)
  and **malicious** roles (`simulations.adversary`).
* **direct messages** with a ``[dms]`` workload (`simulations.dms`, which
  also watches them arrive: their metrics and the *dm duplicate* and *dm
  privacy* oracles).
* **identities with devices** with a ``[devices]`` table
  (`simulations.devices`: extra device nodes that pair, a revocation, a
  planned rotation, a theft and its recovery; the *device cut*, *device
  delivery*, *device fork* and *device agreement* oracles).

Every event a node reports comes to `_on_event`.  Three **oracles** watch:

1. *validity*: every entry an honest node stores of an honest author is the
   author's own entry at that seq (same id), and after an honest node learns
   that a feed forked it stores nothing more of it;
2. *prefix consistency*: every ``check_every`` seconds, any two honest
   replicas of a feed agree on the entry at the lower of their two latest
   seqs (by the hash chain, on the whole prefix), below any known fork;
3. *convergence*: by ``scenario.converge_by`` (after the last fault and the
   last post, plus ``converge_within``) every honest follower that is up holds
   every followed honest feed up to the best any honest node that is up holds.

A scenario with ``[[attacks]]`` (`simulations.adversary`: flooding, table
poisoning, connection exhaustion, censorship next to a key) adds its
attackers after the honest nodes and, from the first attack on, samples
every honest node's resources every `RESOURCE_EVERY` seconds from the core's
public state: routing-table contacts (and those at hosts that never answer),
records and provider values held (and those under keys a flooder filled),
connections (the core's count, and the network's open links from attacker
hosts).  Its ``[expect]`` thresholds are further oracles: *delivery*, *lookup*
and *victim lookup* ratios at the end, *resources* at every sample (one
violation per resource, at its first breach), and *core exception*: an
exception out of a core is recorded with its time and the innermost frame
that raised, and ends the run there (a scenario without attacks lets it propagate, as
before).  What the attackers did goes in ``metrics.hostile``.

A violation is recorded with its time and stops nothing (the first one is
reported).  `Result.metrics` is plain data, rounded, written with sorted keys,
so the same scenario and seed give byte-identical ``metrics.json``.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from random import Random
from typing import TYPE_CHECKING, Any

from identity import Identity
from identity.keys import set_verify_cache_size
from p2pblog.entry import POST
from p2pblog.node import NodeCore, PeerNotResolved, PeerResolved
from p2pblog.replication import EntriesStored, InputRefused
from simulations.deadlines import WithinDeadlines
from simulations.devices import DeviceTraffic
from simulations.dhtmodel import Calibration, DhtCensus, DhtView, dht_factory
from simulations.dms import DmTraffic
from simulations.engine import Engine
from simulations.follows import follow_graph
from simulations.network import Network
from simulations.node import EPOCH, SimNode
from simulations.reliability import ReliabilityWatch
from simulations.savings import ALL_SAVINGS, Savings, gc_tuned
from simulations.scenario import UNCHECKED, Attack, Fault, Scenario

if TYPE_CHECKING:
    from simulations.adversary import SybilPlan

#: Seconds between prefix-consistency checks and between convergence probes.
CHECK_EVERY = 30.0
PROBE_EVERY = 5.0
#: Seconds after its join at which a node follows its authors.
FOLLOW_DELAY = 3.0
#: Successful signature checks remembered across simulated nodes (the issue allows it).
VERIFY_CACHE = 1 << 18
#: Seconds between two samples of the honest nodes' resources under attack.
RESOURCE_EVERY = 5.0


@dataclass
class Violation:
    oracle: str
    time: float
    detail: str


@dataclass
class Hooks:
    """Test-only ways to break a variant on purpose (each oracle must catch one)."""

    #: Called with each node right after it is created (e.g. to corrupt its store).
    on_node: Callable[[SimNode], None] | None = None
    #: Replace the core factory of chosen nodes (return None for the default core:
    #: the node's role and the scenario's protocol).
    make_core: Callable[[SimNode, Random, float], NodeCore | None] | None = None


@dataclass
class Result:
    scenario: Scenario
    metrics: dict[str, Any]
    violations: list[Violation]
    events: int
    compare: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Every delivery's latency (seconds, rounded like the metrics), in post order then
    #: follower order: `simulations.report` writes them to latencies.csv for the CDF.
    latencies: list[float] = field(default_factory=list)
    #: The same for each comparison run in `compare`.
    compare_latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _r(value: float) -> float:
    return round(value, 6)


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        *,
        hooks: Hooks | None = None,
        savings: Savings | None = None,
        calibrate: bool = False,
    ) -> None:
        """``calibrate``: a full run also keeps the view a model would answer from, so its
        census compares providers returned with providers available (`simulations.calibrate`)."""
        scenario.check()
        #: Simulator-only savings (`simulations.savings`; all by default): same results.
        self.savings = ALL_SAVINGS if savings is None else savings
        # One entry is verified at every simulated follower: remember the results.
        set_verify_cache_size(VERIFY_CACHE)
        self.scenario = scenario
        self.hooks = hooks or Hooks()
        self.engine = Engine(scenario.seed)
        self.network = Network(self.engine, scenario.network)
        #: The DHT's fidelity (issue 17): its census in both, the model's view and calibration.
        self.fidelity = scenario.dht_fidelity
        self.dht_census = DhtCensus()
        model = self.fidelity == "model"
        self.dht_view: DhtView | None = DhtView(self.network) if model or calibrate else None
        self.calibration: Calibration | None = Calibration.load() if model else None
        self.violations: list[Violation] = []
        n = scenario.nodes
        ids = self.engine.rng("identities")
        regions = scenario.network.latency.regions
        self.nodes: list[SimNode] = []
        for i in range(n):
            self.nodes.append(self._make_node(i, Identity(ids.randbytes(32)), i % regions))
        self.by_key = {node.identity.public_key: node for node in self.nodes}
        self._choose_roles()
        for node in self.nodes:
            if self.hooks.on_node is not None:
                self.hooks.on_node(node)
        self._follow_graph()
        self.sybil_plan: SybilPlan | None = None
        if scenario.sybil.fraction:  # after the follow graph: an eclipse picks the most followed
            from simulations.adversary import SybilPlan  # the Sybils live there

            self.sybil_plan = SybilPlan(self)
        # Metrics state.
        self.posts: dict[tuple[bytes, int], float] = {}
        #: Every delivery's latency, set by `_metrics` (`Result.latencies`).
        self.latencies: list[float] = []
        self.post_order: list[tuple[bytes, int]] = []
        self.delivered: dict[tuple[bytes, int], dict[int, float]] = {}
        self.lookups: dict[tuple[int, int, int], float] = {}
        self.lookup_results: list[tuple[bool, int]] = []
        self.refused: Counter[str] = Counter()
        #: Nodes a crash fault without restart took down: nothing restarts them.
        self.down_for_good: set[int] = set()
        self.fork_seen: dict[tuple[int, bytes], int] = {}
        #: Equivocator index -> the seq it signed twice (`simulations.adversary.equivocate`).
        self.equivocated: dict[int, int] = {}
        self.converged_at: float | None = None
        self.skipped_posts = 0
        self.lookup_targets: dict[tuple[int, int, int], int] = {}
        self.lookup_by_target: list[tuple[int, bool]] = []
        self.victims: set[int] = set()
        #: Most of each resource any honest node held at once (`_sample_resources`), and who.
        self.resources: dict[str, tuple[int, int]] = {}
        self.breached: set[str] = set()
        self.core_exception: str | None = None
        self.attackers: list[Any] = []
        self.dms = DmTraffic(self)
        if scenario.attacks:
            from simulations.adversary import make_attackers  # the attackers live there

            self.attackers = make_attackers(self)
        self.devices = DeviceTraffic(self)  # its extra nodes come after the attackers
        self.reliability = ReliabilityWatch(self)

    # ============================================================ setup

    def _make_node(self, index: int, identity: Identity, region: int) -> SimNode:
        """Node index (a shard's worker makes stand-ins for the other shards' nodes: `simulations.shards`)."""
        return SimNode(
            index,
            identity,
            self.engine,
            self.network,
            region=region,
            on_event=self._on_event,
            make_core=self._core_factory,
            savings=self.savings,
        )

    def _choose_roles(self) -> None:
        rng = self.engine.rng("roles")
        m = self.scenario.malicious
        order = list(range(1, self.scenario.nodes))  # node 0, the bootstrap node, stays honest
        rng.shuffle(order)
        self.roles: dict[int, str] = {}
        cursor = 0
        for role, fraction in (
            ("dht_bogus", m.dht_bogus),
            ("dht_forged", m.dht_forged),
            ("gossip_withhold", m.gossip_withhold),
            ("gossip_forge", m.gossip_forge),
        ):
            count = round(fraction * self.scenario.nodes)
            for index in order[cursor : cursor + count]:
                self.roles[index] = role
            cursor += count
        for index in order[cursor : cursor + m.equivocators]:
            self.roles[index] = "equivocator"
        for index in order[cursor + m.equivocators : cursor + m.equivocators + self.scenario.sybils]:
            self.roles[index] = "sybil"
        self.honest = [i for i in range(self.scenario.nodes) if i not in self.roles]
        self.honest_set = set(self.honest)
        w = self.scenario.workload
        authors = sorted(rng.sample(range(self.scenario.nodes), round(w.authors * self.scenario.nodes)))
        self.authors = [a for a in authors if self.roles.get(a) in (None, "equivocator")]
        # The bootstrap node stays online, as crash and churn faults spare it.
        honest_authors = [a for a in self.authors if a in self.honest_set and a != 0]
        self.offline_authors = set(rng.sample(honest_authors, round(w.offline_authors * len(honest_authors))))

    def censored(self, attack: Attack, number: int) -> list[int]:
        """The victims of a censor attack: random honest authors, node 0 excepted."""
        rng = self.engine.rng(f"attack:{number}:victims")
        pool = [a for a in self.authors if a in self.honest_set and a != 0 and a not in self.offline_authors]
        chosen = sorted(rng.sample(pool, min(attack.victims, len(pool))))
        self.victims.update(chosen)
        return chosen

    def _core_factory(self, node: SimNode, rng: Random, now: float) -> NodeCore:
        if self.hooks.make_core is not None:
            chosen = self.hooks.make_core(node, rng, now)
            if chosen is not None:
                return chosen
        from simulations.adversary import make_core  # the roles live there

        make_dht = dht_factory(self.fidelity, node.index, self.dht_census, self.dht_view, self.calibration)
        core: NodeCore
        if self.sybil_plan is not None and self.roles.get(node.index) == "sybil":
            core = self.sybil_plan.make_core(node, rng, now)
        else:
            core = make_core(self.roles.get(node.index), node, rng, now, make_dht)
        core.replicator.prune_duplicates = self.scenario.protocol == "gossip"
        self.devices.configure(core)
        return core

    def _follow_graph(self) -> None:
        """Who follows whom: random, or preferential attachment (power law)."""
        rng = self.engine.rng("follows")
        w = self.scenario.workload
        n = self.scenario.nodes
        targets = self.authors or list(range(n))
        self.follows = follow_graph(rng, n, targets, w.follows, w.follow_graph)
        self.followers: dict[int, list[int]] = {a: [] for a in range(n)}
        for i, authors in self.follows.items():
            for a in authors:
                self.followers[a].append(i)

    # ============================================================ running

    def run(self, progress: Callable[[float, int], None] | None = None) -> Result:
        with gc_tuned(self.savings.gc_tuned):
            return self._run(progress)

    def _run(self, progress: Callable[[float, int], None] | None) -> Result:
        sc = self.scenario
        engine = self.engine
        w = sc.workload
        n = sc.nodes
        for i, node in enumerate(self.nodes):
            at = w.join_over * i / n
            engine.at(at, partial(self._join, node))
        rng_posts = engine.rng("posts")
        for author in self.authors:
            if w.posts_per_hour <= 0:
                break
            t = w.post_from
            while True:
                t += rng_posts.expovariate(w.posts_per_hour / 3600.0)
                if t >= sc.post_until:
                    break
                engine.at(t, partial(self._post, author))
        rng_lookups = engine.rng("lookups")
        if w.lookups_per_hour > 0:
            for i in self.honest:
                t = w.join_over + 10.0
                while True:
                    t += rng_lookups.expovariate(w.lookups_per_hour / 3600.0)
                    if t >= sc.duration:
                        break
                    target = rng_lookups.randrange(n)
                    if target != i:
                        engine.at(t, partial(self._lookup, i, target))
        for author in sorted(self.offline_authors):
            engine.at(w.offline_at, self.nodes[author].crash)
        for number, fault in enumerate(sc.faults):
            self._schedule_fault(number, fault)
        if sc.malicious.equivocators:
            for index in sorted(i for i, role in self.roles.items() if role == "equivocator"):
                engine.at(sc.malicious.equivocate_at, partial(self._equivocate, index))
        if self.attackers:
            self._schedule_attacks()
        self.dms.schedule()
        self.devices.schedule()
        self._schedule_reliability()
        t = CHECK_EVERY
        while t < sc.duration:
            engine.at(t, self._check_prefixes)
            t += CHECK_EVERY
        probe_from = max(sc.last_fault_end, sc.post_until)
        t = probe_from
        while t <= sc.duration:
            self._last_at(t, self._probe_convergence)
            t += PROBE_EVERY
        if sc.converge_by <= sc.duration:
            self._last_at(sc.converge_by, self._convergence_oracle)
        step = max(1.0, sc.duration / 100)
        t = 0.0
        while t < sc.duration:
            t = min(sc.duration, t + step)
            if not self._run_until(t):
                break
            if progress is not None:
                progress(t, engine.events_run)
        metrics = self._metrics()
        if self.attackers:
            self._hostile_oracles(metrics)
        if "reliability" in metrics:  # a shard's worker reports raw data, its coordinator judges
            self.reliability.oracles(metrics)
        return Result(sc, metrics, self.violations, engine.events_run, latencies=self.latencies)

    def _run_until(self, t: float) -> bool:
        """Run the engine to t; False once a core raised under attack (the run ends there)."""
        if not self.attackers:
            self.engine.run(t)
            return True
        try:
            self.engine.run(t)
        except Exception as exc:  # a core must never raise on peer input: an oracle, not a crash
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.core_exception = f"{type(exc).__name__}: {exc} at {where.filename}:{where.lineno}"
            self._violate("core exception", f"{self.core_exception} (seed {self.scenario.seed})")
            return False
        return True

    def _schedule_attacks(self) -> None:
        engine, sc = self.engine, self.scenario
        for host in self.attackers:
            engine.at(host.attack.at, host.start)
        first = min(a.at for a in sc.attacks)
        t = first + RESOURCE_EVERY
        while t <= sc.duration:
            engine.at(t, self._sample_resources)
            t += RESOURCE_EVERY
        if self.victims and sc.workload.lookups_per_hour > 0:
            rng = engine.rng("victim-lookups")
            for i in self.honest:
                for victim in sorted(self.victims):
                    if victim == i:
                        continue
                    t = first
                    while True:
                        t += rng.expovariate(sc.workload.lookups_per_hour / 3600.0)
                        if t >= sc.duration:
                            break
                        engine.at(t, partial(self._lookup, i, victim))

    def _last_at(self, when: float, action: Callable[[], None]) -> None:
        """Run action at when, behind everything else due then (e.g. the restarts
        that end a crash or churn fault, scheduled while the run went on)."""

        def defer() -> None:
            self.engine.after(0.0, action)

        self.engine.at(when, defer)

    # ============================================================ actions

    def _join(self, node: SimNode) -> None:
        if node.index in self.offline_authors and self.engine.now >= self.scenario.workload.offline_at:
            return  # offline for good before its turn to join came
        rng = self.engine.rng("joins")
        seeds = []
        if node.index > 0:
            seeds.append(self.nodes[0].addr)
            earlier = rng.randrange(node.index)
            seeds.append(self.nodes[earlier].addr)
        node.start(seeds)
        self.engine.after(FOLLOW_DELAY, lambda: self._follow(node))

    def _follow(self, node: SimNode) -> None:
        if node.core is None:
            if node.index not in self.down_for_good and node.index not in self.offline_authors:
                self.engine.after(FOLLOW_DELAY, lambda: self._follow(node))  # until it is back up
            return
        for author in self.follows[node.index]:
            node.core.follow(self.devices.handle(author), node.now)
        node.flush()

    def _post(self, index: int) -> None:
        node = self.nodes[index]
        if self.devices.thief_post(index):
            return  # a stolen root: the thief's post (`simulations.devices`)
        if (
            index in self.offline_authors
            and not node.up
            and self.engine.now >= self.scenario.workload.offline_at
        ):
            self.skipped_posts += 1
            return
        if node.store.feed_state(node.identity.public_key).forked_seq is not None:
            return  # an equivocator's own store refuses to extend its forked feed
        text = f"post by node {index} at {self.engine.now:.3f}"
        if node.core is not None:
            entry = node.core.post(text, node.now)
            node.flush()
        else:  # offline posting: it goes out when the node restarts
            from p2pblog.entry import post_body

            entry = node.store.append(node.identity, POST, post_body(text), int(node.now * 1000))
        key = (entry.author, entry.seq)
        self.posts[key] = self.engine.now
        self.post_order.append(key)
        self.delivered[key] = {}
        self.reliability.posted(key)

    def _equivocate(self, index: int) -> None:
        from simulations.adversary import equivocate

        equivocate(self, index)

    def _lookup(self, index: int, target: int) -> None:
        node = self.nodes[index]
        if node.core is None:
            return
        qid = node.core.start_resolve(self.nodes[target].identity.public_key, node.now)
        self.lookups[(index, node.incarnation, qid)] = self.engine.now
        if self.attackers:
            self.lookup_targets[(index, node.incarnation, qid)] = target
        node.flush()

    def _schedule_fault(self, number: int, fault: Fault) -> None:
        engine = self.engine
        rng = engine.rng("faults")
        if fault.kind == "crash":

            def crash() -> None:
                up = [i for i in self.honest if self.nodes[i].up and i != 0]
                victims = sorted(rng.sample(up, round(fault.fraction * len(up))))
                for i in victims:
                    self.nodes[i].crash()
                if fault.restart_after:
                    for i in victims:
                        engine.after(fault.restart_after, partial(self._restart, i))
                else:
                    self.down_for_good.update(victims)

            engine.at(fault.at, crash)
        elif fault.kind == "partition":

            def split() -> None:
                order = list(range(self.scenario.nodes))
                rng.shuffle(order)
                half = len(order) // 2
                groups = [order[:half], order[half:]]
                if fault.shape == "bridge":
                    bridge = order[0]
                    groups[1].append(bridge)
                self.network.set_partition(groups, key=number)

            engine.at(fault.at, split)
            engine.at(fault.end, lambda: self.network.set_partition(None, key=number))
        elif fault.kind == "loss":

            def lossy() -> None:
                self.network.extra_loss = fault.rate

            def clear() -> None:
                self.network.extra_loss = 0.0

            engine.at(fault.at, lossy)
            engine.at(fault.end, clear)
        else:  # churn
            pool = [i for i in self.honest if i != 0]  # as for crashes, the bootstrap node stays up
            victims = sorted(rng.sample(pool, round(fault.fraction * len(pool))))
            for i in victims:
                self._churn(i, fault, fault.at + rng.expovariate(1.0 / fault.session_mean), rng)

    def _churn(self, index: int, fault: Fault, at: float, rng: Random) -> None:
        if at >= fault.end:
            self.engine.at(fault.end, lambda: self._restart(index))
            return

        def down() -> None:
            self.nodes[index].crash()
            back = min(fault.end, self.engine.now + rng.expovariate(1.0 / fault.downtime_mean))

            def up() -> None:
                self._restart(index)
                self._churn(index, fault, self.engine.now + rng.expovariate(1.0 / fault.session_mean), rng)

            self.engine.at(back, up)

        self.engine.at(at, down)

    def _restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.up or node.incarnation == 0 or index in self.offline_authors or index in self.down_for_good:
            # Up already; or not joined yet (its join starts it); or down for good.
            return
        node.start([])

    # ============================================================ events and oracles

    def _on_event(self, node: SimNode, event: Any) -> None:
        self.dms.on_event(node, event)
        self.reliability.on_event(node, event)
        if isinstance(event, EntriesStored):
            self._entries_stored(node, event)
        elif isinstance(event, PeerResolved | PeerNotResolved):
            started = self.lookups.pop((node.index, node.incarnation, event.query_id), None)
            if started is not None:
                hops = event.hops if isinstance(event, PeerResolved) else 0
                self.lookup_results.append((isinstance(event, PeerResolved), hops))
                target = self.lookup_targets.pop((node.index, node.incarnation, event.query_id), None)
                if target is not None:
                    self.lookup_by_target.append((target, isinstance(event, PeerResolved)))
        elif isinstance(event, InputRefused):
            self.refused[event.reason] += 1

    def _violate(self, oracle: str, detail: str) -> None:
        self.violations.append(Violation(oracle, _r(self.engine.now), detail))

    def _entries_stored(self, node: SimNode, event: EntriesStored) -> None:
        author = self.by_key.get(event.feed)
        honest = node.index in self.honest_set
        first = event.latest - event.count + 1
        if honest and author is not None:
            fork_key = (node.index, event.feed)
            if fork_key in self.fork_seen and event.latest > self.fork_seen[fork_key]:
                self._violate(
                    "validity", f"node {node.index} stored {event.feed.hex()[:8]} past a known fork"
                )
            if author.index in self.honest_set:
                canonical = author.store.raw_range(event.feed, first, event.count)
                stored = node.store.raw_range(event.feed, first, event.count)
                if stored != canonical[: len(stored)] or len(stored) != event.count:
                    self._violate(
                        "validity",
                        f"node {node.index} stored entries {first}..{event.latest} of node {author.index} "
                        "that its author never signed",
                    )
            state = node.store.feed_state(event.feed)
            if state.forked_seq is not None and fork_key not in self.fork_seen:
                self.fork_seen[fork_key] = node.store.latest_seq(event.feed)
        now = self.engine.now
        for seq in range(first, event.latest + 1):
            delivered = self.delivered.get((event.feed, seq))
            if delivered is not None and node.index not in delivered:
                delivered[node.index] = now

    def _check_prefixes(self) -> None:
        """Oracle 2: honest replicas of a feed agree below any known fork."""
        for author in self.authors:
            feed = self.nodes[author].identity.public_key
            holders = [i for i in self.followers[author] if i in self.honest_set]
            replicas = []
            # Honest replicas may hold different branches of an equivocated seq
            # until one of them sees both: only the entries below it must agree.
            fork_bound = self.equivocated.get(author)
            for i in holders:
                state = self.nodes[i].store.feed_state(feed)
                if state.forked_seq is not None:
                    fork_bound = state.forked_seq if fork_bound is None else min(fork_bound, state.forked_seq)
                    # A fork learned from a fork proof (or a refused branch)
                    # stores nothing, so no EntriesStored reports it: note it here.
                    self.fork_seen.setdefault((i, feed), state.latest_seq)
                if state.latest_seq:
                    replicas.append((state.latest_seq, i))
            if len(replicas) < 2:
                continue
            replicas.sort()
            ref = replicas[-1][1]
            ref_store = self.nodes[ref].store
            for seq, i in replicas[:-1]:
                at = seq if fork_bound is None else min(seq, fork_bound - 1)
                if at < 1:
                    continue
                mine = self.nodes[i].store.raw_range(feed, at, 1)
                theirs = ref_store.raw_range(feed, at, 1)
                if mine != theirs:
                    self._violate(
                        "prefix",
                        f"nodes {i} and {ref} disagree on entry {at} of node {author}'s feed",
                    )
                    return

    def _lagging(self) -> list[tuple[int, int, int, int]]:
        """(follower, author, held, best) for honest up followers behind the best honest replica."""
        out = []
        for author in self.authors:
            feed = self.nodes[author].identity.public_key
            if author not in self.honest_set or self.devices.stolen_feed(feed):
                continue
            # Only the author and its followers hold the feed (O(followers), not O(nodes)).
            holders = [author, *self.followers[author]]
            up = [i for i in holders if i in self.honest_set and self.nodes[i].up]
            best = max((self.nodes[i].store.latest_seq(feed) for i in up), default=0)
            for i in self.followers[author]:
                if i in self.honest_set and self.nodes[i].up:
                    held = self.nodes[i].store.latest_seq(feed)
                    if held < best:
                        out.append((i, author, held, best))
        return out

    def _probe_convergence(self) -> None:
        if self.converged_at is None and not self._lagging():
            self.converged_at = self.engine.now

    def _convergence_oracle(self) -> None:
        lagging = self._lagging()
        if lagging:
            i, author, held, best = lagging[0]
            self._violate(
                "convergence",
                f"{len(lagging)} follower/feed pairs behind at the deadline; e.g. node {i} holds "
                f"{held} of node {author}'s {best} entries",
            )

    # ============================================================ metrics

    def _metrics(self) -> dict[str, Any]:
        sc = self.scenario
        self._check_prefixes()  # also notes the forks honest nodes learned since the last check
        stats: Counter[str] = Counter()
        for node in self.nodes:
            stats.update(node.crashed_stats)  # the counters of its earlier incarnations
            if node.core is not None:
                stats.update(node.core.counters())
        latencies: list[float] = []
        expected = delivered = 0
        buckets: dict[int, list[int]] = {}
        bucket = max(1.0, sc.duration / 60)
        within = WithinDeadlines(bucket=bucket, duration=sc.duration)
        for key in self.post_order:
            author = self.by_key[key[0]].index
            posted = self.posts[key]
            got = self.delivered[key]
            recipients = [i for i in self.followers[author] if i in self.honest_set]
            expected += len(recipients)
            for i in recipients:
                if i in got:
                    delivered += 1
                    latencies.append(got[i] - posted)
            b = buckets.setdefault(int(posted // bucket), [0, 0])
            b[0] += len(recipients)
            b[1] += sum(1 for i in recipients if i in got)
            within.add(posted, [got[i] - posted if i in got else None for i in recipients])
        self.latencies = [_r(latency) for latency in latencies]
        received = stats["entries.received"]
        duplicates = stats["entries.duplicate"]
        traffic = self.network.traffic[: sc.nodes]  # the honest and malicious nodes, not attack hosts
        per_node_bytes = [t.datagram_bytes + t.stream_bytes for t in traffic]
        per_node_msgs = [t.datagrams + t.stream_chunks for t in traffic]
        ok = [hops for success, hops in self.lookup_results if success]
        hop_histogram = Counter(ok)
        heal = max(sc.last_fault_end, sc.post_until)
        connections = self._connection_counts()
        metrics: dict[str, Any] = {
            "posts": len(self.post_order),
            "posts_skipped_offline_author": self.skipped_posts,
            "delivery": {
                "expected": expected,
                "delivered": delivered,
                "ratio": _r(delivered / expected) if expected else 1.0,
                "latency_s": {
                    "p50": _r(percentile(latencies, 50)),
                    "p90": _r(percentile(latencies, 90)),
                    "p99": _r(percentile(latencies, 99)),
                    "max": _r(max(latencies, default=0.0)),
                    "mean": _r(sum(latencies) / len(latencies)) if latencies else 0.0,
                },
                "latency_cdf": [
                    [q, _r(percentile(latencies, q))] for q in (1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
                ],
                "over_time": [
                    [_r(b * bucket), counts[0], counts[1]] for b, counts in sorted(buckets.items())
                ],
                **within.metrics(),
            },
            "amplification": {
                "entries_received": received,
                "duplicates": duplicates,
                "duplicates_per_delivery": _r(duplicates / received) if received else 0.0,
            },
            "traffic": {
                "bytes_total": sum(per_node_bytes),
                "bytes_per_node": {
                    "mean": _r(sum(per_node_bytes) / len(per_node_bytes)),
                    "p50": percentile([float(b) for b in per_node_bytes], 50),
                    "p99": percentile([float(b) for b in per_node_bytes], 99),
                    "max": max(per_node_bytes),
                },
                "messages_per_node": {
                    "mean": _r(sum(per_node_msgs) / len(per_node_msgs)),
                    "max": max(per_node_msgs),
                },
                "network": dict(sorted(self.network.stats.items())),
            },
            "dht": {
                "lookups": len(self.lookup_results),
                "succeeded": len(ok),
                "success_ratio": _r(len(ok) / len(self.lookup_results)) if self.lookup_results else 1.0,
                "hops_mean": _r(sum(ok) / len(ok)) if ok else 0.0,
                "hops_histogram": {str(h): hop_histogram[h] for h in sorted(hop_histogram)},
                # Which fidelity produced this run, and what its queries did (issue 17).
                "fidelity": self.fidelity,
                "bytes_per_node": _r(sum(t.datagram_bytes for t in traffic) / len(traffic)),
                **self.dht_census.metrics(),
            },
            "convergence": {
                "since": _r(heal),
                "converged_after_s": None if self.converged_at is None else _r(self.converged_at - heal),
                "deadline": _r(sc.converge_by) if sc.converge_by <= sc.duration else None,
            },
            "connections_per_node": _r(sum(connections) / len(connections) if connections else 0.0),
            "refused": dict(sorted(self.refused.items())),
            "forks_detected_by_honest_nodes": len(self.fork_seen),
            "roles": dict(sorted(Counter(self.roles.values()).items())),
            "fault_windows": [[_r(f.at), _r(f.end), f.kind] for f in sc.faults],
            "events": self.engine.events_run,
        }
        if self.attackers:
            metrics["hostile"] = self._hostile_metrics()
        if sc.dms.per_hour > 0 or self.dms.order:
            self.dms.final_oracles()
            metrics["dms"] = self.dms.metrics(stats)
        if self.devices.idents:
            metrics["devices"] = self.devices.metrics()
        metrics["reliability"] = self.reliability.metrics()
        return metrics

    def _schedule_reliability(self) -> None:
        """Name claims, victim lookups and fork probes (`simulations.reliability`)."""
        self.reliability.schedule()

    def _connection_counts(self) -> list[int]:
        """Each honest node's open connections, for the nodes that are up (in index order)."""
        return [
            core.replicator.connection_count for i in self.honest if (core := self.nodes[i].core) is not None
        ]

    # ============================================================ under attack

    def _sample_resources(self) -> None:
        """Note each honest node's resources (from its core) and check the `[expect]` bounds."""
        silent = {h.host for h in self.attackers if h.attack.kind in ("flood", "poison")}
        flooded: set[bytes] = set()
        for host in self.attackers:
            flooded |= getattr(host, "flooded", set())
        attacker_index = {h.index for h in self.attackers}
        from_attackers: Counter[int] = Counter()
        per_node_links: Counter[int] = Counter()
        for (a, _), (b, _) in self.network.open_links():
            per_node_links[a] += 1
            per_node_links[b] += 1
            if a in attacker_index:
                from_attackers[b] += 1
        for i in self.honest:
            core = self.nodes[i].core
            if core is None:
                continue
            table = core.dht.table
            held = set(core.dht.records) | set(core.dht.providers)
            sample = {
                "table_contacts": len(table),
                "unanswered_contacts": sum(1 for c in table.contacts() if c.addr[0] in silent),
                "records": len(core.dht.records),
                "provider_values": len(core.dht.providers),
                "attacker_records": len(held & flooded),
                "connections": core.replicator.connection_count,
                "open_links": per_node_links[i],
                "attacker_connections": from_attackers[i],
            }
            for name, value in sample.items():
                if value > self.resources.get(name, (-1, 0))[0]:
                    self.resources[name] = (value, i)
                bound = getattr(self.scenario.expect, name, UNCHECKED)
                if bound != UNCHECKED and value > bound and name not in self.breached:
                    self.breached.add(name)
                    self._violate(
                        "resources", f"node {i} holds {value} {name.replace('_', ' ')} (bound {bound})"
                    )

    def _hostile_metrics(self) -> dict[str, Any]:
        by_kind: dict[str, Counter[str]] = {}
        for host in self.attackers:
            counts = by_kind.setdefault(host.attack.kind, Counter())
            counts.update(host.sent)
            counts.update({f"answer.{k}": v for k, v in getattr(host, "answers", Counter()).items()})
            if host.attack.kind == "exhaust":
                counts["handshakes_completed"] += host.handshakes
            if host.attack.kind == "flood":
                counts["keys_flooded"] += len(host.flooded)
        received: Counter[str] = Counter()
        for i in self.honest:
            core = self.nodes[i].core
            if core is not None:
                received.update(core.dht.stats)
        victim = [ok for target, ok in self.lookup_by_target if target in self.victims]
        other = [ok for target, ok in self.lookup_by_target if target not in self.victims]
        return {
            "attackers": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
            "attacker_traffic_bytes": sum(
                self.network.traffic[h.index].datagram_bytes + self.network.traffic[h.index].stream_bytes
                for h in self.attackers
            ),
            "honest_dht": {
                k: received[k]
                for k in sorted(received)
                if k.startswith(
                    ("rx.request.", "drop.", "misbehaved.", "store.", "providers.", "table.", "rpc.timeout")
                )
            },
            "lookups": {
                "victims": sorted(self.victims),
                "victim_lookups": len(victim),
                "victim_success_ratio": _r(sum(victim) / len(victim)) if victim else 1.0,
                "by_victim": {
                    str(v): [
                        sum(1 for t, _ in self.lookup_by_target if t == v),
                        sum(1 for t, ok in self.lookup_by_target if t == v and ok),
                    ]
                    for v in sorted(self.victims)
                },
                "other_lookups": len(other),
                "other_success_ratio": _r(sum(other) / len(other)) if other else 1.0,
            },
            "resources_max": {
                name: {"value": v, "node": i} for name, (v, i) in sorted(self.resources.items())
            },
            "core_exception": self.core_exception,
        }

    def _hostile_oracles(self, metrics: dict[str, Any]) -> None:
        expect = self.scenario.expect
        delivery = metrics["delivery"]["ratio"]
        if expect.delivery_ratio and delivery < expect.delivery_ratio:
            self._violate("delivery", f"honest delivery ratio {delivery:g} < {expect.delivery_ratio:g}")
        lookups = metrics["dht"]["success_ratio"]
        if expect.lookup_success and lookups < expect.lookup_success:
            self._violate("lookup", f"honest lookup success ratio {lookups:g} < {expect.lookup_success:g}")
        victims = metrics["hostile"]["lookups"]["victim_success_ratio"]
        if self.victims and expect.victim_lookup_success and victims < expect.victim_lookup_success:
            self._violate(
                "victim lookup",
                f"lookups of censored victims succeed {victims:g} < {expect.victim_lookup_success:g}",
            )


def run_scenario(
    scenario: Scenario,
    *,
    progress: Callable[[float, int], None] | None = None,
    hooks: Hooks | None = None,
    savings: Savings | None = None,
) -> Result:
    """Run a scenario; a flood comparison runs the same seed with ``protocol = "flood"`` too."""
    result = Simulation(scenario, hooks=hooks, savings=savings).run(progress)
    if scenario.name == "flood" and scenario.protocol == "gossip":
        flood = Simulation(replace(scenario, protocol="flood"), hooks=hooks, savings=savings).run(progress)
        result.compare["flood"] = flood.metrics
        result.compare_latencies["flood"] = flood.latencies
        result.violations += flood.violations
    return result


__all__ = ["EPOCH", "Hooks", "Result", "Simulation", "Violation", "percentile", "run_scenario"]
