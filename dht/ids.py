"""Node ids, record keys, XOR distance and contacts: the vocabulary of the DHT.

Theory of operation
-------------------
Kademlia (Maymounkov & Mazieres 2002, section 2) gives every node and every
record key a 160-bit identifier and measures closeness with the XOR metric
``d(x, y) = x XOR y`` read as an unsigned integer.  Everything else in `dht`
(the routing table, lookups, the record store) is phrased in terms of the
functions here.

Ids are 20 bytes, compared and XORed as big-endian integers, exactly as the
``kademlia`` package does (``Node.long_id = int(node_id.hex(), 16)``), so
"closest" means the same thing on a p2pblog node and on a ``kademlia`` node.

A p2pblog node's id is derived from its Ed25519 public key: the first 20 bytes
of BLAKE2b-512 of the 32-byte key.  Why this and not SHA-1:

* The id only has to be uniform and bound to the key; both hashes give that,
  and a node that wants an id near some target has to grind keys just as hard
  with either (the cost is set by the 160-bit output, not by the hash).
* BLAKE2b is already the project's hash (entry ids are BLAKE2b-256), it is
  faster than SHA-1 in CPython's hashlib, and SHA-1 is deprecated for new
  designs since its practical collisions (SHAttered, 2017).  Using it would
  invite the question of whether the collisions matter here.
* Nothing on the wire checks how an id was made: the ``kademlia`` package
  picks random ids (``digest(random.getrandbits(255))``) and never verifies a
  peer's id.  The key-to-id binding only matters where p2pblog's signed peer
  records tie a key to an id and addresses.

Addresses are shared: `shared_address` hands out one tuple per distinct
``(host, port)``, so the many places that hold a peer's address (routing
table, rate limits, lookups) hold one object, not a copy each from every
datagram and every answer that named it.

Record keys are whatever 20-byte string the layer above chooses.  For interop
with ``kademlia.network.Server.set(key, value)`` (which stores under
``sha1(key)``) `kademlia_key` computes that same digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from identity.keys import PUBLIC_KEY_BYTES

#: Bytes in a node id or record key (160 bits, paper section 2).
ID_BYTES: Final = 20
ID_BITS: Final = ID_BYTES * 8
#: Replication parameter k and lookup concurrency alpha (paper section 2.1 / 2.3).
K: Final = 20
ALPHA: Final = 3

#: A UDP address as the driver reports it: (host, port).  IPv6 drivers pass
#: only the first two fields of the socket address, as ``kademlia`` does.
Address = tuple[str, int]

#: Distinct addresses `shared_address` remembers before it starts afresh.
MAX_SHARED_ADDRESSES: Final = 1 << 14
_shared: dict[Address, Address] = {}


def shared_address(addr: Address) -> Address:
    """The one tuple equal to ``addr`` that everything holding it shares (module docstring).

    Process-wide and bounded: when `MAX_SHARED_ADDRESSES` are known the table
    starts afresh (held tuples stay valid; only later copies stop being shared).
    Only object identity depends on it, never a result.
    """
    found = _shared.get(addr)
    if found is not None:
        return found
    if len(_shared) >= MAX_SHARED_ADDRESSES:
        _shared.clear()
    _shared[addr] = addr
    return addr


def node_id_from_public_key(public_key: bytes) -> bytes:
    """Return the DHT node id of an Ed25519 public key (see the module docstring)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return hashlib.blake2b(public_key).digest()[:ID_BYTES]


def kademlia_key(name: bytes | str) -> bytes:
    """Return the record key ``kademlia.network.Server`` uses for ``name``.

    Same as ``kademlia.utils.digest``: SHA-1 of the bytes, or of the UTF-8 text.
    """
    raw = name.encode("utf-8") if isinstance(name, str) else name
    return hashlib.sha1(raw).digest()


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an unsigned integer (paper section 2.1)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def is_id(value: object) -> bool:
    """True for a well-formed 20-byte id (the only shape the core accepts)."""
    return isinstance(value, bytes) and len(value) == ID_BYTES


@dataclass(frozen=True, slots=True)
class Contact:
    """A node as the DHT knows it: its id and the UDP address it answered from."""

    node_id: bytes
    addr: Address

    def __repr__(self) -> str:
        return f"Contact({self.node_id.hex()[:12]}.., {self.addr[0]}:{self.addr[1]})"
