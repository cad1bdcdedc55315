"""A `DhtCore` and real ``kademlia`` 2.2.3 ``Server`` nodes on 127.0.0.1, both ways.

The core is driven by a twenty-line asyncio adapter (the driver contract of
``dht/__init__.py``, nothing more): the real runtime is trio's, but
``kademlia`` is asyncio-bound, so this test speaks asyncio to share its loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from random import Random
from typing import Any

import pytest

from dht import BootstrapFinished, DhtCore, LookupFinished, PutFinished, ValueFound, kademlia_key
from dht.events import Event
from tests.dht.simnet import get_of

network = pytest.importorskip("kademlia.network")


class AsyncioDriver(asyncio.DatagramProtocol):
    def __init__(self, core: DhtCore) -> None:
        self.core = core
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.waiting: dict[int, asyncio.Future[Event]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.core.receive_datagram(data, (addr[0], addr[1]), time.monotonic())
        self.flush()

    def on_timer(self) -> None:
        self.core.handle_timer(time.monotonic())
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for data, addr in self.core.datagrams_to_send():
            self.transport.sendto(data, addr)
        while (event := self.core.next_event()) is not None:
            future = self.waiting.pop(getattr(event, "query_id", -1), None)
            if future is not None:
                future.set_result(event)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.core.get_timer()
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(delay, self.on_timer)

    async def run(self, command: Callable[[DhtCore, float], int]) -> Event:
        query_id = command(self.core, time.monotonic())
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self.waiting[query_id] = future
        self.flush()
        return await asyncio.wait_for(future, 20)


async def start_servers(n: int) -> list[Any]:
    servers: list[Any] = []
    for i in range(n):
        server = network.Server()
        await server.listen(0, "127.0.0.1")
        if i:
            await server.bootstrap([("127.0.0.1", port(servers[0]))])
        servers.append(server)
    return servers


def port(server: Any) -> int:
    return int(server.transport.get_extra_info("sockname")[1])


async def start_core(seed: int) -> tuple[AsyncioDriver, int]:
    rng = Random(seed)
    core = DhtCore(rng.randbytes(20), rng, time.monotonic())
    transport, driver = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: AsyncioDriver(core), local_addr=("127.0.0.1", 0)
    )
    return driver, int(transport.get_extra_info("sockname")[1])


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_core_joins_a_kademlia_network_and_both_store_and_read() -> None:
    async def scenario() -> None:
        servers = await start_servers(4)
        driver, _ = await start_core(1)
        try:
            joined = await driver.run(lambda c, now: c.bootstrap([("127.0.0.1", port(servers[0]))], now))
            assert isinstance(joined, BootstrapFinished) and joined.seeds_answered == 1
            assert len(joined.closest) == 4

            ids = {s.node.id for s in servers}
            found = await driver.run(lambda c, now: c.start_lookup(bytes(20), now))
            assert isinstance(found, LookupFinished) and {x.node_id for x in found.closest} == ids

            # kademlia stores, we read (bytes and the other value types it allows).
            for name, value in (("k-bytes", b"\x00\xff"), ("k-str", "text"), ("k-int", 42)):
                await servers[2].set(name, value)
                got = await driver.run(get_of(kademlia_key(name)))
                assert isinstance(got, ValueFound) and got.value == value

            # We store, every kademlia node reads.
            put = await driver.run(lambda c, now: c.start_put(kademlia_key("ours"), b"p2pblog", now))
            assert isinstance(put, PutFinished) and len(put.stored_at) == 4
            for server in servers:
                assert await server.get("ours") == b"p2pblog"
            assert not [k for k in driver.core.stats if k.startswith("misbehaved.")]
        finally:
            for server in servers:
                server.stop()
            assert driver.transport is not None
            driver.transport.close()

    run(scenario)


def test_kademlia_bootstraps_from_the_core() -> None:
    async def scenario() -> None:
        driver, core_port = await start_core(2)
        stored = await driver.run(lambda c, now: c.start_put(kademlia_key("seed"), b"from core", now))
        assert isinstance(stored, PutFinished)
        server = network.Server()
        await server.listen(0, "127.0.0.1")
        try:
            neighbours = await server.bootstrap([("127.0.0.1", core_port)])
            assert [n.id for n in neighbours] == [driver.core.node_id]
            assert await server.get("seed") == b"from core"
            assert driver.core.table.get(server.node.id) is not None
        finally:
            server.stop()
            assert driver.transport is not None
            driver.transport.close()

    run(scenario)
