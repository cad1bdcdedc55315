"""Reachability: whether other nodes can dial this one, learned by asking them (sans IO).

Theory of operation
-------------------
A node on a laptop or at home usually sits behind a NAT router: it can
dial out, but nobody can dial the address it listens on.  Guessing from the
local address is wrong both ways (a public address may be firewalled; a
private one may be port-mapped), so the node asks, as libp2p's AutoNAT does:

* **A round** (`Reachability.maintain`, at the node's maintenance passes):
  when a check is due, up to `ASK` connected peers from distinct address
  prefixes (and not our own) are asked to dial us back
  (`Replicator.request_dial_back`, the gossip DIAL_ME message) on the port
  we advertise, at the address our connection to them comes from.  Each
  opens a new connection and completes a Noise handshake with our key, or
  fails, and answers with the result and the address it sees us at
  (DIAL_RESULT; the *observed address*).
* **The verdict** (`_conclude`): one success makes the node *reachable*
  (at that observed address), but only a success whose probe we saw arrive
  (`probed`): a peer cannot say OK without dialling us.  Failures with no
  success make it *unreachable* when they come from at least `MIN_FAILURES`
  distinct networks (/24, /48), or, when fewer networks could be asked, in
  two rounds `CONFIRM_AFTER` apart: one peer's word, said once, does not
  take a node's addresses off the network.  Refusals and silence decide
  nothing and the round is tried again after `RETRY`.  A round ends when all
  asked peers answered (and every OK's probe arrived) or after
  `ROUND_TIMEOUT`.
* **Re-checks**: every `RECHECK_REACHABLE` seconds when reachable (a router
  may drop a mapping), every `RECHECK_UNREACHABLE` when not (a mapping may
  appear), and at once when the advertised address changes (`set_address`).

A change of verdict is a `ReachabilityChanged` event; the node then switches
*client mode* on or off (`p2pblog.node`).  Observed addresses are counted:
the most reported one is where peers see us (behind a NAT: the router's
public address, and a port the router chose).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gossip.messages import DialStatus
from identity.netaddr import host_key
from p2pblog.replication import DialBackResult, Replicator
from p2pblog.scoring import address_prefix

#: Peers asked per round, failures that make a node unreachable, and seconds a round lasts.
ASK: Final = 3
MIN_FAILURES: Final = 2
ROUND_TIMEOUT: Final = 30.0
#: Seconds between checks: once known reachable, once known unreachable, after an
#: undecided round, and before the first (sessions open within the first passes).
RECHECK_REACHABLE: Final = 1800.0
RECHECK_UNREACHABLE: Final = 300.0
RETRY: Final = 60.0
FIRST_CHECK: Final = 5.0
CONFIRM_AFTER: Final = 5.0
#: Observed addresses remembered.
MAX_OBSERVED: Final = 16

UNKNOWN: Final = "unknown"
REACHABLE: Final = "reachable"
UNREACHABLE: Final = "unreachable"


@dataclass(frozen=True, slots=True)
class ReachabilityChanged:
    """The node found out whether others can dial it (``state``: reachable or
    unreachable), with the reason in words and the address peers see it at."""

    state: str
    reason: str
    observed: tuple[str, int] | None


class Reachability:
    def __init__(self, replicator: Replicator, now: float, *, enabled: bool = True) -> None:
        self.replicator = replicator
        self.enabled = enabled
        self.state = UNKNOWN
        self.reason = "not checked yet"
        #: The address we advertise for gossip (what peers are asked to dial).
        self.host: str | None = None
        self.port: int | None = None
        #: Where peers see our connections coming from: (ip, port) -> reports.
        self.observed: Counter[tuple[str, int]] = Counter()
        self.checked_at: float | None = None
        self.events: list[ReachabilityChanged] = []
        self.stats: Counter[str] = Counter()
        self._due = now + FIRST_CHECK
        self._round: dict[bytes, int | None] = {}
        self._round_nets: dict[bytes, bytes] = {}
        self._round_started = 0.0
        self._round_ends = 0.0
        #: Peers whose probe (their dial-back of us) arrived, and when.
        self._probed: dict[bytes, float] = {}
        #: A round found us unreachable on one network's word: the next one confirms.
        self._suspect = False

    def set_address(self, host: str, port: int, now: float) -> None:
        """The advertised gossip address; a new one is checked at the next pass."""
        if (host, port) != (self.host, self.port):
            self.host, self.port = host, port
            self._due = min(self._due, now)
            self._round.clear()

    def first_check_at(self) -> float | None:
        """When the first check is due (None once one ran, or when off): a node that just
        got its first session wakes for it instead of waiting for its next pass."""
        if not self.enabled or self.port is None or self._round or self.state != UNKNOWN:
            return None
        return self._due

    def wake_at(self) -> float | None:
        """When to run `maintain` sooner than the node's next pass: the first check, the
        one that confirms an unreachable verdict, or the end of a round in progress."""
        if not self.enabled or self.port is None:
            return None
        if self._round:
            return self._round_ends
        if self.state == UNKNOWN or self._suspect:
            return self._due
        return None

    @property
    def observed_address(self) -> tuple[str, int] | None:
        return self.observed.most_common(1)[0][0] if self.observed else None

    def maintain(self, now: float) -> None:
        if not self.enabled or self.port is None:
            return
        if self._round:
            if now >= self._round_ends:
                self._conclude(now)
            return
        if now < self._due:
            return
        # Peers from distinct networks first (one network's view could be its own
        # firewall's), then any others, longest-connected first.
        sessions = sorted(self.replicator.sessions(), key=lambda s: s[4])
        chosen: dict[bytes, bytes] = {}
        for peer, _session, _outbound, addr, _since in sessions:
            net = address_prefix(host_key(addr[0]))
            if net not in chosen.values() and len(chosen) < ASK:
                chosen[peer] = net
        for peer, _session, _outbound, addr, _since in sessions:
            if len(chosen) < ASK and peer not in chosen:
                chosen[peer] = address_prefix(host_key(addr[0]))
        asked = [peer for peer in chosen if self.replicator.request_dial_back(peer, self.port, now)]
        if not asked:
            self._due = now + FIRST_CHECK  # no session yet: look again soon
            return
        self.stats["rounds"] += 1
        self._round = dict.fromkeys(asked)
        self._round_nets = {peer: chosen[peer] for peer in asked}
        self._round_started = now
        self._round_ends = now + ROUND_TIMEOUT

    def probed(self, peer: bytes, now: float) -> None:
        """peer's dial-back of us arrived (its OK is true)."""
        self._probed[peer] = now
        while len(self._probed) > 4 * ASK:
            del self._probed[next(iter(self._probed))]
        if self._round and self._ready():
            self._conclude(now)

    def _verified_ok(self, peer: bytes) -> bool:
        return self._round.get(peer) == DialStatus.OK and self._probed.get(peer, -1.0) >= self._round_started

    def _ready(self) -> bool:
        return all(
            status is not None and (status != DialStatus.OK or self._verified_ok(peer))
            for peer, status in self._round.items()
        )

    def result(self, event: DialBackResult, now: float) -> None:
        if event.peer not in self._round or self._round[event.peer] is not None:
            self.stats["results.unexpected"] += 1
            return
        self._round[event.peer] = event.status
        if event.observed[0]:
            self.observed[event.observed] += 1
            while len(self.observed) > MAX_OBSERVED:
                del self.observed[min(self.observed, key=lambda a: self.observed[a])]
        if self._ready():
            self._conclude(now)

    def _conclude(self, now: float) -> None:
        results = list(self._round.values())
        ok = sum(1 for peer in self._round if self._verified_ok(peer))
        if results.count(DialStatus.OK) > ok:
            self.stats["results.ok_unverified"] += results.count(DialStatus.OK) - ok
        failed_nets = {
            self._round_nets[p] for p, status in self._round.items() if status == DialStatus.FAILED
        }
        failed = results.count(DialStatus.FAILED)
        asked = len(results)
        self._round.clear()
        where = f"{self.host}:{self.port}"
        seen = self.observed_address
        if ok:
            state = REACHABLE
            at = f"{seen[0]}:{self.port}" if seen else where
            reason = f"reachable at {at}: {ok} of {asked} peers asked dialled it back"
            self._due = now + RECHECK_REACHABLE
        elif failed and len(failed_nets) < MIN_FAILURES and not self._suspect:
            # One network said so: ask again soon before taking our addresses off the network.
            self._suspect = True
            self.stats["rounds.to_confirm"] += 1
            self._due = now + CONFIRM_AFTER
            return
        elif failed:
            state = UNREACHABLE
            behind = f"; peers see this node at {seen[0]}:{seen[1]}" if seen else ""
            reason = (
                f"not reachable from outside (behind NAT or a firewall): {failed} of {asked} "
                f"peers asked could not dial {where}{behind}"
            )
            self._due = now + RECHECK_UNREACHABLE
        else:
            self.stats["rounds.undecided"] += 1
            self._due = now + RETRY
            return
        self.checked_at = now
        self._suspect = False
        changed = state != self.state
        self.state, self.reason = state, reason
        if changed:
            self.stats[f"became.{state}"] += 1
            self.events.append(ReachabilityChanged(state, reason, seen))

    def doc(self) -> dict[str, object]:
        """What `status` shows."""
        seen = self.observed_address
        return {
            "state": self.state if self.enabled else "not checked (off)",
            "reason": self.reason,
            "checked": self.checked_at,
            "observed": list(seen) if seen else None,
            "checking": bool(self._round),
        }


def tcp_address(addrs: Sequence[tuple[str, str, int]]) -> tuple[str, int] | None:
    for proto, host, port in addrs:
        if proto == "tcp":
            return host, port
    return None
