"""Simulation output: the metrics file, the Markdown report, PNG plots, terminal summaries, sweeps.

`write_run` turns one `Result` into a directory:

* ``metrics.json``: `metrics_document`, the scenario as plain data, the seed,
  the metrics, any comparison run and the oracle results, with sorted keys.
  Nothing in it comes from the wall clock, so the same scenario, seed and code
  give a byte-identical file (the simulator's reproducibility contract);
* ``report.md``: the same numbers for people, with the figures embedded and
  captioned;
* ``latencies.csv``: every delivery's latency, one per line (the CDF's data;
  ``latencies-flood.csv`` for a comparison run), as deterministic as
  metrics.json;
* ``delivery_within.png`` (delivery within 30 s / 120 s per bucket of posting
  time, fault windows shaded), ``latency_cdf.png`` (empirical CDF of every
  delivery) and ``hops.png``, drawn with matplotlib by `simulations.plot`.

`summary` gives a few lines for the terminal.  `write_sweep` aggregates the
runs of one scenario over several seeds into ``sweep.json`` and ``sweep.md``:
the median, the 99th percentile, the range and, for metrics where one
direction is better (`better`), the worst seed (`WORST_RULE`); the seeds on
which an oracle fired; and two figures of the spread across seeds
(``sweep_spread.png``, ``sweep_within.png``).

The report reads metrics with `_get` (a missing key shows as "n/a") so that
a metric renamed in `simulations.simulation` degrades one line, not the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from simulations import reliability
from simulations.plot import (
    hops_plot,
    latency_cdf_plot,
    shares_plot,
    spread_plot,
)
from simulations.scenario import UNCHECKED, Fault, Scenario
from simulations.simulation import Result, percentile

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
LATENCIES_FILE = "latencies.csv"
PLOTS = {
    "delivery_within.png": "Delivery within the deadline, by time posted",
    "latency_cdf.png": "Delivery latency CDF (every delivery)",
    "hops.png": "DHT lookup hops",
}
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
#: The sweep's figures: file -> (title, caption in sweep.md).
SWEEP_PLOTS = {
    "sweep_spread.png": (
        "Spread across seeds",
        "One panel per metric: each dot is one seed (left to right in seed order), the orange bar "
        "the median over the seeds.",
    ),
    "sweep_within.png": (
        "Delivery within the deadline across seeds",
        "Per bucket of posting time, the median over the seeds of the share of (post, honest follower) "
        "pairs delivered within 30 s and within 120 s (line), and the band from the lowest to the highest "
        "seed; shaded: fault windows.",
    ),
}

WORST_RULE = (
    "Higher is better for ratios and shares (a leaf named *ratio*, *success* or `within_*`); lower "
    "is better for latency, bytes, messages per node, duplicates, mean hops, refused inputs, "
    "convergence time, time to learn a key event, attacker-grown resources and violations. The "
    "worst seed is the one at the bad end. Any other metric is a count that describes the workload "
    "(posts, expected deliveries, lookups, events): larger is neither better nor worse, so it has "
    "no worst seed, only its range. A null value (e.g. `converged_after_s` when the run never "
    "converged) counts as the worst; a key absent from a run (counters list only what happened) "
    "counts as 0. Ties go to the lowest seed; when every seed has the same value there is no worst "
    "seed (all equal)."
)


# ============================================================ one run


def metrics_document(result: Result) -> dict[str, Any]:
    """Everything `metrics.json` holds: plain JSON data, no wall-clock values."""
    return {
        "scenario": _scenario_echo(result.scenario),
        "seed": result.scenario.seed,
        "metrics": result.metrics,
        "compare": result.compare,
        "oracles": {
            "ok": result.ok,
            "violations": [
                {"oracle": v.oracle, "time": v.time, "detail": v.detail} for v in result.violations
            ],
        },
        "events": result.events,
    }


def _scenario_echo(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data; ``attacks`` and ``expect`` only when set, so that a
    scenario without attackers echoes exactly what it did before they existed."""
    echo: dict[str, Any] = _plain(dataclasses.asdict(scenario))
    if not scenario.attacks:
        del echo["attacks"]
    if scenario.expect == type(scenario.expect)():
        del echo["expect"]
    if scenario.dms == type(scenario.dms)():
        del echo["dms"]
    if scenario.devices == type(scenario.devices)():
        del echo["devices"]
    echo["dht"] = scenario.dht_fidelity  # what ran, not "auto" (issue 17)
    for table in ("sybil", "names"):
        if getattr(scenario, table) == type(getattr(scenario, table))():
            del echo[table]
    if "expect" in echo:  # the reliability thresholds only when set (the hostile echo stays as it was)
        defaults = dataclasses.asdict(type(scenario.expect)())
        for name in (*scenario.expect.RELIABILITY, "fork_proof_within"):
            if echo["expect"][name] == defaults[name]:
                del echo["expect"][name]
    return echo


def write_run(result: Result, out_dir: Path | str) -> list[Path]:
    """Write metrics.json, report.md and the plots into ``out_dir`` (created); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    metrics_path.write_text(_dumps(metrics_document(result)))
    report_path = out / REPORT_FILE
    report_path.write_text(_report(result))
    samples = [_latency_csv(out / LATENCIES_FILE, result.latencies)]
    for name, latencies in sorted(result.compare_latencies.items()):
        samples.append(_latency_csv(out / f"latencies-{name}.csv", latencies))
    return [metrics_path, report_path, *samples, *_plots(result, out)]


def summary(result: Result) -> list[str]:
    """A few lines for the terminal: delivery, amplification, DHT, convergence, oracles, seed."""
    m = result.metrics
    sc = result.scenario
    lines = [
        f"{sc.name} (seed {sc.seed}): {sc.nodes} nodes, {sc.duration:g} s simulated, "
        f"{result.events:,} events, DHT {sc.dht_fidelity}",
        f"delivery {_share(m, 'delivery.ratio', 'delivery.expected')} ({_int(_get(m, 'delivery.delivered'))}/"
        f"{_int(_get(m, 'delivery.expected'))} over {_int(_get(m, 'posts'))} posts), latency p50 "
        f"{_secs(_get(m, 'delivery.latency_s.p50'))}, p99 {_secs(_get(m, 'delivery.latency_s.p99'))}; "
        f"{_within_text(m)}",
        f"amplification {_num(_get(m, 'amplification.duplicates_per_delivery'))} duplicates per delivery, "
        f"{_bytes(_get(m, 'traffic.bytes_total'))} sent",
    ]
    for name, other in sorted(result.compare.items()):
        dup, other_dup = (
            _get(m, "amplification.duplicates_per_delivery"),
            _get(other, "amplification.duplicates_per_delivery"),
        )
        lines.append(
            f"{name}: {_num(other_dup)} duplicates per delivery ({_times(other_dup, dup)} this run), "
            f"{_bytes(_get(other, 'traffic.bytes_total'))} sent "
            f"({_times(_get(other, 'traffic.bytes_total'), _get(m, 'traffic.bytes_total'))})"
        )
    lines.append(
        f"DHT {_int(_get(m, 'dht.succeeded'))}/{_int(_get(m, 'dht.lookups'))} lookups succeeded "
        f"({_share(m, 'dht.success_ratio', 'dht.lookups')}), {_num(_get(m, 'dht.hops_mean'))} hops mean"
    )
    lines.append(_convergence_text(m))
    if "dms" in m:
        lines.append(_dm_text(m))
    if "devices" in m:
        lines.append(_devices_text(m))
    if "hostile" in m:
        lines.append(_hostile_text(m))
    if "reliability" in m and reliability.checked(sc):
        lines.append(reliability.summary_text(m))
    lines.append(_oracle_text(result))
    return lines


def _within_text(m: dict[str, Any]) -> str:
    """ "97.50% within 30 s, 100.00% within 120 s": delivery within each deadline."""
    shares = [
        f"{_share(m, f'delivery.within_{d}s', f'delivery.within.{d}.expected')} within {d} s"
        for d in _deadlines(m)
    ]
    return ", ".join(shares) or "delivery within a deadline: n/a"


def _hostile_text(m: dict[str, Any]) -> str:
    """One line: the victims' lookups and the most any honest node held of what attackers grow."""
    most = _get(m, "hostile.resources_max") or {}

    def held(name: str) -> str:
        return _int(most.get(name, {}).get("value"))

    victims = _share(m, "hostile.lookups.victim_success_ratio", "hostile.lookups.victim_lookups")
    return (
        f"under attack: victims' lookups {victims}; most per node: {held('attacker_connections')} "
        f"attacker connections, {held('attacker_records')} flooded keys, {held('unanswered_contacts')} "
        f"unanswered contacts, {held('table_contacts')} contacts"
    )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def _plain(value: Any) -> Any:
    """JSON-shaped data: tuples become lists, all the way down."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _get(doc: Any, path: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; None if any step is missing."""
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


# ------------------------------------------------------------ number formatting (None: "n/a")


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def _int(value: Any) -> str:
    return "n/a" if value is None else f"{value:,}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _share(m: dict[str, Any], ratio: str, count: str) -> str:
    """A ratio as a percentage; "n/a" when there was nothing to count (metrics.json says 1.0)."""
    return "n/a" if not _get(m, count) else _pct(_get(m, ratio))


def _secs(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _bytes(value: Any) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def _times(value: Any, base: Any) -> str:
    """``value / base`` as "x2.50"; n/a without a base."""
    if value is None or not base:
        return "n/a"
    return f"x{value / base:.2f}"


# ------------------------------------------------------------ report.md


def _report(result: Result) -> str:
    sc, m = result.scenario, result.metrics
    out = [f"# Simulation report: {sc.name}", ""]
    if sc.description:
        out += [sc.description, ""]
    out += ["## Scenario", "", *_scenario_lines(sc, m), f"- **Events run**: {result.events:,}", ""]
    out += ["## Oracles", "", *_oracle_lines(result), ""]
    out += [
        "## Delivery",
        "",
        f"{_int(_get(m, 'posts'))} posts ({_int(_get(m, 'posts_skipped_offline_author'))} skipped: author "
        f"offline for good); {_int(_get(m, 'delivery.delivered'))} of {_int(_get(m, 'delivery.expected'))} "
        f"expected deliveries to honest followers: **{_share(m, 'delivery.ratio', 'delivery.expected')}**; "
        f"{_within_text(m)} (of the pairs whose deadline fell before the end of the run).",
        "",
        *_latency_table(m, "delivery.latency_s"),
        "",
        "## Amplification",
        "",
        *_amplification_lines(result),
        "",
        "## Traffic",
        "",
        *_traffic_lines(m),
        "",
        "## DHT",
        "",
        f"{_int(_get(m, 'dht.succeeded'))} of {_int(_get(m, 'dht.lookups'))} peer-record lookups succeeded "
        f"(**{_share(m, 'dht.success_ratio', 'dht.lookups')}**), "
        f"{_num(_get(m, 'dht.hops_mean'))} hops on average.",
        "",
    ]
    hops = _get(m, "dht.hops_histogram") or {}
    if hops:
        keys = sorted(hops, key=int)
        out += ["| hops | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        out += ["| lookups | " + " | ".join(str(hops[k]) for k in keys) + " |", ""]
    if "dms" in m:
        out += ["## Direct messages", "", *_dm_lines(sc, m), ""]
    if "devices" in m:
        out += ["## Devices", "", *_devices_lines(sc, m), ""]
    if "hostile" in m:
        out += ["## Under attack", "", *_hostile_lines(m), ""]
    if "reliability" in m:
        out += ["## Reliability", "", *reliability.report_lines(m), ""]
    out += ["## Convergence", "", _convergence_text(m) + ".", ""]
    deadline = _get(m, "convergence.deadline")
    out += [
        f"The convergence oracle's deadline: t = {deadline:g} s."
        if deadline is not None
        else "The convergence oracle's deadline falls after the end of the run: not checked.",
        "",
        "## Refused input",
        "",
        *_refused_lines(m),
        "",
        "## Plots",
        "",
    ]
    out += _plot_lines(result)
    return "\n".join(out) + "\n"


def _scenario_lines(sc: Scenario, metrics: dict[str, Any] | None = None) -> list[str]:
    net, w, mal = sc.network, sc.workload, sc.malicious
    lat = net.latency
    latency = {
        "constant": f"constant {lat.ms:g} ms",
        "uniform": f"uniform {lat.low_ms:g}-{lat.high_ms:g} ms",
        "lognormal": f"lognormal, median {lat.median_ms:g} ms, sigma {lat.sigma:g}",
        "regions": f"{lat.regions} regions (lognormal around a median matrix, sigma {lat.sigma:g})",
    }.get(lat.kind, lat.kind)
    bandwidth = f"{_bytes(net.bandwidth)}/s uplink" if net.bandwidth else "unlimited bandwidth"
    offline = (
        f"; {w.offline_authors:.0%} of authors go offline for good at {w.offline_at:g} s"
        if w.offline_authors
        else ""
    )
    lines = [
        f"- **Seed**: {sc.seed}",
        f"- **Nodes**: {sc.nodes}, **duration**: {sc.duration:g} s, **protocol**: {sc.protocol}",
        "- **DHT fidelity**: "
        + (
            "full (the real DHT over simulated datagrams)"
            if sc.dht_fidelity == "full"
            else "model (calibrated against full runs, answering from a global view; `simulations.dhtmodel`)"
        ),
        f"- **Network**: latency {latency}; loss {net.loss:.1%}, duplicate {net.duplicate:.1%}, "
        f"reorder {net.reorder:.1%}, {bandwidth}",
        f"- **Workload**: {w.follow_graph} follow graph, {w.follows} follows per node; {w.authors:.0%} of "
        f"nodes post {w.posts_per_hour:g}/h from {w.post_from:g} s to {sc.post_until:g} s; "
        f"{w.lookups_per_hour:g} lookups/h per node; joins over {w.join_over:g} s{offline}",
        "- **Faults**: " + ("; ".join(_fault_text(f) for f in sc.faults) or "none"),
    ]
    bad = [
        f"{name} {getattr(mal, name):.0%}"
        for name in ("dht_bogus", "dht_forged", "gossip_withhold", "gossip_forge")
        if getattr(mal, name)
    ]
    if mal.equivocators:
        bad.append(f"{mal.equivocators} equivocating author(s) at {mal.equivocate_at:g} s")
    for a in sc.attacks:
        bad.append(f"{a.kind} from {a.at:g} s" + (f" for {a.duration:g} s" if a.duration else ""))
    roles = _get(metrics, "roles") or {}
    if roles:
        bad.append("nodes per role: " + ", ".join(f"{k} {v}" for k, v in sorted(roles.items())))
    lines.append("- **Malicious**: " + ("; ".join(bad) or "none"))
    return lines


def _latency_table(m: dict[str, Any], path: str) -> list[str]:
    """A one-row table of the latency percentiles under ``path``."""
    latency = [(q, _secs(_get(m, f"{path}.{q}"))) for q in ("p50", "p90", "p99", "max", "mean")]
    return [
        "| latency | " + " | ".join(q for q, _ in latency) + " |",
        "|---|" + "---:|" * len(latency),
        "| seconds | " + " | ".join(v for _, v in latency) + " |",
    ]


def _dm_text(m: dict[str, Any]) -> str:
    """One line: direct messages delivered (in all and within the deadline) and their latency."""
    return (
        f"DMs {_share(m, 'dms.ratio', 'dms.sent')} delivered ({_int(_get(m, 'dms.delivered'))}/"
        f"{_int(_get(m, 'dms.sent'))}), {_share(m, 'dms.within_deadline.ratio', 'dms.sent')} within "
        f"{_secs(_get(m, 'dms.within_deadline.deadline_s'))}; latency p50 "
        f"{_secs(_get(m, 'dms.latency_s.p50'))}, p99 {_secs(_get(m, 'dms.latency_s.p99'))}; "
        f"{_int(_get(m, 'dms.delivered_via_holder'))} via a holder"
    )


def _dm_lines(sc: Scenario, m: dict[str, Any]) -> list[str]:
    """The direct-message workload (`metrics.dms`): what was sent, delivered, how fast, by whom."""
    d = sc.dms
    folders = _get(m, "dms.folders") or {}
    states = _get(m, "dms.sender_states") or {}
    return [
        f"Seed {sc.seed}; {d.per_hour:g} DMs/h per honest node from {d.start:g} s to {sc.dm_until:g} s, "
        f"{d.strangers:.0%} to strangers (each one's recipient drawn from the seed alone).",
        "",
        f"{_int(_get(m, 'dms.sent'))} sent ({_int(_get(m, 'dms.sent_while_sender_offline'))} written while "
        f"the sender was down, {_int(_get(m, 'dms.to_strangers'))} to strangers, "
        f"{_int(_get(m, 'dms.skipped_gone_for_good'))} skipped: a party offline for good); "
        f"{_int(_get(m, 'dms.delivered'))} stored by their recipient: "
        f"**{_share(m, 'dms.ratio', 'dms.sent')}**, "
        f"**{_share(m, 'dms.within_deadline.ratio', 'dms.sent')}** within "
        f"{_secs(_get(m, 'dms.within_deadline.deadline_s'))} of the send.",
        "",
        *_latency_table(m, "dms.latency_s"),
        "",
        f"{_int(_get(m, 'dms.delivered_via_holder'))} delivered by a holder rather than the sender; "
        f"{_int(_get(m, 'dms.recipient_offline_at_send.sent'))} sent while the recipient was down, "
        f"{_int(_get(m, 'dms.recipient_offline_at_send.delivered'))} of them delivered "
        f"({_int(_get(m, 'dms.recipient_offline_at_send.delivered_via_holder'))} by a holder). "
        "Folders: " + (", ".join(f"{k} {v}" for k, v in folders.items()) or "none") + "; the senders' last "
        "states: " + (", ".join(f"{k} {v}" for k, v in states.items()) or "none") + ".",
    ]


def _devices_text(m: dict[str, Any]) -> str:
    """One line: the device events, and what the followers show of the identities' posts."""
    return (
        f"devices: {_int(_get(m, 'devices.identities'))} identities, "
        f"{_int(_get(m, 'devices.devices_paired'))} devices paired, "
        f"{_int(_get(m, 'devices.revocations'))} revoked, {_int(_get(m, 'devices.rotations'))} rotated, "
        f"{_int(_get(m, 'devices.recoveries'))} recovered; posts shown "
        f"{_share(m, 'devices.delivery.ratio', 'devices.delivery.expected')}, "
        f"the thief's {_int(_get(m, 'devices.thief_posts_shown'))} times"
    )


def _devices_lines(sc: Scenario, m: dict[str, Any]) -> list[str]:
    """Identities with devices (`metrics.devices`): the events, delivery, and time to learn."""
    d = sc.devices
    lines = [
        f"{d.identities} identities get {d.devices} more device(s) each at {d.pair_at:g} s; "
        f"{d.revocations} revoke one at {d.revoke_at:g} s, {d.rotations} rotate their root at "
        f"{d.rotate_at:g} s, {d.thefts} have it stolen at {d.steal_at:g} s and recover at "
        f"{d.recover_at:g} s; followers look key events up every {d.keyevent_poll:g} s.",
        "",
        _devices_text(m) + f" ({_int(_get(m, 'devices.delivery.delivered'))}/"
        f"{_int(_get(m, 'devices.delivery.expected'))} follower/post pairs; the thief made "
        f"{_int(_get(m, 'devices.thief_posts'))} posts).",
        "",
        "| held by every live follower after | p50 | max |",
        "|---|---:|---:|",
    ]
    for kind in ("revocation", "rotation", "recovery"):
        lines.append(
            f"| {kind} | {_secs(_get(m, f'devices.held_after_s.{kind}.p50'))} | "
            f"{_secs(_get(m, f'devices.held_after_s.{kind}.max'))} |"
        )
    return lines


def _hostile_lines(m: dict[str, Any]) -> list[str]:
    """What the attackers sent, the victims' lookups, and the resource maxima (`metrics.hostile`)."""
    h = m["hostile"]
    lines = [_hostile_text(m) + ".", "", "| attack | sent |", "|---|---|"]
    for kind, counts in h["attackers"].items():
        lines.append(f"| {kind} | " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + " |")
    lines += ["", "| resource (most one honest node held) | value | node |", "|---|---:|---:|"]
    for name, top in h["resources_max"].items():
        lines.append(f"| {name.replace('_', ' ')} | {top['value']:,} | {top['node']} |")
    by_victim = ", ".join(f"node {v}: {ok}/{n}" for v, (n, ok) in h["lookups"]["by_victim"].items())
    lines += ["", f"Lookups of censored victims: {by_victim or 'none'}."]
    if h["core_exception"]:
        lines += ["", f"A core raised: `{h['core_exception']}`."]
    return lines


def _fault_text(f: Fault) -> str:
    if f.kind == "crash":
        back = f"restart after {f.restart_after:g} s" if f.restart_after else "no restart"
        return f"crash of {f.fraction:.0%} of honest nodes at {f.at:g} s, {back}"
    if f.kind == "partition":
        return f"partition ({f.shape}) {f.at:g}-{f.end:g} s"
    if f.kind == "churn":
        return (
            f"churn of {f.fraction:.0%} of honest nodes {f.at:g}-{f.end:g} s "
            f"(sessions ~{f.session_mean:g} s, downtime ~{f.downtime_mean:g} s)"
        )
    if f.kind == "loss":
        return f"extra loss {f.rate:.0%} {f.at:g}-{f.end:g} s"
    return f"{f.kind} {f.at:g}-{f.end:g} s"


def _oracles_run(result: Result) -> str:
    sc = result.scenario
    if sc.converge_by > sc.duration:
        run = (
            f"validity, prefix consistency; convergence not checked: its deadline, "
            f"{sc.converge_by:g} s, is after the end of the run"
        )
    else:
        run = "validity, prefix consistency, convergence"
    if sc.attacks:
        e = sc.expect
        checked = [
            name
            for name, on in (
                ("delivery", e.delivery_ratio),
                ("lookup", e.lookup_success),
                ("victim lookup", e.victim_lookup_success),
                ("resources", any(getattr(e, b) != UNCHECKED for b in e.BOUNDS)),
            )
            if on
        ]
        run += "; under attack: " + ", ".join([*checked, "core exception"])
    if reliability.checked(sc):
        run += "; reliability: " + ", ".join(reliability.checked(sc))
    if "dms" in result.metrics:
        run += "; direct messages: dm duplicate, dm privacy"
    if "devices" in result.metrics:
        run += "; devices: device cut, device delivery, device fork, device agreement"
    return run


def _oracle_text(result: Result) -> str:
    if result.ok:
        return f"oracles: ok ({_oracles_run(result)})"
    first = result.violations[0]
    return (
        f"oracles: {len(result.violations)} violation(s); first at t={first.time:g} s "
        f"[{first.oracle}] {first.detail}"
    )


def _oracle_lines(result: Result) -> list[str]:
    if result.ok:
        return [f"**OK**: no oracle fired ({_oracles_run(result)})."]
    counts = Counter(v.oracle for v in result.violations)
    first = result.violations[0]
    return [
        f"**FAILED**: {len(result.violations)} violation(s): "
        + ", ".join(f"{oracle} {n}" for oracle, n in sorted(counts.items()))
        + ".",
        "",
        f"First: t = {first.time:g} s, **{first.oracle}**: {first.detail}",
    ]


def _amplification_lines(result: Result) -> list[str]:
    m = result.metrics
    lines = [
        f"{_int(_get(m, 'amplification.entries_received'))} entries newly stored by the nodes, and "
        f"{_int(_get(m, 'amplification.duplicates'))} copies received of entries already held: "
        f"**{_num(_get(m, 'amplification.duplicates_per_delivery'))} duplicates per delivery**.",
    ]
    if not result.compare:
        return lines
    names = sorted(result.compare)
    rows = [
        ("duplicates per delivery", "amplification.duplicates_per_delivery", _num),
        ("duplicates", "amplification.duplicates", _int),
        ("entries received", "amplification.entries_received", _int),
        ("bytes sent", "traffic.bytes_total", _bytes),
        ("bytes per node (mean)", "traffic.bytes_per_node.mean", _bytes),
        ("messages per node (mean)", "traffic.messages_per_node.mean", _num),
        ("delivery ratio", "delivery.ratio", _pct),
        ("latency p50", "delivery.latency_s.p50", _secs),
        ("latency p99", "delivery.latency_s.p99", _secs),
    ]
    me = result.scenario.protocol
    header = f"| metric | {me} | " + " | ".join(f"{n} | {n} / {me}" for n in names) + " |"
    lines += [
        "",
        "The same scenario and seed, side by side:",
        "",
        header,
        "|---|" + "---:|" * (1 + 2 * len(names)),
    ]
    for label, path, fmt in rows:
        ours = _get(m, path)
        cells = [fmt(ours)]
        for name in names:
            theirs = _get(result.compare[name], path)
            cells += [fmt(theirs), _times(theirs, ours)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _traffic_lines(m: dict[str, Any]) -> list[str]:
    lines = [
        f"{_bytes(_get(m, 'traffic.bytes_total'))} sent in all "
        f"({_int(_get(m, 'traffic.bytes_total'))} bytes).",
        "",
        "| per node | mean | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
        "| bytes | "
        + " | ".join(_bytes(_get(m, f"traffic.bytes_per_node.{k}")) for k in ("mean", "p50", "p99", "max"))
        + " |",
        f"| messages | {_num(_get(m, 'traffic.messages_per_node.mean'))} | | | "
        f"{_int(_get(m, 'traffic.messages_per_node.max'))} |",
    ]
    network = _get(m, "traffic.network") or {}
    if network:
        lines += ["", "Network: " + ", ".join(f"{k} {v:,}" for k, v in sorted(network.items())) + "."]
    return lines


def _convergence_text(m: dict[str, Any]) -> str:
    since, after = _get(m, "convergence.since"), _get(m, "convergence.converged_after_s")
    when = "n/a" if since is None else f"{since:g} s"
    if after is None:
        return f"convergence: not reached by the end of the run (faults and posting over at {when})"
    return f"converged {after:.1f} s after faults and posting ended (at {when})"


def _refused_lines(m: dict[str, Any]) -> list[str]:
    refused = _get(m, "refused") or {}
    forks = f"Forked feeds detected by honest nodes: {_int(_get(m, 'forks_detected_by_honest_nodes'))}."
    if not refused:
        return ["No input was refused.", "", forks]
    return [
        "| reason | count |",
        "|---|---:|",
        *(f"| {reason} | {count:,} |" for reason, count in sorted(refused.items())),
        "",
        forks,
    ]


# ------------------------------------------------------------ plots and latency samples


def _latency_csv(path: Path, latencies: Sequence[float]) -> Path:
    """One delivery latency (seconds) per line under a header: the CDF's data, for any tool."""
    path.write_text("latency_s\n" + "".join(f"{value!r}\n" for value in latencies))
    return path


def _within_series(m: dict[str, Any]) -> list[tuple[str, list[tuple[float, list[float]]]]]:
    """(label, [(bucket start, share)]) for each deadline, then eventual delivery."""

    def shares(rows: list[list[Any]]) -> list[tuple[float, list[float]]]:
        return [(float(x), [got / expected]) for x, expected, got in rows if expected]

    series = [(f"within {d} s", shares(m["delivery"]["within"][d]["over_time"])) for d in _deadlines(m)]
    return [*series, ("by the end of the run", shares(_get(m, "delivery.over_time") or []))]


def _deadlines(m: dict[str, Any]) -> list[str]:
    """The keys of ``delivery.within``, shortest deadline first (JSON sorts "120" before "30")."""
    return sorted(_get(m, "delivery.within") or {}, key=int)


def _windows(m: dict[str, Any]) -> list[tuple[float, float, str]]:
    return [(float(a), float(b), str(kind)) for a, b, kind in _get(m, "fault_windows") or []]


def _plots(result: Result, out: Path) -> list[Path]:
    m, sc = result.metrics, result.scenario
    runs = [(sc.protocol, result.latencies), *sorted(result.compare_latencies.items())]
    return [
        shares_plot(
            out / "delivery_within.png",
            _within_series(m),
            windows=_windows(m),
            duration=sc.duration,
            bucket=max(1.0, sc.duration / 60),
            title=PLOTS["delivery_within.png"],
        ),
        latency_cdf_plot(out / "latency_cdf.png", runs, title=PLOTS["latency_cdf.png"]),
        hops_plot(out / "hops.png", _get(m, "dht.hops_histogram") or {}, title=PLOTS["hops.png"]),
    ]


def _plot_lines(result: Result) -> list[str]:
    """The figures embedded in report.md, each with a caption that says what it shows."""
    m, sc = result.metrics, result.scenario
    bucket = max(1.0, sc.duration / 60)
    shares = _within_text(m)
    captions = {
        "delivery_within.png": (
            f"Share of (post, honest follower) pairs delivered within 30 s and within 120 s of the post, "
            f"and by the end of the run, by the time the post was made (buckets of {bucket:.3g} s; posts "
            f"whose deadline falls after the end are left out). "
            + (
                "Shaded: the fault windows; each is also a bar along the top, labelled with its kind "
                "and times (a dotted line is an instant fault). "
                if _windows(m)
                else "No fault in this run. "
            )
            + f"Over the whole run: {shares}."
        ),
        "latency_cdf.png": (
            f"Empirical CDF of every delivery's latency ({len(result.latencies):,} deliveries"
            + "".join(f"; {name}: {len(v):,}" for name, v in sorted(result.compare_latencies.items()))
            + f"), log time axis. The samples are in `{LATENCIES_FILE}`."
        ),
        "hops.png": (
            f"Sequential referrals (hops) of each successful DHT peer-record lookup "
            f"({_int(_get(m, 'dht.succeeded'))} lookups)."
        ),
    }
    lines: list[str] = []
    for name, title in PLOTS.items():
        lines += [f"![{title}]({name})", "", f"*{captions[name]}*", ""]
    return lines[:-1]


# ============================================================ sweeps


def write_sweep(results: Sequence[Result], out_dir: Path | str) -> list[Path]:
    """Aggregate runs of one scenario over seeds into sweep.json and sweep.md; return their paths.

    Raises ValueError for no results, or results of scenarios that differ in more than the seed.
    """
    if not results:
        raise ValueError("a sweep needs at least one result")
    runs = sorted(results, key=lambda r: r.scenario.seed)
    base = dataclasses.replace(runs[0].scenario, seed=0)
    if any(dataclasses.replace(r.scenario, seed=0) != base for r in runs):
        raise ValueError("a sweep aggregates one scenario: the results differ in more than the seed")
    doc = _sweep_document(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / SWEEP_JSON, out / SWEEP_MD
    json_path.write_text(_dumps(doc))
    md_path.write_text(_sweep_markdown(runs[0].scenario, doc))
    return [json_path, md_path, *_sweep_plots(runs, doc, out)]


def _sweep_document(runs: Sequence[Result]) -> dict[str, Any]:
    """What sweep.json holds, for runs sorted by seed."""
    seeds = [r.scenario.seed for r in runs]
    per_seed = [dict(_run_leaves(r)) for r in runs]
    # This run's metrics first, then the comparison runs', each alphabetically.
    paths = sorted(
        {path for leaves in per_seed for path in leaves}, key=lambda p: (p.startswith("compare."), p)
    )
    scenario = _scenario_echo(runs[0].scenario)
    del scenario["seed"]
    return {
        "scenario": scenario,
        "seeds": seeds,
        "worst_rule": WORST_RULE,
        "metrics": {
            path: _aggregate(path, seeds, [leaves.get(path, 0) for leaves in per_seed]) for path in paths
        },
        "violations": [
            {
                "seed": r.scenario.seed,
                "count": len(r.violations),
                "first": dataclasses.asdict(r.violations[0]),
            }
            for r in runs
            if r.violations
        ],
    }


def _run_leaves(result: Result) -> Iterator[tuple[str, float | None]]:
    yield from _leaves(result.metrics, "")
    for name, metrics in sorted(result.compare.items()):
        yield from _leaves(metrics, f"compare.{name}")
    yield "oracles.violations", len(result.violations)


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, float | None]]:
    """Numeric (and null) leaves under dotted paths; lists, strings and booleans are skipped."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        yield prefix, value


#: Leaves and path parts that say which direction of a metric is better (see `WORST_RULE`).
_HIGHER_BETTER_PARTS = ("ratio", "success")
_LOWER_BETTER_LEAVES = frozenset(
    {"duplicates", "duplicates_per_delivery", "hops_mean", "converged_after_s", "violations"}
)
_LOWER_BETTER_PARTS = frozenset(
    {"latency_s", "bytes_total", "bytes_per_node", "messages_per_node", "refused", "held_after_s",
     "resources_max"}
)  # fmt: skip


def better(path: str) -> str | None:
    """ "higher" or "lower" when one direction of this metric is better; None for a plain count.

    A count that describes the workload (posts, expected deliveries, lookups, events) is
    neither better nor worse when it is larger, so it has no worst seed.
    """
    parts = path.split(".")
    leaf = parts[-1]
    if any(word in leaf for word in _HIGHER_BETTER_PARTS) or leaf.startswith("within_"):
        return "higher"
    if leaf in _LOWER_BETTER_LEAVES or _LOWER_BETTER_PARTS.intersection(parts):
        return "lower"
    return None


def lower_is_worse(path: str) -> bool:
    """Whether a low value of this metric is the bad direction (see `WORST_RULE`)."""
    return better(path) == "higher"


def _aggregate(path: str, seeds: list[int], values: list[float | None]) -> dict[str, Any]:
    direction = better(path)
    low_bad = direction == "higher"
    null = -math.inf if low_bad else math.inf  # a null (never) ranks as the worst
    ranked = [null if v is None else float(v) for v in values]

    def at(q: float) -> float | None:
        value = percentile(ranked, q)
        return values[ranked.index(value)] if math.isfinite(value) else None

    known = [v for v in values if v is not None]
    worst = (min if low_bad else max)(range(len(seeds)), key=lambda i: ranked[i])
    every_same = len(set(ranked)) == 1
    return {
        "p50": at(50),
        "p99": at(99),
        "min": min(known, default=None),
        "max": max(known, default=None),
        "worst": None if direction is None else values[worst],
        "worst_seed": None if direction is None or every_same else seeds[worst],
        "worse": None if direction is None else ("lower" if low_bad else "higher"),
        "values": values,
    }


def _sweep_markdown(scenario: Scenario, doc: dict[str, Any]) -> str:
    seeds = doc["seeds"]
    out = [f"# Sweep: {scenario.name}, {len(seeds)} seeds", ""]
    if scenario.description:
        out += [scenario.description, ""]
    lines = _scenario_lines(scenario)
    out += ["## Scenario", "", f"- **Seeds**: {', '.join(map(str, seeds))}", *lines[1:], ""]
    out += ["## Oracles", ""]
    violations = doc["violations"]
    if not violations:
        out += [f"**OK** on every seed ({len(seeds)} of {len(seeds)}).", ""]
    else:
        out += [
            f"**FAILED** on {len(violations)} of {len(seeds)} seeds.",
            "",
            "| seed | violations | first: time (s) | oracle | detail |",
            "|---:|---:|---:|---|---|",
            *(
                f"| {v['seed']} | {v['count']} | {v['first']['time']:g} | {v['first']['oracle']} | "
                f"{v['first']['detail']} |"
                for v in violations
            ),
            "",
        ]
    out += ["## Spread across seeds", ""]
    for name, (title, caption) in SWEEP_PLOTS.items():
        out += [f"![{title}]({name})", "", f"*{caption}*", ""]
    out += [
        "## Metrics",
        "",
        "Nearest-rank percentiles over the seeds, the lowest and highest value, and the worst seed. "
        + WORST_RULE,
        "",
        "| metric | better | p50 | p99 | min | max | worst seed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for path, agg in doc["metrics"].items():
        if agg["worse"] is None:
            seed, direction = "— (a count)", ""
        else:
            seed = "all equal" if agg["worst_seed"] is None else str(agg["worst_seed"])
            direction = "lower" if agg["worse"] == "higher" else "higher"
        cells = [direction, *(_cell(agg[k]) for k in ("p50", "p99", "min", "max")), seed]
        out.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


#: The metrics shown in sweep_spread.png, one panel each: (dotted path, label).
SPREAD_METRICS = (
    ("delivery.ratio", "delivered by the end"),
    ("delivery.within_30s", "delivered within 30 s"),
    ("delivery.within_120s", "delivered within 120 s"),
    ("delivery.latency_s.p50", "latency p50 (s)"),
    ("delivery.latency_s.p99", "latency p99 (s)"),
    ("amplification.duplicates_per_delivery", "duplicates per delivery"),
    ("dht.success_ratio", "DHT lookups succeeded"),
    ("traffic.bytes_per_node.mean", "bytes sent per node (mean)"),
)


def _sweep_plots(runs: Sequence[Result], doc: dict[str, Any], out: Path) -> list[Path]:
    """sweep_spread.png (each metric, each seed a dot) and sweep_within.png (bands across seeds)."""
    metrics = doc["metrics"]
    panels = [(label, metrics[path]["values"]) for path, label in SPREAD_METRICS if path in metrics]
    series = []
    for deadline in _deadlines(runs[0].metrics):
        by_bucket: dict[float, list[float]] = {}
        for run in runs:
            rows = _get(run.metrics, f"delivery.within.{deadline}.over_time") or []
            for x, expected, got in rows:
                if expected:
                    by_bucket.setdefault(float(x), []).append(got / expected)
        series.append((f"within {deadline} s", sorted(by_bucket.items())))
    names = list(SWEEP_PLOTS)
    return [
        spread_plot(out / names[0], panels, seeds=doc["seeds"], title=SWEEP_PLOTS[names[0]][0]),
        shares_plot(
            out / names[1],
            series,
            windows=_windows(runs[0].metrics),
            duration=runs[0].scenario.duration,
            bucket=max(1.0, runs[0].scenario.duration / 60),
            title=SWEEP_PLOTS[names[1]][0],
        ),
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.6g}"


__all__ = [
    "WORST_RULE",
    "better",
    "lower_is_worse",
    "metrics_document",
    "summary",
    "write_run",
    "write_sweep",
]
