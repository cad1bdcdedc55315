"""Pairing a new device with its identity: pairing codes, approvals, and the device's side.

Theory of operation
-------------------
1. On the new machine, ``p2pblog device add`` (after ``init``, which made the
   device's own key) picks a random 8-byte *nonce*, keeps it and the device's
   name in the store (`PENDING_SETTING`), and prints a *pairing code*
   (`encode_code`): the device key, the nonce and the name, with a checksum,
   in base32.
2. On a device that holds the identity's root key (or an admin device),
   ``p2pblog device approve CODE`` appends a ``device`` certificate to its
   feed (`p2pblog.devices`) and stores a signed *pairing record* (type
   ``pairing``: the device key and the nonce) in the DHT under
   ``pairing_key(device)``, republished every `PAIRING_REPUBLISH` seconds
   for `PAIRING_TTL` (`Approvals`).
3. The new device's node looks that key up every `PAIRING_POLL` seconds while
   its pairing is pending (`Pairing`).  A record signed by some identity that
   names this device and the nonce it chose is its approval: the node appends
   ``device_of {identity}`` to its own feed (its consent: followers count it
   as the identity's only with it) and follows the identity, so it replicates
   the identity's feeds and shows one timeline.  The nonce is what ties the
   approval to this pairing: the nonce itself never leaves the code, so a
   record copied under another identity proves nothing, and the provider
   store keeps one record per signer, so nobody can displace the real one.

Everything here is sans-IO: the driver only moves bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import msgpack

from dht import DhtCore
from dht.providers import MAX_PROVIDERS_PER_KEY
from identity import Identity
from identity.errors import LocalProtocolError
from identity.records import (
    PAIRING_NONCE_BYTES,
    Record,
    RecordError,
    create_pairing_record,
    pairing_key,
    pairing_proof,
)
from p2pblog.entry import MAX_DEVICE_NAME_CHARS
from p2pblog.queries import FindPairing, PendingQueries
from p2pblog.store import Store

#: Store setting holding a pending pairing: ``NONCE_HEX NAME`` (empty: none).
PENDING_SETTING: Final = "pairing.pending"
#: Store setting naming the identity this device belongs to (its handle's key, hex).
IDENTITY_SETTING: Final = "device.identity"
#: How often a pending device looks for its approval; how long and how often an approval
#: is kept in the DHT.
PAIRING_POLL: Final = 5.0
PAIRING_TTL: Final = 86_400
PAIRING_REPUBLISH: Final = 600.0
#: Approvals kept in the DHT at once.
MAX_APPROVALS: Final = 16
CODE_PREFIX: Final = "pair-"
_CHECKSUM: Final = 4


class PairingError(ValueError):
    """A pairing code that does not decode (a typo, or not a code at all)."""


@dataclass(frozen=True, slots=True)
class PairingCode:
    device: bytes
    nonce: bytes
    name: str


def encode_code(code: PairingCode) -> str:
    payload: bytes = msgpack.packb([code.device, code.nonce, code.name])
    digest = hashlib.blake2b(payload, digest_size=_CHECKSUM).digest()
    return CODE_PREFIX + base64.b32encode(payload + digest).decode().rstrip("=").lower()


def decode_code(text: str) -> PairingCode:
    text = "".join(text.split()).lower()
    if not text.startswith(CODE_PREFIX):
        raise PairingError(f"a pairing code starts with {CODE_PREFIX!r} (from `p2pblog device add`)")
    body = text[len(CODE_PREFIX) :].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise PairingError("not a pairing code: a character is wrong") from None
    payload, digest = raw[:-_CHECKSUM], raw[-_CHECKSUM:]
    if len(raw) <= _CHECKSUM or hashlib.blake2b(payload, digest_size=_CHECKSUM).digest() != digest:
        raise PairingError("the pairing code's checksum does not match: copy it again")
    try:
        device, nonce, name = msgpack.unpackb(payload, raw=False, max_bin_len=64, max_str_len=64)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise PairingError("not a pairing code") from None
    if not (isinstance(device, bytes) and len(device) == 32 and isinstance(nonce, bytes)):
        raise PairingError("not a pairing code")
    if len(nonce) != PAIRING_NONCE_BYTES or not isinstance(name, str) or len(name) > MAX_DEVICE_NAME_CHARS:
        raise PairingError("not a pairing code")
    return PairingCode(device, nonce, name)


def pending(store: Store) -> tuple[bytes, str] | None:
    """The pending pairing's nonce and device name, if any."""
    value = store.setting(PENDING_SETTING) or ""
    if not value:
        return None
    nonce_hex, _, name = value.partition(" ")
    return bytes.fromhex(nonce_hex), name


def identity_of_home(store: Store, own: bytes) -> bytes:
    """The identity this node speaks for: the one it paired with, else its own key."""
    value = store.setting(IDENTITY_SETTING) or ""
    return bytes.fromhex(value) if value else own


class Pairing:
    """The device's side: look for the approval while a pairing is pending."""

    def __init__(self, own: bytes, store: Store, dht: DhtCore, queries: PendingQueries) -> None:
        self.own = own
        self.store = store
        self.dht = dht
        self.queries = queries
        self._next_poll = 0.0
        self._in_flight = False

    def maintain(self, now: float) -> float | None:
        """Start a lookup when due; the next time it is due (None: nothing pending)."""
        if pending(self.store) is None:
            return None
        if not self._in_flight and now >= self._next_poll and len(self.dht.table):
            self._in_flight = True
            self._next_poll = now + PAIRING_POLL
            qid = self.dht.start_get_providers(pairing_key(self.own), now, want=MAX_PROVIDERS_PER_KEY)
            self.queries.add(qid, FindPairing(self.own))
        return max(self._next_poll, now + 1.0)

    def resolved(self, approvals: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The lookup ended: the identity that approved our pending pairing (its record's
        proof is keyed with our nonce), or None.  Records by others prove nothing."""
        self._in_flight = False
        mine = pending(self.store)
        if mine is None:
            return None
        for identity, proof in approvals:
            if identity != self.own and hmac.compare_digest(
                proof, pairing_proof(mine[0], identity, self.own)
            ):
                return identity
        return None


class KeptRecords:
    """Signed records of ours kept in the DHT for a while (approvals of devices, root
    rotations): each re-signed and stored again every `PAIRING_REPUBLISH` seconds until
    it expires.  ``make(seq, expires)`` signs a record's next version."""

    def __init__(self, dht: DhtCore, stats: Counter[str]) -> None:
        self.dht = dht
        self.stats = stats
        #: dht key -> (make, expires, next publication)
        self._kept: dict[bytes, tuple[Callable[[int, int], Record], int, float]] = {}

    def keep(self, key: bytes, make: Callable[[int, int], Record], ttl: int, now: float) -> None:
        if len(self._kept) >= MAX_APPROVALS and key not in self._kept:
            del self._kept[min(self._kept, key=lambda k: self._kept[k][1])]
        self._kept[key] = (make, int(now) + ttl, now)
        self.maintain(now)

    def maintain(self, now: float) -> float | None:
        """Publish the records that are due; the next time one is (None: none left)."""
        due: float | None = None
        for key, (make, expires, at) in list(self._kept.items()):
            if now >= expires:
                del self._kept[key]
                continue
            if now >= at:
                try:
                    self.dht.start_add_provider(key, make(int(now * 1000), expires).raw, now)
                    self.stats["kept_records.published"] += 1
                except (LocalProtocolError, RecordError):
                    self.stats["kept_records.refused"] += 1
                at = now + PAIRING_REPUBLISH
                self._kept[key] = (make, expires, at)
            due = at if due is None else min(due, at)
        return due


class Approvals:
    """The approver's side: keep the pairing records of recent approvals in the DHT."""

    def __init__(self, identity: Identity, kept: KeptRecords) -> None:
        self.identity = identity
        self.kept = kept

    def approve(self, code: PairingCode, now: float) -> None:
        def make(seq: int, expires: int) -> Record:
            return create_pairing_record(
                self.identity, device=code.device, nonce=code.nonce, seq=seq, expires=expires
            )

        self.kept.keep(pairing_key(code.device), make, PAIRING_TTL, now)


def start_pairing(store: Store, own: bytes, name: str, nonce: bytes) -> PairingCode:
    """Begin pairing this device (``device add``): keep the nonce and the name, and return the
    code to approve on the identity's root device.  ValueError if it belongs to one already."""
    if (store.setting(IDENTITY_SETTING) or "") != "":
        raise ValueError("this device belongs to an identity already (`p2pblog device list`)")
    if store.devices_of(own):
        raise ValueError("this node is an identity's root with devices: it cannot become a device")
    if len(nonce) != PAIRING_NONCE_BYTES:
        raise ValueError(f"a pairing nonce is {PAIRING_NONCE_BYTES} bytes")
    store.set_setting(PENDING_SETTING, f"{nonce.hex()} {name}")
    return PairingCode(own, nonce, name)
