"""gossip: sans-IO feed replication between p2pblog nodes.

Modules:

- `gossip.noise`: Noise_XX_25519_ChaChaPoly_BLAKE2b (Noise rev 34) on libsodium
  primitives: CipherState, SymmetricState, HandshakeState, Split.
- `gossip.transport`: `SecureChannel`, one connection's handshake, Ed25519
  identity binding, length-prefixed chunked frames and timeouts.

Like `dht`, this package never imports trio, socket, time or os.urandom and
imports nothing from the project but `identity`.
"""

from __future__ import annotations

from gossip.noise import NoiseError
from gossip.transport import (
    ChannelConfig,
    ChannelFailed,
    ChannelState,
    FrameReceived,
    HandshakeCompleted,
    HandshakeError,
    SecureChannel,
)

__all__ = [
    "ChannelConfig",
    "ChannelFailed",
    "ChannelState",
    "FrameReceived",
    "HandshakeCompleted",
    "HandshakeError",
    "NoiseError",
    "SecureChannel",
]
