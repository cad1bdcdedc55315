"""Noise_XX_25519_ChaChaPoly_BLAKE2b, sans-IO: the Noise Protocol Framework, revision 34.

Theory of operation
-------------------
This module is the Noise spec's section 5 written out in Python, for the one
protocol p2pblog speaks, and nothing else:

* `CipherState` (spec 5.1) holds a 32-byte key ``k`` and a 64-bit counter
  ``n``.  ``ChaChaPoly`` is the IETF ChaCha20-Poly1305 AEAD (RFC 8439) with
  the 96-bit nonce ``00 00 00 00 || n as 8 bytes little-endian`` (spec 12.3).
  Until a key is set it passes plaintext through, as the spec says.
* `SymmetricState` (spec 5.2) holds the chaining key ``ck`` and the handshake
  hash ``h``.  ``HASH`` is BLAKE2b with 64-byte output (HASHLEN = 64,
  BLOCKLEN = 128), ``HMAC`` is RFC 2104 over it, and ``HKDF`` is the spec's
  two-output construction (section 4.3), not RFC 5869's.
* `HandshakeState` (spec 5.3) walks the XX message pattern (spec 7.5)::

      -> e
      <- e, ee, s, es
      -> s, se

  The pattern is data (`XX`), one tuple of tokens per message; the initiator
  writes the even-numbered messages and reads the odd ones.  After the third
  message both sides call `HandshakeState.split` (spec 5.2 ``Split()``) and
  get two `CipherState` objects: the first encrypts initiator -> responder,
  the second responder -> initiator.

Nothing here does I/O or reads a clock.  Randomness is injected: the only
random values are the ephemeral (and, if not given, static) X25519 private
keys, drawn from a ``random_bytes(n) -> bytes`` callable that the caller must
pass; there is no default, so the module never reaches for a global source.
The daemon passes the OS's CSPRNG (``os.urandom``), the simulator a
seeded ``random.Random().randbytes``, and tests pass fixed keys so the
cacophony vectors in ``tests/vectors`` replay byte for byte.

Errors: a peer's message that is short, fails to authenticate, or carries a
low-order X25519 point raises `NoiseError` (a `ValueError`) and nothing else.
After a failed `HandshakeState.read_message` the handshake is dead (the spec
says to abandon it); using it again, writing out of turn, or writing a
message over 65535 bytes is our own misuse and raises
`identity.errors.LocalProtocolError`.

Why not the ``noiseprotocol`` package: the whole protocol is ~250 lines over
primitives we already depend on, it is small enough to audit against the spec
line by line, it is pinned by the official test vectors, and it keeps the
dependency list unchanged.  The primitives all come from libsodium through
PyNaCl (already required for Ed25519): X25519 is ``crypto_scalarmult``, the
AEAD is ``crypto_aead_chacha20poly1305_ietf`` (the same RFC 8439 construction
``cryptography``'s ``ChaCha20Poly1305`` implements, so ``cryptography`` is
not needed either); BLAKE2b and HMAC come from the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import nacl.bindings
import nacl.exceptions

from identity.compile_hints import mypyc_attr
from identity.errors import LocalProtocolError

PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
#: X25519 public key and shared secret length (spec 12.1).
DHLEN: Final = 32
#: BLAKE2b output (spec 12.5).
HASHLEN: Final = 64
#: Poly1305 tag appended to every ciphertext once a key is set.
TAGLEN: Final = 16
KEYLEN: Final = 32
#: Every Noise message, handshake or transport, is at most this long (spec 3).
MAX_MESSAGE_BYTES: Final = 65535
#: The counter value 2**64 - 1 is reserved (spec 5.1): a CipherState at it is spent.
MAX_NONCE: Final = 2**64 - 1

#: ``random_bytes(n)`` returns n random bytes (the driver's: ``os.urandom``,
#: ``random.Random(seed).randbytes``, ...).
RandomBytes = Callable[[int], bytes]
#: Makes the transport-phase `CipherState` of a 32-byte key that `split` derives.  The
#: default is `CipherState` itself; the simulator passes a cheaper stand-in of its own
#: (`simulations.fast.NullCipher`), which nothing outside ``simulations`` can reach.
CipherFactory = Callable[[bytes], "CipherState"]
Token = Literal["e", "s", "ee", "es", "se"]

#: The XX pattern (spec 7.5): the tokens of each message, in order.
XX: Final[tuple[tuple[Token, ...], ...]] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


class NoiseError(ValueError):
    """A peer's Noise message is malformed or does not authenticate."""


# --------------------------------------------------------------------------- primitives


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # hmac with BLAKE2b uses its 128-byte block, as spec 4.3 requires.
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Spec 4.3 ``HKDF(ck, ikm, 2)``: two HASHLEN-byte outputs."""
    temp_key = _hmac(chaining_key, input_key_material)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    return output1, output2


def x25519(private: bytes, public: bytes) -> bytes:
    """Spec 4.1 ``DH``; a low-order peer point (all-zero result) raises `NoiseError`."""
    if len(public) != DHLEN:
        raise NoiseError("an X25519 public key is 32 bytes")
    try:
        shared: bytes = nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.CryptoError:
        # libsodium refuses to return the all-zero output of a low-order point
        # (spec 12.1 allows rejecting it); an honest peer never sends one.
        raise NoiseError("X25519 with a low-order public key") from None
    return shared


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair; the private half stays out of ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != DHLEN:
            raise LocalProtocolError("an X25519 private key is 32 bytes")
        public: bytes = nacl.bindings.crypto_scalarmult_base(private)
        return cls(bytes(private), public)

    @classmethod
    def generate(cls, random_bytes: RandomBytes) -> KeyPair:
        """Spec 4.1 ``GENERATE_KEYPAIR`` (X25519 clamps any 32 bytes into a scalar)."""
        return cls.from_private(random_bytes(DHLEN))


# --------------------------------------------------------------------------- CipherState


def _nonce(n: int) -> bytes:
    # Spec 12.3: 32 bits of zeros followed by the little-endian 64-bit counter.
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's null cipher (issue 17)
class CipherState:
    """Spec 5.1: an AEAD key (or none yet) and its message counter."""

    __slots__ = ("_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEYLEN:
            raise LocalProtocolError("a cipher key is 32 bytes")
        self._key = key
        self.n = 0

    def has_key(self) -> bool:
        return self._key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and count; raise `NoiseError` once the counter is spent."""
        if self._key is None:
            return bytes(plaintext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        out: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(plaintext), bytes(ad), _nonce(self.n), self._key
        )
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and count; on failure raise `NoiseError` and leave ``n`` as it was."""
        if self._key is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        if len(ciphertext) < TAGLEN:
            raise NoiseError("ciphertext shorter than its tag")
        try:
            out: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                bytes(ciphertext), bytes(ad), _nonce(self.n), self._key
            )
        except nacl.exceptions.CryptoError:
            raise NoiseError("ciphertext does not authenticate") from None
        self.n += 1
        return out


# --------------------------------------------------------------------------- SymmetricState


class SymmetricState:
    """Spec 5.2: chaining key, handshake hash and the handshake's CipherState."""

    __slots__ = ("_cipher", "_ck", "_h")

    def __init__(self, protocol_name: bytes) -> None:
        # Spec 5.2: a name that fits is zero-padded to HASHLEN, a longer one hashed.
        h = protocol_name.ljust(HASHLEN, b"\x00") if len(protocol_name) <= HASHLEN else _hash(protocol_name)
        self._h = h
        self._ck = h
        self._cipher = CipherState()

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    def has_key(self) -> bool:
        return self._cipher.has_key()

    def mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = hkdf(self._ck, input_key_material)
        # Spec 5.2: HASHLEN is 64, so truncate temp_k to the 32-byte cipher key.
        self._cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self, cipher: CipherFactory | None = None) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = hkdf(self._ck, b"")
        make = CipherState if cipher is None else cipher
        return make(temp_k1[:KEYLEN]), make(temp_k2[:KEYLEN])


# --------------------------------------------------------------------------- HandshakeState


class HandshakeState:
    """Spec 5.3 for the XX pattern: write and read the three handshake messages.

    ``static`` is our long-term X25519 key pair (for p2pblog it is per process
    or per connection; the Ed25519 identity is bound to it one layer up).
    ``ephemeral`` is for test vectors only; normally it is drawn from
    ``random_bytes`` (required: the caller chooses the source) when the ``e``
    token is written.
    """

    __slots__ = (
        "_e",
        "_failed",
        "_index",
        "_initiator",
        "_random_bytes",
        "_re",
        "_rs",
        "_s",
        "_symmetric",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        static: KeyPair,
        ephemeral: KeyPair | None = None,
        random_bytes: RandomBytes,
    ) -> None:
        self._initiator = initiator
        self._symmetric = SymmetricState(PROTOCOL_NAME)
        self._symmetric.mix_hash(prologue)
        self._s = static
        self._e = ephemeral
        self._random_bytes = random_bytes
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._index = 0
        self._failed = False

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        return self._index == len(XX)

    @property
    def message_index(self) -> int:
        """How many handshake messages have been written or read so far."""
        return self._index

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static X25519 public key, once its ``s`` token is read."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        return self._symmetric.handshake_hash

    def is_our_turn(self) -> bool:
        return not self.complete and (self._index % 2 == 0) == self._initiator

    def _check_usable(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake failed earlier and must be abandoned")
        if self.complete:
            raise LocalProtocolError("the handshake is already complete")
        if self.is_our_turn() != writing:
            raise LocalProtocolError(f"it is not our turn to {'write' if writing else 'read'}")

    def _dh(self, token: Token) -> bytes:
        # Spec 5.3: "es" is DH(e, rs) for the initiator and DH(s, re) for the
        # responder, "se" the mirror image, so both ends compute the same value.
        # XX orders its tokens so that every key used here is already known.
        if token == "ee":
            local, remote = self._e, self._re
        elif (token == "es") == self._initiator:
            local, remote = self._e, self._rs
        else:
            local, remote = self._s, self._re
        assert local is not None and remote is not None
        return x25519(local.private, remote)

    def write_message(self, payload: bytes) -> bytes:
        """Spec 5.3 ``WriteMessage``: the next handshake message carrying ``payload``.

        Raises `NoiseError` if a DH meets the peer's low-order key (the
        responder's first write uses the initiator's unauthenticated ``e``).
        """
        self._check_usable(writing=True)
        try:
            out = self._write(payload)
        except NoiseError:
            # A DH with the peer's low-order ephemeral key, met while writing.
            self._failed = True
            raise
        if len(out) > MAX_MESSAGE_BYTES:
            self._failed = True
            raise LocalProtocolError(f"handshake message of {len(out)} bytes over {MAX_MESSAGE_BYTES}")
        self._index += 1
        return bytes(out)

    def _write(self, payload: bytes) -> bytearray:
        out = bytearray()
        for token in XX[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = KeyPair.generate(self._random_bytes)
                out += self._e.public
                self._symmetric.mix_hash(self._e.public)
            elif token == "s":
                out += self._symmetric.encrypt_and_hash(self._s.public)
            else:
                self._symmetric.mix_key(self._dh(token))
        out += self._symmetric.encrypt_and_hash(payload)
        return out

    def read_message(self, message: bytes) -> bytes:
        """Spec 5.3 ``ReadMessage``: check the peer's message, return its payload.

        Raises `NoiseError` for a short or unauthentic message; the handshake
        is then abandoned.
        """
        self._check_usable(writing=False)
        try:
            payload = self._read(memoryview(message))
        except NoiseError:
            self._failed = True
            raise
        self._index += 1
        return payload

    def _read(self, message: memoryview) -> bytes:
        if len(message) > MAX_MESSAGE_BYTES:
            raise NoiseError(f"handshake message of {len(message)} bytes over {MAX_MESSAGE_BYTES}")
        pos = 0
        for token in XX[self._index]:
            if token == "e":
                if len(message) - pos < DHLEN:
                    raise NoiseError("handshake message too short for an ephemeral key")
                self._re = bytes(message[pos : pos + DHLEN])
                pos += DHLEN
                self._symmetric.mix_hash(self._re)
            elif token == "s":
                size = DHLEN + TAGLEN if self._symmetric.has_key() else DHLEN
                if len(message) - pos < size:
                    raise NoiseError("handshake message too short for a static key")
                self._rs = self._symmetric.decrypt_and_hash(bytes(message[pos : pos + size]))
                pos += size
            else:
                self._symmetric.mix_key(self._dh(token))
        return self._symmetric.decrypt_and_hash(bytes(message[pos:]))

    def split(self, cipher: CipherFactory | None = None) -> tuple[CipherState, CipherState]:
        """Spec 5.2 ``Split()``: (initiator -> responder, responder -> initiator).

        ``cipher`` makes the two transport ciphers from their keys (default: `CipherState`)."""
        if not self.complete or self._failed:
            raise LocalProtocolError("split() before the handshake completed")
        return self._symmetric.split(cipher)
