"""The running node (``p2pblog run``): NodeCore on real sockets, plus the control API.

`NodeService.run` opens the store, binds the DHT's UDP socket, starts the
control server, writes ``HOME/node.json`` and then, in the background:

* joins the DHT from the ``--bootstrap`` addresses and the contacts saved in
  the store by the previous run (so a restarted node needs no flag);
* publishes the node's signed peer record, retrying with backoff while no
  other node holds it (a node that started alone publishes as soon as peers
  appear), after which `NodeCore` re-signs and republishes it on a timer;
* saves the routing table to the store every `SAVE_CONTACTS_EVERY` seconds
  and on the way out.

Cancelling `run` (Ctrl-C / SIGTERM in the CLI) stops it cleanly: contacts are
saved, ``node.json`` removed, the store closed.
"""

from __future__ import annotations

import os
import socket
import sys
from random import Random
from typing import Any

import trio

from dht.ids import Address
from identity import Identity, decode_handle, encode_handle, fingerprint
from identity.handle import HandleError
from p2pblog.control import CommandFailed, ControlServer, NodeState, new_token, remove_state, write_state
from p2pblog.home import Home
from p2pblog.node import NodeCore, PeerResolved, RecordPublished
from p2pblog.runtime import UdpDriver, unix_now
from p2pblog.store import Store

DEFAULT_PORT = 7710
SAVE_CONTACTS_EVERY = 60.0
#: Saved contacts used to rejoin after a restart.
REJOIN_CONTACTS = 32
PUBLISH_RETRY = (2.0, 5.0, 10.0, 30.0, 60.0)


def advertised_host(listen_host: str, seeds: list[Address]) -> str:
    """The address to put in our peer record.

    A specific listen address is used as is.  For a wildcard listen address,
    the local address the OS would use to reach the first seed (a UDP
    ``connect`` sends nothing), else loopback.
    """
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    for host, port in seeds:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, port))
                return str(probe.getsockname()[0])
        except OSError:
            continue
    return "::1" if listen_host == "::" else "127.0.0.1"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class NodeService:
    def __init__(
        self,
        home: Home,
        identity: Identity,
        *,
        listen: Address,
        bootstrap: list[Address],
        advertise: str | None = None,
    ) -> None:
        self.home = home
        self.identity = identity
        self.listen = listen
        self.bootstrap = bootstrap
        self.advertise = advertise
        self.core = NodeCore(identity, Random(), unix_now())
        self.driver: UdpDriver | None = None
        self.store: Store | None = None
        #: The addresses in our peer record, known once the socket is bound.
        self.addrs: list[tuple[str, str, int]] = []

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        store = self.store = self.home.open_store()
        token = new_token()
        try:
            try:
                driver = self.driver = UdpDriver.bind(self.core, *self.listen)
            except OSError as exc:
                where = f"{self.listen[0]}:{self.listen[1]}"
                raise OSError(exc.errno, f"cannot listen on udp {where}: {exc.strerror}") from None
            saved = [(host, port) for _, host, port, _ in store.load_contacts()[:REJOIN_CONTACTS]]
            seeds = list(dict.fromkeys([*self.bootstrap, *saved]))
            host = self.advertise or advertised_host(self.listen[0], seeds)
            udp = driver.local_addr
            self.addrs = [("udp", host, udp[1])]
            server = ControlServer(token, self._handlers())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(driver.run)
                control = await nursery.start(server.serve)
                write_state(
                    self.home.path,
                    NodeState(
                        os.getpid(),
                        control,
                        token,
                        {"handle": self.identity.handle, "dht": list(udp)},
                    ),
                )
                log(f"p2pblog node {self.identity.handle}")
                log(f"listening on udp {udp[0]}:{udp[1]}, advertised as {host}:{udp[1]}")
                nursery.start_soon(self._join, seeds)
                nursery.start_soon(self._save_contacts_periodically)
                task_status.started()
        finally:
            self._save_contacts()
            remove_state(self.home.path, token)
            if self.driver is not None:
                self.driver.close()
            store.close()

    async def _join(self, seeds: list[Address]) -> None:
        driver = self.driver
        assert driver is not None
        if seeds:
            result = await driver.request(lambda now: self.core.bootstrap(seeds, now))
            log(
                f"joined the DHT: {result.seeds_answered} of {len(seeds)} seeds answered, "
                f"{len(self.core.dht.table)} contacts"
            )
        else:
            log("no bootstrap address and no saved contacts: waiting for peers to contact this node")
        for delay in (*PUBLISH_RETRY, None):
            published: RecordPublished = await driver.request(lambda now: self.core.publish(self.addrs, now))
            if published.stored_at:
                log(f"peer record published (seq {published.seq}) at {published.stored_at} nodes")
                return
            if delay is None:
                return  # NodeCore republishes on its own timer from here on
            await trio.sleep(delay)

    async def _save_contacts_periodically(self) -> None:
        while True:
            await trio.sleep(SAVE_CONTACTS_EVERY)
            self._save_contacts()

    def _save_contacts(self) -> None:
        if self.store is None:
            return
        table = self.core.dht.table
        rows = [(c.node_id, c.addr[0], c.addr[1], table.last_seen(c.node_id)) for c in table.contacts()]
        if rows:
            self.store.save_contacts(rows)

    # -- control commands ---------------------------------------------------------------

    def _handlers(self) -> dict[str, Any]:
        return {"status": self._status, "lookup": self._lookup, "peers": self._peers}

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        assert self.driver is not None
        return {
            "handle": self.identity.handle,
            "fingerprint": self.identity.fingerprint,
            "home": str(self.home.path),
            "dht": list(self.driver.local_addr),
            "addrs": [list(a) for a in self.addrs],
            "contacts": len(self.core.dht.table),
            "records": len(self.core.dht.records),
        }

    async def _lookup(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.driver is not None
        try:
            key = decode_handle(str(args.get("handle", "")))
        except HandleError as exc:
            raise CommandFailed(str(exc)) from None
        if key == self.identity.public_key and self.core.peer_record is not None:
            record = self.core.peer_record
        else:
            result = await self.driver.request(lambda now: self.core.start_resolve(key, now))
            if not isinstance(result, PeerResolved):
                return {"found": False, "handle": encode_handle(key)}
            record = result.record
        return {
            "found": True,
            "handle": encode_handle(record.signer),
            "fingerprint": fingerprint(record.signer),
            "addrs": [list(a) for a in record.addrs],
            "seq": record.seq,
            "expires": record.expires,
        }

    async def _peers(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        assert self.driver is not None
        table = self.core.dht.table
        buckets: dict[int, list[dict[str, Any]]] = {}
        for contact in table.contacts():
            buckets.setdefault(table.bucket_index(contact.node_id), []).append(
                {
                    "node_id": contact.node_id.hex(),
                    "host": contact.addr[0],
                    "port": contact.addr[1],
                    "last_seen": table.last_seen(contact.node_id),
                }
            )
        stats = self.core.dht.stats
        return {
            "self": {"node_id": self.core.dht.node_id.hex(), "dht": list(self.driver.local_addr)},
            "buckets": [{"index": i, "contacts": buckets[i]} for i in sorted(buckets)],
            "contacts": len(table),
            "dropped": {k: v for k, v in sorted(stats.items()) if k.startswith(("drop.", "misbehaved."))},
            "counters": dict(sorted(stats.items())),
        }
