"""Test helper: a hostile gossip peer on a real TCP connection to a running node.

Everything here is built from the sans-IO cores (`gossip.noise`,
`gossip.transport`, `gossip.messages`) over a plain blocking socket, with
``time.monotonic()`` as ``now``:

* `Connection` is the socket, with reads that never wait past a deadline and
  `Connection.wait_closed` to see the node hang up.
* `RawDialer` speaks Noise XX by hand (`gossip.noise.HandshakeState`, as
  ``RawPeer`` in ``tests/gossip/test_transport.py`` does in memory), so it
  can say what an honest `gossip.transport.SecureChannel` never would: an
  identity proof for one key signed by another, or a transport message whose
  frame header announces more than ``MAX_FRAME_BYTES``.
* `GossipDialer` is an honest `SecureChannel` initiator: a valid transport
  carrying gossip messages that lie (forged entries, a made-up clock), or
  floods of them (`GossipDialer.send_all`), read back until the node hangs
  up (`GossipDialer.read_until_closed`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import nacl.utils

from gossip.messages import Message, decode_message, encode_message
from gossip.noise import CipherState, HandshakeState, KeyPair
from gossip.transport import (
    HANDSHAKE_MESSAGE_BYTES,
    LENGTH_PREFIX_BYTES,
    PROLOGUE,
    STATIC_KEY_CONTEXT,
    ChannelFailed,
    FrameReceived,
    HandshakeCompleted,
    SecureChannel,
    verify_identity_proof,
)
from identity import Identity

#: Seconds any single wait in this module may take.
TIMEOUT = 5.0


class Connection:
    """A blocking TCP connection to a node's gossip port; every read has a deadline."""

    def __init__(self, addr: tuple[str, int], timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Write data; False if the node already hung up (reset, broken pipe)."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def receive(self, deadline: float) -> bytes | None:
        """Bytes from the node; b"" once it closed the connection, None at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionError:  # reset: the node closed with our bytes unread
            return b""

    def receive_exactly(self, count: int, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        data = bytearray()
        while len(data) < count:
            chunk = self.receive(deadline)
            if not chunk:
                raise AssertionError(
                    f"got {len(data)} of {count} bytes before {'timeout' if chunk is None else 'EOF'}"
                )
            data += chunk
        return bytes(data)

    def wait_closed(self, timeout: float = TIMEOUT) -> bool:
        """Read (and drop) until the node closes the connection; False if it stays open."""
        deadline = time.monotonic() + timeout
        while (chunk := self.receive(deadline)) is not None:
            if not chunk:
                return True
        return False


def _prefixed(message: bytes) -> bytes:
    return len(message).to_bytes(LENGTH_PREFIX_BYTES, "big") + message


class RawDialer:
    """The initiator side of the p2pblog handshake, written out by hand.

    It presents ``presented`` (default: ``signer``'s own key) in its identity
    proof but signs the proof with ``signer``, so the two can disagree.
    """

    def __init__(self, conn: Connection, signer: Identity, *, presented: bytes | None = None) -> None:
        self.conn = conn
        self.signer = signer
        self.presented = signer.public_key if presented is None else presented
        self.static = KeyPair.generate(nacl.utils.random)
        self.handshake = HandshakeState(
            initiator=True, prologue=PROLOGUE, static=self.static, random_bytes=nacl.utils.random
        )
        self.send_cipher: CipherState | None = None

    def proof(self) -> bytes:
        return self.presented + self.signer.signature(STATIC_KEY_CONTEXT + self.static.public)

    def run_handshake(self) -> bytes:
        """Send XX messages 1 and 3 around the node's message 2; return the key the node proved."""
        assert self.conn.send(_prefixed(self.handshake.write_message(b"")))
        length = HANDSHAKE_MESSAGE_BYTES[1]
        data = self.conn.receive_exactly(LENGTH_PREFIX_BYTES + length)
        assert int.from_bytes(data[:LENGTH_PREFIX_BYTES], "big") == length
        payload = self.handshake.read_message(data[LENGTH_PREFIX_BYTES:])
        assert self.handshake.remote_static is not None
        node_key = verify_identity_proof(payload, self.handshake.remote_static)
        assert self.conn.send(_prefixed(self.handshake.write_message(self.proof())))
        self.send_cipher, _ = self.handshake.split()  # (initiator -> responder, responder -> initiator)
        return node_key

    def send_transport(self, plaintext: bytes) -> bool:
        """Encrypt one transport message (any plaintext: header included) and send it."""
        assert self.send_cipher is not None, "handshake first"
        return self.conn.send(_prefixed(self.send_cipher.encrypt_with_ad(b"", plaintext)))


class GossipDialer:
    """An honest `SecureChannel` initiator over `Connection`, sending whatever messages it is given."""

    def __init__(self, conn: Connection, identity: Identity, *, expected_peer: bytes | None = None) -> None:
        self.conn = conn
        # A real peer over a real socket: libsodium's CSPRNG, as the daemon uses.
        self.channel = SecureChannel.initiator(
            identity, now=time.monotonic(), expected_peer=expected_peer, random_bytes=nacl.utils.random
        )
        self.frames: list[bytes] = []
        self._flush()

    def _flush(self) -> None:
        data = self.channel.data_to_send()
        if data:
            self.conn.send(data)

    def _step(self, deadline: float) -> list[HandshakeCompleted | ChannelFailed]:
        """Read once and feed the channel; return its handshake events (frames are kept)."""
        data = self.conn.receive(deadline)
        if data is None:
            raise AssertionError("the node sent nothing before the deadline")
        if not data:
            raise AssertionError("the node closed the connection")
        self.channel.receive_data(data, time.monotonic())
        self._flush()
        out: list[HandshakeCompleted | ChannelFailed] = []
        while (event := self.channel.next_event()) is not None:
            if isinstance(event, FrameReceived):
                self.frames.append(event.payload)
            else:
                out.append(event)
        return out

    def run_handshake(self, timeout: float = TIMEOUT) -> HandshakeCompleted | ChannelFailed:
        deadline = time.monotonic() + timeout
        while not (events := self._step(deadline)):
            pass
        return events[0]

    def send(self, message: Message) -> None:
        self.channel.send_frame(encode_message(message), time.monotonic())
        self._flush()

    def send_all(self, messages: list[Message]) -> bool:
        """Encrypt every message, then write them all at once (a flood); False if the node hung up."""
        now = time.monotonic()
        for message in messages:
            self.channel.send_frame(encode_message(message), now)
        return self.conn.send(self.channel.data_to_send())

    def read_until_closed(self, timeout: float = TIMEOUT) -> tuple[list[Message], bool]:
        """Every message the node sends until it closes the connection (True) or the deadline (False).

        Unlike `receive_until`, the node hanging up is an outcome here, not a failure."""
        deadline = time.monotonic() + timeout
        closed = False
        while not closed:
            data = self.conn.receive(deadline)
            if data is None:
                break
            if not data:
                closed = True
            else:
                self.channel.receive_data(data, time.monotonic())
            while (event := self.channel.next_event()) is not None:
                if isinstance(event, FrameReceived):
                    self.frames.append(event.payload)
                elif isinstance(event, ChannelFailed):
                    closed = True
        messages = [decode_message(frame) for frame in self.frames]
        self.frames.clear()
        return messages, closed

    def receive_until(self, done: Callable[[list[Message]], bool], timeout: float = TIMEOUT) -> list[Message]:
        """Messages from the node, read until ``done(messages so far)``."""
        deadline = time.monotonic() + timeout
        messages: list[Message] = []
        while True:
            messages += [decode_message(frame) for frame in self.frames]
            self.frames.clear()
            if done(messages):
                return messages
            failed = [e for e in self._step(deadline) if isinstance(e, ChannelFailed)]
            if failed:
                raise AssertionError(f"channel failed: {failed[0].reason}")
