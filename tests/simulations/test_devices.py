"""The simulator's identities with devices (`simulations.devices`): devices pair and everything
they post is shown as their identity's, a recovery makes every follower refuse the thief, each
oracle catches a planted violation, and the same seed gives the same metrics.

Scenarios here are small (8 to 10 nodes, a few simulated minutes) so that the module runs in
seconds.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from p2pblog.store import FeedItem
from simulations.devices import Ident
from simulations.node import SimNode
from simulations.report import write_run
from simulations.scenario import Scenario, ScenarioError
from simulations.simulation import Simulation, run_scenario


def small(nodes: int = 8, duration: float = 300.0, **devices: Any) -> Scenario:
    """A few nodes, no faults, posts until 200 s; the ``[devices]`` table as given."""
    return Scenario.from_dict(
        {
            "name": "devices-small",
            "nodes": nodes,
            "duration": duration,
            "converge_within": 60.0,
            "workload": {"follows": 3, "posts_per_hour": 60.0, "post_until": 200.0, "lookups_per_hour": 0.0},
            "devices": {"pair_at": 30.0, **devices},
        }
    )


def test_without_faults_every_device_pairs_and_every_post_is_shown_as_its_identity_s() -> None:
    sim = Simulation(small(identities=3, devices=2))
    result = sim.run()
    assert result.ok, result.violations
    d = result.metrics["devices"]
    assert d["identities"] == 3 and d["devices_paired"] == 6  # a second and a third device each
    assert d["posts"] > 10  # the devices' own posts
    assert d["delivery"]["expected"] > d["posts"] and d["delivery"]["ratio"] == 1.0
    # What the oracle judged, seen from one follower: the devices' posts under the root's handle.
    ident = sim.devices.idents[0]
    follower = sim.devices.live_followers(ident)[0]
    shown = follower.store.timeline(follower.identity.public_key, limit=10_000)
    device_keys = {d.identity.public_key for d in ident.devices}
    mine = [i.entry for i in shown if i.entry.author in device_keys]
    assert mine and {follower.store.identity_of(e.author) for e in mine} == {ident.handle}


@functools.cache
def revoked() -> Simulation:
    """A run where one identity revoked its device (which posts once more afterwards)."""
    sim = Simulation(small(identities=2, revocations=1, revoke_at=120.0))
    assert sim.run().ok, sim.violations
    return sim


def test_a_revoked_device_s_later_posts_are_held_by_no_follower() -> None:
    sim = revoked()
    ident = next(i for i in sim.devices.idents if i.fate == "revoke")
    device = ident.devices[-1]
    key = device.identity.public_key
    cut = ident.cuts[key]
    assert device.store.latest_seq(key) > cut  # it kept posting
    for follower in sim.devices.live_followers(ident):
        assert follower.store.latest_seq(key) == cut
        assert any(d.key == key and d.after == cut for d in follower.store.devices_of(ident.handle))
    assert set(ident.held_at) == {f.index for f in sim.devices.live_followers(ident)}
    assert sim.devices.metrics()["held_after_s"]["revocation"]["max"] <= 30.0


def _doctor(node: SimNode, **methods: Any) -> None:
    """Replace some of a node's store methods (the store is otherwise untouched)."""
    for name, method in methods.items():
        setattr(node.store, name, method)


def _fresh(sim: Simulation) -> tuple[Ident, SimNode, list[FeedItem]]:
    sim.violations.clear()
    ident = next(i for i in sim.devices.idents if i.fate == "revoke")
    follower = sim.devices.live_followers(ident)[0]
    for name in ("timeline", "feed_state", "devices_of", "latest_seq"):
        follower.store.__dict__.pop(name, None)
    shown = follower.store.timeline(follower.identity.public_key, limit=10_000)
    return ident, follower, shown


def test_each_device_oracle_catches_a_planted_violation() -> None:
    sim = revoked()
    ident, follower, shown = _fresh(sim)
    sim.devices.final_oracles()
    assert not sim.violations
    device = ident.devices[-1]
    key = device.identity.public_key
    past = device.store.feed(key, limit=1)[0]  # its last post, past the cut
    assert past.entry.seq > ident.cuts[key]

    # 1. The follower shows the revoked device's post past the cut.
    _doctor(follower, timeline=lambda *a, **k: [past, *shown])
    sim.devices.final_oracles()
    assert [v.oracle for v in sim.violations] == ["device cut"]
    # ... and, while running, holds it.
    ident, follower, shown = _fresh(sim)
    _doctor(follower, latest_seq=lambda k: 10**6 if k == key else 0)
    sim.devices._check_cuts()
    assert [v.oracle for v in sim.violations] == ["device cut"]

    # 2. The follower lost one of the identity's posts before the cut.
    ident, follower, shown = _fresh(sim)
    expected = {eid for _, _, eid in sim.devices.expected_posts(ident)}
    dropped = next(i for i in shown if i.entry.id in expected)
    _doctor(follower, timeline=lambda *a, **k: [i for i in shown if i is not dropped])
    sim.devices.final_oracles()
    assert [v.oracle for v in sim.violations] == ["device delivery"]

    # 3. The device's feed marked forked somewhere.
    ident, follower, shown = _fresh(sim)
    real = follower.store.feed_state
    _doctor(follower, feed_state=lambda k: replace(real(k), forked_seq=2) if k == key else real(k))
    sim.devices.final_oracles()
    assert [v.oracle for v in sim.violations] == ["device fork"]

    # 4. The follower lost the revocation (it sees the device as current).
    ident, follower, shown = _fresh(sim)
    devices_of = follower.store.devices_of
    _doctor(
        follower,
        devices_of=lambda i: (
            [replace(d, after=None) for d in devices_of(i)] if i == ident.handle else devices_of(i)
        ),
    )
    sim.devices.final_oracles()
    assert [v.oracle for v in sim.violations] == ["device agreement"]


def test_after_a_recovery_every_follower_refuses_the_thief_s_later_posts() -> None:
    scenario = small(nodes=10, duration=360.0, identities=2, thefts=1, steal_at=80.0, recover_at=110.0)
    scenario = replace(scenario, devices=replace(scenario.devices, keyevent_poll=60.0))
    sim = Simulation(scenario)
    result = sim.run()
    assert result.ok, result.violations
    d = result.metrics["devices"]
    assert d["recoveries"] == 1 and d["thief_posts"] >= 1 and d["thief_posts_shown"] == 0
    ident = next(i for i in sim.devices.idents if i.fate == "steal")
    assert ident.recovered is not None
    thief = sim.nodes[ident.root_index]
    cut = ident.cuts[ident.handle]
    assert thief.store.latest_seq(ident.handle) > cut  # the thief went on with the old key
    owner_posts = [k for k in sim.devices.posts if k[0] == ident.recovered.identity.public_key]
    assert owner_posts  # the owner posted from its new machine
    followers = sim.devices.live_followers(ident)
    assert followers
    for follower in followers:
        assert follower.store.latest_seq(ident.handle) == cut
        assert [k for k, _ in follower.store.root_chain(ident.handle)] == [
            ident.handle,
            ident.recovered.identity.public_key,
        ]
        for author, seq in sim.devices.thief_posts:
            assert not follower.store.raw_range(author, seq, 1)
    assert set(ident.held_at) == {f.index for f in followers}
    assert 0 <= d["held_after_s"]["recovery"]["max"] <= 60.0 + 30.0  # one poll, and the lookup


def small_churn(seed: int) -> Scenario:
    return Scenario.load("devices-churn").with_overrides(seed=seed, nodes=8, duration=400.0)


def test_same_seed_gives_a_byte_identical_metrics_json_and_another_seed_does_not(tmp_path: Path) -> None:
    def write(seed: int, out: Path) -> bytes:
        write_run(run_scenario(small_churn(seed)), out)
        return (out / "metrics.json").read_bytes()

    first = write(1, tmp_path / "a")
    assert json.loads(first)["metrics"]["devices"]["recoveries"] == 1
    assert "## Devices" in (tmp_path / "a" / "report.md").read_text()
    assert write(1, tmp_path / "b") == first
    assert write(2, tmp_path / "c") != first


def test_metrics_json_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    """Two processes with other hash seeds: the same bytes (docs/simulations.md, "Determinism")."""
    script = (
        "import sys; from pathlib import Path; from tests.simulations.test_devices import small_churn; "
        "from simulations.simulation import run_scenario; from simulations.report import write_run; "
        "write_run(run_scenario(small_churn(1)), Path(sys.argv[1]))"
    )
    root = Path(__file__).resolve().parents[2]
    for hash_seed in ("1", "4321"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = str(tmp_path / hash_seed)
        subprocess.run([sys.executable, "-c", script, out], cwd=root, env=env, check=True, timeout=120)
    assert (tmp_path / "1" / "metrics.json").read_bytes() == (tmp_path / "4321" / "metrics.json").read_bytes()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[devices]\nidentities = 50", "devices.identities: 0 .. nodes-1"),
        ("[devices]\nidentities = 2\ndevices = 0", "devices.devices: 1 .. 8"),
        ("[devices]\nidentities = 1\nrevocations = 1\nthefts = 1", "at most identities"),
        ("[devices]\nsteal_at = 200.0\nrecover_at = 100.0\nthefts = 1\nidentities = 1", "devices.recover_at"),
        ("[devices]\nidentities = 1\nrotations = 1\nrotate_at = 900.0", "devices.rotate_at: 0 .. below"),
        ("[devices]\nrevoke_at = -1.0", "devices.revoke_at: 0 .. below"),
        ("[devices]\nkeyevent_poll = 0.0", "devices.keyevent_poll"),
        ("[devices]\nphones = 1", "devices.phones: unknown field"),
    ],
)
def test_a_bad_devices_table_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ScenarioError, match=field.replace("(", r"\(").replace(")", r"\)")):
        Scenario.from_toml("nodes = 10\n" + text)


def test_without_devices_a_short_run_needs_no_devices_fields() -> None:
    assert Scenario.from_toml("duration = 30.0\n[workload]\npost_from = 0.0").devices.identities == 0
