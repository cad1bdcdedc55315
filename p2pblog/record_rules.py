"""What p2pblog means by a DHT value: the validator, selector and ranks `NodeCore` gives `dht.DhtCore`.

Theory of operation
-------------------
`dht/` stores opaque values; these functions decide which values of ours
are good, kept in one place so the DHT core stays ignorant of the format:

* `validate_value`: a value that begins like a p2pblog record (a 64-byte
  signature, then a 6-element msgpack array of version 1) must *be* a valid
  one: signed by its signer, unexpired, filed under its own key
  (`identity.records`), and with a seq at most `MAX_SEQ_AHEAD_MS` ahead of
  our clock (seqs are the signer's clock in milliseconds).  Anything else is an opaque value, accepted as the
  ``kademlia`` package would, so real ``kademlia`` peers can use our nodes.
* `select_value`: among values for one key, valid records beat opaque values
  and the highest ``seq`` wins; opaque values keep ``kademlia``'s
  last-write-wins.
* `validate_provider` / `rank_provider`: the provider store holds one value
  per provider (`dht.providers`); a value must be a valid provider record or
  name claim filed under its own key, the provider it speaks for is its
  signer, and a full key evicts the claim with the least work first.
* `verified_providers` / `verified_claims` / `verified_hashtags`: what a
  finished providers lookup yields, checked again against the feed, name or
  tag asked for.
* `hashtag_group`: the provider store's group of a hashtag record is its
  signer, so one key's announcements of many tags are bounded together
  (`dht.providers.MAX_PER_GROUP`; issue 19).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from dht.records import accept_any
from dht.wire import Value
from identity.records import (
    HASHTAG,
    KEYEVENT,
    NAME,
    PAIRING,
    PROVIDER,
    Record,
    RecordError,
    decode_record,
    name_key,
    order_claims,
    provider_key,
    tag_key,
)


def _looks_like_record(value: Value) -> bool:
    # signature (64) || fixarray-6 (0x96) || version 1 (0x01)
    return isinstance(value, bytes) and len(value) > 66 and value[64] == 0x96 and value[65] == 0x01


#: How far ahead of the receiver's clock (ms) a record's seq may be.  Signers set seq to
#: their clock in milliseconds; a seq far beyond any clock (2**63 - 1, signed by whoever
#: holds a key, a thief included) would win "highest seq" for ever.  A day, like entries.
MAX_SEQ_AHEAD_MS: Final = 86_400_000


def _decode_current(value: bytes, key: bytes, now: float) -> Record:
    record = decode_record(value, now=now, key=key)
    if record.seq > now * 1000 + MAX_SEQ_AHEAD_MS:
        raise RecordError("record seq is more than a day ahead of this clock")
    return record


def validate_value(key: bytes, value: Value, now: float) -> bool:
    """The DHT validator: p2pblog records must verify (and not be signed ahead of any
    clock); other values as ``kademlia`` allows."""
    if _looks_like_record(value):
        assert isinstance(value, bytes)
        try:
            _decode_current(value, key, now)
        except RecordError:
            return False
        return True
    return accept_any(key, value, now)


def validate_provider(key: bytes, value: bytes, now: float) -> bytes | None:
    """The DHT provider validator: a valid provider record or name claim under its own key
    -> its signer."""
    if not _looks_like_record(value):
        return None
    try:
        record = _decode_current(value, key, now)
    except RecordError:
        return None
    return record.signer if record.type in (PROVIDER, NAME, HASHTAG, PAIRING, KEYEVENT) else None


#: The type as msgpack writes it: a fixstr (0xa0 | length, then the bytes).
_HASHTAG_TYPE: Final = bytes([0xA0 | len(HASHTAG)]) + HASHTAG.encode()


def hashtag_group(key: bytes, value: bytes) -> bytes | None:
    """The provider store's group of a held value: ``tag:`` + signer for a hashtag record."""
    del key
    # signature (64) || 0x96 0x01 || the type as a msgpack string: other types cost no decode.
    if not _looks_like_record(value) or value[66 : 66 + len(_HASHTAG_TYPE)] != _HASHTAG_TYPE:
        return None
    try:
        record = decode_record(value, now=None, check_signature=False)
    except RecordError:
        return None
    return b"tag:" + record.signer if record.type == HASHTAG else None


def rank_provider(key: bytes, value: bytes) -> int:
    """Eviction rank in a full provider key: a name claim's proof-of-work bits (else 0)."""
    del key
    try:
        record = decode_record(value, now=None, check_signature=False)
    except RecordError:
        return 0
    return record.work if record.type == NAME else 0


def select_value(key: bytes, values: Sequence[Value]) -> int:
    """The DHT selector: the valid record with the highest seq, else the newest value.

    The DHT core hands the selector only values `validate_value` accepted
    (stores, held values and lookup answers alike), so signatures are not
    checked a second time here.
    """
    del key
    best: tuple[int, bytes] | None = None
    best_index = len(values) - 1
    for index, value in enumerate(values):
        if not _looks_like_record(value):
            continue
        assert isinstance(value, bytes)
        try:
            record = decode_record(value, now=None, check_signature=False)
        except RecordError:
            continue
        rank = (record.seq, record.raw)
        if best is None or rank > best:
            best, best_index = rank, index
    return best_index


def _filed_under(key: bytes, values: Sequence[bytes]) -> Iterator[Record]:
    """The values that are valid records filed under ``key`` (the others are skipped)."""
    for value in values:
        try:
            yield decode_record(value, now=None, key=key)
        except RecordError:
            continue


def verified_providers(feed: bytes, values: Sequence[bytes]) -> tuple[Record, ...]:
    # The DHT validated each value on arrival; check again that each is a
    # provider record of this very feed, one per signer.
    records: dict[bytes, Record] = {}
    for record in _filed_under(provider_key(feed), values):
        if record.type == PROVIDER and record.feed == feed and record.signer not in records:
            records[record.signer] = record
    return tuple(records.values())


def verified_claims(name: str, values: Sequence[bytes]) -> tuple[Record, ...]:
    records = []
    for record in _filed_under(name_key(name), values):
        if record.type == NAME and record.name == name:
            records.append(record)
    return tuple(order_claims(records))


def verified_hashtags(tag: str, values: Sequence[bytes]) -> tuple[Record, ...]:
    """The hashtag records of ``tag`` among a lookup's values, one per signer (highest seq)."""
    records: dict[bytes, Record] = {}
    for record in _filed_under(tag_key(tag), values):
        old = records.get(record.signer)
        if record.type == HASHTAG and record.tag == tag and (old is None or record.seq > old.seq):
            records[record.signer] = record
    return tuple(records.values())
