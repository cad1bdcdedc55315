"""Relays for a node nobody can dial: which peers relay for us (sans IO).

Theory of operation
-------------------
A node in client mode (`p2pblog.reachability`) can dial out but cannot be
dialled, so a follower that does not already hold a session with it could
never reach it, and two such nodes could never meet.  Circuit relaying (the
gossip messages RESERVE ... RELAY, `gossip.messages`; the forwarding is the
replicator's, `p2pblog.replication`) fixes both: a reachable peer that
*reserves* for us forwards circuits to us over the session we opened to it,
and our records name it (``["relay", host, port]``) instead of our own
address.  A dialler opens a circuit through it and runs its Noise handshake
with us end to end, so the relay sees only ciphertext.

`RelayClient` keeps up to `RELAYS` reservations while the node is in client
mode: it asks peers we dialled (so reachable where we reached them) that
hold no reservation for us, renews each reservation at half its lifetime,
drops one whose session ended, and asks a peer that refused again only after
`ASK_AGAIN`.  `addrs` is what our records advertise; `maintain` and
`answered` say when it changed, and the node re-signs its records.

Serving as a relay is bounded by the replicator (`MAX_RESERVATIONS`,
`MAX_CIRCUITS`, per-target and per-source circuit caps, `CIRCUIT_BYTES` per
circuit, the per-session RELAY queue); a node relays unless told not to
(``p2pblog run --no-relay``) and never while it is in client mode itself.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from p2pblog.replication import RelayReserved, Replicator

#: Reservations a client keeps, and seconds before a refusing peer is asked again.
RELAYS: Final = 2
ASK_AGAIN: Final = 300.0


class RelayClient:
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator
        #: Relay key -> (its address, when the reservation ends, its length in seconds).
        self.held: dict[bytes, tuple[tuple[str, int], float, int]] = {}
        #: Peers asked (or refused) lately -> when they may be asked again.
        self._asked: dict[bytes, float] = {}
        self.stats: Counter[str] = Counter()

    @property
    def addrs(self) -> list[tuple[str, int]]:
        return sorted(addr for addr, _, _ in self.held.values())

    def maintain(self, client: bool, now: float) -> bool:
        """Keep the reservations (client mode) or drop them; True if `addrs` changed."""
        before = self.addrs
        if not client:
            self.held.clear()
            self._asked.clear()
            return before != self.addrs
        replicator = self.replicator
        for key, (_, until, _) in list(self.held.items()):
            if until <= now or not replicator.is_connected(key):
                del self.held[key]
                self.stats["lost"] += 1
        for key, (_, until, seconds) in self.held.items():
            due = until - seconds / 2 <= now and self._asked.get(key, 0.0) <= now
            if due and replicator.request_reservation(key, now):
                self._asked[key] = now + ASK_AGAIN / 10
                self.stats["renewals"] += 1
        for key in [k for k, t in self._asked.items() if t <= now]:
            del self._asked[key]
        if len(self.held) < RELAYS:
            sessions = sorted(replicator.sessions(), key=lambda s: s[4])
            for peer, _session, outbound, _addr, _since in sessions:
                if len(self.held) + len([k for k in self._asked if k not in self.held]) >= RELAYS:
                    break
                if not outbound or peer in self.held or peer in self._asked:
                    continue
                if replicator.request_reservation(peer, now):
                    self._asked[peer] = now + ASK_AGAIN
                    self.stats["asked"] += 1
        return before != self.addrs

    def answered(self, event: RelayReserved, now: float) -> bool:
        before = self.addrs
        if event.seconds > 0:
            self.held[event.relay] = (event.addr, now + event.seconds, event.seconds)
            self._asked.pop(event.relay, None)
            self.stats["granted"] += 1
        else:
            self.held.pop(event.relay, None)
            self._asked[event.relay] = now + ASK_AGAIN
            self.stats["refused"] += 1
        return before != self.addrs
