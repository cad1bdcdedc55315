"""Attackers from outside (`simulations.adversary`): each attack reaches its victims, the
hostile oracles read the nodes' real state, and a hostile run replays byte for byte.

The assertions are about what the attackers *did* and what the honest nodes
*received* (spied on at the network's delivery to their endpoints), not
about how today's node copes: the defenses change what a node keeps, never
what reaches it.  Runs are small (8 nodes, 60 s) and cached per scenario.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from typing import Any

import pytest

from dht.ids import ID_BITS, distance, node_id_from_public_key
from identity.records import peer_key
from p2pblog.node import NodeCore
from simulations.adversary import Censor, Exhauster, Flooder, Poisoner, attack_host
from simulations.node import SimNode
from simulations.report import metrics_document
from simulations.scenario import Scenario, ScenarioError
from simulations.simulation import Hooks, Result, Simulation

SMALL = """
nodes = 8
duration = 60.0
seed = 3
converge_within = 20.0
[workload]
join_over = 5.0
follows = 3
posts_per_hour = 120.0
post_from = 10.0
post_until = 35.0
lookups_per_hour = 120.0
"""

ATTACKS = {
    "flood": '[[attacks]]\nkind = "flood"\nat = 10.0\nrate = 10.0\nkeys = 3\n',
    "poison": '[[attacks]]\nkind = "poison"\nat = 10.0\nrate = 10.0\nports = 500\n',
    "exhaust": (
        '[[attacks]]\nkind = "exhaust"\nat = 10.0\nrate = 3.0\nconnections = 10\nmode = "idle"\n'
        "hosts = 254\ntargets = 0.2\n"
    ),
    "silent": '[[attacks]]\nkind = "exhaust"\nat = 10.0\nrate = 5.0\nconnections = 20\ntargets = 0.2\n',
    "censor": '[[attacks]]\nkind = "censor"\nat = 0.0\nvictims = 1\nnodes = 6\nprefix_bits = 20\n',
}


@dataclasses.dataclass
class Spied:
    sim: Simulation
    result: Result
    #: (honest node, source address) of every datagram and accepted connection delivered.
    datagrams: list[tuple[int, tuple[str, int]]]
    accepted: list[tuple[int, tuple[str, int]]]


def spy(node: SimNode, datagrams: list[Any], accepted: list[Any]) -> None:
    """Note what the network delivers to node's endpoint, then deliver it."""
    endpoint = node.endpoint
    receive, accept = endpoint.receive_datagram, endpoint.connection_accepted

    def receive_datagram(data: bytes, addr: tuple[str, int]) -> None:
        datagrams.append((node.index, addr))
        receive(data, addr)

    def connection_accepted(addr: tuple[str, int]) -> int:
        accepted.append((node.index, addr))
        return accept(addr)

    endpoint.receive_datagram = receive_datagram  # type: ignore[method-assign]
    endpoint.connection_accepted = connection_accepted  # type: ignore[method-assign]


def scenario(*kinds: str, extra: str = "") -> Scenario:
    return Scenario.from_toml(SMALL + "".join(ATTACKS[k] for k in kinds) + extra, default_name="hostile-test")


@functools.cache
def run(*kinds: str) -> Spied:
    datagrams: list[Any] = []
    accepted: list[Any] = []
    sim = Simulation(scenario(*kinds), hooks=Hooks(on_node=lambda n: spy(n, datagrams, accepted)))
    return Spied(sim, sim.run(), datagrams, accepted)


def hosts_of(sim: Simulation, cls: type) -> list[Any]:
    return [h for h in sim.attackers if isinstance(h, cls)]


# ============================================================ each attack reaches its victims


def test_flood_requests_are_validly_signed_and_received_by_the_targets() -> None:
    spied = run("flood")
    (flooder,) = hosts_of(spied.sim, Flooder)
    assert flooder.sent["add_provider"] > 100 and flooder.sent["store"] > 100
    assert len(flooder.keys) == 3 and len(flooder.flooded) == sum(flooder.sent.values())
    from_flooder = sum(1 for _, addr in spied.datagrams if addr == flooder.addr)
    assert from_flooder == sum(flooder.sent.values())  # a lossless network: every one arrives
    received: Counter[str] = Counter()
    for i in spied.sim.honest:
        core = spied.sim.nodes[i].core
        assert core is not None
        received.update(core.dht.stats)
    # Each request was read (counted by name) or dropped by the node's own rule, never lost.
    handled = received["rx.request.p2pb_add_provider"] + received["rx.request.store"]
    assert handled + received["drop.rate limited"] >= from_flooder
    # The records are valid: what a node does not refuse for its rate, it refuses for nothing else.
    assert received["misbehaved.invalid provider value"] == 0
    assert received["misbehaved.invalid stored value"] == 0


def test_poisoning_arrives_from_rotating_ports_of_one_host_and_never_answers() -> None:
    spied = run("poison")
    (poisoner,) = hosts_of(spied.sim, Poisoner)
    sources = [addr for _, addr in spied.datagrams if addr[0] == poisoner.host]
    assert len(sources) == poisoner.sent["ping"] + poisoner.sent["find_node"] > 300
    assert len({port for _, port in sources}) > 200  # rotating ports on one host
    assert len({i for i, addr in spied.datagrams if addr[0] == poisoner.host}) == len(spied.sim.honest)
    assert set(poisoner.sent) == {"ping", "find_node"}  # it sent requests only: it never answered


def test_exhaustion_opens_connections_from_one_slash24_and_completes_handshakes() -> None:
    spied = run("exhaust")
    (exhauster,) = hosts_of(spied.sim, Exhauster)
    hosts = {addr[0] for _, addr in spied.accepted if addr[0].startswith(attack_host(0, 0).rsplit(".", 1)[0])}
    assert len(hosts) > 20  # many hosts ...
    assert {h.rsplit(".", 1)[0] for h in hosts} == {"10.66.0"}  # ... of one /24
    assert exhauster.sent["dial"] > 40
    assert exhauster.handshakes > 0  # "idle": the real Noise handshake, then nothing


def test_silent_exhaustion_is_accepted_and_never_sends_a_byte() -> None:
    spied = run("silent")
    (exhauster,) = hosts_of(spied.sim, Exhauster)
    from_attacker = [i for i, addr in spied.accepted if addr[0] == exhauster.host]
    assert len(from_attacker) > 20
    assert set(from_attacker) <= set(exhauster.targets) and len(exhauster.targets) == 2
    assert exhauster.handshakes == 0 and "handshake_bytes" not in exhauster.sent
    assert spied.sim.network.traffic[exhauster.index].stream_bytes == 0


def test_censors_sit_next_to_the_victims_key_and_answer_its_lookups() -> None:
    spied = run("censor")
    censors = hosts_of(spied.sim, Censor)
    (victim,) = spied.sim.victims
    key = peer_key(spied.sim.nodes[victim].identity.public_key)
    assert len(censors) == 6
    for censor in censors:
        assert censor.key == key and distance(censor.node_id, key).bit_length() <= ID_BITS - 20
    honest_ids = [node_id_from_public_key(spied.sim.nodes[i].identity.public_key) for i in spied.sim.honest]
    nearest_honest = min(distance(n, key) for n in honest_ids)
    assert all(distance(c.node_id, key) < nearest_honest for c in censors)
    answers: Counter[str] = Counter()
    for censor in censors:
        answers.update(censor.answers)
    assert sum(answers.values()) > 0  # FIND_VALUE for the key reached them
    assert set(answers) <= {"not_found", "closer", "garbage", "forged", "stale"}
    lookups = spied.result.metrics["hostile"]["lookups"]
    assert lookups["victims"] == [victim] and lookups["victim_lookups"] > 0


# ============================================================ oracles from the nodes' state


def test_resource_maxima_are_the_cores_own_counts() -> None:
    spied = run("flood", "poison")
    sim = spied.sim
    maxima = spied.result.metrics["hostile"]["resources_max"]
    silent = {h.host for h in sim.attackers}
    for i in sim.honest:
        core = sim.nodes[i].core
        assert core is not None
        # The last sample ran at the end of the run: every node's final state is bounded by the maxima.
        assert len(core.dht.table) <= maxima["table_contacts"]["value"]
        assert len(core.dht.records) <= maxima["records"]["value"]
        assert len(core.dht.providers) <= maxima["provider_values"]["value"]
        unanswered = sum(1 for c in core.dht.table.contacts() if c.addr[0] in silent)
        assert unanswered <= maxima["unanswered_contacts"]["value"]
    top = maxima["table_contacts"]
    assert top["node"] in sim.honest and top["value"] > 0


def test_a_breached_bound_is_a_resources_violation_naming_node_and_bound() -> None:
    result = Simulation(scenario("silent", extra="[expect]\nattacker_connections = 0\n")).run()
    breaches = [v for v in result.violations if v.oracle == "resources"]
    assert len(breaches) == 1  # once per resource, at its first breach
    assert "attacker connections (bound 0)" in breaches[0].detail


def test_an_exception_from_a_core_is_an_oracle_violation_that_ends_the_run() -> None:
    class Brittle(NodeCore):
        def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
            if addr[0].startswith("10.66."):
                raise KeyError("a stranger's datagram")
            super().receive_datagram(data, addr, now)

    def make_core(node: SimNode, rng: Any, now: float) -> NodeCore | None:
        if node.index != 1:
            return None
        return Brittle(node.identity, rng, now, store=node.store, random_bytes=rng.randbytes)

    result = Simulation(scenario("poison"), hooks=Hooks(make_core=make_core)).run()
    (violation,) = [v for v in result.violations if v.oracle == "core exception"]
    assert "KeyError" in violation.detail and "seed 3" in violation.detail
    assert 10.0 <= violation.time < 60.0
    assert result.metrics["hostile"]["core_exception"].startswith("KeyError")


# ============================================================ determinism and format


def test_a_hostile_run_is_byte_identical_for_one_seed() -> None:
    first = metrics_document(run("flood", "poison").result)  # spying changes nothing
    again = metrics_document(Simulation(scenario("flood", "poison")).run())
    assert first == again
    other = Simulation(dataclasses.replace(scenario("flood", "poison"), seed=4)).run()
    assert metrics_document(other)["metrics"] != first["metrics"]


def test_a_run_under_every_attack_is_byte_identical_for_one_seed() -> None:
    all_kinds = ("flood", "poison", "exhaust", "censor")
    first = metrics_document(Simulation(scenario(*all_kinds)).run())
    again = metrics_document(Simulation(scenario(*all_kinds)).run())
    assert first == again
    assert first["metrics"]["hostile"]["attackers"].keys() == {"flood", "poison", "exhaust", "censor"}


def test_a_scenario_without_attacks_echoes_no_attack_fields() -> None:
    spied = run()
    doc = metrics_document(spied.result)
    assert "attacks" not in doc["scenario"] and "expect" not in doc["scenario"]
    assert "hostile" not in doc["metrics"] and spied.sim.attackers == []
    assert len(spied.sim.network.nodes) == 8


def test_the_bundled_hostile_scenario_has_every_attack_and_oracle() -> None:
    sc = Scenario.load("hostile")
    assert {a.kind for a in sc.attacks} == {"flood", "poison", "exhaust", "censor"}
    assert sc.nodes <= 50 and sc.converge_by <= sc.duration
    assert sc.expect.delivery_ratio and sc.expect.lookup_success and sc.expect.victim_lookup_success
    assert sc.expect.unanswered_contacts == 0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[[attacks]]\nkind = "nuke"', "attacks[0].kind: one of flood, poison, exhaust, censor"),
        ("[[attacks]]\nrate = 1.0", "attacks[0].kind: required (flood, poison, exhaust, censor)"),
        ('[[attacks]]\nkind = "censor"\nanswer = "lie"', "attacks[0].answer: one of"),
        ('[[attacks]]\nkind = "exhaust"\nhosts = 300', "attacks[0].hosts: 1 .. 254"),
        ('[[attacks]]\nkind = "flood"\nrate = 0.0', "attacks[0].rate:"),
        ('[[attacks]]\nkind = "flood"\nratez = 1.0', "attacks[0].ratez: unknown field"),
        ("[expect]\ndelivery_ratio = 2.0", "expect.delivery_ratio: a fraction"),
        ("[expect]\nunanswered_contacts = -2", "expect.unanswered_contacts: must be >= 0"),
    ],
)
def test_a_bad_attack_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(field)):
        Scenario.from_toml(text)


def test_the_report_and_summary_show_the_attack(tmp_path: Any) -> None:
    from simulations.report import summary, write_run

    result = run("flood", "poison").result
    line = next(line for line in summary(result) if line.startswith("under attack:"))
    assert "flooded keys" in line and "unanswered contacts" in line
    write_run(result, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Under attack" in report and "| flood | add_provider" in report
    assert "under attack: resources, core exception" not in report  # no [expect]: only core exception
    assert "under attack: core exception" in report
