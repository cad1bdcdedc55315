"""Port mapping on the home router: UPnP IGD through the ``miniupnpc`` package.

A node behind a home router (NAT) cannot be dialled from outside unless the
router forwards a port to it.  Most home routers let a host on their LAN ask
for that forwarding with UPnP IGD (``WANIPConnection:AddPortMapping``).
`PortMapper` is the runtime's side of that, and holds no policy beyond
mapping: what the node does with the mapped address is the caller's business
(`on_mapped`).

How it works (`PortMapper.run`, one task in the node's nursery):

1. Discover an IGD on the LAN (SSDP multicast, `DISCOVER_MS` per search: miniupnpc
   searches for up to four device types in turn when none answers) and select one
   that is connected; read its external address.  No router, no IGD, an
   external address that is itself private (a second NAT upstream: a mapping
   would not make the node reachable) end the attempt with a reason.
2. Map the node's listen port for TCP and UDP to one external port: the same
   port when the router has it free, else one the router picks
   (``AddAnyPortMapping``, IGDv2 only), else a few random ports
   (`RANDOM_TRIES`).  A lease of `LEASE` seconds is asked for; a router that
   only grants permanent leases (UPnP error 725) gets lease 0.
3. Renew the mappings at half the lease (permanent ones every
   `PERMANENT_REFRESH` seconds: a rebooted router forgets them), reading the
   external address again; a changed address is reported again.  A failed
   renewal is retried every `RETRY_RENEW` seconds until the lease ends; then
   the mapping is lost and the mapper starts again from step 1.
4. On exit (cancellation), remove the mappings (shielded, bounded by
   `CALL_TIMEOUT`).

A failed attempt is normal (most networks have no UPnP router): it is one
log line and the state ``failed`` with a reason; the mapper tries again every
`RETRY_FAILED` seconds without logging again until something changes.

miniupnpc's calls block (sockets, HTTP/SOAP), so each runs in a worker thread
(`trio.to_thread.run_sync`), bounded by `CALL_TIMEOUT` seconds (an abandoned
call finishes in its thread; a lock keeps calls on the client one at a time).
Tests pass a fake client (`client_factory`) with the same methods as
``miniupnpc.UPnP``, and trio's `MockClock` for the timing.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol, TypeVar

import trio

#: Seconds of lease asked for; renewed at half of it.
LEASE = 3600
#: Seconds between two refreshes of a permanent mapping (lease 0).
PERMANENT_REFRESH = 1800.0
#: Seconds between two tries of a failed renewal (until the lease ends).
RETRY_RENEW = 60.0
#: Seconds between two attempts after a failed one (no router, refused).
RETRY_FAILED = 600.0
#: Milliseconds of SSDP discovery.
DISCOVER_MS = 2000
#: Seconds one blocking call (discovery, one SOAP action) may take.
CALL_TIMEOUT = 10.0
#: Random external ports tried when the same port and a router-chosen one fail.
RANDOM_TRIES = 3
#: Protocols mapped, both to the same external port (the DHT's UDP and gossip's TCP
#: share the node's port number).
PROTOCOLS = ("TCP", "UDP")
#: UPnP errors (miniupnpc's ``strupnperror`` text) that mean "try another external port"
#: (miniupnpd answers "not authorized" for a port its permission rules deny).
CONFLICT_ERRORS = (
    "ConflictInMappingEntry",
    "ConflictWithOtherMechanisms",
    "SamePortValuesRequired",
    "Action not authorized",
)
PERMANENT_ONLY = "OnlyPermanentLeasesSupported"

T = TypeVar("T")


class MappingState(enum.Enum):
    STARTING = "starting"
    MAPPED = "mapped"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PortMapped:
    """The router forwards ``host:port`` (TCP and UDP) to this node's port."""

    host: str
    port: int
    #: Seconds of lease granted (0: permanent).
    lease: int


@dataclass(frozen=True, slots=True)
class MappingFailed:
    """No mapping: ``reason`` says why, in a phrase for the log and `status`."""

    reason: str


class PortMapError(Exception):
    """A mapping attempt failed; the message is the reason."""


class UpnpClient(Protocol):
    """The part of ``miniupnpc.UPnP`` the mapper uses (errors are plain ``Exception``)."""

    discoverdelay: int
    lanaddr: str

    def discover(self) -> int: ...
    def selectigd(self) -> str: ...
    def externalipaddress(self) -> str: ...
    def addportmapping(
        self, eport: int, proto: str, host: str, iport: int, desc: str, remote: str, lease: int
    ) -> bool: ...
    def addanyportmapping(
        self, eport: int, proto: str, host: str, iport: int, desc: str, remote: str
    ) -> int: ...
    def deleteportmapping(self, eport: int, proto: str) -> bool: ...


def miniupnpc_client() -> UpnpClient:
    """A ``miniupnpc.UPnP`` client; `PortMapError` when the package is not installed."""
    try:
        import miniupnpc
    except ImportError:
        raise PortMapError("miniupnpc is not installed (pip install 'p2pblog[portmap]')") from None
    client: UpnpClient = miniupnpc.UPnP()
    return client


class RunSync(Protocol):
    async def __call__(self, fn: Callable[[], T], /) -> T: ...


#: The mapper's own worker thread: a router call that hangs (and is abandoned at its
#: timeout) holds this one slot, never one of trio's shared pool (DNS lookups, stamps).
_ROUTER_THREAD = trio.CapacityLimiter(1)


async def _in_thread(fn: Callable[[], T], /) -> T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=_ROUTER_THREAD)


def _public_address(external: object) -> str:
    """The router's external address, checked (a router's answer is not trusted)."""
    try:
        address = ipaddress.ip_address(str(external))
    except ValueError:
        raise PortMapError(f"the router has no external address ({str(external)[:60]!r})") from None
    if not address.is_global:
        raise PortMapError(
            f"the router's external address {address} is not public (another NAT in front of it): "
            "a mapping would not make this node reachable"
        )
    return str(address)


def _port(value: object) -> int:
    """A port the router chose, checked."""
    try:
        port = int(str(value))
    except ValueError:
        raise PortMapError(f"the router answered a port that is none ({str(value)[:20]!r})") from None
    if not 1 <= port <= 65535:
        raise PortMapError(f"the router answered port {port}, outside 1..65535")
    return port


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _not_found(exc: BaseException) -> PortMapError:
    # miniupnpc reports an empty discovery as an exception whose text is "Success".
    detail = _reason(exc)
    if detail in ("Success", "No UPnP device discovered"):
        return PortMapError("no UPnP router found")
    return PortMapError(f"no UPnP router found ({detail})")


class PortMapper:
    """Map ``port`` (TCP and UDP) on the LAN's UPnP router while `run` runs."""

    def __init__(
        self,
        port: int,
        *,
        client_factory: Callable[[], UpnpClient] = miniupnpc_client,
        on_mapped: Callable[[PortMapped], None] | None = None,
        log: Callable[[str], None] | None = None,
        lease: int = LEASE,
        description: str = "p2pblog",
        rng: Random | None = None,
        call_timeout: float = CALL_TIMEOUT,
        discover_ms: int | None = None,
        run_sync: RunSync | None = None,
    ) -> None:
        self.port = port
        self.call_timeout = call_timeout
        self.discover_ms = DISCOVER_MS if discover_ms is None else discover_ms
        #: Runs a blocking call: a worker thread (tests run the fake client inline).
        self.run_sync: RunSync = run_sync or _in_thread
        self.client_factory = client_factory
        self.on_mapped = on_mapped
        self.log = log or (lambda message: None)
        self.lease = lease
        self.description = description
        self.rng = rng or Random()
        self.state = MappingState.STARTING
        #: Why the latest attempt or renewal failed (None while all is well).
        self.reason: str | None = None
        self.mapped: PortMapped | None = None
        #: trio time at which the granted lease ends (None: permanent or not mapped).
        self.expires: float | None = None
        self.renewals = 0
        self.attempts = 0
        self._client: UpnpClient | None = None
        self._lanaddr = ""
        self._lock = threading.Lock()

    # -- reporting ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For the node's ``status``: state, external address, lease, reason."""
        return {
            "state": self.state.value,
            "external": [self.mapped.host, self.mapped.port] if self.mapped else None,
            "internal_port": self.port,
            "lease": self.mapped.lease if self.mapped else None,
            "renewals": self.renewals,
            "attempts": self.attempts,
            "reason": self.reason,
        }

    def _fail(self, reason: str) -> MappingFailed:
        if self.state is not MappingState.FAILED or reason != self.reason:
            self.log(f"port mapping: {reason}")
        self.state, self.reason, self.mapped, self.expires = MappingState.FAILED, reason, None, None
        return MappingFailed(reason)

    def _succeed(self, mapped: PortMapped) -> None:
        changed = mapped != self.mapped
        self.state, self.reason, self.mapped = MappingState.MAPPED, None, mapped
        lease = f"a {mapped.lease} s lease" if mapped.lease else "a permanent lease"
        if changed:
            self.log(f"port mapping: the router forwards {mapped.host}:{mapped.port} (tcp+udp) here, {lease}")
            if self.on_mapped is not None:
                self.on_mapped(mapped)

    # -- blocking calls -----------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], T], extra: float = 0.0) -> T:
        """``fn()`` in a worker thread, at most `call_timeout` (+ ``extra``) seconds; errors
        become `PortMapError`."""
        timeout = self.call_timeout + extra

        def locked() -> T:
            # Never queue behind a call the router left hanging: fail at once instead.
            if not self._lock.acquire(blocking=False):
                raise PortMapError("a previous call to the router has not returned yet")
            try:
                return fn()
            finally:
                self._lock.release()

        try:
            with trio.fail_after(timeout):
                return await self.run_sync(locked)
        except trio.TooSlowError:
            raise PortMapError(f"{what}: the router did not answer in {timeout:g} s") from None
        except PortMapError:
            raise
        except Exception as exc:
            raise PortMapError(f"{what}: {_reason(exc)}") from None

    async def _discover(self) -> tuple[UpnpClient, str]:
        """An IGD client and the router's external address."""
        client = self.client_factory()
        client.discoverdelay = self.discover_ms

        def find() -> str:
            try:
                found = client.discover()
                if found:
                    client.selectigd()
            except Exception as exc:
                raise _not_found(exc) from None
            if not found:
                raise PortMapError("no UPnP router found")
            return client.externalipaddress()

        external = await self._call("discovery", find, extra=4 * self.discover_ms / 1000)
        return client, _public_address(external)

    def _add(self, client: UpnpClient, eport: int, lease: int) -> int:
        """Map ``eport`` for every protocol; the lease granted.  Undoes a half mapping."""
        done: list[str] = []
        try:
            for proto in PROTOCOLS:
                try:
                    client.addportmapping(eport, proto, self._lanaddr, self.port, self.description, "", lease)
                except Exception as exc:
                    if lease and PERMANENT_ONLY in str(exc):
                        lease = 0
                        client.addportmapping(eport, proto, self._lanaddr, self.port, self.description, "", 0)
                    else:
                        raise
                done.append(proto)
        except BaseException:
            for proto in done:
                with contextlib.suppress(Exception):  # the router may have dropped it already
                    client.deleteportmapping(eport, proto)
            raise
        return lease

    def _map(self, client: UpnpClient) -> tuple[int, int]:
        """Map our port: (external port, lease).  Blocking."""
        self._lanaddr = client.lanaddr
        candidates: list[int | None] = [self.port, None]  # None: the router picks
        candidates += [self.rng.randrange(1024, 65536) for _ in range(RANDOM_TRIES)]
        refused = ""
        for candidate in candidates:
            try:
                if candidate is None:
                    eport = _port(
                        client.addanyportmapping(
                            self.port, PROTOCOLS[0], self._lanaddr, self.port, self.description, ""
                        )
                    )
                    # AddAnyPortMapping grants a permanent lease: map again with ours, and the rest.
                    return eport, self._add(client, eport, self.lease)
                return candidate, self._add(client, candidate, self.lease)
            except Exception as exc:
                refused = _reason(exc)
                if candidate is None or any(c in refused for c in CONFLICT_ERRORS):
                    continue  # another port may do
                raise PortMapError(f"router refused: {refused}") from None
        raise PortMapError(f"router refused: {refused} (tried {len(candidates)} ports)")

    def _remove(self, client: UpnpClient, eport: int) -> None:
        for proto in PROTOCOLS:
            with contextlib.suppress(Exception):  # gone already (expired, router rebooted)
                client.deleteportmapping(eport, proto)

    # -- the task -----------------------------------------------------------------------

    async def attempt(self) -> PortMapped | MappingFailed:
        """One attempt: discover, map; the result (also in `state`, `mapped`, `reason`)."""
        self.attempts += 1
        try:
            client, external = await self._discover()
            eport, lease = await self._call("mapping", lambda: self._map(client))
        except PortMapError as exc:
            return self._fail(str(exc))
        self._client = client
        self.expires = trio.current_time() + lease if lease else None
        mapped = PortMapped(external, eport, lease)
        self._succeed(mapped)
        return mapped

    def renew_at(self) -> float:
        """trio time of the next renewal of the current mapping."""
        assert self.mapped is not None
        if not self.mapped.lease:
            return trio.current_time() + PERMANENT_REFRESH
        return trio.current_time() + self.mapped.lease / 2

    async def renew(self) -> bool:
        """Map the same external port again and read the external address; False on failure
        (the reason is kept; the mapping stands until its lease ends)."""
        assert self._client is not None and self.mapped is not None
        client, eport = self._client, self.mapped.port
        try:
            lease = await self._call("renewal", lambda: self._add(client, eport, self.lease))
            external = _public_address(await self._call("renewal", client.externalipaddress))
        except PortMapError as exc:
            if self.reason != str(exc):
                self.log(f"port mapping: {exc}; retrying until the lease ends")
            self.reason = str(exc)
            return False
        self.renewals += 1
        self.expires = trio.current_time() + lease if lease else None
        self._succeed(PortMapped(external, eport, lease))
        return True

    async def run(
        self, *, task_status: trio.TaskStatus[PortMapped | MappingFailed] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Map, keep mapped, and remove the mappings when cancelled.  ``task_status`` gets the
        first attempt's result (`PortMapped` or `MappingFailed`)."""
        started = False
        try:
            while True:
                result = await self.attempt()
                if not started:
                    task_status.started(result)
                    started = True
                if isinstance(result, MappingFailed):
                    await trio.sleep(RETRY_FAILED)
                    continue
                await self._keep()
        finally:
            await self._release()
            self.state = MappingState.STOPPED

    async def _keep(self) -> None:
        """Renew the mapping until it is lost (returns) or the task is cancelled."""
        due = self.renew_at()
        while True:
            await trio.sleep_until(due)
            if await self.renew():
                due = self.renew_at()
                continue
            now = trio.current_time()
            if self.expires is not None and now + RETRY_RENEW >= self.expires:
                await trio.sleep_until(self.expires)
                if await self.renew():
                    due = self.renew_at()
                    continue
                self._fail(f"mapping lost: {self.reason}")
                self._client = None
                return
            due = now + RETRY_RENEW

    async def _release(self) -> None:
        client, mapped = self._client, self.mapped
        self._client = None
        if client is None or mapped is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await self._call("removal", lambda: self._remove(client, mapped.port))
            except PortMapError as exc:
                self.log(f"port mapping: not removed ({exc}); the router drops it when its lease ends")
            else:
                self.log(f"port mapping: removed {mapped.host}:{mapped.port}")
        self.mapped = None
