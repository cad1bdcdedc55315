"""The node's pending DHT queries: one table of continuations keyed by query id.

Theory of operation
-------------------
Every DHT query the node starts for a p2pblog purpose (resolve a key's peer
record, publish our own, announce a feed, find a feed's providers, claim or
resolve a name) is filed here under the query id `dht.DhtCore` returned,
as one small continuation object of the query's kind.  When the DHT reports
the query's end (`ValueFound`, `PutFinished`, `ProvidersFound`, ...),
`PendingQueries.finish` pops the continuation and asks it to turn the DHT's
answer into the node's event (`PeerResolved`, `ProviderAnnounced`, ...):
each kind knows its own completion, in one place, as rust-libp2p kad's
``QueryInfo`` variants do.

``consume`` marks a query one of the node's parts started for itself (a
search for a followed feed's providers, a retry of an announce): the node
routes its result back to that part.  Every result is reported as an event
either way.  A query the table does not know (a bare DHT lookup) finishes
as the DHT's own event.
"""

from __future__ import annotations

from dataclasses import dataclass

from dht import ProvidersFound, ValueFound
from dht.events import Event as DhtEvent
from identity.records import (
    KEYEVENT,
    PAIRING,
    PEER,
    RecordError,
    decode_record,
    keyevent_key,
    pairing_key,
    peer_key,
)
from p2pblog.events import (
    HashtagAnnounced,
    HashtagsFound,
    KeyEventResolved,
    NameClaimPublished,
    NameResolved,
    PairingResolved,
    PeerNotResolved,
    PeerResolved,
    ProviderAnnounced,
    ProvidersResolved,
    RecordPublished,
)
from p2pblog.names import network_order
from p2pblog.record_rules import verified_claims, verified_hashtags, verified_providers

Result = (
    HashtagsFound
    | HashtagAnnounced
    | PeerResolved
    | PeerNotResolved
    | RecordPublished
    | ProviderAnnounced
    | ProvidersResolved
    | NameClaimPublished
    | NameResolved
    | PairingResolved
    | KeyEventResolved
)


def _stored(event: DhtEvent) -> int:
    """How many nodes a store-kind query reached (0 for any other ending)."""
    return len(getattr(event, "stored_at", ()))


@dataclass(slots=True)
class ResolvePeer:
    """A FIND_VALUE for ``key``'s peer record."""

    key: bytes
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        if isinstance(event, ValueFound) and isinstance(event.value, bytes):
            try:
                record = decode_record(event.value, now=None, key=peer_key(self.key))
            except RecordError:
                record = None
            if record is not None and record.type == PEER and record.signer == self.key:
                return PeerResolved(qid, self.key, record, event.hops)
        return PeerNotResolved(qid, self.key)


@dataclass(slots=True)
class FindPairing:
    """A GET_PROVIDERS for the approvals of ``device`` (pairing records naming it)."""

    device: bytes
    consume: bool = True

    def finish(self, qid: int, event: DhtEvent) -> Result:
        found = []
        for value in event.values if isinstance(event, ProvidersFound) else ():
            try:
                record = decode_record(value, now=None, key=pairing_key(self.device))
            except RecordError:
                continue
            if record.type == PAIRING and record.feed == self.device and record.payload is not None:
                found.append((record.signer, record.payload))
        return PairingResolved(qid, self.device, tuple(found))


@dataclass(slots=True)
class FindKeyEvent:
    """A GET_PROVIDERS for ``identity``'s key-event records (root rotations)."""

    identity: bytes
    consume: bool = True

    def finish(self, qid: int, event: DhtEvent) -> Result:
        found = []
        for value in event.values if isinstance(event, ProvidersFound) else ():
            try:
                record = decode_record(value, now=None, key=keyevent_key(self.identity))
            except RecordError:
                continue
            if record.type == KEYEVENT and record.feed == self.identity and record.payload is not None:
                found.append(record.payload)
        return KeyEventResolved(qid, self.identity, tuple(found))


@dataclass(slots=True)
class PublishPeerRecord:
    """A STORE of our own peer record, sequence number ``seq``."""

    seq: int
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        return RecordPublished(qid, self.seq, _stored(event))


@dataclass(slots=True)
class AnnounceProvider:
    """An ADD_PROVIDER of our provider record for ``feed``."""

    feed: bytes
    seq: int
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        return ProviderAnnounced(qid, self.feed, self.seq, _stored(event))


@dataclass(slots=True)
class FindProviders:
    """A GET_PROVIDERS for ``feed``."""

    feed: bytes
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        values = event.values if isinstance(event, ProvidersFound) else ()
        return ProvidersResolved(qid, self.feed, verified_providers(self.feed, values))


@dataclass(slots=True)
class PublishClaim:
    """An ADD_PROVIDER of our claim of ``name``."""

    name: str
    seq: int
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        return NameClaimPublished(qid, self.name, self.seq, _stored(event))


@dataclass(slots=True)
class FindClaims:
    """A GET_PROVIDERS for the claims of ``name``."""

    name: str
    consume: bool = False

    def finish(self, qid: int, event: DhtEvent) -> Result:
        if not isinstance(event, ProvidersFound):
            return NameResolved(qid, self.name, ())
        reports = dict(zip(event.values, event.seen, strict=False))
        claims = verified_claims(self.name, event.values)
        seen = [reports.get(record.raw, ()) for record in claims]
        order = network_order(claims, seen)
        return NameResolved(qid, self.name, tuple(claims[i] for i in order), tuple(seen[i] for i in order))


@dataclass(slots=True)
class FindHashtag:
    """A GET_PROVIDERS for the hashtag records of ``tag`` (issue 19)."""

    tag: str
    consume: bool = True

    def finish(self, qid: int, event: DhtEvent) -> Result:
        values = event.values if isinstance(event, ProvidersFound) else ()
        return HashtagsFound(qid, self.tag, verified_hashtags(self.tag, values))


@dataclass(slots=True)
class AnnounceHashtag:
    """An ADD_PROVIDER of our hashtag record of ``tag``."""

    tag: str
    seq: int
    consume: bool = True

    def finish(self, qid: int, event: DhtEvent) -> Result:
        return HashtagAnnounced(qid, self.tag, self.seq, _stored(event))


Pending = (
    FindHashtag
    | AnnounceHashtag
    | ResolvePeer
    | PublishPeerRecord
    | AnnounceProvider
    | FindProviders
    | PublishClaim
    | FindClaims
    | FindPairing
    | FindKeyEvent
)


class PendingQueries:
    """Query id -> continuation, for every DHT query the node started for a purpose."""

    def __init__(self) -> None:
        self._table: dict[int, Pending] = {}

    def __len__(self) -> int:
        return len(self._table)

    def add(self, qid: int, pending: Pending) -> int:
        self._table[qid] = pending
        return qid

    def finish(self, event: DhtEvent) -> tuple[Pending, Result] | None:
        """The continuation and node event for a DHT event that ends one of ours, else None."""
        qid = getattr(event, "query_id", None)
        if qid is None:
            return None
        pending = self._table.pop(qid, None)
        if pending is None:
            return None
        return pending, pending.finish(qid, event)
