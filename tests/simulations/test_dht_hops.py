"""DHT lookups in the simulator against Kademlia's theory: every lookup succeeds, hops grow like log N.

On a fault-free network of N nodes (no posts, no follows: only the DHT
works), each honest node resolves random peers' records.  Kademlia (paper
section 2.3) reaches one of the k nodes holding a key in O(log N) sequential
steps, so the mean hop count fitted against ln N has a positive slope and a
good fit, and no lookup fails.  The bound on the slope is log2 growth (one
bit of distance per hop, the worst case of the paper's analysis).

Joins dominate the cost (every node bootstraps and refreshes its buckets), so
the runs are as short as the lookups allow: they start 10 s after the last
join.  Timings on the 2-core development machine: N=100 about 5 s, N=300
about 40 s, N=1000 about 5 minutes: the N=300 and N=1000 cases and the fit
are marked ``soak`` and left out of the default run (``pytest -m soak`` runs
them; the default run looks up records among 200 nodes in
tests/simulations/test_dht_model.py and tests/dht/test_network.py).
"""

from __future__ import annotations

import functools
import math

import pytest

from simulations.scenario import Scenario
from simulations.simulation import Result, run_scenario

#: Lookups wanted over the whole run, whatever N (honest nodes share them).
LOOKUPS = 200
#: Seconds of lookups after the last join (+10 s) and before the end.
WINDOW = 40.0


def join_over(n: int) -> float:
    return max(20.0, n / 30.0)


@functools.cache
def run(n: int) -> Result:
    joins = join_over(n)
    per_node_hour = LOOKUPS / n / WINDOW * 3600.0
    scenario = Scenario.from_dict(
        {
            "name": f"dht-hops-{n}",
            "seed": 1,
            "nodes": n,
            "duration": joins + 10.0 + WINDOW,
            "network": {"latency": {"kind": "lognormal", "median_ms": 40.0, "sigma": 0.4}},
            "workload": {
                "follows": 0,
                "posts_per_hour": 0.0,
                "join_over": joins,
                "lookups_per_hour": per_node_hour,
            },
        }
    )
    return run_scenario(scenario)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against xs, and the coefficient of determination."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx
    return slope, (sxy * sxy / (sxx * syy) if syy else 1.0)


@pytest.mark.parametrize(
    "n", [100, pytest.param(300, marks=pytest.mark.soak), pytest.param(1000, marks=pytest.mark.soak)]
)
def test_every_lookup_succeeds_on_a_fault_free_network(n: int) -> None:
    result = run(n)
    assert result.ok, result.violations
    dht = result.metrics["dht"]
    assert dht["lookups"] >= 100
    assert dht["success_ratio"] == 1.0, dht
    assert dht["hops_mean"] <= math.log2(n), dht


@pytest.mark.soak
def test_hops_grow_like_log_n() -> None:
    sizes = [100, 300, 1000]
    hops = [run(n).metrics["dht"]["hops_mean"] for n in sizes]
    slope, r2 = fit([math.log(n) for n in sizes], hops)
    assert 0.0 < slope <= 1.0 / math.log(2), (sizes, hops, slope)
    assert r2 >= 0.8, (sizes, hops, r2)
    assert hops == sorted(hops), (sizes, hops)
