"""`p2pblog.portmap` against a real UPnP router: Debian's miniupnpd (nftables backend) in
the router namespace of the NAT test bed (`tests.netns`).

A home host runs a `PortMapper` (a small script, `MAPPER`); a public host then reaches
a TCP listener and a UDP echo on the home host through the router's public address and
the mapped port, which it could not before; when the mapper exits, the mappings are gone
and the public host is shut out again.  Without a UPnP router the mapper reports
"no UPnP router found".

The lab's public network is `ROUTABLE_NET`: miniupnpd maps nothing when its WAN address
is private.  Skipped without root, nft, miniupnpd or the miniupnpc package, except under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.netns import ROOT, ROUTABLE_NET, Host, NatLab, connect, lab_or_skip, listen

pytestmark = pytest.mark.slow

PORT = 4300

#: Runs a PortMapper for argv[1] until SIGTERM; prints the first result as JSON (and, with
#: "renew" in argv, the result of one renewal), then its state after the exit.  The short
#: discovery is for the test's speed (the lab's router answers at once; no router costs
#: four searches).
MAPPER = """
import json, signal, sys
import trio
from p2pblog.portmap import PortMapper, PortMapped

async def main():
    def log(line):
        print("log:", line, file=sys.stderr, flush=True)

    mapper = PortMapper(int(sys.argv[1]), discover_ms=500, log=log)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            result = await nursery.start(mapper.run)
            if isinstance(result, PortMapped):
                print(json.dumps({"mapped": [result.host, result.port, result.lease]}), flush=True)
                if "renew" in sys.argv[2:]:
                    renewed = await mapper.renew()
                    print(json.dumps({"renewed": renewed, "renewals": mapper.renewals}), flush=True)
            else:
                print(json.dumps({"failed": result.reason}), flush=True)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    print(json.dumps({"state": mapper.state.value, "mapped": mapper.mapped is not None}), flush=True)

trio.run(main)
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data + b" " + peer[0].encode(), peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
try:
    print("ok", s.recvfrom(100)[0].decode())
except OSError as exc:
    print("failed", type(exc).__name__)
"""


def _require(thing: str, present: bool) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the UPnP NAT test must run in CI: {thing} is missing")
    pytest.skip(f"{thing} is missing")


@pytest.fixture
def lab() -> Iterator[NatLab]:
    with lab_or_skip(public_net=ROUTABLE_NET) as lab:
        yield lab


def _start_mapper(home: Host, port: int, *args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = home.popen(sys.executable, "-c", MAPPER, str(port), *args, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the mapper printed nothing: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def test_a_mapped_port_makes_the_home_host_reachable_until_the_mapper_exits(lab: NatLab) -> None:
    _require("miniupnpd (apt-get install miniupnpd-nftables)", shutil.which("miniupnpd") is not None)
    try:
        import miniupnpc  # noqa: F401
    except ImportError:
        _require("the miniupnpc package (pip install miniupnpc)", False)
    public = lab.add_public_host()
    router = lab.add_router()
    home = lab.add_home_host(router)
    lab.start_miniupnpd(router)
    listen(home, PORT)
    udp = home.popen(sys.executable, "-c", UDP_ECHO, str(PORT))
    assert udp.stdout is not None and udp.stdout.readline().strip() == "listening"
    assert connect(public, router.addr, PORT, timeout=0.5) == "failed TimeoutError timed out"

    mapper, first = _start_mapper(home, PORT)
    assert first == {"mapped": [router.addr, PORT, 3600]}, first
    # Inbound through the mapping: the home listener sees the public host's own address.
    assert connect(public, router.addr, PORT) == f"ok {public.addr}"
    assert public.python(UDP_ASK, router.addr, str(PORT)).strip() == f"ok hello {public.addr}"

    mapper.send_signal(signal.SIGTERM)
    out, err = mapper.communicate(timeout=20)
    assert json.loads(out.splitlines()[-1]) == {"state": "stopped", "mapped": False}, err
    assert f"removed {router.addr}:{PORT}" in err
    assert connect(public, router.addr, PORT, timeout=0.5) == "failed TimeoutError timed out"


def test_two_hosts_behind_one_router_get_two_ports_and_renew(lab: NatLab) -> None:
    _require("miniupnpd (apt-get install miniupnpd-nftables)", shutil.which("miniupnpd") is not None)
    try:
        import miniupnpc  # noqa: F401
    except ImportError:
        _require("the miniupnpc package (pip install miniupnpc)", False)
    public = lab.add_public_host()
    router = lab.add_router()
    first, second = lab.add_home_host(router), lab.add_home_host(router)
    lab.start_miniupnpd(router)
    mapper1, mapped1 = _start_mapper(first, PORT, "renew")
    assert mapped1 == {"mapped": [router.addr, PORT, 3600]}
    assert mapper1.stdout is not None
    assert json.loads(mapper1.stdout.readline()) == {"renewed": True, "renewals": 1}
    # The same port is taken by the first host: the router picks another (AddAnyPortMapping).
    _mapper2, mapped2 = _start_mapper(second, PORT)
    host, port, lease = mapped2["mapped"]  # type: ignore[misc]
    assert (host, lease) == (router.addr, 3600) and port != PORT
    listen(first, PORT)
    listen(second, PORT)
    assert connect(public, router.addr, PORT) == f"ok {public.addr}"
    assert connect(public, router.addr, port) == f"ok {public.addr}"
    # Each external port leads to its own host, for TCP and UDP.
    rules = router.run("nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd").stdout
    assert rules.count(f"dport {PORT} dnat ip to {first.addr}:{PORT}") == 2, rules
    assert rules.count(f"dport {port} dnat ip to {second.addr}:{PORT}") == 2, rules


def test_without_a_upnp_router_the_mapper_says_so(lab: NatLab) -> None:
    try:
        import miniupnpc  # noqa: F401
    except ImportError:
        _require("the miniupnpc package (pip install miniupnpc)", False)
    home = lab.add_home_host()
    mapper, first = _start_mapper(home, PORT)
    assert first == {"failed": "no UPnP router found"}
    mapper.send_signal(signal.SIGTERM)
    _out, err = mapper.communicate(timeout=20)
    assert err.count("log: port mapping:") == 1, err


#: A NodeService with port mapping on, listening on all addresses at argv[2]; prints its
#: status's ``port_mapping`` section once it is no longer starting, then runs until SIGTERM.
NODE = """
import json, signal, sys
from pathlib import Path
import trio
from identity import Identity
from p2pblog.daemon import NodeService
from p2pblog.home import Home

async def main():
    home = Home(Path(sys.argv[1]))
    identity = Identity(bytes([9]) * 32)
    home.create(identity)
    listen = ("0.0.0.0", int(sys.argv[2]))
    service = NodeService(home, identity, listen=listen, bootstrap=[], port_mapping=True)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            await nursery.start(service.run)
            while (await service._status({}))["port_mapping"]["state"] == "starting":
                await trio.sleep(0.05)
            section = (await service._status({}))["port_mapping"]
            print(json.dumps({"port_mapping": section, "mapped_addr": service.mapped_addr}), flush=True)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_a_node_with_port_mapping_is_reachable_through_its_router(lab: NatLab) -> None:
    _require("miniupnpd (apt-get install miniupnpd-nftables)", shutil.which("miniupnpd") is not None)
    try:
        import miniupnpc  # noqa: F401
    except ImportError:
        _require("the miniupnpc package (pip install miniupnpc)", False)
    public = lab.add_public_host()
    router = lab.add_router()
    home = lab.add_home_host(router)
    lab.start_miniupnpd(router)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    node = home.popen(sys.executable, "-c", NODE, str(lab.tmp / "home"), str(PORT), env=env)
    assert node.stdout is not None
    line = node.stdout.readline()
    assert line, node.stderr.read() if node.stderr else ""
    report = json.loads(line)
    assert report["mapped_addr"] == [router.addr, PORT]
    section = report["port_mapping"]
    assert section["state"] == "mapped" and section["external"] == [router.addr, PORT], section
    assert section["lease"] == 3600 and section["reason"] is None
    # The node's gossip listener accepts connections from outside.
    assert public.python(TCP_OPEN, router.addr, str(PORT)).strip() == "open"
    node.send_signal(signal.SIGTERM)
    _out, err = node.communicate(timeout=30)
    assert f"port mapping: the router forwards {router.addr}:{PORT} (tcp+udp) here" in err, err
    assert f"port mapping: removed {router.addr}:{PORT}" in err, err
    assert public.python(TCP_OPEN, router.addr, str(PORT)).strip() == "closed"


#: Whether a TCP connect to argv[1]:argv[2] succeeds within a second.
TCP_OPEN = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 1.0).close()
    print("open")
except OSError:
    print("closed")
"""
