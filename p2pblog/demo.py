"""``p2pblog demo``: a small live network of real nodes on 127.0.0.1, in one process.

`run_demo` creates throw-away identities and homes, runs one `NodeService`
per identity on 127.0.0.1 (real UDP and TCP sockets, Noise-encrypted gossip,
SQLite stores on disk) in a single trio run, joins them through the first
node, has every node claim its name in the DHT (with proof of work) and
resolve the next node's name, has every node follow every other one, and
then has them post in turn.
Each post is printed once when it is posted and once per node it arrives
at, with the delay since posting.  It runs until ``duration`` seconds pass or
it is cancelled (Ctrl-C, SIGTERM: `run_demo` stops every node cleanly).
"""

from __future__ import annotations

import functools
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from identity import Identity, encode_handle
from identity.limits import NAME_CLAIM_MIN_WORK
from identity.pow import NAME_DOMAIN, name_subject, solve
from p2pblog.daemon import NodeService
from p2pblog.entry import POST, PROFILE
from p2pblog.home import DEMO_NAMES as NAMES
from p2pblog.home import Home
from p2pblog.replication import EntriesStored, PeerConnected

MAX_NODES = len(NAMES)
#: Seconds between the demo's posts once the network is up.
POST_EVERY = 2.0
SCRIPT = (
    "Hello, peer-to-peer world!",
    "No server to fall over: every follower can serve my feed.",
    "Signed, hash-chained, and pushed to you live.",
    "Replying to the thread, {mention}!",
)


class Demo:
    def __init__(self, root: Path, count: int, say: Callable[[str], None]) -> None:
        self.root = root
        self.say = say
        self.names: dict[bytes, str] = {}
        self.services: list[NodeService] = []
        self.front_end: FrontEnd | None = None
        self.posted_at: dict[bytes, float] = {}
        for name in NAMES[:count]:
            identity = Identity.generate()
            home = Home(root / name)
            home.create(identity)
            with home.open_store() as store:
                store.append(identity, PROFILE, {"name": name}, time.time_ns() // 1_000_000)
            self.names[identity.public_key] = name
            service = NodeService(home, identity, listen=("127.0.0.1", 0), bootstrap=[])
            service.verbose = False
            service.listeners.append(self._listener(service))
            self.services.append(service)

    def _listener(self, service: NodeService) -> Callable[[Any], None]:
        me = self.names[service.identity.public_key]

        def on_event(event: Any) -> None:
            if isinstance(event, PeerConnected) and event.outbound:
                self.say(f"  {me} connected to {self.names.get(event.peer, encode_handle(event.peer))}")
            elif isinstance(event, EntriesStored) and service.store is not None:
                author = self.names.get(event.feed, encode_handle(event.feed)[:16])
                first = event.latest - event.count + 1
                for entry in service.store.feed_range(event.feed, first, event.latest):
                    if entry.kind != POST:
                        continue
                    sent = self.posted_at.get(entry.id)
                    delay = f" ({(time.monotonic() - sent) * 1000:.0f} ms after posting)" if sent else ""
                    self.say(f"  {me} received {author}'s post #{entry.seq}{delay}: {entry.text}")

        return on_event

    async def run(self, duration: float | None) -> None:
        async with trio.open_nursery() as nursery:
            first = self.services[0]
            await nursery.start(first.run)
            assert first.driver is not None
            seed = first.driver.local_addr
            self.say(
                f"{self.names[first.identity.public_key]:6} is {first.identity.handle}  (udp+tcp {seed[1]})"
            )
            if self.front_end is not None:
                line = await self.front_end(first, nursery)
                if line:
                    self.say(line)
            for service in self.services[1:]:
                service.bootstrap = [seed]
                await nursery.start(service.run)
                assert service.driver is not None
                name = self.names[service.identity.public_key]
                self.say(f"{name:6} is {service.identity.handle}  (port {service.driver.local_addr[1]})")
            await self._claim_names()
            self.say("\nEveryone follows everyone; connecting:")
            for service in self.services:
                for other in self.services:
                    if other is not service:
                        service.follow(other.identity.public_key)
            with trio.move_on_after(15):
                while not all(
                    len(s.core.replicator.sessions()) >= len(self.services) - 1 for s in self.services
                ):
                    await trio.sleep(0.1)
            self.say("\nPosting (Ctrl-C stops the demo):")
            deadline = None if duration is None else trio.current_time() + duration
            turn = 0
            while deadline is None or trio.current_time() < deadline:
                service = self.services[turn % len(self.services)]
                mention = self.services[(turn + 1) % len(self.services)].identity.handle
                text = SCRIPT[turn % len(SCRIPT)].format(mention=mention)
                if turn >= len(SCRIPT):
                    text = f"Post number {turn + 1}, still going."
                name = self.names[service.identity.public_key]
                self.say(f"{name} posts: {text}")
                self.posted_at[bytes.fromhex(service.post(text)["id"])] = time.monotonic()
                turn += 1
                wait = POST_EVERY if deadline is None else min(POST_EVERY, deadline - trio.current_time())
                await trio.sleep(max(0.0, wait))
            nursery.cancel_scope.cancel()

    async def _claim_names(self) -> None:
        """Every node claims its name; then each resolves the next one's through the DHT."""
        self.say("\nClaiming names in the DHT (proof of work, no registry):")
        for service in self.services:
            driver = service.driver
            assert driver is not None
            name = self.names[service.identity.public_key]
            claimed = int(time.time())
            subject = name_subject(service.identity.public_key, name, claimed)
            nonce = await trio.to_thread.run_sync(solve, NAME_DOMAIN, subject, NAME_CLAIM_MIN_WORK)
            # A Ctrl-C while the thread solved has stopped the nodes (their stores are closed):
            # the thread's result is delivered anyway, so look before using a node.
            await trio.lowlevel.checkpoint_if_cancelled()
            done = await driver.request(functools.partial(service.core.claim_name, name, claimed, nonce))
            self.say(
                f"  {name} claimed {name!r} ({service.core.name_records[name].work} bits of work, "
                f"stored at {done.stored_at} node(s))"
            )
        for i, service in enumerate(self.services):
            other = self.names[self.services[(i + 1) % len(self.services)].identity.public_key]
            driver = service.driver
            assert driver is not None
            found = await driver.request(functools.partial(service.core.start_resolve_name, other))
            who = (
                ", ".join(self.names.get(r.signer, encode_handle(r.signer)) for r in found.claims) or "nobody"
            )
            self.say(f"  {self.names[service.identity.public_key]} resolves {other!r}: {who}")


async def _until_signal(demo: Demo, duration: float | None) -> bool:
    """Run the demo until it ends or SIGINT / SIGTERM arrives; whether a signal stopped it.

    The signal cancels the demo's nursery, so every node closes its store and
    sockets; trio's own Ctrl-C handling would instead raise `KeyboardInterrupt`
    wherever the demo happens to be, wrapped in exception groups."""
    stopped = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                nonlocal stopped
                async for _ in signals:
                    stopped = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(on_signal)
            await demo.run(duration)
            nursery.cancel_scope.cancel()
    return stopped


#: Started beside the first node (the CLI serves the web app with it); returns a line to show.
FrontEnd = Callable[[NodeService, trio.Nursery], Awaitable[str | None]]


def run_demo(
    count: int, duration: float | None, say: Callable[[str], None], *, front_end: FrontEnd | None = None
) -> bool:
    """Run the demo network in a temporary directory (removed afterwards); whether a
    signal (Ctrl-C) stopped it.  ``front_end`` is started beside the first node (the node
    never imports a front end: the command line passes the web app)."""
    if not 2 <= count <= MAX_NODES:
        raise ValueError(f"the demo runs 2..{MAX_NODES} nodes")
    with tempfile.TemporaryDirectory(prefix="p2pblog-demo-") as tmp:
        demo = Demo(Path(tmp), count, say)
        demo.front_end = front_end
        say(f"Starting {count} p2pblog nodes on 127.0.0.1 (homes in {tmp}):")
        return trio.run(_until_signal, demo, duration)
