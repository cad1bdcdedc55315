"""The simulator's direct-message workload (`simulations.dms`): it delivers, holders deliver to
a recipient that was down, its oracles fire, and the same seed gives the same metrics.

Scenarios here are small (8 to 16 nodes) so that the module runs in seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from identity.sealed import dm_id
from p2pblog.events import DmStored
from p2pblog.replication import DmArrived
from p2pblog.store import DmRow
from simulations.scenario import Scenario, ScenarioError
from simulations.simulation import Simulation, run_scenario


def small(**dms: Any) -> Scenario:
    """Eight nodes, no faults, no posts; the ``[dms]`` table as given."""
    return Scenario.from_dict(
        {
            "name": "dm-small",
            "nodes": 8,
            "duration": 300.0,
            "workload": {"follows": 3, "posts_per_hour": 0.0, "lookups_per_hour": 0.0},
            "dms": dms,
        }
    )


def test_without_faults_every_dm_is_delivered_directly_and_quickly() -> None:
    result = run_scenario(small(per_hour=360.0, strangers=0.25, until=200.0))
    assert result.ok, result.violations
    dms = result.metrics["dms"]
    assert dms["sent"] >= 60  # 8 nodes, 360/h for 140 s: about 14 each
    assert dms["to_strangers"] > 0
    assert dms["delivered"] == dms["sent"]
    assert dms["ratio"] == 1.0
    assert dms["within_deadline"]["ratio"] == 1.0
    assert dms["latency_s"]["p99"] < 2.0  # one stamp, one round trip, no retries
    # Friends are connected (one follows the other): theirs go directly.  A stranger's sender
    # is not connected to its recipient at first, so it deposits the message with holders
    # while it dials, and a holder (a connected follower) may win the race.
    assert dms["delivered_via_holder"] <= dms["to_strangers"]
    assert dms["recipient_offline_at_send"]["sent"] == 0
    assert sum(dms["folders"].values()) == dms["sent"]
    assert dms["folders"]["requests"] > 0  # strangers' (and non-followers') messages
    assert dms["sender_states"] == {"delivered": dms["sent"]}
    assert dms["counters"]["dms.delivered"] == dms["sent"]


def pair(sim: Simulation) -> tuple[int, int]:
    """A recipient (not node 0) with at least two followers, and a sender that is neither."""
    recipient = next(i for i in range(1, len(sim.nodes)) if len(sim.followers[i]) >= 2)
    sender = next(i for i in range(1, len(sim.nodes)) if i != recipient)
    return sender, recipient


def test_a_holder_delivers_to_a_recipient_that_was_down_when_the_sender_is_gone() -> None:
    sim = Simulation(small())
    sender, recipient = pair(sim)
    engine = sim.engine
    engine.at(60.0, sim.nodes[recipient].crash)
    engine.at(70.0, lambda: sim.dms.send(sender, recipient))
    engine.at(110.0, sim.nodes[sender].crash)  # for good: only a holder can deliver now
    engine.at(150.0, lambda: sim._restart(recipient))
    result = sim.run()

    assert result.ok, result.violations
    dms = result.metrics["dms"]
    assert dms["sent"] == 1 and dms["delivered"] == 1
    assert dms["recipient_offline_at_send"] == {"sent": 1, "delivered": 1, "delivered_via_holder": 1}
    [(did, stored)] = sim.dms.stored.items()
    assert not stored.direct
    assert 150.0 <= stored.at < 200.0
    assert dms["latency_s"]["p50"] == pytest.approx(stored.at - 70.0)
    assert sim.dms.states[did].startswith("held by")  # the sender went down before hearing more
    assert dms["counters"]["dms.held_delivered"] >= 1
    # The recipient holds the text; the holders held only sealed bytes, and no longer.
    assert [
        row.id for row in sim.nodes[recipient].store.dm_thread(sim.nodes[sender].identity.public_key)
    ] == [did]
    assert all(not node.store.dm_held() for node in sim.nodes)


def test_while_down_a_sender_writes_into_its_store_and_sends_on_restart() -> None:
    sim = Simulation(small())
    sender, recipient = pair(sim)
    sim.engine.at(60.0, sim.nodes[sender].crash)
    sim.engine.at(70.0, lambda: sim.dms.send(sender, recipient))
    sim.engine.at(100.0, lambda: sim._restart(sender))
    result = sim.run()
    assert result.ok, result.violations
    dms = result.metrics["dms"]
    assert dms["sent_while_sender_offline"] == 1 and dms["delivered"] == 1
    assert 30.0 <= dms["latency_s"]["p50"] < 60.0  # on the restart at 100 s


def test_the_dm_oracles_fire() -> None:
    sim = Simulation(small(per_hour=30.0, until=150.0))
    assert sim.run().ok
    did, info = next(iter(sim.dms.sent.items()))
    recipient, other = sim.nodes[info.recipient], sim.nodes[(info.recipient + 1) % 8]
    if other.index == info.sender:
        other = sim.nodes[(info.recipient + 2) % 8]
    sender_key = sim.nodes[info.sender].identity.public_key
    sim.dms.on_event(recipient, DmStored(sender_key, did, "inbox"))
    assert [v.oracle for v in sim.violations] == ["dm duplicate"]
    sim.dms.on_event(other, DmStored(sender_key, did, "inbox"))
    assert [v.oracle for v in sim.violations][-1] == "dm privacy"
    sim.violations.clear()
    sim.dms.final_oracles()
    assert not sim.violations
    # A third node with the text of someone else's message.
    other.store.dm_add(DmRow(did, sender_key, "inbox", 1, 1, info.text, True, ""))
    sim.dms.final_oracles()
    assert [v.oracle for v in sim.violations] == ["dm privacy"]
    sim.violations.clear()
    # A message whose bytes carry its text in the clear, arriving at a holder.
    clear = b"sealed? " + info.text.encode()
    sim.dms.sent[dm_id(clear)] = replace(info, at=sim.engine.now)
    sim.dms.on_event(other, DmArrived(sender_key, recipient.identity.public_key, b"", b""))
    assert not sim.violations
    sim.dms.on_event(other, DmArrived(sender_key, recipient.identity.public_key, clear, b""))
    assert [v.oracle for v in sim.violations] == ["dm privacy"]


def test_dm_churn_reports_delivery_and_holders_under_churn() -> None:
    result = run_scenario(Scenario.load("dm-churn").with_overrides(nodes=16))
    assert result.ok, result.violations
    dms = result.metrics["dms"]
    assert dms["sent"] > 50
    assert dms["recipient_offline_at_send"]["sent"] > 0
    assert dms["delivered_via_holder"] > 0
    assert dms["ratio"] >= 0.95
    assert dms["within_deadline"]["ratio"] <= dms["ratio"]
    assert 0.0 < dms["latency_s"]["p50"] <= dms["latency_s"]["p99"] <= dms["latency_s"]["max"]


def test_same_seed_gives_identical_dm_metrics_and_another_seed_does_not() -> None:
    def metrics(seed: int) -> str:
        scenario = Scenario.load("dm-churn").with_overrides(seed=seed, nodes=10, duration=300.0)
        return json.dumps(run_scenario(scenario).metrics, sort_keys=True)

    first = metrics(1)
    assert json.loads(first)["dms"]["sent"] > 0
    assert metrics(1) == first
    assert metrics(2) != first


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[dms]\nper_hour = -1.0", "dms.per_hour: 0 .. 3600 per node, not -1"),
        ("[dms]\nstrangers = 2.0", "dms.strangers: a fraction 0 .. 1, not 2"),
        ("[dms]\nper_hour = 1.0\nstart = 900.0", "dms.start: below duration"),
        ("[dms]\nstart = 100.0\nuntil = 50.0", "dms.until: >= start (100)"),
        ("[dms]\ndeadline = 0.0", "dms.deadline: must be > 0"),
        ("[dms]\nrate = 3.0", "dms.rate: unknown field"),
    ],
)
def test_a_bad_dms_table_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ScenarioError, match=field.replace("(", r"\(").replace(")", r"\)")):
        Scenario.from_toml(text)


def test_without_dms_a_short_run_needs_no_dms_fields() -> None:
    assert Scenario.from_toml("duration = 30.0\n[workload]\npost_from = 0.0").dms.per_hour == 0.0
