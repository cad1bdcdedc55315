"""Malicious roles: the real `NodeCore`, with one part of it lying.

Each role changes only what the node *sends*; what it receives it handles
honestly.  Honest nodes run the unmodified core, so what the oracles see is
how the real code copes.

* ``dht_bogus``: every FIND_NODE answer, every FIND_VALUE answer without a
  value, and the closer peers of every GET_PROVIDERS answer name bogus
  peers (random ids at addresses nobody listens on).
* ``dht_forged``: every value it returns, for FIND_VALUE (peer records) and
  in GET_PROVIDERS answers (provider records and name claims), has its
  signature broken, as a record forged for another key would.
* ``gossip_withhold``: claims in its clock to hold nothing but its own feed,
  so it never serves the feeds it replicates (it still announces itself as
  their provider, wasting its followers' dials).
* ``gossip_forge``: serves other authors' entries with broken signatures.
* ``equivocator``: an author that, at ``equivocate_at``, signs a second entry
  for its next seq and hands it to half of its followers (`equivocate`).
* ``sybil`` (a scenario's ``[sybil]`` table, `SybilPlan`): one of many nodes
  of one attacker, from a few /24s, that answers DHT lookups with Sybils only
  and declares and serves nothing in gossip: from the start (``cold``), all
  at once at ``turn_at`` after behaving (``flash``), or only about one
  author's keys and feed, next to which it ground its DHT id (``eclipse``).
  `SybilCore` rewrites its own answers as `LyingDhtCore` does, remembering
  the target of each request it will lie to (at most `MAX_SYBIL_ASKED`).

Attackers from outside
----------------------
A scenario's ``[[attacks]]`` (`simulations.scenario.Attack`) are machines
that are not p2pblog nodes at all: each is an `AttackHost`, an endpoint of
the `Network` added after the honest nodes (so no honest node's index,
address or random stream moves), at an address in ``10.66.0.0/16``
(`attack_host`), refusing every inbound connection.  They write raw wire
bytes, as a hostile program with its own socket would, and draw every
choice from their own seeded stream (``attack:N``):

* `Flooder` (``flood``): ``rate`` times a second, a random targeted honest
  node gets a validly signed provider record of a random feed, signed by one
  of ``keys`` identities the flooder made, as a ``p2pb_add_provider`` or
  (every other request) a ``store`` under that feed's provider key.  It never
  answers anything.
* `Poisoner` (``poison``): ``rate`` times a second, a PING or a FIND_NODE
  for a random target, from a fresh random node id and a source port drawn
  from ``ports`` on its one host (`Network.send_datagram`'s ``src_addr``).
  It never answers: every contact it plants in a table is dead.
* `Exhauster` (``exhaust``): keeps ``connections`` TCP connections open to
  each targeted node, dialling at most ``rate`` a second, from one host or
  from ``hosts`` hosts of one /24 (`Network.dial`'s ``src_addr``).  ``silent``
  sends nothing; ``idle`` completes the Noise XX handshake as initiator
  (the real `gossip.transport.SecureChannel`, one of ``keys`` identities)
  and then sends nothing, keepalives included.  A lost connection is dialled
  again.
* `Censor` (``censor``): ``nodes`` DHT nodes per victim (an honest author,
  node 0 excepted) whose ids share ``prefix_bits`` leading bits with the
  victim's peer-record key, so that they are the key's closest nodes.  They
  ping every honest node once it is up (looking every `CENSOR_ANNOUNCE_EVERY`
  seconds; they enter tables the honest way: by answering), answer PING,
  FIND_NODE and GET_PROVIDERS plausibly (the closest of the honest nodes
  and their fellow censors, so lookups for the key walk into them), accept
  and swallow every STORE and provider, and
  answer a FIND_VALUE for a victim's key with ``answer``: ``not_found``
  (fellow censors), ``closer`` (made-up contacts even closer to the key, at
  addresses nobody listens on), ``garbage`` (bytes that start like a record
  and are not one), ``forged`` (a peer record naming the victim's key with a
  seq far ahead, signed by the censor), ``stale`` (the oldest version of the
  victim's own record it was handed; ``not_found`` until it has one), or
  ``mixed`` (one of those at random per answer).  They know every honest
  node's id and address, as a crawler would after a while.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from random import Random
from typing import TYPE_CHECKING, Any

import msgpack

from dht import DhtCore, wire
from dht.ids import ID_BITS, ID_BYTES, Contact, K, distance, node_id_from_public_key
from gossip.transport import ChannelFailed, HandshakeCompleted, SecureChannel
from identity import Identity
from identity.keys import SIGNATURE_BYTES
from identity.records import (
    FORMAT_VERSION,
    PEER,
    PROVIDER,
    create_record,
    decode_record,
    peer_key,
    provider_key,
)
from p2pblog.entry import POST, create_entry, post_body
from p2pblog.node import NodeCore
from p2pblog.replication import StoreFeeds
from simulations.network import PORT
from simulations.node import EPOCH
from simulations.scenario import Attack

if TYPE_CHECKING:
    from simulations.node import SimNode
    from simulations.simulation import Simulation


def _flip(raw: bytes) -> bytes:
    """The same bytes with the signature's first byte changed."""
    return bytes([raw[0] ^ 0x01]) + raw[1:]


class WithholdingFeeds(StoreFeeds):
    """Declares nothing held except the own feed."""

    def __init__(self, base: StoreFeeds, own: bytes) -> None:
        super().__init__(base.store, base.wanted)
        self.own = own

    def latest_seq(self, feed: bytes) -> int:
        return self.store.latest_seq(feed) if feed == self.own else 0


class ForgingFeeds(StoreFeeds):
    """Serves other authors' entries with broken signatures."""

    def __init__(self, base: StoreFeeds, own: bytes) -> None:
        super().__init__(base.store, base.wanted)
        self.own = own

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        raws = self.store.raw_range(feed, first_seq, limit)
        return raws if feed == self.own else [_flip(raw) for raw in raws]


class LyingDhtCore(NodeCore):
    """A NodeCore whose DHT answers lie (bogus peers, or forged values)."""

    def __init__(self, *args: Any, mode: str, lie_rng: Random, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = mode
        self.lie_rng = lie_rng

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out = []
        for data, addr in super().datagrams_to_send():
            out.append((self._lie(data), addr))
        return out

    def _lie(self, data: bytes) -> bytes:
        try:
            message = wire.decode_datagram(data)
        except wire.WireError:
            return data
        if not isinstance(message, wire.Response):
            return data
        body = message.body
        providers = isinstance(body, dict) and set(body) == {"providers", "nodes"}
        if self.mode == "dht_bogus":
            if _contacts(body):
                return wire.encode_response(message.msg_id, self._bogus(body))
            if providers and _contacts(body["nodes"]):
                return wire.encode_response(message.msg_id, {**body, "nodes": self._bogus(body["nodes"])})
        elif self.mode == "dht_forged" and isinstance(body, dict):
            if isinstance(body.get("value"), bytes):
                return wire.encode_response(message.msg_id, {**body, "value": _flip(body["value"])})
            if providers and body["providers"]:
                forged = [_flip(v) if isinstance(v, bytes) else v for v in body["providers"]]
                return wire.encode_response(message.msg_id, {**body, "providers": forged})
        return data

    def _bogus(self, contacts: list[Any]) -> list[list[Any]]:
        """As many made-up contacts: random ids at addresses nobody listens on."""
        rng = self.lie_rng
        return [
            [rng.randbytes(20), f"10.255.{rng.randrange(256)}.{rng.randrange(256)}", 7710] for _ in contacts
        ]


def _contacts(body: object) -> bool:
    """Whether body is a non-empty list of [id, ip, port] triples (a FIND_NODE answer)."""
    return isinstance(body, list) and bool(body) and all(isinstance(c, list) and len(c) == 3 for c in body)


def make_core(
    role: str | None, node: SimNode, rng: Random, now: float, dht_factory: Callable[..., DhtCore] = DhtCore
) -> NodeCore:
    """The core for a node in the given role (None: honest), its DHT built by ``dht_factory``."""
    kwargs: dict[str, Any] = {"store": node.store, "random_bytes": rng.randbytes, "dht_factory": dht_factory}
    core: NodeCore
    if role in ("dht_bogus", "dht_forged"):
        assert role is not None
        core = LyingDhtCore(node.identity, rng, now, mode=role, lie_rng=Random(rng.random()), **kwargs)
    else:
        core = NodeCore(node.identity, rng, now, **kwargs)
    own = node.identity.public_key
    if role == "gossip_withhold":
        core.replicator.source = WithholdingFeeds(core.replicator.source, own)
    elif role == "gossip_forge":
        core.replicator.source = ForgingFeeds(core.replicator.source, own)
    return core


def equivocate(sim: Simulation, index: int) -> None:
    """Author ``index`` signs two different entries with its next seq.

    One goes into its own feed (and out to its followers as usual); the other
    is handed to a random half of its followers directly, who pass it on.
    """
    author = sim.nodes[index]
    state = author.store.feed_state(author.identity.public_key)
    if state.forked_seq is not None:
        return
    seq, prev = state.latest_seq + 1, state.latest_id
    sim.equivocated[index] = seq
    when = int(author.now * 1000)
    other = create_entry(
        author.identity, seq=seq, prev=prev, timestamp=when, kind=POST, body=post_body("the other branch")
    )
    if author.core is not None:
        author.core.post("the first branch", author.now)
        author.flush()
    else:
        author.store.append(author.identity, POST, post_body("the first branch"), when)
    rng = sim.engine.rng("equivocation")
    followers = [i for i in sim.followers[index] if sim.nodes[i].up]
    for i in sorted(rng.sample(followers, len(followers) // 2)):
        follower = sim.nodes[i]
        if follower.store.latest_seq(author.identity.public_key) == seq - 1 and follower.core is not None:
            follower.store.ingest(other.raw)
            follower.core.replicator.feed_appended(author.identity.public_key, follower.now)
            follower.flush()


# ============================================================ attackers from outside

#: First port of the ones a poisoner rotates through (above the well-known ports).
FIRST_ROTATED_PORT = 1024
#: Seconds between a censor's looks for honest nodes that came up (it pings each once).
CENSOR_ANNOUNCE_EVERY = 2.0
#: Seconds a record an attacker signs stays valid (a day: as long as the node's own TTLs).
ATTACK_RECORD_TTL = 24 * 3600


def attack_host(attack: int, machine: int) -> str:
    """The address of an attack's machine: ``10.66.<attack>.<machine + 1>`` (.1 .. .254),
    past 254 machines the next /24 (censors: one machine each)."""
    third, fourth = divmod(machine, 254)
    return f"10.{66 + third // 256}.{(attack * 8 + third) % 256}.{fourth + 1}"


class AttackHost:
    """An attacker's machine on the `Network`: one address, its own seeded RNG, no core.

    The network delivers to it like to any node (`simulations.network.Endpoint`);
    it is in `Network.refusing`, so nobody can connect to it.  `start` and
    `stop` bound the attack in time; subclasses act in `tick` and answer in
    `on_datagram`.  `sent` counts what it sent, by kind, for the metrics.
    """

    region = 0

    def __init__(self, sim: Simulation, number: int, attack: Attack, machine: int = 0) -> None:
        self.sim = sim
        self.attack = attack
        self.rng = sim.engine.rng(f"attack:{number}:{machine}")
        self.host = attack_host(number, machine)
        self.addr = (self.host, PORT)
        self.index = len(sim.network.nodes)
        sim.network.add(self, self.addr)
        sim.network.refusing.add(self.index)
        self.up = False
        self.until = attack.end(sim.scenario.duration)
        self.sent: Counter[str] = Counter()
        #: The honest nodes it aims at (`Attack.targets` of them, at least one).
        honest = [i for i in sim.honest]
        count = max(1, round(attack.targets * len(honest)))
        self.targets = sorted(self.rng.sample(honest, min(count, len(honest))))

    @property
    def now(self) -> float:
        return self.sim.engine.now

    def start(self) -> None:
        self.up = True
        self.tick()

    def stop(self) -> None:
        self.up = False

    def tick(self) -> None:
        """One step of the attack; schedules the next one while the attack lasts."""

    def _again(self) -> None:
        """The next tick after an exponential pause (``rate`` ticks a second on average)."""
        at = self.now + self.rng.expovariate(self.attack.rate)
        if at < self.until:
            self.sim.engine.at(at, self._tick_if_up)
        else:
            self.sim.engine.at(self.until, self.stop)

    def _tick_if_up(self) -> None:
        if self.up:
            self.tick()

    def _target(self) -> int | None:
        """A random targeted honest node that is up, or None."""
        up = [i for i in self.targets if self.sim.nodes[i].up]
        return self.rng.choice(up) if up else None

    def send(self, data: bytes, addr: tuple[str, int], kind: str, src: tuple[str, int] | None = None) -> None:
        self.sent[kind] += 1
        self.sim.network.send_datagram(self.index, data, addr, src_addr=src)

    def new_msg_id(self) -> bytes:
        return self.rng.randbytes(wire.MSG_ID_BYTES)

    # -- what the network delivers (an attacker ignores what it does not use) ------

    def receive_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.up:
            return
        try:
            message = wire.decode_datagram(data)
        except wire.WireError:
            return
        self.on_datagram(message, addr)

    def on_datagram(self, message: wire.Message, addr: tuple[str, int]) -> None:
        """Never answers (the default)."""

    def connection_accepted(self, addr: tuple[str, int]) -> int:
        raise AssertionError("an attack host refuses connections (Network.refusing)")

    def connection_opened(self, conn_id: int) -> None: ...
    def connection_failed(self, conn_id: int) -> None: ...
    def data_received(self, conn_id: int, data: bytes) -> None: ...
    def connection_lost(self, conn_id: int) -> None: ...


class Flooder(AttackHost):
    """Validly signed provider records of random feeds, to honest nodes, never answering."""

    def __init__(self, sim: Simulation, number: int, attack: Attack) -> None:
        super().__init__(sim, number, attack)
        self.keys = [Identity(self.rng.randbytes(32)) for _ in range(attack.keys)]
        #: DHT keys it filed records under (what the resource oracle counts at honest nodes).
        self.flooded: set[bytes] = set()

    def tick(self) -> None:
        target = self._target()
        if target is not None:
            signer = self.rng.choice(self.keys)
            feed = self.rng.randbytes(32)
            key = provider_key(feed)
            expires = int(self.sim.nodes[target].now) + ATTACK_RECORD_TTL
            addrs = [("tcp", self.host, PORT)]
            value = create_record(signer, type=PROVIDER, seq=1, expires=expires, addrs=addrs, feed=feed).raw
            sender = node_id_from_public_key(signer.public_key)
            request: wire.Request
            if sum(self.sent.values()) % 2:
                request, kind = wire.Store(self.new_msg_id(), sender, key, value), "store"
            else:
                request, kind = wire.AddProvider(self.new_msg_id(), sender, key, value), "add_provider"
            self.flooded.add(key)
            self.send(wire.encode_request(request), self.sim.nodes[target].addr, kind)
        self._again()


class Poisoner(AttackHost):
    """PING / FIND_NODE from random ids on rotating ports of one host, never answering."""

    def tick(self) -> None:
        target = self._target()
        if target is not None:
            sender = self.rng.randbytes(ID_BYTES)
            port = FIRST_ROTATED_PORT + self.rng.randrange(self.attack.ports)
            request: wire.Request
            if self.rng.random() < 0.5:
                request, kind = wire.Ping(self.new_msg_id(), sender), "ping"
            else:
                target_id = self.rng.randbytes(ID_BYTES)
                request, kind = wire.FindNode(self.new_msg_id(), sender, target_id), "find_node"
            self.send(wire.encode_request(request), self.sim.nodes[target].addr, kind, (self.host, port))
        self._again()


class Exhauster(AttackHost):
    """Holds ``connections`` TCP connections to each target open without replicating anything."""

    def __init__(self, sim: Simulation, number: int, attack: Attack) -> None:
        super().__init__(sim, number, attack)
        self.hosts = [attack_host(number, h) for h in range(attack.hosts)]
        self.keys = (
            [Identity(self.rng.randbytes(32)) for _ in range(attack.keys)] if attack.mode == "idle" else []
        )
        self._next_conn = 0
        #: conn id -> target node; and the handshakes of ``idle`` connections.
        self.conns: dict[int, int] = {}
        self.channels: dict[int, SecureChannel] = {}
        self.open_to: Counter[int] = Counter()
        self.handshakes = 0

    def tick(self) -> None:
        short = [
            i for i in self.targets if self.sim.nodes[i].up and self.open_to[i] < self.attack.connections
        ]
        if short:
            target = self.rng.choice(short)
            self._next_conn += 1
            conn = self._next_conn
            self.conns[conn] = target
            self.open_to[target] += 1
            src = (
                self.rng.choice(self.hosts),
                FIRST_ROTATED_PORT + self.rng.randrange(64511 - FIRST_ROTATED_PORT),
            )
            self.sent["dial"] += 1
            self.sim.network.dial(self.index, conn, self.sim.nodes[target].addr, src_addr=src)
        self._again()

    def stop(self) -> None:
        super().stop()
        for conn in sorted(self.conns):
            self.sim.network.close(self.index, conn)

    def connection_opened(self, conn_id: int) -> None:
        if conn_id not in self.conns or self.attack.mode != "idle":
            return
        channel = SecureChannel.initiator(
            self.rng.choice(self.keys), now=self.now, random_bytes=self.rng.randbytes
        )
        self.channels[conn_id] = channel
        self._flush(conn_id, channel)

    def data_received(self, conn_id: int, data: bytes) -> None:
        channel = self.channels.get(conn_id)
        if channel is None:
            return  # silent, or already idle: what the node sends is never read
        channel.receive_data(data, self.now)
        self._flush(conn_id, channel)
        while (event := channel.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshakes += 1
                del self.channels[conn_id]  # from now on: idle, not even keepalives
                return
            if isinstance(event, ChannelFailed):
                del self.channels[conn_id]
                return

    def _flush(self, conn_id: int, channel: SecureChannel) -> None:
        out = channel.data_to_send()
        if out:
            self.sent["handshake_bytes"] += len(out)
            self.sim.network.stream_send(self.index, conn_id, out)

    def _gone(self, conn_id: int) -> None:
        target = self.conns.pop(conn_id, None)
        if target is not None:
            self.open_to[target] -= 1
        self.channels.pop(conn_id, None)

    def connection_failed(self, conn_id: int) -> None:
        self.sent["dial_failed"] += 1
        self._gone(conn_id)

    def connection_lost(self, conn_id: int) -> None:
        self.sent["closed_by_node"] += 1
        self._gone(conn_id)


class Censor(AttackHost):
    """A DHT node next to a victim's peer-record key that hides the victim's record."""

    def __init__(
        self, sim: Simulation, number: int, attack: Attack, machine: int, victim: int, fellows: list[Censor]
    ) -> None:
        super().__init__(sim, number, attack, machine)
        self.victim = victim
        self.victim_key = sim.nodes[victim].identity.public_key
        self.key = peer_key(self.victim_key)
        self.node_id = near(self.key, attack.prefix_bits, self.rng)
        self.identity = Identity(self.rng.randbytes(32))
        #: Every censor of this attack (itself included), filled in by `make_attackers`.
        self.fellows = fellows
        #: The victim's records it was handed, oldest first (for ``stale`` and ``forged``).
        self.held: list[bytes] = []
        self.answers: Counter[str] = Counter()
        self.pinged: set[int] = set()
        self.contacts: list[Contact] = []

    def start(self) -> None:
        self.up = True
        self.tick()

    def tick(self) -> None:
        """Ping every honest node that came up since the last tick (the first time it is up)."""
        for i in self.sim.honest:
            node = self.sim.nodes[i]
            if node.up and i not in self.pinged:
                self.pinged.add(i)
                self.send(wire.encode_request(wire.Ping(self.new_msg_id(), self.node_id)), node.addr, "ping")
        if self.now + CENSOR_ANNOUNCE_EVERY < self.until:
            self.sim.engine.after(CENSOR_ANNOUNCE_EVERY, self._tick_if_up)
        else:
            self.sim.engine.at(self.until, self.stop)

    def _closest(self, target: bytes, exclude: tuple[str, int]) -> list[Contact]:
        if not self.contacts:
            honest = [
                Contact(
                    node_id_from_public_key(self.sim.nodes[i].identity.public_key), self.sim.nodes[i].addr
                )
                for i in self.sim.honest
            ]
            self.contacts = honest + [Contact(c.node_id, c.addr) for c in self.fellows]
        pool = [c for c in self.contacts if c.addr != exclude]
        t = int.from_bytes(target, "big")  # `distance`, with the target converted once per answer
        return heapq.nsmallest(K, pool, key=lambda c: int.from_bytes(c.node_id, "big") ^ t)

    def on_datagram(self, message: wire.Message, addr: tuple[str, int]) -> None:
        if isinstance(message, wire.Response):
            return
        reply: bytes | None = None
        match message:
            case wire.Ping(msg_id):
                reply = wire.ping_response(msg_id, self.node_id)
            case wire.FindNode(msg_id, _, target):
                reply = wire.find_node_response(msg_id, self._closest(target, addr))
            case wire.GetProviders(msg_id, _, key):
                reply = wire.get_providers_response(msg_id, [], self._closest(key, addr))
            case wire.Store(msg_id, _, key, value):
                if key == self.key and isinstance(value, bytes):
                    self.held.append(value)
                reply = wire.store_response(msg_id, True)
            case wire.AddProvider(msg_id):
                reply = wire.add_provider_response(msg_id, True)
            case wire.FindValue(msg_id, _, key):
                reply = self._find_value(msg_id, key, addr)
        if reply is not None:
            self.send(reply, addr, "response")

    def _find_value(self, msg_id: bytes, key: bytes, addr: tuple[str, int]) -> bytes:
        if key != self.key:
            return wire.find_value_response(msg_id, self._closest(key, addr))
        answer = self.attack.answer
        if answer == "mixed":
            answer = self.rng.choice(Attack.ANSWERS[:-1])
        if answer == "stale" and not self.held:
            answer = "not_found"
        self.answers[answer] += 1
        if answer == "closer":
            bogus = [
                Contact(near(self.key, self.attack.prefix_bits + 8, self.rng), (f"10.67.{j}.{j + 1}", PORT))
                for j in range(K)
            ]
            return wire.find_value_response(msg_id, bogus)
        if answer == "garbage":
            junk = (
                self.rng.randbytes(SIGNATURE_BYTES) + bytes([0x96, FORMAT_VERSION]) + self.rng.randbytes(100)
            )
            return wire.find_value_response(msg_id, junk)
        if answer == "forged":
            return wire.find_value_response(msg_id, self._forged())
        if answer == "stale":
            return wire.find_value_response(msg_id, self.held[0])
        return wire.find_value_response(msg_id, self._closest(key, addr))

    def _forged(self) -> bytes:
        """A peer record naming the victim's key and this censor's address, seq far ahead,
        signed by the censor (so its signature does not verify for the victim's key)."""
        newest = max(
            (decode_record(v, now=None, check_signature=False).seq for v in self.held if _is_record(v)),
            default=0,
        )
        expires = int(self.sim.nodes[self.victim].now) + ATTACK_RECORD_TTL
        body = {"addrs": [["tcp", self.host, PORT], ["udp", self.host, PORT]]}
        content = msgpack.packb([FORMAT_VERSION, PEER, self.victim_key, newest + 1_000_000, expires, body])
        signed: bytes = self.identity.sign(content)
        return signed


def _is_record(value: bytes) -> bool:
    try:
        decode_record(value, now=None, check_signature=False)
    except ValueError:
        return False
    return True


def near(key: bytes, bits: int, rng: Random) -> bytes:
    """A random id that shares its first ``bits`` bits with key (and differs in the next)."""
    bits = min(bits, ID_BITS - 1)
    low = ID_BITS - bits
    value = int.from_bytes(key, "big") >> low << low
    value |= (1 << (low - 1)) ^ (int.from_bytes(key, "big") & (1 << (low - 1)))
    value |= rng.getrandbits(low - 1) if low > 1 else 0
    return value.to_bytes(ID_BYTES, "big")


def make_attackers(sim: Simulation) -> list[AttackHost]:
    """The machines of every ``[[attacks]]`` entry, added to the network after the honest nodes."""
    out: list[AttackHost] = []
    for number, attack in enumerate(sim.scenario.attacks):
        if attack.kind == "flood":
            out.append(Flooder(sim, number, attack))
        elif attack.kind == "poison":
            out.append(Poisoner(sim, number, attack))
        elif attack.kind == "exhaust":
            out.append(Exhauster(sim, number, attack))
        else:
            fellows: list[Censor] = []
            for j, victim in enumerate(sim.censored(attack, number)):
                for m in range(attack.nodes):
                    censor = Censor(sim, number, attack, j * attack.nodes + m, victim, fellows)
                    fellows.append(censor)
                    out.append(censor)
    return out


# ============================================================ Sybils among the nodes

#: Requests a Sybil remembers to lie to, at most (answers it never sends are forgotten).
MAX_SYBIL_ASKED = 4096
#: Sybil addresses: host .2 .. .254 of ``10.254.<network>.0/24`` (honest nodes take host .1).
SYBIL_FIRST_HOST = 2


class SilentFeeds(WithholdingFeeds):
    """Declares and serves nothing but the own feed (a turned Sybil)."""

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        return self.store.raw_range(feed, first_seq, limit) if feed == self.own else []


class HidingFeeds(StoreFeeds):
    """Declares and serves nothing of the hidden feeds (an eclipsing Sybil)."""

    def __init__(self, base: StoreFeeds, hidden: frozenset[bytes]) -> None:
        super().__init__(base.store, base.wanted)
        self.hidden = hidden

    def latest_seq(self, feed: bytes) -> int:
        return 0 if feed in self.hidden else self.store.latest_seq(feed)

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        return [] if feed in self.hidden else self.store.raw_range(feed, first_seq, limit)


class SybilPlan:
    """The Sybils of a scenario's ``[sybil]`` table: who they are, where, their DHT ids,
    and what they lie about (`SybilCore`).

    * ``cold``: hostile from the start.  Every FIND_NODE, FIND_VALUE and
      GET_PROVIDERS answer names only Sybils (the k nearest the target of all
      of them: real nodes that answer, so a walk that follows them stays among
      them) and never a value or a provider; in gossip a Sybil declares and
      serves nothing but its own feed (it still follows, announces and holds
      connections).  Stores are acknowledged and never served.
    * ``flash``: honest until ``turn_at`` (it joins, follows, replicates and
      announces like anyone, so honest nodes come to rely on it), then all of
      them turn at once as ``cold``.
    * ``eclipse``: each Sybil grinds its DHT id next to the peer-record key or
      the provider key of an eclipsed author (the ``victims`` honest authors
      with the most honest followers; ids
      share ``prefix_bits`` leading bits with the key), behaves honestly about
      everything else, and answers lookups of those keys as ``cold`` does, and
      never declares or serves the eclipsed feeds.

    With ``networks`` > 0 the Sybils' addresses come from that many /24s
    (``10.254.<n>.<host>``), as an attacker with a few machines and many ports
    or addresses would have; with 0 each has a /24 of its own, like the honest
    nodes.
    """

    def __init__(self, sim: Simulation) -> None:
        spec = sim.scenario.sybil
        self.mode = spec.mode
        self.turn_at = spec.turn_at if spec.mode == "flash" else 0.0
        self.indices = sorted(i for i, role in sim.roles.items() if role == "sybil")
        rng = sim.engine.rng("sybil")
        if spec.networks:
            for j, index in enumerate(self.indices):
                network, host = j % spec.networks, j // spec.networks + SYBIL_FIRST_HOST
                place(sim.nodes[index], (f"10.254.{network}.{host}", PORT))
        self.victims: list[int] = []
        #: DHT key -> eclipsed author, and the eclipsed feeds.
        self.hidden_keys: dict[bytes, int] = {}
        if spec.mode == "eclipse":
            # The most followed honest authors (by honest followers): the eclipse a user notices.
            pool = [a for a in sim.authors if a in sim.honest_set and a != 0 and a not in sim.offline_authors]
            pool.sort(key=lambda a: (-sum(1 for i in sim.followers[a] if i in sim.honest_set), a))
            self.victims = sorted(pool[: spec.victims])
            for victim in self.victims:
                key = sim.nodes[victim].identity.public_key
                self.hidden_keys[peer_key(key)] = victim
                self.hidden_keys[provider_key(key)] = victim
        self.hidden_feeds = frozenset(sim.nodes[v].identity.public_key for v in self.victims)
        targets = sorted(self.hidden_keys)
        self.ids: dict[int, bytes] = {}
        for j, index in enumerate(self.indices):
            if targets:
                self.ids[index] = near(targets[j % len(targets)], spec.prefix_bits, rng)
            else:
                self.ids[index] = node_id_from_public_key(sim.nodes[index].identity.public_key)
        #: Every Sybil as a contact, by id (the nearest to a key are found by bisection).
        directory = sorted(
            (int.from_bytes(self.ids[i], "big"), Contact(self.ids[i], sim.nodes[i].addr))
            for i in self.indices
        )
        self._id_ints = [n for n, _ in directory]
        self._contacts = [c for _, c in directory]
        #: What the Sybils' cores lied, summed over their incarnations.
        self.lies: Counter[str] = Counter()

    def hostile(self, now: float) -> bool:
        """Whether the Sybils lie at ``now`` (simulated seconds)."""
        return now >= self.turn_at

    def lies_about(self, key: bytes) -> bool:
        return not self.hidden_keys or key in self.hidden_keys

    def nearest(self, key: bytes, exclude: tuple[str, int]) -> list[Contact]:
        """The k Sybils nearest key: XOR-near ids share a prefix, so they sort next to it."""
        at = bisect.bisect_left(self._id_ints, int.from_bytes(key, "big"))
        window = self._contacts[max(0, at - 2 * K) : at + 2 * K]
        pool = [c for c in window if c.addr != exclude]
        return heapq.nsmallest(K, pool, key=lambda c: distance(c.node_id, key))

    def make_core(self, node: SimNode, rng: Random, now: float) -> SybilCore:
        ground = self.ids[node.index]  # the id it ground, or the one its key gives

        def dht_with_ground_id(_key_id: bytes, *args: Any, **kwargs: Any) -> DhtCore:
            return DhtCore(ground, *args, **kwargs)

        core = SybilCore(
            node.identity,
            rng,
            now,
            store=node.store,
            random_bytes=rng.randbytes,
            plan=self,
            dht_factory=dht_with_ground_id,
        )
        if self.hidden_feeds:
            core.replicator.source = HidingFeeds(core.replicator.source, self.hidden_feeds)
        elif self.hostile(now - EPOCH):
            core.turn()
        core.lies = self.lies  # one count for all of them
        return core

    def turn(self, sim: Simulation) -> None:
        """``flash``: every Sybil turns hostile at once."""
        for index in self.indices:
            node = sim.nodes[index]
            core = node.core
            if isinstance(core, SybilCore):
                core.turn()
                node.flush()


class SybilCore(NodeCore):
    """A NodeCore that lies as its `SybilPlan` says: DHT answers that lead only to Sybils,
    and (once turned) gossip that declares nothing."""

    def __init__(self, *args: Any, plan: SybilPlan, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan
        #: Answers it changed (FIND_NODE or FIND_VALUE: ``closer``; GET_PROVIDERS: ``providers``).
        self.lies: Counter[str] = Counter()
        #: msg id -> (key, asker, seen) of each request it will lie to.
        self._asked: dict[bytes, tuple[bytes, tuple[str, int], bool | None]] = {}

    def turn(self) -> None:
        if not isinstance(self.replicator.source, SilentFeeds):
            self.replicator.source = SilentFeeds(self.replicator.source, self.identity.public_key)

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if self.plan.hidden_keys or isinstance(self.replicator.source, SilentFeeds):
            self._note(data, addr)
        super().receive_datagram(data, addr, now)

    def _note(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = wire.decode_datagram(data)
        except wire.WireError:
            return
        seen: bool | None = None
        match message:
            case wire.FindNode(msg_id, _, key) | wire.FindValue(msg_id, _, key):
                pass
            case wire.GetProviders(msg_id, _, key, seen):
                pass
            case _:
                return
        if self.plan.lies_about(key):
            if len(self._asked) >= MAX_SYBIL_ASKED:
                self._asked.clear()
            self._asked[msg_id] = (key, addr, seen)

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out = super().datagrams_to_send()
        if not self._asked:
            return out
        return [(self._lie(data), addr) for data, addr in out]

    def _lie(self, data: bytes) -> bytes:
        try:
            message = wire.decode_datagram(data)
        except wire.WireError:
            return data
        if not isinstance(message, wire.Response) or message.msg_id not in self._asked:
            return data
        key, asker, seen = self._asked.pop(message.msg_id)
        sybils = self.plan.nearest(key, asker)
        if seen is None:
            self.lies["closer"] += 1
            return wire.find_node_response(message.msg_id, sybils)
        self.lies["providers"] += 1
        return wire.get_providers_response(message.msg_id, [], sybils, seen=[] if seen else None)


def place(node: SimNode, addr: tuple[str, int]) -> None:
    """Move a node that never ran to another address."""
    node.network.move(node.index, addr)
    node.endpoint.addr = addr
    node.addr = addr
