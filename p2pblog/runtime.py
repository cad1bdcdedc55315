"""The trio runtime: real sockets and timers around the sans-IO cores.

Theory of operation
-------------------
`UdpDriver` gives one core (a `NodeCore`, or a bare `dht.DhtCore`) one UDP
socket and one timer, in the shape of aioquic's asyncio adapter: after every
input (a datagram, a timer expiry, a command) it calls `flush`, which sends
every queued datagram, dispatches every event, and re-arms the timer at the
core's earliest deadline.  The socket is a non-blocking stdlib socket read
after `trio.lowlevel.wait_readable`, so `flush` can send synchronously; a
send that would block or fails is a lost datagram, which the protocol
already tolerates (and which is counted).  The same holds for an address
the socket layer refuses with `TypeError` or `ValueError` instead of
`OSError` (a NUL in the host or its zone, a name IDNA cannot encode): the decoders
refuse those, and the runtime counts one that slips through as a lost
datagram or a failed dial (``send_error.<type>``, ``dial_error.<type>``)
and reports it to ``on_internal_error``.

Commands are started on the core with the current time and awaited through
their query id: every command's query ends in exactly one result event
(the cores guarantee it), which `flush` hands to the waiting task.

`NodeDriver` adds the gossip connections: a `GossipTransport` accepts and
dials byte streams (`TcpTransport`: a TCP listener and `trio.open_tcp_stream`;
tests plug in `trio.testing` memory streams), and each connection gets a
reader and a writer task.  It also checks the signatures of received
entries on worker threads, one per core (`p2pblog.ingest_queue`): the core
hands out ``verifications_to_make``, a task per batch runs
`p2pblog.verify.first_forgery` in `trio.to_thread.run_sync` (PyNaCl
releases the GIL inside libsodium) and reports ``entries_verified``; the
event loop goes on decrypting and storing meanwhile.  With
``verify_processes`` (what `p2pblog run` uses) the thread only waits for a
`p2pblog.verify.VerifyProcesses` worker, so the checks never compete with
the loop for the GIL; a pool that breaks (a worker killed) is counted
(``verify_process_error.*``) and the batch is checked on a thread instead.

Failures inside an input: the cores turn a peer's bad bytes into events,
so an exception out of a core call is a bug of ours (or a refused local
write, e.g. a full disk).  Either way it must not take the node down with
it: every core call of one input (a datagram, a timer expiry, one
connection's bytes, a dial's outcome, a stamp, a flush) runs under
`UdpDriver.guard`, which counts the exception in ``internal_errors`` by
input kind, hands it to ``on_internal_error`` (the daemon logs it with its
traceback, rate-limited) and goes on with the next input.  A connection
whose input failed is closed (its session state is suspect); a failing
timer is not fired again before `TIMER_ERROR_PAUSE` seconds, so a bug that
fails on every expiry cannot spin the loop.  Only `Exception` is caught:
`trio.Cancelled`, `KeyboardInterrupt` and `SystemExit` pass.  `StorageFull`
(a write the full disk refused) is no bug: it is counted in ``storage_full``
instead, and never re-raised.  With
``strict=True`` (the in-process tests) the exception is counted and then
re-raised, so a test sees the bug where it happens.

Clock: the cores take ``now`` in Unix seconds that never go backwards.
`unix_now` is ``time.monotonic()`` anchored to the wall clock once at import,
so records can carry absolute expiry times and a wall-clock step (NTP) cannot
make time run backwards inside a core.  Drivers take the clock as a
parameter, so a test can hand them ``trio.current_time`` under
`trio.testing.MockClock` and make the cores' time virtual too.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from typing import Any, Protocol

import trio

from identity.pow import NOTICE_DOMAIN, notice_subject, solve
from p2pblog.entry import Entry
from p2pblog.errors import StorageFull
from p2pblog.verify import VerifyProcesses, default_workers, first_forgery

_EPOCH_OFFSET = time.time() - time.monotonic()
#: Largest datagram read from the socket; the core counts and drops oversize ones.
RECV_BYTES = 65536
#: Least seconds between two timer expiries after one failed (see "Failures" above).
TIMER_ERROR_PAUSE = 1.0
#: Seconds without a batch to verify after which the verifier processes are stopped.
VERIFY_IDLE = 5.0

#: ``on_internal_error(kind, exc)``: told of every exception a guarded input raised.
ErrorHook = Callable[[str, Exception], None]


def unix_now() -> float:
    """Unix time in seconds from a monotonic clock (never decreases)."""
    return time.monotonic() + _EPOCH_OFFSET


class DatagramCore(Protocol):
    """What `UdpDriver` needs of a core: `dht.DhtCore`'s driver contract."""

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]: ...
    def next_event(self) -> Any: ...


class UdpDriver:
    """Drives one datagram core over one UDP socket, with one timer."""

    def __init__(
        self,
        core: DatagramCore,
        sock: socket.socket,
        *,
        clock: Callable[[], float] = unix_now,
        on_event: Callable[[Any], None] | None = None,
        on_internal_error: ErrorHook | None = None,
        strict: bool = False,
    ) -> None:
        sock.setblocking(False)
        self.core = core
        self.sock = sock
        self.clock = clock
        self.on_event = on_event
        self.on_internal_error = on_internal_error
        self.strict = strict
        self.stats: Counter[str] = Counter()
        #: Exceptions raised while handling one input, by input kind (see `guard`).
        self.internal_errors: Counter[str] = Counter()
        #: Inputs whose writes a full disk refused (`StorageFull`), by input kind.
        self.storage_full: Counter[str] = Counter()
        self._waiters: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._rearm = trio.Event()
        # The deadline the timer task sleeps towards (None: no deadline).
        self._armed_at: float | None = None
        # `run`'s wait for the socket, while it waits: cancelled to re-read an earlier deadline.
        self._wake: trio.CancelScope | None = None

    @classmethod
    def bind(cls, core: DatagramCore, host: str, port: int, **kwargs: Any) -> UdpDriver:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(core, sock, **kwargs)

    @property
    def local_addr(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.sock.close()

    # -- failures -------------------------------------------------------------------

    @contextmanager
    def guard(self, kind: str) -> Iterator[None]:
        """Run one input's core calls: an `Exception` is counted under ``kind``, reported to
        ``on_internal_error`` and swallowed (re-raised in strict mode)."""
        try:
            yield
        except StorageFull as exc:
            # Not a bug: a write the full disk refused (nothing of it was stored).
            self.storage_full[kind] += 1
            if self.on_internal_error is not None:
                self.on_internal_error(kind, exc)
        except Exception as exc:
            self.internal_errors[kind] += 1
            if self.on_internal_error is not None:
                self.on_internal_error(kind, exc)
            if self.strict:
                raise

    def _unusable_address(self, kind: str, exc: Exception) -> None:
        """A send or a dial (``kind``) the socket layer refused with something other than
        `OSError`: counted as a lost datagram or a failed dial (``<kind>_error.<type>``)
        and reported to ``on_internal_error`` (logged, rate-limited), never raised."""
        self.stats[f"{kind}_error.{type(exc).__name__}"] += 1
        if self.on_internal_error is not None:
            self.on_internal_error(kind, exc)

    # -- the flush after every input ----------------------------------------------

    def flush(self) -> None:
        failed = self.internal_errors["flush"] + self.storage_full["flush"]
        try:
            with self.guard("flush"):
                self._flush()
        finally:
            if self.internal_errors["flush"] + self.storage_full["flush"] != failed:
                self._wake_timer(None)  # the failed flush may not have re-armed: read the deadline again

    def _flush(self) -> None:
        for data, addr in self.core.datagrams_to_send():
            try:
                self.sock.sendto(data, addr)
            except OSError as exc:
                # Would block, unreachable, refused: a lost datagram; the RPC layer retries.
                self.stats[f"send_error.{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
            except (ValueError, TypeError) as exc:
                # An address the socket layer refuses outright (a NUL, a zone, a name IDNA
                # cannot encode; UnicodeError is a ValueError).  The decoders refuse such
                # addresses, so this is a bug of ours, but it costs one datagram, not the node.
                self._unusable_address("send", exc)
        while (event := self.core.next_event()) is not None:
            qid = getattr(event, "query_id", None)
            waiter = self._waiters.pop(qid, None) if qid is not None else None
            if waiter is not None:
                waiter[1].append(event)
                waiter[0].set()
            elif self.on_event is not None:
                self.on_event(event)
        # Wake the timer task only if the deadline moved earlier; a later one
        # just means it wakes once, re-reads the deadline and sleeps again
        # (handle_timer runs only once the deadline is due).
        deadline = self.core.get_timer()
        if deadline is not None and (self._armed_at is None or deadline < self._armed_at):
            self._wake_timer(deadline)

    def _wake_timer(self, deadline: float | None) -> None:
        """Make the task that sleeps towards the deadline wake at ``deadline`` (None: now, to
        read the deadline again)."""
        self._rearm.set()
        wake = self._wake
        if wake is None:
            return
        if deadline is None:
            wake.cancel()
        else:
            wake.deadline = trio.current_time() + (deadline - self.clock())
            self._armed_at = deadline

    async def request(self, start: Callable[[float], int]) -> Any:
        """Start a command (``start(now) -> query id``) and wait for its result event."""
        qid = start(self.clock())  # raises to the caller (a control command counts it)
        done, box = trio.Event(), list[Any]()
        self._waiters[qid] = (done, box)
        try:
            self.flush()
            await done.wait()
        finally:
            self._waiters.pop(qid, None)
        return box[0]

    # -- tasks ------------------------------------------------------------------------

    async def run(self) -> None:
        """Receive datagrams and fire timers until cancelled.

        One task: it waits for the socket inside a cancel scope whose deadline
        is the core's, and fires the timer when the scope expires, as
        `_receive_loop` and `_timer_loop` do in two tasks (which `NodeDriver`
        runs beside its others).  A node's DHT then costs one trio task, not a
        nursery and three (issue 18).  An input that moves the deadline earlier
        moves the scope's (`_wake_timer`); a later one is read when the scope
        expires, as `_timer_loop` does.  The scope lives until it expires, not
        one per datagram: a scope per wait cost 20% more CPU per get.
        """
        not_before = float("-inf")  # after a failed expiry: `TIMER_ERROR_PAUSE`
        try:
            while True:
                deadline = self._read_deadline(not_before)
                now = self.clock()
                if deadline is not None and deadline <= now:
                    not_before = self._fire_timer(now, not_before)
                    await trio.lowlevel.checkpoint()
                    continue
                wake_at = math.inf if deadline is None else trio.current_time() + (deadline - now)
                with trio.CancelScope(deadline=wake_at) as self._wake:
                    while True:
                        await trio.lowlevel.wait_readable(self.sock)
                        self._receive_batch()
                        await trio.lowlevel.checkpoint()
        finally:
            self._wake = None

    def _read_deadline(self, not_before: float) -> float | None:
        """The core's next deadline, no earlier than ``not_before`` (and armed)."""
        deadline: float | None = self.clock() + TIMER_ERROR_PAUSE
        with self.guard("timer"):
            deadline = self.core.get_timer()
        if deadline is not None:
            deadline = max(deadline, not_before)
        self._armed_at = deadline
        return deadline

    def _fire_timer(self, now: float, not_before: float) -> float:
        """Run the core's due timers and flush; returns the new ``not_before``."""
        failed = self.internal_errors["timer"]
        with self.guard("timer"):
            self.core.handle_timer(now)
        if self.internal_errors["timer"] != failed:
            not_before = now + TIMER_ERROR_PAUSE
        self.flush()
        return not_before

    # One receive buffer per thread, shared by every driver of that thread: a datagram is
    # copied out of it before anything else runs (no checkpoint in between).  `recvfrom`
    # would malloc RECV_BYTES per datagram and shrink it, and glibc's heap keeps the holes
    # (about 56 KiB per node in benchmarks/bench_dht.py, issue 18).
    _recv_buffers = threading.local()

    async def _receive_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self._receive_batch()
            await trio.lowlevel.checkpoint()

    def _receive_batch(self) -> None:
        """Read and handle what the socket holds (at most 256 datagrams), then flush."""
        got_any = False
        buffer: bytearray | None = getattr(self._recv_buffers, "buffer", None)
        if buffer is None:
            buffer = self._recv_buffers.buffer = bytearray(RECV_BYTES)
        view = memoryview(buffer)
        for _ in range(256):  # bounded batch, then let other tasks run
            try:
                n, addr = self.sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                self.stats[f"recv_error.{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
                continue
            got_any = True
            data = bytes(view[:n])
            if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
                addr = (str(addr[0]), int(addr[1]))
            try:  # `guard`, entered only on the rare failure (a context manager per datagram costs)
                self.core.receive_datagram(data, addr, self.clock())
            except Exception as exc:
                with self.guard("datagram"):
                    raise exc
        view.release()
        if got_any:
            self.flush()

    async def _timer_loop(self) -> None:
        not_before = float("-inf")  # after a failed expiry: `TIMER_ERROR_PAUSE`
        while True:
            self._rearm = trio.Event()
            deadline = self._read_deadline(not_before)
            if deadline is None:
                await self._rearm.wait()
                continue
            now = self.clock()
            if deadline > now:
                # Woken by a re-arm (an earlier deadline) or by this one: either
                # way read the deadline again, since inputs may also have moved
                # it later; the core's timer fires only once it is due.
                with trio.move_on_after(deadline - now):
                    await self._rearm.wait()
                continue
            not_before = self._fire_timer(now, not_before)
            await trio.lowlevel.checkpoint()


#: Seconds a gossip dial may take before it counts as failed.
DIAL_TIMEOUT = 5.0
#: Bytes read from a gossip connection at a time.
TCP_RECV_BYTES = 65536


class StreamCore(DatagramCore, Protocol):
    """What `NodeDriver` needs of a core: the datagram contract plus gossip connections."""

    def dials_to_make(self) -> list[tuple[int, str, int]]: ...
    def data_to_send(self) -> list[tuple[int, bytes]]: ...
    def connections_to_close(self) -> list[int]: ...
    def connection_accepted(self, addr: tuple[str, int], now: float) -> int: ...
    def connection_opened(self, conn_id: int, now: float) -> None: ...
    def connection_failed(self, conn_id: int, now: float) -> None: ...
    def data_received(self, conn_id: int, data: bytes, now: float) -> None: ...
    def connection_lost(self, conn_id: int, now: float) -> None: ...
    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]: ...
    def stamp_made(self, entry_id: bytes, recipient: bytes, nonce: bytes, now: float) -> None: ...
    def offload_verification(self) -> None: ...
    def verifications_to_make(self) -> list[tuple[int, tuple[Entry, ...]]]: ...
    def entries_verified(self, token: int, forgery: int | None, now: float) -> None: ...


class GossipTransport(Protocol):
    """Where `NodeDriver`'s gossip connections come from: `TcpTransport`, or a test's."""

    @property
    def listen_addr(self) -> tuple[str, int]:
        """The address peers dial to reach us."""
        ...

    async def accept(self) -> tuple[trio.abc.Stream, tuple[str, int]]:
        """The next inbound connection and its peer's address; OSError (e.g. EMFILE) is counted."""
        ...

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Dial a peer; OSError means the dial failed (so do ValueError and TypeError, which
        `trio.open_tcp_stream` raises for a host it cannot take, e.g. ``".."``)."""
        ...

    def close(self) -> None: ...


class TcpTransport:
    """Gossip over TCP: a bound, listening stdlib socket, and `trio.open_tcp_stream` to dial."""

    def __init__(self, listener: socket.socket) -> None:
        self.sock = listener
        self._listener: trio.SocketListener | None = None

    @property
    def listen_addr(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    async def accept(self) -> tuple[trio.abc.Stream, tuple[str, int]]:
        if self._listener is None:
            self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        while True:
            stream = await self._listener.accept()
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:  # the peer reset the connection before we asked (ENOTCONN)
                await stream.aclose()
                continue
            return stream, (str(host), int(port))

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    def close(self) -> None:
        self.sock.close()


class _Stream:
    """The driver's side of one gossip connection."""

    def __init__(self) -> None:
        self.stream: trio.abc.Stream | None = None
        self.out = bytearray()
        self.wake = trio.Event()
        self.closing = False
        self.scope = trio.CancelScope()


class NodeDriver(UdpDriver):
    """`UdpDriver` plus the gossip connections of a `NodeCore`, over a `GossipTransport`
    (TCP from `bind_both`).

    Each connection runs a reader task (bytes -> ``data_received``) and a
    writer task (``data_to_send`` -> the stream).  `flush` also starts the
    dials the core asks for and closes the connections it gives up.  The
    core bounds what it queues per connection, so the write buffers are
    bounded too.
    """

    def __init__(
        self,
        core: StreamCore,
        sock: socket.socket,
        transport: GossipTransport,
        *,
        verify_processes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(core, sock, **kwargs)
        self.stream_core = core
        self.transport = transport
        self._streams: dict[int, _Stream] = {}
        self._nursery: trio.Nursery | None = None
        #: Proof-of-work stamps to make (the core asked before `run` started).
        self._stamps: list[tuple[bytes, bytes, int]] = []
        #: One stamp at a time, in a worker thread, so the event loop stays responsive.
        self._stamp_limiter = trio.CapacityLimiter(1)
        #: Received entries whose signatures to check, on worker threads (one per core),
        #: while this thread goes on decrypting, decoding and storing (`p2pblog.ingest_queue`).
        self._verifications: list[tuple[int, tuple[Entry, ...]]] = []
        self.verify_workers = default_workers()
        self._verify_limiter = trio.CapacityLimiter(self.verify_workers)
        #: Worker processes for the checks, or None: worker threads (see `_verify`).
        self._verify_processes = VerifyProcesses(self.verify_workers) if verify_processes else None
        #: Checks running now, and when the last one ended (`_retire_verifiers`).
        self._verifying = 0
        self._verified_at = 0.0
        self._retiring = False
        core.offload_verification()
        # The core may ask how much a connection still has to write (a relay bounds what a
        # peer that does not read can make it hold); cores without relays do not ask.
        watch = getattr(core, "watch_send_backlog", None)
        if watch is not None:
            watch(self._backlog)

    def _backlog(self, conn_id: int) -> int:
        st = self._streams.get(conn_id)
        return 0 if st is None else len(st.out)

    @classmethod
    def bind_both(cls, core: StreamCore, host: str, port: int, **kwargs: Any) -> NodeDriver:
        """Bind UDP host:port for the DHT and TCP for gossip (the same port if free)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, udp.getsockname()[1]))
            except OSError:
                if port != 0:
                    raise
                tcp.bind((host, 0))  # the free UDP port is taken for TCP: any port will do
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return cls(core, udp, TcpTransport(tcp), **kwargs)

    @property
    def verify_in(self) -> str:
        """Where received entries' signatures are checked: ``processes`` or ``threads``."""
        return "threads" if self._verify_processes is None else "processes"

    @property
    def gossip_addr(self) -> tuple[str, int]:
        return self.transport.listen_addr

    def close(self) -> None:
        super().close()
        self.transport.close()
        if self._verify_processes is not None:
            self._verify_processes.close()

    @property
    def connections(self) -> int:
        return len(self._streams)

    def flush(self) -> None:
        core = self.stream_core
        for conn_id, data in core.data_to_send():
            st = self._streams.get(conn_id)
            if st is None:
                st = self._streams[conn_id] = _Stream()  # a dial about to start
            st.out += data
            st.wake.set()
        for conn_id, host, port in core.dials_to_make():
            self._streams.setdefault(conn_id, _Stream())
            if self._nursery is not None:
                self._nursery.start_soon(self._dial, conn_id, host, port)
        for conn_id in core.connections_to_close():
            st = self._streams.get(conn_id)
            if st is not None:
                st.closing = True
                st.wake.set()
        self._stamps += core.stamps_to_make()
        if self._nursery is not None:
            for job in self._stamps:
                self._nursery.start_soon(self._make_stamp, *job)
            self._stamps.clear()
        self._verifications += core.verifications_to_make()
        if self._nursery is not None:
            for token, entries in self._verifications:
                self._nursery.start_soon(self._verify, token, entries)
            self._verifications.clear()
        super().flush()

    async def _verify(self, token: int, entries: tuple[Entry, ...]) -> None:
        self._verifying += 1
        try:
            forgery = await self._check(entries)
        finally:
            self._verifying -= 1
            self._verified_at = self.clock()
        with self.guard("verify"):
            self.stream_core.entries_verified(token, forgery, self.clock())
        self.flush()
        if self._verify_processes is not None and not self._retiring and self._nursery is not None:
            self._retiring = True
            self._nursery.start_soon(self._retire_verifiers)

    async def _retire_verifiers(self) -> None:
        """Stop the verifier processes once no batch came for `VERIFY_IDLE` seconds: they
        serve bursts (a catch-up), and a settled node should not hold their memory."""
        processes = self._verify_processes
        assert processes is not None
        try:
            while self._verifying or self.clock() - self._verified_at < VERIFY_IDLE:
                await trio.sleep(VERIFY_IDLE)
            await trio.to_thread.run_sync(processes.close)
            self.stats["verify_processes_retired"] += 1
        finally:
            self._retiring = False

    async def _check(self, entries: tuple[Entry, ...]) -> int | None:
        forgery: int | None = None
        processes = self._verify_processes
        if processes is not None:
            future = None
            try:
                future = processes.submit(entries)
                forgery = await trio.to_thread.run_sync(future.result, limiter=self._verify_limiter)
            except Exception as exc:  # a worker died (BrokenProcessPool), cannot start, ...
                self.stats[f"verify_process_error.{type(exc).__name__}"] += 1
                if future is not None and not isinstance(exc, CancelledError):
                    processes.reset(future)  # (a cancelled one: its pool was reset already)
                processes = None
        if processes is None:
            forgery = await trio.to_thread.run_sync(first_forgery, entries, limiter=self._verify_limiter)
        return forgery

    async def _make_stamp(self, entry_id: bytes, recipient: bytes, bits: int) -> None:
        subject = notice_subject(recipient, entry_id)
        nonce = await trio.to_thread.run_sync(
            solve, NOTICE_DOMAIN, subject, bits, limiter=self._stamp_limiter
        )
        with self.guard("stamp"):
            self.stream_core.stamp_made(entry_id, recipient, nonce, self.clock())
        self.flush()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._accept_loop)
            self.flush()

    async def _accept_loop(self) -> None:
        assert self._nursery is not None
        while True:
            try:
                stream, addr = await self.transport.accept()
            except OSError as exc:  # e.g. EMFILE: count, pause, go on
                self.stats[f"accept_error.{errno.errorcode.get(exc.errno or 0, 'other')}"] += 1
                await trio.sleep(0.1)
                continue
            failed = self.internal_errors["connection"]
            conn_id = -1
            with self.guard("connection"):
                conn_id = self.stream_core.connection_accepted(addr, self.clock())
            if self.internal_errors["connection"] != failed:
                await stream.aclose()
                continue
            st = self._streams.setdefault(conn_id, _Stream())
            st.stream = stream
            self.flush()
            self._nursery.start_soon(self._serve, conn_id, st)

    async def _dial(self, conn_id: int, host: str, port: int) -> None:
        st = self._streams[conn_id]
        stream = None
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                stream = await self.transport.connect(host, port)
            except OSError:
                stream = None
            except (ValueError, TypeError) as exc:
                # trio.open_tcp_stream("..") raises UnicodeError, a NUL TypeError or ValueError:
                # as for a datagram (`UdpDriver._flush`), a failed dial, not a dead node.
                self._unusable_address("dial", exc)
                stream = None
        if stream is None or st.closing:
            if stream is not None:
                await stream.aclose()
                self._streams.pop(conn_id, None)
                with self.guard("connection"):
                    self.stream_core.connection_lost(conn_id, self.clock())
            else:
                self._streams.pop(conn_id, None)
                with self.guard("connection"):
                    self.stream_core.connection_failed(conn_id, self.clock())
            self.flush()
            return
        st.stream = stream
        failed = self.internal_errors["connection"]
        with self.guard("connection"):
            self.stream_core.connection_opened(conn_id, self.clock())
        if self.internal_errors["connection"] != failed:
            st.closing = True  # its state in the core is suspect: close it (and report it lost)
        self.flush()
        await self._serve(conn_id, st)

    async def _serve(self, conn_id: int, st: _Stream) -> None:
        assert st.stream is not None
        try:
            with st.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, conn_id, st)
                    nursery.start_soon(self._write, st)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await st.stream.aclose()
            self._streams.pop(conn_id, None)
            with self.guard("connection"):
                self.stream_core.connection_lost(conn_id, self.clock())
            self.flush()

    async def _read(self, conn_id: int, st: _Stream) -> None:
        assert st.stream is not None
        while True:
            try:
                data = await st.stream.receive_some(TCP_RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                st.scope.cancel()
                return
            # A socket gives bytes (bytes() is then free); other streams may give a bytearray.
            failed = self.internal_errors["connection"] + self.storage_full["connection"]
            with self.guard("connection"):
                self.stream_core.data_received(conn_id, bytes(data), self.clock())
            self.flush()
            if self.internal_errors["connection"] + self.storage_full["connection"] != failed:
                # Its session state is suspect (after a full disk: it thinks it holds entries
                # the store refused): drop the connection; a new one starts from the store.
                st.scope.cancel()
                return

    async def _write(self, st: _Stream) -> None:
        assert st.stream is not None
        while True:
            if not st.out:
                if st.closing:
                    st.scope.cancel()
                    return
                st.wake = trio.Event()
                await st.wake.wait()
                continue
            data = bytes(st.out)
            st.out.clear()
            try:
                await st.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                st.scope.cancel()
                return
