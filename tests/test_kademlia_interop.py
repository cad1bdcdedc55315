"""Interop with the real ``kademlia`` package: its Servers in a subprocess, our node on trio.

Both directions, on 127.0.0.1: our node bootstraps from theirs and theirs
from ours; a value their ``set`` stored is found by our FIND_VALUE; a value
our node stores is read by their ``get``.  p2pblog's own RPCs
(``p2pb_add_provider`` / ``p2pb_get_providers``) get no answer from them,
and our node copes: the queries end, the kademlia nodes stay in its table.  Our side is the production stack:
`NodeCore` (with p2pblog's record rules) driven by the trio `UdpDriver`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest
import trio

from dht import BootstrapFinished, PutFinished, ValueFound, kademlia_key
from identity import Identity
from p2pblog.node import NodeCore, ProviderAnnounced, ProvidersResolved
from p2pblog.runtime import UdpDriver, unix_now

pytest.importorskip("kademlia.network")
PEER = Path(__file__).parent / "peers" / "kademlia_peer.py"


class KademliaProcess:
    def __init__(self, count: int, bootstrap: str | None = None) -> None:
        args = [sys.executable, str(PEER), str(count), *([bootstrap] if bootstrap else [])]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports: list[int] = self._read()["ports"]

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the kademlia process exited"
        return json.loads(line)

    def ask(self, **command: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, BrokenPipeError, ValueError):
                self.ask(op="quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def kademlia_net() -> Iterator[KademliaProcess]:
    net = KademliaProcess(3)
    yield net
    net.close()


async def with_node(body: Any) -> Any:
    core = NodeCore(Identity(bytes([42]) * 32), Random(7), unix_now(), random_bytes=Random(8).randbytes)
    driver = UdpDriver.bind(core, "127.0.0.1", 0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.run)
            with trio.fail_after(60):
                result = await body(core, driver)
            nursery.cancel_scope.cancel()
        return result
    finally:
        driver.close()


def test_our_node_bootstraps_from_kademlia_and_finds_its_value(kademlia_net: KademliaProcess) -> None:
    assert kademlia_net.ask(op="set", key="alpha", value="stored by kademlia")["ok"]

    async def body(core: NodeCore, driver: UdpDriver) -> tuple[Any, Any]:
        joined = await driver.request(lambda now: core.bootstrap([("127.0.0.1", kademlia_net.ports[0])], now))
        found = await driver.request(lambda now: core.dht.start_get(kademlia_key("alpha"), now))
        return joined, found

    joined, found = trio.run(with_node, body)
    assert isinstance(joined, BootstrapFinished) and joined.seeds_answered == 1
    assert len(joined.closest) >= 3  # it learned the whole kademlia network
    assert isinstance(found, ValueFound) and found.value == "stored by kademlia"


def test_kademlia_bootstraps_from_our_node_and_reads_our_value(kademlia_net: KademliaProcess) -> None:
    late: list[KademliaProcess] = []

    async def body(core: NodeCore, driver: UdpDriver) -> Any:
        await driver.request(lambda now: core.bootstrap([("127.0.0.1", kademlia_net.ports[0])], now))
        stored = await driver.request(
            lambda now: core.dht.start_put(kademlia_key("beta"), b"stored by p2pblog", now)
        )
        # A fresh kademlia Server joins the network through our node only.
        port = driver.local_addr[1]
        newcomer = await trio.to_thread.run_sync(lambda: KademliaProcess(1, f"127.0.0.1:{port}"))
        late.append(newcomer)
        neighbors = await trio.to_thread.run_sync(
            lambda: newcomer.ask(op="bootstrap", host="127.0.0.1", port=port)
        )
        read_old = await trio.to_thread.run_sync(lambda: kademlia_net.ask(op="get", key="beta", node=2))
        read_new = await trio.to_thread.run_sync(lambda: newcomer.ask(op="get", key="beta"))
        return stored, neighbors, read_old, read_new, port

    try:
        stored, neighbors, read_old, read_new, our_port = trio.run(with_node, body)
    finally:
        for net in late:
            net.close()
    assert isinstance(stored, PutFinished) and len(stored.stored_at) >= 3
    # Its only seed was our node, yet it now knows the other kademlia nodes: it joined through us.
    learned = {port for _, port in neighbors["neighbors"]}
    assert learned & set(kademlia_net.ports), (learned, our_port)
    for read in (read_old, read_new):
        assert read["bytes"] and bytes.fromhex(read["value"]) == b"stored by p2pblog"


def test_kademlia_nodes_ignore_provider_rpcs_and_stay_in_our_table(kademlia_net: KademliaProcess) -> None:
    feed = bytes([5]) * 32

    async def body(core: NodeCore, driver: UdpDriver) -> tuple[Any, ...]:
        joined = await driver.request(lambda now: core.bootstrap([("127.0.0.1", kademlia_net.ports[0])], now))
        results: dict[str, Any] = {}
        announcing = trio.Event()

        def announce(now: float) -> int:
            qid = core.announce(feed, [("tcp", "127.0.0.1", 1)], now)
            announcing.set()
            return qid

        async def run(name: str, start: Any, after: trio.Event | None = None) -> None:
            if after is not None:
                await after.wait()
            results[name] = await driver.request(start)

        # Both at once (each waits out rpcudp's 5 s timeout on the silent
        # peers), the find once our own record is held.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "announce", announce)
            nursery.start_soon(run, "find", lambda now: core.start_find_providers(feed, now), announcing)
        return core, joined, results["announce"], results["find"]

    core, joined, announced, found = trio.run(with_node, body)
    assert isinstance(announced, ProviderAnnounced) and announced.stored_at == 0
    # Only the record we hold ourselves: no kademlia node answered.
    assert isinstance(found, ProvidersResolved)
    assert [r.signer for r in found.records] == [core.identity.public_key]
    kademlia_ids = [c.node_id for c in joined.closest]
    assert len(kademlia_ids) >= 3
    assert all(core.dht.table.get(i) is not None and core.dht.table.failures(i) == 0 for i in kademlia_ids)
    assert core.dht.stats["rpc.unanswered_p2pblog_rpc"] >= 2 * len(kademlia_ids)
