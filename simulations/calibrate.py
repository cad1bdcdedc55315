"""Calibrate the DHT model against full runs: ``python -m simulations.calibrate``.

Theory of operation
-------------------
The model (`simulations.dhtmodel`) draws three things from data rather than
from guesses: how long each kind of query walks (and in how many hops), how
many of the available providers a providers search returns, and how many
DHT bytes and datagrams each kind of query costs the network.  This module
runs full-fidelity scenarios (default: ``baseline`` at 200 and 400 nodes,
the range the issue names) with a `DhtView` beside the real DHT, pools
their `DhtCensus`, and writes the quantiles to `CALIBRATION_FILE`:

* ``walk_s``: per kind, quantiles of the time from the command to its
  result event (a join's includes its bucket refreshes, paper 2.3);
* ``hops``: quantiles of the hops reported by gets and lookups;
* ``providers_ratio``: quantiles of *returned / available* per search,
  available being the providers the view held for the key from the
  searcher's side, at most ``want``;
* ``holders``: how many nodes answer a read of a record from their own
  store (the share of reads of an existing record answered at once, times
  the nodes): the k it was stored at and those cache stores and welcomes
  added.  Too few, and a node's author connection comes later than in full
  runs: it dials the providers it found first, holds more connections and
  receives more duplicates (0.47 instead of 0.27 per delivery at 200 nodes
  with k = 20 holders);
* ``bytes_per_query`` / ``datagrams_per_query``: per kind, the request
  bytes (datagrams) the querier sent for it, scaled so that their sum over
  the queries started equals every DHT datagram of the runs (answers,
  pings, retransmissions and verifications are thereby charged to the
  queries that cause them).

`p2pblog sim calibrate` runs the same.  The result is data under version
control; ``tests/simulations/test_dht_model.py`` checks that model runs still
agree with full runs within stated tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from simulations.dhtmodel import CALIBRATION_FILE, TIMED, Calibration, DhtCensus, quantiles
from simulations.scenario import Scenario

#: The calibration runs: (scenario, nodes, simulated seconds).
DEFAULT_RUNS: Final = (("baseline", 200, 600.0), ("baseline", 400, 600.0))


def calibrate(runs: Sequence[tuple[str, int, float]], seed: int = 1) -> Calibration:
    """Run each full scenario and pool what its DHT queries did."""
    from simulations.simulation import Simulation

    pooled = DhtCensus()
    total_bytes = total_datagrams = 0
    holders: list[float] = []
    for name, nodes, duration in runs:
        scenario = Scenario.load(name).with_overrides(seed=seed, nodes=nodes, duration=duration, dht="full")
        sim = Simulation(scenario, calibrate=True)
        sim.run()
        census = sim.dht_census
        for kind, times in census.walks.items():
            pooled.walks.setdefault(kind, array("d")).extend(times)
        for kind, hops in census.hops.items():
            pooled.hops.setdefault(kind, array("l")).extend(hops)
        pooled.providers_ratio.extend(census.providers_ratio)
        pooled.started.update(census.started)
        pooled.request_bytes.update(census.request_bytes)
        pooled.request_datagrams.update(census.request_datagrams)
        if census.gets_found:
            holders.append(len(census.walks.get("get_local", ())) / census.gets_found * scenario.nodes)
        traffic = sim.network.traffic[: scenario.nodes]
        total_bytes += sum(t.datagram_bytes for t in traffic)
        total_datagrams += sum(t.datagrams for t in traffic)
    source: dict[str, Any] = {
        "runs": [{"scenario": n, "nodes": k, "duration": d, "seed": seed} for n, k, d in runs],
        "command": "python -m simulations.calibrate",
        "queries": dict(sorted(pooled.started.items())),
    }
    return Calibration(
        walk_s={k: tuple(round(v, 6) for v in quantiles(pooled.walks.get(k, ()))) for k in TIMED},
        hops={k: tuple(float(h) for h in quantiles(pooled.hops.get(k, ()))) for k in ("get", "lookup")},
        providers_ratio=tuple(round(v, 6) for v in quantiles(pooled.providers_ratio)),
        bytes_per_query=_per_query(pooled.started, pooled.request_bytes, total_bytes),
        datagrams_per_query=_per_query(pooled.started, pooled.request_datagrams, total_datagrams),
        holders=round(sum(holders) / len(holders)) if holders else 20,
        source=source,
    )


def _per_query(started: Counter[str], sent: Counter[str], total: int) -> dict[str, float]:
    """Per kind, what the querier sent per query, scaled so the queries account for ``total``."""
    kinds = [k for k in started if k != "other" and started[k]]
    attributed = sum(sent[k] for k in kinds)
    scale = total / attributed if attributed else 0.0
    return {k: round(sent[k] / started[k] * scale, 3) for k in sorted(kinds)}


def parse_run(spec: str) -> tuple[str, int, float]:
    """``SCENARIO:NODES:SECONDS`` -> its parts; ValueError when it is not that."""
    name, nodes, seconds = spec.rsplit(":", 2)
    return name, int(nodes), float(seconds)


def write(calibration: Calibration, path: Path = CALIBRATION_FILE) -> None:
    path.write_text(json.dumps(calibration.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.calibrate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--run",
        action="append",
        metavar="SCENARIO:NODES:SECONDS",
        help="a full run to measure (repeatable; default: baseline:200:600 and baseline:400:600)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = parser.parse_args(argv)
    runs = [parse_run(spec) for spec in args.run] if args.run else list(DEFAULT_RUNS)
    write(calibrate(runs, args.seed), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
