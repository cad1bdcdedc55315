"""Scenarios: what to simulate, read from TOML (documented field by field in docs/simulations.md).

A scenario is plain data: `Scenario.from_toml` checks every field and raises
`ScenarioError` with the field's name for anything unknown, mistyped or out
of range, so a typo in a scenario file is an error, never a silent default.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from simulations.network import Latency, LinkModel

BUNDLED = Path(__file__).parent / "scenarios"
#: Upper bound on posts and lookups per node per simulated hour (one a second).
MAX_RATE_PER_HOUR = 3600.0
#: Longest run (about 115 simulated days) and widest lognormal spread accepted.
MAX_DURATION = 1e7
MAX_SIGMA = 5.0
#: Shortest mean churn session or downtime, seconds (shorter floods the engine).
MIN_CHURN_MEAN = 1.0
#: Default posting stops this long before the convergence deadline would pass the end.
DEFAULT_POST_MARGIN = 30.0
_MALICIOUS_FRACTIONS = ("dht_bogus", "dht_forged", "gossip_withhold", "gossip_forge")
#: Most attacker machines one attack may bring (censors per victim times victims, hosts of a /24).
MAX_ATTACKERS = 1000
#: Hosts in one /24 an exhaustion attack may dial from (.1 .. .254).
MAX_SUBNET_HOSTS = 254
#: Most requests or dials an attack may send per simulated second (more floods the engine).
MAX_ATTACK_RATE = 1000.0
#: Most extra machines (devices) one identity may get (devices.MAX_DEVICES counts the roots too).
MAX_DEVICES_PER_IDENTITY = 8
#: Most /24s the Sybils of a scenario may come from (``10.254.0`` .. ``10.254.255``).
MAX_SYBIL_NETWORKS = 256
#: An `Expect` bound that is not checked.
UNCHECKED = -1
#: ``dht = "auto"`` runs the DHT model (`simulations.dhtmodel`) from this many nodes up.
MODEL_FROM_NODES = 500
#: The values of the top-level ``dht`` key (issue 17's fidelity switch).
DHT_FIDELITIES = ("auto", "full", "model")
#: Attacks aimed at the DHT: a scenario with one runs the full DHT only.
DHT_ATTACKS = ("flood", "poison", "censor")


class ScenarioError(ValueError):
    """A scenario file or value is invalid; the message names the field."""


@dataclass(frozen=True)
class Workload:
    #: "random" (each node follows `follows` others uniformly) or "power-law"
    #: (preferential attachment: popular authors gather more followers).
    follow_graph: str = "random"
    follows: int = 5
    #: Fraction of nodes that post, and each one's posts per simulated hour (Poisson).
    authors: float = 1.0
    posts_per_hour: float = 12.0
    #: Posting happens in [post_from, post_until) seconds (post_until 0: early enough
    #: that the convergence deadline falls inside the run, see `Scenario.post_until`).
    post_from: float = 60.0
    post_until: float = 0.0
    #: Nodes start spread over this many seconds.
    join_over: float = 20.0
    #: Fraction of authors whose node goes offline for good at `offline_at`
    #: (their followers keep serving their feed to each other).
    offline_authors: float = 0.0
    offline_at: float = 0.0
    #: Peer-record lookups per node per simulated hour (DHT metrics).
    lookups_per_hour: float = 6.0


@dataclass(frozen=True)
class Fault:
    #: crash | partition | churn | loss
    kind: str
    #: Seconds from the start at which the fault begins.
    at: float = 0.0
    #: crash/churn: fraction of the (honest) nodes affected.
    fraction: float = 0.3
    #: crash: seconds until the crashed nodes restart (0: never).
    restart_after: float = 0.0
    #: partition: "halves" (two random halves) or "bridge" (two halves joined only through one node).
    shape: str = "halves"
    #: partition/loss/churn: seconds until it ends.
    duration: float = 60.0
    #: loss: extra packet loss during the window.
    rate: float = 0.1
    #: churn: mean online session and mean downtime, seconds (exponential).
    session_mean: float = 60.0
    downtime_mean: float = 20.0

    KINDS = ("crash", "partition", "churn", "loss")

    @property
    def end(self) -> float:
        """When the fault's effect stops (restarts included)."""
        if self.kind == "crash":
            return self.at + self.restart_after if self.restart_after else self.at
        return self.at + self.duration


@dataclass(frozen=True)
class Malicious:
    #: Fractions of nodes that misbehave in the DHT: answer lookups with bogus
    #: closer peers, or with forged (badly signed) / stale records.
    dht_bogus: float = 0.0
    dht_forged: float = 0.0
    #: Fractions of nodes that misbehave in gossip: claim feeds and never serve
    #: them, or serve entries with forged signatures.
    gossip_withhold: float = 0.0
    gossip_forge: float = 0.0
    #: Authors that sign two different entries with one seq, at `equivocate_at`.
    equivocators: int = 0
    equivocate_at: float = 120.0


@dataclass(frozen=True)
class Attack:
    """One attacker machine (or a group of them) outside the honest nodes (`simulations.adversary`)."""

    #: flood | poison | exhaust | censor
    kind: str
    #: Seconds from the start at which it begins, and how long it goes on (0: to the end).
    at: float = 30.0
    duration: float = 0.0
    #: flood/poison: requests per second; exhaust: dials per second (all targets together).
    rate: float = 20.0
    #: flood/poison/exhaust: fraction of the honest nodes it aims at (at least one).
    targets: float = 1.0
    #: flood: signing keys it generates; exhaust ("idle"): identities its handshakes use.
    keys: int = 4
    #: poison: source ports it rotates through on its one host.
    ports: int = 1000
    #: exhaust: hosts it dials from (1: one host; 2 .. 254: that many in one /24).
    hosts: int = 1
    #: exhaust: connections it keeps open to each target.
    connections: int = 80
    #: exhaust: "silent" (never sends a handshake byte) or "idle" (completes the
    #: Noise handshake, then sends nothing).
    mode: str = "silent"
    #: censor: honest authors whose peer-record key it surrounds, and its nodes per victim.
    victims: int = 1
    nodes: int = 20
    #: censor: leading bits each censor's id shares with its victim's key.
    prefix_bits: int = 24
    #: censor: what a FIND_VALUE for a victim's key gets: not_found, closer, garbage,
    #: forged, stale, or mixed (a random one of those per answer).
    answer: str = "mixed"

    KINDS = ("flood", "poison", "exhaust", "censor")
    MODES = ("silent", "idle")
    ANSWERS = ("not_found", "closer", "garbage", "forged", "stale", "mixed")

    def end(self, duration: float) -> float:
        """When it stops, in a run of ``duration`` seconds."""
        return min(duration, self.at + self.duration) if self.duration else duration


@dataclass(frozen=True)
class Expect:
    """Oracle thresholds of a hostile scenario (ratios: 0 is not checked; bounds: -1 is not
    checked).  See docs/simulations.md."""

    #: Lowest honest delivery ratio (posts of honest authors to their honest followers).
    delivery_ratio: float = 0.0
    #: Lowest success ratio of honest peer-record lookups, and of those of censored victims.
    lookup_success: float = 0.0
    victim_lookup_success: float = 0.0
    #: Most connections one honest node may hold from the attackers' hosts at once.
    attacker_connections: int = UNCHECKED
    #: Most flooded keys (records and provider keys) one honest node may hold.
    attacker_records: int = UNCHECKED
    #: Most routing-table contacts one honest node may hold at hosts that never answer.
    unanswered_contacts: int = UNCHECKED
    #: Reliability goals (`simulations.reliability`; 0: not checked).  Lowest share of the
    #: live followers (up at the post and through the window) that get a post within 30 s
    #: and within 120 s, pooled over the posts.
    live_within_30s: float = 0.0
    live_within_120s: float = 0.0
    #: Lowest delivery ratio of the eclipsed victims' posts to their honest followers.
    victim_delivery: float = 0.0
    #: Lowest share of honest name lookups that return the claimant's own claim.
    name_lookup_success: float = 0.0
    #: Most seconds from the equivocation until every honest follower holds the fork proof.
    fork_proof_within: float = 0.0

    BOUNDS = ("attacker_connections", "attacker_records", "unanswered_contacts")
    RELIABILITY = ("live_within_30s", "live_within_120s", "victim_delivery", "name_lookup_success")


@dataclass(frozen=True)
class Dms:
    """The direct-message workload (`simulations.dms`); off while ``per_hour`` is 0."""

    #: Direct messages each honest node sends per simulated hour (Poisson).
    per_hour: float = 0.0
    #: Fraction of them sent to a stranger (neither a followee nor a follower of the sender).
    strangers: float = 0.0
    #: Sending happens in [start, until) seconds (until 0: when posting stops).
    start: float = 60.0
    until: float = 0.0
    #: The delivery ratio is also reported for deliveries within this many seconds.
    deadline: float = 60.0


@dataclass(frozen=True)
class Devices:
    """Identities with devices, revocations, rotations and thefts (`simulations.devices`);
    off while ``identities`` is 0."""

    #: Honest authors that get devices, and how many more machines each gets.
    identities: int = 0
    devices: int = 1
    #: When the devices pair (one second apart).
    pair_at: float = 60.0
    #: How many identities revoke their last device, rotate their root (planned), or have
    #: their root stolen and recover it (each event to a different identity), and when.
    revocations: int = 0
    revoke_at: float = 200.0
    rotations: int = 0
    rotate_at: float = 200.0
    thefts: int = 0
    steal_at: float = 150.0
    recover_at: float = 200.0
    #: Seconds between a follower's lookups of a followed identity's key-event record.
    keyevent_poll: float = 300.0


@dataclass(frozen=True)
class Sybil:
    """Sybil nodes among the scenario's nodes (`simulations.adversary.SybilCore`); off while
    ``fraction`` is 0."""

    #: Fraction of the nodes that are Sybils (node 0 stays honest).
    fraction: float = 0.0
    #: "cold": hostile from the start; "flash": honest until ``turn_at``, then all hostile
    #: at once; "eclipse": ids next to the victims' keys, censoring their records.
    mode: str = "cold"
    turn_at: float = 0.0
    #: The /24s the Sybils' addresses come from (0: one each, like the honest nodes).
    networks: int = 8
    #: eclipse: honest authors eclipsed, and the leading bits a Sybil's id shares with its key.
    victims: int = 1
    prefix_bits: int = 24

    MODES = ("cold", "flash", "eclipse")


@dataclass(frozen=True)
class Names:
    """Name claims and name lookups (`simulations.reliability`); off while ``claims`` is 0."""

    #: Honest authors that claim a name (one each, with the real proof of work), and when.
    claims: int = 0
    claim_at: float = 30.0
    #: Name lookups per honest node per simulated hour (of a random claimed name),
    #: from ``lookup_from`` seconds.
    lookups_per_hour: float = 6.0
    lookup_from: float = 90.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    nodes: int = 50
    duration: float = 600.0
    network: LinkModel = field(default_factory=LinkModel)
    workload: Workload = field(default_factory=Workload)
    faults: tuple[Fault, ...] = ()
    malicious: Malicious = field(default_factory=Malicious)
    #: Attackers from outside the honest nodes (`[[attacks]]`), and the oracle thresholds
    #: that go with them (`[expect]`).  Left out of metrics.json's scenario echo when unset.
    attacks: tuple[Attack, ...] = ()
    expect: Expect = field(default_factory=Expect)
    #: The direct-message workload (`[dms]`); left out of metrics.json's scenario echo when unset.
    dms: Dms = field(default_factory=Dms)
    #: Identities with devices (`[devices]`); left out of metrics.json's scenario echo when unset.
    devices: Devices = field(default_factory=Devices)
    #: Sybil nodes (`[sybil]`) and name claims and lookups (`[names]`); left out of
    #: metrics.json's scenario echo when unset.
    sybil: Sybil = field(default_factory=Sybil)
    names: Names = field(default_factory=Names)
    #: "gossip" (Plumtree: prune duplicate pushers) or "flood" (every node pushes
    #: everything to every connected peer that replicates the feed, no pruning).
    protocol: str = "gossip"
    #: Followers must hold every honest feed within this many seconds after the
    #: last fault ends (and posting stops); else the convergence oracle fires.
    converge_within: float = 120.0
    #: DHT fidelity: "full" (the real DHT over simulated datagrams), "model" (a calibrated
    #: model answering from a global view, `simulations.dhtmodel`), or "auto": full below
    #: `MODEL_FROM_NODES` nodes and for adversarial-DHT scenarios, the model from there up.
    dht: str = "auto"

    @property
    def adversarial_dht(self) -> bool:
        """Whether nodes lie in the DHT (malicious roles, Sybils) or attacks aim at it
        (the model cannot stand in then)."""
        m = self.malicious
        return (
            m.dht_bogus > 0
            or m.dht_forged > 0
            or self.sybil.fraction > 0
            or any(a.kind in DHT_ATTACKS for a in self.attacks)
        )

    @property
    def dht_fidelity(self) -> str:
        """ "full" or "model": what ``dht`` resolves to at this node count."""
        if self.dht != "auto":
            return self.dht
        return "full" if self.adversarial_dht or self.nodes < MODEL_FROM_NODES else "model"

    def with_overrides(
        self,
        *,
        seed: int | None = None,
        nodes: int | None = None,
        duration: float | None = None,
        dht: str | None = None,
    ) -> Scenario:
        out = self
        given = []
        if dht is not None:
            out = replace(out, dht=dht)
            given.append(f"--dht {dht}")
        if seed is not None:
            out = replace(out, seed=seed)
        if nodes is not None:
            out = replace(out, nodes=nodes)
            given.append(f"--nodes {nodes}")
        if duration is not None:
            out = replace(out, duration=duration)
            given.append(f"--duration {duration:g}")
        try:
            out.check()
        except ScenarioError as exc:
            if not given:
                raise
            raise ScenarioError(f"{exc} (with {' '.join(given)})") from None
        return out

    @property
    def post_until(self) -> float:
        """When posting stops: never after the end (a shortened run posts to its end)."""
        # The default leaves converge_within plus a margin after posting, so that
        # the convergence oracle runs inside the run (when the faults allow it);
        # a run too short for that posts until a minute before its end.
        post_from = self.workload.post_from
        default = self.duration - self.converge_within - DEFAULT_POST_MARGIN
        if default <= post_from:
            default = max(post_from, self.duration - 60.0)
        return min(self.workload.post_until or default, self.duration)

    @property
    def last_fault_end(self) -> float:
        return max((f.end for f in self.faults), default=0.0)

    @property
    def converge_by(self) -> float:
        """When every honest follower must have converged."""
        return max(self.last_fault_end, self.post_until) + self.converge_within

    def check(self) -> None:
        """Raise `ScenarioError` naming the first field that is out of range (and its value)."""
        _check_finite(self, "")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ScenarioError(f"name: a non-empty string, not {self.name!r}")
        if not 2 <= self.nodes <= 100_000:
            raise ScenarioError(f"nodes: 2 .. 100000, not {self.nodes}")
        if not 0 < self.duration <= MAX_DURATION:
            raise ScenarioError(f"duration: 0 .. {MAX_DURATION:g} seconds (not 0), not {self.duration:g}")
        latency = self.network.latency
        if latency.sigma > MAX_SIGMA:
            # exp(N(0, sigma)) overflows a float within a few thousand draws past this.
            raise ScenarioError(f"network.latency.sigma: 0 .. {MAX_SIGMA:g}, not {latency.sigma:g}")
        if self.protocol not in ("gossip", "flood"):
            raise ScenarioError(f"protocol: 'gossip' or 'flood', not {self.protocol!r}")
        if self.dht not in DHT_FIDELITIES:
            raise ScenarioError(f"dht: 'auto', 'full' or 'model', not {self.dht!r}")
        if self.dht == "model" and self.adversarial_dht:
            raise ScenarioError(
                "dht: 'model' cannot run an adversarial-DHT scenario (malicious dht_bogus/dht_forged "
                "nodes, Sybils, or a flood, poison or censor attack): the model has no wire to lie on; "
                "use 'full'"
            )
        if self.converge_within < 0:
            raise ScenarioError(f"converge_within: must be >= 0, not {self.converge_within:g}")
        self._check_workload()
        self._check_dms()
        self._check_devices()
        for i, fault in enumerate(self.faults):
            self._check_fault(fault, f"faults[{i}]")
        self._check_malicious()
        self._check_sybil()
        self._check_names()
        for i, attack in enumerate(self.attacks):
            self._check_attack(attack, f"attacks[{i}]")
        for name in ("delivery_ratio", "lookup_success", "victim_lookup_success", *Expect.RELIABILITY):
            _fraction(getattr(self.expect, name), f"expect.{name}")
        if self.expect.fork_proof_within < 0:
            raise ScenarioError(
                f"expect.fork_proof_within: must be >= 0 seconds (0: not checked), "
                f"not {self.expect.fork_proof_within:g}"
            )
        for name in Expect.BOUNDS:
            if getattr(self.expect, name) < UNCHECKED:
                value = getattr(self.expect, name)
                raise ScenarioError(f"expect.{name}: must be >= 0 ({UNCHECKED}: not checked), not {value}")

    def _check_attack(self, attack: Attack, where: str) -> None:
        if attack.kind not in Attack.KINDS:
            raise ScenarioError(f"{where}.kind: one of {', '.join(Attack.KINDS)}, not {attack.kind!r}")
        if not 0 <= attack.at < self.duration:
            raise ScenarioError(f"{where}.at: 0 .. below duration ({self.duration:g}), not {attack.at:g}")
        if attack.duration < 0:
            raise ScenarioError(
                f"{where}.duration: must be >= 0 seconds (0: to the end), not {attack.duration:g}"
            )
        if not 0 < attack.rate <= MAX_ATTACK_RATE:
            raise ScenarioError(
                f"{where}.rate: 0 .. {MAX_ATTACK_RATE:g} per second (not 0), not {attack.rate:g}"
            )
        _fraction(attack.targets, f"{where}.targets")
        if attack.mode not in Attack.MODES:
            raise ScenarioError(f"{where}.mode: one of {', '.join(Attack.MODES)}, not {attack.mode!r}")
        if attack.answer not in Attack.ANSWERS:
            raise ScenarioError(f"{where}.answer: one of {', '.join(Attack.ANSWERS)}, not {attack.answer!r}")
        for name, low, high in (
            ("keys", 1, MAX_ATTACKERS),
            ("ports", 1, 64511),
            ("hosts", 1, MAX_SUBNET_HOSTS),
            ("connections", 1, 10 * MAX_ATTACKERS),
            ("nodes", 1, MAX_ATTACKERS),
            ("prefix_bits", 0, 152),
        ):
            if not low <= getattr(attack, name) <= high:
                raise ScenarioError(f"{where}.{name}: {low} .. {high}, not {getattr(attack, name)}")
        if attack.kind == "censor":
            if not 1 <= attack.victims <= self.nodes - 1:
                raise ScenarioError(f"{where}.victims: 1 .. nodes-1 ({self.nodes - 1}), not {attack.victims}")
            if attack.victims * attack.nodes > MAX_ATTACKERS:
                raise ScenarioError(
                    f"{where}: victims * nodes is {attack.victims * attack.nodes}, at most {MAX_ATTACKERS}"
                )

    def _check_workload(self) -> None:
        w, duration = self.workload, self.duration
        if w.follow_graph not in ("random", "power-law"):
            raise ScenarioError(f"workload.follow_graph: 'random' or 'power-law', not {w.follow_graph!r}")
        if not 0 <= w.follows < self.nodes:
            raise ScenarioError(f"workload.follows: 0 .. nodes-1 ({self.nodes - 1}), not {w.follows}")
        for name in ("authors", "offline_authors"):
            _fraction(getattr(w, name), f"workload.{name}")
        for name in ("posts_per_hour", "lookups_per_hour"):
            value = getattr(w, name)
            if not 0 <= value <= MAX_RATE_PER_HOUR:
                raise ScenarioError(f"workload.{name}: 0 .. {MAX_RATE_PER_HOUR:g} per node, not {value:g}")
        for name in ("post_from", "post_until", "join_over", "offline_at"):
            if getattr(w, name) < 0:
                raise ScenarioError(f"workload.{name}: must be >= 0 seconds, not {getattr(w, name):g}")
        if w.join_over >= duration:
            raise ScenarioError(f"workload.join_over: below duration ({duration:g}), not {w.join_over:g}")
        if w.post_from >= duration:
            raise ScenarioError(f"workload.post_from: below duration ({duration:g}), not {w.post_from:g}")
        if w.post_until and w.post_until < w.post_from:
            raise ScenarioError(
                f"workload.post_until: >= post_from ({w.post_from:g}), or 0 for the default; "
                f"not {w.post_until:g}"
            )
        if w.offline_authors and w.offline_at >= duration:
            raise ScenarioError(
                f"workload.offline_at: must be below duration ({duration:g}), not {w.offline_at:g}"
            )

    @property
    def dm_until(self) -> float:
        """When direct messages stop: ``dms.until``, or when posting stops."""
        return min(self.dms.until or self.post_until, self.duration)

    def _check_dms(self) -> None:
        d = self.dms
        if not 0 <= d.per_hour <= MAX_RATE_PER_HOUR:
            raise ScenarioError(f"dms.per_hour: 0 .. {MAX_RATE_PER_HOUR:g} per node, not {d.per_hour:g}")
        _fraction(d.strangers, "dms.strangers")
        for name in ("start", "until"):
            if getattr(d, name) < 0:
                raise ScenarioError(f"dms.{name}: must be >= 0 seconds, not {getattr(d, name):g}")
        if d.per_hour and d.start >= self.duration:  # unused while off: any run length is fine
            raise ScenarioError(f"dms.start: below duration ({self.duration:g}), not {d.start:g}")
        if d.until and d.until < d.start:
            raise ScenarioError(f"dms.until: >= start ({d.start:g}), or 0 for the default; not {d.until:g}")
        if d.deadline <= 0:
            raise ScenarioError(f"dms.deadline: must be > 0 seconds, not {d.deadline:g}")

    def _check_devices(self) -> None:
        d = self.devices
        if not 0 <= d.identities < self.nodes:
            raise ScenarioError(f"devices.identities: 0 .. nodes-1 ({self.nodes - 1}), not {d.identities}")
        if not 1 <= d.devices <= MAX_DEVICES_PER_IDENTITY:
            raise ScenarioError(f"devices.devices: 1 .. {MAX_DEVICES_PER_IDENTITY}, not {d.devices}")
        for name in ("revocations", "rotations", "thefts"):
            if getattr(d, name) < 0:
                raise ScenarioError(f"devices.{name}: must be >= 0, not {getattr(d, name)}")
        events = d.revocations + d.rotations + d.thefts
        if events > d.identities:
            raise ScenarioError(
                f"devices: revocations + rotations + thefts is {events}, at most identities ({d.identities})"
            )
        used = {  # the times of what the scenario does (any run length is fine for the others)
            "pair_at": d.identities,
            "revoke_at": d.revocations,
            "rotate_at": d.rotations,
            "steal_at": d.thefts,
            "recover_at": d.thefts,
        }
        for name, count in used.items():
            if getattr(d, name) < 0 or (count and getattr(d, name) >= self.duration):
                raise ScenarioError(
                    f"devices.{name}: 0 .. below duration ({self.duration:g}), not {getattr(d, name):g}"
                )
        if d.revocations and d.revoke_at <= d.pair_at:
            raise ScenarioError(f"devices.revoke_at: after pair_at ({d.pair_at:g}), not {d.revoke_at:g}")
        if d.thefts and d.recover_at <= d.steal_at:
            raise ScenarioError(f"devices.recover_at: after steal_at ({d.steal_at:g}), not {d.recover_at:g}")
        if d.keyevent_poll < MIN_CHURN_MEAN:
            raise ScenarioError(
                f"devices.keyevent_poll: at least {MIN_CHURN_MEAN:g} s, not {d.keyevent_poll:g}"
            )

    def _check_fault(self, fault: Fault, where: str) -> None:
        if fault.kind not in Fault.KINDS:
            raise ScenarioError(f"{where}.kind: one of {', '.join(Fault.KINDS)}, not {fault.kind!r}")
        _fraction(fault.fraction, f"{where}.fraction")
        _fraction(fault.rate, f"{where}.rate")
        if fault.shape not in ("halves", "bridge"):
            raise ScenarioError(f"{where}.shape: 'halves' or 'bridge', not {fault.shape!r}")
        for name in ("at", "duration", "restart_after"):
            if getattr(fault, name) < 0:
                raise ScenarioError(f"{where}.{name}: must be >= 0 seconds, not {getattr(fault, name):g}")
        if fault.at >= self.duration:
            raise ScenarioError(
                f"{where}.at: must be below the scenario's duration ({self.duration:g}), not {fault.at:g}"
            )
        for name in ("session_mean", "downtime_mean"):
            if getattr(fault, name) < MIN_CHURN_MEAN:
                raise ScenarioError(
                    f"{where}.{name}: at least {MIN_CHURN_MEAN:g} s, not {getattr(fault, name):g}"
                )

    def _check_malicious(self) -> None:
        m, nodes = self.malicious, self.nodes
        for name in _MALICIOUS_FRACTIONS:
            _fraction(getattr(m, name), f"malicious.{name}")
        if not 0 <= m.equivocators <= nodes - 1:
            raise ScenarioError(
                f"malicious.equivocators: 0 .. nodes-1 ({nodes - 1}; node 0 stays honest), "
                f"not {m.equivocators}"
            )
        wanted = m.equivocators + sum(round(getattr(m, name) * nodes) for name in _MALICIOUS_FRACTIONS)
        if wanted > nodes - 1:
            raise ScenarioError(
                f"malicious: the fractions and equivocators ask for {wanted} nodes, "
                f"at most nodes-1 ({nodes - 1}; node 0 stays honest)"
            )
        if m.equivocate_at < 0 or (m.equivocators and m.equivocate_at >= self.duration):
            raise ScenarioError(
                f"malicious.equivocate_at: 0 .. below duration ({self.duration:g}), not {m.equivocate_at:g}"
            )

    @property
    def sybils(self) -> int:
        """How many of the nodes are Sybils."""
        return round(self.sybil.fraction * self.nodes)

    def _check_sybil(self) -> None:
        s = self.sybil
        _fraction(s.fraction, "sybil.fraction")
        if s.mode not in Sybil.MODES:
            raise ScenarioError(f"sybil.mode: one of {', '.join(Sybil.MODES)}, not {s.mode!r}")
        if not s.fraction:
            return
        roles = self.malicious.equivocators + sum(
            round(getattr(self.malicious, name) * self.nodes) for name in _MALICIOUS_FRACTIONS
        )
        if self.sybils + roles > self.nodes - 1:
            raise ScenarioError(
                f"sybil.fraction: {self.sybils} Sybils and {roles} other malicious nodes, "
                f"at most nodes-1 ({self.nodes - 1}; node 0 stays honest)"
            )
        if not 0 <= s.turn_at < self.duration:
            raise ScenarioError(f"sybil.turn_at: 0 .. below duration ({self.duration:g}), not {s.turn_at:g}")
        if not 0 <= s.networks <= MAX_SYBIL_NETWORKS:
            raise ScenarioError(f"sybil.networks: 0 .. {MAX_SYBIL_NETWORKS}, not {s.networks}")
        if s.networks and self.sybils > s.networks * MAX_SUBNET_HOSTS:
            raise ScenarioError(
                f"sybil.networks: {self.sybils} Sybils need at least "
                f"{math.ceil(self.sybils / MAX_SUBNET_HOSTS)} /24s of {MAX_SUBNET_HOSTS} hosts, "
                f"not {s.networks}"
            )
        if not 1 <= s.victims <= self.nodes - 1:
            raise ScenarioError(f"sybil.victims: 1 .. nodes-1 ({self.nodes - 1}), not {s.victims}")
        if not 0 <= s.prefix_bits <= 152:
            raise ScenarioError(f"sybil.prefix_bits: 0 .. 152, not {s.prefix_bits}")

    def _check_names(self) -> None:
        n = self.names
        if not 0 <= n.claims < self.nodes:
            raise ScenarioError(f"names.claims: 0 .. nodes-1 ({self.nodes - 1}), not {n.claims}")
        if not 0 <= n.lookups_per_hour <= MAX_RATE_PER_HOUR:
            raise ScenarioError(
                f"names.lookups_per_hour: 0 .. {MAX_RATE_PER_HOUR:g} per node, not {n.lookups_per_hour:g}"
            )
        for name in ("claim_at", "lookup_from"):
            value = getattr(n, name)
            if value < 0 or (n.claims and value >= self.duration):
                raise ScenarioError(f"names.{name}: 0 .. below duration ({self.duration:g}), not {value:g}")

    # -- TOML ------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, *, default_name: str = "scenario") -> Scenario:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"not valid TOML: {exc}") from None
        return cls.from_dict(doc, default_name=default_name)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, default_name: str = "scenario") -> Scenario:
        doc = dict(doc)
        network = _section(doc.pop("network", {}), "network")
        latency = _build(Latency, _section(network.pop("latency", {}), "network.latency"), "network.latency")
        link = _build(LinkModel, {**network, "latency": latency}, "network")
        workload = _build(Workload, _section(doc.pop("workload", {}), "workload"), "workload")
        malicious = _build(Malicious, _section(doc.pop("malicious", {}), "malicious"), "malicious")
        expect = _build(Expect, _section(doc.pop("expect", {}), "expect"), "expect")
        dms = _build(Dms, _section(doc.pop("dms", {}), "dms"), "dms")
        devices = _build(Devices, _section(doc.pop("devices", {}), "devices"), "devices")
        sybil = _build(Sybil, _section(doc.pop("sybil", {}), "sybil"), "sybil")
        names = _build(Names, _section(doc.pop("names", {}), "names"), "names")
        raw_attacks = doc.pop("attacks", [])
        if not isinstance(raw_attacks, list):
            raise ScenarioError("attacks: an array of tables ([[attacks]])")
        attacks = tuple(
            _build(Attack, _section(a, f"attacks[{i}]"), f"attacks[{i}]") for i, a in enumerate(raw_attacks)
        )
        raw_faults = doc.pop("faults", [])
        if not isinstance(raw_faults, list):
            raise ScenarioError("faults: an array of tables ([[faults]])")
        faults = tuple(
            _build(Fault, _section(f, f"faults[{i}]"), f"faults[{i}]") for i, f in enumerate(raw_faults)
        )
        doc.setdefault("name", default_name)
        scenario: Scenario = _build(
            cls,
            {
                **doc,
                "network": link,
                "workload": workload,
                "malicious": malicious,
                "faults": faults,
                "attacks": attacks,
                "expect": expect,
                "dms": dms,
                "devices": devices,
                "sybil": sybil,
                "names": names,
            },
            "",
        )
        scenario.check()
        return scenario

    @classmethod
    def load(cls, name_or_path: str) -> Scenario:
        """A bundled scenario by name, or a TOML file by path."""
        path = Path(name_or_path)
        if not path.suffix and (BUNDLED / f"{name_or_path}.toml").exists():
            path = BUNDLED / f"{name_or_path}.toml"
        try:
            text = path.read_text(encoding="utf-8")  # TOML is UTF-8, whatever the locale
        except OSError as exc:
            names = ", ".join(bundled_names())
            raise ScenarioError(f"no scenario {name_or_path!r} ({exc.strerror}); bundled: {names}") from None
        except UnicodeDecodeError as exc:
            raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
        return cls.from_toml(text, default_name=path.stem)


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


def _fraction(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ScenarioError(f"{where}: a fraction 0 .. 1, not {value:g}")


def _check_finite(obj: Any, where: str) -> None:
    """Every number in a scenario is finite: NaN compares false with every bound
    (it would pass the range checks and then hang or crash the run), inf never ends."""
    prefix = f"{where}." if where else ""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ScenarioError(f"{prefix}{f.name}: must be a finite number, not {value}")
        if f.name == "matrix_ms" and any(not math.isfinite(x) for row in value for x in row):
            raise ScenarioError(f"{prefix}{f.name}: every entry must be a finite number")
        if is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}")
        elif isinstance(value, tuple | list) and value and is_dataclass(value[0]):
            for i, item in enumerate(value):
                _check_finite(item, f"{prefix}{f.name}[{i}]")


def _section(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a table")
    return dict(value)


def _build(cls: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in known:
            raise ScenarioError(f"{prefix}{key}: unknown field (known: {', '.join(sorted(known))})")
    for name, f in known.items():
        if f.default is MISSING and f.default_factory is MISSING and name not in values:
            kinds = Fault.KINDS if cls is Fault else Attack.KINDS
            choices = f" ({', '.join(kinds)})" if cls in (Fault, Attack) and name == "kind" else ""
            raise ScenarioError(f"{prefix}{name}: required{choices}")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        f = known[key]
        # A field without a default is typed by its annotation (`name: str`, `kind: str`).
        default = getattr(cls, key, None) if f.default is not MISSING else ("" if f.type == "str" else None)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ScenarioError(f"{prefix}{key}: expected true or false")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, float) and not isinstance(value, float):
            raise ScenarioError(f"{prefix}{key}: expected a number")
        elif (
            isinstance(default, int)
            and not isinstance(default, bool)
            and (not isinstance(value, int) or isinstance(value, bool))
        ):
            raise ScenarioError(f"{prefix}{key}: expected an integer")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ScenarioError(f"{prefix}{key}: expected a string")
        if key == "matrix_ms":
            if not isinstance(value, list) or not all(
                isinstance(row, list)
                and all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in row)
                for row in value
            ):
                raise ScenarioError(f"{prefix}{key}: expected an array of arrays of numbers >= 0")
            value = tuple(tuple(float(x) for x in row) for row in value)
        converted[key] = value
    try:
        return cls(**converted)
    except ValueError as exc:  # the dataclass's own check: its message starts with the field
        raise ScenarioError(f"{prefix}{exc}") from None
    except TypeError as exc:
        raise ScenarioError(f"{where or 'scenario'}: {exc}") from None
