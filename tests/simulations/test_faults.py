"""Faults and workloads that combine: overlapping partitions, churn with crashes,
offline authors who never got to join, and the counters of crashed nodes.

Small real simulations (every node a real NodeCore), each asserting what a
researcher reads off the run: who is up at the end, what the metrics count.
"""

from __future__ import annotations

from typing import Any

from p2pblog.replication import EntriesStored
from simulations.engine import Engine
from simulations.network import LinkModel, Network
from simulations.node import SimNode
from simulations.scenario import Scenario
from simulations.simulation import Hooks, Simulation, run_scenario


def simulate(toml: str) -> Simulation:
    sim = Simulation(Scenario.from_toml(toml, default_name="faults-test"))
    sim.run()
    return sim


class _Host:
    """A network endpoint that is up and ignores what it receives."""

    up = True

    def receive_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def connection_accepted(self, addr: tuple[str, int]) -> int:
        return 0

    def connection_opened(self, conn_id: int) -> None:
        pass

    def connection_failed(self, conn_id: int) -> None:
        pass

    def data_received(self, conn_id: int, data: bytes) -> None:
        pass

    def connection_lost(self, conn_id: int) -> None:
        pass


def test_overlapping_partitions_each_cut_until_their_own_heal() -> None:
    network = Network(Engine(seed=1), LinkModel())
    for _ in range(4):
        network.add(_Host())
    network.set_partition([[0, 1], [2, 3]], key="first")
    network.set_partition([[0, 2], [1, 3]], key="second")
    assert [network.connected(0, i) for i in (1, 2, 3)] == [False, False, False]
    network.set_partition(None, key="first")  # the second partition is still in force
    assert [network.connected(0, i) for i in (1, 2, 3)] == [False, True, False]
    network.set_partition(None, key="second")
    assert all(network.connected(0, i) for i in (1, 2, 3))


def test_a_bridge_node_talks_to_both_halves() -> None:
    network = Network(Engine(seed=1), LinkModel())
    for _ in range(3):
        network.add(_Host())
    network.set_partition([[0, 1], [2, 1]])
    assert network.connected(0, 1) and network.connected(1, 2) and not network.connected(0, 2)


def test_churn_of_every_honest_node_runs_and_ends_with_all_up() -> None:
    sim = simulate(
        "nodes = 10\nduration = 150.0\n[workload]\nfollows = 3\n"
        "[[faults]]\nkind = 'churn'\nat = 30.0\nduration = 40.0\nfraction = 1.0\n"
    )
    assert all(node.up for node in sim.nodes)
    assert all(node.incarnation >= 1 for node in sim.nodes)
    assert any(node.incarnation > 1 for node in sim.nodes[1:])  # churn did take them down


def test_churn_does_not_bring_back_nodes_a_crash_took_down_for_good() -> None:
    sim = simulate(
        "nodes = 10\nduration = 150.0\n[workload]\nfollows = 3\n"
        "[[faults]]\nkind = 'churn'\nat = 30.0\nduration = 60.0\nfraction = 0.5\n"
        "[[faults]]\nkind = 'crash'\nat = 40.0\nfraction = 1.0\n"
    )
    assert sim.down_for_good
    assert all(not sim.nodes[i].up for i in sim.down_for_good)
    assert sim.nodes[0].up  # the bootstrap node is spared by crashes and churn


def test_no_node_is_started_twice_without_a_crash_when_churn_begins_before_the_joins() -> None:
    restarted_while_up: list[int] = []

    def on_node(node: SimNode) -> None:
        start = node.start

        def guarded(seeds: list[tuple[str, int]]) -> None:
            if node.up:
                restarted_while_up.append(node.index)
            start(seeds)

        node.start = guarded  # type: ignore[method-assign]

    scenario = Scenario.from_toml(
        "nodes = 12\nduration = 150.0\n[workload]\nfollows = 3\njoin_over = 60.0\nposts_per_hour = 120.0\n"
        "[[faults]]\nkind = 'churn'\nat = 0.0\nduration = 80.0\nfraction = 1.0\nsession_mean = 5.0\n",
        default_name="early-churn",
    )
    result = run_scenario(scenario, hooks=Hooks(on_node=on_node))
    assert restarted_while_up == []
    assert result.metrics["posts"] > 0


def test_offline_authors_go_offline_even_if_their_turn_to_join_comes_later() -> None:
    # offline_at = 0: before any join; those authors never come online.
    sim = simulate("nodes = 10\nduration = 150.0\n[workload]\nfollows = 3\noffline_authors = 0.5\n")
    assert len(sim.offline_authors) == 4  # half of the 9 honest authors that are not node 0
    assert 0 not in sim.offline_authors
    assert all(not sim.nodes[i].up and sim.nodes[i].incarnation == 0 for i in sim.offline_authors)
    assert all(sim.nodes[i].up for i in range(10) if i not in sim.offline_authors)


def test_amplification_counts_the_entries_of_crashed_incarnations_too() -> None:
    stored: list[int] = []

    def on_node(node: SimNode) -> None:
        inner = node.on_event

        def on_event(n: SimNode, event: Any) -> None:
            if isinstance(event, EntriesStored):
                stored.append(event.count)
            inner(n, event)

        node.on_event = on_event

    scenario = Scenario.load("crash-and-loss").with_overrides(nodes=16)
    result = run_scenario(scenario, hooks=Hooks(on_node=on_node))
    assert result.metrics["amplification"]["entries_received"] == sum(stored) > 0
