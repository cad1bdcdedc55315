"""Signed DHT records: round trip, expiry, key binding, forgery, and a bounded decoder."""

from __future__ import annotations

import contextlib
import ipaddress

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from identity import Identity
from identity.records import (
    _IPV4_RE,
    PEER,
    PROVIDER,
    RecordError,
    create_record,
    decode_record,
    newest,
    peer_key,
    provider_key,
)

NODE = Identity(bytes([5]) * 32)
OTHER = Identity(bytes([6]) * 32)
FEED = bytes([9]) * 32
ADDRS = [("udp", "127.0.0.1", 4000), ("tcp", "127.0.0.1", 4001)]


def test_peer_record_round_trip() -> None:
    record = create_record(NODE, type=PEER, seq=3, expires=2000, addrs=ADDRS)
    again = decode_record(record.raw, now=1000, key=peer_key(NODE.public_key))
    assert again == record
    assert again.addr("tcp") == ("127.0.0.1", 4001)
    assert again.dht_key == peer_key(NODE.public_key)


def test_provider_record_is_filed_under_the_feed() -> None:
    record = create_record(NODE, type=PROVIDER, seq=1, expires=2000, addrs=ADDRS, feed=FEED)
    assert decode_record(record.raw, now=0, key=provider_key(FEED)).feed == FEED
    with pytest.raises(RecordError, match="not its own"):
        decode_record(record.raw, now=0, key=peer_key(NODE.public_key))


def test_a_record_under_someone_elses_key_is_refused() -> None:
    record = create_record(OTHER, type=PEER, seq=1, expires=2000, addrs=ADDRS)
    with pytest.raises(RecordError, match="not its own"):
        decode_record(record.raw, now=0, key=peer_key(NODE.public_key))


def test_expired_records_are_refused() -> None:
    record = create_record(NODE, type=PEER, seq=1, expires=1000, addrs=ADDRS)
    decode_record(record.raw, now=999.5)
    with pytest.raises(RecordError, match="expired"):
        decode_record(record.raw, now=1000)


def test_forged_records_are_refused() -> None:
    record = create_record(NODE, type=PEER, seq=1, expires=1000, addrs=ADDRS)
    tampered = record.raw.replace(b"127.0.0.1", b"10.9.9.99")
    with pytest.raises(RecordError, match="signature"):
        decode_record(tampered, now=0)
    # OTHER signs content claiming NODE as signer.
    with pytest.raises(RecordError, match="signature"):
        decode_record(OTHER.sign(record.raw[64:]), now=0)


@pytest.mark.parametrize(
    "body",
    [
        {"addrs": []},
        {"addrs": [["sctp", "h", 1]]},
        {"addrs": [["udp", "", 1]]},
        {"addrs": [["udp", "h", 0]]},
        {"addrs": [["udp", "h", 70000]]},
        {"addrs": [["udp", "h", True]]},
        {"addrs": [["udp", "h", 1]] * 9},
        {"addrs": [["udp", "h", 1]], "extra": 1},
    ],
)
def test_invalid_bodies_are_refused(body: dict[str, object]) -> None:
    content = msgpack.packb([1, PEER, NODE.public_key, 1, 1000, body])
    with pytest.raises(RecordError):
        decode_record(NODE.sign(content), now=0)


def test_create_refuses_bad_fields() -> None:
    with pytest.raises(RecordError):
        create_record(NODE, type=PROVIDER, seq=1, expires=1, addrs=ADDRS)
    with pytest.raises(RecordError):
        create_record(NODE, type="name", seq=1, expires=1, addrs=ADDRS)
    with pytest.raises(RecordError):
        create_record(NODE, type=PEER, seq=1, expires=1, addrs=[("udp", "h", 0)])


def test_highest_seq_wins() -> None:
    records = [create_record(NODE, type=PEER, seq=s, expires=10, addrs=ADDRS) for s in (2, 7, 5)]
    winner = newest(records)
    assert winner is not None and winner.seq == 7
    assert newest([]) is None


@given(st.binary(max_size=1100))
def test_decoder_raises_only_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode_record(data, now=0)


@given(st.data())
def test_bit_flips_are_refused(data: st.DataObject) -> None:
    record = create_record(NODE, type=PEER, seq=1, expires=10**9, addrs=ADDRS)
    bit = data.draw(st.integers(0, len(record.raw) * 8 - 1))
    mutated = bytearray(record.raw)
    mutated[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RecordError):
        decode_record(bytes(mutated), now=0)


@given(
    st.one_of(
        st.text(alphabet="0123456789.", max_size=20),
        st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
        st.text(alphabet="0123456789.٣x \n", max_size=20),
    )
)
def test_the_ipv4_fast_path_accepts_exactly_what_ipaddress_accepts(text: str) -> None:
    try:
        ipaddress.IPv4Address(text)
        valid = True
    except ValueError:
        valid = False
    assert bool(_IPV4_RE.fullmatch(text)) == valid
