"""Test helper: a hostile DHT peer on a real UDP socket, talking to a running node.

`DhtAttacker` binds a UDP socket on 127.0.0.1 and, from a background
thread, both collects the answers to its own requests and answers the node's
requests, so that a node that learnt it as a contact (every request puts the
sender in the node's routing table) is not slowed down by a silent contact:

* it sends ``p2pb_add_provider`` requests carrying any bytes it is given
  (`add_provider`), framed by hand as docs/protocol.md "Datagrams" and
  "Provider RPCs" describe (type byte, 20-byte message id, msgpack
  ``[name, [sender_id, key, value]]``), and returns the node's boolean answer;
* it answers ``find_node`` / ``find_value`` with no contacts, ``ping`` with
  its id, ``store`` / ``p2pb_add_provider`` with ``false``, and
  ``p2pb_get_providers`` with the values `planted` for that key (the node
  must drop the invalid ones), counting every request it answered, per
  requesting node (`answered`: a node passes the attacker's address on to
  others in its ``find_node`` answers, so they ask it too).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import msgpack

from dht import wire

#: Seconds any single wait in this module may take.
TIMEOUT = 5.0


class DhtAttacker:
    """A DHT peer that says what it is told to and answers the node's requests."""

    def __init__(self, planted: dict[bytes, list[bytes]] | None = None) -> None:
        self.node_id = os.urandom(wire.MSG_ID_BYTES)
        #: DHT key -> the provider values our ``p2pb_get_providers`` answers carry.
        self.planted = dict(planted or {})
        #: ``(rpc name, key or None, source address)`` -> requests we answered.
        self.requests: Counter[tuple[str, bytes | None, tuple[str, int]]] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._answers: dict[bytes, Any] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dht-attacker", daemon=True)
        self._thread.start()

    def __enter__(self) -> DhtAttacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT)
        self.sock.close()

    def answered(self, source: tuple[str, int], name: str, key: bytes | None = None) -> int:
        """How many ``name`` requests (for ``key``) from the node at ``source`` we answered."""
        with self._cond:
            return self.requests[name, key, source]

    def add_provider(self, node: tuple[str, int], key: bytes, value: bytes, timeout: float = TIMEOUT) -> bool:
        """Send ``p2pb_add_provider(key, value)`` to ``node`` and return its answer (held or refused)."""
        msg_id = os.urandom(wire.MSG_ID_BYTES)
        body = msgpack.packb([wire.ADD_PROVIDER, [self.node_id, key, value]], use_bin_type=True)
        self.sock.sendto(bytes((wire.REQUEST,)) + msg_id + body, node)
        answer = self._wait_answer(msg_id, timeout)
        return wire.parse_add_provider_response(answer)

    def _wait_answer(self, msg_id: bytes, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no answer to request {msg_id.hex()} within {timeout} s")
                self._cond.wait(remaining)
            return self._answers.pop(msg_id)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:  # closed, or an ICMP error from an earlier send
                if self._stop.is_set():
                    return
                continue
            try:
                message = wire.decode_datagram(data)
            except wire.WireError:
                continue
            if isinstance(message, wire.Response):
                with self._cond:
                    self._answers[message.msg_id] = message.body
                    self._cond.notify_all()
                continue
            reply = self._reply(message, (str(addr[0]), int(addr[1])))
            if reply is not None:
                self.sock.sendto(reply, addr)

    def _reply(self, request: wire.Request, addr: tuple[str, int]) -> bytes | None:
        key = getattr(request, "key", None)
        with self._cond:
            self.requests[wire.request_name(request), key, addr] += 1
        match request:
            case wire.Ping(msg_id):
                return wire.ping_response(msg_id, self.node_id)
            case wire.FindNode(msg_id) | wire.FindValue(msg_id):
                return wire.find_node_response(msg_id, [])
            case wire.Store(msg_id):
                return wire.store_response(msg_id, False)
            case wire.AddProvider(msg_id):
                return wire.add_provider_response(msg_id, False)
            case wire.GetProviders(msg_id, _, key):
                return wire.get_providers_response(msg_id, self.planted.get(key, []), [])
            case wire.Stun(msg_id):
                return wire.stun_response(msg_id, addr)
        return None  # an unknown RPC: stay silent, as rpcudp does
