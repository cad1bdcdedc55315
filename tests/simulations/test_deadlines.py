"""Delivery within the deadline: it shows an outage that eventual delivery hides.

A partition of two halves cuts followers off their authors for 100 s; every
post still arrives after the heal (eventual delivery stays 1.0 in every
bucket), but the share delivered within 30 s drops for the posts made inside
the window, and only there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from simulations.deadlines import WithinDeadlines
from simulations.network import Latency, LinkModel
from simulations.scenario import Fault, Scenario, Workload
from simulations.simulation import run_scenario

CUT_FROM, CUT_UNTIL = 120.0, 220.0

PARTITIONED = Scenario(
    name="deadline-test",
    nodes=16,
    duration=360.0,
    network=LinkModel(latency=Latency(kind="lognormal", median_ms=40.0, sigma=0.4)),
    workload=Workload(follows=5, posts_per_hour=90.0, post_until=300.0),
    faults=(Fault("partition", at=CUT_FROM, duration=CUT_UNTIL - CUT_FROM, shape="halves"),),
    converge_within=50.0,
)


def shares(rows: list[list[Any]], low: float, high: float) -> tuple[int, int]:
    """(expected, delivered) summed over the buckets that start in [low, high)."""
    inside = [(expected, got) for start, expected, got in rows if low <= start < high]
    return sum(e for e, _ in inside), sum(g for _, g in inside)


@pytest.fixture(scope="module")
def delivery() -> dict[str, Any]:
    result = run_scenario(dataclasses.replace(PARTITIONED, seed=3))
    assert result.ok, result.violations[:1]
    metrics: dict[str, Any] = result.metrics["delivery"]
    return metrics


def test_within_the_deadline_drops_inside_the_partition_only(delivery: dict[str, Any]) -> None:
    within = delivery["within"]["30"]["over_time"]
    before_expected, before_got = shares(within, 0.0, CUT_FROM - 30.0)
    # Posts made more than 30 s before the heal: their followers on the far side cannot have them in time.
    cut_expected, cut_got = shares(within, CUT_FROM, CUT_UNTIL - 30.0)
    after_expected, after_got = shares(within, CUT_UNTIL + 10.0, 400.0)
    assert before_expected > 20 and cut_expected > 20 and after_expected > 20
    assert before_got / before_expected >= 0.95
    assert cut_got / cut_expected <= 0.75  # about half the followers sit across the cut
    assert after_got / after_expected >= 0.95
    # Eventual delivery, bucket by bucket, never saw it: everything arrived after the heal.
    eventual_expected, eventual_got = shares(delivery["over_time"], CUT_FROM, CUT_UNTIL - 30.0)
    assert eventual_got == eventual_expected > 0
    assert delivery["ratio"] == 1.0 and delivery["within_30s"] < delivery["within_120s"] <= 1.0
    assert delivery["within_30s"] == round(
        delivery["within"]["30"]["delivered"] / delivery["within"]["30"]["expected"], 6
    )


def test_a_post_whose_deadline_is_after_the_end_is_not_judged() -> None:
    within = WithinDeadlines(bucket=10.0, duration=100.0, deadlines=(30, 120))
    within.add(5.0, [1.0, 29.9, None])  # judged for 30 s; 5 + 120 > 100: not for 120 s
    within.add(15.0, [30.0, 31.0])  # 30.0 is within, 31.0 is late
    within.add(80.0, [0.5])  # 80 + 30 > 100: judged by neither
    metrics = within.metrics()
    assert metrics["within"]["30"] == {
        "expected": 5,
        "delivered": 3,
        "over_time": [[0.0, 3, 2], [10.0, 2, 1]],
    }
    assert metrics["within"]["120"] == {"expected": 0, "delivered": 0, "over_time": []}
    assert metrics["within_30s"] == 0.6 and metrics["within_120s"] == 1.0  # nothing to judge: 1.0, like ratio
