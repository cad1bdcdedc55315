"""Handles (identity.handle): the bech32m text form of a feed's public key.

Checks the round trip; that the encoding is standard BIP-350 bech32m (against an
independent reference encoder that is itself checked on the BIP-350 vectors);
that a typo never names another key: every single-character substitution,
deletion, insertion and adjacent transposition is rejected, exhaustively for a
few fixed keys and by hypothesis for random ones; the case, '@' and whitespace
rules; the fingerprint; and that decode_handle raises nothing but HandleError,
whatever text it is given.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import Identity
from identity.handle import (
    FINGERPRINT_CHARS,
    HANDLE_CHARS,
    KEY_BYTES,
    PREFIX,
    HandleError,
    decode_handle,
    encode_handle,
    fingerprint,
    is_handle,
)

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"  # BIP-173 data alphabet

# Non-ASCII letters a user (or an attacker) could slip into a handle: accented,
# Turkish dotted/dotless i, long s, KELVIN SIGN (lower() gives ASCII 'k'),
# Greek and Cyrillic look-alikes, fullwidth, a titlecase digraph.
NON_ASCII_LETTERS = (
    "éÉßıİſ"
    "\N{KELVIN SIGN}"
    "\N{GREEK CAPITAL LETTER ALPHA}\N{GREEK SMALL LETTER ALPHA}"
    "\N{CYRILLIC SMALL LETTER A}\N{CYRILLIC SMALL LETTER IE}\N{CYRILLIC SMALL LETTER O}"
    "\N{CYRILLIC SMALL LETTER ES}\N{CYRILLIC SMALL LETTER ER}\N{CYRILLIC SMALL LETTER HA}"
    "\N{FULLWIDTH LATIN CAPITAL LETTER A}\N{FULLWIDTH LATIN SMALL LETTER Q}"
    "\N{LATIN CAPITAL LETTER D WITH SMALL LETTER Z WITH CARON}"
)
TYPO_ALPHABET = string.printable + NON_ASCII_LETTERS

FIXED_KEYS = [
    bytes(KEY_BYTES),
    b"\xff" * KEY_BYTES,
    bytes(range(KEY_BYTES)),
    hashlib.sha256(b"p2pblog handle test").digest(),
]

keys = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)


def _reference_polymod(values: list[int]) -> int:
    # BIP-173 reference checksum, written out here independently of identity.handle.
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= gen[i]
    return chk


def _reference_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


BECH32M_CONST = 0x2BC830A3  # BIP-350


def reference_bech32m_verify(text: str) -> bool:
    text = text.lower()
    hrp, _, data = text.rpartition("1")
    groups = [CHARSET.index(c) for c in data]
    return _reference_polymod(_reference_hrp_expand(hrp) + groups) == BECH32M_CONST


def reference_bech32m_encode(hrp: str, groups: list[int]) -> str:
    values = _reference_hrp_expand(hrp) + groups
    polymod = _reference_polymod([*values, 0, 0, 0, 0, 0, 0]) ^ BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[g] for g in groups + checksum)


def key_groups(key: bytes, padding: int = 0) -> list[int]:
    """The key as 52 five-bit groups: 256 bits then 4 padding bits."""
    n = (int.from_bytes(key, "big") << 4) | padding
    return [(n >> (5 * (51 - i))) & 31 for i in range(52)]


def substitutions(handle: str, alphabet: str) -> Iterator[tuple[int, str, str]]:
    for i, old in enumerate(handle):
        for new in alphabet:
            if new != old:
                yield i, new, handle[:i] + new + handle[i + 1 :]


def assert_rejected(text: str) -> None:
    with pytest.raises(HandleError):
        decode_handle(text)
    assert not is_handle(text)


# --- encoding -------------------------------------------------------------------------


@given(keys)
def test_round_trip(key: bytes) -> None:
    handle = encode_handle(key)
    assert len(handle) == HANDLE_CHARS
    assert handle.startswith(PREFIX)
    assert set(handle[len(PREFIX) :]) <= set(CHARSET)
    assert decode_handle(handle) == key
    assert is_handle(handle)


def test_golden_handle() -> None:
    # Frozen so that a change to the encoding (which would orphan every published
    # handle) cannot pass unnoticed; it is also the example in the module docstring.
    handle = "@pb1qqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0sv9vdx5"
    assert encode_handle(bytes(range(32))) == handle
    assert decode_handle(handle) == bytes(range(32))


@pytest.mark.parametrize(
    "text",
    [
        # BIP-350 "valid Bech32m strings" test vectors.
        "A1LQFN3A",
        "a1lqfn3a",
        "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
        "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
        "?1v759aa",
    ],
)
def test_reference_bech32m_accepts_bip350_vectors(text: str) -> None:
    assert reference_bech32m_verify(text)
    # A one-character change must break the reference checksum too.
    last = text[-1].lower()
    assert not reference_bech32m_verify(text[:-1] + CHARSET[(CHARSET.index(last) + 1) % 32])


@given(keys)
def test_handle_is_standard_bech32m(key: bytes) -> None:
    assert encode_handle(key) == "@" + reference_bech32m_encode("pb", key_groups(key))


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_encode_rejects_wrong_key_size(size: int) -> None:
    with pytest.raises(ValueError):
        encode_handle(bytes(size))


# --- typos: the key guarantee ---------------------------------------------------------


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
@pytest.mark.parametrize("case", ["lower", "upper"])
def test_every_single_substitution_is_rejected(key: bytes, case: str) -> None:
    handle = encode_handle(key)
    if case == "upper":
        handle = handle.upper()
    checked = 0
    for i, new, typo in substitutions(handle, TYPO_ALPHABET):
        if i == 0 and new.isspace():
            # '@' is optional and surrounding whitespace is ignored, so this is
            # the bare form of the same handle, not a typo.
            assert decode_handle(typo) == key
            continue
        with pytest.raises(HandleError):
            decode_handle(typo)
        checked += 1
    assert checked > HANDLE_CHARS * (len(TYPO_ALPHABET) - 8)


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
def test_every_substitution_of_bare_handle_is_rejected(key: bytes) -> None:
    bare = encode_handle(key)[1:]
    for _, _, typo in substitutions(bare, TYPO_ALPHABET):
        assert_rejected(typo)


@given(key=keys, upper=st.booleans(), data=st.data())
def test_random_substitution_is_rejected(key: bytes, upper: bool, data: st.DataObject) -> None:
    handle = encode_handle(key)
    if upper:
        handle = handle.upper()
    i = data.draw(st.integers(0, len(handle) - 1), label="position")
    new = data.draw(st.characters().filter(lambda c: c != handle[i]), label="replacement")
    typo = handle[:i] + new + handle[i + 1 :]
    if i == 0 and new.isspace():
        assert decode_handle(typo) == key
    else:
        assert_rejected(typo)


@given(key=keys, data=st.data())
def test_up_to_four_substituted_characters_are_rejected(key: bytes, data: st.DataObject) -> None:
    # bech32m's guarantee (BIP-173 section "Checksum design"): any error that
    # touches at most four characters is detected.
    handle = encode_handle(key)
    positions = data.draw(
        st.sets(st.integers(len(PREFIX), HANDLE_CHARS - 1), min_size=1, max_size=4), label="positions"
    )
    chars = list(handle)
    for i in positions:
        chars[i] = data.draw(st.sampled_from(CHARSET.replace(handle[i], "")), label=f"char {i}")
    assert_rejected("".join(chars))


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
def test_every_single_deletion_is_rejected(key: bytes) -> None:
    handle = encode_handle(key)
    assert decode_handle(handle[1:]) == key  # deleting the optional '@'
    for i in range(1, len(handle)):
        assert_rejected(handle[:i] + handle[i + 1 :])


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
def test_every_single_insertion_is_rejected(key: bytes) -> None:
    handle = encode_handle(key)
    for i in range(len(handle) + 1):
        for new in TYPO_ALPHABET:
            typo = handle[:i] + new + handle[i:]
            if new.isspace() and i in (0, len(handle)):
                assert decode_handle(typo) == key  # surrounding whitespace is ignored
            else:
                assert_rejected(typo)


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
@pytest.mark.parametrize("case", ["lower", "upper"])
def test_every_adjacent_transposition_is_rejected(key: bytes, case: str) -> None:
    handle = encode_handle(key)
    handle = handle.upper() if case == "upper" else handle
    swapped = 0
    for i in range(len(handle) - 1):
        if handle[i] == handle[i + 1]:
            continue  # swapping equal characters is no change
        assert_rejected(handle[:i] + handle[i + 1] + handle[i] + handle[i + 2 :])
        swapped += 1
    assert swapped > 0


@given(key=keys, data=st.data())
def test_random_edit_is_rejected(key: bytes, data: st.DataObject) -> None:
    handle = encode_handle(key)
    i = data.draw(st.integers(1, len(handle) - 1), label="position")
    edit = data.draw(st.sampled_from(["delete", "insert", "transpose"]), label="edit")
    if edit == "delete":
        typo = handle[:i] + handle[i + 1 :]
    elif edit == "insert":
        typo = handle[:i] + data.draw(st.characters(), label="inserted") + handle[i:]
    else:
        j = min(i, len(handle) - 2)
        typo = handle[:j] + handle[j + 1] + handle[j] + handle[j + 2 :]
        if typo == handle:
            return
    assert_rejected(typo)


# --- case, '@', whitespace ------------------------------------------------------------


@given(keys)
def test_all_upper_case_is_accepted(key: bytes) -> None:
    handle = encode_handle(key)
    assert decode_handle(handle.upper()) == key
    assert decode_handle(handle.upper()[1:]) == key


@pytest.mark.parametrize("key", FIXED_KEYS, ids=lambda k: k.hex()[:8])
def test_each_single_case_flip_is_rejected(key: bytes) -> None:
    handle = encode_handle(key)
    for source, flip in ((handle, str.upper), (handle.upper(), str.lower)):
        for i, c in enumerate(source):
            if c.isalpha():
                assert_rejected(source[:i] + flip(c) + source[i + 1 :])


@given(key=keys, data=st.data())
def test_mixed_case_is_rejected(key: bytes, data: st.DataObject) -> None:
    handle = encode_handle(key)
    letters = [i for i, c in enumerate(handle) if c.isalpha()]
    flipped = data.draw(st.sets(st.sampled_from(letters), min_size=1), label="flipped")
    if len(flipped) == len(letters):
        return  # that is the all-upper form
    mixed = "".join(c.upper() if i in flipped else c for i, c in enumerate(handle))
    with pytest.raises(HandleError, match="mixed case"):
        decode_handle(mixed)


def test_kelvin_sign_is_not_a_k() -> None:
    # str.lower() maps U+212A KELVIN SIGN to ASCII 'k'; a handle must still refuse it.
    key = next(k for k in (bytes([n]) * 32 for n in range(256)) if "K" in encode_handle(k).upper()[4:])
    upper = encode_handle(key).upper()
    assert_rejected(upper.replace("K", "\N{KELVIN SIGN}", 1))


@given(keys)
def test_at_sign_is_optional(key: bytes) -> None:
    handle = encode_handle(key)
    assert decode_handle(handle[1:]) == key
    assert_rejected("@" + handle)


@given(key=keys, before=st.sampled_from(["", " ", "\t", "\n", " \r\n"]), after=st.sampled_from(["", " \n"]))
def test_surrounding_whitespace_is_ignored(key: bytes, before: str, after: str) -> None:
    handle = encode_handle(key)
    assert decode_handle(before + handle + after) == key
    assert_rejected(handle[:10] + " " + handle[10:])


# --- malformed input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@",
        "@pb1",
        "pb1",
        PREFIX + "q" * 57,
        PREFIX + "q" * 59,
        "@pb1" + "q" * 200,
    ],
)
def test_wrong_length_is_rejected(text: str) -> None:
    with pytest.raises(HandleError, match="characters"):
        decode_handle(text)


@given(keys)
def test_truncated_or_extended_handle_is_rejected(key: bytes) -> None:
    handle = encode_handle(key)
    for n in range(len(handle)):
        assert_rejected(handle[:n])
    assert_rejected(handle + "q")


@given(key=keys, hrp=st.sampled_from(["pc", "bp", "qb", "p2", "bc"]))
def test_valid_bech32m_with_another_prefix_is_rejected(key: bytes, hrp: str) -> None:
    other = reference_bech32m_encode(hrp, key_groups(key))
    assert reference_bech32m_verify(other)
    with pytest.raises(HandleError, match="starts with"):
        decode_handle("@" + other)


@given(key=keys, padding=st.integers(1, 15))
def test_nonzero_padding_bits_are_rejected(key: bytes, padding: int) -> None:
    # A valid checksum over a data part whose 4 padding bits are set: accepting
    # it would give the same key a second spelling.
    text = "@" + reference_bech32m_encode("pb", key_groups(key, padding))
    with pytest.raises(HandleError, match="padding"):
        decode_handle(text)


def test_separator_one_is_required() -> None:
    handle = encode_handle(bytes(32))
    assert_rejected(handle.replace("pb1", "pbq", 1))
    assert_rejected(handle.replace("pb1", "pb", 1) + "q")


@pytest.mark.parametrize(
    "value",
    [None, 0, 3.5, b"", encode_handle(bytes(32)).encode(), bytearray(62), list(encode_handle(bytes(32)))],
    ids=lambda v: type(v).__name__,
)
def test_non_str_is_rejected(value: object) -> None:
    with pytest.raises(HandleError):
        decode_handle(value)  # type: ignore[arg-type]
    assert not is_handle(value)  # type: ignore[arg-type]


def _normal_form(text: str) -> str:
    s = text.strip()
    return s[1:].lower() if s.startswith("@") else s.lower()


@settings(max_examples=500)
@given(st.text())
def test_decode_arbitrary_text_raises_only_handle_error(text: str) -> None:
    try:
        key = decode_handle(text)
    except HandleError:
        return
    assert encode_handle(key)[1:] == _normal_form(text)


@settings(max_examples=300)
@given(st.text(alphabet=CHARSET + CHARSET.upper() + "1@ b", min_size=55, max_size=65))
def test_decode_near_handle_text_raises_only_handle_error(text: str) -> None:
    try:
        key = decode_handle("@pb1" + text)
    except HandleError:
        return
    assert encode_handle(key)[4:] == text.lower()


# --- fingerprint ----------------------------------------------------------------------


@given(keys)
def test_fingerprint_is_prefix_of_data_part(key: bytes) -> None:
    fp = fingerprint(key)
    assert len(fp) == FINGERPRINT_CHARS == 12
    assert fp == encode_handle(key)[len(PREFIX) : len(PREFIX) + FINGERPRINT_CHARS]
    assert set(fp) <= set(CHARSET)


@given(keys, keys)
def test_fingerprints_differ_when_keys_differ_in_first_60_bits(a: bytes, b: bytes) -> None:
    # 12 characters carry the first 60 bits of the key, no more and no less.
    same_prefix = int.from_bytes(a, "big") >> 196 == int.from_bytes(b, "big") >> 196
    assert (fingerprint(a) == fingerprint(b)) == same_prefix


@given(key=keys, bit=st.integers(0, 59))
def test_flipping_a_leading_bit_changes_fingerprint(key: bytes, bit: int) -> None:
    other = (int.from_bytes(key, "big") ^ (1 << (255 - bit))).to_bytes(32, "big")
    assert fingerprint(other) != fingerprint(key)


def test_identity_exposes_handle_and_fingerprint() -> None:
    ident = Identity(bytes(range(32)))
    assert ident.handle == encode_handle(ident.public_key)
    assert ident.fingerprint == fingerprint(ident.public_key)
    assert decode_handle(ident.handle) == ident.public_key
    assert ident.handle in repr(ident)
