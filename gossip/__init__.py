"""gossip: sans-IO feed replication between p2pblog nodes.

Modules:

- `gossip.noise`: Noise_XX_25519_ChaChaPoly_BLAKE2b (Noise rev 34) on libsodium
  primitives: CipherState, SymmetricState, HandshakeState, Split.
- `gossip.transport`: `SecureChannel`, one connection's handshake, Ed25519
  identity binding, length-prefixed chunked frames and timeouts.
- `gossip.messages`: the messages carried in those frames (replication:
  CLOCK, ENTRIES, HAVE, WANT, ACK, FORK_PROOF; mention notices: MENTION,
  MENTION_ACK with its `MentionStatus`) and their bounded codec;
  `GossipDecodeError` is the only error peer bytes can cause.
- `gossip.session`: `GossipSession`, one connection's replication state
  machine: EBT clock exchange, batched catch-up with an ACK window, live push,
  Plumtree eager/lazy fan-out with HAVE/WANT repair, fork proofs, mention
  notices (`send_mention`/`MentionReceived`, `ack_mention`/`MentionAcked`),
  misbehaviour scoring; it reads the node's feeds through a `FeedSource`,
  and the node's sessions share one `PeerFeedBudget` for the feeds peers
  name that it neither wants nor holds.
- `gossip.mentions`: `MentionNotices`, the part of a session that owns the
  MENTION / MENTION_ACK exchange (queues, pairing, sending budget) and its
  events; `gossip.session` re-exports the events and constants.

Like `dht`, this package never imports trio, socket, time or the OS random source, and
imports nothing from the project but `identity`.
"""

from __future__ import annotations

from gossip.messages import GossipDecodeError, MentionStatus, decode_message, encode_message
from gossip.noise import NoiseError
from gossip.session import (
    EntriesReceived,
    EntriesRefused,
    FeedSource,
    ForkProofReceived,
    GossipConfig,
    GossipSession,
    MentionAcked,
    MentionReceived,
    MessageDropped,
    PeerFeedBudget,
    PeerMisbehaved,
    SessionFailed,
    SessionState,
)
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
    "EntriesReceived",
    "EntriesRefused",
    "FeedSource",
    "ForkProofReceived",
    "FrameReceived",
    "GossipConfig",
    "GossipDecodeError",
    "GossipSession",
    "HandshakeCompleted",
    "HandshakeError",
    "MentionAcked",
    "MentionReceived",
    "MentionStatus",
    "MessageDropped",
    "NoiseError",
    "PeerFeedBudget",
    "PeerMisbehaved",
    "SecureChannel",
    "SessionFailed",
    "SessionState",
    "decode_message",
    "encode_message",
]
