"""Hashcash-style proof-of-work stamps: a nonce that makes a hash start with zero bits.

Theory of operation
-------------------
A stamp binds CPU work to one *subject* (the bytes it is about) in one
*domain* (what the stamp is for)::

    digest = BLAKE2b-256(domain || subject || nonce)      (digest_size 32, no key)
    work   = number of leading zero bits of digest        (0..256)

The domain strings end in a NUL byte and no domain is a prefix of another, so
a stamp made for one purpose is never valid for another.  The subject fixes
everything the stamp vouches for: a name claim's (signer, claimed, name), a
mention notice's (recipient, entry id).  Finding a nonce with ``b`` bits
takes ``2**b`` hashes on average (hashcash, Back 2002); checking it takes one.

`solve` tries the counters ``start, start + 1, ...`` as `NONCE_BYTES`
big-endian bytes and returns the first that reaches the target, so it is
deterministic: the same inputs always give the same nonce, and a search cut
short can go on from where it stopped (``start``).  It hashes the fixed
prefix once and copies the hash state per try (0.35-0.45 us per try in
CPython, so 20 bits take about half a second of one core).

`work_bits` is meant for peers' bytes: a nonce that is not bytes, or longer
than 16 bytes, has no work (0) rather than raising.  Nothing here reads a
clock or a global RNG, so the sans-IO cores may call it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Final

#: Domain of a name claim's stamp (`identity.records`).
NAME_DOMAIN: Final = b"p2pblog/name-claim/v1\x00"
#: Domain of a mention notice's stamp.
NOTICE_DOMAIN: Final = b"p2pblog/mention/v1\x00"
#: Length of the nonces `solve` produces.
NONCE_BYTES: Final = 8
#: Longest nonce `work_bits` accepts (BLAKE2b's salt length, for symmetry; any
#: longer nonce is worthless rather than an error).
MAX_NONCE_BYTES: Final = 16
#: Most bits `solve` can be asked for: a 64-bit counter space.
MAX_SOLVE_BITS: Final = 64
#: Tries between two calls of `solve`'s ``progress``.
PROGRESS_EVERY: Final = 2**16

_DIGEST_BYTES: Final = 32
_SIGNER_BYTES: Final = 32
_ENTRY_ID_BYTES: Final = 32


def leading_zero_bits(digest: bytes) -> int:
    """How many bits at the start of ``digest`` are zero (8 * len for all-zero bytes)."""
    value = int.from_bytes(digest, "big")
    return 8 * len(digest) - value.bit_length()


def work_bits(domain: bytes, subject: bytes, nonce: bytes) -> int:
    """The work a stamp carries: leading zero bits of BLAKE2b-256(domain || subject || nonce).

    Total on a peer's ``nonce``: one that is not bytes or is longer than
    `MAX_NONCE_BYTES` carries 0 bits."""
    if not isinstance(nonce, bytes) or len(nonce) > MAX_NONCE_BYTES:
        return 0
    return leading_zero_bits(hashlib.blake2b(domain + subject + nonce, digest_size=_DIGEST_BYTES).digest())


def solve(
    domain: bytes,
    subject: bytes,
    bits: int,
    *,
    progress: Callable[[int], None] | None = None,
    start: int = 0,
) -> bytes:
    """The smallest counter >= ``start`` (as `NONCE_BYTES` big-endian bytes) whose stamp
    has at least ``bits`` of work.

    ``progress(tries)`` is called after every `PROGRESS_EVERY` tries (e.g. to
    show a spinner or to check for cancellation, by raising).  Raises
    `ValueError` for ``bits`` outside 0..64 or ``start`` outside the counter
    space, or if the counter space runs out (for 64 bits it may)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= MAX_SOLVE_BITS:
        raise ValueError(f"a stamp asks for 0..{MAX_SOLVE_BITS} bits, not {bits!r}")
    end = 2 ** (8 * NONCE_BYTES)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < end:
        raise ValueError(f"start must be a counter in 0..2**{8 * NONCE_BYTES} - 1")
    if bits == 0:
        return start.to_bytes(NONCE_BYTES, "big")
    # work >= bits  <=>  digest < 2**(256 - bits), and for equal-length
    # big-endian strings bytes order is integer order.
    limit = (1 << (8 * _DIGEST_BYTES - bits)).to_bytes(_DIGEST_BYTES, "big")
    copy = hashlib.blake2b(domain + subject, digest_size=_DIGEST_BYTES).copy
    pack = struct.Struct(">Q").pack  # NONCE_BYTES (8) big-endian
    for chunk in range(start, end, PROGRESS_EVERY):
        for counter in range(chunk, min(chunk + PROGRESS_EVERY, end)):
            nonce = pack(counter)
            h = copy()
            h.update(nonce)
            if h.digest() < limit:
                return nonce
        if progress is not None:
            progress(min(chunk + PROGRESS_EVERY, end) - start)
    raise ValueError(f"no nonce from {start} on reaches {bits} bits")


def name_subject(signer: bytes, name: str, claimed: int) -> bytes:
    """What a name claim's stamp covers: signer (32) || claimed (8, big-endian) || name (UTF-8)."""
    if len(signer) != _SIGNER_BYTES:
        raise ValueError(f"a signer is a {_SIGNER_BYTES}-byte key")
    if not 0 <= claimed < 2**64:
        raise ValueError("claimed is an unsigned 64-bit integer")
    return signer + claimed.to_bytes(8, "big") + name.encode()


def notice_subject(recipient: bytes, entry_id: bytes) -> bytes:
    """What a mention notice's stamp covers: recipient (32) || entry id (32)."""
    if len(recipient) != _SIGNER_BYTES or len(entry_id) != _ENTRY_ID_BYTES:
        raise ValueError("a notice names a 32-byte recipient and a 32-byte entry id")
    return recipient + entry_id
