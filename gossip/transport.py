"""SecureChannel: one gossip connection's Noise handshake, identity check and framing, sans-IO.

Theory of operation
-------------------
A `SecureChannel` turns a TCP byte stream into authenticated gossip frames.
It never touches a socket or a clock: the driver (the trio runtime or the
simulator) feeds it bytes with `SecureChannel.receive_data`, sends whatever
`SecureChannel.data_to_send` returns, drains `SecureChannel.next_event`, and
calls `SecureChannel.handle_timer` at `SecureChannel.get_timer` -- after every
input, as aioquic's ``transmit()`` does.  Every input carries ``now``, and
the channel's randomness (its X25519 static key, unless one is given, and the
handshake's ephemeral key) comes from the ``random_bytes`` its maker must
pass: the daemon passes a CSPRNG, the simulator a seeded source, so a
channel never draws from a source it was not given.

**Wire.**  Every Noise message, handshake or transport, travels behind a
2-byte big-endian length (Noise caps a message at 65535 bytes)::

    +--------+--------+-----------------------------+
    | len (u16, BE)   | Noise message (len bytes)   |
    +--------+--------+-----------------------------+

**Handshake** (Noise_XX_25519_ChaChaPoly_BLAKE2b, prologue ``b"p2pblog/1"``,
see `gossip.noise`)::

    -> e                     payload: empty            32 bytes
    <- e, ee, s, es          payload: identity proof   32 + 48 + 96+16 = 192 bytes
    -> s, se                 payload: identity proof        48 + 96+16 = 160 bytes

An identity proof (as libp2p-noise does it) binds the sender's Ed25519
identity to the Noise static key it just used::

    ed25519 public key (32) || Ed25519 signature (64) over
        b"p2pblog-noise-static-key:" || sender's X25519 static public key (32)

The receiver checks the signature against the static key the handshake
authenticated (``rs``), so a proof cannot be replayed with another static key,
and the proof itself is encrypted and covered by the handshake hash.  The
initiator may demand a particular peer key (``expected_peer``, when dialling
a known handle); any other key fails the handshake before message 3 is sent.
Handshake messages have exact lengths, so a wrong length prefix fails the
channel at once, before its body is buffered.

**Frames.**  After the handshake each direction has its own `CipherState`.
A gossip frame (opaque msgpack bytes, at most ``MAX_FRAME_BYTES`` = 1 MiB) is
cut into transport messages whose plaintexts are::

    first chunk:   total length (u32, BE) || first bytes of the frame
    continuation:  next bytes of the frame
    keepalive:     empty plaintext, only between frames

For example the 2-byte frame ``b"hi"`` is one transport message::

    plaintext   00 00 00 02 68 69          total length 2, then the frame
    wire        00 16 || 22 bytes          6 bytes of ChaCha20 output + 16-byte tag

and a 1 MiB frame is 17 messages: 16 of 65535 bytes, then one of 292 bytes.
Every chunk but a frame's last is full (65519 plaintext bytes = 65535 minus
the 16-byte tag), so a frame has exactly one encoding.  The receiver reads
the total from the first chunk and fails the channel if it is over the limit,
before buffering anything more; a chunk that is short before the end, runs
past the end, or is empty mid-frame also fails it.  Nonces are implicit
counters, so a replayed, reordered, dropped or altered message fails to
authenticate.

**Timers.**  The handshake must finish ``handshake_timeout`` seconds after
the channel is made (an owner may give inbound channels a shorter deadline
than its dials, whose clock starts before the TCP connect); a channel that
fails on a deadline says so (``ChannelFailed.timeout``), so its owner can
tell a stalled peer from one that sent bad bytes.  Once open, the channel fails if nothing authentic
arrives for ``idle_timeout`` seconds, and sends an empty keepalive message
when it has sent nothing for ``keepalive_interval`` seconds, so two live
peers never idle each other out.  With ``keepalive_slack`` the channel's
timer waits that much longer for the keepalive, so that an owner with many
channels can send the due ones together (`SecureChannel.keep_alive`) at one
wake-up of its own instead of one wake-up each.

**Failure.**  Bad bytes from the peer never raise: they queue one
`ChannelFailed` event, drop pending output, and close the channel; later
input is ignored and `next_event` still returns the events queued before the
failure, in order.  Our own misuse (sending before the handshake completes,
after close, or over the limit) raises `LocalProtocolError`.

States (`ChannelState`) and their moves are the table `_TRANSITIONS`::

    HANDSHAKING --handshake done--> OPEN
    HANDSHAKING --failure/close---> CLOSED
    OPEN        --failure/close---> CLOSED
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from gossip.noise import (
    DHLEN,
    MAX_MESSAGE_BYTES,
    TAGLEN,
    CipherFactory,
    CipherState,
    HandshakeState,
    KeyPair,
    NoiseError,
    RandomBytes,
)
from identity.errors import LocalProtocolError
from identity.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, SignatureError, verify_detached
from identity.limits import MAX_FRAME_BYTES

#: Mixed into the handshake hash: both ends must speak this protocol version.
PROLOGUE: Final = b"p2pblog/1"
#: Domain separation for the signature that binds an Ed25519 identity to a Noise static key.
STATIC_KEY_CONTEXT: Final = b"p2pblog-noise-static-key:"
IDENTITY_PROOF_BYTES: Final = PUBLIC_KEY_BYTES + SIGNATURE_BYTES
LENGTH_PREFIX_BYTES: Final = 2
FRAME_HEADER_BYTES: Final = 4
#: Largest plaintext one transport message carries.
MAX_CHUNK_BYTES: Final = MAX_MESSAGE_BYTES - TAGLEN

#: Exact length of each XX handshake message with p2pblog's payloads.
HANDSHAKE_MESSAGE_BYTES: Final = (
    DHLEN,
    DHLEN + (DHLEN + TAGLEN) + (IDENTITY_PROOF_BYTES + TAGLEN),
    (DHLEN + TAGLEN) + (IDENTITY_PROOF_BYTES + TAGLEN),
)

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
#: An open channel that has received nothing authentic for this long is dead (a
#: half-open connection: the peer lost power or its network).  Four keepalive
#: intervals, so a live peer whose keepalives are late (a slow or lossy link) is kept.
DEFAULT_IDLE_TIMEOUT: Final = 480.0
#: A channel that has sent nothing for this long sends an empty keepalive
#: (Bitcoin's ping every 2 min; docs/design.md, "protocol intervals").
DEFAULT_KEEPALIVE_INTERVAL: Final = 120.0


class HandshakeError(ValueError):
    """The peer's identity proof is malformed, forged or not the key we dialled."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The peer proved it holds ``peer_key`` (its Ed25519 public key); frames may flow."""

    peer_key: bytes


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """One whole, authenticated frame from the peer (msgpack bytes, not yet decoded)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ChannelFailed:
    """The channel is closed: bad bytes from the peer, or a timeout.  Close the socket.

    ``timeout``: nothing was wrong with what arrived, it stopped arriving (the
    handshake deadline or the idle timeout passed), which a slow or broken
    link can cause as well as a peer that holds a connection open."""

    reason: str
    timeout: bool = False


Event = HandshakeCompleted | FrameReceived | ChannelFailed


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    #: Seconds a keepalive may wait past its due time for the owner to send it
    #: with others (`SecureChannel.keep_alive`); the channel's own timer fires
    #: only after that.  0: the channel keeps its own time exactly.
    keepalive_slack: float = 0.0
    #: Makes each direction's transport cipher after the handshake: the real
    #: ChaCha20-Poly1305 `CipherState` everywhere but in the simulator, which may pass
    #: a stand-in that keeps every size and detects every change (`simulations.fast`).
    transport_cipher: CipherFactory = CipherState

    def __post_init__(self) -> None:
        if not 0 < self.keepalive_interval < self.idle_timeout:
            raise LocalProtocolError("keepalive_interval must be positive and below idle_timeout")
        if not 0 <= self.keepalive_slack < self.idle_timeout - self.keepalive_interval:
            raise LocalProtocolError("keepalive_slack must be >= 0 and end before idle_timeout")
        if self.handshake_timeout <= 0:
            raise LocalProtocolError("handshake_timeout must be positive")


class ChannelState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


_TRANSITIONS: Final = {
    ChannelState.HANDSHAKING: frozenset({ChannelState.OPEN, ChannelState.CLOSED}),
    ChannelState.OPEN: frozenset({ChannelState.CLOSED}),
    ChannelState.CLOSED: frozenset[ChannelState](),
}


class _Step(enum.Enum):
    SEND_EMPTY = "send empty payload"
    SEND_PROOF = "send identity proof"
    RECEIVE_EMPTY = "receive empty payload"
    RECEIVE_PROOF = "receive identity proof"


#: What each role does with XX message 1, 2 and 3.
_SCRIPT: Final = {
    True: (_Step.SEND_EMPTY, _Step.RECEIVE_PROOF, _Step.SEND_PROOF),
    False: (_Step.RECEIVE_EMPTY, _Step.SEND_PROOF, _Step.RECEIVE_PROOF),
}


# --------------------------------------------------------------------------- identity proof


def identity_proof(identity: Identity, static_public: bytes) -> bytes:
    """The handshake payload that binds ``identity`` to our Noise static key."""
    return identity.public_key + identity.signature(STATIC_KEY_CONTEXT + static_public)


def verify_identity_proof(payload: bytes, static_public: bytes) -> bytes:
    """Check a peer's proof against the static key it used; return its Ed25519 key.

    Raises `HandshakeError` and nothing else.
    """
    if len(payload) != IDENTITY_PROOF_BYTES:
        raise HandshakeError(f"identity proof is {len(payload)} bytes, not {IDENTITY_PROOF_BYTES}")
    peer_key = bytes(payload[:PUBLIC_KEY_BYTES])
    signature = bytes(payload[PUBLIC_KEY_BYTES:])
    try:
        verify_detached(peer_key, STATIC_KEY_CONTEXT + static_public, signature)
    except SignatureError:
        raise HandshakeError("identity proof signature does not verify") from None
    return peer_key


# --------------------------------------------------------------------------- the channel


class _PeerFault(Exception):
    """Internal: the peer broke the protocol; the message becomes `ChannelFailed`."""


class SecureChannel:
    """One end of an authenticated, framed gossip connection (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        now: float,
        expected_peer: bytes | None = None,
        config: ChannelConfig | None = None,
        static_key: bytes | None = None,
        random_bytes: RandomBytes,
    ) -> None:
        if expected_peer is not None and len(expected_peer) != PUBLIC_KEY_BYTES:
            raise LocalProtocolError("expected_peer is a 32-byte Ed25519 public key")
        static = (
            KeyPair.from_private(static_key) if static_key is not None else KeyPair.generate(random_bytes)
        )
        self._identity = identity
        self._initiator = initiator
        self._expected_peer = expected_peer
        self._config = config if config is not None else ChannelConfig()
        self._static = static
        self._handshake = HandshakeState(
            initiator=initiator, prologue=PROLOGUE, static=static, random_bytes=random_bytes
        )
        self._state = ChannelState.HANDSHAKING
        self._peer_key: bytes | None = None
        self._send_cipher: CipherState | None = None
        self._recv_cipher: CipherState | None = None
        self._inbound = bytearray()
        self._outbound = bytearray()
        self._events: deque[Event] = deque()
        # Reassembly of the frame in progress: its announced total and bytes so far.
        self._frame_total: int | None = None
        self._frame = bytearray()
        self._handshake_deadline = now + self._config.handshake_timeout
        self._last_received = now
        self._last_sent = now
        self._run_send_steps()

    @classmethod
    def initiator(
        cls,
        identity: Identity,
        *,
        now: float,
        expected_peer: bytes | None = None,
        config: ChannelConfig | None = None,
        static_key: bytes | None = None,
        random_bytes: RandomBytes,
    ) -> SecureChannel:
        """The dialling end; its first handshake message is ready in `data_to_send`."""
        return cls(
            identity,
            initiator=True,
            now=now,
            expected_peer=expected_peer,
            config=config,
            static_key=static_key,
            random_bytes=random_bytes,
        )

    @classmethod
    def responder(
        cls,
        identity: Identity,
        *,
        now: float,
        config: ChannelConfig | None = None,
        static_key: bytes | None = None,
        random_bytes: RandomBytes,
    ) -> SecureChannel:
        """The accepting end; it waits for the initiator's first message."""
        return cls(
            identity,
            initiator=False,
            now=now,
            config=config,
            static_key=static_key,
            random_bytes=random_bytes,
        )

    # ----------------------------------------------------------------- inspection

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def peer_key(self) -> bytes | None:
        """The peer's Ed25519 public key, once the handshake has completed."""
        return self._peer_key

    @property
    def handshake_hash(self) -> bytes | None:
        """Noise's channel-binding value (spec 11.2), once the handshake has completed."""
        return self._handshake.handshake_hash if self._handshake.complete else None

    # ----------------------------------------------------------------- outputs

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (and forget)."""
        out = bytes(self._outbound)
        self._outbound.clear()
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None when there is none (feed more data)."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None once closed."""
        if self._state is ChannelState.HANDSHAKING:
            return self._handshake_deadline
        if self._state is ChannelState.OPEN:
            return min(
                self._last_received + self._config.idle_timeout,
                self._last_sent + self._config.keepalive_interval + self._config.keepalive_slack,
            )
        return None

    # ----------------------------------------------------------------- inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes read from the socket; ignored once the channel is closed."""
        if self._state is ChannelState.CLOSED:
            return
        self._inbound += data
        buf = self._inbound
        pos = 0
        while not self._closed() and len(buf) - pos >= LENGTH_PREFIX_BYTES:
            length = int.from_bytes(buf[pos : pos + LENGTH_PREFIX_BYTES], "big")
            try:
                if self._state is ChannelState.HANDSHAKING:
                    expected = HANDSHAKE_MESSAGE_BYTES[self._handshake.message_index]
                    if length != expected:
                        raise _PeerFault(f"handshake message of {length} bytes, expected {expected}")
                elif length < TAGLEN:
                    raise _PeerFault(f"transport message of {length} bytes is shorter than its tag")
                end = pos + LENGTH_PREFIX_BYTES + length
                if len(buf) < end:
                    break
                message = bytes(buf[pos + LENGTH_PREFIX_BYTES : end])
                pos = end
                if self._state is ChannelState.HANDSHAKING:
                    self._receive_handshake_message(message, now)
                else:
                    self._receive_transport_message(message, now)
            except _PeerFault as fault:
                self._fail(str(fault))
        if self._closed():
            self._inbound.clear()
        else:
            del buf[:pos]

    def send_frame(self, payload: bytes, now: float) -> None:
        """Queue one frame for the peer (encrypted and chunked into `data_to_send`)."""
        if self._state is not ChannelState.OPEN:
            raise LocalProtocolError(f"cannot send a frame on a channel that is {self._state.value}")
        if len(payload) > MAX_FRAME_BYTES:
            raise LocalProtocolError(f"frame of {len(payload)} bytes over the {MAX_FRAME_BYTES}-byte limit")
        data = memoryview(len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload)
        for start in range(0, len(data), MAX_CHUNK_BYTES):
            if not self._send_transport(data[start : start + MAX_CHUNK_BYTES]):
                return
        self._last_sent = now

    def handle_timer(self, now: float) -> None:
        """Fire whatever timer is due at ``now`` (early calls are harmless)."""
        if self._state is ChannelState.HANDSHAKING:
            if now >= self._handshake_deadline:
                timeout = self._config.handshake_timeout
                self._fail(f"handshake not finished within {timeout:g} s", timeout=True)
        elif self._state is ChannelState.OPEN:
            if now >= self._last_received + self._config.idle_timeout:
                self._fail(f"nothing received for {self._config.idle_timeout:g} s", timeout=True)
            elif now >= self._last_sent + self._config.keepalive_interval and self._send_transport(b""):
                self._last_sent = now

    def keep_alive(self, now: float) -> bool:
        """Send the keepalive if it is due (if open); returns whether one was sent.

        `handle_timer` does the same; this lets an owner with many channels
        and ``keepalive_slack`` send them all at one wake-up of its own."""
        if (
            self._state is ChannelState.OPEN
            and now >= self._last_sent + self._config.keepalive_interval
            and self._send_transport(b"")
        ):
            self._last_sent = now
            return True
        return False

    def close(self) -> None:
        """Stop using the channel; output already queued stays in `data_to_send`."""
        if self._state is not ChannelState.CLOSED:
            self._set_state(ChannelState.CLOSED)

    # ----------------------------------------------------------------- internals

    def _closed(self) -> bool:
        # A method, not an inline test, so that type checkers do not keep the
        # state narrowed across calls that may close the channel.
        return self._state is ChannelState.CLOSED

    def _set_state(self, new: ChannelState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise LocalProtocolError(f"no transition {self._state.name} -> {new.name}")
        self._state = new

    def _fail(self, reason: str, *, timeout: bool = False) -> None:
        self._events.append(ChannelFailed(reason, timeout))
        self._outbound.clear()
        self._frame.clear()
        self._frame_total = None
        self._set_state(ChannelState.CLOSED)

    def _write_length_prefixed(self, message: bytes) -> None:
        self._outbound += len(message).to_bytes(LENGTH_PREFIX_BYTES, "big")
        self._outbound += message

    def _current_step(self) -> _Step | None:
        index = self._handshake.message_index
        script = _SCRIPT[self._initiator]
        return script[index] if index < len(script) else None

    def _run_send_steps(self) -> None:
        """Write every handshake message that is ours to write now; open when done."""
        while (step := self._current_step()) in (_Step.SEND_EMPTY, _Step.SEND_PROOF):
            payload = b"" if step is _Step.SEND_EMPTY else identity_proof(self._identity, self._static.public)
            try:
                message = self._handshake.write_message(payload)
            except NoiseError as exc:
                raise _PeerFault(f"handshake message {self._handshake.message_index + 1}: {exc}") from None
            self._write_length_prefixed(message)
        if self._handshake.complete:
            self._open()

    def _receive_handshake_message(self, message: bytes, now: float) -> None:
        step = self._current_step()
        try:
            payload = self._handshake.read_message(message)
        except NoiseError as exc:
            raise _PeerFault(f"handshake message {self._handshake.message_index + 1}: {exc}") from None
        if step is _Step.RECEIVE_EMPTY:
            if payload:
                raise _PeerFault("first handshake message carries an unexpected payload")
        else:
            remote_static = self._handshake.remote_static
            assert remote_static is not None  # XX sends "s" before the proof's message ends
            try:
                peer_key = verify_identity_proof(payload, remote_static)
            except HandshakeError as exc:
                raise _PeerFault(str(exc)) from None
            if self._expected_peer is not None and peer_key != self._expected_peer:
                raise _PeerFault("peer presented a different identity than the one dialled")
            self._peer_key = peer_key
        self._last_received = now
        self._run_send_steps()
        if self._state is ChannelState.OPEN:
            self._last_sent = now

    def _open(self) -> None:
        to_responder, to_initiator = self._handshake.split(self._config.transport_cipher)
        if self._initiator:
            self._send_cipher, self._recv_cipher = to_responder, to_initiator
        else:
            self._send_cipher, self._recv_cipher = to_initiator, to_responder
        assert self._peer_key is not None
        self._set_state(ChannelState.OPEN)
        self._events.append(HandshakeCompleted(self._peer_key))

    def _send_transport(self, plaintext: bytes | memoryview) -> bool:
        assert self._send_cipher is not None
        try:
            message = self._send_cipher.encrypt_with_ad(b"", bytes(plaintext))
        except NoiseError as exc:
            self._fail(f"cannot send: {exc}")
            return False
        self._write_length_prefixed(message)
        return True

    def _receive_transport_message(self, message: bytes, now: float) -> None:
        assert self._recv_cipher is not None
        try:
            plaintext = self._recv_cipher.decrypt_with_ad(b"", message)
        except NoiseError as exc:
            raise _PeerFault(f"transport message rejected ({exc}): tampered, replayed or reordered") from None
        self._last_received = now
        self._assemble(plaintext)

    def _assemble(self, plaintext: bytes) -> None:
        """Add one transport message's plaintext to the frame in progress."""
        if self._frame_total is None:
            if not plaintext:
                return  # keepalive
            if len(plaintext) < FRAME_HEADER_BYTES:
                raise _PeerFault("first chunk shorter than the frame header")
            total = int.from_bytes(plaintext[:FRAME_HEADER_BYTES], "big")
            if total > MAX_FRAME_BYTES:
                raise _PeerFault(f"frame of {total} bytes over the {MAX_FRAME_BYTES}-byte limit")
            chunk = memoryview(plaintext)[FRAME_HEADER_BYTES:]
            self._frame_total = total
        else:
            total = self._frame_total
            chunk = memoryview(plaintext)
        remaining = total - len(self._frame)
        if len(chunk) > remaining:
            raise _PeerFault("chunk runs past the end of its frame")
        if len(chunk) < remaining and len(plaintext) != MAX_CHUNK_BYTES:
            raise _PeerFault("short chunk before the end of a frame")
        self._frame += chunk
        if len(self._frame) == total:
            self._events.append(FrameReceived(bytes(self._frame)))
            self._frame.clear()
            self._frame_total = None
