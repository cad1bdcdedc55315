"""Fuzz `identity.records.decode_record`: arbitrary bytes as a signed DHT record from a stranger.

Run: ``python fuzz/records.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

Peer records, provider records and name claims arrive as DHT values from
anyone, and anyone can sign a record with their own key, so each input is
decoded as it is, with ``check_signature=False`` (the cheap checks), and as
content signed by `FUZZ_AUTHOR`, like the entry harness.

The contract: `decode_record` returns a `Record` or raises `RecordError`;
anything else is a crash.  What decodes round-trips: ``record.raw`` is the
input and decodes again to an equal record.  Every address of a peer or
provider record must be one the node can dial without an exception other
than ``OSError`` (an IP without a scope, or a host name IDNA can encode,
without NUL): the runtime caught only ``OSError`` around a dial.  The
decoder checks it since this harness found the gap (`TOLERATE_UNDIALABLE_HOSTS`
is off; tests/test_fuzz_regressions.py holds the finding).
"""

from __future__ import annotations

import ipaddress
import sys

import atheris
from launch import run, use_checkout
from msgpack_mutator import MsgpackMutator

use_checkout()

with atheris.instrument_imports(include=["identity"]):
    from samples import FUZZ_AUTHOR, OTHER_KEY

    from identity.keys import SIGNATURE_BYTES
    from identity.limits import NAME_CLAIM_MIN_WORK
    from identity.pow import NAME_DOMAIN, name_subject, solve
    from identity.records import (
        INSTANCE_BYTES,
        MAX_ADDRS,
        MAX_HOST_CHARS,
        MAX_RECORD_BYTES,
        MAX_TAG_SEQS,
        PEER,
        PROTOCOLS,
        PROVIDER,
        TYPES,
        RecordError,
        create_hashtag_record,
        create_name_claim,
        create_record,
        decode_record,
    )

MAX_LEN = MAX_RECORD_BYTES + 64
#: Set to True to skip the dialable-host check (the finding: identity/records.py
#: let any 1..255-character host pass, and trio raised ``UnicodeError`` dialling
#: e.g. ``".."``; fixed, with regression tests in tests/test_fuzz_regressions.py).
TOLERATE_UNDIALABLE_HOSTS = False


def assert_dialable(host: str) -> None:
    if TOLERATE_UNDIALABLE_HOSTS:
        return
    assert "\x00" not in host, "a host with a NUL"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host.encode("idna")  # UnicodeError: a name trio cannot look up
    else:
        assert getattr(address, "scope_id", None) is None, "an IPv6 address with a scope"


def check_decoded(raw: bytes, *, check_signature: bool = True) -> None:
    try:
        record = decode_record(raw, now=None, check_signature=check_signature)
    except RecordError:
        return
    assert record.raw == raw
    assert decode_record(record.raw, now=None, check_signature=check_signature) == record
    for _, host, _ in record.addrs:
        assert_dialable(host)


def check(data: bytes) -> None:
    check_decoded(data)
    check_decoded(data, check_signature=False)
    check_decoded(FUZZ_AUTHOR.sign(data))


def seeds() -> list[bytes]:
    """A peer record (of an earlier version, and with a node instance), a provider record, a
    name claim (its stamp solved once, about a second) and a hashtag record."""
    addrs = [("udp", "192.0.2.1", 7000), ("tcp", "2001:db8::1", 7000)]
    claimed = 1_700_000_000
    nonce = solve(NAME_DOMAIN, name_subject(FUZZ_AUTHOR.public_key, "fuzz", claimed), NAME_CLAIM_MIN_WORK)
    records = [
        create_record(FUZZ_AUTHOR, type=PEER, seq=1, expires=2_000_000_000, addrs=addrs),
        create_record(
            FUZZ_AUTHOR, type=PEER, seq=4, expires=2_000_000_000, addrs=addrs, instance=bytes(INSTANCE_BYTES)
        ),
        create_record(
            FUZZ_AUTHOR, type=PROVIDER, seq=2, expires=2_000_000_000, addrs=addrs[1:], feed=OTHER_KEY
        ),
        create_name_claim(
            FUZZ_AUTHOR, name="fuzz", claimed=claimed, nonce=nonce, seq=3, expires=2_000_000_000
        ),
        create_hashtag_record(FUZZ_AUTHOR, tag="p2p", seqs=[1, 5, 9], seq=4, expires=2_000_000_000),
    ]
    raws = [record.raw for record in records]
    return [*raws, *(raw[SIGNATURE_BYTES:] for raw in raws)]


def mutator() -> MsgpackMutator:
    """Mutates the content toward each record type's fields and the address edges."""
    fields = ("addrs", "feed", "instance", "name", "claimed", "nonce", "seqs", "tag")
    edges = (
        "..",
        "a" * 64,
        "x" * (MAX_HOST_CHARS + 1),
        "fe80::1%eth0",
        "Fuzz",
        "\uff23\uff41\uff46e\u0301",
        list(range(1, MAX_TAG_SEQS + 2)),
        "f" * 33,
        [["tcp", "10.0.0.1", 1]] * (MAX_ADDRS + 1),
        bytes(8),
        bytes(INSTANCE_BYTES + 1),
    )
    return MsgpackMutator(headers=(0, SIGNATURE_BYTES), values=(*TYPES, *PROTOCOLS, *fields, *edges))


def main() -> None:
    run("records", check, seeds=seeds(), max_len=MAX_LEN, mutator=mutator())


if __name__ == "__main__":
    sys.exit(main())
