"""Sealed direct messages: encrypted to the recipient's key, signed by the sender inside.

Theory of operation
-------------------
A direct message is *signed, then sealed*:

1. The sender signs ``DM_DOMAIN || body`` with its Ed25519 key, where
   ``body`` is the msgpack array ``[sender, recipient, timestamp, text]``
   (two 32-byte keys, integer milliseconds, at most `MAX_DM_CHARS` code
   points).  Naming the recipient inside the signature stops a recipient from
   re-sealing a message it received to a third party as if it had been sent
   to them.
2. ``[body, signature]`` (msgpack) is sealed to the recipient with libsodium's
   ``crypto_box_seal``: an ephemeral X25519 key, the recipient's Ed25519 key
   converted to X25519 (``crypto_sign_ed25519_pk_to_curve25519``), and
   XSalsa20-Poly1305.  The sealed bytes reveal neither the text nor the
   sender: only the recipient's secret key opens them, and the sender's key
   is inside.

What a relay or a holder sees is the recipient (the frame names it so it
can be delivered), the size, and the time it passed by.  The message id is
BLAKE2b-256 of the sealed bytes, so acknowledgements and duplicates refer to
it without opening anything.

`seal` makes sealed bytes; `open_sealed` opens and checks them, raising
`SealedError` for anything that is not a well-formed message to us signed by
the key it names.  Both are pure functions of their inputs: `seal` takes the
32-byte seed of its ephemeral key from the caller (a CSPRNG in the daemon and
the CLI, the seeded source in the simulator) and builds exactly libsodium's
sealed box (``epk || crypto_box(m, nonce = BLAKE2b-192(epk || pk), pk, esk)``),
so ``crypto_box_seal_open`` opens it.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import nacl.bindings
import nacl.exceptions

from identity.keys import SIGNATURE_BYTES, Identity, SignatureError, verify_detached
from identity.limits import MAX_DM_CHARS, MAX_SEALED_BYTES, MAX_TIMESTAMP_MS

#: Signature domain of direct messages (never valid as an entry or record signature).
DM_DOMAIN: Final = b"p2pblog/dm/v1\x00"
_KEY_BYTES: Final = 32
_SEAL_OVERHEAD: Final = 48


class SealedError(ValueError):
    """Sealed bytes that do not open to a well-formed message signed by its sender."""


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """An opened direct message."""

    sender: bytes
    recipient: bytes
    timestamp: int
    text: str


def dm_id(sealed: bytes) -> bytes:
    """The id of a sealed message: BLAKE2b-256 of its bytes."""
    return hashlib.blake2b(sealed, digest_size=32).digest()


def check_text(text: str) -> str:
    """The text as sent (NFC), or ValueError if it is empty or too long."""
    if not isinstance(text, str):
        raise ValueError("a message text is a string")
    text = unicodedata.normalize("NFC", text)
    if not text.strip():
        raise ValueError("a message needs some text")
    if len(text) > MAX_DM_CHARS:
        raise ValueError(f"a message is at most {MAX_DM_CHARS} characters, this one is {len(text)}")
    return text


def seal(identity: Identity, recipient: bytes, timestamp: int, text: str, ephemeral_seed: bytes) -> bytes:
    """Sign and seal ``text`` from ``identity`` to ``recipient``, with an ephemeral key made
    from ``ephemeral_seed`` (32 fresh random bytes: never reuse one).  ValueError for bad input."""
    if len(ephemeral_seed) != _KEY_BYTES:
        raise ValueError("an ephemeral seed is 32 bytes")
    if len(recipient) != _KEY_BYTES:
        raise ValueError("a recipient is a 32-byte public key")
    if not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise ValueError("timestamp out of range")
    text = check_text(text)
    body: bytes = msgpack.packb([identity.public_key, recipient, timestamp, text])
    inner: bytes = msgpack.packb([body, identity.signature(DM_DOMAIN + body)])
    try:
        box_key = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(recipient)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError):
        raise ValueError("the recipient is not a valid Ed25519 key") from None
    epk, esk = nacl.bindings.crypto_box_seed_keypair(ephemeral_seed)
    nonce = hashlib.blake2b(epk + box_key, digest_size=nacl.bindings.crypto_box_NONCEBYTES).digest()
    sealed: bytes = epk + nacl.bindings.crypto_box(inner, nonce, box_key, esk)
    return sealed


def _secret_box_keys(identity: Identity) -> tuple[bytes, bytes]:
    secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(identity.seed + identity.public_key)
    public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(identity.public_key)
    return public, secret


def open_sealed(identity: Identity, sealed: bytes) -> DirectMessage:
    """Open a message sealed to ``identity`` and check its sender's signature."""
    if not isinstance(sealed, bytes) or not _SEAL_OVERHEAD < len(sealed) <= MAX_SEALED_BYTES:
        raise SealedError("not a sealed message (size)")
    public, secret = _secret_box_keys(identity)
    try:
        inner = nacl.bindings.crypto_box_seal_open(sealed, public, secret)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise SealedError("it does not open with our key") from None
    body, signature = _array(inner, 2)
    if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise SealedError("malformed message")
    sender, recipient, timestamp, text = _array(body, 4)
    if not (isinstance(sender, bytes) and len(sender) == _KEY_BYTES):
        raise SealedError("malformed sender")
    if recipient != identity.public_key:
        raise SealedError("sealed to us but addressed to another key")
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise SealedError("malformed timestamp")
    try:
        text = check_text(text)
    except ValueError as exc:
        raise SealedError(str(exc)) from None
    try:
        verify_detached(sender, DM_DOMAIN + body, signature)
    except SignatureError:
        raise SealedError("the sender's signature does not verify") from None
    return DirectMessage(sender, recipient, timestamp, text)


def _array(data: bytes, size: int) -> list[Any]:
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_SEALED_BYTES,
            max_str_len=MAX_SEALED_BYTES,
            max_array_len=8,
            max_map_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError):
        raise SealedError("malformed message") from None
    if not isinstance(obj, list) or len(obj) != size:
        raise SealedError("malformed message")
    return obj
