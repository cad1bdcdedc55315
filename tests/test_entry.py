"""Entry codec: golden bytes, round trips, and every kind of bad entry refused with a declared error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from identity import HandleError, Identity, limits
from p2pblog.entry import (
    DELETE,
    FOLLOW,
    POST,
    PROFILE,
    UNFOLLOW,
    create_entry,
    decode_entry,
    encode_content,
    entry_id,
    entry_to_json,
    mentions_in,
    parse_entry_id,
    post_body,
)
from p2pblog.errors import (
    EntryDecodeError,
    EntryError,
    EntrySchemaError,
    EntrySignatureError,
    EntryTooLarge,
    LocalProtocolError,
)
from tests.feeds import T0, make_chain

VECTORS = Path(__file__).parent / "vectors"
ALICE = Identity(bytes(range(32)))
BOB = Identity(bytes(range(32, 64)))


def sign_content(identity: Identity, obj: Any) -> bytes:
    """Sign arbitrary content, bypassing create_entry's checks (a hostile author)."""
    return identity.sign(msgpack.packb(obj))


def content(seq: int = 1, prev: bytes | None = None, kind: str = POST, body: Any = None) -> list[Any]:
    return [1, ALICE.public_key, seq, prev, T0, kind, {"text": "hi"} if body is None else body]


def test_golden_entry_bytes() -> None:
    vector = json.loads((VECTORS / "entry_post.json").read_text())
    entry = create_entry(
        Identity(bytes.fromhex(vector["seed"])),
        seq=vector["seq"],
        prev=None,
        timestamp=vector["timestamp"],
        kind=POST,
        body=post_body(vector["text"]),
    )
    assert entry.raw.hex() == vector["signed"]
    assert entry.id.hex() == vector["id"]
    decoded = decode_entry(bytes.fromhex(vector["signed"]))
    assert decoded == entry


def test_round_trip_every_kind() -> None:
    first = create_entry(ALICE, seq=1, prev=None, timestamp=T0, kind=POST, body=post_body("hello"))
    bodies: list[tuple[str, dict[str, Any]]] = [
        (POST, post_body(f"hi {BOB.handle}", reply_to=first.id)),
        (FOLLOW, {"feed": BOB.public_key}),
        (UNFOLLOW, {"feed": BOB.public_key}),
        (PROFILE, {"name": "alice", "bio": "writes"}),
        (DELETE, {"target": first.id}),
    ]
    prev = first
    for kind, body in bodies:
        entry = create_entry(ALICE, seq=prev.seq + 1, prev=prev.id, timestamp=T0 + 5, kind=kind, body=body)
        again = decode_entry(entry.raw)
        assert again == entry
        assert again.id == entry_id(entry.raw)
        assert dict(again.body) == body
        prev = entry
    reply = decode_entry(
        create_entry(ALICE, seq=9, prev=first.id, timestamp=T0, kind=POST, body=bodies[0][1]).raw
    )
    assert reply.reply_to == first.id
    assert reply.mentions == (BOB.public_key,)


def test_json_form_has_the_documented_fields() -> None:
    (entry,) = make_chain(ALICE, 1)
    doc = entry_to_json(entry)
    for key in ("id", "author", "seq", "prev", "timestamp", "kind", "text", "reply_to", "mentions"):
        assert key in doc
    assert doc["author"] == ALICE.handle
    assert entry_to_json(entry, retracted=True)["text"] is None


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        (content(kind="shout"), EntrySchemaError),
        (content(body={"text": "x" * (limits.MAX_POST_CHARS + 1)}), EntryTooLarge),
        (content(body={"text": "   "}), EntrySchemaError),
        (content(body={"text": "hi", "color": "red"}), EntrySchemaError),
        (content(body={"text": 5}), EntrySchemaError),
        (content(body={"text": "hi", "reply_to": b"short"}), EntrySchemaError),
        (content(body={"mentions": [b"\x01" * 32, b"\x01" * 32], "text": "hi"}), EntrySchemaError),
        (content(body={"mentions": [b"\x01" * 32] * 17, "text": "hi"}), EntryTooLarge),
        (content(body={"text": "hi", "mentions": [b"\x01" * 32]}), EntrySchemaError),  # unsorted keys
        (content(kind=FOLLOW, body={"feed": b"x" * 31}), EntrySchemaError),
        (content(kind=PROFILE, body={}), EntrySchemaError),
        (content(kind=PROFILE, body={"name": "n" * 65}), EntryTooLarge),
        (content(kind=DELETE, body={"target": "abc"}), EntrySchemaError),
        (content(seq=0), EntrySchemaError),
        (content(seq=True), EntrySchemaError),
        (content(seq=1, prev=b"\x00" * 32), EntrySchemaError),
        (content(seq=2, prev=None), EntrySchemaError),
        (content(seq=2, prev=b"\x00" * 31), EntrySchemaError),
        ([2, *content()[1:]], EntrySchemaError),
        (content()[:6], EntryDecodeError),
        ({"author": ALICE.public_key}, EntryDecodeError),
        ([1, ALICE.public_key, 1, None, 1.5, POST, {"text": "hi"}], EntrySchemaError),
        ([1, ALICE.public_key, 1, None, -1, POST, {"text": "hi"}], EntrySchemaError),
        ([1, b"short", 1, None, T0, POST, {"text": "hi"}], EntrySchemaError),
        ([1, ALICE.public_key, 1, None, T0, 7, {"text": "hi"}], EntrySchemaError),
        ([1, ALICE.public_key, 1, None, T0, POST, ["text"]], EntrySchemaError),
    ],
)
def test_invalid_content_is_refused(obj: Any, error: type[EntryError]) -> None:
    with pytest.raises(error):
        decode_entry(sign_content(ALICE, obj))


def test_forged_signature_and_wrong_author_are_refused() -> None:
    (entry,) = make_chain(ALICE, 1)
    forged = bytearray(entry.raw)
    forged[10] ^= 0x01
    with pytest.raises(EntrySignatureError):
        decode_entry(bytes(forged))
    # Bob signs content that claims Alice as the author.
    with pytest.raises(EntrySignatureError):
        decode_entry(BOB.sign(entry.raw[64:]))
    # A changed body under the original signature.
    tampered = entry.raw[:64] + entry.raw[64:].replace(b"post 1", b"post 2")
    with pytest.raises(EntrySignatureError):
        decode_entry(tampered)


def test_oversize_and_truncated_bytes_are_refused() -> None:
    with pytest.raises(EntryTooLarge):
        decode_entry(b"\x00" * (limits.MAX_ENTRY_BYTES + 1))
    (entry,) = make_chain(ALICE, 1)
    with pytest.raises(EntryDecodeError):
        decode_entry(entry.raw[:64])
    with pytest.raises(EntryDecodeError):
        decode_entry(entry.raw[:-1])
    with pytest.raises(EntryDecodeError):
        decode_entry(entry.raw + b"\x00")  # trailing bytes


def test_text_that_is_not_utf8_is_refused() -> None:
    good = msgpack.packb(content(body={"text": "hé"}))
    bad = good.replace("hé".encode(), b"h\xff")
    with pytest.raises(EntryDecodeError):
        decode_entry(ALICE.sign(bad))


def test_text_with_lone_surrogates_is_refused_at_creation() -> None:
    # Python decodes non-UTF-8 command-line bytes to lone surrogates.
    for body in ({"text": "bad \udcff text"}, {"name": "\udcfe"}):
        kind = POST if "text" in body else PROFILE
        with pytest.raises(EntrySchemaError, match="UTF-8"):
            create_entry(ALICE, seq=1, prev=None, timestamp=T0, kind=kind, body=body)


def test_non_canonical_encoding_is_refused() -> None:
    # seq 1 as a uint32 instead of a positive fixint: same value, other bytes.
    canonical = msgpack.packb(content())
    key = msgpack.packb(ALICE.public_key)
    at = canonical.index(key) + len(key)
    assert canonical[at] == 0x01
    padded = canonical[:at] + b"\xce\x00\x00\x00\x01" + canonical[at + 1 :]
    assert msgpack.unpackb(padded) == msgpack.unpackb(canonical)
    with pytest.raises(EntryDecodeError):
        decode_entry(ALICE.sign(padded))


def test_create_entry_refuses_bad_input_before_signing() -> None:
    with pytest.raises(EntryTooLarge):
        create_entry(ALICE, seq=1, prev=None, timestamp=T0, kind=POST, body={"text": "x" * 501})
    with pytest.raises(EntrySchemaError):
        create_entry(ALICE, seq=1, prev=None, timestamp=T0, kind="shout", body={})
    with pytest.raises(LocalProtocolError):
        create_entry(ALICE, seq=2, prev=None, timestamp=T0, kind=POST, body={"text": "x"})
    with pytest.raises(LocalProtocolError):
        create_entry(ALICE, seq=0, prev=None, timestamp=T0, kind=POST, body={"text": "x"})


def test_post_text_limit_counts_characters_not_bytes() -> None:
    text = "é" * limits.MAX_POST_CHARS  # 1000 bytes of UTF-8, 500 characters
    entry = create_entry(ALICE, seq=1, prev=None, timestamp=T0, kind=POST, body=post_body(text))
    assert decode_entry(entry.raw).text == text


def test_mentions_are_parsed_from_text() -> None:
    text = f"hi {BOB.handle} and {ALICE.handle}, again {BOB.handle}."
    assert mentions_in(text) == [BOB.public_key, ALICE.public_key]
    assert post_body("no mentions here @pb1 @someone") == {"text": "no mentions here @pb1 @someone"}


def test_a_mistyped_mention_is_an_error_not_a_silent_drop() -> None:
    handle = BOB.handle
    typo = handle[:10] + ("q" if handle[10] != "q" else "p") + handle[11:]
    with pytest.raises(HandleError, match="mention"):
        mentions_in(f"hi {typo}")


def test_parse_entry_id() -> None:
    (entry,) = make_chain(ALICE, 1)
    assert parse_entry_id(entry.id.hex().upper()) == entry.id
    for bad in ("", "xyz", entry.id.hex()[:-1], entry.id.hex() + "0", "g" * 64):
        with pytest.raises(ValueError):
            parse_entry_id(bad)


def test_encode_content_sorts_body_keys() -> None:
    a = encode_content(ALICE.public_key, 1, None, T0, POST, {"text": "x", "mentions": [BOB.public_key]})
    b = encode_content(ALICE.public_key, 1, None, T0, POST, {"mentions": [BOB.public_key], "text": "x"})
    assert a == b
