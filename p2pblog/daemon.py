"""The running node (``p2pblog run``): NodeCore on real sockets, plus the control API.

`NodeService.run` opens the store, binds the DHT's UDP socket and the gossip
TCP listener (same port number), starts the control server, writes
``HOME/node.json`` and starts the core (`NodeCore.start`).  Everything the
node then does on its own is the core's policy, the same the simulator runs
(`p2pblog.lifecycle`): joining the DHT from the ``--bootstrap`` addresses and
the contacts saved by the previous run, publishing the peer record with
retries, saving contacts, reconnecting to the peers in its address book,
searching providers of followed feeds, announcing the feeds it holds.

The service only moves bytes (through `p2pblog.runtime.NodeDriver`),
answers the control API, logs what happens (joining, connections, arrivals,
refused input) and hands every event to its ``listeners`` (the demo prints
arrivals that way).

No input can stop the node: the driver and the control server catch what a
core call or a command raises at that one input, count it
(``internal_errors`` in `status`, by input kind) and hand it here, where it
is logged with its traceback, at most once per `LOG_EVERY` seconds per kind
and exception type (`LogLimiter`).  A full disk is no bug: the write is
refused (`StorageFull`), `status` says ``storage.full``, posting answers
``the disk is full: ...``, and the node keeps serving what it holds.  A
node started on a full disk runs that way too (it can still serve its
followers and readers); only a store that cannot be opened stops it.

Log lines about refused input are limited per source *address* (an IPv4
address, an IPv6 /64; a gossip peer's key maps to the address it connected
from): rotating ports or keys does not buy more lines; and `LOG_BUDGET`
caps such lines in all.

With ``port_mapping``, `run` also asks the home router for a port mapping
(`p2pblog.portmap.PortMapper`, UPnP IGD through miniupnpc) once the sockets
are bound; the mapped public address is kept in `NodeService.mapped_addr` and
shown by `status` (``port_mapping``); the mapping is removed when `run` ends.
No router, or a refusal, is one log line.

Cancelling `run` (Ctrl-C / SIGTERM in the CLI) stops it cleanly: the core
saves its contacts (`NodeCore.close`), ``node.json`` is removed, the store
closed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from random import Random
from typing import Any, Final

import trio

from dht.events import PeerMisbehaved as DhtPeerMisbehaved
from dht.ids import Address
from identity import Identity, decode_handle, encode_handle, fingerprint
from identity.handle import HandleError
from identity.limits import MENTION_WORK
from identity.netaddr import host_key
from identity.records import RecordError, check_name
from p2pblog import names
from p2pblog.control import CommandFailed, NodeState, new_token, remove_state, write_state
from p2pblog.control_server import ControlServer
from p2pblog.entry import Entry, parse_entry_id
from p2pblog.errors import EntryError, ListenError, LocalProtocolError, StorageFull, StoreDamaged
from p2pblog.events import (
    DevicePaired,
    DmRefused,
    DmStateChanged,
    DmStored,
    DuplicateInstanceSeen,
    OwnHeadKnown,
    TrackedPostFetched,
)
from p2pblog.followers import count_followers
from p2pblog.home import Home
from p2pblog.node import (
    JoinFinished,
    MentionAdmitted,
    MentionDelivered,
    MentionRefused,
    NameClaimPublished,
    NameResolved,
    NodeCore,
    PeerResolved,
    ProvidersResolved,
    StartupFinished,
)
from p2pblog.own_records import PEER_REPUBLISH
from p2pblog.pairing import decode_code, pending
from p2pblog.portmap import PortMapped, PortMapper
from p2pblog.reachability import UNREACHABLE, ReachabilityChanged
from p2pblog.replication import EntriesStored, InputRefused, PeerConnected, PeerDisconnected
from p2pblog.runtime import NodeDriver, unix_now
from p2pblog.store import FULL_BELOW_BYTES, Store, is_damage
from p2pblog.track import TrackError, add_term, remove_term

#: Seconds between two log lines about refused input of one kind from one source.
LOG_EVERY = 10.0
#: Sources whose last refusal log line is remembered.
LOG_KEYS = 1024
#: Rate-limited log lines in all, per `LOG_EVERY` seconds (whatever their source).
LOG_BUDGET = 50
#: Feeds the ``replicas`` command reports, and how long it waits for its provider searches.
REPLICA_FEEDS = 500
REPLICA_SEARCH_TIMEOUT = 10.0


class LogLimiter:
    """At most one line per key every `LOG_EVERY` seconds, and `LOG_BUDGET` lines in all per
    `LOG_EVERY` seconds (or ``every`` and ``budget``); the next line of a key says how many
    of it were left out."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        every: float = LOG_EVERY,
        budget: int = LOG_BUDGET,
    ) -> None:
        self.clock = clock
        #: Seconds between two lines of one key, and lines in all per that many seconds
        #: (``[limits]`` ``log_every`` and ``log_budget`` of HOME/p2pblog.toml).
        self.every = every
        self.budget = budget
        #: key -> (time of the last line, lines left out since).
        self._logged: dict[Hashable, tuple[float, int]] = {}
        self._window = (float("-inf"), 0)  # (start of the budget window, lines in it)
        #: Lines left out (by key or by the budget).
        self.suppressed = 0

    def allow(self, key: Hashable) -> str | None:
        """None to leave the line out; else the suffix to append (lines left out since)."""
        now = self.clock()
        last, skipped = self._logged.get(key, (-self.every, 0))
        start, lines = self._window
        if now - start >= self.every:
            start, lines = now, 0
        if now - last < self.every or lines >= self.budget:
            self._logged[key] = (last, skipped + 1)
            self.suppressed += 1
            return None
        self._window = (start, lines + 1)
        self._logged.pop(key, None)  # re-insert: the dict's order is least recently logged first
        self._logged[key] = (now, 0)
        if len(self._logged) > LOG_KEYS:
            self._logged.pop(next(iter(self._logged)))
        return f" (and {skipped} more like it)" if skipped else ""


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


#: Replicator counters that count refused input (shown as "dropped" by status).
DROP_COUNTERS = (
    "handshake.",
    "channel.",
    "misbehaved.",
    "entries.forged",
    "entries.malformed",
    "refused.",
    "session.failed",
    "fork_proof.invalid",
    "mentions.refused_",
    "dms.refused_",
)


def _changed(feed: bytes, entry: Entry | None) -> dict[str, Any]:
    return {"handle": encode_handle(feed), "seq": entry.seq if entry else None, "changed": entry is not None}


@dataclass(frozen=True, slots=True)
class Appended:
    """The service appended ``entry`` to the own feed (a post, a delete) for a local
    command: front ends that show the timeline live hear of it with the peers' entries."""

    entry: Entry


#: A control command: its JSON arguments in, its JSON result out (`CommandFailed` for a refusal).
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


#: Log levels by how a message begins (the level of any other line is ``info``).
_LEVEL_BY_START: Final = (
    ("internal error", "error"),
    ("Traceback", "error"),
    ("warning:", "warn"),
    ("refused", "warn"),
    ("DHT peer", "warn"),
    ("contacts not saved", "warn"),
    ("the disk is full", "warn"),
)


def log(message: str, level: str | None = None) -> None:
    """A line on stderr: ``2026-12-07T02:50:01Z info MESSAGE`` (UTC, then the level:
    ``info``, ``warn`` or ``error``, from ``level`` or from how the message begins).

    One line per event, so that a service manager's journal or ``grep`` takes each
    whole; only a traceback continues on the lines after its levelled first line.
    A log nobody can write (a full disk, a closed pipe) is no reason to stop."""
    if level is None:
        level = next((lv for start, lv in _LEVEL_BY_START if message.startswith(start)), "info")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):
        print(f"{stamp} {level} {message}", file=sys.stderr, flush=True)


class NodeService:
    def __init__(
        self,
        home: Home,
        identity: Identity,
        *,
        listen: Address,
        bootstrap: list[Address],
        advertise: str | None = None,
        mention_work: int | None = None,
        strict: bool = False,
        port_mapping: bool = False,
    ) -> None:
        self.home = home
        #: Ask the home router for a port mapping (UPnP IGD) once the sockets are bound.
        self.port_mapping = port_mapping
        self.port_mapper: PortMapper | None = None
        #: Why no mapper runs (None once one is started).
        self._port_mapping_off: str | None = None if port_mapping else "disabled"
        #: The public (host, port) the home router forwards to this node, once mapped.
        self.mapped_addr: tuple[str, int] | None = None
        self._mapped_addrs: list[tuple[str, str, int]] = []
        #: Re-raise what an input raised (after counting it): for tests.
        self.strict = strict
        self.mention_work = mention_work
        self.identity = identity
        self.listen = listen
        self.bootstrap = bootstrap
        self.advertise = advertise
        self._core: NodeCore | None = None
        self.driver: NodeDriver | None = None
        self.store: Store | None = None
        #: The addresses in our peer record, known once the socket is bound.
        self.addrs: list[tuple[str, str, int]] = []
        self._control: ControlServer | None = None
        #: Called with every event the node reports (after the service's own logging).
        self.listeners: list[Callable[[Any], None]] = []
        #: Print connection and arrival messages on stderr.
        self.verbose = True
        #: Ask peers to dial us back, and run in client mode when they cannot (`p2pblog.reachability`).
        self.check_reachability = True
        #: Seconds between re-signings of our peer record (shorter only in tests).
        self.peer_republish: float = PEER_REPUBLISH
        #: Seconds between lookups of followed identities' root rotations (`p2pblog.rotation`).
        self.keyevent_poll: float | None = None
        #: Relay circuits for nodes nobody can dial (while we are reachable: `p2pblog.relay`).
        self.relay = True
        #: The addresses the node joined through (for the log).
        self._seeds: list[Address] = []
        self.limiter = LogLimiter()
        #: Where each recently connected peer connected from (for the log limiter's sources).
        self._peer_addrs: dict[bytes, str] = {}
        #: The control API's commands by name; front ends may add theirs (the web app's
        #: ``web_login``), at any time.
        self.handlers: dict[str, Handler] = self._handlers()
        #: The latest provider search result per feed: (unix time, signers), for `replicas`.

    def _log(self, message: str) -> None:
        if self.verbose:
            log(message)

    def _log_limited(self, key: Hashable, message: str) -> None:
        """Log at most one line per key every `LOG_EVERY` seconds (a flood must not
        flood stderr); the next line says how many were left out."""
        more = self.limiter.allow(key)
        if more is not None:
            self._log(message + more)

    def _source(self, peer: bytes | None) -> Hashable:
        """The log limiter's source for a gossip peer: its address (IPv4, IPv6 /64) when known,
        so that fresh keys from one address share one limit."""
        if peer is None:
            return None
        return self._peer_addrs.get(peer, peer)

    def _internal_error(self, kind: str, exc: Exception) -> None:
        """An input (``kind``) raised: the driver or the control server counted it and goes on."""
        if isinstance(exc, StorageFull):
            self._log_limited(("storage_full",), f"{exc}; the node goes on read-only for it")
            return
        if isinstance(exc, StoreDamaged) or is_damage(exc):
            # A read met a damaged page: recorded, so that no write touches the file again
            # and the next command says what to do (one line here, not a traceback per read).
            damage = exc if isinstance(exc, StoreDamaged) else None
            if damage is None and self.store is not None:
                damage = self.store.found_damage(exc)
            self._log_limited(("store_damaged",), f"error: {damage or exc}; the node refuses every write")
            return
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = (frame[0].filename, frame[0].lineno) if frame else None
        more = self.limiter.allow(("internal", kind, type(exc), where))
        if more is None:
            return
        lines = traceback.format_exception(exc)
        # Always on stderr, verbose or not: a bug must be seen.
        log(f"internal error while handling a {kind} input (counted; the node goes on){more}:")
        log("".join(lines).rstrip())

    @property
    def core(self) -> NodeCore:
        if self._core is None:
            raise RuntimeError("the node is not running")
        return self._core

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        store = self.store = self.home.open_store()  # StorageFull if it cannot even be opened
        token = new_token()
        try:
            work = MENTION_WORK if self.mention_work is None else self.mention_work
            core = self._core = NodeCore(
                self.identity,
                Random(),
                unix_now(),
                store=store,
                mention_work=work,
                random_bytes=os.urandom,
                check_reachability=self.check_reachability,
                relay=self.relay,
                peer_republish=self.peer_republish,
            )
            if self.keyevent_poll is not None:
                core.key_events.poll_every = self.keyevent_poll
            try:
                driver = self.driver = NodeDriver.bind_both(
                    core,
                    *self.listen,
                    on_event=self._on_event,
                    on_internal_error=self._internal_error,
                    strict=self.strict,
                    verify_processes=True,
                )
            except OSError as exc:
                where = f"{self.listen[0]}:{self.listen[1]}"
                raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
            seeds = core.join_seeds(self.bootstrap)
            host = self.advertise or advertised_host(self.listen[0], seeds)
            udp = driver.local_addr
            tcp = driver.gossip_addr
            self.addrs = [("udp", host, udp[1]), ("tcp", host, tcp[1])]
            server = self._control = ControlServer(
                token,
                self.handlers,
                on_internal_error=self._internal_error,
                strict=self.strict,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(driver.run)
                if self.port_mapping:
                    self._start_port_mapping(nursery, tcp[1])
                control = await nursery.start(server.serve)
                write_state(
                    self.home.path,
                    NodeState(
                        os.getpid(),
                        control,
                        token,
                        {"handle": self.identity.handle, "dht": list(udp), "gossip": list(tcp)},
                    ),
                )
                self._log(f"p2pblog node {self.identity.handle}")
                self._log(
                    f"listening on udp {udp[0]}:{udp[1]} (DHT) and tcp {tcp[0]}:{tcp[1]} (gossip), "
                    f"advertised as {host}"
                )
                if self.listen[0] in ("0.0.0.0", "::", "") and host in ("127.0.0.1", "::1"):
                    self._log(
                        "note: other machines cannot reach a loopback address; give --advertise "
                        "with this machine's address or name (or --bootstrap, which finds it)"
                    )
                following = core.following()
                if following:
                    self._log(f"following {len(following)} feed(s); reconnecting")
                if not core.own_head.known:
                    self._log(
                        "the head of our own feed is not known (a restored home): catching up from the "
                        "peers that hold it; posting waits until then"
                    )
                if not seeds:
                    self._log(
                        "no bootstrap address and no saved contacts: waiting for peers to contact this node"
                    )
                free = store.free_bytes()
                if free is not None and free < FULL_BELOW_BYTES:
                    self._log(
                        f"warning: the disk holding {store.path} is full ({free} bytes free): the node "
                        "serves what it holds, but cannot store posts or new entries until space is freed"
                    )
                self._seeds = seeds
                with driver.guard("start"):
                    core.start(self.addrs, self.bootstrap, unix_now())
                driver.flush()
                task_status.started()
        finally:
            if self._core is not None:
                try:
                    self._core.close(unix_now())
                except StorageFull as exc:
                    self._log(f"contacts not saved: {exc}")
            remove_state(self.home.path, token)
            if self.driver is not None:
                self.driver.close()
            store.close()

    def _start_port_mapping(self, nursery: trio.Nursery, port: int) -> None:
        """Map ``port`` (the DHT's UDP and gossip's TCP share it) on the home router."""
        if self.listen[0] in ("127.0.0.1", "::1", "localhost"):
            self._port_mapping_off = "the node listens on loopback only"
            return  # nothing to say: no router is involved (`status` says why it is off)

        def on_mapped(mapped: PortMapped) -> None:
            self.mapped(mapped.host, mapped.port)

        self.port_mapper = PortMapper(port, on_mapped=on_mapped, log=self._log)
        nursery.start_soon(self.port_mapper.run)

    def mapped(self, host: str, port: int) -> None:
        """The home router forwards ``host:port`` (TCP and UDP) to this node: advertise it
        first, before the local addresses (the core re-signs the records and checks
        reachability again: `NodeCore.addresses_changed`)."""
        self.mapped_addr = (host, port)
        local = [a for a in self.addrs if a[1:] != (host, port) and a not in self._mapped_addrs]
        self._mapped_addrs = [("udp", host, port), ("tcp", host, port)]
        self.addrs = [*self._mapped_addrs, *local]
        if self._core is not None:
            with self.driver.guard("port_mapping") if self.driver is not None else contextlib.nullcontext():
                self.core.addresses_changed(self.addrs, unix_now())
            self._flush()

    # -- events -----------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PeerConnected):
            self._peer_addrs.pop(event.peer, None)
            self._peer_addrs[event.peer] = host_key(event.addr[0])
            if len(self._peer_addrs) > LOG_KEYS:
                self._peer_addrs.pop(next(iter(self._peer_addrs)))
        if isinstance(event, DuplicateInstanceSeen):
            self._log_duplicate(event)  # verbose or not: the user must act
        if self.verbose:
            if isinstance(event, JoinFinished):
                self._log_join(event)
            elif isinstance(event, ReachabilityChanged):
                self._log(f"reachability: {event.reason}")
                if event.state == UNREACHABLE:
                    self._log(
                        "client mode: this node looks things up and replicates over connections it "
                        "opens itself, but advertises no address and serves no DHT requests"
                    )
            elif isinstance(event, StartupFinished) and event.stored_at:
                self._log(f"peer record published (seq {event.seq}) at {event.stored_at} nodes")
            elif isinstance(event, PeerConnected):
                way = "to" if event.outbound else "from"
                self._log(f"connected {way} {fingerprint(event.peer)} at {event.addr[0]}:{event.addr[1]}")
            elif isinstance(event, PeerDisconnected):
                self._log(f"disconnected from {fingerprint(event.peer)}: {event.reason}")
            elif isinstance(event, EntriesStored):
                self._log(
                    f"received {event.count} entries of {fingerprint(event.feed)} "
                    f"from {fingerprint(event.peer)} (now at #{event.latest})"
                )
            elif isinstance(event, OwnHeadKnown):
                self._log(f"caught up with our own feed at #{event.held}: posting is possible again")
            elif isinstance(event, ProvidersResolved):
                who = ", ".join(fingerprint(r.signer) for r in event.records) or "none"
                self._log(f"providers of {fingerprint(event.feed)}: {who}")
            elif isinstance(event, MentionAdmitted):
                self._log(f"mention from {fingerprint(event.entry.author)} (#{event.entry.seq}) admitted")
            elif isinstance(event, MentionRefused):
                self._log_limited(
                    ("mention", self._source(event.sender), event.reason),
                    f"refused a mention notice from {fingerprint(event.sender)}: {event.reason}",
                )
            elif isinstance(event, MentionDelivered):
                verdict = "admitted" if event.admitted else f"refused (status {event.status})"
                self._log(f"mention notice to {fingerprint(event.recipient)} {verdict}")
            elif isinstance(event, DevicePaired):
                self._log(f"paired: this node is now a device of {encode_handle(event.identity)}")
            elif isinstance(event, DmStored):
                self._log(f"direct message from {fingerprint(event.sender)} stored in {event.folder}")
            elif isinstance(event, DmStateChanged):
                self._log(f"direct message to {fingerprint(event.recipient)}: {event.state}")
            elif isinstance(event, DmRefused):
                self._log_limited(
                    ("dm", self._source(event.peer), event.reason),
                    f"refused a direct message from {fingerprint(event.peer)}: {event.reason}",
                )
            elif isinstance(event, TrackedPostFetched):
                self._log_limited(
                    ("tracked", self._source(event.peer)),
                    f"tracked post #{event.seq} of {fingerprint(event.author)} "
                    f"fetched from {fingerprint(event.peer)}",
                )
            elif isinstance(event, InputRefused):
                who = fingerprint(event.peer) if event.peer else "an unauthenticated peer"
                self._log_limited(
                    ("gossip", self._source(event.peer), event.reason),
                    f"refused input from {who}: {event.reason} {event.detail}".rstrip(),
                )
            elif isinstance(event, DhtPeerMisbehaved):
                host, port = event.addr
                message = f"DHT peer {host}:{port}: {event.reason}"
                self._log_limited(("dht", host_key(host), event.reason), message)
        for listener in self.listeners:
            listener(event)

    def _log_duplicate(self, event: DuplicateInstanceSeen) -> None:
        where = ", ".join(
            f"{host}:{port}" for proto, host, port in event.addrs if proto != "udp"
        ) or ", ".join(f"{host}:{port}" for _, host, port in event.addrs)
        instance = event.instance.hex() if event.instance is not None else "of an earlier version"
        log(
            f"warning: another node runs with this identity's key at {where} (instance {instance}): "
            "posts from both will fork the feed; stop one"
        )

    def _log_join(self, event: JoinFinished) -> None:
        if event.answered:
            self._log(
                f"joined the DHT: {event.answered} of {event.seeds} seeds answered, {event.contacts} contacts"
            )
            return
        seeds = self._seeds
        shown = ", ".join(f"{h}:{p}" for h, p in seeds[:5]) + (", ..." if len(seeds) > 5 else "")
        what = "bootstrap address(es)" if self.bootstrap else "saved contact(s) from the last run"
        self._log(
            f"warning: none of the {event.seeds} {what} answered ({shown}); "
            "--bootstrap takes the HOST:PORT of a running node. Still listening: "
            "nodes that contact us are added."
        )

    # -- local commands (also used in-process by the demo) ------------------------------

    def post(self, text: str, reply_to: bytes | None = None) -> dict[str, Any]:
        entry = self.core.post(text, unix_now(), reply_to=reply_to)
        self._flush()
        self._appended(entry)
        # Peers it was pushed to: connected ones that replicate our feed.
        peers = self.core.replicator.peers_replicating(self.core.identity.public_key)
        return {"id": entry.id.hex(), "seq": entry.seq, "peers": peers}

    def follow(self, feed: bytes) -> dict[str, Any]:
        entry = self.core.follow(feed, unix_now())
        self._flush()
        return {
            "handle": encode_handle(feed),
            "seq": entry.seq if entry else None,
            "changed": entry is not None,
        }

    def unfollow(self, feed: bytes) -> dict[str, Any]:
        entry = self.core.unfollow(feed, unix_now())
        self._flush()
        return {
            "handle": encode_handle(feed),
            "seq": entry.seq if entry else None,
            "changed": entry is not None,
        }

    def _appended(self, entry: Entry) -> None:
        for listener in self.listeners:
            listener(Appended(entry))

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run control command ``name`` in-process, as the control API would (front ends
        call this: one implementation of each command).  Raises `CommandFailed`."""
        handler = self.handlers.get(name)
        if handler is None:
            raise CommandFailed(f"unknown command {name!r}")
        return await handler(args)

    def _flush(self) -> None:
        if self.driver is not None:
            self.driver.flush()

    # -- control commands ---------------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "status": self._status,
            "lookup": self._lookup,
            "peers": self._peers,
            "post": self._post,
            "follow": self._follow,
            "unfollow": self._unfollow,
            "delete": self._delete,
            "profile_set": self._profile_set,
            "block": self._block,
            "unblock": self._unblock,
            "name_claim": self._name_claim,
            "resolve": self._resolve,
            "replicas": self._replicas,
            "device_approve": self._device_approve,
            "device_revoke": self._device_revoke,
            "dm_send": self._dm_send,
            "dm_read": self._dm_read,
            "followers": self._followers,
            "track_add": self._track_add,
            "track_remove": self._track_remove,
            "track_list": self._track_list,
        }

    def _entry_id_arg(self, args: dict[str, Any], name: str) -> bytes:
        try:
            return parse_entry_id(str(args.get(name, "")))
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None

    def _key_arg(self, args: dict[str, Any]) -> bytes:
        try:
            key = decode_handle(str(args.get("handle", "")))
        except HandleError as exc:
            raise CommandFailed(str(exc)) from None
        if key == self.identity.public_key:
            raise CommandFailed("that is this node's own handle")
        return key

    async def _delete(self, args: dict[str, Any]) -> dict[str, Any]:
        target = self._entry_id_arg(args, "id")
        try:
            entry = self.core.delete(target, unix_now())
        except EntryError as exc:
            raise CommandFailed(str(exc)) from None
        self._flush()
        self._appended(entry)
        return {"id": entry.id.hex(), "seq": entry.seq, "target": target.hex()}

    async def _profile_set(self, args: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k in ("name", "bio") if isinstance(v := args.get(k), str)}
        if not fields:
            raise CommandFailed("profile_set takes 'name' and/or 'bio' (text)")
        try:
            entry = self.core.set_profile(fields, unix_now())
        except EntryError as exc:
            raise CommandFailed(str(exc)) from None
        self._flush()
        return {"id": entry.id.hex(), "seq": entry.seq, "profile": fields}

    async def _device_approve(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            code = decode_code(str(args.get("code", "")))
            entry = self.core.approve_device(code, unix_now(), admin=bool(args.get("admin")))
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        self._flush()
        if entry is not None:
            self._appended(entry)
        return {"device": encode_handle(code.device), "name": code.name, "seq": entry.seq if entry else None}

    async def _device_revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key_arg(args)
        try:
            entry = self.core.revoke_device(key, unix_now())
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        self._flush()
        self._appended(entry)
        return {"device": encode_handle(key), "after": entry.body["after"], "seq": entry.seq}

    async def _dm_send(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key_arg(args)
        text = args.get("text")
        if not isinstance(text, str):
            raise CommandFailed("'text' must be a string")
        try:
            did = self.core.send_dm(key, text, unix_now())
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        except StorageFull as exc:
            raise CommandFailed(str(exc)) from None
        self._flush()
        row = next((r for r in self.core.store.dm_thread(key, 50) if r.id == did), None)
        return {"id": did.hex(), "handle": encode_handle(key), "state": row.state if row else "queued"}

    async def _dm_read(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key_arg(args)
        return {"handle": encode_handle(key), "marked": self.core.store.dm_mark_read(key)}

    async def _block(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key_arg(args)
        new, unfollowed = self.core.block(key, unix_now())
        self._flush()
        return {"handle": encode_handle(key), "changed": new, "unfollowed": unfollowed is not None}

    async def _unblock(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key_arg(args)
        changed = self.core.unblock(key)
        return {"handle": encode_handle(key), "changed": changed}

    async def _track_add(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._track_change(args, add_term)

    async def _track_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._track_change(args, remove_term)

    def _track_change(
        self, args: dict[str, Any], change: Callable[[Store, str], tuple[str, bool]]
    ) -> dict[str, Any]:
        assert self.store is not None
        try:
            term, changed = change(self.store, str(args.get("term", "")))
        except TrackError as exc:
            raise CommandFailed(str(exc)) from None
        self.core.track_changed(unix_now())
        self._flush()
        return {"term": term, "changed": changed, "terms": self.core.tracker.terms}

    async def _track_list(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return {"terms": self.core.tracker.terms}

    async def _name_claim(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.driver is not None
        name, claimed, nonce = args.get("name"), args.get("claimed"), args.get("nonce")
        if not isinstance(name, str) or not isinstance(claimed, int) or not isinstance(nonce, str):
            raise CommandFailed("name_claim takes 'name' (text), 'claimed' (int) and 'nonce' (hex)")
        try:
            nonce_bytes = bytes.fromhex(nonce)
            check_name(name)
            result: NameClaimPublished = await self.driver.request(
                lambda now: self.core.claim_name(name, claimed, nonce_bytes, now)
            )
        except (ValueError, RecordError) as exc:
            raise CommandFailed(str(exc)) from None
        except LocalProtocolError as exc:  # our DHT store refused it (full): retried later
            raise CommandFailed(f"the claim is saved but not published yet: {exc}") from None
        record = self.core.name_records[name]
        return {"name": name, "work": record.work, "seq": result.seq, "stored_at": result.stored_at}

    async def _resolve(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.driver is not None and self.store is not None
        name = args.get("name")
        try:
            check_name(name if isinstance(name, str) else "")
        except RecordError as exc:
            raise CommandFailed(str(exc)) from None
        assert isinstance(name, str)
        result: NameResolved = await self.driver.request(lambda now: self.core.start_resolve_name(name, now))
        following = self.core.following()
        petnames: dict[bytes, list[str]] = {}
        for pet, key in self.store.petnames():
            petnames.setdefault(key, []).append(pet)
        ranked = names.claimants_for(self.store, self.identity.public_key, result)
        suggested = names.suggestion(ranked)
        return {
            "name": name,
            "claims": [
                {
                    "handle": encode_handle(r.signer),
                    "fingerprint": fingerprint(r.signer),
                    "claimed": r.claimed,
                    "work": r.work,
                    "seq": r.seq,
                    "expires": r.expires,
                    "self": r.signer == self.identity.public_key,
                    "following": r.signer in following,
                    "petnames": petnames.get(r.signer, []),
                    "relation": names.RELATION_NAMES[c.relation],
                    "witnessed": c.witnessed,
                    "witnesses": c.witnesses,
                    "followed_by": c.followed_by,
                }
                for c in ranked
                for r in (c.record,)
            ],
            "suggested": None if suggested is None else encode_handle(suggested.record.signer),
        }

    async def _post(self, args: dict[str, Any]) -> dict[str, Any]:
        text = args.get("text")
        if not isinstance(text, str):
            raise CommandFailed("'text' must be a string")
        reply_to = None
        if args.get("reply_to") is not None:
            try:
                reply_to = parse_entry_id(str(args["reply_to"]))
            except ValueError as exc:
                raise CommandFailed(str(exc)) from None
        try:
            return self.post(text, reply_to)
        except (EntryError, HandleError) as exc:  # HandleError: a mention with a typo
            raise CommandFailed(str(exc)) from None

    async def _follow(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.follow(self._key_arg(args))

    async def _unfollow(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.unfollow(self._key_arg(args))

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        assert self.driver is not None and self.store is not None
        core, store = self.core, self.store
        own = self.identity.public_key
        replicator = core.replicator
        peers = []
        for peer, session, outbound, addr, since in replicator.sessions():
            peers.append(
                {
                    "handle": encode_handle(peer),
                    "fingerprint": fingerprint(peer),
                    "addr": list(addr),
                    "direction": "out" if outbound else "in",
                    "since": since,
                    "feeds": sorted(encode_handle(f) for f in replicator.wanted if session.peer_wants(f)),
                }
            )
        feeds = []
        for feed in sorted(replicator.wanted, key=lambda f: (f != own, f)):
            state = store.feed_state(feed)
            feeds.append(
                {
                    "handle": encode_handle(feed),
                    "fingerprint": fingerprint(feed),
                    "own": feed == own,
                    "seq": state.latest_seq,
                    "forked": state.forked_seq is not None,
                    "peers": replicator.peers_replicating(feed),
                }
            )
        dropped: dict[str, int] = {}
        gossip_counters = core.counters()
        for name, value in gossip_counters.items():
            if name.startswith(DROP_COUNTERS):
                dropped[f"gossip.{name}"] = value
        for name, value in core.dht.stats.items():
            if name.startswith(("drop.", "misbehaved.")):
                dropped[f"dht.{name}"] = value
        control = self._control
        internal = Counter(self.driver.internal_errors)
        if control is not None:
            if control.refused:
                dropped["control.refused"] = control.refused  # malformed, bad token, slow, over the cap
            for name, value in control.counts.items():
                if name.startswith("refused."):
                    dropped[f"control.{name}"] = value
            if control.counts["internal_error"]:
                internal["control"] = control.counts["internal_error"]
        free = store.free_bytes()
        return {
            "handle": self.identity.handle,
            "fingerprint": self.identity.fingerprint,
            "home": str(self.home.path),
            "dht": list(self.driver.local_addr),
            "gossip": list(self.driver.gossip_addr),
            "addrs": [list(a) for a in self.addrs],
            "port_mapping": self._port_mapping_status(),
            "contacts": len(core.dht.table),
            "records": len(core.dht.records),
            "peers": peers,
            "connections": replicator.connection_count,
            "reachability": {**core.reachability.doc(), "client_mode": core.client_mode},
            "relay": {
                "serving": replicator.relay_enabled,
                "reservations": len(replicator.reservations),
                "circuits": replicator.circuit_count,
                "via": [f"{h}:{p}" for h, p in core.relay_client.addrs],
            },
            "admission": {
                **replicator.admission(unix_now()),
                "peer_feeds": replicator.peer_feed_budget.used,
                "peer_feeds_max": replicator.peer_feed_budget.limit,
                "peer_feeds_refused": replicator.peer_feed_budget.refused,
            },
            "verify": {
                "workers": self.driver.verify_workers,
                "in": self.driver.verify_in,
                "offloaded": replicator.verify.stats["verified_offloaded"],
                "inline": replicator.verify.stats["verified_inline"],
                "waiting": len(replicator.verify),
                "queued_bytes": replicator.verify.queued_bytes,
                "max_queued_bytes": replicator.verify.max_bytes,
            },
            "feeds": feeds,
            "own_head": core.own_head.doc(),
            "blocked": len(replicator.blocked),
            "names": sorted(self.core.name_records),
            "instance": core.instances.instance.hex(),
            "duplicate_instances": core.instances.doc(),
            "mentions_pending": len(core.pending_mentions()),
            "identity": encode_handle(core.own_identity),
            "pairing_pending": pending(store) is not None,
            "dms": {
                "pending": len(core.dms.pending()),
                "held_for_others": core.dms.held_count,
                "unread": store.dm_unread(),
            },
            "track": {"terms": core.tracker.terms, "announced": sorted(core.hashtags.records)},
            "dropped": dict(sorted(dropped.items())),
            "internal_errors": dict(sorted(internal.items())),
            "storage": {
                "full": store.full or (free is not None and free < FULL_BELOW_BYTES),
                "free_bytes": free,
                "refused_writes": store.refused_writes,
                "refused_inputs": dict(sorted(self.driver.storage_full.items())),
            },
            "counters": {
                **{f"gossip.{k}": v for k, v in sorted(gossip_counters.items())},
                **{f"dht.{k}": v for k, v in sorted(core.dht.stats.items())},
                **{f"dht.records.store.{k}": v for k, v in sorted(core.dht.records.stats.items())},
                **{f"dht.providers.store.{k}": v for k, v in sorted(core.dht.providers.stats.items())},
                **{f"runtime.{k}": v for k, v in sorted(self.driver.stats.items())},
                **{f"control.{k}": v for k, v in sorted((control.counts if control else {}).items())},
                **{f"reachability.{k}": v for k, v in sorted(core.reachability.stats.items())},
                **{f"relay_client.{k}": v for k, v in sorted(core.relay_client.stats.items())},
                **{f"track.{k}": v for k, v in sorted(core.track_counters().items())},
                "log.suppressed": self.limiter.suppressed,
            },
        }

    def _port_mapping_status(self) -> dict[str, Any]:
        """``state`` (off, starting, mapped, failed, stopped), ``external`` [host, port] or
        None, ``reason`` (why not mapped) and the lease, renewals and attempts."""
        if self.port_mapper is None:
            return {"state": "off", "external": None, "reason": self._port_mapping_off or "not started"}
        return self.port_mapper.status()

    async def _replicas(self, args: dict[str, Any]) -> dict[str, Any]:
        """For each feed this node replicates: the peers known to hold a copy.

        A copy is held by each connected peer that replicates the feed and by each
        provider the DHT names for it.  With ``search`` true, one provider search per
        feed (as many and as often as `NodeCore.replica_searches` allows, run together)
        refreshes the DHT's part first;
        else the latest search the node made is used."""
        assert self.driver is not None
        core, own = self.core, self.identity.public_key
        replicator = core.replicator
        feeds = sorted(replicator.wanted, key=lambda f: (f != own, f))[:REPLICA_FEEDS]
        allowed = core.replica_searches(unix_now()) if args.get("search") else 0
        if allowed:
            driver = self.driver

            async def search(feed: bytes) -> None:
                with trio.move_on_after(REPLICA_SEARCH_TIMEOUT):
                    await driver.request(lambda now: core.start_find_providers(feed, now))

            async with trio.open_nursery() as nursery:
                for feed in feeds[:allowed]:
                    nursery.start_soon(search, feed)
        connected: dict[bytes, set[bytes]] = {f: set() for f in feeds}
        for peer, session, _outbound, _addr, _since in replicator.sessions():
            for feed in feeds:
                if session.peer_wants(feed):
                    connected[feed].add(peer)
        out = []
        for feed in feeds:
            when, providers = core.discovery.last_providers.get(feed, (None, frozenset()))
            holders = (connected[feed] | providers) - {own}
            out.append(
                {
                    "handle": encode_handle(feed),
                    "fingerprint": fingerprint(feed),
                    "own": feed == own,
                    "replicas": len(holders),
                    "connected": len(connected[feed]),
                    "providers": len(providers - {own}),
                    "searched": when,
                }
            )
        return {"feeds": out}

    async def _followers(self, args: dict[str, Any]) -> dict[str, Any]:
        """Who follows feed ``handle`` (`p2pblog.followers`).  With ``search`` true, a fresh
        provider search first (throttled with the ``replicas`` searches), waited for up to
        `REPLICA_SEARCH_TIMEOUT`; else the latest answer the node has."""
        assert self.driver is not None and self.store is not None
        try:
            feed = decode_handle(str(args.get("handle", "")))
        except HandleError as exc:
            raise CommandFailed(str(exc)) from None
        core, driver = self.core, self.driver
        fresh = bool(args.get("search")) and core.replica_searches(unix_now()) > 0
        if fresh:
            with trio.move_on_after(REPLICA_SEARCH_TIMEOUT) as waited:
                await driver.request(lambda now: core.start_find_providers(feed, now))
            fresh = not waited.cancelled_caught
        searched, providers = core.discovery.last_providers.get(feed, (None, frozenset()))
        connected = [p for p, session, *_ in core.replicator.sessions() if session.peer_wants(feed)]
        found = count_followers(
            self.store,
            feed,
            self.identity.public_key,
            providers=providers,
            connected=connected,
            searched=searched,
            fresh=fresh,
        )
        return found.to_json(self.store)

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
