"""Ed25519 identities (identity.keys): signing and verification through our wrapper.

Checks Identity, Identity.sign / signature, verify and verify_detached against
the RFC 8032 section 7.1 vectors in tests/vectors/rfc8032.json, then that a
tampered message, a tampered signature, a wrong key, a non-canonical or short
input is refused with SignatureError (and only SignatureError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import Identity, SignatureError, keys, verify, verify_detached
from identity.keys import PUBLIC_KEY_BYTES, SEED_BYTES, SIGNATURE_BYTES

VECTORS_PATH = Path(__file__).parent / "vectors" / "rfc8032.json"
RFC8032: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())

# RFC 8032 section 5.1: the order of the base point.
GROUP_ORDER_L = 2**252 + 27742317777372353535851937790883648493


class Vector:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.name: str = raw["name"]
        self.seed = bytes.fromhex(raw["secret_key"])
        self.public_key = bytes.fromhex(raw["public_key"])
        self.message = bytes.fromhex(raw["message"])
        self.signature = bytes.fromhex(raw["signature"])


VECTORS = [Vector(raw) for raw in RFC8032]
by_name = pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)

seeds = st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES)
messages = st.binary(max_size=512)


def test_vector_file_holds_all_of_rfc8032_section_7_1() -> None:
    assert [v.name for v in VECTORS] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    assert [len(v.message) for v in VECTORS] == [0, 1, 2, 1023, 64]
    for v in VECTORS:
        assert len(v.seed) == SEED_BYTES
        assert len(v.public_key) == PUBLIC_KEY_BYTES
        assert len(v.signature) == SIGNATURE_BYTES


# --- RFC 8032 known answers -----------------------------------------------------------


@by_name
def test_public_key_from_seed(vector: Vector) -> None:
    ident = Identity(vector.seed)
    assert ident.public_key == vector.public_key
    assert ident.seed == vector.seed


@by_name
def test_sign_matches_vector(vector: Vector) -> None:
    ident = Identity(vector.seed)
    assert ident.sign(vector.message) == vector.signature + vector.message
    assert ident.signature(vector.message) == vector.signature


@by_name
def test_verify_accepts_vector(vector: Vector) -> None:
    assert verify(vector.public_key, vector.signature + vector.message) == vector.message
    verify_detached(vector.public_key, vector.message, vector.signature)  # raises if wrong


# --- tampering ------------------------------------------------------------------------


@by_name
def test_tampered_message_is_rejected(vector: Vector) -> None:
    with pytest.raises(SignatureError):
        verify(vector.public_key, vector.signature + vector.message + b"\x00")
    with pytest.raises(SignatureError):
        verify_detached(vector.public_key, vector.message + b"\x00", vector.signature)
    for i in range(min(len(vector.message), 64)):
        tampered = bytearray(vector.message)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureError):
            verify(vector.public_key, vector.signature + bytes(tampered))
    if vector.message:
        with pytest.raises(SignatureError):
            verify(vector.public_key, vector.signature + vector.message[:-1])


@by_name
def test_every_tampered_signature_byte_is_rejected(vector: Vector) -> None:
    for i in range(SIGNATURE_BYTES):
        for mask in (0x01, 0x80):
            sig = bytearray(vector.signature)
            sig[i] ^= mask
            with pytest.raises(SignatureError):
                verify(vector.public_key, bytes(sig) + vector.message)
            with pytest.raises(SignatureError):
                verify_detached(vector.public_key, vector.message, bytes(sig))


@by_name
def test_wrong_key_is_rejected(vector: Vector) -> None:
    for other in VECTORS:
        if other is not vector:
            with pytest.raises(SignatureError):
                verify(other.public_key, vector.signature + vector.message)
    for i in range(PUBLIC_KEY_BYTES):
        key = bytearray(vector.public_key)
        key[i] ^= 0x04
        with pytest.raises(SignatureError):
            verify(bytes(key), vector.signature + vector.message)


@by_name
def test_non_canonical_signature_is_rejected(vector: Vector) -> None:
    # S + L verifies under the bare group equation; RFC 8032 section 5.1.7 (and
    # libsodium) require S < L, so one signature has only one encoding.
    s = int.from_bytes(vector.signature[32:], "little")
    assert s < GROUP_ORDER_L
    malleated = vector.signature[:32] + (s + GROUP_ORDER_L).to_bytes(32, "little")
    with pytest.raises(SignatureError):
        verify(vector.public_key, malleated + vector.message)


@pytest.mark.parametrize(
    "key",
    [bytes(32), b"\x01" + bytes(31), b"\xff" * 32, b"\xec" + b"\xff" * 30 + b"\x7f"],
    ids=["zero", "identity-point", "ff", "p-1"],
)
def test_degenerate_public_key_is_rejected(key: bytes) -> None:
    for signed in (bytes(64), bytes(64) + b"msg", VECTORS[0].signature):
        with pytest.raises(SignatureError):
            verify(key, signed)


# --- malformed sizes ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32, 63])
def test_short_signed_input_is_rejected(size: int) -> None:
    with pytest.raises(SignatureError):
        verify(VECTORS[0].public_key, VECTORS[0].signature[:size])


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_wrong_size_public_key_is_rejected(size: int) -> None:
    v = VECTORS[1]
    key = (v.public_key * 2)[:size]
    with pytest.raises(SignatureError):
        verify(key, v.signature + v.message)
    with pytest.raises(SignatureError):
        verify_detached(key, v.message, v.signature)


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_detached_signature_must_be_64_bytes(size: int) -> None:
    v = VECTORS[1]
    signature = (v.signature + v.signature)[:size]
    with pytest.raises(SignatureError):
        verify_detached(v.public_key, v.message, signature)


def test_detached_signature_cannot_smuggle_message_bytes() -> None:
    # verify_detached concatenates; a 65-byte "signature" that ends with the
    # message's first byte must not verify against the rest of the message.
    v = VECTORS[2]  # message af82
    with pytest.raises(SignatureError):
        verify_detached(v.public_key, v.message[1:], v.signature + v.message[:1])


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_identity_needs_32_byte_seed(size: int) -> None:
    with pytest.raises(ValueError):
        Identity(bytes(size))


# --- properties -----------------------------------------------------------------------


@settings(max_examples=50)
@given(seed=seeds, message=messages)
def test_sign_verify_round_trip(seed: bytes, message: bytes) -> None:
    ident = Identity(seed)
    signed = ident.sign(message)
    assert len(signed) == SIGNATURE_BYTES + len(message)
    assert signed[SIGNATURE_BYTES:] == message
    assert signed[:SIGNATURE_BYTES] == ident.signature(message)
    assert ident.sign(message) == signed  # Ed25519 is deterministic
    assert verify(ident.public_key, signed) == message
    verify_detached(ident.public_key, message, ident.signature(message))
    assert Identity(ident.seed).public_key == ident.public_key


@settings(max_examples=50)
@given(seed=seeds, message=messages, data=st.data())
def test_any_flipped_bit_is_rejected(seed: bytes, message: bytes, data: st.DataObject) -> None:
    ident = Identity(seed)
    signed = bytearray(ident.sign(message))
    bit = data.draw(st.integers(0, len(signed) * 8 - 1), label="bit")
    signed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        verify(ident.public_key, bytes(signed))


@settings(max_examples=25)
@given(a=seeds, b=seeds, message=messages)
def test_signature_does_not_verify_under_another_key(a: bytes, b: bytes, message: bytes) -> None:
    ia, ib = Identity(a), Identity(b)
    if ia.public_key == ib.public_key:
        return
    with pytest.raises(SignatureError):
        verify(ib.public_key, ia.sign(message))


@settings(max_examples=100)
@given(key=st.binary(max_size=40), signed=st.binary(max_size=200))
def test_verify_random_bytes_raises_only_signature_error(key: bytes, signed: bytes) -> None:
    with pytest.raises(SignatureError):
        verify(key, signed)


def test_generate_makes_distinct_working_identities() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.public_key != b.public_key
    assert len(a.seed) == SEED_BYTES
    assert verify(a.public_key, a.sign(b"hello")) == b"hello"
    with pytest.raises(SignatureError):
        verify(b.public_key, a.sign(b"hello"))


def test_verification_cache_never_accepts_what_does_not_verify() -> None:
    """The cache of successful checks is keyed by key and bytes: a cached success
    does not make a tampered copy, or the same bytes under another key, pass."""
    from identity import keys

    alice, bob = Identity.generate(), Identity.generate()
    signed = alice.sign(b"hello")
    assert keys.verify(alice.public_key, signed) == b"hello"
    assert keys.verify(alice.public_key, signed) == b"hello"  # a cache hit
    with pytest.raises(SignatureError):
        keys.verify(bob.public_key, signed)
    tampered = signed[:-1] + bytes([signed[-1] ^ 1])
    with pytest.raises(SignatureError):
        keys.verify(alice.public_key, tampered)
    keys.set_verify_cache_size(0)
    try:
        assert keys.verify(alice.public_key, signed) == b"hello"
    finally:
        keys.set_verify_cache_size(4096)


@settings(max_examples=50)
@given(seeds, messages)
def test_sign_gives_the_bytes_of_pynacls_signing_key(seed: bytes, message: bytes) -> None:
    """Identity signs through the lower-level crypto_sign with the 64-byte secret key:
    the same bytes as PyNaCl's SigningKey, which it used before."""
    import nacl.signing

    ident = Identity(seed)
    expected = nacl.signing.SigningKey(seed).sign(message)
    assert ident.sign(message) == bytes(expected)
    assert ident.signature(message) == expected.signature
    assert ident.seed == seed
    assert ident.public_key == bytes(nacl.signing.SigningKey(seed).verify_key)


@settings(max_examples=30)
@given(seeds, messages)
def test_the_direct_libsodium_call_signs_as_pynacls_binding(seed: bytes, message: bytes) -> None:
    """`keys._crypto_sign` calls libsodium through PyNaCl's cffi module; the public binding,
    its fallback, gives the same bytes."""
    ident = Identity(seed)
    assert keys._crypto_sign(message, ident._secret_key) == keys._sign_through_pynacl(
        message, ident._secret_key
    )


def test_the_direct_libsodium_call_refuses_a_short_secret_key() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        keys._crypto_sign(b"message", bytes(32))
