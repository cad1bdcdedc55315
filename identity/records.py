"""Signed records that p2pblog publishes in the DHT.

Theory of operation
-------------------
A record is signed bytes in the same combined form as entries::

    signed  = signature (64 bytes) || content
    content = msgpack [1, type, signer, seq, expires, body]

``signer`` is the 32-byte Ed25519 key that signed, ``seq`` a counter the
signer raises with every new version (highest valid seq wins), ``expires``
integer Unix seconds after which the record is dropped, and ``body`` a map
whose fields depend on ``type``:

``peer``
    "this key is reachable here": ``{"addrs": [[proto, host, port], ...]}``
    with proto ``udp`` (DHT), ``tcp`` (gossip) or ``relay`` (a relay's gossip
    address, for a signer nobody can dial), and host an IP address
    without an IPv6 zone, or a host name (`check_host`).  Optionally
    ``"instance": I``, `INSTANCE_BYTES` random bytes naming the node (the
    home) that signed it, so a node sees another one running with its key
    (`p2pblog.instances`); records of earlier versions have no instance.
``provider``
    "the signer's node holds feed F": ``{"addrs": [...], "feed": F}``.
``name``
    "the signer claims name N": ``{"claimed": T, "name": N, "nonce": X}``
    with ``N`` 1..32 characters of ``a-z 0-9 _ -`` (`check_name`), ``T``
    the Unix second the signer says it first claimed ``N``, and ``X`` an
    8-byte proof-of-work nonce (`identity.pow`).
``hashtag``
    "the signer's posts SEQS use hashtag T": ``{"seqs": [s, ...], "tag": T}``
    with ``T`` a normalised tag (`check_tag`: NFKC, casefolded, 1..64 word
    characters, without the ``#``) and 1..`MAX_TAG_SEQS` distinct seqs in
    ascending order (issue 19, "Track").

Each record lives under a DHT key derived from what it is about
(`peer_key`, `provider_key`, `name_key`, `tag_key`), and a record is only valid under
its own key: nobody can file a record about someone else's feed under a key
of their choosing.  Verification needs ``now`` and never reads a clock, so
the sans-IO cores can call it.  Decoding is bounded and raises only
`RecordError`.

Name claims
-----------
Names are not unique by fiat: any key may claim any name, and several keys
may claim one.  What orders the claimants is cost, then age:

* the stamp: BLAKE2b-256(`NAME_DOMAIN` || signer || claimed (8 bytes,
  big-endian) || name (UTF-8) || nonce) must start with at least
  `NAME_CLAIM_MIN_WORK` zero bits, or the claim is not a record at all.
  The stamp covers signer, name and ``claimed``, so work cannot be reused
  for another key, another name or another date.  Decoding checks it after
  the cheap structural checks (one hash) and before the signature (the
  expensive check), so a flood of unstamped claims costs a node one hash each;
* `order_claims` keeps one claim per signer (its highest seq) and sorts by
  `claim_order`: more work first, then earlier ``claimed``, then signer
  bytes (only so the order is total).  ``claimed`` is self-asserted and can
  be backdated, so it is only a tie-break among claims of equal work.

That is the order of the records alone.  What a user sees is ranked by
`p2pblog.names` (issue 15): relationship to the user first, then the age
the DHT nodes witnessed, and only then work; the resolver shows every
claimant and never picks a stranger (docs/protocol.md, "Name claims").
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from identity.keys import SIGNATURE_BYTES, Identity, SignatureError, verify
from identity.limits import MAX_NAME_CHARS, NAME_CLAIM_MIN_WORK
from identity.pow import NAME_DOMAIN, NONCE_BYTES, name_subject, work_bits

FORMAT_VERSION: Final = 1
PEER: Final = "peer"
PROVIDER: Final = "provider"
NAME: Final = "name"
#: "I, an identity's root, approved device D (pairing ``nonce``)": what a new device
#: looks up to learn its identity (`p2pblog.pairing`).
PAIRING: Final = "pairing"
#: "Here is a root rotation of identity I" (a signed ``rotate`` entry): how followers
#: learn of a recovery whose entry sits in a feed they do not replicate yet.
KEYEVENT: Final = "keyevent"
#: Largest entry a key-event record carries (the record itself is at most MAX_RECORD_BYTES).
MAX_KEYEVENT_ENTRY_BYTES: Final = 768
PAIRING_NONCE_BYTES: Final = 8
HASHTAG: Final = "hashtag"
TYPES: Final = (PEER, PROVIDER, NAME, PAIRING, KEYEVENT, HASHTAG)
#: Longest hashtag (characters, without the ``#``), and most post seqs one hashtag record lists.
MAX_TAG_CHARS: Final = 64
MAX_TAG_SEQS: Final = 8
#: A normalised tag, whole: word characters only (what `p2pblog.search` reads as ``#tag``).
TAG_RE: Final = re.compile(rf"\w{{1,{MAX_TAG_CHARS}}}")
MAX_RECORD_BYTES: Final = 1024
MAX_ADDRS: Final = 8
MAX_HOST_CHARS: Final = 255
#: Longest host name: 253 characters of text (RFC 1035 section 2.3.4's 255 octets on the wire).
MAX_HOSTNAME_CHARS: Final = 253
#: One label of a host name (RFC 1123 section 2.1): letters, digits and hyphens, 1..63 characters,
#: neither first nor last a hyphen.  ASCII only: `re.ASCII` and explicit ranges.
HOSTNAME_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
#: A dotted-quad IPv4 address as `ipaddress` accepts it (decimal octets 0..255, no leading zeros).
_IPV4_RE: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
DHT_KEY_BYTES: Final = 20
#: ``relay``: a relay that reaches the signer, which cannot be dialled itself (its host and
#: gossip port; the dialler opens a circuit through it, `gossip.messages`).
PROTOCOLS: Final = ("udp", "tcp", "relay")
#: A valid name, whole: 1..32 characters of a-z, 0-9, _ and - (ASCII only).
NAME_RE: Final = re.compile(rf"[a-z0-9_-]{{1,{MAX_NAME_CHARS}}}")
_MAX_INT: Final = 2**63 - 1
#: Length of a peer record's optional node instance id.
INSTANCE_BYTES: Final = 16

Address = tuple[str, str, int]
_BODY_FIELDS: Final = {
    PEER: {"addrs"},
    PROVIDER: {"addrs", "feed"},
    NAME: {"claimed", "name", "nonce"},
    PAIRING: {"device", "proof"},
    KEYEVENT: {"entry", "identity"},
    HASHTAG: {"seqs", "tag"},
}
#: Body fields a record may carry besides `_BODY_FIELDS` (absent in records of earlier versions).
_OPTIONAL_FIELDS: Final[dict[str, frozenset[str]]] = {PEER: frozenset({"instance"})}
#: `_BODY_FIELDS` with `_OPTIONAL_FIELDS`: the fields a body may have (worked out once, not per record).
_ALLOWED_FIELDS: Final = {t: f | _OPTIONAL_FIELDS.get(t, frozenset()) for t, f in _BODY_FIELDS.items()}


class RecordError(ValueError):
    """A record is malformed, badly signed, expired or filed under the wrong key."""


def _dht_key(label: bytes, subject: bytes) -> bytes:
    return hashlib.blake2b(label + subject, digest_size=DHT_KEY_BYTES).digest()


def peer_key(public_key: bytes) -> bytes:
    """The 160-bit DHT key under which a key's peer record is stored."""
    return _dht_key(b"p2pblog/peer/", public_key)


def provider_key(feed: bytes) -> bytes:
    """The 160-bit DHT key under which providers of a feed are stored."""
    return _dht_key(b"p2pblog/provider/", feed)


def name_key(name: str) -> bytes:
    """The 160-bit DHT key under which claims of a name are stored."""
    return _dht_key(b"p2pblog/name/", name.encode())


def pairing_key(device: bytes) -> bytes:
    """The 160-bit DHT key under which the approval of a new device is stored."""
    return _dht_key(b"p2pblog/pairing/", device)


def keyevent_key(identity: bytes) -> bytes:
    """The 160-bit DHT key under which an identity's latest root rotation is stored."""
    return _dht_key(b"p2pblog/keyevent/", identity)


def normalize_tag(text: str) -> str:
    """A hashtag as records and lookups spell it: NFKC, casefolded, without a leading ``#``.

    Raises `RecordError` unless the result is a valid tag (`check_tag`)."""
    if not isinstance(text, str):
        raise RecordError("a tag is text")
    return check_tag(unicodedata.normalize("NFKC", text.removeprefix("#")).casefold())


def check_tag(text: str) -> str:
    """``text`` if it is a normalised tag (its own NFKC casefold, 1..64 word characters)."""
    if (
        not isinstance(text, str)
        or TAG_RE.fullmatch(text) is None
        or unicodedata.normalize("NFKC", text).casefold() != text
    ):
        raise RecordError(f"a tag is 1-{MAX_TAG_CHARS} letters, digits or _, normalised (NFKC, casefold)")
    return text


def tag_key(tag: str) -> bytes:
    """The 160-bit DHT key under which hashtag records of a normalised tag are stored."""
    return _dht_key(b"p2pblog/hashtag/", check_tag(tag).encode())


def _check_seqs(seqs: object) -> tuple[int, ...]:
    if not isinstance(seqs, list) or not 1 <= len(seqs) <= MAX_TAG_SEQS:
        raise RecordError(f"'seqs' lists 1..{MAX_TAG_SEQS} post seqs")
    out = tuple(_check_int("a seq", s) for s in seqs)
    if 0 in out or list(out) != sorted(set(out)):
        raise RecordError("'seqs' are distinct seqs >= 1 in ascending order")
    return out


def check_name(text: str) -> str:
    """``text`` if it is a valid name; raises `RecordError` otherwise."""
    if not isinstance(text, str) or NAME_RE.fullmatch(text) is None:
        raise RecordError(f"a name is 1-{MAX_NAME_CHARS} characters of a-z, 0-9, _ and -")
    return text


@dataclass(frozen=True, slots=True)
class Record:
    """A verified record.  ``addrs`` is empty for a name claim and a hashtag record;
    ``feed`` is set for a provider record; ``name``, ``claimed`` and ``nonce`` for a
    name claim, whose stamp carries ``work`` bits (0 for other types); ``tag`` and
    ``seqs`` for a hashtag record."""

    raw: bytes
    type: str
    signer: bytes
    seq: int
    expires: int
    addrs: tuple[Address, ...]
    feed: bytes | None
    name: str | None = None
    claimed: int | None = None
    nonce: bytes | None = None
    work: int = 0
    #: A key-event record's signed entry; a pairing record's proof.
    payload: bytes | None = None
    #: A peer record's node instance id (None: none, as records of earlier versions).
    instance: bytes | None = None

    #: A hashtag record's tag and post seqs.
    tag: str | None = None
    seqs: tuple[int, ...] = ()

    @property
    def dht_key(self) -> bytes:
        if self.tag is not None:
            return tag_key(self.tag)
        if self.type == PAIRING and self.feed is not None:
            return pairing_key(self.feed)
        if self.type == KEYEVENT and self.feed is not None:
            return keyevent_key(self.feed)
        if self.name is not None:
            return name_key(self.name)
        return provider_key(self.feed) if self.feed is not None else peer_key(self.signer)

    def addr(self, proto: str) -> tuple[str, int] | None:
        for p, host, port in self.addrs:
            if p == proto:
                return host, port
        return None


def check_host(host: object) -> str:
    """``host`` if a node can dial it: an IP address without an IPv6 zone, or a host
    name of valid labels (`HOSTNAME_LABEL_RE`, at most `MAX_HOSTNAME_CHARS` before an
    optional final dot).

    Anything else is refused with `RecordError`: a signed record is a stranger's
    input, and the runtime only expects `OSError` from a dial or a send;
    ``trio.open_tcp_stream("..")`` raises `UnicodeError`, ``sendto`` to a host with
    a NUL or to ``"fe80::1%\\x00"`` raises `TypeError` (docs/fuzzing.md).  A zone
    names an interface of the signer's machine, meaningless on ours.
    """
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS:
        raise RecordError("an address host is 1..255 characters of text")
    # Fast path: every record of a peer names hosts, and `ipaddress` is slow; the rest as before.
    if _IPV4_RE.fullmatch(host):
        return host
    if "%" not in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return host
    # A fully qualified name may end in the root's empty label ("example.org."), as
    # `p2pblog run --advertise` allows.
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) <= MAX_HOSTNAME_CHARS and all(HOSTNAME_LABEL_RE.fullmatch(label) for label in labels):
        return host
    raise RecordError("an address host is an IP address without a zone or a host name")


def _check_addrs(addrs: object) -> tuple[Address, ...]:
    if not isinstance(addrs, list) or not 1 <= len(addrs) <= MAX_ADDRS:
        raise RecordError(f"'addrs' must list 1..{MAX_ADDRS} addresses")
    out: list[Address] = []
    for item in addrs:
        if not (isinstance(item, list) and len(item) == 3):
            raise RecordError("an address is [proto, host, port]")
        proto, host, port = item
        if proto not in PROTOCOLS:
            raise RecordError(f"unknown address protocol {proto!r}")
        if type(host) is not str or not _IPV4_RE.fullmatch(host):  # (inline: check_host's fast path)
            host = check_host(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise RecordError("an address port is 1..65535")
        out.append((proto, host, port))
    return tuple(out)


def create_record(
    identity: Identity,
    *,
    type: str,
    seq: int,
    expires: int,
    addrs: Sequence[Address],
    feed: bytes | None = None,
    instance: bytes | None = None,
) -> Record:
    """Sign a record; raises `RecordError` for invalid fields.  ``instance``: a peer
    record's node instance id (`INSTANCE_BYTES`)."""
    body: dict[str, Any] = {"addrs": [list(a) for a in addrs]}
    if instance is not None:
        if type != PEER:
            raise RecordError("only a peer record names a node instance")
        body["instance"] = instance
    if type == PROVIDER:
        if feed is None or len(feed) != 32:
            raise RecordError("a provider record names a 32-byte feed")
        body["feed"] = feed
    elif type != PEER or feed is not None:
        raise RecordError(f"unknown record type {type!r} (name claims: create_name_claim)")
    content = msgpack.packb([FORMAT_VERSION, type, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def pairing_proof(nonce: bytes, identity: bytes, device: bytes) -> bytes:
    """What a pairing record shows instead of the pairing nonce: BLAKE2b-256 keyed with the
    nonce, over the approving identity and the device.  Only who saw the pairing code can
    make one for a given identity, so copying a record for another identity proves nothing."""
    return hashlib.blake2b(identity + device, digest_size=32, key=nonce).digest()


def create_pairing_record(
    identity: Identity, *, device: bytes, nonce: bytes, seq: int, expires: int
) -> Record:
    """Sign the approval of ``device`` (the pairing code's key and nonce) by ``identity``."""
    if not isinstance(device, bytes) or len(device) != 32:
        raise RecordError("a pairing record names a 32-byte device key")
    if not isinstance(nonce, bytes) or len(nonce) != PAIRING_NONCE_BYTES:
        raise RecordError(f"a pairing nonce is {PAIRING_NONCE_BYTES} bytes")
    body = {"device": device, "proof": pairing_proof(nonce, identity.public_key, device)}
    content = msgpack.packb([FORMAT_VERSION, PAIRING, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def create_keyevent_record(
    identity: Identity, *, about: bytes, entry: bytes, seq: int, expires: int
) -> Record:
    """Sign a record carrying ``entry`` (a signed ``rotate`` entry) for identity ``about``."""
    if not isinstance(about, bytes) or len(about) != 32:
        raise RecordError("a key-event record names a 32-byte identity")
    if not isinstance(entry, bytes) or not 0 < len(entry) <= MAX_KEYEVENT_ENTRY_BYTES:
        raise RecordError(f"a key-event record carries an entry of 1..{MAX_KEYEVENT_ENTRY_BYTES} bytes")
    body = {"entry": entry, "identity": about}
    content = msgpack.packb([FORMAT_VERSION, KEYEVENT, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        raise RecordError(f"{name} must be a non-negative integer")
    return value


def create_name_claim(
    identity: Identity, *, name: str, claimed: int, nonce: bytes, seq: int, expires: int
) -> Record:
    """Sign a claim of ``name``; ``nonce`` is the stamp `identity.pow.solve` found for
    ``name_subject(identity.public_key, name, claimed)`` in `NAME_DOMAIN`.

    Raises `RecordError` for a bad name, fields out of range, or a stamp with
    less than `NAME_CLAIM_MIN_WORK` bits."""
    check_name(name)
    for label, value in (("claimed", claimed), ("seq", seq), ("expires", expires)):
        _check_int(label, value)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise RecordError(f"a name claim's nonce is {NONCE_BYTES} bytes")
    body = {"claimed": claimed, "name": name, "nonce": nonce}
    content = msgpack.packb([FORMAT_VERSION, NAME, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def create_hashtag_record(
    identity: Identity, *, tag: str, seqs: Sequence[int], seq: int, expires: int
) -> Record:
    """Sign "my posts ``seqs`` use hashtag ``tag``"; raises `RecordError` for invalid fields."""
    body = {"seqs": sorted(set(seqs)), "tag": check_tag(tag)}
    content = msgpack.packb([FORMAT_VERSION, HASHTAG, identity.public_key, seq, expires, body])
    return decode_record(identity.sign(content), now=None)


def decode_record(
    signed: bytes, *, now: float | None, key: bytes | None = None, check_signature: bool = True
) -> Record:
    """Verify a record; with ``now``, also refuse it once expired; with ``key``,
    refuse it unless it belongs under that DHT key.

    ``check_signature=False`` only for bytes this process already verified."""
    if not isinstance(signed, bytes) or not SIGNATURE_BYTES < len(signed) <= MAX_RECORD_BYTES:
        raise RecordError(f"a record is bytes, at most {MAX_RECORD_BYTES}")
    content = signed[SIGNATURE_BYTES:]
    try:
        obj = msgpack.unpackb(
            content,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_RECORD_BYTES,
            max_str_len=MAX_RECORD_BYTES,
            max_array_len=MAX_ADDRS + 8,
            max_map_len=4,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        raise RecordError("malformed record encoding") from None
    if not isinstance(obj, list) or len(obj) != 6:
        raise RecordError("record content is not a 6-element array")
    version, rtype, signer, seq, expires, body = obj
    if version != FORMAT_VERSION or rtype not in TYPES:
        raise RecordError("unknown record version or type")
    if not isinstance(signer, bytes) or len(signer) != 32:
        raise RecordError("signer must be a 32-byte key")
    _check_int("seq", seq)
    _check_int("expires", expires)
    expected = _BODY_FIELDS[rtype]
    if (
        not isinstance(body, dict)
        or not expected <= set(body) <= _ALLOWED_FIELDS[rtype]
        or list(body) != sorted(body)
    ):
        raise RecordError(f"a {rtype} record body has exactly {sorted(expected)} (sorted)")
    addrs: tuple[Address, ...] = ()
    feed: bytes | None = None
    name: str | None = None
    claimed: int | None = None
    nonce: bytes | None = None
    instance: bytes | None = None
    work = 0
    tag: str | None = None
    seqs: tuple[int, ...] = ()
    payload: bytes | None = None
    if rtype == HASHTAG:
        tag = check_tag(body["tag"])
        seqs = _check_seqs(body["seqs"])
    elif rtype == KEYEVENT:
        feed, payload = body["identity"], body["entry"]
        if not isinstance(feed, bytes) or len(feed) != 32:
            raise RecordError("a key-event record names a 32-byte identity")
        if not isinstance(payload, bytes) or not 0 < len(payload) <= MAX_KEYEVENT_ENTRY_BYTES:
            raise RecordError(f"a key-event record carries an entry of 1..{MAX_KEYEVENT_ENTRY_BYTES} bytes")
    elif rtype == PAIRING:
        feed, payload = body["device"], body["proof"]
        if not isinstance(feed, bytes) or len(feed) != 32:
            raise RecordError("a pairing record names a 32-byte device key")
        if not isinstance(payload, bytes) or len(payload) != 32:
            raise RecordError("a pairing proof is 32 bytes")
    elif rtype == NAME:
        name, claimed, nonce = body["name"], body["claimed"], body["nonce"]
        check_name(name)
        _check_int("claimed", claimed)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise RecordError(f"a name claim's nonce is {NONCE_BYTES} bytes")
    else:
        addrs = _check_addrs(body["addrs"])
        feed = body.get("feed")
        instance = body.get("instance")
        if "instance" in body and (not isinstance(instance, bytes) or len(instance) != INSTANCE_BYTES):
            raise RecordError(f"a peer record's instance is {INSTANCE_BYTES} bytes")
        if rtype == PROVIDER and (not isinstance(feed, bytes) or len(feed) != 32):
            raise RecordError("a provider record names a 32-byte feed")
    if msgpack.packb(obj) != content:
        raise RecordError("record is not canonically encoded")
    if name is not None and claimed is not None and nonce is not None:
        # One hash, before the signature check: unstamped floods stay cheap to refuse.
        work = work_bits(NAME_DOMAIN, name_subject(signer, name, claimed), nonce)
        if work < NAME_CLAIM_MIN_WORK:
            raise RecordError(
                f"name claim has {work} bits of proof of work; at least {NAME_CLAIM_MIN_WORK} are required"
            )
    if check_signature:
        try:
            verify(signer, signed)
        except SignatureError:
            raise RecordError("record signature does not verify") from None
    record = Record(
        signed,
        rtype,
        signer,
        seq,
        expires,
        addrs,
        feed,
        name,
        claimed,
        nonce,
        work,
        payload,
        instance,
        tag,
        seqs,
    )
    if now is not None and expires <= now:
        raise RecordError("record has expired")
    if key is not None and record.dht_key != key:
        raise RecordError("record is filed under a key that is not its own")
    return record


def newest(records: Sequence[Record]) -> Record | None:
    """The record that wins among versions by one signer: highest seq, then bytes."""
    if not records:
        return None
    return max(records, key=lambda r: (r.seq, r.raw))


def claim_order(record: Record) -> tuple[int, int, bytes]:
    """Sort key of a name claim: more work first, then earlier ``claimed``, then signer."""
    if record.type != NAME or record.claimed is None:
        raise RecordError("only name claims have a claim order")
    return (-record.work, record.claimed, record.signer)


def order_claims(records: Iterable[Record]) -> list[Record]:
    """The claimants of one name, best first: each signer's `newest` claim, sorted by
    `claim_order`.  Raises `RecordError` for a record that is not a claim, or
    claims of different names (the caller mixed up keys)."""
    by_signer: dict[bytes, Record] = {}
    names: set[str | None] = set()
    for record in records:
        claim_order(record)
        names.add(record.name)
        old = by_signer.get(record.signer)
        if old is None or (record.seq, record.raw) > (old.seq, old.raw):
            by_signer[record.signer] = record
    if len(names) > 1:
        raise RecordError("claims of different names cannot be ordered together")
    return sorted(by_signer.values(), key=claim_order)
