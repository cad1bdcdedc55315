"""The reliability goals (issue 17): what a user of a network under trouble gets, measured.

Theory of operation
-------------------
`ReliabilityWatch` rides along every `Simulation` (it owns ``metrics.reliability``
and the reliability oracles of ``[expect]``) and measures:

* **live followers within 30 s and 120 s**: for each post whose author was up
  when it posted and stayed up through the window, the honest followers that
  were up at the post and stayed up through the window (no crash in between:
  `SimNode.downs`) are its *live followers*; the share of them that stored the
  post within the window, pooled (``ratio``) and per post (mean, p10, min, and
  how many posts reached all of them).  Posts whose window ends after the run
  are left out.  This is the per-post reliability a user sees; the overall
  ``delivery`` counts every honest follower, up or not.
* **peer-record lookups that return the right record**: a random lookup's
  `PeerResolved` whose record is signed by the key asked for and names the
  address the key's node has (a stale or forged one would not), over all of them.
* **name lookups** (``[names]``): ``claims`` honest authors claim ``user<i>``
  with the real proof of work at ``claim_at``; every honest node resolves a
  random claimed name ``lookups_per_hour`` times an hour; a lookup is right
  when the claimant's own claim is among the claims found (`NameResolved`).
* **fork proofs** (``[malicious] equivocators``): from the equivocation on,
  every `FORK_PROBE_EVERY` seconds (0.2), which honest followers of each
  equivocator hold the fork (their store marks the feed forked); the time
  from the equivocation until each does (p50, max) and until all do.  An
  equivocator whose other branch reached nobody (one follower: `equivocate`
  hands the branch to half of them) made no fork anyone can hold; it is
  counted apart (``equivocators_unseen``).
* **Sybils** (``[sybil]``, `simulations.adversary.SybilPlan`): honest delivery
  and lookups before and after the flash; with ``eclipse``, the delivery of
  the victims' posts to their honest followers and lookups of the victims'
  peer records (each honest node, ``lookups_per_hour``).

Nothing here schedules an engine event unless the scenario asks for what it
measures (names, equivocators, an eclipse), so the other scenarios run the
same events as before and only gain the ``reliability`` metrics.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from identity.limits import NAME_CLAIM_MIN_WORK
from identity.pow import NAME_DOMAIN, name_subject, solve
from p2pblog.node import NameResolved, PeerNotResolved, PeerResolved

if TYPE_CHECKING:
    from simulations.node import SimNode
    from simulations.simulation import Simulation

#: The deadlines of the live-follower shares, seconds (the issue's 30 s and 120 s).
WINDOWS: Final = (30.0, 120.0)
#: Seconds between two looks for fork proofs at the equivocators' followers.
FORK_PROBE_EVERY: Final = 0.2


def _r(value: float) -> float:
    return round(value, 6)


def _pct(values: Sequence[float], q: float) -> float:
    from simulations.simulation import percentile  # it imports this module

    return _r(percentile(list(values), q))


@functools.cache
def name_nonce(signer: bytes, name: str, claimed: int) -> bytes:
    """The stamp a name claim needs (the same for the same claim: remembered across runs)."""
    return solve(NAME_DOMAIN, name_subject(signer, name, claimed), NAME_CLAIM_MIN_WORK)


class ReliabilityWatch:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        #: Post -> the honest followers up when it was posted (None: its author was down).
        self.live_at_post: dict[tuple[bytes, int], list[int] | None] = {}
        #: (right, time) of each random peer-record lookup.
        self.peer: list[tuple[bool, float]] = []
        #: Claimed name -> its claimant; name lookups in flight; (right, claims found) of each.
        self.claims: dict[str, int] = {}
        self.claims_skipped = 0
        self.name_asked: dict[tuple[int, int, int], str] = {}
        self.names: list[tuple[bool, int]] = []
        #: Eclipse: lookups of the victims' peer records in flight, and their outcomes.
        self.victim_asked: dict[tuple[int, int, int], int] = {}
        self.victim_lookups: list[bool] = []
        #: Equivocator -> when it equivocated; (follower, equivocator) -> when it held the fork.
        self.fork_at: dict[int, float] = {}
        self.fork_held: dict[tuple[int, int], float] = {}
        #: Equivocators whose other branch reached nobody (no fork to hold).
        self.fork_unseen: set[int] = set()

    @property
    def victims(self) -> list[int]:
        plan = self.sim.sybil_plan
        return plan.victims if plan is not None else []

    # ============================================================ schedule

    def schedule(self) -> None:
        sim, sc = self.sim, self.sim.scenario
        engine = sim.engine
        if sc.names.claims:
            rng = engine.rng("names")
            pool = [a for a in sim.authors if a in sim.honest_set and a not in self.victims]
            for owner in sorted(rng.sample(pool, min(sc.names.claims, len(pool)))):
                self.claims[f"user{owner}"] = owner
            engine.at(sc.names.claim_at, self._claim_names)
            if sc.names.lookups_per_hour > 0:
                names = sorted(self.claims)
                for i in sim.honest:
                    t = sc.names.lookup_from
                    while True:
                        t += rng.expovariate(sc.names.lookups_per_hour / 3600.0)
                        if t >= sc.duration:
                            break
                        engine.at(t, partial(self._resolve_name, i, rng.choice(names)))
        if sc.malicious.equivocators:
            engine.at(sc.malicious.equivocate_at, self._probe_forks)
        if self.victims and sc.workload.lookups_per_hour > 0:
            rng = engine.rng("sybil-victim-lookups")
            for i in sim.honest:
                for victim in self.victims:
                    if victim == i:
                        continue
                    t = sc.workload.join_over + 10.0
                    while True:
                        t += rng.expovariate(sc.workload.lookups_per_hour / 3600.0)
                        if t >= sc.duration:
                            break
                        engine.at(t, partial(self._resolve_victim, i, victim))
        if sim.sybil_plan is not None and sim.sybil_plan.turn_at > 0:
            engine.at(sim.sybil_plan.turn_at, partial(sim.sybil_plan.turn, sim))

    def _claim_names(self) -> None:
        for name, owner in sorted(self.claims.items()):
            node = self.sim.nodes[owner]
            if node.core is None:
                self.claims_skipped += 1
                continue
            claimed = int(node.now)
            node.core.claim_name(name, claimed, name_nonce(node.identity.public_key, name, claimed), node.now)
            node.flush()

    def _resolve_name(self, index: int, name: str) -> None:
        node = self.sim.nodes[index]
        if node.core is not None:
            self.name_asked[(index, node.incarnation, node.core.start_resolve_name(name, node.now))] = name
            node.flush()

    def _resolve_victim(self, index: int, victim: int) -> None:
        node = self.sim.nodes[index]
        if node.core is not None:
            key = self.sim.nodes[victim].identity.public_key
            self.victim_asked[(index, node.incarnation, node.core.start_resolve(key, node.now))] = victim
            node.flush()

    def _probe_forks(self) -> None:
        sim = self.sim
        now = sim.engine.now
        for author, seq in sorted(sim.equivocated.items()):
            if author not in self.fork_at and author not in self.fork_unseen:
                if self._other_branch_out(author, seq):
                    self.fork_at[author] = now
                else:
                    self.fork_unseen.add(author)
        pending = 0
        for author in sorted(self.fork_at):
            feed = sim.nodes[author].identity.public_key
            for i in self._fork_followers(author):
                if (i, author) in self.fork_held:
                    continue
                if sim.nodes[i].store.feed_state(feed).forked_seq is not None:
                    self.fork_held[(i, author)] = now
                else:
                    pending += 1
        classified = len(self.fork_at) + len(self.fork_unseen) == len(sim.equivocated)
        if (pending or not classified) and now + FORK_PROBE_EVERY <= sim.scenario.duration:
            sim.engine.after(FORK_PROBE_EVERY, self._probe_forks)

    def _other_branch_out(self, author: int, seq: int) -> bool:
        """Whether any follower got the other branch (with one follower, nobody does: the
        fork then exists in no store but the equivocator's keys)."""
        feed = self.sim.nodes[author].identity.public_key
        own = self.sim.nodes[author].store.raw_range(feed, seq, 1)
        return any(
            self.sim.nodes[i].store.raw_range(feed, seq, 1) not in ([], own)
            for i in self.sim.followers[author]
        )

    def _fork_followers(self, author: int) -> list[int]:
        sim = self.sim
        return [i for i in sim.followers[author] if i in sim.honest_set and i not in sim.down_for_good]

    # ============================================================ events

    def posted(self, key: tuple[bytes, int]) -> None:
        """A post was made (`Simulation._post`): note who is live for it."""
        sim = self.sim
        author = sim.by_key[key[0]]
        if not author.up:
            self.live_at_post[key] = None
            return
        self.live_at_post[key] = [
            i for i in sim.followers[author.index] if i in sim.honest_set and sim.nodes[i].up
        ]

    def on_event(self, node: SimNode, event: object) -> None:
        if isinstance(event, PeerResolved | PeerNotResolved):
            where = (node.index, node.incarnation, event.query_id)
            if where in self.sim.lookups:
                self.peer.append((self._right_record(event), self.sim.engine.now))
            elif where in self.victim_asked:
                del self.victim_asked[where]
                self.victim_lookups.append(isinstance(event, PeerResolved))
        elif isinstance(event, NameResolved):
            name = self.name_asked.pop((node.index, node.incarnation, event.query_id), None)
            if name is not None:
                owner = self.sim.nodes[self.claims[name]].identity.public_key
                self.names.append((any(c.signer == owner for c in event.claims), len(event.claims)))

    def _right_record(self, event: PeerResolved | PeerNotResolved) -> bool:
        if not isinstance(event, PeerResolved):
            return False
        target = self.sim.by_key.get(event.public_key)
        if target is None or event.record.signer != event.public_key:
            return False
        return any(tuple(a[1:]) == tuple(target.addr) for a in event.record.addrs)

    # ============================================================ metrics

    def _stayed_up(self, index: int, start: float, end: float) -> bool:
        return not any(start < t <= end for t in self.sim.nodes[index].downs)

    def live_within(self, window: float) -> dict[str, Any]:
        sim = self.sim
        shares: list[float] = []
        pairs = got = complete = 0
        for key in sim.post_order:
            posted = sim.posts[key]
            live = self.live_at_post.get(key)
            author = sim.by_key[key[0]].index
            if live is None or posted + window > sim.scenario.duration:
                continue
            if not self._stayed_up(author, posted, posted + window):
                continue
            live = [i for i in live if self._stayed_up(i, posted, posted + window)]
            if not live:
                continue
            delivered = sim.delivered[key]
            n = sum(1 for i in live if i in delivered and delivered[i] - posted <= window)
            pairs += len(live)
            got += n
            complete += n == len(live)
            shares.append(n / len(live))
        return {
            "window_s": window,
            "posts": len(shares),
            "pairs": pairs,
            "delivered": got,
            "ratio": _r(got / pairs) if pairs else 1.0,
            "mean_share": _r(sum(shares) / len(shares)) if shares else 1.0,
            "p10_share": _pct(shares, 10) if shares else 1.0,
            "min_share": _r(min(shares)) if shares else 1.0,
            "posts_complete": complete,
        }

    def _delivery(self, authors: set[int], since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        """Delivery of the given authors' posts made in [since, until) to their honest followers."""
        sim = self.sim
        expected = got = within = 0
        for key in sim.post_order:
            author = sim.by_key[key[0]].index
            posted = sim.posts[key]
            if author not in authors or not since <= posted < until:
                continue
            recipients = [i for i in sim.followers[author] if i in sim.honest_set]
            delivered = sim.delivered[key]
            expected += len(recipients)
            got += sum(1 for i in recipients if i in delivered)
            within += sum(1 for i in recipients if i in delivered and delivered[i] - posted <= WINDOWS[-1])
        return {
            "expected": expected,
            "delivered": got,
            "ratio": _r(got / expected) if expected else 1.0,
            "within_120s": _r(within / expected) if expected else 1.0,
        }

    def metrics(self) -> dict[str, Any]:
        sim, sc = self.sim, self.sim.scenario
        right = sum(1 for ok, _ in self.peer if ok)
        out: dict[str, Any] = {
            "live_followers_within": {f"{w:g}s": self.live_within(w) for w in WINDOWS},
            "peer_records": {
                "lookups": len(self.peer),
                "right": right,
                "ratio": _r(right / len(self.peer)) if self.peer else 1.0,
            },
        }
        if sc.names.claims:
            named = sum(1 for ok, _ in self.names if ok)
            out["names"] = {
                "claimed": len(self.claims) - self.claims_skipped,
                "lookups": len(self.names),
                "right": named,
                "ratio": _r(named / len(self.names)) if self.names else 1.0,
                "claims_found_mean": _r(sum(n for _, n in self.names) / len(self.names))
                if self.names
                else 0.0,
            }
        if sc.malicious.equivocators:
            out["fork_proof"] = self._fork_metrics()
        plan = sim.sybil_plan
        if plan is not None:
            honest_authors = {a for a in sim.authors if a in sim.honest_set}
            sybil: dict[str, Any] = {
                "mode": plan.mode,
                "sybils": len(plan.indices),
                "networks": sc.sybil.networks,
                "lies": dict(sorted(plan.lies.items())),
            }
            if plan.turn_at > 0:
                after = [ok for ok, t in self.peer if t >= plan.turn_at]
                sybil["turn_at"] = _r(plan.turn_at)
                sybil["delivery_before_turn"] = self._delivery(honest_authors, until=plan.turn_at)
                sybil["delivery_after_turn"] = self._delivery(honest_authors, since=plan.turn_at)
                sybil["peer_records_after_turn"] = _r(sum(after) / len(after)) if after else 1.0
            if plan.victims:
                looked = self.victim_lookups
                sybil["victims"] = plan.victims
                sybil["victim_delivery"] = self._delivery(set(plan.victims))
                sybil["other_delivery"] = self._delivery(honest_authors - set(plan.victims))
                sybil["victim_lookups"] = len(looked)
                sybil["victim_lookup_success"] = _r(sum(looked) / len(looked)) if looked else 1.0
            out["sybil"] = sybil
        return out

    def _fork_metrics(self) -> dict[str, Any]:
        followers = [(i, a) for a in sorted(self.fork_at) for i in self._fork_followers(a)]
        delays = [self.fork_held[p] - self.fork_at[p[1]] for p in followers if p in self.fork_held]
        return {
            "equivocators": len(self.fork_at),
            "equivocators_unseen": len(self.fork_unseen),
            "followers": len(followers),
            "held": len(delays),
            "held_after_s": {"p50": _pct(delays, 50), "max": _r(max(delays, default=0.0))},
            "all_held_after_s": _r(max(delays, default=0.0)) if len(delays) == len(followers) else None,
        }

    # ============================================================ oracles

    def oracles(self, metrics: dict[str, Any]) -> None:
        sim, expect = self.sim, self.sim.scenario.expect
        rel = metrics["reliability"]
        for name, window in (("live_within_30s", "30s"), ("live_within_120s", "120s")):
            share = rel["live_followers_within"][window]["ratio"]
            if getattr(expect, name) and share < getattr(expect, name):
                sim._violate(
                    "live delivery",
                    f"live followers got {share:g} of posts within {window} < {getattr(expect, name):g}",
                )
        if expect.victim_delivery and "sybil" in rel and "victim_delivery" in rel["sybil"]:
            ratio = rel["sybil"]["victim_delivery"]["ratio"]
            if ratio < expect.victim_delivery:
                sim._violate(
                    "victim delivery", f"eclipsed victims' delivery {ratio:g} < {expect.victim_delivery:g}"
                )
        if expect.name_lookup_success and "names" in rel:
            ratio = rel["names"]["ratio"]
            if ratio < expect.name_lookup_success:
                sim._violate("name lookup", f"right name lookups {ratio:g} < {expect.name_lookup_success:g}")
        if expect.fork_proof_within and "fork_proof" in rel:
            after = rel["fork_proof"]["all_held_after_s"]
            if after is None or after > expect.fork_proof_within:
                fork = rel["fork_proof"]
                sim._violate(
                    "fork proof",
                    f"{fork['held']} of {fork['followers']} honest followers held the fork proof, the last "
                    f"after {_secs(after)} (bound {expect.fork_proof_within:g} s)",
                )
        if not sim.attackers:  # with attackers the hostile oracles check these
            delivery, lookups = metrics["delivery"]["ratio"], metrics["dht"]["success_ratio"]
            if expect.delivery_ratio and delivery < expect.delivery_ratio:
                sim._violate("delivery", f"honest delivery ratio {delivery:g} < {expect.delivery_ratio:g}")
            if expect.lookup_success and lookups < expect.lookup_success:
                sim._violate("lookup", f"honest lookup success ratio {lookups:g} < {expect.lookup_success:g}")


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:g} s"


def checked(sc: Any) -> list[str]:
    """The names of the reliability oracles a scenario's ``[expect]`` turns on."""
    e = sc.expect
    on = [
        ("live delivery", e.live_within_30s or e.live_within_120s),
        ("victim delivery", e.victim_delivery),
        ("name lookup", e.name_lookup_success),
        ("fork proof", e.fork_proof_within),
    ]
    if not sc.attacks:
        on += [("delivery", e.delivery_ratio), ("lookup", e.lookup_success)]
    return [name for name, flag in on if flag]


def summary_text(m: dict[str, Any]) -> str:
    """One line for the terminal: the reliability figures the run has."""
    rel = m["reliability"]
    live = rel["live_followers_within"]
    parts = [
        f"live followers within 30 s {live['30s']['ratio']:.2%}, within 120 s {live['120s']['ratio']:.2%}"
    ]
    if "names" in rel:
        parts.append(f"right names {rel['names']['ratio']:.2%}")
    parts.append(f"right peer records {rel['peer_records']['ratio']:.2%}")
    if "fork_proof" in rel:
        parts.append(f"fork proof at every follower after {_secs(rel['fork_proof']['all_held_after_s'])}")
    if "victim_delivery" in rel.get("sybil", {}):
        parts.append(f"eclipsed victims' delivery {rel['sybil']['victim_delivery']['ratio']:.2%}")
    return "reliability: " + ", ".join(parts)


def report_lines(m: dict[str, Any]) -> list[str]:
    """The report's "Reliability" section (`metrics.reliability`)."""
    rel = m["reliability"]
    lines = [
        "Live followers (up at the post and through the window, the author too) that got each post:",
        "",
        "| within | posts | pairs | share (pooled) | mean per post | p10 per post | worst post "
        "| posts to all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for window, w in rel["live_followers_within"].items():
        lines.append(
            f"| {window} | {w['posts']:,} | {w['pairs']:,} | **{w['ratio']:.2%}** | {w['mean_share']:.2%} "
            f"| {w['p10_share']:.2%} | {w['min_share']:.2%} | {w['posts_complete']:,} |"
        )
    p = rel["peer_records"]
    lines += [
        "",
        f"Peer-record lookups that returned the right record: {p['right']:,} of {p['lookups']:,} "
        f"(**{p['ratio']:.2%}**).",
    ]
    if "names" in rel:
        n = rel["names"]
        lines += [
            f"Name lookups that returned the claimant's claim: {n['right']:,} of {n['lookups']:,} "
            f"(**{n['ratio']:.2%}**; {n['claimed']} names claimed, {n['claims_found_mean']:g} claims found "
            "per lookup on average)."
        ]
    if "fork_proof" in rel:
        f = rel["fork_proof"]
        lines += [
            f"Fork proofs: {f['held']} of {f['followers']} honest followers of {f['equivocators']} "
            f"equivocators held one; after p50 {f['held_after_s']['p50']:g} s, "
            f"max {f['held_after_s']['max']:g} s; "
            f"**all after {_secs(f['all_held_after_s'])}**."
        ]
    if "sybil" in rel:
        s = rel["sybil"]
        lies = ", ".join(f"{n:,} {kind}" for kind, n in s["lies"].items()) or "none"
        lines += [
            "",
            f"Sybils: {s['sybils']} ({s['mode']}, from {s['networks'] or 'their own'} /24s); "
            f"answers they changed: {lies}.",
        ]
        for label, key in (
            ("posts before the turn", "delivery_before_turn"),
            ("posts after the turn", "delivery_after_turn"),
            ("the eclipsed victims' posts", "victim_delivery"),
            ("the other honest authors' posts", "other_delivery"),
        ):
            if key in s:
                d = s[key]
                lines.append(
                    f"- Delivery of {label}: {d['delivered']:,} of {d['expected']:,} (**{d['ratio']:.2%}**; "
                    f"{d['within_120s']:.2%} within 120 s)."
                )
        if "peer_records_after_turn" in s:
            lines.append(f"- Right peer records after the turn: **{s['peer_records_after_turn']:.2%}**.")
        if "victim_lookups" in s:
            lines.append(
                f"- Lookups of the victims' peer records: {s['victim_lookups']:,}, "
                f"**{s['victim_lookup_success']:.2%}** succeeded."
            )
    return lines
