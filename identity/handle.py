"""Handles: the text form of a feed's 32-byte Ed25519 public key.

A handle is ``@`` followed by a bech32m string (BIP-350) whose human-readable
part is ``pb`` and whose data part is the key.  Example::

    @pb1qqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0sv9vdx5

Why bech32m and not base64 (as SSB uses): bech32m's BCH checksum is
*guaranteed* to detect any error that touches up to four characters of a
string of at most 90 characters, so every single-character typo is rejected
instead of silently naming a different key.  A plain hash checksum only makes
that unlikely.  The alphabet also avoids look-alike characters (1, b, i, o).

The fingerprint is a short, stable prefix of the data part, for display and
for the ``name~fingerprint`` form.
"""

from __future__ import annotations

from typing import Final

HRP: Final = "pb"
PREFIX: Final = "@" + HRP + "1"
KEY_BYTES: Final = 32
FINGERPRINT_CHARS: Final = 12

_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
#: The characters of a handle's data and so of a fingerprint (bech32's alphabet).
CHARSET: Final = _CHARSET
_CHARSET_REV: Final = {c: i for i, c in enumerate(_CHARSET)}
_BECH32M_CONST: Final = 0x2BC830A3
_GEN: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_CHARS: Final = 6
_DATA_CHARS: Final = (KEY_BYTES * 8 + 4) // 5  # 52 five-bit groups
HANDLE_CHARS: Final = len(PREFIX) + _DATA_CHARS + _CHECKSUM_CHARS


class HandleError(ValueError):
    """The text is not a valid handle (wrong form, bad character or checksum)."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_five_bits(data: bytes) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def _from_five_bits(groups: list[int]) -> bytes:
    acc = 0
    bits = 0
    out = bytearray()
    for g in groups:
        acc = (acc << 5) | g
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    # The padding bits must be zero, or two texts would name one key.
    if bits >= 5 or (acc & ((1 << bits) - 1)):
        raise HandleError("handle has non-zero padding bits")
    return bytes(out)


def encode_handle(key: bytes) -> str:
    """Return the handle of a 32-byte public key."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a public key is {KEY_BYTES} bytes, got {len(key)}")
    data = _to_five_bits(key)
    polymod = _polymod(_hrp_expand(HRP) + data + [0] * _CHECKSUM_CHARS) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_CHARS)]
    return PREFIX + "".join(_CHARSET[d] for d in data + checksum)


def decode_handle(text: str) -> bytes:
    """Return the public key a handle names, or raise `HandleError`.

    The leading ``@`` is optional so that users can paste either form.  Upper
    case is accepted only for the whole string (bech32 rule); mixed case is a
    typo.
    """
    if not isinstance(text, str):
        raise HandleError("a handle is text")
    s = text.strip()
    if s.startswith("@"):
        s = s[1:]
    if len(s) != HANDLE_CHARS - 1:
        prefix = HRP + "1"
        if s.lower().startswith(prefix):
            got = f"got {len(s) - len(prefix)}"
        else:
            got = f"got {len(s)} characters, not starting with '@{prefix}'"
        raise HandleError(
            f"a handle is '@{prefix}' followed by {_DATA_CHARS + _CHECKSUM_CHARS} characters; {got}"
        )
    # str.lower() maps some non-ASCII letters onto the alphabet (KELVIN SIGN
    # U+212A -> 'k'); BIP-173 allows only ASCII 33-126, so refuse them first.
    if not s.isascii():
        raise HandleError("a handle is ASCII text")
    if s.lower() != s and s.upper() != s:
        raise HandleError("a handle is all lower case (mixed case is a typo)")
    s = s.lower()
    if not s.startswith(HRP + "1"):
        raise HandleError(f"a handle starts with '@{HRP}1'")
    try:
        groups = [_CHARSET_REV[c] for c in s[len(HRP) + 1 :]]
    except KeyError as exc:
        raise HandleError(f"character {exc.args[0]!r} cannot appear in a handle") from None
    if _polymod(_hrp_expand(HRP) + groups) != _BECH32M_CONST:
        raise HandleError("handle checksum does not match (a character is mistyped)")
    return _from_five_bits(groups[:-_CHECKSUM_CHARS])


def fingerprint(key: bytes) -> str:
    """Short display form of a key: the first characters of its handle's data."""
    return encode_handle(key)[len(PREFIX) : len(PREFIX) + FINGERPRINT_CHARS]


def is_handle(text: str) -> bool:
    try:
        decode_handle(text)
    except HandleError:
        return False
    return True
