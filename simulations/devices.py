"""`DeviceTraffic`: identities with devices, revocations, rotations and thefts in the simulator.

Theory of operation
-------------------
A scenario's ``[devices]`` table (`simulations.scenario.Devices`) picks
the ``identities`` most followed honest authors (never node 0 or an offline
author; their order, which decides what happens to which, from the
``devices`` RNG, so the seed alone decides) and gives each ``devices`` more
machines: extra `SimNode`s after the scenario's nodes (and attackers), which
start at ``pair_at`` and pair as a user would: ``start_pairing`` on the
device's store, the code through `encode_code`/`decode_code`, and
`NodeCore.approve_device` on the root's node (retried every `RETRY` seconds
while the root is down).  Followers follow the identity (the root's handle)
as before; a device posts like an author (``workload.posts_per_hour``, until
posting stops).  Then, each to a different identity, in that order:

* ``revocations``: at ``revoke_at`` the root revokes its last device, which
  keeps posting (once 10 s later at least); its entries after the revocation's ``after`` are its *cut*;
* ``rotations`` (planned): the root committed to its next key at the start
  (`p2pblog.rotation.commit`); at ``rotate_at`` it rotates in its store and
  its node restarts with the new key and the same store (`rotation.rotate`);
* ``thefts``: at ``steal_at`` the root's machine is stolen with its key: the
  root's entries so far are the owner's (the cut), what the node posts from
  then on is the thief's.  At ``recover_at`` the owner recovers on a new
  machine (another extra node, new store) with the committed key
  (`rotation.recover`); the thief keeps posting with the old key.

Followers learn a recovery through the DHT key-event lookup every
``keyevent_poll`` seconds (`p2pblog.rotation.KeyEvents`).

Oracles (violations named ``device ...``), judged at the end of the run
(after the faults stop and ``converge_within``), over the *live followers*
of each identity (honest followers that are up):

1. *device cut*: no live follower shows in its timeline an entry of a
   revoked device past the revocation's cut, or of a stolen root past the
   recovery's cut; and, every `CHECK_EVERY` seconds, no follower that holds a
   revocation or recovery holds an entry past its cut.
2. *device delivery*: every post of a device or root of the identity before
   any cut is in every live follower's timeline, its author attributed to
   the identity (`Store.identity_of` gives the root's handle).
3. *device fork*: no feed of a device or root is marked forked at any node.
4. *device agreement*: every live follower has the identity's root chain
   (`Store.root_chain`) and device set (`Store.devices_of`) that the
   identity's own current node has.

Metrics: identities, devices paired, revocations, rotations, recoveries,
posts and their delivery, the thief's posts (and how many any follower
shows: 0), and the time until each live follower held each revocation,
rotation and recovery (probed every `PROBE_EVERY` seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from identity import Identity
from identity.records import PAIRING_NONCE_BYTES
from p2pblog.entry import POST, decode_entry, post_body
from p2pblog.node import NodeCore
from p2pblog.pairing import decode_code, encode_code, start_pairing
from p2pblog.rotation import commit, recover, rotate
from simulations.node import EPOCH, SimNode

if TYPE_CHECKING:
    from simulations.simulation import Simulation

#: Seconds between two tries of a step whose node is down (an approval, a revocation).
RETRY: Final = 5.0
#: Seconds between the probes of who holds each key event, and between cut checks.
PROBE_EVERY: Final = 5.0
CHECK_EVERY: Final = 30.0
#: Posts shown per follower when the oracles read timelines (more than any run makes).
TIMELINE_LIMIT: Final = 1_000_000


@dataclass
class Ident:
    """One identity with devices: its root's node index and what happened to it."""

    root_index: int
    handle: bytes
    devices: list[SimNode] = field(default_factory=list)
    #: The committed next root key and the one after it (rotations and thefts).
    next_key: Identity | None = None
    after_key: Identity | None = None
    #: What happens to it: "", "revoke", "rotate" or "steal".
    fate: str = ""
    #: Key -> last seq that counts (revoked device, stolen root).
    cuts: dict[bytes, int] = field(default_factory=dict)
    #: When its event happened, and when each live follower first held it.
    event_at: float | None = None
    held_at: dict[int, float] = field(default_factory=dict)
    #: The owner's new node after a recovery.
    recovered: SimNode | None = None
    stolen: bool = False


class DeviceTraffic:
    """Adds the devices and drives the scenario's device events (module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.spec = sim.scenario.devices
        self.idents: list[Ident] = []
        self.extra: list[SimNode] = []
        #: (author key, seq) of posts the devices and new roots made; of the thief's posts.
        self.posts: list[tuple[bytes, int]] = []
        self.thief_posts: list[tuple[bytes, int]] = []
        self._keys = sim.engine.rng("device-keys")
        self._codes: dict[int, str] = {}
        self.by_root: dict[int, Ident] = {}
        self.delivered = self.expected = self.thief_shown = 0
        if self.spec.identities <= 0:
            return
        rng = sim.engine.rng("devices")
        pool = [
            a
            for a in sim.authors
            if a in sim.honest_set and a != 0 and a not in sim.offline_authors and sim.followers[a]
        ]
        # The most followed (so the oracles have followers to judge), in an order the seed draws.
        pool.sort(key=lambda a: (-len(sim.followers[a]), a))
        chosen = pool[: self.spec.identities]
        rng.shuffle(chosen)
        fates = ["revoke"] * self.spec.revocations + ["rotate"] * self.spec.rotations
        fates += ["steal"] * self.spec.thefts
        for number, index in enumerate(chosen):
            node = sim.nodes[index]
            ident = Ident(index, node.identity.public_key)
            ident.fate = fates[number] if number < len(fates) else ""
            for _ in range(self.spec.devices):
                ident.devices.append(self._new_node(Identity(self._keys.randbytes(32))))
            if ident.fate in ("rotate", "steal"):
                ident.next_key = Identity(self._keys.randbytes(32))
                ident.after_key = Identity(self._keys.randbytes(32))
                # The user committed to a recovery key when it set the identity up.
                commit(node.store, node.identity, ident.next_key.public_key, int(EPOCH * 1000))
            self.idents.append(ident)
        self.by_root.update({i.root_index: i for i in self.idents})

    def _new_node(self, identity: Identity) -> SimNode:
        sim = self.sim
        index = len(sim.network.nodes)
        node = SimNode(
            index,
            identity,
            sim.engine,
            sim.network,
            region=index % sim.scenario.network.latency.regions,
            on_event=sim._on_event,
            make_core=sim._core_factory,
            savings=sim.savings,
        )
        self.extra.append(node)
        return node

    # -- hooks the simulation calls ---------------------------------------------------

    def configure(self, core: NodeCore) -> None:
        """Every node's core: the scenario's key-event poll period."""
        if self.spec.identities > 0:
            core.key_events.poll_every = self.spec.keyevent_poll

    def handle(self, index: int) -> bytes:
        """The handle followers follow for author ``index`` (its identity, after a rotation too)."""
        ident = self.by_root.get(index)
        return ident.handle if ident is not None else self.sim.nodes[index].identity.public_key

    def stolen_feed(self, feed: bytes) -> bool:
        """Whether ``feed`` is a stolen root's (the thief holds more of it than counts)."""
        return any(i.stolen and i.handle == feed for i in self.idents)

    def thief_post(self, index: int) -> bool:
        """Post as the thief if node ``index`` is a stolen root's; True if it did."""
        ident = self.by_root.get(index)
        if ident is None or not ident.stolen:
            return False
        key = self._post(self.sim.nodes[index], "thief")
        self.thief_posts.append(key)
        return True

    def _thief_goes_on(self, index: int) -> None:
        self.thief_post(index)

    # -- scheduling -------------------------------------------------------------------

    def schedule(self) -> None:
        sim, spec = self.sim, self.spec
        engine = sim.engine
        rng = engine.rng("device-posts")
        rate = sim.scenario.workload.posts_per_hour
        for ident in self.idents:
            for number, device in enumerate(ident.devices):
                at = spec.pair_at + number
                engine.at(at, partial(self._pair, ident, device))
                self._poisson(rng, at + 10.0, rate, partial(self._device_post, device))
            if ident.fate == "revoke" and ident.devices:
                engine.at(spec.revoke_at, partial(self._revoke, ident))
                # The revoked device goes on posting, whatever the rate.
                engine.at(spec.revoke_at + 10.0, partial(self._device_post, ident.devices[-1]))
            elif ident.fate == "rotate":
                engine.at(spec.rotate_at, partial(self._rotate, ident))
            elif ident.fate == "steal":
                engine.at(spec.steal_at, partial(self._steal, ident))
                engine.at(spec.recover_at, partial(self._recover, ident))
                start = spec.recover_at + 10.0
                self._poisson(rng, start, rate, partial(self._recovered_post, ident))
                # The thief goes on with the old key after the recovery, whatever the rate.
                engine.at(start, partial(self._thief_goes_on, ident.root_index))
        if self.idents:
            t = PROBE_EVERY
            while t <= sim.scenario.duration:
                engine.at(t, self._probe)
                t += PROBE_EVERY
            t = CHECK_EVERY
            while t <= sim.scenario.duration:
                engine.at(t, self._check_cuts)
                t += CHECK_EVERY

    def _poisson(self, rng: Any, start: float, rate: float, action: Callable[[], None]) -> None:
        if rate <= 0:
            return
        t = start
        until = self.sim.scenario.post_until
        while True:
            t += rng.expovariate(rate / 3600.0)
            if t >= until:
                return
            self.sim.engine.at(t, action)

    def _later(self, action: Callable[[], None]) -> None:
        self.sim.engine.after(RETRY, action)

    # -- actions ----------------------------------------------------------------------

    def _pair(self, ident: Ident, device: SimNode) -> None:
        root = self.sim.nodes[ident.root_index]
        if device.incarnation == 0:
            nonce = self._keys.randbytes(PAIRING_NONCE_BYTES)
            code = start_pairing(device.store, device.identity.public_key, f"device-{device.index}", nonce)
            self._codes[device.index] = encode_code(code)
            device.start([self.sim.nodes[0].addr, root.addr])
        if ident.stolen:  # the owner lost the root before approving: no device (nothing to judge)
            ident.devices.remove(device)
            device.crash()
            return
        if root.core is None:
            self._later(partial(self._pair, ident, device))
            return
        root.core.approve_device(decode_code(self._codes[device.index]), root.now)
        root.flush()

    def _post(self, node: SimNode, who: str) -> tuple[bytes, int]:
        text = f"{who} post by node {node.index} at {self.sim.engine.now:.3f}"
        if node.core is not None:
            entry = node.core.post(text, node.now)
            node.flush()
        else:
            entry = node.store.append(node.identity, POST, post_body(text), int(node.now * 1000))
        return entry.author, entry.seq

    def _device_post(self, device: SimNode) -> None:
        if device.up:
            self.posts.append(self._post(device, "device"))

    def _recovered_post(self, ident: Ident) -> None:
        if ident.recovered is not None:
            self.posts.append(self._post(ident.recovered, "owner"))

    def _revoke(self, ident: Ident) -> None:
        root = self.sim.nodes[ident.root_index]
        device = ident.devices[-1].identity.public_key
        if root.core is None:
            self._later(partial(self._revoke, ident))
            return
        entry = root.core.revoke_device(device, root.now)
        root.flush()
        ident.cuts[device] = entry.body["after"]
        ident.event_at = self.sim.engine.now

    def _rotate(self, ident: Ident) -> None:
        node = self.sim.nodes[ident.root_index]
        assert ident.next_key is not None and ident.after_key is not None
        rotate(node.store, node.identity, ident.next_key, ident.after_key.public_key, int(node.now * 1000))
        node.identity = ident.next_key
        self.sim.by_key[ident.next_key.public_key] = node
        if node.up:  # the node restarts with the new key (when down: on its next start)
            node.start([])
        ident.event_at = self.sim.engine.now

    def _steal(self, ident: Ident) -> None:
        node = self.sim.nodes[ident.root_index]
        ident.cuts[ident.handle] = node.store.latest_seq(ident.handle)
        ident.stolen = True

    def _recover(self, ident: Ident) -> None:
        assert ident.next_key is not None and ident.after_key is not None
        owner = self._new_node(ident.next_key)
        now_ms = int(owner.now * 1000)
        recover(
            owner.store,
            ident.handle,
            ident.next_key,
            ident.after_key.public_key,
            ident.cuts[ident.handle],
            now_ms,
        )
        owner.start([self.sim.nodes[0].addr])
        ident.recovered = owner
        ident.event_at = self.sim.engine.now

    # -- watching ---------------------------------------------------------------------

    def live_followers(self, ident: Ident) -> list[SimNode]:
        sim = self.sim
        return [
            sim.nodes[i]
            for i in sim.followers[ident.root_index]
            if i in sim.honest_set and sim.nodes[i].up and not self._is_thief(i)
        ]

    def _is_thief(self, index: int) -> bool:
        ident = self.by_root.get(index)
        return ident is not None and ident.stolen

    def _holds(self, ident: Ident, node: SimNode) -> bool:
        """Whether ``node`` holds the identity's key event (revocation, rotation, recovery)."""
        store = node.store
        if ident.fate == "revoke":
            device = ident.devices[-1].identity.public_key
            return any(
                d.key == device and d.after == ident.cuts[device] for d in store.devices_of(ident.handle)
            )
        assert ident.next_key is not None
        chain = store.root_chain(ident.handle)
        if chain[-1][0] != ident.next_key.public_key:
            return False
        return ident.fate != "steal" or chain[0] == (ident.handle, ident.cuts[ident.handle])

    def _probe(self) -> None:
        now = self.sim.engine.now
        for ident in self.idents:
            if ident.event_at is None:
                continue
            for node in self.live_followers(ident):
                if node.index not in ident.held_at and self._holds(ident, node):
                    ident.held_at[node.index] = now

    def _check_cuts(self) -> None:
        """Oracle 1, while running: a follower holding a cut holds nothing past it."""
        for ident in self.idents:
            if not ident.cuts or ident.event_at is None:
                continue
            for node in self.live_followers(ident):
                if not self._holds(ident, node):
                    continue
                for key, cut in ident.cuts.items():
                    if node.store.latest_seq(key) > cut:
                        self.sim._violate(
                            "device cut",
                            f"node {node.index} holds entry {node.store.latest_seq(key)} of "
                            f"{key.hex()[:8]} past its cut {cut}",
                        )
                        return

    # -- final oracles ----------------------------------------------------------------

    def current_node(self, ident: Ident) -> SimNode:
        """The identity's own current node: the owner's new node after a recovery."""
        return ident.recovered or self.sim.nodes[ident.root_index]

    def _feeds(self, ident: Ident) -> list[tuple[SimNode, bytes]]:
        """(node holding the author's own copy, key) of every feed of the identity."""
        root = self.sim.nodes[ident.root_index]
        out = [(root, ident.handle)] + [(d, d.identity.public_key) for d in ident.devices]
        if ident.next_key is not None and ident.event_at is not None:
            out.append((self.current_node(ident), ident.next_key.public_key))
        return out

    def expected_posts(self, ident: Ident) -> list[tuple[bytes, int, bytes]]:
        """(author, seq, id) of the identity's posts before any cut, from their authors' stores."""
        out = []
        for node, key in self._feeds(ident):
            last = min(node.store.latest_seq(key), ident.cuts.get(key, 1 << 62))
            if last < 1 or node.incarnation == 0:
                continue
            for seq, raw in enumerate(node.store.raw_range(key, 1, last), start=1):
                entry = decode_entry(raw)
                if entry.kind == POST:
                    out.append((key, seq, entry.id))
        return out

    def final_oracles(self) -> None:
        sim = self.sim
        shown_cache: dict[int, dict[bytes, tuple[bytes, int, bytes]]] = {}

        def shown(node: SimNode) -> dict[bytes, tuple[bytes, int, bytes]]:
            if node.index not in shown_cache:
                items = node.store.timeline(node.identity.public_key, limit=TIMELINE_LIMIT)
                shown_cache[node.index] = {
                    i.entry.id: (i.entry.author, i.entry.seq, node.store.identity_of(i.entry.author))
                    for i in items
                }
            return shown_cache[node.index]

        self.delivered = self.expected = 0
        self.thief_shown = 0
        thief = set(self.thief_posts)
        for ident in self.idents:
            own = self.current_node(ident).store
            chain, devices = own.root_chain(ident.handle), _device_set(own, ident.handle)
            expected = self.expected_posts(ident)
            feeds = {key for _, key in self._feeds(ident)}
            for node in [*sim.nodes, *self.extra]:
                for key in feeds:
                    if node.store.feed_state(key).forked_seq is not None:
                        sim._violate("device fork", f"node {node.index} marked {key.hex()[:8]} forked")
            for node in self.live_followers(ident):
                mine = shown(node)
                for author, seq, _handle in mine.values():
                    if (author, seq) in thief:
                        self.thief_shown += 1
                    if author in ident.cuts and seq > ident.cuts[author]:
                        sim._violate(
                            "device cut",
                            f"node {node.index} shows entry {seq} of {author.hex()[:8]} past its cut "
                            f"{ident.cuts[author]}",
                        )
                for author, seq, eid in expected:
                    self.expected += 1
                    got = mine.get(eid)
                    if got is not None and got[2] == ident.handle:
                        self.delivered += 1
                    else:
                        sim._violate(
                            "device delivery",
                            f"node {node.index} does not show entry {seq} of {author.hex()[:8]} "
                            f"as identity {ident.handle.hex()[:8]}'s",
                        )
                if (
                    node.store.root_chain(ident.handle) != chain
                    or _device_set(node.store, ident.handle) != devices
                ):
                    sim._violate(
                        "device agreement",
                        f"node {node.index} disagrees with identity {ident.handle.hex()[:8]}'s own node "
                        "on its root chain or devices",
                    )

    # -- metrics ----------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        from simulations.simulation import _r, percentile

        self.final_oracles()
        learned: dict[str, Any] = {}
        for kind, fate in (("revocation", "revoke"), ("rotation", "rotate"), ("recovery", "steal")):
            times = [
                t - i.event_at
                for i in self.idents
                if i.fate == fate and i.event_at is not None
                for t in i.held_at.values()
            ]
            learned[kind] = {"p50": _r(percentile(times, 50)), "max": _r(max(times, default=0.0))}
        paired = sum(1 for i in self.idents for d in i.devices if d.store.setting("device.identity"))
        return {
            "identities": len(self.idents),
            "devices_paired": paired,
            "revocations": sum(1 for i in self.idents if i.fate == "revoke" and i.event_at is not None),
            "rotations": sum(1 for i in self.idents if i.fate == "rotate" and i.event_at is not None),
            "recoveries": sum(1 for i in self.idents if i.recovered is not None),
            "posts": len(self.posts),
            "delivery": {
                "expected": self.expected,
                "delivered": self.delivered,
                "ratio": _r(self.delivered / self.expected) if self.expected else 1.0,
            },
            "thief_posts": len(self.thief_posts),
            "thief_posts_shown": self.thief_shown,
            "held_after_s": learned,
        }


def _device_set(store: Any, identity: bytes) -> set[tuple[bytes, str, bool, bool, int | None]]:
    return {(d.key, d.name, d.admin, d.consented, d.after) for d in store.devices_of(identity)}
