"""gossip.noise against the cacophony vector for Noise_XX_25519_ChaChaPoly_BLAKE2b, and its edges."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.noise import (
    DHLEN,
    MAX_MESSAGE_BYTES,
    MAX_NONCE,
    PROTOCOL_NAME,
    TAGLEN,
    CipherState,
    HandshakeState,
    KeyPair,
    NoiseError,
    SymmetricState,
)
from identity.errors import LocalProtocolError

VECTOR_PATH = Path(__file__).resolve().parent.parent / "vectors" / "noise_xx_25519_chachapoly_blake2b.json"


def load_vector() -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(VECTOR_PATH.read_text())
    return vector


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def no_randomness(n: int) -> bytes:
    raise AssertionError(f"a test vector fixes every key, yet {n} random bytes were drawn")


def vector_pair(vector: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(
        initiator=True,
        prologue=h(vector["init_prologue"]),
        static=KeyPair.from_private(h(vector["init_static"])),
        ephemeral=KeyPair.from_private(h(vector["init_ephemeral"])),
        random_bytes=no_randomness,
    )
    responder = HandshakeState(
        initiator=False,
        prologue=h(vector["resp_prologue"]),
        static=KeyPair.from_private(h(vector["resp_static"])),
        ephemeral=KeyPair.from_private(h(vector["resp_ephemeral"])),
        random_bytes=no_randomness,
    )
    return initiator, responder


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def handshake(
    initiator: HandshakeState,
    responder: HandshakeState,
    payloads: tuple[bytes, bytes, bytes] = (b"", b"", b""),
) -> list[bytes]:
    messages = []
    for index, payload in enumerate(payloads):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        message = writer.write_message(payload)
        assert reader.read_message(message) == payload
        messages.append(message)
    return messages


def fresh_pair(seed: int = 0) -> tuple[HandshakeState, HandshakeState]:
    rng = seeded(seed)
    initiator = HandshakeState(
        initiator=True, prologue=b"p", static=KeyPair.generate(rng.randbytes), random_bytes=rng.randbytes
    )
    responder = HandshakeState(
        initiator=False, prologue=b"p", static=KeyPair.generate(rng.randbytes), random_bytes=rng.randbytes
    )
    return initiator, responder


# --------------------------------------------------------------------------- the vector


def test_vector_is_the_protocol_we_speak() -> None:
    vector = load_vector()
    assert vector["protocol_name"].encode() == PROTOCOL_NAME
    assert len(vector["messages"]) == 6


def test_handshake_messages_match_the_vector_byte_for_byte() -> None:
    vector = load_vector()
    initiator, responder = vector_pair(vector)
    for index, message in enumerate(vector["messages"][:3]):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert writer.is_our_turn() and not reader.is_our_turn()
        ciphertext = writer.write_message(h(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.read_message(ciphertext) == h(message["payload"])
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]
    assert initiator.remote_static == KeyPair.from_private(h(vector["resp_static"])).public
    assert responder.remote_static == KeyPair.from_private(h(vector["init_static"])).public


def test_transport_messages_match_the_vector_byte_for_byte() -> None:
    vector = load_vector()
    initiator, responder = vector_pair(vector)
    payloads = [h(m["payload"]) for m in vector["messages"][:3]]
    handshake(initiator, responder, (payloads[0], payloads[1], payloads[2]))
    init_send, init_recv = initiator.split()
    resp_recv, resp_send = responder.split()
    # The vector format alternates senders straight on from the handshake, so
    # after XX's three messages the responder speaks first.
    for index, message in enumerate(vector["messages"][3:], start=3):
        sender, receiver = (init_send, resp_recv) if index % 2 == 0 else (resp_send, init_recv)
        ciphertext = sender.encrypt_with_ad(b"", h(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert receiver.decrypt_with_ad(b"", ciphertext) == h(message["payload"])


# --------------------------------------------------------------------------- CipherState


def test_cipher_nonce_is_four_zero_bytes_and_little_endian_counter() -> None:
    key = bytes(range(32))
    cipher = CipherState(key)
    cipher.n = 0x0102030405060708
    out = cipher.encrypt_with_ad(b"ad", b"hello")
    nonce = b"\x00" * 4 + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert out == nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(b"hello", b"ad", nonce, key)
    assert cipher.n == 0x0102030405060709


def test_cipher_without_key_passes_plaintext_through() -> None:
    cipher = CipherState()
    assert not cipher.has_key()
    assert cipher.encrypt_with_ad(b"ad", b"x") == b"x"
    assert cipher.decrypt_with_ad(b"ad", b"x") == b"x"
    assert cipher.n == 0


def test_failed_decrypt_leaves_the_counter_alone() -> None:
    send, recv = CipherState(b"k" * 32), CipherState(b"k" * 32)
    message = send.encrypt_with_ad(b"", b"payload")
    with pytest.raises(NoiseError):
        recv.decrypt_with_ad(b"", message[:-1] + bytes([message[-1] ^ 1]))
    assert recv.n == 0
    assert recv.decrypt_with_ad(b"", message) == b"payload"
    with pytest.raises(NoiseError):  # replay: the counter has moved on
        recv.decrypt_with_ad(b"", message)
    with pytest.raises(NoiseError):
        recv.decrypt_with_ad(b"", b"short")


def test_cipher_refuses_the_reserved_last_nonce() -> None:
    cipher = CipherState(b"k" * 32)
    cipher.n = MAX_NONCE - 1
    cipher.encrypt_with_ad(b"", b"last")
    with pytest.raises(NoiseError, match="exhausted"):
        cipher.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseError, match="exhausted"):
        cipher.decrypt_with_ad(b"", b"\x00" * 32)


def test_cipher_key_must_be_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        CipherState(b"short")


def test_long_protocol_names_are_hashed() -> None:
    assert SymmetricState(b"N" * 64).handshake_hash == b"N" * 64
    assert SymmetricState(b"N" * 65).handshake_hash != (b"N" * 65)[:64]
    assert len(SymmetricState(b"N" * 65).handshake_hash) == 64


# --------------------------------------------------------------------------- HandshakeState


def test_seeded_randomness_replays_exactly() -> None:
    first = handshake(*fresh_pair(7))
    second = handshake(*fresh_pair(7))
    third = handshake(*fresh_pair(8))
    assert first == second
    assert first != third
    assert [len(m) for m in first] == [DHLEN, DHLEN + (DHLEN + TAGLEN) + TAGLEN, (DHLEN + TAGLEN) + TAGLEN]


def test_split_gives_matching_cipher_pairs() -> None:
    initiator, responder = fresh_pair()
    handshake(initiator, responder)
    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"to responder")) == b"to responder"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"to initiator")) == b"to initiator"
    with pytest.raises(NoiseError):  # the two directions use different keys
        i_recv.decrypt_with_ad(b"", CipherState(b"x" * 32).encrypt_with_ad(b"", b""))


def test_prologue_mismatch_fails_the_handshake() -> None:
    rng = seeded(3)
    initiator = HandshakeState(
        initiator=True,
        prologue=b"p2pblog/1",
        static=KeyPair.generate(rng.randbytes),
        random_bytes=rng.randbytes,
    )
    responder = HandshakeState(
        initiator=False,
        prologue=b"p2pblog/2",
        static=KeyPair.generate(rng.randbytes),
        random_bytes=rng.randbytes,
    )
    responder.read_message(initiator.write_message(b""))  # message 1 is not authenticated yet
    with pytest.raises(NoiseError):
        initiator.read_message(responder.write_message(b""))


def test_misuse_raises_local_protocol_error() -> None:
    initiator, responder = fresh_pair()
    with pytest.raises(LocalProtocolError, match="not our turn"):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError, match="not our turn"):
        initiator.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError, match="before the handshake"):
        initiator.split()
    with pytest.raises(LocalProtocolError, match="over 65535"):
        initiator.write_message(b"x" * MAX_MESSAGE_BYTES)
    done_initiator, done_responder = fresh_pair()
    handshake(done_initiator, done_responder)
    with pytest.raises(LocalProtocolError, match="already complete"):
        done_initiator.write_message(b"")
    with pytest.raises(LocalProtocolError):
        KeyPair.from_private(b"short")


def test_a_failed_read_abandons_the_handshake() -> None:
    initiator, responder = fresh_pair()
    responder.read_message(initiator.write_message(b""))
    message2 = responder.write_message(b"")
    with pytest.raises(NoiseError):
        initiator.read_message(message2[:-1] + bytes([message2[-1] ^ 0x80]))
    with pytest.raises(LocalProtocolError, match="abandoned"):
        initiator.read_message(message2)


def test_low_order_ephemeral_key_is_refused() -> None:
    # An all-zero "public key" makes every X25519 output zero; libsodium refuses it.
    _, responder = fresh_pair()
    responder.read_message(b"\x00" * DHLEN)
    with pytest.raises(NoiseError, match="low-order"):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError, match="abandoned"):
        responder.write_message(b"")


@pytest.mark.parametrize("length", [0, 1, DHLEN - 1])
def test_short_first_message_is_refused(length: int) -> None:
    _, responder = fresh_pair()
    with pytest.raises(NoiseError, match="too short"):
        responder.read_message(b"\x01" * length)


@pytest.mark.parametrize(
    "cut", [0, 10, DHLEN, DHLEN + 10, DHLEN + DHLEN + TAGLEN, DHLEN + DHLEN + TAGLEN + 5]
)
def test_truncated_second_message_is_refused(cut: int) -> None:
    initiator, responder = fresh_pair()
    responder.read_message(initiator.write_message(b""))
    message2 = responder.write_message(b"")
    with pytest.raises(NoiseError):
        initiator.read_message(message2[:cut])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), which=st.sampled_from([1, 2]))
def test_random_handshake_messages_raise_only_noise_error(data: bytes, which: int) -> None:
    initiator, responder = fresh_pair(3)
    if which == 2:
        # The responder's reply is the first authenticated message; random
        # bytes must never be accepted there.
        responder.read_message(initiator.write_message(b""))
        responder.write_message(b"")
        with pytest.raises(NoiseError):
            initiator.read_message(data)
    else:
        try:
            responder.read_message(data)
        except NoiseError:
            return
        # Any 32+ bytes pass as an (unauthenticated) ephemeral key plus payload;
        # the reply then either works or meets a low-order point.
        with contextlib.suppress(NoiseError):
            responder.write_message(b"")


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
    which=st.sampled_from([1, 2]),
)
def test_any_bit_flip_in_an_authenticated_handshake_message_is_caught(
    position: int, bit: int, which: int
) -> None:
    initiator, responder = fresh_pair(5)
    responder.read_message(initiator.write_message(b""))
    message2 = responder.write_message(b"id")
    if which == 1:
        flipped = bytearray(message2)
        flipped[position % len(flipped)] ^= 1 << bit
        with pytest.raises(NoiseError):
            initiator.read_message(bytes(flipped))
        return
    initiator.read_message(message2)
    message3 = initiator.write_message(b"id")
    flipped = bytearray(message3)
    flipped[position % len(flipped)] ^= 1 << bit
    with pytest.raises(NoiseError):
        responder.read_message(bytes(flipped))
