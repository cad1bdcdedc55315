"""Ed25519 identities: generation, signing and verification (PyNaCl / libsodium).

An `Identity` holds a signing key.  Everything that signs in p2pblog goes
through `Identity.sign`, and everything that verifies goes through `verify`,
so that the RFC 8032 vectors in ``tests/vectors`` test exactly the wrapper the
rest of the code uses.

Signed bytes use libsodium's combined form: the 64-byte signature followed by
the message (``crypto_sign``).  `verify` returns the message on success.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from typing import cast

import nacl.bindings
import nacl.exceptions
import nacl.signing

from identity.handle import encode_handle, fingerprint

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32


def _sign_through_pynacl(message: bytes, secret_key: bytes) -> bytes:
    return nacl.bindings.crypto_sign(message, secret_key)


try:
    # libsodium's crypto_sign through the cffi module PyNaCl builds, without the
    # wrapper `nacl.bindings.crypto_sign` puts around it (a second allocation for the
    # length, a check that raises): 0.5 us of a 15.7 us signature, about 2% of an
    # append.  `nacl._sodium` is PyNaCl's own extension, not its public API: if a
    # later PyNaCl moves it, the public binding signs instead (same bytes; tests).
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _new_buffer, _libsodium_sign, _NULL, _buffer = _ffi.new, _lib.crypto_sign, _ffi.NULL, _ffi.buffer

    def _crypto_sign(message: bytes, secret_key: bytes) -> bytes:
        """signature || message, as `nacl.bindings.crypto_sign` returns it."""
        if len(secret_key) != 64:
            raise ValueError("an Ed25519 secret key is 64 bytes")
        signed = _new_buffer("unsigned char[]", len(message) + SIGNATURE_BYTES)
        if _libsodium_sign(signed, _NULL, message, len(message), secret_key) != 0:
            raise RuntimeError("libsodium crypto_sign failed")
        return cast(bytes, _buffer(signed)[:])

except (ImportError, AttributeError):  # pragma: no cover - a PyNaCl without nacl._sodium
    _crypto_sign = _sign_through_pynacl


class SignatureError(ValueError):
    """A signature does not verify against the claimed key."""


class Identity:
    """An Ed25519 keypair: the public key is the feed id."""

    __slots__ = ("_secret_key", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        self._seed = bytes(seed)
        # libsodium's 64-byte secret key (seed || public key), computed once:
        # signing through `nacl.bindings.crypto_sign` with it skips the
        # `SigningKey` / `SignedMessage` wrappers, a third of a raw sign's cost
        # on the append path.  Same bytes out (RFC 8032 vectors in tests/vectors).
        public_key, self._secret_key = nacl.bindings.crypto_sign_seed_keypair(self._seed)
        self.public_key: bytes = public_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def handle(self) -> str:
        return encode_handle(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Return signature || message (libsodium combined form)."""
        return _crypto_sign(message, self._secret_key)

    def signature(self, message: bytes) -> bytes:
        """Return the detached 64-byte signature of message."""
        return _crypto_sign(message, self._secret_key)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        return f"Identity({self.handle})"


#: Successful verifications remembered (by a BLAKE2b digest of key and signed
#: bytes), so bytes checked before are not checked again: a DHT record is read
#: and re-validated many times, and the simulator verifies one entry at every
#: simulated follower.  Only successes are cached; the function stays pure.
VERIFY_CACHE_SIZE: int = 4096
_verified: OrderedDict[bytes, None] = OrderedDict()


def set_verify_cache_size(size: int) -> None:
    """Resize the cache of successful verifications (0 disables it)."""
    global VERIFY_CACHE_SIZE
    VERIFY_CACHE_SIZE = max(0, size)
    while len(_verified) > VERIFY_CACHE_SIZE:
        _verified.popitem(last=False)


def verify(public_key: bytes, signed: bytes, *, cache: bool = True) -> bytes:
    """Check signature || message against public_key; return the message.

    Raises `SignatureError` for a bad signature, a malformed key or a short
    input.  libsodium rejects non-canonical signatures and small-order keys.
    ``cache=False`` neither reads nor fills the cache of successes: for bulk
    work (importing a feed) whose bytes are each seen once, where hashing and
    remembering them is pure cost and would evict what the cache is for.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signed) < SIGNATURE_BYTES:
        raise SignatureError("malformed key or signature")
    if not cache:
        try:
            return nacl.bindings.crypto_sign_open(signed, public_key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise SignatureError("signature does not verify") from exc
    digest = hashlib.blake2b(signed, digest_size=32, key=public_key).digest()
    if digest in _verified:
        # Worker threads verify too (p2pblog.verify): another thread may have
        # evicted the digest since the test above; each call below is atomic.
        # try/except, not contextlib.suppress: a hit is the common case, and this costs it less.
        try:  # noqa: SIM105
            _verified.move_to_end(digest)
        except KeyError:
            pass
        return bytes(signed[SIGNATURE_BYTES:])
    try:
        message = nacl.bindings.crypto_sign_open(signed, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise SignatureError("signature does not verify") from exc
    if VERIFY_CACHE_SIZE:
        _verified[digest] = None
        if len(_verified) > VERIFY_CACHE_SIZE:
            with contextlib.suppress(KeyError):
                _verified.popitem(last=False)
    return message


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached signature; raise `SignatureError` if it is wrong."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError("a signature is 64 bytes")
    verify(public_key, signature + message)
