"""Signed records that p2pblog publishes in the DHT.

Theory of operation
-------------------
A record is signed bytes in the same combined form as entries::

    signed  = signature (64 bytes) || content
    content = msgpack [1, type, signer, seq, expires, body]

``signer`` is the 32-byte Ed25519 key that signed, ``seq`` a counter the
signer raises with every new version (highest valid seq wins), ``expires``
integer Unix seconds after which the record is dropped, and ``body`` a map
whose fields depend on ``type``:

``peer``
    "this key is reachable here": ``{"addrs": [[proto, host, port], ...]}``
    with proto ``udp`` (DHT) or ``tcp`` (gossip).
``provider``
    "the signer's node holds feed F": ``{"addrs": [...], "feed": F}``.

Each record lives under a DHT key derived from what it is about
(`peer_key`, `provider_key`), and a record is only valid under its own key:
nobody can file a record about someone else's feed under a key of their
choosing.  Verification needs ``now`` and never reads a clock, so the sans-IO
cores can call it.  Decoding is bounded and raises only `RecordError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from identity.keys import SIGNATURE_BYTES, Identity, SignatureError, verify

FORMAT_VERSION: Final = 1
PEER: Final = "peer"
PROVIDER: Final = "provider"
MAX_RECORD_BYTES: Final = 1024
MAX_ADDRS: Final = 8
MAX_HOST_CHARS: Final = 255
DHT_KEY_BYTES: Final = 20
PROTOCOLS: Final = ("udp", "tcp")

Address = tuple[str, str, int]


class RecordError(ValueError):
    """A record is malformed, badly signed, expired or filed under the wrong key."""


def _dht_key(label: bytes, subject: bytes) -> bytes:
    return hashlib.blake2b(label + subject, digest_size=DHT_KEY_BYTES).digest()


def peer_key(public_key: bytes) -> bytes:
    """The 160-bit DHT key under which a key's peer record is stored."""
    return _dht_key(b"p2pblog/peer/", public_key)


def provider_key(feed: bytes) -> bytes:
    """The 160-bit DHT key under which providers of a feed are stored."""
    return _dht_key(b"p2pblog/provider/", feed)


@dataclass(frozen=True, slots=True)
class Record:
    raw: bytes
    type: str
    signer: bytes
    seq: int
    expires: int
    addrs: tuple[Address, ...]
    feed: bytes | None

    @property
    def dht_key(self) -> bytes:
        return provider_key(self.feed) if self.feed is not None else peer_key(self.signer)

    def addr(self, proto: str) -> tuple[str, int] | None:
        for p, host, port in self.addrs:
            if p == proto:
                return host, port
        return None


def _check_addrs(addrs: object) -> tuple[Address, ...]:
    if not isinstance(addrs, list) or not 1 <= len(addrs) <= MAX_ADDRS:
        raise RecordError(f"'addrs' must list 1..{MAX_ADDRS} addresses")
    out: list[Address] = []
    for item in addrs:
        if not (isinstance(item, list) and len(item) == 3):
            raise RecordError("an address is [proto, host, port]")
        proto, host, port = item
        if proto not in PROTOCOLS:
            raise RecordError(f"unknown address protocol {proto!r}")
        if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS:
            raise RecordError("an address host is 1..255 characters of text")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise RecordError("an address port is 1..65535")
        out.append((proto, host, port))
    return tuple(out)


def create_record(
    identity: Identity,
    *,
    type: str,
    seq: int,
    expires: int,
    addrs: Sequence[Address],
    feed: bytes | None = None,
) -> Record:
    """Sign a record; raises `RecordError` for invalid fields."""
    body: dict[str, Any] = {"addrs": [list(a) for a in addrs]}
    if type == PROVIDER:
        if feed is None or len(feed) != 32:
            raise RecordError("a provider record names a 32-byte feed")
        body["feed"] = feed
    elif type != PEER or feed is not None:
        raise RecordError(f"unknown record type {type!r}")
    content = msgpack.packb([FORMAT_VERSION, type, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def decode_record(
    signed: bytes, *, now: float | None, key: bytes | None = None, check_signature: bool = True
) -> Record:
    """Verify a record; with ``now``, also refuse it once expired; with ``key``,
    refuse it unless it belongs under that DHT key.

    ``check_signature=False`` only for bytes this process already verified."""
    if not isinstance(signed, bytes) or not SIGNATURE_BYTES < len(signed) <= MAX_RECORD_BYTES:
        raise RecordError(f"a record is bytes, at most {MAX_RECORD_BYTES}")
    content = signed[SIGNATURE_BYTES:]
    try:
        obj = msgpack.unpackb(
            content,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_RECORD_BYTES,
            max_str_len=MAX_RECORD_BYTES,
            max_array_len=MAX_ADDRS + 8,
            max_map_len=4,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        raise RecordError("malformed record encoding") from None
    if not isinstance(obj, list) or len(obj) != 6:
        raise RecordError("record content is not a 6-element array")
    version, rtype, signer, seq, expires, body = obj
    if version != FORMAT_VERSION or rtype not in (PEER, PROVIDER):
        raise RecordError("unknown record version or type")
    if not isinstance(signer, bytes) or len(signer) != 32:
        raise RecordError("signer must be a 32-byte key")
    for name, value in (("seq", seq), ("expires", expires)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise RecordError(f"{name} must be a non-negative integer")
    expected = {"addrs", "feed"} if rtype == PROVIDER else {"addrs"}
    if not isinstance(body, dict) or set(body) != expected or list(body) != sorted(body):
        raise RecordError(f"a {rtype} record body has exactly {sorted(expected)}")
    addrs = _check_addrs(body["addrs"])
    feed = body.get("feed")
    if rtype == PROVIDER and (not isinstance(feed, bytes) or len(feed) != 32):
        raise RecordError("a provider record names a 32-byte feed")
    if msgpack.packb(obj) != content:
        raise RecordError("record is not canonically encoded")
    if check_signature:
        try:
            verify(signer, signed)
        except SignatureError:
            raise RecordError("record signature does not verify") from None
    record = Record(signed, rtype, signer, seq, expires, addrs, feed)
    if now is not None and expires <= now:
        raise RecordError("record has expired")
    if key is not None and record.dht_key != key:
        raise RecordError("record is filed under a key that is not its own")
    return record


def newest(records: Sequence[Record]) -> Record | None:
    """The record that wins among versions by one signer: highest seq, then bytes."""
    if not records:
        return None
    return max(records, key=lambda r: (r.seq, r.raw))
