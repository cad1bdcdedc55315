"""Devices: which feeds belong to an identity, from the certificates in its feeds.

Theory of operation
-------------------
An *identity* is a root key (its handle is what people follow).  It certifies
*device* keys; each device signs its own append-only feed, so two devices
posting at once never fork each other.  A key that certified nothing is an
identity with one device, itself: every existing feed is one.

Three entry kinds carry it (`p2pblog.entry`; `docs/protocol.md`, "Devices"):

``device {device, name, admin}``  in the root's feed (or an admin device's):
    "``device`` is a device of my identity, called ``name``"; with ``admin``
    it may certify and revoke devices itself.
``device_of {identity}``  in the device's own feed: the device's consent.  A
    key is a device of an identity only if it says so itself, so nobody can
    annex someone else's feed; a key consents to one identity (its first
    ``device_of``; later ones are ignored).
``revoke {device, after}``  in the root's feed (or an admin device's): the
    device's entries after seq ``after`` are not the identity's; followers
    refuse them, and drop those they held.

Root keys rotate (`roots`), with pre-rotation as in KERI:

``commit {next}``  in the identity's first root's feed: the BLAKE2b-256 digest
    (`key_digest`) of the next root key, kept offline.  Only the first one
    counts (a later one, say by a thief of the current key, changes nothing).
``rotate {identity, new, next, cut}``  reveals ``new``, whose digest the
    current commitment names, and commits to the one after it.  Signed
    either by the current root, in its feed (a planned rotation: the old
    root's feed ends at this entry; ``cut`` is ignored), or by ``new`` itself,
    in its own feed (a *recovery*: the current root may be stolen; its entries
    after ``cut`` are not the identity's).  At one position a recovery beats a
    planned rotation, so a thief who holds the current root and saw the new
    key revealed cannot take the rotation over.  Each new root is counted as a
    device of the identity named ``root-N`` with the rights of the root.

`resolve` computes an identity's devices from those rows, as the store holds
them: starting from the root, a certificate counts if its certifier is an
*authority* (the root, or an admin device already counted) and the device
consented; a revocation counts if its revoker is an authority; an authority's
certificates and revocations count only up to its own revocation (by the seq
of the entry in its feed).  At most `MAX_DEVICES` devices per identity (the
earliest certificates win), so a root cannot make its followers replicate
without bound.  The result does not depend on the order rows arrived in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: Devices an identity may have, revoked ones included (what followers replicate).
MAX_DEVICES: Final = 16
#: Root rotations followed at most.
MAX_ROTATIONS: Final = 64
KEY_DIGEST_DOMAIN: Final = b"p2pblog/next-root-key/v1\x00"


@dataclass(frozen=True, slots=True)
class Cert:
    """A ``device`` entry: ``certifier`` (its author) certified ``device`` at ``seq``."""

    device: bytes
    certifier: bytes
    seq: int
    name: str
    admin: bool


@dataclass(frozen=True, slots=True)
class Revocation:
    """A ``revoke`` entry: ``revoker`` (its author) revoked ``device`` after ``after``, at ``seq``."""

    device: bytes
    revoker: bytes
    seq: int
    after: int


@dataclass(frozen=True, slots=True)
class Device:
    """A device of an identity: ``consented`` once its ``device_of`` is held; ``after`` is
    the last seq of its feed that counts (None: not revoked)."""

    key: bytes
    name: str
    admin: bool
    consented: bool
    after: int | None
    certifier: bytes


@dataclass(frozen=True, slots=True)
class Rotation:
    """A ``rotate`` entry of ``author`` at ``seq`` for ``identity``: the new root ``new``, the
    digest ``next`` of the one after it, and (for a recovery) the old root's ``cut``."""

    author: bytes
    seq: int
    identity: bytes
    new: bytes
    next: bytes
    cut: int


def key_digest(key: bytes) -> bytes:
    """The commitment to a future root key: BLAKE2b-256 over a domain and the key."""
    return hashlib.blake2b(KEY_DIGEST_DOMAIN + key, digest_size=32).digest()


def roots(
    identity: bytes, first_commit: bytes | None, rotations: Iterable[Rotation]
) -> list[tuple[bytes, int | None]]:
    """The identity's root keys, oldest first, each with the last seq of its feed that
    counts (None for the current root)."""
    return root_state(identity, first_commit, rotations)[0]


def root_state(
    identity: bytes, first_commit: bytes | None, rotations: Iterable[Rotation]
) -> tuple[list[tuple[bytes, int | None]], bytes | None, list[Rotation]]:
    """`roots`, the commitment in force (the digest the next root key must have), and the
    rotations that made the chain, oldest first: only these, never a rotation some other
    feed filed, decide the commitment."""
    rotations = [r for r in rotations if r.identity == identity]
    chain: list[tuple[bytes, int | None]] = [(identity, None)]
    picks: list[Rotation] = []
    current, commitment = identity, first_commit
    used = {identity}
    while commitment is not None and len(chain) <= MAX_ROTATIONS:
        found = [
            r
            for r in rotations
            if key_digest(r.new) == commitment and r.new not in used and r.author in (current, r.new)
        ]
        if not found:
            break
        # A recovery (signed by the revealed key) beats a rotation by the current root.
        pick = min(found, key=lambda r: (r.author != r.new, r.seq, r.author))
        cut = pick.cut if pick.author == pick.new else pick.seq
        chain[-1] = (current, cut)
        chain.append((pick.new, None))
        picks.append(pick)
        used.add(pick.new)
        current, commitment = pick.new, pick.next
    return chain, commitment, picks


def resolve(
    identity: bytes,
    certs: Iterable[Cert],
    consents: Mapping[bytes, bytes],
    revocations: Iterable[Revocation],
    chain: list[tuple[bytes, int | None]] | None = None,
) -> dict[bytes, Device]:
    """The devices of ``identity``: its later roots (``chain``, from `roots`), with the
    first root's own cut-off if it rotated, and its certified devices, those that have
    not consented yet included (their feeds must be fetched to see the consent)."""
    chain = chain or [(identity, None)]
    root_devices = {
        key: Device(key, "root" if i == 0 else f"root-{i + 1}", True, True, after, identity)
        for i, (key, after) in enumerate(chain)
        if i > 0 or after is not None
    }
    roots_cut = {key: after for key, after in chain}
    found = _resolve_certified(identity, certs, consents, revocations, roots_cut)
    return {**found, **root_devices}


def _resolve_certified(
    identity: bytes,
    certs: Iterable[Cert],
    consents: Mapping[bytes, bytes],
    revocations: Iterable[Revocation],
    roots_cut: Mapping[bytes, int | None],
) -> dict[bytes, Device]:
    certs = sorted(certs, key=lambda c: (c.seq, c.certifier, c.device))
    revocations = list(revocations)
    cut: dict[bytes, int] = {}
    devices: dict[bytes, Device] = {}
    # Alternate: the devices the certificates give under the current cut-offs, then the
    # cut-offs those devices' revocations give, until neither changes.
    for _ in range(MAX_DEVICES + 2):
        found = _certified(identity, certs, consents, cut, roots_cut)
        new_cut = _cutoffs(identity, found, revocations, roots_cut)
        if found.keys() == devices.keys() and new_cut == cut:
            break
        devices, cut = found, new_cut
    return {
        key: Device(d.key, d.name, d.admin, d.consented, cut.get(key), d.certifier)
        for key, d in devices.items()
    }


def _certified(
    identity: bytes,
    certs: list[Cert],
    consents: Mapping[bytes, bytes],
    cut: Mapping[bytes, int],
    roots_cut: Mapping[bytes, int | None],
) -> dict[bytes, Device]:
    devices: dict[bytes, Device] = {}
    changed = True
    while changed:
        changed = False
        for cert in certs:
            device = cert.device
            if device in roots_cut or device in devices or len(devices) >= MAX_DEVICES:
                continue
            if not _counts(devices, cut, roots_cut, cert.certifier, cert.seq):
                continue
            consent = consents.get(device)
            if consent is not None and consent != identity:
                continue  # it consented to another identity
            devices[device] = Device(device, cert.name, cert.admin, consent == identity, None, cert.certifier)
            changed = True
    return devices


def _counts(
    devices: Mapping[bytes, Device],
    cut: Mapping[bytes, int],
    roots_cut: Mapping[bytes, int | None],
    author: bytes,
    seq: int,
) -> bool:
    """Whether an entry of ``author`` at ``seq`` speaks for the identity."""
    if author in roots_cut:
        root_cut = roots_cut[author]
        return root_cut is None or seq <= root_cut
    device = devices.get(author)
    if device is None or not device.admin or not device.consented:
        return False
    after = cut.get(author)
    return after is None or seq <= after


def _cutoffs(
    identity: bytes,
    devices: Mapping[bytes, Device],
    revocations: list[Revocation],
    roots_cut: Mapping[bytes, int | None],
) -> dict[bytes, int]:
    """The lowest ``after`` of each device's valid revocations (iterated: a revoked admin's
    revocations count only up to its own cut-off)."""
    cut: dict[bytes, int] = {}
    for _ in range(len(devices) + 1):
        new: dict[bytes, int] = {}
        for r in revocations:
            if r.device in devices and _counts(devices, cut, roots_cut, r.revoker, r.seq):
                new[r.device] = min(new.get(r.device, r.after), r.after)
        if new == cut:
            break
        cut = new
    return cut
