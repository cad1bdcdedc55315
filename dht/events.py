"""Events the DHT core reports to its driver (frozen, slotted, past tense).

Theory of operation
-------------------
`DhtCore.next_event` returns these one at a time.  Every command that starts
a query (`DhtCore.start_lookup`, `start_get`, `start_put`, `bootstrap`,
`start_add_provider`, `start_get_providers`) returns a ``query_id``; exactly
one *result* event with that id follows:

========================  =====================================================
command                   result event
========================  =====================================================
``start_lookup``          `LookupFinished`
``bootstrap``             `BootstrapFinished`
``start_get``             `ValueFound` or `ValueNotFound`
``start_put``             `PutFinished`
``start_add_provider``    `ProvidersAdded`
``start_get_providers``   `ProvidersFound` (``values`` may be empty)
========================  =====================================================

The others are *notices* with no query id: `RecordStored` (a peer stored a
value here), `ProviderStored` (a peer added a provider here),
`PeerMisbehaved` (a peer sent bytes that break the protocol) and
`DatagramDropped` (a datagram was ignored for an ordinary reason: rate limit,
unknown RPC, an answer that arrived after we gave up).  Every notice is also
counted in `DhtCore.stats`; when the driver lets notices pile up beyond
`MAX_QUEUED_NOTICES` they are only counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dht.ids import Address, Contact
from dht.wire import Value

#: Notices kept in the queue before further ones are only counted.
MAX_QUEUED_NOTICES: Final = 1024


@dataclass(frozen=True, slots=True)
class LookupFinished:
    """A FIND_NODE lookup ended; ``closest`` are the k nearest peers that answered."""

    query_id: int
    target: bytes
    closest: tuple[Contact, ...]
    #: Peers queried, and peers whose query failed (cost metrics).
    queried: int
    failed: int
    #: Sequential RPCs that reached the nearest peer that answered.
    hops: int = 0


@dataclass(frozen=True, slots=True)
class BootstrapFinished:
    """The join procedure ended: seeds pinged, own id looked up (paper 2.3)."""

    query_id: int
    #: Seed addresses that answered the ping.
    seeds_answered: int
    closest: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class ValueFound:
    """A FIND_VALUE lookup found valid values; ``value`` is the selector's pick."""

    query_id: int
    key: bytes
    value: Value
    #: How many valid values were collected (>= 1; the quorum, or fewer when
    #: the lookup ran out of peers first).
    answers: int
    queried: int
    #: Sequential RPCs that reached the first value (0: we held it ourselves).
    hops: int = 0


@dataclass(frozen=True, slots=True)
class ValueNotFound:
    """A FIND_VALUE lookup asked the k closest nodes and none held a valid value."""

    query_id: int
    key: bytes
    queried: int


@dataclass(frozen=True, slots=True)
class PutFinished:
    """A put ended: ``stored_at`` accepted the value, ``refused`` answered false, the rest failed."""

    query_id: int
    key: bytes
    stored_at: tuple[Contact, ...]
    refused: tuple[Contact, ...]
    failed: tuple[Contact, ...]

    @property
    def ok(self) -> bool:
        return bool(self.stored_at)


@dataclass(frozen=True, slots=True)
class ProvidersAdded:
    """An announcement ended: the k closest nodes to ``key`` were sent ``p2pb_add_provider``.

    ``stored_at`` accepted the value, ``refused`` answered false, the rest
    failed (or are ``kademlia`` nodes, which do not answer p2pblog's RPCs).
    """

    query_id: int
    key: bytes
    stored_at: tuple[Contact, ...]
    refused: tuple[Contact, ...]
    failed: tuple[Contact, ...]

    @property
    def ok(self) -> bool:
        return bool(self.stored_at)


@dataclass(frozen=True, slots=True)
class ProvidersFound:
    """A ``p2pb_get_providers`` lookup ended with these valid values, one per provider.

    Values come in order of arrival (ours first, if we hold any); there are
    fewer than ``want`` when the k closest nodes to ``key`` had no more.
    """

    query_id: int
    key: bytes
    values: tuple[bytes, ...]
    queried: int
    #: With ``start_get_providers(seen=True)``: per value, the first-seen times
    #: (Unix seconds) its provider was reported with, ours and one per answering
    #: node (`dht.wire`, issue 15); otherwise empty.
    seen: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordStored:
    """A peer's STORE put a new or better value in our record store."""

    key: bytes
    value: Value
    source: Contact


@dataclass(frozen=True, slots=True)
class ProviderStored:
    """A peer's ``p2pb_add_provider`` added a new or better provider value here."""

    key: bytes
    value: bytes
    source: Contact


@dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """A peer sent something that breaks the protocol; the datagram was dropped."""

    addr: Address
    node_id: bytes | None
    reason: str


@dataclass(frozen=True, slots=True)
class DatagramDropped:
    """A datagram was dropped for an ordinary reason (not a protocol violation)."""

    addr: Address
    reason: str


Event = (
    LookupFinished
    | BootstrapFinished
    | ValueFound
    | ValueNotFound
    | PutFinished
    | ProvidersAdded
    | ProvidersFound
    | RecordStored
    | ProviderStored
    | PeerMisbehaved
    | DatagramDropped
)
