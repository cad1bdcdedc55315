"""Scenarios: what to simulate, read from TOML (documented field by field in docs/simulations.md).

A scenario is plain data: `Scenario.from_toml` checks every field and raises
`ScenarioError` with the field's name for anything unknown, mistyped or out
of range, so a typo in a scenario file is an error, never a silent default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from simulations.network import Latency, LinkModel

BUNDLED = Path(__file__).parent / "scenarios"


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
    #: Posting happens in [post_from, post_until) seconds (post_until 0: duration - 60).
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
    #: "gossip" (Plumtree: prune duplicate pushers) or "flood" (every node pushes
    #: everything to every connected peer that replicates the feed, no pruning).
    protocol: str = "gossip"
    #: Followers must hold every honest feed within this many seconds after the
    #: last fault ends (and posting stops); else the convergence oracle fires.
    converge_within: float = 120.0

    def with_overrides(
        self, *, seed: int | None = None, nodes: int | None = None, duration: float | None = None
    ) -> Scenario:
        out = self
        if seed is not None:
            out = replace(out, seed=seed)
        if nodes is not None:
            out = replace(out, nodes=nodes)
        if duration is not None:
            out = replace(out, duration=duration)
        out.check()
        return out

    @property
    def post_until(self) -> float:
        return self.workload.post_until or max(self.workload.post_from, self.duration - 60.0)

    @property
    def last_fault_end(self) -> float:
        return max((f.end for f in self.faults), default=0.0)

    @property
    def converge_by(self) -> float:
        """When every honest follower must have converged."""
        return max(self.last_fault_end, self.post_until) + self.converge_within

    def check(self) -> None:
        if not 2 <= self.nodes <= 100_000:
            raise ScenarioError("nodes: 2..100000")
        if self.duration <= 0:
            raise ScenarioError("duration: must be > 0 seconds")
        if self.protocol not in ("gossip", "flood"):
            raise ScenarioError("protocol: 'gossip' or 'flood'")
        w = self.workload
        if w.follow_graph not in ("random", "power-law"):
            raise ScenarioError("workload.follow_graph: 'random' or 'power-law'")
        if not 0 <= w.follows < self.nodes:
            raise ScenarioError("workload.follows: 0 .. nodes-1")
        for name in ("authors", "offline_authors"):
            if not 0.0 <= getattr(w, name) <= 1.0:
                raise ScenarioError(f"workload.{name}: a fraction 0..1")
        if min(w.posts_per_hour, w.post_from, w.join_over, w.lookups_per_hour, w.offline_at) < 0:
            raise ScenarioError("workload: rates and times must be >= 0")
        for i, fault in enumerate(self.faults):
            where = f"faults[{i}]"
            if fault.kind not in Fault.KINDS:
                raise ScenarioError(f"{where}.kind: one of {', '.join(Fault.KINDS)}")
            if not 0.0 <= fault.fraction <= 1.0 or not 0.0 <= fault.rate <= 1.0:
                raise ScenarioError(f"{where}: fraction and rate are 0..1")
            if fault.shape not in ("halves", "bridge"):
                raise ScenarioError(f"{where}.shape: 'halves' or 'bridge'")
            if min(fault.at, fault.duration, fault.restart_after) < 0:
                raise ScenarioError(f"{where}: times must be >= 0")
            if fault.session_mean <= 0 or fault.downtime_mean <= 0:
                raise ScenarioError(f"{where}: session_mean and downtime_mean must be > 0")
        m = self.malicious
        for name in ("dht_bogus", "dht_forged", "gossip_withhold", "gossip_forge"):
            if not 0.0 <= getattr(m, name) <= 1.0:
                raise ScenarioError(f"malicious.{name}: a fraction 0..1")
        if not 0 <= m.equivocators <= self.nodes:
            raise ScenarioError("malicious.equivocators: 0 .. nodes")
        if self.converge_within < 0:
            raise ScenarioError("converge_within: must be >= 0")

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
        raw_faults = doc.pop("faults", [])
        if not isinstance(raw_faults, list):
            raise ScenarioError("faults: an array of tables ([[faults]])")
        faults = tuple(
            _build(Fault, _section(f, f"faults[{i}]"), f"faults[{i}]") for i, f in enumerate(raw_faults)
        )
        doc.setdefault("name", default_name)
        scenario: Scenario = _build(
            cls, {**doc, "network": link, "workload": workload, "malicious": malicious, "faults": faults}, ""
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
            text = path.read_text()
        except OSError as exc:
            names = ", ".join(bundled_names())
            raise ScenarioError(f"no scenario {name_or_path!r} ({exc.strerror}); bundled: {names}") from None
        return cls.from_toml(text, default_name=path.stem)


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


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
    converted: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls, key, None) if key in known else None
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
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where or 'scenario'}: {exc}") from None
