"""dht: a sans-IO Kademlia node that speaks the ``kademlia`` package's wire format.

Modules
-------
`dht.ids`        node ids (from Ed25519 keys), record keys, XOR distance, `Contact`
`dht.wire`       rpcudp framing and the ``ping``/``store``/``find_node``/``find_value``
                 shapes, plus p2pblog's ``p2pb_add_provider``/``p2pb_get_providers``;
                 `WireError` is the only error peer bytes can cause
`dht.routing`    `RoutingTable`: 160 k-buckets, ping-before-evict, exact k-closest
`dht.lookup`     `ClosestPeersLookup` / `ValueLookup` / `ProvidersLookup`: iterative
                 lookups as pure state machines (rust-libp2p ``closest.rs``)
`dht.records`    `RecordStore`: validator and selector hooks, expiry, republish
`dht.providers`  `ProviderStore`: many values per key, one per provider (libp2p's
                 provider records), bounded, with expiry and republish
`dht.ratelimit`  `TokenBucketLimiter`: datagrams per host (IPv4 address, IPv6 /64);
                 `AmplificationGuard`: bytes to unverified addresses (3x received)
`dht.rpc`        `RpcTracker`: our requests in flight, message ids, retransmits, timeouts
`dht.queries`    one class per kind of query (get, put, bootstrap, providers, ...):
                 its request and its completion
`dht.events`     what the core reports
`dht.core`       `DhtCore`, which composes all of the above

Nothing here imports trio, socket, asyncio, time or a global RNG; every input
carries ``now`` and randomness comes from an injected ``random.Random``.
This package imports only `identity` (keys, `identity.limits`, `identity.errors`,
`identity.pacing`).

Driver contract
---------------
A driver (the trio runtime, the simulator, a test's in-memory network) owns
one UDP socket and one timer per core, and runs this loop::

    core = DhtCore(node_id_from_public_key(identity.public_key), random.Random(seed), now())

    def flush():                              # after EVERY input below
        for data, addr in core.datagrams_to_send():
            sock.sendto(data, addr)           # best effort; a send error is a lost datagram
        while (event := core.next_event()) is not None:
            handle(event)                     # match on query_id for command results
        rearm_timer(core.get_timer())         # None: no timer needed

    on datagram (data, (host, port)):  core.receive_datagram(data, (host, port), now()); flush()
    on timer expiry:                   core.handle_timer(now()); flush()
    on user command:                   qid = core.start_get(key, now()); flush()

Rules:

* ``now`` is seconds on a monotonic clock and never decreases between calls
  (a decrease raises `LocalProtocolError`).  The simulator passes virtual time.
* ``addr`` is ``(host, port)`` with ``host`` the textual IP the datagram came
  from; IPv6 drivers drop flowinfo and scope id, as ``kademlia`` does.  Peers
  learn our address from the datagrams we send, so the socket must send from
  the address it listens on.
* Datagrams are at most `dht.wire.MAX_WIRE_DATAGRAM_BYTES` (21 + 8192) bytes;
  a driver may drop larger ones unread, or hand them over to be counted.
* `DhtCore.handle_timer` may be called early, late or repeatedly; it does
  whatever is due.  Calling it only when ``now >= get_timer()`` is enough.
* Commands return a query id; exactly one result event carries it
  (`LookupFinished`, `BootstrapFinished`, `ValueFound` / `ValueNotFound`,
  `PutFinished`, `ProvidersAdded`, `ProvidersFound`).  A query never blocks
  the core: several run at once.
* Notices (`RecordStored`, `ProviderStored`, `PeerMisbehaved`,
  `DatagramDropped`) are also
  counted in `DhtCore.stats`; a driver that does not care may ignore them.
* Bad bytes from a peer never raise.  `LocalProtocolError` means the driver
  or the layer above misused the API.
* Strangers are verified before they count: a peer enters the routing table
  only by answering one of our requests, and answers to an address that has
  not proved it receives there are at most 3 times what it sent (`dht.core`,
  "Strangers").  A stranger's first STORE, ``p2pb_add_provider`` or large
  answer therefore waits one round trip (our verification ping).

The layer above (p2pblog's NodeCore) plugs its record rules in with
``DhtCore(..., validator=..., selector=..., provider_validator=...)``: the
validator checks signed records (signature, expiry), the selector picks the
highest seq, the provider validator checks a provider value and names the
provider it speaks for.  All get peers' values and must not raise (see
`dht.records`, `dht.providers`).
"""

from __future__ import annotations

from dht.core import DhtConfig, DhtCore
from dht.events import (
    BootstrapFinished,
    DatagramDropped,
    Event,
    LookupFinished,
    PeerMisbehaved,
    ProvidersAdded,
    ProvidersFound,
    ProviderStored,
    PutFinished,
    RecordStored,
    ValueFound,
    ValueNotFound,
)
from dht.ids import ALPHA, ID_BYTES, Address, Contact, K, distance, kademlia_key, node_id_from_public_key
from dht.lookup import ClosestPeersLookup, LookupState, PeerState, ProvidersLookup, ValueLookup
from dht.providers import ProviderStore, ProviderValidator
from dht.records import RecordStore, Selector, StoreOutcome, Validator
from dht.routing import RoutingTable, UpdateOutcome
from dht.wire import Value, WireError

__all__ = [
    "ALPHA",
    "ID_BYTES",
    "Address",
    "BootstrapFinished",
    "ClosestPeersLookup",
    "Contact",
    "DatagramDropped",
    "DhtConfig",
    "DhtCore",
    "Event",
    "K",
    "LookupFinished",
    "LookupState",
    "PeerMisbehaved",
    "PeerState",
    "ProviderStore",
    "ProviderStored",
    "ProviderValidator",
    "ProvidersAdded",
    "ProvidersFound",
    "ProvidersLookup",
    "PutFinished",
    "RecordStore",
    "RecordStored",
    "RoutingTable",
    "Selector",
    "StoreOutcome",
    "UpdateOutcome",
    "Validator",
    "Value",
    "ValueFound",
    "ValueLookup",
    "ValueNotFound",
    "WireError",
    "distance",
    "kademlia_key",
    "node_id_from_public_key",
]
