"""`DmTraffic`: the simulator's direct-message workload, its metrics and its oracles.

Theory of operation
-------------------
A scenario's ``[dms]`` table (`simulations.scenario.Dms`) gives each honest
node a Poisson process of direct messages in ``[start, dm_until)``.  Every
message's time, sender and recipient are drawn when the run is scheduled
(the ``dms`` RNG), so they depend on the seed alone: the recipient is one of
the sender's followees and followers, or, for a ``strangers`` fraction (and
for a node without any), another honest node.  Nodes that go offline for
good (offline authors) neither send nor receive.

When a message is due, a sender that is up sends it (`NodeCore.send_dm`; its
proof-of-work stamp is solved by the driver, `simulations.endpoint`, like a
mention notice's, at the core's real `mention_work`); a sender that is down
writes it into its store (`p2pblog.dms.queue_dm`, as the offline CLI does),
and it goes out when the node restarts.  A message whose sender or recipient
is down for good when it is due is skipped and counted.

What the nodes report (`on_event`):

* ``DmArrived`` (a DM on a connection, before the core decides on it): the
  peer that transmitted it, remembered per node until the ``DmStored`` that
  follows it in the same flush, so a stored message is known to have come
  *directly* from its sender or *via a holder*; a message's bytes on the wire
  (to its recipient or a holder) must not contain its text;
* ``DmStored`` at the recipient: delivered, with its latency from the send;
* ``DmStateChanged`` at the sender: its last state (delivered, held by N,
  undelivered, refused).

Oracles (violations go to the `Simulation`, named ``dm ...``):

* *dm duplicate*: a message stored twice by its recipient (never, even across
  restarts: the store remembers ids);
* *dm privacy*: a ``DmStored`` at a node other than the addressed one, or
  from another sender than the one that sent it; and at the end, every
  node's store: a message's text only at its sender (folder ``sent``) and its
  recipient, and a holder's held rows addressed to someone else and holding
  sealed bytes that do not contain the text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from identity.sealed import dm_id
from p2pblog.dms import queue_dm
from p2pblog.events import DmStateChanged, DmStored
from p2pblog.replication import DmArrived

if TYPE_CHECKING:
    from simulations.simulation import Simulation

#: Latency percentiles reported.
PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Sent:
    """One message the workload sent."""

    sender: int
    recipient: int
    at: float
    text: str
    stranger: bool
    #: Whether the sender and the recipient were up when it was sent.
    sender_up: bool
    recipient_up: bool


@dataclass(slots=True)
class Stored:
    at: float
    #: Whether the transmitting peer was the sender (False: a holder delivered it).
    direct: bool
    folder: str


class DmTraffic:
    """Sends the scenario's direct messages and watches them arrive (module docstring)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.sent: dict[bytes, Sent] = {}
        self.order: list[bytes] = []
        self.stored: dict[bytes, Stored] = {}
        #: The sender's last reported state of each message.
        self.states: dict[bytes, str] = {}
        self.skipped = 0
        #: Node index -> (id, transmitting peer) of the last DM that arrived at it.
        self._arrived: dict[int, tuple[bytes, bytes]] = {}
        self._number = 0
        #: The seal's randomness of messages written while their sender is down.
        self._seeds = sim.engine.rng("dm-seeds")

    # -- sending ----------------------------------------------------------------------

    def schedule(self) -> None:
        """Draw every message's time, sender and recipient (they depend on the seed alone)."""
        sim = self.sim
        d = sim.scenario.dms
        if d.per_hour <= 0:
            return
        rng = sim.engine.rng("dms")
        people = [i for i in sim.honest if i not in sim.offline_authors]
        until = sim.scenario.dm_until
        for sender in people:
            known = set(sim.follows[sender]) | set(sim.followers[sender])
            friends = [i for i in people if i in known and i != sender]
            strangers = [i for i in people if i not in known and i != sender]
            t = d.start
            while True:
                t += rng.expovariate(d.per_hour / 3600.0)
                if t >= until:
                    break
                stranger = not friends or (bool(strangers) and rng.random() < d.strangers)
                pool = strangers if stranger else friends
                if not pool:
                    continue
                sim.engine.at(t, partial(self._due, sender, rng.choice(pool), stranger))

    def _due(self, sender: int, recipient: int, stranger: bool) -> None:
        self.send(sender, recipient, stranger=stranger)

    def send(self, sender: int, recipient: int, *, stranger: bool = False) -> bytes | None:
        """Node ``sender`` writes a message to node ``recipient`` now; returns its id
        (None: skipped, one of them is down for good)."""
        sim = self.sim
        gone = sim.down_for_good | {
            i for i in sim.offline_authors if sim.engine.now >= sim.scenario.workload.offline_at
        }
        if sender in gone or recipient in gone:
            self.skipped += 1
            return None
        node, to = sim.nodes[sender], sim.nodes[recipient]
        self._number += 1
        text = f"dm {self._number} from node {sender} to node {recipient} at {sim.engine.now:.3f}"
        key = to.identity.public_key
        info = Sent(sender, recipient, sim.engine.now, text, stranger, node.up, to.up)
        if node.core is not None:
            did = node.core.send_dm(key, text, node.now)
            self.sent[did] = info  # before the flush, which may deliver it at once
            self.order.append(did)
            node.flush()
        else:  # offline: it goes out when the node restarts
            did = queue_dm(
                node.store, node.identity, key, text, int(node.now * 1000), self._seeds.randbytes(32)
            )
            self.sent[did] = info
            self.order.append(did)
        return did

    # -- watching ---------------------------------------------------------------------

    def on_event(self, node: Any, event: object) -> None:
        if isinstance(event, DmArrived):
            did = dm_id(event.sealed)
            self._arrived[node.index] = (did, event.peer)
            info = self.sent.get(did)
            if info is not None and info.text.encode() in event.sealed:
                self.sim._violate("dm privacy", f"node {node.index} received a message's text in the clear")
        elif isinstance(event, DmStored):
            self._dm_stored(node, event)
        elif isinstance(event, DmStateChanged) and event.dm_id in self.sent:
            self.states[event.dm_id] = event.state

    def _dm_stored(self, node: Any, event: DmStored) -> None:
        sim = self.sim
        info = self.sent.get(event.dm_id)
        if info is None:
            sim._violate("dm privacy", f"node {node.index} stored a message nobody sent")
            return
        sender = sim.nodes[info.sender].identity.public_key
        if node.index != info.recipient or event.sender != sender:
            sim._violate(
                "dm privacy",
                f"node {node.index} stored dm {self.order.index(event.dm_id) + 1} of node "
                f"{info.sender} to node {info.recipient}",
            )
            return
        if event.dm_id in self.stored:
            sim._violate(
                "dm duplicate", f"node {node.index} stored dm {self.order.index(event.dm_id) + 1} twice"
            )
            return
        did, peer = self._arrived.pop(node.index, (b"", b""))
        direct = did != event.dm_id or peer == sender
        self.stored[event.dm_id] = Stored(sim.engine.now, direct, event.folder)

    def final_oracles(self) -> None:
        """The privacy oracle over every node's store (see the module docstring)."""
        sim = self.sim
        for node in sim.nodes:
            store, me = node.store, node.index
            for did, _recipient, _depositor, sealed, _stamp, _expires in store.dm_held():
                info = self.sent.get(did)
                if info is None or info.recipient == me or info.text.encode() in sealed:
                    sim._violate("dm privacy", f"node {me} holds a message it should not, or its text")
                    return
            for row, _, _ in store.dm_conversations():
                for dm in store.dm_thread(row.peer):
                    info = self.sent.get(dm.id)
                    owner = None if info is None else (info.sender if dm.folder == "sent" else info.recipient)
                    if owner != me or (info is not None and dm.text != info.text):
                        sim._violate("dm privacy", f"node {me} stores the text of another pair's message")
                        return

    # -- metrics ----------------------------------------------------------------------

    def metrics(self, stats: Counter[str]) -> dict[str, Any]:
        from simulations.simulation import _r, percentile

        deadline = self.sim.scenario.dms.deadline
        sent = len(self.order)
        latencies = [self.stored[d].at - self.sent[d].at for d in self.order if d in self.stored]
        in_time = sum(1 for x in latencies if x <= deadline)
        offline = [d for d in self.order if not self.sent[d].recipient_up]
        via_holder = {d for d, s in self.stored.items() if not s.direct}
        final = Counter(_state_kind(self.states.get(d, "queued")) for d in self.order)

        def ratio(part: int, whole: int) -> float:
            return _r(part / whole) if whole else 1.0

        return {
            "sent": sent,
            "sent_while_sender_offline": sum(1 for d in self.order if not self.sent[d].sender_up),
            "to_strangers": sum(1 for d in self.order if self.sent[d].stranger),
            "skipped_gone_for_good": self.skipped,
            "delivered": len(self.stored),
            "ratio": ratio(len(self.stored), sent),
            "within_deadline": {
                "deadline_s": _r(deadline),
                "delivered": in_time,
                "ratio": ratio(in_time, sent),
            },
            "latency_s": {
                **{f"p{q}": _r(percentile(latencies, q)) for q in PERCENTILES},
                "max": _r(max(latencies, default=0.0)),
                "mean": _r(sum(latencies) / len(latencies)) if latencies else 0.0,
            },
            "recipient_offline_at_send": {
                "sent": len(offline),
                "delivered": sum(1 for d in offline if d in self.stored),
                "delivered_via_holder": sum(1 for d in offline if d in via_holder),
            },
            "delivered_via_holder": len(via_holder),
            "folders": dict(sorted(Counter(s.folder for s in self.stored.values()).items())),
            "sender_states": dict(sorted(final.items())),
            "counters": {k: stats[k] for k in sorted(stats) if k.startswith("dms.")},
        }


def _state_kind(state: str) -> str:
    """A sender's state without its details: ``held by 2`` is ``held``, ``refused: x`` ``refused``."""
    return state.split(":")[0].split(" by ")[0]
