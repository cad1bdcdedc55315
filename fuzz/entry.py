"""Fuzz `p2pblog.entry.decode_entry`: arbitrary bytes as a peer's entry, raw and validly signed.

Run: ``python fuzz/entry.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

Each input is decoded three times:

* as it is (a peer's signed entry): almost every input fails early
  (size, signature length, msgpack, schema), which is the point;
* as it is with ``check_signature=False``, as admission of a mention
  notice and ``p2pblog import``'s fork check do first (they check the
  signature after the cheap checks), so every schema path is reachable;
* as *content* signed by a fixed key (`FUZZ_AUTHOR`), the "hostile but
  validly signed" case: any peer can sign garbage with its own key and send
  it as a mention notice, so the schema checks run on it before anything
  else.  Seeds carry `FUZZ_AUTHOR` as the author, so the fuzzer starts from
  entries that verify.

The contract: `decode_entry` returns an `Entry` or raises an `EntryError`;
any other exception is a crash.  What decodes round-trips: the entry's
fields re-encode (`encode_content`) to exactly the content bytes (the
codec's "one canonical encoding" claim), its id is BLAKE2b of the bytes,
and decoding ``entry.raw`` again gives an equal entry.
"""

from __future__ import annotations

import sys

import atheris
from launch import run, use_checkout
from msgpack_mutator import MsgpackMutator

use_checkout()

with atheris.instrument_imports(include=["p2pblog", "identity"]):
    from samples import FUZZ_AUTHOR, T0_MS, sample_entries

    from identity import limits
    from identity.keys import SIGNATURE_BYTES
    from p2pblog.entry import KINDS, POST, decode_entry, encode_content, entry_id
    from p2pblog.errors import EntryError

MAX_LEN = limits.MAX_ENTRY_BYTES + 64


def check_decoded(raw: bytes, *, check_signature: bool = True) -> None:
    """Decode raw; if it is accepted, check the round-trip properties."""
    try:
        entry = decode_entry(raw, check_signature=check_signature)
    except EntryError:
        return
    assert entry.raw == raw
    assert entry.id == entry_id(raw)
    content = encode_content(entry.author, entry.seq, entry.prev, entry.timestamp, entry.kind, entry.body)
    assert content == raw[SIGNATURE_BYTES:], "an accepted entry is not in its canonical encoding"
    assert decode_entry(entry.raw, check_signature=check_signature) == entry


def check(data: bytes) -> None:
    check_decoded(data)
    check_decoded(data, check_signature=False)
    check_decoded(FUZZ_AUTHOR.sign(data))


def seeds() -> list[bytes]:
    """Every sample entry, signed (the raw half) and as bare content (the signed half);
    a post with a repeated mention, and an input one byte over the size limit."""
    raws = [entry.raw for entry in sample_entries()]
    author = FUZZ_AUTHOR.public_key
    repeated = encode_content(author, 1, None, T0_MS, POST, {"mentions": [author, author], "text": "hi"})
    raws.append(FUZZ_AUTHOR.sign(repeated))
    return [*raws, *(raw[SIGNATURE_BYTES:] for raw in raws), bytes(limits.MAX_ENTRY_BYTES + 1)]


def mutator() -> MsgpackMutator:
    """Mutates the content (after a signature, or the whole input) toward each check's edges."""
    fields = ("text", "reply_to", "mentions", "feed", "name", "bio", "target")
    edges = (
        limits.MAX_SEQ,
        limits.MAX_SEQ + 1,
        limits.MAX_TIMESTAMP_MS,
        limits.MAX_TIMESTAMP_MS + 1,
        "x" * limits.MAX_POST_CHARS,
        "x" * (limits.MAX_POST_CHARS + 1),
        " ",
        "\x00",
        [bytes(32)] * (limits.MAX_MENTIONS + 1),
        FUZZ_AUTHOR.public_key,
    )
    return MsgpackMutator(headers=(0, SIGNATURE_BYTES), values=(*KINDS, *fields, *edges))


def main() -> None:
    run("entry", check, seeds=seeds(), max_len=MAX_LEN, mutator=mutator())


if __name__ == "__main__":
    sys.exit(main())
