"""Protocol constants: every size and count limit of p2pblog, in one place.

ARCHITECTURE.md fixes the first four.  Each limit is enforced where input
enters (decoders, the CLI, the store) with a declared error or a counted drop.

The module sits in `identity`, the bottom layer, so that every package
(`p2pblog`, `dht`, `gossip`) reads the same constants without importing
upwards.
"""

from __future__ import annotations

from typing import Final

#: Longest post text, in Unicode code points.
MAX_POST_CHARS: Final = 500
#: Largest signed entry (signature + content), in bytes.
MAX_ENTRY_BYTES: Final = 8 * 1024
#: Largest gossip frame, in bytes.
MAX_FRAME_BYTES: Final = 1024 * 1024
#: Largest DHT datagram (rpcudp's request limit) and DHT value, in bytes.
MAX_DATAGRAM_BYTES: Final = 8 * 1024
MAX_DHT_VALUE_BYTES: Final = 1024

#: Longest direct message text, in Unicode code points (`identity.sealed`).
MAX_DM_CHARS: Final = 1000
#: Largest sealed direct message: the text at 4 bytes a code point, two keys, a
#: timestamp, a signature, msgpack framing and the 48 bytes of the seal.
MAX_SEALED_BYTES: Final = MAX_DM_CHARS * 4 + 256

#: Mentions carried by one post.
MAX_MENTIONS: Final = 16
#: Profile display name and bio, in code points.
MAX_PROFILE_NAME_CHARS: Final = 64
MAX_PROFILE_BIO_CHARS: Final = 280
#: Timestamps are integer milliseconds since the Unix epoch, below 2**53 so
#: that every JSON reader keeps them exact.
MAX_TIMESTAMP_MS: Final = 2**53 - 1
#: How far ahead of the receiver's clock an entry's timestamp may be (one day,
#: for clock skew and time zones set wrong).  Later entries are refused at
#: ingest (`p2pblog.errors.EntryFromFuture`) and accepted once the receiver's
#: clock catches up: the feed waits, nothing is lost.
MAX_AHEAD_MS: Final = 24 * 3600 * 1000
#: Highest sequence number (fits SQLite's signed 64-bit integers).
MAX_SEQ: Final = 2**63 - 1

#: Longest name in a name claim, in characters of ``a-z 0-9 _ -``.
MAX_NAME_CHARS: Final = 32
#: Least proof-of-work bits a name claim's stamp must carry to be valid
#: (`identity.pow`): 2**20 BLAKE2b hashes on average, about half a second of
#: one core in CPython.  It makes each claim cost the claimant CPU, so that
#: flooding a name with claims from many keys is expensive; see
#: docs/protocol.md "Name claims".
NAME_CLAIM_MIN_WORK: Final = 20
#: Proof-of-work bits of the stamp on a mention notice: what senders attach by
#: default, and what a node requires by default from senders it does not
#: follow (2**16 hashes, a few tens of milliseconds).
MENTION_WORK: Final = 16

#: Gossip: most entries in one ENTRIES message.
MAX_ENTRIES_PER_FRAME: Final = 500
#: Gossip: most feeds named in one CLOCK, HAVE, WANT or ACK message.  A note is
#: at most 34 + 9 bytes, so 10,000 of them stay well under `MAX_FRAME_BYTES`.
MAX_NOTES_PER_FRAME: Final = 10_000
#: Gossip: most ENTRIES messages a sender may have unacknowledged.  The
#: receiver enforces it, so both ends must agree on it.
MAX_BATCHES_IN_FLIGHT: Final = 4

#: Entries written per SQLite transaction when importing or ingesting a batch.
#: Each commit writes every page its inserts dirtied, and the random 32-byte ids
#: dirty pages all over their index: fewer, larger commits write each such page
#: fewer times (docs/benchmarks.md, "Past one core": 5,000 -> 20,000 with the
#: page cache below, store work per entry 11.2 -> 9.4 us).
INGEST_BATCH: Final = 20_000
#: SQLite page cache (KiB) while `Store.ingest_many` writes a bulk input (the
#: default is 2,000 KiB), so a batch's dirty pages stay in memory until its commit.
BULK_CACHE_KIB: Final = 32 * 1024
