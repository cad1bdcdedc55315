"""Decoder fuzz: random, truncated, bit-flipped and hostile-but-signed input.

Whatever bytes arrive, `decode_entry` either returns a valid entry or raises
an `EntryError`; any other exception is a bug (as msgpack's OSS-Fuzz harness
treats it).  The feed-file reader likewise raises only `FeedFileError`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from identity import Identity, limits
from p2pblog import entry as entry_module
from p2pblog.entry import POST, decode_entry, validate_body
from p2pblog.errors import EntryError
from p2pblog.feedfile import MAGIC, VERSION, FeedFileError, read_feed
from tests.feeds import make_chain

AUTHOR = Identity(bytes(range(32)))
SAMPLES = [e.raw for e in make_chain(AUTHOR, 3)]


def decode_or_declared_error(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except EntryError:
        return
    # Anything accepted must really be a well-formed entry signed by its author.
    assert entry.raw == data
    assert entry.seq >= 1


@given(st.binary(max_size=9000))
def test_random_bytes(data: bytes) -> None:
    decode_or_declared_error(data)


@given(st.sampled_from(SAMPLES), st.data())
def test_truncations(raw: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    try:
        decode_entry(raw[:cut])
    except EntryError:
        return
    raise AssertionError("a truncated entry was accepted")


@given(st.sampled_from(SAMPLES), st.data())
def test_bit_flips(raw: bytes, data: st.DataObject) -> None:
    flips = data.draw(
        st.lists(st.integers(min_value=0, max_value=len(raw) * 8 - 1), min_size=1, max_size=4, unique=True)
    )
    mutated = bytearray(raw)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    try:
        decode_entry(bytes(mutated))
    except EntryError:
        return
    raise AssertionError("a bit-flipped entry was accepted")


@given(st.sampled_from(SAMPLES), st.binary(min_size=1, max_size=64), st.data())
def test_byte_insertions(raw: bytes, junk: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(raw)))
    decode_or_declared_error(raw[:at] + junk + raw[at:])


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6)
        # msgpack map keys may be text or bytes (strict_map_key allows both).
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@given(
    st.lists(msgpack_values, min_size=0, max_size=9).map(lambda items: [1, AUTHOR.public_key, *items][:9])
    | msgpack_values
)
@settings(max_examples=300)
def test_validly_signed_hostile_structures(obj: Any) -> None:
    """A real key signing garbage: the signature is fine, the content is not."""
    decode_or_declared_error(AUTHOR.sign(msgpack.packb(obj)))


KINDS = ["post", "follow", "unfollow", "profile", "delete", "nonsense"]
FIELD_NAMES = st.sampled_from(["text", "reply_to", "mentions", "feed", "name", "bio", "target", "zz"])


@given(
    st.sampled_from(KINDS),
    st.dictionaries(FIELD_NAMES | FIELD_NAMES.map(str.encode) | st.binary(max_size=4), msgpack_values),
)
@settings(max_examples=300)
def test_hostile_bodies_of_real_kinds(kind: str, body: dict[Any, Any]) -> None:
    """A well-formed header around a hostile body (bytes field names, wrong types):
    a peer can send this in a mention notice, before any signature check."""
    obj = [1, AUTHOR.public_key, 1, None, 0, kind, body]
    decode_or_declared_error(AUTHOR.sign(msgpack.packb(obj)))
    with contextlib.suppress(EntryError):
        decode_entry(AUTHOR.sign(msgpack.packb(obj)), check_signature=False)


def test_a_bytes_field_name_is_a_declared_error() -> None:
    raw = AUTHOR.sign(msgpack.packb([1, AUTHOR.public_key, 1, None, 0, "post", {b"zz": 1, "text": "hi"}]))
    try:
        decode_entry(raw, check_signature=False)
    except EntryError as exc:
        assert "field names must be text" in str(exc)
    else:
        raise AssertionError("accepted a body with a bytes field name")


@given(st.binary(max_size=200))
def test_feed_file_reader_raises_only_its_error(tail: bytes) -> None:
    for prefix in (b"", MAGIC, MAGIC + bytes([VERSION])):
        with contextlib.suppress(FeedFileError):
            list(read_feed(io.BytesIO(prefix + tail)))


_ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=())


@settings(max_examples=400, deadline=None)
@example("\ud800")
@example("ok \udcff")
@example(" \u3000 ")
@example("caf\u00e9")
@given(
    st.one_of(
        st.text(alphabet=_ANY_CHAR, max_size=20),
        st.text(alphabet=st.sampled_from(" \t\n\x0b\x0c\r\x1c\u3000ab"), max_size=12),
        st.integers(min_value=limits.MAX_POST_CHARS - 2, max_value=limits.MAX_POST_CHARS + 2).map(
            "x".__mul__
        ),
        st.binary(max_size=4),
    )
)
def test_the_one_step_check_of_a_text_only_post_agrees_with_the_full_check(text: object) -> None:
    """`validate_body` accepts a body that is only ASCII text in one step; it must refuse and
    accept exactly what the kind's full check does (surrogates, blanks, the length limit)."""
    body = {"text": text}

    def outcome(check: Callable[[], None]) -> type[Exception] | None:
        try:
            check()
        except EntryError as exc:
            return type(exc)
        return None

    assert outcome(lambda: validate_body(POST, body)) == outcome(lambda: entry_module._check_post(body))
