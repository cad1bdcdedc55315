"""A real ``kademlia`` 2.2.3 network in its own process, driven over stdin/stdout.

Usage: python kademlia_peer.py N [BOOTSTRAP_HOST:PORT]

Starts N ``kademlia.network.Server`` nodes on 127.0.0.1 (each bootstraps from
the first, and the first from BOOTSTRAP if given), prints
``{"ports": [...]}``, then answers one JSON command per line:

    {"op": "set", "key": str, "value": str|bytes-hex, "node": i}  -> {"ok": bool}
    {"op": "get", "key": str, "node": i}                           -> {"value": ...}
    {"op": "bootstrap", "host": str, "port": int, "node": i}      -> {"neighbors": [[host, port], ...]}
    {"op": "quit"}
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from kademlia.network import Server


async def main() -> None:
    count = int(sys.argv[1])
    seed = sys.argv[2] if len(sys.argv) > 2 else None
    servers: list[Any] = []
    for i in range(count):
        server = Server()
        await server.listen(0, "127.0.0.1")
        if i:
            await server.bootstrap([("127.0.0.1", servers[0].transport.get_extra_info("sockname")[1])])
        elif seed:
            host, port = seed.rsplit(":", 1)
            await server.bootstrap([(host, int(port))])
        servers.append(server)
    ports = [s.transport.get_extra_info("sockname")[1] for s in servers]
    print(json.dumps({"ports": ports}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        node = servers[cmd.get("node", 0)]
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "set":
            value = bytes.fromhex(cmd["hex"]) if "hex" in cmd else cmd["value"]
            reply: dict[str, Any] = {"ok": bool(await node.set(cmd["key"], value))}
        elif cmd["op"] == "get":
            value = await node.get(cmd["key"])
            reply = {
                "value": value.hex() if isinstance(value, bytes) else value,
                "bytes": isinstance(value, bytes),
            }
        elif cmd["op"] == "bootstrap":
            found = await node.bootstrap([(cmd["host"], cmd["port"])])
            reply = {"neighbors": [[n.ip, n.port] for n in found]}
        else:
            reply = {"error": "unknown op"}
        print(json.dumps(reply), flush=True)
    for server in servers:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
