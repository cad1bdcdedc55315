"""No input can stop a node: a failing core call is a counted, logged refusal at that one
input (`p2pblog.runtime.UdpDriver.guard`), our own records refused by our DHT store are
retried (`p2pblog.own_records`), log lines are limited per source address, and the home
directory is private (0700, files 0600)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from random import Random

import pytest
import trio
import trio.testing

from identity import Identity
from identity.netaddr import host_key as source_of
from identity.records import provider_key
from p2pblog.daemon import LOG_BUDGET, LOG_EVERY, LogLimiter
from p2pblog.node import NodeCore
from p2pblog.own_records import PROVIDER_REPUBLISH, REFUSED_RETRY
from p2pblog.runtime import TIMER_ERROR_PAUSE, NodeDriver
from p2pblog.store import Store
from tests.process import p2pblog

T0 = 1_800_000_000.0
ADDRS = [("udp", "127.0.0.1", 4000), ("tcp", "127.0.0.1", 4000)]


def _core(tmp_path: Path, cls: type[NodeCore] = NodeCore, now: float = T0) -> NodeCore:
    store = Store(tmp_path / "node.db")
    return cls(Identity(bytes([5]) * 32), Random(5), now, store=store, random_bytes=Random(6).randbytes)


def test_an_own_announcement_our_provider_store_refuses_is_counted_and_retried(tmp_path: Path) -> None:
    """A full store can no longer refuse our own values (`dht.records.Capacity`); any other
    refusal of our own DHT value (here: its validator) is counted and retried, never raised
    out of the timer (it was `LocalProtocolError: the provider store is full`)."""
    core = _core(tmp_path)
    feed = core.identity.public_key
    core.set_addresses(ADDRS)
    core.announce(feed, ADDRS, T0)
    first_seq = core.provider_records[feed].seq
    core.dht.providers.remove(provider_key(feed), feed)
    validator = core.dht.providers.validator
    core.dht.providers.validator = lambda key, value, now: None  # refuses every value
    due = T0 + PROVIDER_REPUBLISH
    core.handle_timer(due)
    assert core.counters()["records.refused.provider"] == 1
    assert core.records.provider_job.due[feed] == due + REFUSED_RETRY
    assert core.get_timer() is not None and core.get_timer() <= due + REFUSED_RETRY  # type: ignore[operator]
    core.dht.providers.validator = validator  # accepted again: the retry goes through
    core.handle_timer(due + REFUSED_RETRY)
    assert core.provider_records[feed].seq > first_seq
    assert core.records.provider_job.due[feed] == due + REFUSED_RETRY + PROVIDER_REPUBLISH
    assert core.counters()["records.refused.provider"] == 1


class _Buggy(NodeCore):
    """A NodeCore with a planted bug: datagrams starting ``boom`` and the first timer raise."""

    timer_failures = 1

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("planted datagram bug")
        super().receive_datagram(data, addr, now)

    def handle_timer(self, now: float) -> None:
        if self.timer_failures:
            self.timer_failures -= 1
            raise RuntimeError("planted timer bug")
        super().handle_timer(now)


def _driver(core: NodeCore, errors: list[tuple[str, Exception]], *, strict: bool) -> NodeDriver:
    return NodeDriver.bind_both(
        core,
        "127.0.0.1",
        0,
        clock=trio.current_time,
        on_internal_error=lambda kind, exc: errors.append((kind, exc)),
        strict=strict,
    )


def test_a_failing_datagram_and_timer_are_counted_and_the_node_goes_on(tmp_path: Path) -> None:
    errors: list[tuple[str, Exception]] = []

    async def main() -> None:
        core = _core(tmp_path, _Buggy, trio.current_time())
        driver = _driver(core, errors, strict=False)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(driver.run)
                core.start([("udp", *driver.local_addr)], [], trio.current_time())
                driver.flush()
                await trio.sleep(3 * TIMER_ERROR_PAUSE)
                for _ in range(3):
                    probe.sendto(b"boom", driver.local_addr)
                await trio.sleep(0.5)
                assert driver.internal_errors == {"timer": 1, "datagram": 3}
                assert [kind for kind, _ in errors] == ["timer", "datagram", "datagram", "datagram"]
                # The timer fires again (after the pause): the node goes on.
                fired = trio.current_time()
                await trio.sleep(5)
                assert core.get_timer() is not None and core.get_timer() > fired  # type: ignore[operator]
                nursery.cancel_scope.cancel()
        finally:
            probe.close()
            driver.close()

    clock = trio.testing.MockClock(autojump_threshold=0.01)
    clock.jump(T0)
    trio.run(main, clock=clock)


def test_strict_mode_counts_and_re_raises(tmp_path: Path) -> None:
    errors: list[tuple[str, Exception]] = []

    async def main() -> None:
        core = _core(tmp_path, _Buggy, trio.current_time())
        driver = _driver(core, errors, strict=True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(driver.run)
                core.start([("udp", *driver.local_addr)], [], trio.current_time())
                driver.flush()
                await trio.sleep(10)
        finally:
            driver.close()

    clock = trio.testing.MockClock(autojump_threshold=0.01)
    clock.jump(T0)
    with pytest.raises(BaseExceptionGroup) as raised:
        trio.run(main, clock=clock)
    assert "planted timer bug" in repr(raised.value.exceptions)
    assert [kind for kind, _ in errors] == ["timer"]


def test_log_lines_are_limited_per_address_not_per_port() -> None:
    assert source_of("203.0.113.7") == "203.0.113.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:203.0.113.7") == "203.0.113.7"
    now = [0.0]
    limiter = LogLimiter(clock=lambda: now[0])
    # One attacker rotating source ports: one line per LOG_EVERY.
    lines = [limiter.allow(("dht", source_of("203.0.113.7"), "malformed")) for _port in range(1000)]
    assert sum(line is not None for line in lines) == 1
    # Many addresses: at most LOG_BUDGET lines per LOG_EVERY in all.
    lines = [limiter.allow(("dht", source_of(f"10.0.{i // 256}.{i % 256}"), "x")) for i in range(5000)]
    assert sum(line is not None for line in lines) == LOG_BUDGET - 1
    now[0] += LOG_EVERY
    assert limiter.allow(("dht", "203.0.113.7", "malformed")) == " (and 999 more like it)"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_home_is_0700_and_its_files_0600_also_when_it_existed_wider(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    result = p2pblog(home, "init")
    assert result.returncode == 0, result.stderr
    result = p2pblog(home, "post", "hello")
    assert result.returncode == 0, result.stderr
    assert _mode(home) == 0o700
    files = [p for p in home.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"identity.key", "store.sqlite3"}
    for path in files:
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    # While a store is open, its -wal and -shm files are 0600 too.
    with Store(home / "store.sqlite3") as store:
        store.set_petname("x", bytes(32))
        for suffix in ("-wal", "-shm"):
            assert _mode(home / f"store.sqlite3{suffix}") == 0o600
    # A store made before the rule (0644 in a 0755 home) is tightened when next opened.
    os.chmod(home, 0o755)
    os.chmod(home / "store.sqlite3", 0o644)
    assert p2pblog(home, "log").returncode == 0
    assert _mode(home) == 0o700 and _mode(home / "store.sqlite3") == 0o600


def test_an_internal_error_is_logged_once_with_its_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pblog.daemon import NodeService
    from p2pblog.errors import StorageFull
    from p2pblog.home import Home

    service = NodeService(Home(tmp_path), Identity(bytes([7]) * 32), listen=("127.0.0.1", 0), bootstrap=[])
    for _ in range(100):
        try:
            raise RuntimeError("planted")
        except RuntimeError as exc:
            service._internal_error("timer", exc)
    service._internal_error("connection", StorageFull("the disk is full: test"))
    err = capsys.readouterr().err
    assert err.count("internal error while handling a timer input") == 1
    assert err.count("Traceback (most recent call last)") == 1 and "RuntimeError: planted" in err
    assert err.count("the disk is full: test") == 1 and err.count("Traceback") == 1
    assert service.limiter.suppressed == 99


def test_fresh_keys_and_ports_from_one_address_share_one_log_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dht.events import PeerMisbehaved
    from p2pblog.daemon import NodeService
    from p2pblog.home import Home
    from p2pblog.replication import InputRefused, PeerConnected

    service = NodeService(Home(tmp_path), Identity(bytes([7]) * 32), listen=("127.0.0.1", 0), bootstrap=[])
    for i in range(200):
        key = i.to_bytes(32, "big")
        service._on_event(PeerConnected(key, ("203.0.113.9", 40_000 + i), False))
        service._on_event(InputRefused(key, "misbehaved.flood"))
        service._on_event(PeerMisbehaved(("203.0.113.9", 50_000 + i), None, "malformed"))
    err = capsys.readouterr().err
    assert err.count("refused input from") == 1
    assert err.count("DHT peer 203.0.113.9") == 1
