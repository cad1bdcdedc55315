"""The events `NodeCore` reports, beside the DHT's and the replicator's, which it passes on.

Each is a frozen, slotted dataclass named for what happened.  A command
that starts a DHT query returns its query id and ends in exactly one event
carrying that ``query_id`` (the runtime's `request` waits for it); the
others report what the node did on its own (start-up, mention notices).
"""

from __future__ import annotations

from dataclasses import dataclass

from dht.events import Event as DhtEvent
from identity.records import Record
from p2pblog.entry import Entry
from p2pblog.reachability import ReachabilityChanged
from p2pblog.replication import Event as GossipEvent


@dataclass(frozen=True, slots=True)
class PeerResolved:
    """A key's peer record was found and verified."""

    query_id: int
    public_key: bytes
    record: Record
    #: Sequential DHT RPCs that reached the record (0: held locally).
    hops: int = 0


@dataclass(frozen=True, slots=True)
class PeerNotResolved:
    """No valid peer record for the key was found."""

    query_id: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class PairingResolved:
    """The lookup of our pending pairing's approval ended: each valid pairing record found
    as ``(identity, proof)``, unchecked against our nonce (`p2pblog.pairing`)."""

    query_id: int
    device: bytes
    approvals: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class KeyEventResolved:
    """The lookup of ``identity``'s key-event records ended: the signed ``rotate`` entries
    they carry (unchecked; any key may file one)."""

    query_id: int
    identity: bytes
    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RootRotated:
    """A followed identity's root moved to ``root`` (a rotation or a recovery)."""

    identity: bytes
    root: bytes


@dataclass(frozen=True, slots=True)
class DevicePaired:
    """This node became a device of ``identity`` (it consented in its own feed)."""

    identity: bytes


@dataclass(frozen=True, slots=True)
class RecordPublished:
    """Our own peer record was stored at ``stored_at`` of the closest nodes."""

    query_id: int
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class ProviderAnnounced:
    """Our provider record for ``feed`` was added at ``stored_at`` of the closest nodes."""

    query_id: int
    feed: bytes
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class ProvidersResolved:
    """The verified provider records found for ``feed`` (one per provider; may be empty)."""

    query_id: int
    feed: bytes
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class NameClaimPublished:
    """Our claim of ``name`` was added at ``stored_at`` of the closest nodes."""

    query_id: int
    name: str
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class NameResolved:
    """Every valid claim of ``name`` found, one per claimant, in the order a stranger to
    all of them sees (`p2pblog.names.network_order`; `p2pblog.names.claimants_for`
    ranks them for the user)."""

    query_id: int
    name: str
    claims: tuple[Record, ...]
    #: Per claim, the first-seen times DHT nodes reported for it (`p2pblog.names`).
    seen: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class MentionAdmitted:
    """A mention notice from ``sender`` was admitted: ``entry`` is stored."""

    sender: bytes
    entry: Entry


@dataclass(frozen=True, slots=True)
class MentionRefused:
    """A mention notice from ``sender`` was refused (``reason`` names the counter)."""

    sender: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class MentionDelivered:
    """Our notice of ``entry_id`` reached ``recipient``: ``admitted`` or refused with ``status``."""

    entry_id: bytes
    recipient: bytes
    admitted: bool
    status: int


@dataclass(frozen=True, slots=True)
class DmStored:
    """A direct message from ``sender`` was stored in ``folder`` (inbox, or requests for a
    stranger's)."""

    sender: bytes
    dm_id: bytes
    folder: str


@dataclass(frozen=True, slots=True)
class DmRefused:
    """A direct message from connected ``peer`` was refused (``reason`` names the counter)."""

    peer: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DmStateChanged:
    """Our message ``dm_id`` to ``recipient`` changed delivery state (``state``: held by N,
    delivered, refused: ..., undelivered)."""

    dm_id: bytes
    recipient: bytes
    state: str


@dataclass(frozen=True, slots=True)
class JoinFinished:
    """The start-up bootstrap ended: ``answered`` of ``seeds`` answered; ``contacts`` in the table."""

    seeds: int
    answered: int
    contacts: int


@dataclass(frozen=True, slots=True)
class StartupFinished:
    """The start-up publication of our peer record ended: stored at ``stored_at`` nodes
    (0: every retry failed; the record is republished on its timer from here on)."""

    seq: int
    stored_at: int
    attempts: int


@dataclass(frozen=True, slots=True)
class DuplicateInstanceSeen:
    """Another node runs with our key: its peer record names ``addrs`` (reported once per
    instance; `p2pblog.instances`)."""

    #: The other node's instance id, or None for a node of an earlier version.
    instance: bytes | None
    addrs: tuple[tuple[str, str, int], ...]
    seen: float


@dataclass(frozen=True, slots=True)
class OwnHeadKnown:
    """We caught up with our own feed (`p2pblog.own_head`): we hold ``held`` entries of
    it and may sign again."""

    held: int


@dataclass(frozen=True, slots=True)
class HashtagsFound:
    """The verified hashtag records of ``tag`` found in the DHT (one per author; may be empty)."""

    query_id: int
    tag: str
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class HashtagAnnounced:
    """Our hashtag record of ``tag`` was added at ``stored_at`` of the closest nodes."""

    query_id: int
    tag: str
    seq: int
    stored_at: int


@dataclass(frozen=True, slots=True)
class TrackedPostFetched:
    """A post with a tracked hashtag, fetched from ``peer`` and verified, is stored (loose)."""

    author: bytes
    seq: int
    entry_id: bytes
    peer: bytes


Event = (
    HashtagsFound
    | HashtagAnnounced
    | TrackedPostFetched
    | DhtEvent
    | PeerResolved
    | PeerNotResolved
    | RecordPublished
    | ProviderAnnounced
    | ProvidersResolved
    | NameClaimPublished
    | NameResolved
    | MentionAdmitted
    | MentionRefused
    | MentionDelivered
    | DmStored
    | DmRefused
    | DmStateChanged
    | DevicePaired
    | PairingResolved
    | KeyEventResolved
    | RootRotated
    | JoinFinished
    | StartupFinished
    | DuplicateInstanceSeen
    | ReachabilityChanged
    | OwnHeadKnown
    | GossipEvent
)
