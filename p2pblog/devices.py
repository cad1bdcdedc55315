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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: Devices an identity may have, revoked ones included (what followers replicate).
MAX_DEVICES: Final = 16


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


def resolve(
    identity: bytes,
    certs: Iterable[Cert],
    consents: Mapping[bytes, bytes],
    revocations: Iterable[Revocation],
) -> dict[bytes, Device]:
    """The devices of ``identity`` (not the root itself), certified devices that have not
    consented yet included (their feeds must be fetched to see the consent)."""
    certs = sorted(certs, key=lambda c: (c.seq, c.certifier, c.device))
    revocations = list(revocations)
    cut: dict[bytes, int] = {}
    devices: dict[bytes, Device] = {}
    # Alternate: the devices the certificates give under the current cut-offs, then the
    # cut-offs those devices' revocations give, until neither changes.
    for _ in range(MAX_DEVICES + 2):
        found = _certified(identity, certs, consents, cut)
        new_cut = _cutoffs(identity, found, revocations)
        if found.keys() == devices.keys() and new_cut == cut:
            break
        devices, cut = found, new_cut
    return {
        key: Device(d.key, d.name, d.admin, d.consented, cut.get(key), d.certifier)
        for key, d in devices.items()
    }


def _certified(
    identity: bytes, certs: list[Cert], consents: Mapping[bytes, bytes], cut: Mapping[bytes, int]
) -> dict[bytes, Device]:
    devices: dict[bytes, Device] = {}
    changed = True
    while changed:
        changed = False
        for cert in certs:
            device = cert.device
            if device == identity or device in devices or len(devices) >= MAX_DEVICES:
                continue
            if not _counts(identity, devices, cut, cert.certifier, cert.seq):
                continue
            consent = consents.get(device)
            if consent is not None and consent != identity:
                continue  # it consented to another identity
            devices[device] = Device(device, cert.name, cert.admin, consent == identity, None, cert.certifier)
            changed = True
    return devices


def _counts(
    identity: bytes, devices: Mapping[bytes, Device], cut: Mapping[bytes, int], author: bytes, seq: int
) -> bool:
    """Whether an entry of ``author`` at ``seq`` speaks for the identity."""
    if author == identity:
        return True
    device = devices.get(author)
    if device is None or not device.admin or not device.consented:
        return False
    after = cut.get(author)
    return after is None or seq <= after


def _cutoffs(
    identity: bytes, devices: Mapping[bytes, Device], revocations: list[Revocation]
) -> dict[bytes, int]:
    """The lowest ``after`` of each device's valid revocations (iterated: a revoked admin's
    revocations count only up to its own cut-off)."""
    cut: dict[bytes, int] = {}
    for _ in range(len(devices) + 1):
        new: dict[bytes, int] = {}
        for r in revocations:
            if r.device in devices and _counts(identity, devices, cut, r.revoker, r.seq):
                new[r.device] = min(new.get(r.device, r.after), r.after)
        if new == cut:
            break
        cut = new
    return cut
