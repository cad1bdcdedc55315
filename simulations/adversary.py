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
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import TYPE_CHECKING, Any

from dht import wire
from p2pblog.entry import POST, create_entry, post_body
from p2pblog.node import NodeCore
from p2pblog.replication import StoreFeeds

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


def make_core(role: str | None, node: SimNode, rng: Random, now: float) -> NodeCore:
    """The core for a node in the given role (None: honest)."""
    kwargs: dict[str, Any] = {"store": node.store, "random_bytes": rng.randbytes}
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
