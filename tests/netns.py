"""A NAT test bed made of Linux network namespaces (``ip netns``, veth pairs, nftables).

`NatLab` builds, inside namespaces it names ``p2pt-<pid>-...`` and removes on exit:

- a "public" network (the internet): a bridge in a namespace of its own, with the
  public hosts (`add_public_host`) and the routers' WAN ports on it;
- home networks (`add_router`): a router namespace with a WAN port on the public
  network and a LAN ``192.168.X.0/24``, which forwards from its LAN, masquerades
  (source NAT) to its public address, and drops unsolicited inbound traffic: no
  port forwarding, so a home host is not reachable from outside (unless a UPnP
  daemon in the router, `start_miniupnpd`, maps a port);
- home hosts behind a router (`add_home_host`).

::

    public p1 10.77.0.10 --+            +-- wan 10.77.0.100 router r1 lan 192.168.1.1 -- home r1h1 192.168.1.2
    public p2 10.77.0.11 --+-- bridge --+-- wan 10.77.0.101 router r2 lan 192.168.2.1 -- home r2h1 192.168.2.2
                               ("sw")                      (masquerade, no forwarding)

Nothing touches the machine's own network namespace: traffic stays between the
lab's namespaces.  Every namespace has its loopback up (a node's control API
listens there).  `NatLab.start_node` runs ``p2pblog run`` in a host (`LabNode`:
``cli``/``json`` run commands against it in its namespace).  Processes started with
`NatLab.popen` / `start_p2pblog` / `start_node` are
killed when the lab closes, before its namespaces are deleted; namespaces left
by a crashed run (a dead pid in the name) are removed by the next lab.

The router's nftables ruleset lives in ``table inet filter`` with the chain
names miniupnpd's nftables backend uses (``miniupnpd``, ``prerouting_miniupnpd``,
``postrouting_miniupnpd``), so a miniupnpd started in the router adds its
forwarding rules where the router's forward chain (policy drop) jumps to them.

`lab_or_skip` (and `require_lab`) skip a test when the machine cannot build the lab
(not root, no ``ip`` or ``nft``), except under CI (``CI`` set), where they fail:
CI runs as root and ``.ci/run`` installs the tools.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.process import child_env

PREFIX = "p2pt-"
#: The default public network: RFC 1918, which miniupnpd refuses to map on (it calls a
#: private WAN address "behind NAT"); a lab with a UPnP router takes `ROUTABLE_NET`.
PUBLIC_NET = "10.77.0.0/24"
#: A globally routable block for the public network when miniupnpd must accept mappings.
#: The lab's namespaces have no link to the machine's network, so nothing leaves them.
ROUTABLE_NET = "11.77.0.0/24"
ROOT = Path(__file__).resolve().parent.parent

ROUTER_RULES = """\
table inet filter {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
        oifname "wan" masquerade
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""


class LabUnavailable(Exception):
    """The machine cannot build the lab (not root, a tool missing, no namespaces)."""


def lab_missing() -> str | None:
    """Why the lab cannot be built here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the NAT lab needs root (ip netns, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs the {tool!r} command (apt-get install iproute2 nftables)"
    return None


def require_lab() -> None:
    """Skip the test when the lab cannot be built; fail instead under CI."""
    why = lab_missing()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the NAT lab tests must run in CI: {why}")
    pytest.skip(why)


@contextlib.contextmanager
def lab_or_skip(public_net: str = PUBLIC_NET) -> Iterator[NatLab]:
    """A fresh `NatLab` for one test (skipped or failed as `require_lab` says); always torn down."""
    require_lab()
    try:
        lab = NatLab(public_net=public_net)
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the NAT lab tests must run in CI: {exc}")
        pytest.skip(str(exc))
    with lab:
        yield lab


def _run(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return done


def _veth(ns: str, name: str, peer_ns: str, peer_name: str) -> None:
    """A veth pair made directly in two namespaces (never in the machine's own)."""
    _run("ip", "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer_name, "netns", peer_ns)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete ``p2pt-<pid>-*`` namespaces (and ``p2pt-lab-<pid>-*`` scratch directories)
    whose process is gone (a crashed or killed run); the namespaces' names."""
    removed = []
    listing = _run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for scratch in Path(tempfile.gettempdir()).glob(f"{PREFIX}lab-*-*"):
        pid = scratch.name.split("-")[2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)
    return removed


@dataclass
class Host:
    """A namespace with one address on a network (public or a home LAN)."""

    lab: NatLab = field(repr=False)
    ns: str
    addr: str
    iface: str = "eth0"

    def run(self, *cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this namespace and wait for it."""
        return _run("ip", "netns", "exec", self.ns, *cmd, check=check, timeout=timeout)

    def popen(self, *cmd: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start ``cmd`` in this namespace (killed when the lab closes)."""
        return self.lab.popen(self, *cmd, **kwargs)

    def python(self, code: str, *args: str, timeout: float = 30, check: bool = True) -> str:
        """Run a Python snippet (this interpreter, the project on its path) here; its stdout."""
        env = ["env", "--unset=PYTHONDONTWRITEBYTECODE", f"PYTHONPATH={ROOT}"]  # see `child_env`
        return self.run(*env, sys.executable, "-c", code, *args, timeout=timeout, check=check).stdout


@dataclass
class Router(Host):
    """A home router: ``addr`` is its public (WAN) address, ``lan_addr`` its LAN side."""

    lan_addr: str = ""
    lan_net: str = ""
    index: int = 0
    hosts: list[Host] = field(default_factory=list, repr=False)
    wan_iface: str = "wan"
    lan_iface: str = "lan"


@dataclass
class LabNode:
    """A ``p2pblog run`` process in a lab host (`NatLab.start_node`)."""

    host: Host
    home: Path
    process: subprocess.Popen[str] = field(repr=False)
    handle: str
    port: int
    log: Path = field(repr=False)

    @property
    def addr(self) -> str:
        """``host:port`` on the host's own network (a home node's is not reachable from outside)."""
        return f"{self.host.addr}:{self.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``p2pblog`` command against this node's home, in its namespace."""
        return self.host.lab.p2pblog(self.host, self.home, *args)

    def json(self, *args: str) -> Any:
        """``p2pblog ARGS --json`` against this node: its parsed output."""
        done = self.cli(*args, "--json")
        if done.returncode != 0:
            raise RuntimeError(f"p2pblog {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return json.loads(done.stdout)


class NatLab:
    """The test bed; a context manager that removes every namespace it made."""

    def __init__(self, *, public_net: str = PUBLIC_NET, prefix: str | None = None) -> None:
        why = lab_missing()
        if why is not None:
            raise LabUnavailable(why)
        self.public_net = ipaddress.ip_network(public_net)
        self.prefix = prefix or f"{PREFIX}{os.getpid()}-{next(_labs)}-"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.routers: list[Router] = []
        self.public_hosts: list[Host] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{PREFIX}lab-{os.getpid()}-")
        #: A scratch directory removed with the lab (config files, node homes).
        self.tmp = Path(self._tmp.name)
        self._ports = 0
        remove_stale_namespaces()
        try:
            self.switch = self._namespace("sw")
            self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.switch, "ip", "link", "set", "br0", "up")
        except BaseException as exc:
            self.close()
            if isinstance(exc, subprocess.CalledProcessError):
                raise LabUnavailable(f"cannot build the lab: {exc.stderr.strip() or exc}") from None
            raise

    # -- building -----------------------------------------------------------------------

    def _in(self, ns: str, *cmd: str) -> None:
        _run("ip", "netns", "exec", ns, *cmd)

    def _namespace(self, role: str) -> str:
        name = self.prefix + role
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _public_addr(self, n: int) -> str:
        return str(self.public_net.network_address + n)

    def _plug(self, ns: str, iface: str, addr: str) -> None:
        """A veth from ``ns`` (named ``iface``, holding ``addr``) to the public bridge."""
        self._ports += 1
        port = f"p{self._ports}"
        _veth(ns, iface, self.switch, port)
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{addr}/{self.public_net.prefixlen}", "dev", iface)
        _run("ip", "-n", ns, "link", "set", iface, "up")

    def add_public_host(self) -> Host:
        """A reachable host on the public network (``.10``, ``.11``, ...)."""
        n = len(self.public_hosts)
        ns = self._namespace(f"p{n + 1}")
        host = Host(self, ns, self._public_addr(10 + n))
        self._plug(ns, "eth0", host.addr)
        self.public_hosts.append(host)
        return host

    def add_router(self) -> Router:
        """A home router: WAN ``.100``, ``.101``, ... on the public network, LAN 192.168.X.1/24
        (X = 1, 2, ...), forwarding out, masquerading, no inbound forwarding."""
        index = len(self.routers) + 1
        ns = self._namespace(f"r{index}")
        router = Router(
            self,
            ns,
            self._public_addr(99 + index),
            iface="wan",
            lan_addr=f"192.168.{index}.1",
            lan_net=f"192.168.{index}.0/24",
            index=index,
        )
        self._plug(ns, "wan", router.addr)
        self._in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = self.tmp / f"{ns}.nft"
        rules.write_text(ROUTER_RULES.format())
        self._in(ns, "nft", "-f", str(rules))
        self.routers.append(router)
        return router

    def add_home_host(self, router: Router | None = None) -> Host:
        """A host on ``router``'s LAN (a new router when None): 192.168.X.2, .3, ...;
        its default route is the router."""
        if router is None:
            router = self.add_router()
        n = len(router.hosts) + 1
        ns = self._namespace(f"r{router.index}h{n}")
        host = Host(self, ns, f"192.168.{router.index}.{n + 1}")
        _veth(ns, "eth0", router.ns, f"h{n}")
        if n == 1:
            _run("ip", "-n", router.ns, "link", "add", "lan", "type", "bridge")
            _run("ip", "-n", router.ns, "addr", "add", f"{router.lan_addr}/24", "dev", "lan")
            _run("ip", "-n", router.ns, "link", "set", "lan", "up")
        _run("ip", "-n", router.ns, "link", "set", f"h{n}", "master", "lan", "up")
        _run("ip", "-n", ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", router.lan_addr)
        router.hosts.append(host)
        return host

    # -- processes ----------------------------------------------------------------------

    def popen(self, host: Host, *cmd: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start ``cmd`` in ``host``'s namespace (stdout/stderr to pipes unless given);
        killed when the lab closes."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("text", True)
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[str] = subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd], **kwargs)  # type: ignore[call-overload]
        self.processes.append(proc)
        return proc

    def start_p2pblog(self, host: Host, home: Path, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        """``python -m p2pblog --home HOME ARGS`` in ``host`` (e.g. ``"run", "--listen", ...``)."""
        kwargs.setdefault("env", child_env())
        return self.popen(host, sys.executable, "-m", "p2pblog", "--home", str(home), *args, **kwargs)

    def p2pblog(
        self, host: Host, home: Path, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``p2pblog --home HOME ARGS`` in ``host`` and wait (a CLI command: the control
        API of a node answers only inside its own namespace)."""
        clean = [f"--unset={k}" for k in os.environ if k.startswith("P2PBLOG_")]
        clean.append("--unset=PYTHONDONTWRITEBYTECODE")  # see `tests.process.child_env`
        cmd = ["env", *clean, f"PYTHONPATH={ROOT}", sys.executable, "-m", "p2pblog", "--home", str(home)]
        return host.run(*cmd, *args, check=False, timeout=timeout)

    def start_node(
        self, host: Host, home: Path, *args: str, port: int = 7710, timeout: float = 30
    ) -> LabNode:
        """``p2pblog run --listen 0.0.0.0:PORT --no-web ARGS`` in ``host`` (``init`` first when
        HOME has no key), once it has written HOME/node.json; its output goes to HOME/run.log."""
        if not (home / "identity.key").exists():
            done = self.p2pblog(host, home, "init")
            if done.returncode != 0:
                raise RuntimeError(f"p2pblog init failed: {done.stdout}{done.stderr}")
        state = home / "node.json"
        state.unlink(missing_ok=True)
        log = home / "run.log"
        with log.open("a") as out:
            proc = self.start_p2pblog(
                host, home, "run", "--listen", f"0.0.0.0:{port}", "--no-web", *args, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"p2pblog run exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                doc = json.loads(state.read_text())
                return LabNode(host, home, proc, doc["handle"], port, log)
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        raise RuntimeError(f"p2pblog run did not start in {timeout} s: {log.read_text()[-3000:]}")

    def start_miniupnpd(
        self, router: Router, *, allow: str = "1024-65535", timeout: float = 10
    ) -> subprocess.Popen[str]:
        """Run Debian's miniupnpd (nftables backend) in ``router``, in the foreground, UPnP IGD
        and NAT-PMP on its LAN, secure mode (a host maps only to itself), mappings of the
        external and internal ports ``allow`` for the LAN; returns once it answers HTTP."""
        if shutil.which("miniupnpd") is None:
            raise LabUnavailable("miniupnpd is not installed (apt-get install miniupnpd-nftables)")
        if self.public_net.is_private:
            raise LabUnavailable(
                f"miniupnpd maps nothing on a private WAN address: use NatLab(public_net={ROUTABLE_NET!r})"
            )
        http_port = 5555
        conf = self.tmp / f"{router.ns}-miniupnpd.conf"
        conf.write_text(
            "\n".join(
                [
                    f"ext_ifname={router.wan_iface}",
                    f"listening_ip={router.lan_iface}",
                    f"http_port={http_port}",
                    "enable_natpmp=yes",
                    "enable_upnp=yes",
                    "secure_mode=yes",
                    "system_uptime=no",
                    "notify_interval=60",
                    "clean_ruleset_interval=600",
                    "min_lifetime=120",
                    "max_lifetime=86400",
                    "uuid=8e1a6f2c-0d4b-4a53-9a9e-3f6c1f0e7b21",
                    f"lease_file={self.tmp / (router.ns + '-upnp.leases')}",
                    f"allow {allow} {router.lan_net} {allow}",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                    "",
                ]
            )
        )
        proc = self.popen(
            router, "miniupnpd", "-d", "-f", str(conf), "-P", str(self.tmp / f"{router.ns}-miniupnpd.pid")
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise RuntimeError(f"miniupnpd exited ({proc.returncode}): {(out + err).strip()[-2000:]}")
            done = router.run(
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(({router.lan_addr!r}, {http_port}), 0.5).close()",
                check=False,
            )
            if done.returncode == 0:
                return proc
            time.sleep(0.1)
        raise RuntimeError("miniupnpd did not start listening in time")

    # -- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the lab's processes, delete its namespaces (and their veths), its scratch dir."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.processes.clear()
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        self._tmp.cleanup()

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


_labs = _counter()


# -- probes run inside a namespace (small Python snippets; stdout is the answer) ------------

LISTEN = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
while True:
    conn, peer = s.accept()
    conn.sendall(f"{peer[0]}\\n".encode())
    conn.close()
"""

CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])) as s:
        s.settimeout(float(sys.argv[3]))
        print("ok", s.recv(100).decode().strip())
except OSError as exc:
    print("failed", type(exc).__name__, exc)
"""


def listen(host: Host, port: int) -> subprocess.Popen[str]:
    """A TCP listener on ``port`` in ``host`` that answers each connection with the peer's
    address (what a server there sees as the source); returns once it listens."""
    proc = host.popen(sys.executable, "-c", LISTEN, str(port))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "listening":
        raise RuntimeError(f"listener did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def connect(host: Host, addr: str, port: int, timeout: float = 1.0) -> str:
    """TCP connect from ``host`` to ``addr:port``: ``"ok <source the listener saw>"`` or
    ``"failed <error>"``."""
    return host.python(CONNECT, addr, str(port), str(timeout), timeout=timeout + 20).strip()


def free_port(sock_type: int = socket.SOCK_STREAM) -> int:
    """A port number (free here; each namespace has its own ports, so any works)."""
    with socket.socket(socket.AF_INET, sock_type) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


__all__ = [
    "PUBLIC_NET",
    "ROUTABLE_NET",
    "Host",
    "LabNode",
    "LabUnavailable",
    "NatLab",
    "Router",
    "connect",
    "free_port",
    "lab_missing",
    "lab_or_skip",
    "listen",
    "remove_stale_namespaces",
    "require_lab",
    "wait_for",
]
