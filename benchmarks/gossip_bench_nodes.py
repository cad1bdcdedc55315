"""Real ``p2pblog run`` processes for ``bench_gossip.py``: start, drive, watch, measure, stop.

A `Cluster` owns a temporary root directory, one home per node in it, and
every node process it starts.  Leaving its ``with`` block (normally, by an
exception, or by SIGINT/SIGTERM turned into an exception by the benchmark)
stops every node (SIGTERM, then SIGKILL after `STOP_GRACE` seconds) and
removes the root.  Each node is also started with ``PR_SET_PDEATHSIG`` so
that it gets SIGTERM if the benchmark process itself is killed.

Every node's stdout and stderr go to one pipe, read by a single `LogPump`
thread that blocks in ``epoll`` and timestamps each chunk with
``time.perf_counter()`` as soon as the kernel hands it over (the node
prints with ``flush=True``).  The pump copies every line to ``HOME/run.log``
and keeps, per node, the node's ``received N entries of FEED from PEER (now
at #SEQ)`` lines as `Arrival` records: the live-delivery part reads its
latencies from them.

Nodes are driven through the control API (`p2pblog.control.call`), the same
one the CLI uses, and the store is read with a separate read-only SQLite
connection (WAL readers never block the node's writer).  Only 127.0.0.1 is
used: every node listens on ``127.0.0.1:0`` and bootstraps from another
node of the same cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from identity import Identity, fingerprint
from p2pblog import control
from p2pblog.home import Home

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Seconds a node may take to write HOME/node.json.
START_TIMEOUT = 30.0
#: Seconds between SIGTERM and SIGKILL when stopping nodes.
STOP_GRACE = 10.0
ARRIVAL_RE = re.compile(
    r"received (?P<count>\d+) entries of (?P<feed>\S+) from (?P<peer>\S+) \(now at #(?P<seq>\d+)\)"
)
_PR_SET_PDEATHSIG = 1
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: only an async-signal-safe call.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --- /proc ----------------------------------------------------------------------------------


def proc_descendants(pid: int) -> list[int]:
    """The live descendants of a process (/proc/PID/task/*/children, recursively): a node's
    verifier processes and their forkserver."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out.extend(children)
            todo.extend(children)
    return out


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...), in KiB, summed over the
    process and its live descendants (a node's verifier processes are its memory too)."""
    total = 0
    for member in [pid, *proc_descendants(pid)]:
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            if member == pid:
                raise
            continue  # a descendant that exited
        for line in lines:
            if line.startswith(field_name + ":"):
                total += int(line.split()[1])
                break
        else:
            if member == pid:
                raise RuntimeError(f"no {field_name} in /proc/{pid}/status")
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and everything it started: utime + stime (/proc/PID/stat
    fields 14 and 15, all threads) plus cutime + cstime (children it waited for), for the
    process and each live descendant (a node's verifier processes), in 1/CLK_TCK steps."""
    total = 0
    for member in [pid, *proc_descendants(pid)]:
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            if member == pid:
                raise
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def proc_schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of the process's main thread (/proc/PID/schedstat).

    Finer than `proc_cpu_seconds` (10 ms ticks), and the second number tells
    "waiting for a core" (a busy machine) from "blocked" (I/O, an idle
    socket).  The main thread only: a node may verify signatures on worker
    threads, whose time is in `proc_cpu_seconds` and `proc_tasks_schedstat`.
    (-1, -1) where it is missing.
    """
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return -1, -1


def proc_tasks_schedstat(pid: int) -> tuple[int, int]:
    """`proc_schedstat` summed over every live thread of the process (/proc/PID/task/*/schedstat).

    A thread that exited between two readings takes its time with it: over a
    window in which threads come and go, prefer `proc_cpu_seconds`.
    """
    run = queued = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return -1, -1
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            run, queued = run + int(fields[0]), queued + int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited
    return run, queued


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


# --- the log pump ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    """One ``received N entries of FEED from PEER (now at #SEQ)`` line, when the pump read it."""

    at: float
    feed: str
    peer: str
    count: int
    seq: int


@dataclass
class _Source:
    name: str
    fd: int
    log: Any
    buffer: bytes = b""


class LogPump:
    """One thread reading every node's output pipe as it comes (see the module docstring).

    Measurement cost: the thread sleeps in ``epoll_wait`` until a node
    writes; per line it does one regex match and one file write (about
    10-20 µs).  The time stamp is taken right after ``os.read`` returns, so it
    trails the node's write by the wake-up latency of this thread only.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sources: dict[int, _Source] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.arrivals: dict[str, list[Arrival]] = {}
        self.lines: dict[str, list[str]] = {}
        self._thread = threading.Thread(target=self._run, name="log-pump", daemon=True)
        self._thread.start()

    def add(self, name: str, fd: int, log_path: Path) -> None:
        os.set_blocking(fd, False)
        with self._changed:
            self.arrivals.setdefault(name, [])
            self.lines.setdefault(name, [])
        # epoll_ctl is safe while the pump thread waits in epoll_wait: the new
        # pipe is watched at once (its first line is not stamped late).
        self._sources[fd] = _Source(name, fd, log_path.open("a", encoding="utf-8", errors="replace"))
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for source in list(self._sources.values()):
            self._drain(source)
            source.log.close()
        self._sources.clear()
        self._epoll.close()

    def wait_for_line(self, name: str, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first line of node ``name`` (already read or arriving within timeout) that matches."""
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                lines = self.lines.get(name, [])
                for line in lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.5))

    def _run(self) -> None:
        while not self._stop.is_set():
            for fd, _ in self._epoll.poll(0.1):
                readable = self._sources.get(fd)
                if readable is not None and not self._drain(readable):
                    self._epoll.unregister(fd)
                    del self._sources[fd]
                    readable.log.close()

    def _drain(self, source: _Source) -> bool:
        """Read what is there; False at end of file."""
        while True:
            try:
                data = os.read(source.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            at = time.perf_counter()
            if not data:
                return False
            source.buffer += data
            *complete, source.buffer = source.buffer.split(b"\n")
            if not complete:
                continue
            texts = [raw.decode("utf-8", errors="replace") for raw in complete]
            source.log.write("".join(f"{text}\n" for text in texts))
            source.log.flush()
            arrivals = []
            for text in texts:
                match = ARRIVAL_RE.search(text)
                if match:
                    arrivals.append(
                        Arrival(at, match["feed"], match["peer"], int(match["count"]), int(match["seq"]))
                    )
            with self._changed:
                self.lines[source.name].extend(texts)
                self.arrivals[source.name].extend(arrivals)
                self._changed.notify_all()


# --- nodes ----------------------------------------------------------------------------------


@dataclass
class NodeProcess:
    name: str
    home: Path
    public_key: bytes
    handle: str
    process: subprocess.Popen[bytes]
    dht: tuple[str, int] = ("127.0.0.1", 0)
    gossip: tuple[str, int] = ("127.0.0.1", 0)
    profile_out: Path | None = None
    _reader: sqlite3.Connection | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def bootstrap(self) -> str:
        return f"{self.dht[0]}:{self.dht[1]}"

    @property
    def log_path(self) -> Path:
        return self.home / "run.log"

    def call(self, command: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0) -> Any:
        """One control-API command (what the CLI sends)."""
        return control.call(self.home, command, args, timeout=timeout)

    def latest_seq(self, feed: bytes) -> int:
        """The node's latest seq of feed, read from its store with a read-only connection."""
        if self._reader is None:
            uri = f"file:{self.home / 'store.sqlite3'}?mode=ro"
            self._reader = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
        row = self._reader.execute("SELECT latest_seq FROM feeds WHERE author = ?", (feed,)).fetchone()
        return int(row[0]) if row else 0

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def peer_handles(self) -> set[str]:
        status = self.call("status")
        return {str(p["handle"]) for p in status["peers"]}

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)


class Cluster:
    """Homes and ``p2pblog run`` processes under one temporary root; all gone on exit."""

    def __init__(self, label: str, *, workdir: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"bench-gossip-{label}-", dir=workdir))
        self.nodes: dict[str, NodeProcess] = {}
        self.pump = LogPump()
        self._identities: dict[str, Identity] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- homes ---------------------------------------------------------------------

    def create_home(self, name: str, identity: Identity | None = None) -> tuple[Home, Identity]:
        """A new home with an (unencrypted) identity and an empty store, as ``p2pblog init``."""
        identity = identity or Identity.generate()
        home = Home(self.root / name)
        home.create(identity)
        self._identities[name] = identity
        return home, identity

    # -- processes -------------------------------------------------------------------

    def start(
        self, name: str, *, bootstrap: list[NodeProcess] | None = None, profile: bool = False
    ) -> NodeProcess:
        """Start ``p2pblog run --listen 127.0.0.1:0`` for home ``name``; wait for its node.json."""
        home = self.root / name
        identity = self._identities[name]
        state = home / control.STATE_FILE
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
        command = [sys.executable]
        profile_out = None
        if profile:
            profile_out = home / "run.prof"
            command += ["-m", "cProfile", "-o", str(profile_out)]
        command += ["-m", "p2pblog", "--home", str(home), "run", "--listen", "127.0.0.1:0"]
        for peer in bootstrap or []:
            command += ["--bootstrap", peer.bootstrap]
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        node = NodeProcess(name, home, identity.public_key, identity.handle, process, profile_out=profile_out)
        self.nodes[name] = node
        assert process.stdout is not None
        self.pump.add(name, process.stdout.fileno(), node.log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node {name} exited with {process.returncode}: {self.tail(name)}")
            try:
                doc = json.loads(state.read_text())
                node.dht = (str(doc["dht"][0]), int(doc["dht"][1]))
                node.gossip = (str(doc["gossip"][0]), int(doc["gossip"][1]))
                return node
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(0.05)
        raise RuntimeError(f"node {name} did not start within {START_TIMEOUT:.0f} s: {self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self.pump.lines.get(name, [])[-lines:])

    def stop(self, names: list[str] | None = None) -> None:
        """SIGTERM the nodes (all by default), wait up to `STOP_GRACE` s, then SIGKILL the rest."""
        chosen = [self.nodes[n] for n in (names if names is not None else list(self.nodes))]
        for node in chosen:
            node.close_reader()
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for node in chosen:
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=5)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.pump.close()
            for node in self.nodes.values():
                if node.process.stdout is not None:
                    node.process.stdout.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def keep_logs(self, dest: Path) -> None:
        """Copy every node's run.log (and cProfile output) to dest, for a post-mortem."""
        dest.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            for path in (node.log_path, node.profile_out):
                if path is not None and path.exists():
                    shutil.copy(path, dest / f"{node.name}-{path.name}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate() every interval seconds until true or timeout seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def quiet_calls(func: Callable[[], Any]) -> Any:
    """func(), with control-API errors (node still starting, ...) turned into None."""
    try:
        return func()
    except (control.ControlError, control.NodeNotRunning, OSError):
        return None


@contextlib.contextmanager
def signals_as_exit() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise SystemExit, so that every ``finally`` cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
