"""Name claims and proof-of-work stamps: `identity.pow` and the ``name`` record type.

The min-work rule is never patched: every valid claim here carries a real
stamp of at least 20 bits.  The nonces below were found once with
`identity.pow.solve` (the smallest counter reaching the bits asked for) and
are checked against the real hash; `test_solve_finds_the_smallest_counter`
re-derives one of them from zero, and the others from a little below it.
"""

from __future__ import annotations

import contextlib
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import Identity
from identity.limits import MAX_NAME_CHARS, NAME_CLAIM_MIN_WORK
from identity.pow import (
    NAME_DOMAIN,
    NONCE_BYTES,
    NOTICE_DOMAIN,
    PROGRESS_EVERY,
    leading_zero_bits,
    name_subject,
    notice_subject,
    solve,
    work_bits,
)
from identity.records import (
    NAME,
    NAME_RE,
    PEER,
    Record,
    RecordError,
    check_name,
    claim_order,
    create_name_claim,
    create_record,
    decode_record,
    name_key,
    order_claims,
    peer_key,
)

ALICE = Identity(bytes([11]) * 32)
BOB = Identity(bytes([12]) * 32)
CAROL = Identity(bytes([13]) * 32)
EXPIRES = 2_000_000_000

# (identity, name, claimed) -> (nonce counter, work bits): solve(NAME_DOMAIN, subject, bits asked).
STAMPS = {
    (ALICE, "alice", 1_700_000_000): (300_392, 22),  # asked 22 bits
    (BOB, "alice", 1_600_000_000): (2_516_612, 22),  # asked 20, got 22
    (CAROL, "alice", 1_650_000_000): (539_084, 20),  # asked 20
    (BOB, "bob", 1_600_000_000): (6_707_068, 22),  # asked 20, got 22
}


def nonce_of(identity: Identity, name: str, claimed: int) -> bytes:
    counter, _ = STAMPS[identity, name, claimed]
    return counter.to_bytes(NONCE_BYTES, "big")


def claim(identity: Identity, name: str, claimed: int, *, seq: int = 1) -> Record:
    nonce = nonce_of(identity, name, claimed)
    return create_name_claim(identity, name=name, claimed=claimed, nonce=nonce, seq=seq, expires=EXPIRES)


def sign_name_content(identity: Identity, body: object, *, signer: bytes | None = None) -> bytes:
    """A name record built by hand (so that create_name_claim's checks do not stop it)."""
    pub = identity.public_key if signer is None else signer
    return identity.sign(msgpack.packb([1, NAME, pub, 1, EXPIRES, body]))


def low_work_nonce(signer: bytes, name: str, claimed: int) -> bytes:
    subject = name_subject(signer, name, claimed)
    for counter in range(1000):
        nonce = counter.to_bytes(NONCE_BYTES, "big")
        if work_bits(NAME_DOMAIN, subject, nonce) < 4:
            return nonce
    raise AssertionError("unreachable: most nonces have under 4 bits")


# ============================================================================= pow


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"") == 0
    assert leading_zero_bits(b"\x80") == 0
    assert leading_zero_bits(b"\x0f\xff") == 4
    assert leading_zero_bits(b"\x00\x00\x01") == 23
    assert leading_zero_bits(b"\x00" * 4) == 32


def test_stamp_layout_and_work() -> None:
    subject = name_subject(ALICE.public_key, "alice", 1_700_000_000)
    assert subject == ALICE.public_key + (1_700_000_000).to_bytes(8, "big") + b"alice"
    nonce = nonce_of(ALICE, "alice", 1_700_000_000)
    digest = hashlib.blake2b(b"p2pblog/name-claim/v1\x00" + subject + nonce, digest_size=32).digest()
    assert work_bits(NAME_DOMAIN, subject, nonce) == leading_zero_bits(digest) == 22
    assert digest[:2] == b"\x00\x00" and digest[2] < 4
    assert notice_subject(BOB.public_key, bytes(32)) == BOB.public_key + bytes(32)
    # No domain is a prefix of another, so a stamp is good for one purpose only.
    assert not NAME_DOMAIN.startswith(NOTICE_DOMAIN) and not NOTICE_DOMAIN.startswith(NAME_DOMAIN)
    assert NOTICE_DOMAIN == b"p2pblog/mention/v1\x00"
    with pytest.raises(ValueError):
        name_subject(b"short", "alice", 0)
    with pytest.raises(ValueError):
        name_subject(ALICE.public_key, "alice", -1)
    with pytest.raises(ValueError):
        notice_subject(BOB.public_key, bytes(31))


def test_every_listed_stamp_carries_its_work() -> None:
    for (identity, name, claimed), (_, bits) in STAMPS.items():
        subject = name_subject(identity.public_key, name, claimed)
        assert work_bits(NAME_DOMAIN, subject, nonce_of(identity, name, claimed)) == bits
        # The stamp is bound to its domain, signer, name and date.
        assert work_bits(NOTICE_DOMAIN, subject, nonce_of(identity, name, claimed)) < NAME_CLAIM_MIN_WORK
        for other in (
            name_subject(CAROL.public_key if identity is not CAROL else ALICE.public_key, name, claimed),
            name_subject(identity.public_key, name + "x", claimed),
            name_subject(identity.public_key, name, claimed - 1),
        ):
            assert work_bits(NAME_DOMAIN, other, nonce_of(identity, name, claimed)) < NAME_CLAIM_MIN_WORK


def test_work_bits_is_total_on_peer_nonces() -> None:
    subject = b"s"
    assert work_bits(NAME_DOMAIN, subject, "nonce") == 0  # type: ignore[arg-type]
    assert work_bits(NAME_DOMAIN, subject, None) == 0  # type: ignore[arg-type]
    assert work_bits(NAME_DOMAIN, subject, bytes(17)) == 0
    sixteen = bytes(range(16))
    digest = hashlib.blake2b(NAME_DOMAIN + subject + sixteen, digest_size=32).digest()
    assert work_bits(NAME_DOMAIN, subject, sixteen) == leading_zero_bits(digest)
    assert work_bits(NAME_DOMAIN, subject, b"") == leading_zero_bits(
        hashlib.blake2b(NAME_DOMAIN + subject, digest_size=32).digest()
    )


def test_solve_finds_the_smallest_counter() -> None:
    """From zero for one stamp (539,084 tries, about 0.2 s), with progress reports."""
    subject = name_subject(CAROL.public_key, "alice", 1_650_000_000)
    reports: list[int] = []
    nonce = solve(NAME_DOMAIN, subject, 20, progress=reports.append)
    assert nonce == nonce_of(CAROL, "alice", 1_650_000_000)
    assert reports == [PROGRESS_EVERY * i for i in range(1, 539_084 // PROGRESS_EVERY + 1)]
    # The others, from a little below their counter: nothing in between reaches the bits.
    for (identity, name, claimed), (counter, bits) in STAMPS.items():
        subject = name_subject(identity.public_key, name, claimed)
        asked = 22 if identity is ALICE else 20
        assert solve(NAME_DOMAIN, subject, asked, start=counter - 5000) == counter.to_bytes(8, "big")
        assert solve(NAME_DOMAIN, subject, bits, start=counter) == counter.to_bytes(8, "big")


def test_solve_can_be_cancelled_by_progress() -> None:
    class Stop(Exception):
        pass

    def stop(tries: int) -> None:
        raise Stop(tries)

    with pytest.raises(Stop) as info:
        solve(NAME_DOMAIN, b"subject", 64, progress=stop)
    assert info.value.args == (PROGRESS_EVERY,)


@pytest.mark.parametrize("bits", [-1, 65, True, 1.5])
def test_solve_refuses_bad_bits(bits: int) -> None:
    with pytest.raises(ValueError):
        solve(NAME_DOMAIN, b"s", bits)


@pytest.mark.parametrize("start", [-1, 2**64])
def test_solve_refuses_bad_start(start: int) -> None:
    with pytest.raises(ValueError):
        solve(NAME_DOMAIN, b"s", 1, start=start)


@given(subject=st.binary(max_size=80), bits=st.integers(0, 10), start=st.integers(0, 2**64 - 2**16))
@settings(max_examples=60, deadline=None)
def test_solve_is_deterministic_and_smallest(subject: bytes, bits: int, start: int) -> None:
    # ``start`` leaves 2**16 counters: with 10 bits, 4,096 (the old bound) ran out for about
    # one example in 55 at the top edge, which hypothesis tries often (a flaky test).
    nonce = solve(NAME_DOMAIN, subject, bits, start=start)
    assert len(nonce) == NONCE_BYTES
    assert work_bits(NAME_DOMAIN, subject, nonce) >= bits
    assert solve(NAME_DOMAIN, subject, bits, start=start) == nonce
    found = int.from_bytes(nonce, "big")
    assert found >= start
    for counter in range(start, found):
        assert work_bits(NAME_DOMAIN, subject, counter.to_bytes(8, "big")) < bits


def test_solve_zero_bits_is_start() -> None:
    assert solve(NOTICE_DOMAIN, b"", 0, start=7) == (7).to_bytes(8, "big")


# ============================================================================= names


@pytest.mark.parametrize("name", ["a", "alice", "bob_2", "x-y", "0", "_", "a" * MAX_NAME_CHARS])
def test_good_names(name: str) -> None:
    assert check_name(name) == name
    assert NAME_RE.fullmatch(name)


# Empty, upper case, too long, space, dot, non-ASCII (a Cyrillic "a" too), newline, slash.
BAD_NAMES = ["", "Alice", "ALICE", "a" * 33, "al ice", "al.ice", "ålice", "\u0430lice", "😀", "x\n", "a/b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(RecordError, match="a name is 1-32 characters of a-z, 0-9, _ and -"):
        check_name(name)
    with pytest.raises(RecordError, match="a name is"):
        create_name_claim(ALICE, name=name, claimed=1, nonce=bytes(8), seq=1, expires=EXPIRES)
    # Built by hand: the name is checked before the (missing) work.
    body = {"claimed": 1, "name": name, "nonce": bytes(8)}
    with pytest.raises(RecordError, match="a name is"):
        decode_record(sign_name_content(ALICE, body), now=0)


def test_check_name_refuses_non_text() -> None:
    with pytest.raises(RecordError):
        check_name(b"alice")  # type: ignore[arg-type]


# ============================================================================= records


def test_name_claim_round_trip() -> None:
    record = claim(ALICE, "alice", 1_700_000_000, seq=3)
    again = decode_record(record.raw, now=1_800_000_000, key=name_key("alice"))
    assert again == record
    assert (again.type, again.signer, again.seq, again.expires) == (NAME, ALICE.public_key, 3, EXPIRES)
    assert (again.name, again.claimed, again.work) == ("alice", 1_700_000_000, 22)
    assert again.nonce == nonce_of(ALICE, "alice", 1_700_000_000)
    assert again.addrs == () and again.feed is None and again.addr("udp") is None
    assert again.dht_key == name_key("alice") != name_key("bob")
    assert name_key("alice") == hashlib.blake2b(b"p2pblog/name/alice", digest_size=20).digest()
    # The body on the wire: exactly three fields, keys sorted.
    content = msgpack.unpackb(record.raw[64:])
    assert content[5] == {"claimed": 1_700_000_000, "name": "alice", "nonce": record.nonce}
    assert list(content[5]) == ["claimed", "name", "nonce"]


def test_the_example_in_docs_protocol() -> None:
    """docs/protocol.md, "Name claims": the stamp input, its digest, the content and the key."""
    nonce = nonce_of(ALICE, "alice", 1_700_000_000)
    stamp_input = NAME_DOMAIN + name_subject(ALICE.public_key, "alice", 1_700_000_000) + nonce
    assert stamp_input.hex() == (
        "703270626c6f672f6e616d652d636c61696d2f763100"
        "66be7e332c7a453332bd9d0a7f7db055f5c5ef1a06ada66d98b39fb6810c473a"
        "000000006553f100" + "616c696365" + "0000000000049568"
    )
    digest = hashlib.blake2b(stamp_input, digest_size=32).hexdigest()
    assert digest == "000003c304acf95a49223398b91cc7ea545c78135377e1f22a2d9b99178190b1"
    record = claim(ALICE, "alice", 1_700_000_000)
    assert record.raw[64:].hex() == (
        "9601a46e616d65c42066be7e332c7a453332bd9d0a7f7db055f5c5ef1a06ada66d98b39fb6810c473a01ce7735940083"
        "a7636c61696d6564ce6553f100a46e616d65a5616c696365a56e6f6e6365c4080000000000049568"
    )
    assert name_key("alice").hex() == "690453bb47a74486513e62638f64759ca8c38cb6"
    assert ALICE.fingerprint == "v6l8uvev0fzn"


def test_re_signing_reuses_the_stamp() -> None:
    """The stamp covers signer, name and date, not seq or expiry: republishing costs no work."""
    first, second = claim(BOB, "alice", 1_600_000_000, seq=1), claim(BOB, "alice", 1_600_000_000, seq=2)
    assert first.nonce == second.nonce and first.work == second.work == 22


def test_forged_claims_are_refused() -> None:
    record = claim(ALICE, "alice", 1_700_000_000)
    # BOB signs ALICE's content: the stamp is fine, the signature is not.
    with pytest.raises(RecordError, match="signature"):
        decode_record(BOB.sign(record.raw[64:]), now=0)
    # A higher seq written over ALICE's bytes.
    content = msgpack.unpackb(record.raw[64:])
    content[3] = 99
    with pytest.raises(RecordError, match="signature"):
        decode_record(record.raw[:64] + msgpack.packb(content), now=0)
    # BOB's key as signer with ALICE's stamp: the stamp does not cover BOB.
    content[2] = BOB.public_key
    with pytest.raises(RecordError, match="proof of work"):
        decode_record(BOB.sign(msgpack.packb(content)), now=0)


def test_insufficient_work_is_refused() -> None:
    claimed = 1_700_000_000
    nonce = low_work_nonce(ALICE.public_key, "alice", claimed)
    work = work_bits(NAME_DOMAIN, name_subject(ALICE.public_key, "alice", claimed), nonce)
    signed = sign_name_content(ALICE, {"claimed": claimed, "name": "alice", "nonce": nonce})
    message = f"name claim has {work} bits of proof of work; at least 20 are required"
    with pytest.raises(RecordError, match=message):
        decode_record(signed, now=0)
    with pytest.raises(RecordError, match="proof of work"):
        create_name_claim(ALICE, name="alice", claimed=claimed, nonce=nonce, seq=1, expires=EXPIRES)
    # The work is checked before the signature: a bad signature on an unstamped
    # claim is reported (and refused) as missing work, without verifying it.
    with pytest.raises(RecordError, match="proof of work"):
        decode_record(bytes(64) + signed[64:], now=0)
    # The date is covered too: moving a good claim earlier voids its stamp.
    good = nonce_of(ALICE, "alice", claimed)
    with pytest.raises(RecordError, match="proof of work"):
        create_name_claim(ALICE, name="alice", claimed=claimed - 1, nonce=good, seq=1, expires=EXPIRES)


def test_wrong_key_and_expiry_are_refused() -> None:
    record = claim(ALICE, "alice", 1_700_000_000)
    for key in (name_key("bob"), peer_key(ALICE.public_key), name_key("Alice")):
        with pytest.raises(RecordError, match="not its own"):
            decode_record(record.raw, now=0, key=key)
    decode_record(record.raw, now=EXPIRES - 1)
    with pytest.raises(RecordError, match="expired"):
        decode_record(record.raw, now=EXPIRES)


GOOD_BODY = {"claimed": 1_700_000_000, "name": "alice", "nonce": (300_392).to_bytes(8, "big")}


@pytest.mark.parametrize(
    "body",
    [
        {"claimed": 1_700_000_000, "name": "alice"},
        {**GOOD_BODY, "addrs": [["udp", "h", 1]]},
        {**GOOD_BODY, "nonce": bytes(7)},
        {**GOOD_BODY, "nonce": bytes(9)},
        {**GOOD_BODY, "nonce": "00000000"},
        {**GOOD_BODY, "claimed": -1},
        {**GOOD_BODY, "claimed": True},
        {**GOOD_BODY, "claimed": 2**63},
        {**GOOD_BODY, "claimed": 1.5},
        {**GOOD_BODY, "name": 5},
        {**GOOD_BODY, "name": b"alice"},
        {"name": "alice", "claimed": 1_700_000_000, "nonce": GOOD_BODY["nonce"]},  # keys out of order
        [1_700_000_000, "alice", GOOD_BODY["nonce"]],
    ],
)
def test_invalid_bodies_are_refused(body: object) -> None:
    assert decode_record(sign_name_content(ALICE, GOOD_BODY), now=0).work == 22
    with pytest.raises(RecordError):
        decode_record(sign_name_content(ALICE, body), now=0)


def test_create_name_claim_refuses_bad_fields() -> None:
    good = nonce_of(ALICE, "alice", 1_700_000_000)
    fields = {"name": "alice", "claimed": 1_700_000_000, "nonce": good, "seq": 1, "expires": EXPIRES}
    create_name_claim(ALICE, **fields)  # type: ignore[arg-type]
    for change in (
        {"nonce": good + b"\x00"},
        {"nonce": good[:7]},
        {"claimed": -1},
        {"claimed": 2**64},
        {"seq": -1},
        {"seq": 2**63},
        {"expires": True},
    ):
        with pytest.raises(RecordError):
            create_name_claim(ALICE, **{**fields, **change})  # type: ignore[arg-type]


def test_peer_and_provider_records_have_no_work() -> None:
    record = create_record(ALICE, type=PEER, seq=1, expires=10, addrs=[("udp", "h", 1)])
    assert (record.name, record.claimed, record.nonce, record.work) == (None, None, None, 0)
    with pytest.raises(RecordError):
        claim_order(record)


# ============================================================================= ordering


def test_claimants_are_ordered_by_work_then_date() -> None:
    alice = claim(ALICE, "alice", 1_700_000_000)  # 22 bits, claimed last
    bob = claim(BOB, "alice", 1_600_000_000)  # 22 bits, claimed first
    carol = claim(CAROL, "alice", 1_650_000_000)  # 20 bits
    # Equal work: the earlier claim first.  More work beats an earlier claim.
    assert order_claims([carol, alice, bob]) == [bob, alice, carol]
    assert claim_order(bob) == (-22, 1_600_000_000, BOB.public_key)
    # One per signer: the highest seq.
    bob2 = claim(BOB, "alice", 1_600_000_000, seq=2)
    assert order_claims([bob, carol, bob2, alice, bob]) == [bob2, alice, carol]
    assert order_claims([]) == []
    with pytest.raises(RecordError, match="different names"):
        order_claims([alice, claim(BOB, "bob", 1_600_000_000)])
    with pytest.raises(RecordError):
        order_claims([alice, create_record(BOB, type=PEER, seq=1, expires=10, addrs=[("udp", "h", 1)])])


def fake_claim(signer: int, seq: int, work: int, claimed: int) -> Record:
    """An unsigned stand-in: `order_claims` only reads the fields."""
    raw = bytes([signer, seq, work]) + claimed.to_bytes(8, "big")
    return Record(raw, NAME, bytes([signer]) * 32, seq, EXPIRES, (), None, "n", claimed, bytes(8), work)


@given(
    st.lists(
        st.builds(fake_claim, st.integers(0, 5), st.integers(0, 3), st.integers(20, 24), st.integers(0, 5)),
        max_size=20,
    )
)
def test_order_claims_matches_a_model(records: list[Record]) -> None:
    best: dict[bytes, Record] = {}
    for r in records:
        if r.signer not in best or (r.seq, r.raw) > (best[r.signer].seq, best[r.signer].raw):
            best[r.signer] = r
    expected = sorted(best.values(), key=lambda r: (-r.work, r.claimed, r.signer))
    assert order_claims(records) == expected
    assert order_claims(list(reversed(records))) == expected


# ============================================================================= fuzz


@given(st.binary(max_size=1100))
def test_decoder_raises_only_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode_record(data, now=0)


@given(st.data())
def test_bit_flips_of_a_claim_are_refused(data: st.DataObject) -> None:
    record = claim(ALICE, "alice", 1_700_000_000)
    bit = data.draw(st.integers(0, len(record.raw) * 8 - 1))
    mutated = bytearray(record.raw)
    mutated[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(RecordError):
        decode_record(bytes(mutated), now=0)


@given(st.data())
def test_edits_of_a_claim_raise_only_record_error(data: st.DataObject) -> None:
    raw = bytearray(claim(BOB, "alice", 1_600_000_000).raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[at : at + data.draw(st.integers(1, 8))]
        elif action == "replace" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:]
    with contextlib.suppress(RecordError):
        decode_record(bytes(raw), now=0, key=name_key("alice"))


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@given(
    claimed=values | st.integers(0, 2**63),
    name=values | st.sampled_from(["alice", "Alice", ""]),
    nonce=values | st.binary(min_size=8, max_size=8),
    extra=st.dictionaries(st.sampled_from(["addrs", "feed", "x"]), values, max_size=1),
)
@settings(max_examples=200)
def test_signed_name_bodies_raise_only_record_error(
    claimed: object, name: object, nonce: object, extra: dict[str, object]
) -> None:
    body = {"claimed": claimed, "name": name, "nonce": nonce, **extra}
    with contextlib.suppress(RecordError):
        decode_record(sign_name_content(ALICE, body), now=0)
