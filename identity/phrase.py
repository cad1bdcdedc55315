"""Backup phrases: an identity's 32-byte Ed25519 seed as 24 BIP-39 words, and back.

Theory of operation
-------------------
BIP-39 encodes 256 bits of entropy as 24 words of its 2048-word English
list (11 bits a word): the 256 bits, then the first 8 bits of their
SHA-256 as a checksum, cut in 11-bit groups.  We use the seed itself as the
entropy, so the phrase *is* the key: no derivation, no passphrase, and the
same phrase always gives the same handle.  (BIP-39's PBKDF2 "seed" for HD
wallets is not used: we need the 32 bytes back, not a derived key.)

Decoding is lenient where that cannot name another key, strict where it
could: case and spaces do not matter, and a word may be given by its first
four letters (each is unique in the list, as BIP-39 designs it); a word not
in the list, a wrong number of words, or a checksum that does not match
(about 1 in 256 wrong phrases passes it: the handle printed after a restore
is the final check) raise `PhraseError` with a message saying which.
"""

from __future__ import annotations

from typing import Final

from identity.keys import SEED_BYTES

#: Words in a phrase: 256 bits of seed + 8 bits of checksum, 11 bits a word.
PHRASE_WORDS: Final = 24
#: Characters of a phrase read at most (24 words of at most 8 letters and their spaces,
#: with room for sloppy spacing): longer input is refused before it is split.
MAX_PHRASE_CHARS: Final = 1024


class PhraseError(ValueError):
    """A backup phrase is malformed: wrong word count, unknown word, or bad checksum."""


def _wordlist() -> tuple[set[str], dict[str, str]]:
    from mnemonic import Mnemonic  # the word list only when a phrase is made or read

    words = list(Mnemonic("english").wordlist)
    return set(words), {w[:4]: w for w in words}


def seed_to_phrase(seed: bytes) -> str:
    """The 24-word phrase of a 32-byte seed, words separated by single spaces."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed is {SEED_BYTES} bytes, got {len(seed)}")
    from mnemonic import Mnemonic

    return str(Mnemonic("english").to_mnemonic(seed))


def phrase_to_seed(text: str) -> bytes:
    """The seed a phrase encodes; `PhraseError` saying what is wrong with it."""
    if len(text) > MAX_PHRASE_CHARS:
        raise PhraseError(f"that is not a backup phrase (over {MAX_PHRASE_CHARS} characters)")
    given = text.lower().split()
    if len(given) != PHRASE_WORDS:
        raise PhraseError(f"a backup phrase has {PHRASE_WORDS} words; this one has {len(given)}")
    known, by_prefix = _wordlist()
    full: list[str] = []
    for number, word in enumerate(given, 1):
        if word in known:
            full.append(word)
        elif len(word) >= 4 and word[:4] in by_prefix and by_prefix[word[:4]].startswith(word):
            full.append(by_prefix[word[:4]])
        else:
            raise PhraseError(f"word {number} ({word[:20]!r}) is not a word of the backup word list")
    from mnemonic import Mnemonic

    codec = Mnemonic("english")
    if not codec.check(" ".join(full)):
        raise PhraseError(
            "the phrase's checksum does not match: a word is wrong or out of order "
            "(check each word against what you wrote down)"
        )
    return bytes(codec.to_entropy(full))
