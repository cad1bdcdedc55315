"""`p2pblog.portmap` without a router: a fake ``miniupnpc.UPnP`` and trio's MockClock.

What a router does to the mapper is scripted on `FakeIgd`; the mapper's timing
(renew at half the lease, permanent leases refreshed, failed renewals retried
until the lease ends, attempts repeated after a failure) is read off the
virtual clock.  The real router is in ``tests/test_nat_netns.py``.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from p2pblog import portmap
from p2pblog.portmap import (
    LEASE,
    PERMANENT_REFRESH,
    RETRY_FAILED,
    RETRY_RENEW,
    MappingFailed,
    MappingState,
    PortMapError,
    PortMapped,
    PortMapper,
)

T = TypeVar("T")
PORT = 4100
LAN = "192.168.1.2"


class FakeIgd:
    """A scriptable UPnP IGD, with the methods of ``miniupnpc.UPnP`` the mapper calls."""

    def __init__(self) -> None:
        self.devices = 1
        self.external = "203.0.114.7"
        #: (external port, protocol) -> (internal host, internal port, lease) held by the router.
        self.mappings: dict[tuple[int, str], tuple[str, int, int]] = {}
        #: Ports mapped by someone else (AddPortMapping answers ConflictInMappingEntry).
        self.taken: set[tuple[int, str]] = set()
        self.permanent_only = False
        self.igd_v2 = True
        self.any_port = 40000
        #: Every AddPortMapping: (trio time, external port, protocol, lease asked).
        self.adds: list[tuple[float, int, str, int]] = []
        #: Raised by every call while set (the router is gone or broken).
        self.error: str | None = None
        self.discoverdelay = 0
        self.lanaddr = ""

    def _check(self) -> None:
        if self.error is not None:
            raise Exception(self.error)

    def discover(self) -> int:
        self._check()
        return self.devices

    def selectigd(self) -> str:
        self._check()
        self.lanaddr = LAN
        return "http://192.168.1.1:5555/ctl/IPConn"

    def externalipaddress(self) -> str:
        self._check()
        return self.external

    def addportmapping(
        self, eport: int, proto: str, host: str, iport: int, desc: str, remote: str, lease: int
    ) -> bool:
        self._check()
        self.adds.append((trio.current_time(), eport, proto, lease))
        if (eport, proto) in self.taken:
            raise Exception("ConflictInMappingEntry")
        if lease and self.permanent_only:
            raise Exception("OnlyPermanentLeasesSupported")
        self.mappings[(eport, proto)] = (host, iport, lease)
        return True

    def addanyportmapping(self, eport: int, proto: str, host: str, iport: int, desc: str, remote: str) -> int:
        self._check()
        if not self.igd_v2:
            raise Exception("Invalid Action")
        self.mappings[(self.any_port, proto)] = (host, iport, 0)
        return self.any_port

    def deleteportmapping(self, eport: int, proto: str) -> bool:
        self._check()
        if self.mappings.pop((eport, proto), None) is None:
            raise Exception("NoSuchEntry")
        return True


async def inline(fn: Callable[[], T], /) -> T:
    """Run the fake's calls in the trio thread: the virtual clock stays exact."""
    return fn()


def mapper(igd: FakeIgd, lines: list[str], mapped: list[PortMapped] | None = None) -> PortMapper:
    return PortMapper(
        PORT,
        client_factory=lambda: igd,
        log=lines.append,
        on_mapped=None if mapped is None else mapped.append,
        rng=Random(1),
        run_sync=inline,
    )


def run_for(seconds: float, body: Callable[[trio.Nursery], Any]) -> None:
    """Run ``body(nursery)`` under a MockClock for ``seconds`` of virtual time, then cancel."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await body(nursery)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_maps_both_protocols_on_the_same_port_renews_at_half_the_lease_and_removes_on_exit() -> None:
    igd, lines, mapped = FakeIgd(), [], []
    m = mapper(igd, lines, mapped)
    results: list[Any] = []

    async def body(nursery: trio.Nursery) -> None:
        results.append(await nursery.start(m.run))
        assert igd.mappings == {(PORT, "TCP"): (LAN, PORT, LEASE), (PORT, "UDP"): (LAN, PORT, LEASE)}
        assert m.status()["state"] == "mapped"

    run_for(2.2 * LEASE, body)
    assert results == [PortMapped("203.0.114.7", PORT, LEASE)]
    assert mapped == results  # reported once: renewals that change nothing are not news
    times = sorted({t for t, _, _, _ in igd.adds})
    assert times == [0.0, LEASE / 2, LEASE, 1.5 * LEASE, 2 * LEASE]
    assert m.renewals == 4
    assert igd.mappings == {}  # removed on exit
    assert m.state is MappingState.STOPPED
    assert lines == [
        f"port mapping: the router forwards 203.0.114.7:{PORT} (tcp+udp) here, a {LEASE} s lease",
        f"port mapping: removed 203.0.114.7:{PORT}",
    ]


def test_no_router_is_one_line_and_is_retried_quietly() -> None:
    igd, lines = FakeIgd(), []
    igd.devices = 0
    m = mapper(igd, lines)
    results: list[Any] = []

    async def body(nursery: trio.Nursery) -> None:
        results.append(await nursery.start(m.run))

    run_for(3.5 * RETRY_FAILED, body)
    assert results == [MappingFailed("no UPnP router found")]
    assert m.attempts == 4
    assert lines == ["port mapping: no UPnP router found"]
    assert m.status()["reason"] == "no UPnP router found"
    assert m.status()["external"] is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("Success", "no UPnP router found"),  # miniupnpc's text for an empty discovery
        ("Miniupnpc Socket error", "no UPnP router found (Miniupnpc Socket error)"),
    ],
)
def test_discovery_errors_read_as_no_router(error: str, reason: str) -> None:
    igd, lines = FakeIgd(), []
    igd.error = error
    result = trio.run(mapper(igd, lines).attempt, clock=trio.testing.MockClock(autojump_threshold=0))
    assert result == MappingFailed(reason)
    assert lines == [f"port mapping: {reason}"]


def test_a_private_external_address_is_a_second_nat() -> None:
    igd, lines = FakeIgd(), []
    igd.external = "100.64.3.4"  # carrier-grade NAT
    result = trio.run(mapper(igd, lines).attempt)
    assert isinstance(result, MappingFailed)
    assert "100.64.3.4 is not public" in result.reason
    assert igd.adds == []


def test_a_taken_port_lets_the_router_choose() -> None:
    igd, lines = FakeIgd(), []
    igd.taken = {(PORT, "TCP")}
    result = trio.run(mapper(igd, lines).attempt)
    assert result == PortMapped("203.0.114.7", 40000, LEASE)
    # AddAnyPortMapping grants a permanent lease: the mapper asks again with its own.
    assert igd.mappings[(40000, "TCP")] == (LAN, PORT, LEASE)
    assert igd.mappings[(40000, "UDP")] == (LAN, PORT, LEASE)


def test_an_igd_v1_router_and_a_taken_port_give_a_random_port() -> None:
    igd, lines = FakeIgd(), []
    igd.igd_v2 = False
    igd.taken = {(PORT, "UDP")}  # TCP is free: it is mapped, then undone
    result = trio.run(mapper(igd, lines).attempt)
    assert isinstance(result, PortMapped)
    assert result.port not in (PORT, 40000)
    assert set(igd.mappings) == {(result.port, "TCP"), (result.port, "UDP")}


def test_every_port_taken_is_a_refusal_and_leaves_nothing_mapped() -> None:
    igd, lines = FakeIgd(), []
    igd.igd_v2 = False
    igd.taken = {(p, "UDP") for p in range(65536)}
    result = trio.run(mapper(igd, lines).attempt)
    assert result == MappingFailed("router refused: ConflictInMappingEntry (tried 5 ports)")
    assert igd.mappings == {}


def test_a_refusal_other_than_a_conflict_is_reported_at_once() -> None:
    igd, lines = FakeIgd(), []

    def refuse(*args: object) -> bool:
        raise Exception("Action Failed")

    igd.addportmapping = refuse  # type: ignore[method-assign]
    result = trio.run(mapper(igd, lines).attempt)
    assert result == MappingFailed("router refused: Action Failed")
    assert lines == ["port mapping: router refused: Action Failed"]


def test_permanent_leases_only() -> None:
    igd, lines = FakeIgd(), []
    igd.permanent_only = True
    m = mapper(igd, lines)

    async def body(nursery: trio.Nursery) -> None:
        assert await nursery.start(m.run) == PortMapped("203.0.114.7", PORT, 0)

    run_for(2.5 * PERMANENT_REFRESH, body)
    granted = sorted({t for t, _, _, lease in igd.adds if lease == 0})
    assert granted == [0.0, PERMANENT_REFRESH, 2 * PERMANENT_REFRESH]
    assert "a permanent lease" in lines[0]


def test_a_failed_renewal_is_retried_until_the_lease_ends_then_the_mapping_is_lost() -> None:
    igd, lines, mapped = FakeIgd(), [], []
    m = mapper(igd, lines, mapped)
    states: list[tuple[float, str]] = []

    async def body(nursery: trio.Nursery) -> None:
        await nursery.start(m.run)
        await trio.sleep(LEASE / 2 - 1)
        igd.error = "Miniupnpc HTTP error"  # the router stops answering
        await trio.sleep(LEASE / 2 + 10)
        states.append((trio.current_time(), m.state.value))
        igd.error = None  # back: the next attempt (after RETRY_FAILED) maps again
        await trio.sleep(RETRY_FAILED)
        states.append((trio.current_time(), m.state.value))

    run_for(1, body)
    failed_adds = [t for t, _, _, _ in igd.adds if LEASE / 2 <= t <= LEASE]
    assert failed_adds == []  # the fake raises before it records
    assert states[0][1] == "failed"
    assert states[1][1] == "mapped"
    assert lines[1] == "port mapping: renewal: Miniupnpc HTTP error; retrying until the lease ends"
    assert lines[2] == "port mapping: mapping lost: renewal: Miniupnpc HTTP error"
    assert lines[3] == "port mapping: no UPnP router found (Miniupnpc HTTP error)"
    assert len(mapped) == 2  # mapped, lost, mapped again


def test_renewal_retries_are_spaced() -> None:
    igd, lines = FakeIgd(), []
    m = mapper(igd, lines)
    calls: list[float] = []

    async def body(nursery: trio.Nursery) -> None:
        await nursery.start(m.run)
        igd.error = "Miniupnpc HTTP error"
        original = igd.addportmapping

        def counting(*args: Any) -> bool:
            calls.append(trio.current_time())
            return original(*args)

        igd.addportmapping = counting  # type: ignore[method-assign]

    run_for(LEASE - 1, body)
    assert calls[0] == LEASE / 2
    assert calls[-1] == LEASE - RETRY_RENEW
    assert {b - a for a, b in itertools.pairwise(calls)} == {RETRY_RENEW}


def test_a_changed_external_address_is_reported_again() -> None:
    igd, lines, mapped = FakeIgd(), [], []
    m = mapper(igd, lines, mapped)

    async def body(nursery: trio.Nursery) -> None:
        await nursery.start(m.run)
        igd.external = "203.0.114.99"  # the ISP gave the router a new address

    run_for(LEASE / 2 + 1, body)
    assert [p.host for p in mapped] == ["203.0.114.7", "203.0.114.99"]
    assert m.mapped is None  # removed on exit


def test_a_router_that_does_not_answer_is_bounded_by_the_timeout() -> None:
    igd, lines = FakeIgd(), []

    def hang() -> int:
        time.sleep(1.0)
        return 1

    igd.discover = hang  # type: ignore[method-assign]
    m = PortMapper(PORT, client_factory=lambda: igd, log=lines.append, call_timeout=0.1, discover_ms=0)
    start = time.monotonic()
    result = trio.run(m.attempt)  # in a real worker thread, abandoned at the timeout
    assert time.monotonic() - start < 0.8
    assert result == MappingFailed("discovery: the router did not answer in 0.1 s")


def test_without_miniupnpc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "miniupnpc", None)
    with pytest.raises(PortMapError, match=r"pip install 'p2pblog\[portmap\]'"):
        portmap.miniupnpc_client()
    lines: list[str] = []
    result = trio.run(PortMapper(PORT, log=lines.append).attempt)
    assert result == MappingFailed("miniupnpc is not installed (pip install 'p2pblog[portmap]')")


def test_the_node_service_reports_port_mapping_off_by_default(tmp_path: Path) -> None:
    from identity import Identity
    from p2pblog.daemon import NodeService
    from p2pblog.home import Home

    service = NodeService(Home(tmp_path), Identity(bytes([7]) * 32), listen=("0.0.0.0", 0), bootstrap=[])
    assert service._port_mapping_status() == {"state": "off", "external": None, "reason": "disabled"}
    service.mapped("203.0.114.7", 4100)
    assert service.mapped_addr == ("203.0.114.7", 4100)


def test_a_routers_impossible_answers_are_failures() -> None:
    igd, lines = FakeIgd(), []
    igd.taken = {(PORT, "TCP")}
    igd.any_port = 70000  # AddAnyPortMapping answers a port that cannot be: another port is tried
    result = trio.run(mapper(igd, lines).attempt)
    assert isinstance(result, PortMapped) and 1 <= result.port <= 65535 and result.port != 70000
    igd2, mapped = FakeIgd(), []
    m = mapper(igd2, lines, mapped)

    async def body(nursery: trio.Nursery) -> None:
        await nursery.start(m.run)
        igd2.external = "<script>not an address"  # read again at the renewal

    run_for(LEASE / 2 + 1, body)
    assert [p.host for p in mapped] == ["203.0.114.7"]  # the garbage never became an address


def test_a_hung_router_call_holds_no_shared_worker_thread() -> None:
    """An abandoned call keeps its thread until the router answers: in the mapper's own
    one-slot pool, so trio's shared threads (DNS, stamps) stay free, and the next call fails
    at once instead of queueing a thread behind it."""
    igd, lines = FakeIgd(), []
    release = threading.Event()

    def hang() -> int:
        release.wait(5)
        return 1

    igd.discover = hang  # type: ignore[method-assign]
    m = PortMapper(PORT, client_factory=lambda: igd, log=lines.append, call_timeout=0.1, discover_ms=0)

    async def main() -> None:
        for _ in range(3):
            assert isinstance(await m.attempt(), MappingFailed)
        with trio.fail_after(1):
            await trio.to_thread.run_sync(lambda: None)  # the shared pool is not taken

    try:
        trio.run(main)
    finally:
        release.set()
