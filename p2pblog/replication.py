"""`Replicator`: the node's gossip connections, sans IO.

Theory of operation
-------------------
The replicator owns every gossip connection of a node.  Each connection is a
`gossip.transport.SecureChannel` (Noise XX, both ends proving their Ed25519
identity) carrying one `gossip.session.GossipSession` once the handshake is
done.  It reads and writes the node's `Store`, but owns no socket and reads
no clock: the driver (the trio runtime, or the simulator) tells it

* `connection_accepted` (an inbound TCP connection; returns its id),
  `connection_opened` / `connection_failed` (the outcome of a dial it asked
  for), `data_received`, `connection_lost`;
* `handle_timer` at `get_timer`;

and after every input collects `dials_to_make`, `data_to_send`,
`connections_to_close` and `next_event`.  The node (`NodeCore`) adds what it
learns from the DHT: `add_candidates` (providers of a feed) and
`learn_address` (where an inbound peer listens), and tells it about local
writes with `set_wanted` and `feed_appended`.

**Glue between sessions and the store.**  `EntriesReceived` is checked
against its header (author and seq of every entry), ingested with
`Store.ingest_many` (which verifies signatures and the hash chain), then
acknowledged with `entries_stored`; new entries are announced to every other
session (`feed_updated`).  Entries that do not match their header, or that
fail their signature, are the peer's fault (`report_misbehaviour`); a chain
conflict is not (an honest peer may relay the other branch of a fork).  A
session that fails (`SessionFailed`) closes its connection.  Every fault is
also counted against the peer's score (below).

**Duplicates (Plumtree pruning).**  When a peer pushes entries we already
hold, we ask it to send only HAVE notices for that feed (`request_push`
False); a later WANT of ours re-grafts it.  So each feed settles on a push
tree with lazy repair links.

**Who to connect to** is `p2pblog.dialing`'s: the address book (listen
addresses, backoff) and the dial policy (recent peers, peers wanted
for mention notices, followed authors, providers of feeds nobody serves).
When a backoff ends, when candidates arrive, and at least every
`MAINTAIN_EVERY` seconds, the replicator dials the policy's targets (not
banned ones) while it has outbound slots.  At most one connection
per peer survives: when two meet (both sides dialled), both ends keep the one
dialled by the smaller public key (or, when one side dialled both, the
newer one: it gave up the older, e.g. across its restart).  Above `PRUNE_ABOVE`
sessions, those that replicate none of our feeds are closed, so the
cap prefers peers that cover the feeds we follow.  When every outbound slot
is taken and a followed feed is served by nobody connected while its author
or a provider could be dialled, the oldest dialled session that serves none
of our feeds (not a followed author, holding none of them after
`PRUNE_GRACE` seconds) is closed to make room, at most every
`FREE_SLOT_EVERY` seconds; its peer is set aside for `SET_ASIDE` seconds and
stops being a provider candidate.  Peers that announce our feeds and follow
them but never hold any (Sybils, `sybil-cold-1000`) could otherwise keep a
node from dialling the author it follows for good.

**Admission.**  Connections have three budgets that never borrow from each
other: `MAX_OUTBOUND` for our dials (in progress or open), so that however
many strangers connect, the node keeps dialling the feeds it follows;
`MAX_HANDSHAKING` for inbound connections still in their Noise handshake;
and `MAX_INBOUND` for inbound sessions (`MAX_CONNECTIONS` is their sum).
An inbound connection must finish its handshake within
`INBOUND_HANDSHAKE_TIMEOUT` (else ``handshake.timeout``).  Its address is
checked before any cryptography is done for it:

* a prefix (/24, /48) banned by its score is refused
  (``refused.banned_address``);
* at most `HANDSHAKING_PER_IP` handshakes per address and
  `HANDSHAKING_PER_NET` per prefix: a newcomer over either cap evicts the
  oldest handshake of its own address (prefix) if that one has had
  `EVICT_AFTER` seconds, else it is refused (``refused.handshake_ip``,
  ``refused.handshake_net``); when all `MAX_HANDSHAKING` are taken it evicts
  the oldest handshake of the prefix holding the most: at once if the
  newcomer's prefix holds at least two fewer, else under the same
  `EVICT_AFTER` rule (``refused.handshakes``).  Idle connections therefore
  hold a slot for at most the deadline, only a few per prefix, and a flood
  must come from about `MAX_HANDSHAKING` prefixes to keep a newcomer from a
  fresh prefix out.

When an inbound handshake completes, the key is checked (blocked, banned),
then the session needs a slot: at most `INBOUND_PER_IP` sessions per
address, `INBOUND_PER_NET` per prefix, `MAX_INBOUND` in all.  Over a cap,
the newcomer is not refused blindly: the *victim* is the stranger (not the
author of a feed we follow, not a peer we must reach for a mention) of the
lowest standing (`p2pblog.scoring.PeerScores.standing`: key plus prefix
score), the newest among equals, among the sessions the cap counts; it is
closed (``evicted.inbound``) if the newcomer's standing is strictly
higher.  When the whole inbound side is full, the newcomer may also evict a
victim with no positive history from the prefix with the most sessions,
if its own prefix has at least two fewer.  Otherwise the newcomer is
refused (``refused.inbound_ip``, ``refused.inbound_net``,
``refused.capacity``).  Why an attacker cannot use this to push out the
peers serving feeds we follow: a new key has standing 0 at best (a prefix
only loses score), so it can only displace peers of negative standing or,
through the diversity rule, peers with no history from a prefix more
crowded than its own; peers that delivered entries or stayed long have a
positive standing and only better ones displace them, and followed
authors are never displaced.  A connection over its address's caps is an
offence of its prefix.

**Scores.**  `p2pblog.scoring.PeerScores` (``scores``) keeps misbehaviour
and service per key and prefix: failed handshakes, handshake timeouts and
over-cap connections count against the prefix; bad entries, bad messages,
failed channels and sessions against the key and, lighter, the prefix;
each batch of new entries and each `p2pblog.scoring.SESSION_CREDIT_EVERY`
of an open session that is of use (we dialled it, or it delivered entries;
an idle session could otherwise farm standing) earn the key credit.  A
key whose score falls to `p2pblog.scoring.BAN_BELOW` is banned: its session is closed, it is not
dialled and its handshakes are refused (``refused.banned``) until the ban
ends.  The table is loaded from the store at start, saved as soon as a ban
starts (at most once per pass) and with the contacts (`save_scores`).

**Keepalives.**  Channels are made with ``keepalive_slack`` (up to
`MAINTAIN_EVERY`): a due keepalive waits for the next maintenance pass (or
any other timer of ours), where every due one goes out together
(`SecureChannel.keep_alive`).  An idle node wakes once per pass, not once per
connection and keepalive.

**Mention notices.**  A MENTION (a signed entry that mentions this node's
owner, sent by a node that may not share any feed with us) is reported as
`MentionArrived`; the node decides admission (`p2pblog.mentions`) and
answers with `answer_mention`, which sends a MENTION_ACK carrying its
verdict; acknowledgements of our own notices
come back as `MentionAnswered`.  `send_mention` sends one on an open
session, and `want_connection` keeps dialling a peer we have notices for
until `release_connection`.

**Blocking.**  A blocked key (`block`) is never replicated, its connections
are closed and refused after the handshake (``refused.blocked``), and
entries of its feed are refused (``entries.refused_blocked``).

**Counters.**  `stats` counts everything dropped or refused, by reason:
``handshake.failed``, ``handshake.timeout``, ``channel.failed``,
``misbehaved.<reason>`` (from the sessions), ``entries.forged``,
``refused.capacity``, ``refused.handshake_net``, ``evicted.inbound``,
``scores.bans``, ...; `admission` reports the budgets in use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Final

from gossip.messages import MAX_CIRCUIT, DialStatus, RelayStatus
from gossip.noise import RandomBytes
from gossip.session import (
    CircuitChanged,
    ConnectRequested,
    DialBackAnswered,
    DialBackRequested,
    DmAcked,
    DmReceived,
    EntriesReceived,
    EntriesRefused,
    ForkProofReceived,
    GossipSession,
    IncomingCircuit,
    MentionAcked,
    MentionReceived,
    MessageDropped,
    PeerFeedBudget,
    PeerMisbehaved,
    RelayReceived,
    ReservationAnswered,
    ReservationRequested,
    SessionFailed,
    SessionState,
)
from gossip.slices import SliceAnswered, SliceRequested
from gossip.transport import (
    ChannelConfig,
    ChannelFailed,
    FrameReceived,
    HandshakeCompleted,
    SecureChannel,
)
from identity import Identity
from identity.compile_hints import mypyc_attr
from identity.limits import MAX_AHEAD_MS
from identity.netaddr import host_key
from identity.pacing import KeyedTokenBuckets, TokenBucket
from p2pblog.dialing import AddressBook, DialPolicy
from p2pblog.entry import Entry, decode_entry, entry_id
from p2pblog.errors import ChainError, EntryError, EntryFromFuture, StorageFull
from p2pblog.ingest_queue import VerifyJob, VerifyQueue
from p2pblog.scoring import (
    DELIVERY_CREDIT,
    MAX_SUBJECTS,
    SESSION_CREDIT,
    SESSION_CREDIT_EVERY,
    Offence,
    PeerScores,
    address_prefix,
)
from p2pblog.store import FULL_BELOW_BYTES, Store
from p2pblog.verify import first_forgery

#: Seconds between connection-maintenance passes.  What needs a faster answer has a
#: deadline of its own (a follow, a backoff's end, new candidates, a lost followed
#: author: docs/design.md, "protocol intervals"); the pass is the safety net.
MAINTAIN_EVERY: Final = 30.0
#: Seconds before a feed whose entries a full disk refused is asked for again.
STORAGE_RETRY: Final = 60.0
#: Seconds between looks for room on the disk (a statvfs call) while refused entries wait
#: for it: a freed disk resumes the catch-up within this, not at the next maintenance pass.
SPACE_CHECK_EVERY: Final = 5.0
#: Seconds before a feed whose entries were refused for a full verification queue is asked again.
BUSY_RETRY: Final = 1.0
#: Outbound connections (dials in progress and sessions we dialled): a budget of
#: their own, which inbound connections never use.
MAX_OUTBOUND: Final = 16
#: Inbound sessions (handshake done), and inbound connections still in their handshake.
MAX_INBOUND: Final = 48
MAX_HANDSHAKING: Final = 32
#: Inbound connections in their handshake from one address, and from one prefix (/24, /48).
HANDSHAKING_PER_IP: Final = 4
HANDSHAKING_PER_NET: Final = 8
#: Inbound sessions from one address, and from one prefix.
INBOUND_PER_IP: Final = 8
INBOUND_PER_NET: Final = 24
#: Dial-backs (`request_dial_back`): probes we run for peers at once, and how many we
#: start a second (with bursts); seconds a probe has to connect and finish its handshake;
#: seconds we take an inbound connection from a peer we asked for one as its probe.
MAX_PROBES: Final = 4
PROBE_RATE: Final = 0.2
PROBE_BURST: Final = 4
PROBE_TIMEOUT: Final = 5.0
PROBE_WAIT: Final = 30.0
#: Relaying for nodes nobody can dial (`p2pblog.relay` has the policy's docs): reservations
#: held at once and for how long; circuits at once in all, per reserved node and per peer
#: that opens them; bytes a circuit may carry (both ways).
MAX_RESERVATIONS: Final = 32
RESERVATION_SECONDS: Final = 3600
#: Connections through one relay still in their handshake (the oldest makes room).
RELAYED_HANDSHAKING: Final = 4
#: Bytes a relay lets wait for one peer, in its sending buffer and queue, before it cuts
#: the circuit that would add more (a peer that does not read cannot make it buffer more).
RELAY_BACKLOG: Final = 4 * 1024 * 1024
#: A relay is small and rate-limited: circuits a peer may open a second (with bursts), and
#: bytes a second it forwards in all (with bursts); over either, the CONNECT is refused or
#: the circuit cut (the ends may open another later).
CONNECT_RATE: Final = 1.0
CONNECT_BURST: Final = 8
RELAY_RATE: Final = 1024 * 1024
RELAY_BURST: Final = 8 * 1024 * 1024
MAX_CIRCUITS: Final = 64
CIRCUITS_PER_TARGET: Final = 16
CIRCUITS_PER_SOURCE: Final = 8
CIRCUIT_BYTES: Final = 64 * 1024 * 1024
#: Seconds an inbound connection has to finish its Noise handshake (an honest
#: one needs about one round trip and three X25519 operations).
INBOUND_HANDSHAKE_TIMEOUT: Final = 5.0
#: A handshaking connection younger than this is never evicted for a newcomer:
#: a flood cannot churn the slots of its own prefix faster than this.
EVICT_AFTER: Final = 1.0
#: Every connection of every kind, at most.
#: Why a batch with an entry whose signature does not verify is refused.
_FORGED: Final = ("entries.forged", "signature does not verify against the author")
MAX_CONNECTIONS: Final = MAX_OUTBOUND + MAX_INBOUND + MAX_HANDSHAKING
#: Above this many sessions, sessions that replicate none of our feeds are
#: closed (after `PRUNE_GRACE` seconds), so the cap favours useful peers.
PRUNE_ABOVE: Final = 48
PRUNE_GRACE: Final = 30.0
#: With every outbound slot taken and a feed nobody connected serves, one dialled session
#: that serves none of our feeds is closed, at most every FREE_SLOT_EVERY seconds, and its
#: peer is not dialled again for SET_ASIDE seconds.
FREE_SLOT_EVERY: Final = 5.0
SET_ASIDE: Final = 600.0


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A gossip session with ``peer`` is open (``outbound``: we dialled it)."""

    peer: bytes
    addr: tuple[str, int]
    outbound: bool


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class EntriesStored:
    """``count`` new entries of ``feed`` arrived from ``peer``; the feed is now at ``latest``."""

    feed: bytes
    peer: bytes
    count: int
    latest: int


@dataclass(frozen=True, slots=True)
class InputRefused:
    """Bad input from a connection was dropped and counted (``reason`` names the counter)."""

    peer: bytes | None
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MentionAnswered:
    """``peer`` acknowledged our mention notice of ``entry_id`` (a `MentionStatus` value)."""

    peer: bytes
    entry_id: bytes
    status: int
    need: int


@dataclass(frozen=True, slots=True)
class MentionArrived:
    """``peer`` sent a mention notice: the signed ``entry`` and its proof-of-work ``stamp``.

    The node decides on it and answers with `Replicator.answer_mention`."""

    peer: bytes
    entry: bytes
    stamp: bytes


@dataclass(frozen=True, slots=True)
class DmArrived:
    """``peer`` sent a direct message sealed to ``recipient`` (our user, or someone whose
    messages we may hold).  The node decides and answers with `Replicator.answer_dm`."""

    peer: bytes
    recipient: bytes
    sealed: bytes
    stamp: bytes


@dataclass(frozen=True, slots=True)
class DmAnswered:
    """``peer`` acknowledged our DM whose sealed bytes hash to ``dm_id`` (a `DmStatus` value)."""

    peer: bytes
    dm_id: bytes
    status: int
    need: int


@dataclass(frozen=True, slots=True)
class DialBackResult:
    """A peer answered our `Replicator.request_dial_back`: ``status`` is a
    `gossip.messages.DialStatus` (or an int a later version sends); ``observed`` is
    where the peer sees our connection coming from."""

    peer: bytes
    port: int
    status: int
    observed: tuple[str, int]


@dataclass(frozen=True, slots=True)
class DialBackProbed:
    """``peer``'s dial-back of us arrived (a new connection that proved its key): what its
    DIAL_RESULT says OK about really happened."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class RelayReserved:
    """A relay answered our `Replicator.request_reservation`: ``seconds`` > 0 if it relays
    for us (at ``addr``, where we dialled it), else 0."""

    relay: bytes
    addr: tuple[str, int]
    seconds: int


@dataclass(frozen=True, slots=True)
class SliceAsked:
    """``peer`` asks for entries ``seqs`` of ``feed``: answer with `Replicator.answer_slice`."""

    peer: bytes
    feed: bytes
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SliceArrived:
    """``peer`` answered our `Replicator.request_slice` for ``seqs`` of ``feed`` (unverified)."""

    peer: bytes
    feed: bytes
    seqs: tuple[int, ...]
    entries: tuple[bytes, ...]


Event = (
    SliceAsked
    | SliceArrived
    | PeerConnected
    | PeerDisconnected
    | EntriesStored
    | InputRefused
    | MentionAnswered
    | MentionArrived
    | DmArrived
    | DmAnswered
    | DialBackResult
    | DialBackProbed
    | RelayReserved
)


# --- the feed source over the store ---------------------------------------------------------


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's withholding and forging feeds
class StoreFeeds:
    """The `gossip.session.FeedSource` over the node's store."""

    def __init__(self, store: Store, wanted: Iterable[bytes]) -> None:
        self.store = store
        self.wanted = set(wanted)

    def wanted_feeds(self) -> Collection[bytes]:
        return self.wanted

    def latest_seq(self, feed: bytes) -> int:
        return self.store.latest_seq(feed)

    def entries(self, feed: bytes, first_seq: int, limit: int) -> Sequence[bytes]:
        return self.store.raw_range(feed, first_seq, limit)

    def fork_proofs(self, feed: bytes) -> Sequence[tuple[int, bytes, bytes]]:
        by_seq: dict[int, list[bytes]] = {}
        for entry in self.store.fork_proofs(feed):
            by_seq.setdefault(entry.seq, []).append(entry.raw)
        return [(seq, raws[0], raws[1]) for seq, raws in sorted(by_seq.items()) if len(raws) >= 2]


# --- state ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    id: int
    channel: SecureChannel
    outbound: bool
    #: The remote socket address (for an outbound connection, what we dialled).
    addr: tuple[str, int]
    since: float
    #: The remote address (an IPv4-mapped one as IPv4) and its scored prefix.
    ip: str = ""
    net: bytes = b""
    #: When the session last earned its long-session credit.
    credited: float = 0.0
    #: Whether the session has been of use: we dialled it, or it delivered new entries.
    #: Only such sessions earn credit for their length (an idle one could farm it).
    useful: bool = False
    #: The key we dialled (outbound only).
    expected: bytes | None = None
    peer: bytes | None = None
    session: GossipSession | None = None
    closing: bool = False
    #: A dial-back probe: the id of the connection whose peer asked for it (None once
    #: answered, or for any other connection).
    probe_of: int | None = None
    #: A connection through a relay: (the relay session's connection id, circuit number).
    via: tuple[int, int] | None = None
    #: The remote IP address exactly (``ip`` is its scoring key: an IPv6 address's /64).
    exact_ip: str = ""


def exact_ip(host: str) -> str:
    """host as a canonical IP address (an IPv4-mapped IPv6 one as IPv4), or "" if it is none."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _can_serve(peer: bytes, session: GossipSession, feed: bytes) -> bool:
    """Whether the peer of session is feed's author or holds some of it."""
    return peer == feed or (session.peer_wants(feed) and session.peer_seq(feed) > 0)


def _kind(conn: _Conn) -> str:
    """Which budget a connection uses: ``outbound``, ``handshaking`` (inbound) or ``inbound``
    (or ``probe``: a dial-back, bounded by `MAX_PROBES`)."""
    if conn.probe_of is not None:
        return "probe"
    if conn.outbound:
        return "outbound"
    return "handshaking" if conn.peer is None else "inbound"


def _oldest(conns: Iterable[_Conn]) -> _Conn | None:
    return min(conns, key=lambda c: (c.since, c.id), default=None)


def _gone(conn: _Conn) -> bool:
    """Whether handling an event closed the connection (a function, so checks are not narrowed)."""
    return conn.closing


class Replicator:
    """A node's gossip connections and replication glue (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        rng: Random,
        now: float,
        *,
        random_bytes: RandomBytes,
        channel_config: ChannelConfig | None = None,
    ) -> None:
        self.identity = identity
        self.store = store
        self.rng = rng
        self.random_bytes = random_bytes
        # Keepalives wait for the next maintenance pass (`handle_timer`).
        base = channel_config or ChannelConfig()
        slack = min(MAINTAIN_EVERY, (base.idle_timeout - base.keepalive_interval) / 2)
        self.channel_config = dataclasses.replace(base, keepalive_slack=max(base.keepalive_slack, slack))
        #: Inbound channels get a short handshake deadline (a dial's also covers its TCP connect).
        self.inbound_config = dataclasses.replace(
            self.channel_config,
            handshake_timeout=min(self.channel_config.handshake_timeout, INBOUND_HANDSHAKE_TIMEOUT),
        )
        own = identity.public_key
        #: Keys whose entries, notices and connections are refused.
        self.blocked: set[bytes] = {key for key, _ in store.blocks()}
        self.source = StoreFeeds(store, {own, *(store.following(own) - self.blocked)})
        #: Plumtree pruning of peers that push duplicates (False: naive flooding,
        #: the simulator's baseline).
        self.prune_duplicates = True
        self.stats: Counter[str] = Counter()
        self._conns: dict[int, _Conn] = {}
        self._by_peer: dict[bytes, int] = {}
        self._dialling: dict[bytes, int] = {}
        self._next_id = 0
        #: Where peers listen, their backoff and bans; and whom to dial (`p2pblog.dialing`).
        self.book = AddressBook(store, own, rng)
        self.dial_policy = DialPolicy(own, self.book)
        #: Misbehaviour and service per key and prefix, kept across restarts (`p2pblog.scoring`).
        self.scores = PeerScores(store.load_peer_scores(MAX_SUBJECTS))
        #: When the scores were last saved because a ban started (at most once per pass).
        self._scores_saved = -MAINTAIN_EVERY
        self._scores_dirty = False
        self._dials: list[tuple[int, str, int]] = []
        self._closes: list[int] = []
        self._events: deque[Event] = deque()
        self._maintain_at = now
        #: When `_free_slot` last closed a session (at most every FREE_SLOT_EVERY seconds).
        self._slot_freed_at = -FREE_SLOT_EVERY
        # Work lists, so each input costs what it touches, not O(connections):
        # connections with input to process, with output to collect, and the
        # earliest timer deadline of each (channel or session).
        self._dirty: dict[int, None] = {}
        self._outbox: dict[int, None] = {}
        self._deadlines: dict[int, float] = {}
        #: Feeds named by peers that we neither want nor hold, across all sessions.
        self.peer_feed_budget = PeerFeedBudget()
        #: Feeds whose entries we refused as stamped ahead of our clock -> when to ask
        #: again (one per followed feed at most).
        self._ask_again: dict[bytes, float] = {}
        #: Received batches waiting for their signatures (`p2pblog.ingest_queue`); verified
        #: at once until the driver says it verifies off the loop (`offload_verification`).
        self.verify = VerifyQueue(offload=False)
        #: Dial-backs we run for peers (`MAX_PROBES`, `PROBE_RATE`), and the peers we asked
        #: for one -> until when their inbound connection is taken as its probe.
        #: Feeds whose entries a full disk refused: asked for again at the first look that
        #: finds space (every SPACE_CHECK_EVERY), or after STORAGE_RETRY.
        self._waiting_for_space: set[bytes] = set()
        #: When to look for room again (`_space_back`); infinite while nothing waits.
        self._space_check_at = math.inf
        self._probe_budget = TokenBucket(PROBE_RATE, PROBE_BURST, now)
        self._probes_expected: dict[bytes, tuple[float, int]] = {}
        #: Relaying.  As a relay (when ``relay_enabled``): reserved keys -> until when, and
        #: the circuits, each end (session connection id, circuit number) -> the other end,
        #: with the bytes each carried.  As either end of a circuit: (relay connection id,
        #: circuit number) -> our connection through it; the relays we dialled to reach
        #: peers, (host, port) -> (connection id, keys waiting); our next circuit number.
        self.relay_enabled = False
        self.reservations: dict[bytes, float] = {}
        self._connect_budget = KeyedTokenBuckets(CONNECT_RATE, CONNECT_BURST, MAX_SUBJECTS)
        self._relay_budget = TokenBucket(RELAY_RATE, RELAY_BURST, now)
        #: Relays that reserved for us -> until when (INCOMING is taken only from them).
        self.reserved_with: dict[bytes, float] = {}
        #: How many bytes the driver still has to write on a connection (`NodeDriver` sets
        #: it; the in-memory drivers write at once).
        self.backlog: Callable[[int], int] = lambda conn_id: 0
        self._circuits: dict[tuple[int, int], tuple[int, int]] = {}
        self._circuit_bytes: dict[tuple[int, int], int] = {}
        self._virtual: dict[tuple[int, int], int] = {}
        self._relay_dials: dict[tuple[str, int], tuple[int, list[bytes]]] = {}
        self._next_circuit = 0

    # ============================================================ outputs

    def dials_to_make(self) -> list[tuple[int, str, int]]:
        """``(connection id, host, port)`` to dial; report with `connection_opened`/`_failed`."""
        out, self._dials = self._dials, []
        return out

    def data_to_send(self) -> list[tuple[int, bytes]]:
        out = []
        for conn_id in self._outbox:
            conn = self._conns.get(conn_id)
            if conn is not None and conn.via is None:  # a relayed one's go through its relay
                data = conn.channel.data_to_send()
                if data:
                    out.append((conn_id, data))
        self._outbox.clear()
        return out

    def connections_to_close(self) -> list[int]:
        """Connections to close (after sending their pending data); then `connection_lost`."""
        out, self._closes = self._closes, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        # Asked after every input: skip the empty tables (the first of equal times wins, as with min).
        at = self._maintain_at
        if self._deadlines:
            t = min(self._deadlines.values())
            if t < at:
                at = t
        if self._ask_again:
            t = min(self._ask_again.values())
            if t < at:
                at = t
        if self._space_check_at < at:
            at = self._space_check_at
        return at

    def offload_verification(self) -> None:
        """The driver verifies signatures off the event loop from now on: it collects
        `verifications_to_make` after every input and reports `entries_verified`."""
        self.verify.offload = True

    # ============================================================ inspection

    @property
    def own(self) -> bytes:
        return self.identity.public_key

    @property
    def wanted(self) -> Collection[bytes]:
        return self.source.wanted

    def sessions(self) -> list[tuple[bytes, GossipSession, bool, tuple[str, int], float]]:
        """``(peer, session, outbound, addr, since)`` of every open session."""
        out = []
        for conn in self._conns.values():
            if conn.session is not None and conn.peer is not None and not conn.closing:
                out.append((conn.peer, conn.session, conn.outbound, conn.addr, conn.since))
        return out

    def peers_replicating(self, feed: bytes) -> int:
        """Connected peers that replicate feed (it is in their clock)."""
        return sum(1 for _, session, *_ in self.sessions() if session.peer_wants(feed))

    def sources(self, feed: bytes) -> int:
        """Connected peers we can get feed from: its author, or peers that hold some of it."""
        return sum(1 for peer, session, *_ in self.sessions() if _can_serve(peer, session, feed))

    def refuses(self, peer: bytes, now: float) -> bool:
        """Whether peer is blocked or banned."""
        return peer in self.blocked or self.scores.banned(peer, now)

    def admission(self, now: float) -> dict[str, int]:
        """Connections by kind against their budgets, and the score table (for `status`)."""
        counts = Counter(_kind(c) for c in self._conns.values() if not c.closing)
        return {
            "outbound": counts["outbound"],
            "inbound": counts["inbound"],
            "handshaking": counts["handshaking"],
            "max_outbound": MAX_OUTBOUND,
            "max_inbound": MAX_INBOUND,
            "max_handshaking": MAX_HANDSHAKING,
            "scored": len(self.scores),
            "banned": self.scores.active_bans(now),
            "book": len(self.book),
        }

    def connections(self) -> list[tuple[str, str, bytes, float]]:
        """``(kind, address, prefix, since)`` of every connection not closing (kind as `admission`)."""
        return [(_kind(c), c.ip, c.net, c.since) for c in self._conns.values() if not c.closing]

    def save_scores(self) -> None:
        """Save the score table (`p2pblog.lifecycle` calls this with the contacts, and at close);
        on a full disk it stays to be saved at the next chance."""
        if self.store.save_peer_scores(self.scores.rows()):
            self._scores_dirty = False

    def is_connected(self, peer: bytes) -> bool:
        return peer in self._by_peer

    def known_address(self, peer: bytes) -> tuple[str, int] | None:
        return self.book.address(peer)

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    # ============================================================ node inputs

    def maintain_now(self, now: float) -> None:
        """Run the dial maintenance at the next `handle_timer` (NodeCore's own
        maintenance pass calls this, so the two share one wake-up)."""
        self._maintain_at = min(self._maintain_at, now)

    def set_wanted(self, feeds: Iterable[bytes], now: float) -> None:
        """The feeds this node replicates changed (follow/unfollow); blocked feeds are left out."""
        self.source.wanted = {self.own, *(set(feeds) - self.blocked)}
        for _, session, *_ in self.sessions():
            session.wants_changed(now)
        self._touch_sessions()
        self._maintain_at = now
        self._pump(now)

    def feed_appended(self, feed: bytes, now: float) -> None:
        """The node stored new entries of feed itself (its own post): push them."""
        for _, session, *_ in self.sessions():
            session.feed_updated(feed, now)
        self._touch_sessions()
        self._pump(now)

    def add_candidates(self, feed: bytes, peers: Iterable[tuple[bytes, str, int]], now: float) -> None:
        """Providers of feed found in the DHT: ``(public key, tcp host, tcp port)``."""
        self.dial_policy.add_candidates(feed, peers)
        self._maintain(now)
        self._pump(now)

    def add_relayed_candidates(
        self, feed: bytes, peers: Iterable[tuple[bytes, str, int]], now: float
    ) -> None:
        """Providers of feed that only a relay reaches: ``(public key, relay host, relay port)``."""
        self.dial_policy.add_relayed_candidates(feed, peers)
        self._maintain(now)
        self._pump(now)

    def block(self, peer: bytes, now: float) -> None:
        """Refuse peer from now on: close its connection, stop replicating its feed."""
        self.blocked.add(peer)
        self.dial_policy.release(peer)
        conn_id = self._by_peer.get(peer)
        if conn_id is not None:
            self.stats["closed.blocked"] += 1
            self._close(self._conns[conn_id], now, "blocked")
        self.set_wanted(self.source.wanted - {peer}, now)

    def unblock(self, peer: bytes) -> None:
        self.blocked.discard(peer)

    def _open_session(self, peer: bytes) -> tuple[_Conn, GossipSession] | None:
        conn_id = self._by_peer.get(peer)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None or conn.session is None or conn.closing:
            return None
        return conn, conn.session

    def _sent(self, conn: _Conn, counter: str, now: float) -> None:
        self.stats[counter] += 1
        self._touch(conn)
        self._pump(now)

    def send_mention(self, peer: bytes, entry: bytes, stamp: bytes, now: float) -> bool:
        """Send a mention notice to a connected peer; False if no open session can take it."""
        found = self._open_session(peer)
        if found is None or not found[1].send_mention(entry, stamp, now):
            return False
        self._sent(found[0], "mentions.sent", now)
        return True

    def answer_mention(self, notice: MentionArrived, status: int, need: int, now: float) -> None:
        """Acknowledge a `MentionArrived` with the node's verdict (a `MentionStatus` value and
        the work bits it needs); nothing if the peer's session is gone meanwhile."""
        found = self._open_session(notice.peer)
        if found is None:
            self.stats["mentions.ack_unsent"] += 1
            return
        found[1].ack_mention(entry_id(notice.entry), status, need, now)
        self._sent(found[0], "mentions.acked", now)

    def send_dm(self, peer: bytes, recipient: bytes, sealed: bytes, stamp: bytes, now: float) -> bool:
        """Send a sealed direct message for ``recipient`` to connected ``peer`` (the recipient
        or a holder); False if no open session can take it."""
        found = self._open_session(peer)
        if found is None or not found[1].send_dm(recipient, sealed, stamp, now):
            return False
        self._sent(found[0], "dms.sent", now)
        return True

    def answer_dm(self, arrived: DmArrived, dm_id: bytes, status: int, need: int, now: float) -> None:
        """Acknowledge a `DmArrived` (its sealed bytes hash to ``dm_id``) with the node's verdict."""
        found = self._open_session(arrived.peer)
        if found is None:
            self.stats["dms.ack_unsent"] += 1
            return
        found[1].ack_dm(dm_id, status, need, now)
        self._sent(found[0], "dms.acked", now)

    def replicating(self, feed: bytes) -> list[bytes]:
        """Connected peers that replicate feed (it is in their clock), in connection order."""
        return [peer for peer, session, *_ in self.sessions() if session.peer_wants(feed)]

    def request_slice(self, peer: bytes, feed: bytes, seqs: Sequence[int], now: float) -> bool:
        """Ask connected ``peer`` for entries ``seqs`` of ``feed`` (reported as `SliceArrived`);
        False if no open session can take the request."""
        conn = self._open_conn(peer)
        if conn is None or conn.session is None or not conn.session.request_slice(feed, seqs, now):
            return False
        self._touch(conn)
        self._pump(now)
        return True

    def answer_slice(self, asked: SliceAsked, entries: Sequence[bytes], now: float) -> None:
        """Answer a `SliceAsked`; nothing if the peer's session is gone meanwhile."""
        conn = self._open_conn(asked.peer)
        if conn is None or conn.session is None:
            self.stats["slices.answer_unsent"] += 1
            return
        conn.session.answer_slice(asked.feed, entries, now)
        self._touch(conn)
        self._pump(now)

    def _open_conn(self, peer: bytes) -> _Conn | None:
        conn_id = self._by_peer.get(peer)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        return None if conn is None or conn.session is None or conn.closing else conn

    def want_connection(self, peer: bytes, now: float) -> None:
        """Keep dialling peer (whose address must be learned) until `release_connection`."""
        if peer != self.own and peer not in self.blocked:
            self.dial_policy.want(peer)
            self._maintain_at = min(self._maintain_at, now)  # dial now if its address is known

    def release_connection(self, peer: bytes) -> None:
        self.dial_policy.release(peer)

    def request_dial_back(self, peer: bytes, port: int, now: float) -> bool:
        """Ask connected ``peer`` to dial us back on ``port`` at the address our connection
        comes from (DIAL_ME).  Its answer is reported as `DialBackResult`.  False if there is
        no open session with it, or a request to it is pending."""
        conn_id = self._by_peer.get(peer)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None or conn.session is None or conn.closing or conn.via is not None:
            return False
        if not conn.session.request_dial_back(port, now):
            return False
        for key in [k for k, (t, _) in self._probes_expected.items() if t <= now]:
            del self._probes_expected[key]
        self._probes_expected[peer] = (now + PROBE_WAIT, conn.id)
        self.stats["dialback.requested"] += 1
        self._touch(conn)
        self._pump(now)
        return True

    def learn_address(self, peer: bytes, host: str, port: int, now: float) -> None:
        """Where a connected peer listens (from its peer record); saved in the address book."""
        self.book.learn(peer, host, port)
        if peer in self._by_peer:
            self.book.connected(peer, now)

    # ============================================================ driver inputs

    def connection_accepted(self, addr: tuple[str, int], now: float) -> int:
        """An inbound TCP connection arrived; returns its id (maybe already to be closed).

        Admission before the handshake (see the module docstring): a banned
        prefix, or a full handshake budget of its address or prefix, is
        refused before any cryptography is done for it."""
        ip = host_key(addr[0])
        net = address_prefix(ip)
        refusal = self._admit_handshake(ip, net, now)
        if refusal is not None:
            # Refused before a channel exists: the id only tells the driver what to close.
            self._next_id += 1
            self._closes.append(self._next_id)
            self.stats[refusal] += 1
            self._events.append(InputRefused(None, refusal, f"inbound from {ip}"))
            return self._next_id
        conn = self._new_conn(
            SecureChannel.responder(
                self.identity, now=now, config=self.inbound_config, random_bytes=self.random_bytes
            ),
            outbound=False,
            addr=addr,
            now=now,
        )
        conn.ip, conn.net, conn.exact_ip = ip, net, exact_ip(addr[0])
        self._touch(conn)
        self._pump(now)
        return conn.id

    def connection_opened(self, conn_id: int, now: float) -> None:
        """A dial we asked for connected; the handshake starts."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._touch(conn)
            self._pump(now)

    def connection_failed(self, conn_id: int, now: float) -> None:
        """A dial we asked for did not connect."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        self._drop_work(conn_id)
        if conn.probe_of is not None:
            self._probe_done(conn, DialStatus.FAILED, now)
            self._pump(now)
            return
        self.stats["dial.failed"] += 1
        if conn.peer is not None:
            # A driver that reports a failure for a connection that got as far
            # as a handshake: it is lost, and must not stay the peer's connection.
            if not conn.closing:
                self._forget(conn, now, "connection failed")
            self._pump(now)
            return
        if conn.expected is not None:
            self._dialling.pop(conn.expected, None)
            self._back_off(conn.expected, now)
        self._relay_dial_lost(conn, None, now)

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.closing:
            return
        conn.channel.receive_data(data, now)
        self._touch(conn)
        self._pump(now)

    def connection_lost(self, conn_id: int, now: float) -> None:
        """The connection is gone (closed by the peer, by an error, or by us)."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        self._drop_work(conn_id)
        if conn.probe_of is not None:
            self._probe_done(conn, DialStatus.FAILED, now)
        if not conn.closing:
            self._forget(conn, now, "connection lost")
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        if now >= self._space_check_at:
            self._space_back(now)  # before the feeds due to be asked again: room makes them due
        due = [c for c, t in self._deadlines.items() if t <= now]
        for conn_id in due:
            conn = self._conns[conn_id]
            conn.channel.handle_timer(now)
            if conn.session is not None:
                conn.session.handle_timer(now)
            self._touch(conn)
        for feed in [f for f, t in self._ask_again.items() if t <= now]:
            del self._ask_again[feed]
            if feed not in self.source.wanted:
                continue
            for conn in self._conns.values():
                if (
                    conn.session is not None
                    and not conn.closing
                    and conn.session.peer_seq(feed) > (self.store.latest_seq(feed))
                ):
                    conn.session.resubscribe(feed, now)
                    self._touch(conn)
        maintain = now >= self._maintain_at
        if due or maintain:
            # Timer coalescing: the channels give their keepalives up to
            # MAINTAIN_EVERY of slack, so the node sends the due ones at its
            # maintenance passes (or another wake-up), not at one wake-up each.
            for conn in self._conns.values():
                if (
                    conn.session is not None
                    and not conn.closing
                    and conn.id not in self._dirty
                    and conn.channel.keep_alive(now)
                ):
                    self._touch(conn)
        if maintain:
            self._maintain_at = now + MAINTAIN_EVERY
            self._maintain(now)
        self._pump(now)

    # ============================================================ admission

    def _live(self, kind: str) -> list[_Conn]:
        return [c for c in self._conns.values() if not c.closing and _kind(c) == kind]

    def _admit_handshake(self, ip: str, net: bytes, now: float) -> str | None:
        """Make room for an inbound connection from ip, or say why it is refused (a counter)."""
        if self.scores.banned(net, now):
            return "refused.banned_address"
        handshaking = self._live("handshaking")
        same_ip = [c for c in handshaking if c.ip == ip]
        same_net = [c for c in handshaking if c.net == net]
        patient = True  # the victim must have had EVICT_AFTER seconds
        if len(same_ip) >= HANDSHAKING_PER_IP:
            victim, reason = _oldest(same_ip), "refused.handshake_ip"
        elif len(same_net) >= HANDSHAKING_PER_NET:
            victim, reason = _oldest(same_net), "refused.handshake_net"
        elif len(handshaking) >= MAX_HANDSHAKING:
            # Evict from the prefix that holds the most handshake slots (the
            # newcomer's own among equals): a flood from a few prefixes can only
            # push out its own connections, not those of many honest prefixes.
            # A newcomer whose prefix holds at least two fewer evicts at once,
            # however young the victim: else a flood that refreshes its slots
            # every EVICT_AFTER seconds would starve every other prefix.
            groups = Counter(c.net for c in handshaking)
            top = max(groups.values())
            crowded = net if groups[net] == top else min(g for g, n in groups.items() if n == top)
            victim, reason = _oldest(c for c in handshaking if c.net == crowded), "refused.handshakes"
            patient = groups[crowded] < groups[net] + 2
        else:
            return None
        assert victim is not None
        if reason != "refused.handshakes":  # over its own address's or prefix's caps
            self._penalize_address(net, Offence.OVER_CAP, now)
        if patient and now - victim.since < EVICT_AFTER:
            return reason
        self.stats["evicted.handshaking"] += 1
        self._close(victim, now, "evicted: handshake slots are full")
        return None

    def _admit_session(self, conn: _Conn, peer: bytes, now: float) -> bool:
        """An inbound handshake finished: make room for the session, or refuse it (False).

        The rule (see the module docstring): a victim is a stranger -- not the
        author of a feed we follow, not a peer we must reach -- of the lowest
        standing, the newest among equals; it is evicted only for a newcomer of
        strictly higher standing, or, when the whole inbound side is full, for
        one from a prefix with fewer sessions if the victim has no positive
        history.  So a fresh key (standing 0 at best) can push out no peer that
        has delivered entries or stayed long, and no prefix can crowd out others.
        """
        inbound = self._live("inbound")
        same_ip = [c for c in inbound if c.ip == conn.ip]
        same_net = [c for c in inbound if c.net == conn.net]
        if len(same_ip) >= INBOUND_PER_IP:
            pool, reason = same_ip, "refused.inbound_ip"
        elif len(same_net) >= INBOUND_PER_NET:
            pool, reason = same_net, "refused.inbound_net"
        elif len(inbound) >= MAX_INBOUND:
            pool, reason = inbound, "refused.capacity"
        else:
            return True
        mine = self.scores.standing(peer, conn.net, now)
        protected = self.source.wanted  # authors of the feeds we follow

        def rank(c: _Conn) -> tuple[float, float, int]:
            return (self.scores.standing(c.peer, c.net, now), -c.since, -c.id)

        wanted_peers = self.dial_policy.wanted_peers
        strangers = [c for c in pool if c.peer not in protected and c.peer not in wanted_peers]
        victim = min(strangers, key=rank, default=None)
        if victim is not None and rank(victim)[0] < mine:
            self.stats["evicted.inbound"] += 1
            self._close(victim, now, "evicted for a peer of higher standing")
            return True
        if pool is inbound and strangers:
            groups = Counter(c.net for c in inbound)
            crowded = max(groups.items(), key=lambda item: (item[1], item[0]))[0]
            in_crowded = [c for c in strangers if c.net == crowded]
            victim = min(in_crowded, key=rank, default=None)
            fewer = groups[crowded] > groups[conn.net] + 1
            if victim is not None and fewer and rank(victim)[0] <= min(mine, 0):
                self.stats["evicted.inbound"] += 1
                self._close(victim, now, "evicted for a peer from a less crowded prefix")
                return True
        self.stats[reason] += 1
        if reason != "refused.capacity" and conn.net:
            self._penalize_address(conn.net, Offence.OVER_CAP, now)
        self._events.append(InputRefused(peer, reason, f"inbound from {conn.ip}"))
        return False

    def _penalize(self, conn: _Conn, offence: Offence, now: float) -> None:
        """Count offence against conn's peer (if known) and prefix; a ban closes the peer's session."""
        if not self.scores.penalize(offence, conn.peer, conn.net or None, now):
            return
        self.stats["scores.bans"] += 1
        self._scores_dirty = True
        self._save_banned_scores(now)
        peer = conn.peer
        if peer is not None and self.scores.banned(peer, now):
            conn_id = self._by_peer.get(peer)
            if conn_id is not None and not self._conns[conn_id].closing:
                self.stats["closed.banned"] += 1
                self._close(self._conns[conn_id], now, "banned")

    def _penalize_address(self, net: bytes, offence: Offence, now: float) -> None:
        if self.scores.penalize(offence, None, net, now):
            self.stats["scores.bans"] += 1
            self._scores_dirty = True
            self._save_banned_scores(now)

    def _save_banned_scores(self, now: float) -> None:
        """A ban started: save it now (at most once per maintenance pass), so a crash keeps it."""
        if self._scores_dirty and now - self._scores_saved >= MAINTAIN_EVERY:
            self._scores_saved = now
            self.save_scores()

    def _credit_sessions(self, now: float) -> None:
        for conn in self._conns.values():
            due = now - conn.credited >= SESSION_CREDIT_EVERY and (conn.useful or conn.outbound)
            if due and conn.session is not None and conn.peer is not None and not conn.closing:
                conn.credited = now
                self.scores.credit(conn.peer, SESSION_CREDIT, now)

    # ============================================================ internals

    def _new_conn(
        self, channel: SecureChannel, *, outbound: bool, addr: tuple[str, int], now: float
    ) -> _Conn:
        self._next_id += 1
        conn = _Conn(self._next_id, channel, outbound, addr, now)
        self._conns[conn.id] = conn
        return conn

    def _dial(self, peer: bytes, host: str, port: int, now: float) -> None:
        channel = SecureChannel.initiator(
            self.identity,
            now=now,
            expected_peer=peer,
            config=self.channel_config,
            random_bytes=self.random_bytes,
        )
        conn = self._new_conn(channel, outbound=True, addr=(host, port), now=now)
        conn.ip = host_key(host)
        conn.net = address_prefix(conn.ip)
        conn.exact_ip = exact_ip(host)
        conn.expected = peer
        self._dialling[peer] = conn.id
        self._dials.append((conn.id, host, port))
        self._touch(conn)  # its first handshake message waits in the driver until connected
        self.stats["dial.attempts"] += 1

    def _maintain(self, now: float) -> None:
        self._space_back(now)
        self._prune_idle(now)
        self._credit_sessions(now)
        self._save_banned_scores(now)
        # Outbound slots are ours alone: however full the inbound side, dialling goes on.
        outbound = self._live("outbound")
        full = len(outbound) >= MAX_OUTBOUND
        if full and now < self._slot_freed_at + FREE_SLOT_EVERY:
            self._maintain_at = min(self._maintain_at, self._slot_freed_at + FREE_SLOT_EVERY)
            return  # nothing can be dialled before a slot may be freed again
        live = self.sessions()

        def served(feed: bytes) -> bool:  # a source is connected (`sources`)
            return any(_can_serve(peer, session, feed) for peer, session, *_ in live)

        def standing(key: bytes) -> float:
            entry = self.book.get(key)
            host = entry.host if entry is not None else None
            return self.scores.standing(key, address_prefix(host) if host else None, now)

        wanted = self.source.wanted
        dialled = len(outbound)
        if full:
            # Make room only for a peer that can give us a feed nobody connected serves,
            # by closing a dialled peer that serves none of ours.
            needed = self.dial_policy.needed(wanted, served, standing)
            if not any(self._dialable(key, now) for key in needed) or not self._free_slot(
                outbound, wanted, now
            ):
                return  # nothing could be dialled
            dialled -= 1  # the one `_free_slot` closed
        for key in self.dial_policy.targets(wanted, served, standing):
            if dialled >= MAX_OUTBOUND:
                break
            if not self._dialable(key, now):
                continue
            entry = self.book.get(key)
            assert entry is not None
            if entry.host is not None and entry.port is not None:
                self._dial(key, entry.host, entry.port, now)
            elif entry.relay is not None:
                self._dial_via_relay(key, entry.relay, now)
            dialled += 1

    def _dialable(self, key: bytes, now: float) -> bool:
        """Whether key could be dialled now (when it cannot only until some time, the next
        maintenance pass is moved to that time)."""
        entry = self.book.get(key)
        if (
            entry is None
            or (entry.address is None and entry.relay is None)
            or key in self._by_peer
            or key in self._dialling
            or key in self.blocked
        ):
            return False
        if self.scores.banned(key, now):
            self._maintain_at = min(self._maintain_at, self.scores.banned_until(key))
            return False
        if now < entry.next_try:
            # Come back when its backoff ends rather than polling.
            self._maintain_at = min(self._maintain_at, entry.next_try)
            return False
        return True

    def _free_slot(self, outbound: list[_Conn], wanted: Collection[bytes], now: float) -> bool:
        """Close the oldest dialled session that serves none of the wanted feeds: not an author
        we follow, not a peer we must reach, holding none of them after `PRUNE_GRACE`
        seconds (an honest peer that follows what we follow holds some of it by then; a
        Sybil that declares our feeds and never has any entry does not).  It is not dialled
        again for `SET_ASIDE` seconds and stops being a provider candidate."""
        for conn in sorted(outbound, key=lambda c: c.since):
            session, peer = conn.session, conn.peer
            if session is None or peer is None or now - conn.since < PRUNE_GRACE:
                continue
            if peer in wanted or peer in self.dial_policy.wanted_peers:
                continue
            if any(_can_serve(peer, session, feed) for feed in wanted):
                continue
            self.stats["pruned.serves_nothing"] += 1
            self._slot_freed_at = now
            self._close(conn, now, "serves none of our feeds; its slot is needed")
            self.book.set_aside(peer, now + SET_ASIDE)
            self.dial_policy.drop(peer)
            return True
        return False

    def _space_back(self, now: float) -> None:
        """A full disk refused entries: once the disk has room again, ask for them now
        rather than at STORAGE_RETRY."""
        waiting = self._waiting_for_space
        if not waiting:
            self._space_check_at = math.inf
            return
        free = self.store.free_bytes()
        if self.store.full and (free is None or free < FULL_BELOW_BYTES):
            self._space_check_at = now + SPACE_CHECK_EVERY
            return
        for feed in waiting:
            if feed in self._ask_again:
                self._ask_again[feed] = min(self._ask_again[feed], now)
        waiting.clear()
        self._space_check_at = math.inf

    def _prune_idle(self, now: float) -> None:
        """Near the cap, close sessions that replicate none of our feeds, to make room."""
        sessions = len(self._live("inbound")) + sum(1 for c in self._live("outbound") if c.session)
        if sessions <= PRUNE_ABOVE:
            return
        wanted = self.source.wanted
        for conn in list(self._conns.values()):
            session = conn.session
            if session is None or conn.closing or now - conn.since < PRUNE_GRACE:
                continue
            if not any(session.peer_wants(feed) for feed in wanted):
                self.stats["pruned.idle"] += 1
                self._close(conn, now, "replicates none of our feeds")
                sessions -= 1
                if sessions <= PRUNE_ABOVE:
                    return

    def _back_off(self, peer: bytes, now: float) -> None:
        self._maintain_at = min(self._maintain_at, self.book.back_off(peer, now))

    def _close(self, conn: _Conn, now: float, reason: str) -> None:
        """Close a connection we no longer want; the driver reports `connection_lost`
        (a relayed one is gone at once: its relay is told)."""
        if conn.closing:
            return
        if conn.via is not None:
            self._forward_virtual(conn, now)  # what its channel still had to say
            self._end_virtual(conn, now, reason, tell_relay=True)
            return
        conn.channel.close()
        self._forget(conn, now, reason)
        conn.closing = True
        self._closes.append(conn.id)
        self._deadlines.pop(conn.id, None)

    def _forget(self, conn: _Conn, now: float, reason: str) -> None:
        if conn.expected is not None and self._dialling.get(conn.expected) == conn.id:
            del self._dialling[conn.expected]
            if conn.peer is None:
                self._back_off(conn.expected, now)
        if conn.peer is not None and self._by_peer.get(conn.peer) == conn.id:
            del self._by_peer[conn.peer]
            self._back_off(conn.peer, now)
            self._events.append(PeerDisconnected(conn.peer, reason))
        if conn.session is not None:
            conn.session.connection_lost(now)
        self._relay_dial_lost(conn, None, now)
        self._session_gone(conn, now)

    def _touch(self, conn: _Conn) -> None:
        """conn has input to process (or its session was told something)."""
        self._dirty[conn.id] = None

    def _touch_sessions(self, *, besides: _Conn | None = None) -> None:
        for conn in self._conns.values():
            if conn.session is not None and not conn.closing and conn is not besides:
                self._dirty[conn.id] = None

    def _drop_work(self, conn_id: int) -> None:
        self._dirty.pop(conn_id, None)
        self._outbox.pop(conn_id, None)
        self._deadlines.pop(conn_id, None)

    def _pump(self, now: float) -> None:
        """Move events and frames between channels, sessions and the store until quiet.

        Only touched connections are visited; handling one may touch others
        (new entries are announced to every session), which are visited next.
        """
        while self._dirty:
            conn_id = next(iter(self._dirty))
            del self._dirty[conn_id]
            conn = self._conns.get(conn_id)
            if conn is None:
                continue
            self._outbox[conn_id] = None
            self._process(conn, now)
            if conn.via is not None:
                self._forward_virtual(conn, now)
            if conn.closing:
                self._deadlines.pop(conn_id, None)
                continue
            timers = [t for t in (conn.channel.get_timer(), conn.session and conn.session.get_timer()) if t]
            if timers:
                self._deadlines[conn_id] = min(timers)
            else:
                self._deadlines.pop(conn_id, None)

    def _process(self, conn: _Conn, now: float) -> None:
        if conn.closing:
            return
        busy = True
        while busy:
            busy = False
            while (cev := conn.channel.next_event()) is not None:
                busy = True
                self._on_channel_event(conn, cev, now)
                if _gone(conn):
                    return
            session = conn.session
            if session is None:
                return
            while (sev := session.next_event()) is not None:
                busy = True
                self._on_session_event(conn, session, sev, now)
                if _gone(conn):
                    return
            for frame in session.frames_to_send():
                conn.channel.send_frame(frame, now)

    def _on_channel_event(
        self, conn: _Conn, event: HandshakeCompleted | FrameReceived | ChannelFailed, now: float
    ) -> None:
        if isinstance(event, FrameReceived):
            if conn.session is not None:
                if conn.peer is not None and not conn.session.stats["rx.frames"]:
                    # The peer kept the connection (its first frame is its clock):
                    # only now has the dial succeeded, so only now the backoff resets.
                    self.book.entry(conn.peer).failures = 0
                conn.session.frame_received(event.payload, now)
        elif isinstance(event, HandshakeCompleted):
            self._on_handshake(conn, event.peer_key, now)
        elif conn.probe_of is not None:
            self._probe_done(conn, DialStatus.FAILED, now)
            self._close(conn, now, event.reason)
        else:
            offence: Offence | None
            if conn.peer is None:
                reason = "handshake.timeout" if event.timeout else "handshake.failed"
                offence = Offence.HANDSHAKE_TIMEOUT if event.timeout else Offence.HANDSHAKE_FAILED
                if conn.outbound:
                    offence = None  # a dial we could not finish: a dead or moved address, not an attack
            else:
                reason = "channel.failed"
                offence = None if event.timeout else Offence.CHANNEL_FAILED
            self.stats[reason] += 1
            self._events.append(InputRefused(conn.peer, reason, event.reason))
            if offence is not None:
                self._penalize(conn, offence, now)
            self._close(conn, now, event.reason)

    def _on_handshake(self, conn: _Conn, peer: bytes, now: float) -> None:
        if conn.via is not None:
            carrier = self._conns.get(conn.via[0])
            if carrier is None or carrier.peer == peer:
                # A relay may not pose as someone behind itself: it is connected already.
                self.stats["relay.refused.carrier_key"] += 1
                self._close(conn, now, "relayed handshake as the relay itself")
                return
        if conn.probe_of is not None:  # our dial-back reached the peer that asked for it
            self._probe_done(conn, DialStatus.OK, now)
            self._close(conn, now, "dial-back done")
            return
        if not conn.outbound and conn.via is None and self._probe_expected(peer, now):
            # The peer's dial-back of us: it proved the address; no session (we have one).
            self.stats["dialback.probe_received"] += 1
            self._events.append(DialBackProbed(peer))
            self._close(conn, now, "dial-back probe")
            return
        if peer == self.own:
            self.stats["refused.self"] += 1
            self._close(conn, now, "connected to ourselves")
            return
        if peer in self.blocked:
            self.stats["refused.blocked"] += 1
            self._events.append(InputRefused(peer, "refused.blocked", "blocked key"))
            self._close(conn, now, "blocked")
            return
        if self.scores.banned(peer, now):
            self.stats["refused.banned"] += 1
            self._events.append(InputRefused(peer, "refused.banned", "banned for misbehaving"))
            self._close(conn, now, "banned")
            return
        other_id = self._by_peer.get(peer)
        if other_id is not None:
            other = self._conns[other_id]

            # Both ends keep the connection dialled by the smaller key.  When one
            # side dialled both, it has given up the older one (nobody dials a
            # peer it is connected to): keep the newer, e.g. after the peer
            # restarted and its old connection is still half-open here.
            def dialler(c: _Conn) -> bytes:
                return self.own if c.outbound else peer

            self.stats["refused.duplicate"] += 1
            # A relayed connection never displaces a direct one (both ends agree: each sees
            # which of its two connections is relayed); else the smaller dialler wins.
            keep_new = (conn.via is None, dialler(conn) <= dialler(other)) >= (
                other.via is None,
                dialler(other) <= dialler(conn),
            )
            if keep_new:
                self._close(other, now, "duplicate connection")
            else:
                self._relay_dial_lost(conn, other, now)
                self._close(conn, now, "duplicate connection")
                return
            if conn.closing or conn.id not in self._conns:
                return  # closing the other ended this one too (it was carried by it)
        if not conn.outbound and not self._admit_session(conn, peer, now):
            self._close(conn, now, "no inbound slot")
            return
        conn.peer = peer
        conn.credited = now
        self._by_peer[peer] = conn.id
        if conn.expected is not None and self._dialling.get(conn.expected) == conn.id:
            del self._dialling[conn.expected]
        if conn.outbound and conn.via is None:
            self.book.learn(peer, *conn.addr)
        self.book.connected(peer, now)
        conn.session = GossipSession(self.source, eager=True, now=now, peer_feed_budget=self.peer_feed_budget)
        conn.session.connection_made(now)
        self._events.append(PeerConnected(peer, conn.addr, conn.outbound))
        waiting = self._relay_dials.get(conn.addr)
        if conn.outbound and waiting is not None and waiting[0] == conn.id:
            del self._relay_dials[conn.addr]
            for key in waiting[1]:
                self._open_circuit(conn, key, now)

    def _on_session_event(self, conn: _Conn, session: GossipSession, event: object, now: float) -> None:
        peer = conn.peer
        if isinstance(event, EntriesReceived):
            self._ingest(conn, session, event, now)
        elif isinstance(event, ForkProofReceived):
            self._fork_proof(conn, session, event, now)
        elif isinstance(event, MentionReceived):
            assert peer is not None
            self._events.append(MentionArrived(peer, event.entry, event.stamp))
        elif isinstance(event, MentionAcked):
            assert peer is not None
            self._events.append(MentionAnswered(peer, event.entry_id, event.status, event.need))
        elif isinstance(event, DmReceived):
            assert peer is not None
            self._events.append(DmArrived(peer, event.recipient, event.sealed, event.stamp))
        elif isinstance(event, DmAcked):
            assert peer is not None
            self._events.append(DmAnswered(peer, event.dm_id, event.status, event.need))
        elif isinstance(event, SliceRequested):
            assert peer is not None
            self._events.append(SliceAsked(peer, event.feed, event.seqs))
        elif isinstance(event, SliceAnswered):
            assert peer is not None
            self._events.append(SliceArrived(peer, event.feed, event.seqs, event.entries))
        elif isinstance(event, DialBackRequested):
            self._dial_back(conn, session, event.port, now)
        elif isinstance(event, RelayReceived):
            self._relay_received(conn, event.circuit, event.data, now)
        elif isinstance(event, ConnectRequested):
            self._connect_requested(conn, session, event.key, event.circuit, now)
        elif isinstance(event, IncomingCircuit):
            self._incoming_circuit(conn, event.key, event.circuit, now)
        elif isinstance(event, CircuitChanged):
            self._circuit_changed(conn, event.circuit, event.status, now)
        elif isinstance(event, ReservationRequested):
            self._reservation_requested(conn, session, now)
        elif isinstance(event, ReservationAnswered):
            assert peer is not None
            seconds = event.seconds if event.status == RelayStatus.OK else 0
            self.stats[f"relay.reservation.{'granted' if seconds else 'refused'}"] += 1
            if seconds:
                self.reserved_with[peer] = now + seconds
            else:
                self.reserved_with.pop(peer, None)
            self._events.append(RelayReserved(peer, conn.addr, seconds))
        elif isinstance(event, DialBackAnswered):
            assert peer is not None
            # (`_probes_expected` keeps the peer until PROBE_WAIT ends: its probe connection
            # may complete after this answer arrived on the session.)
            try:
                ip = str(ipaddress.ip_address(event.ip))
            except ValueError:  # 4 or 16 bytes always make an address; kept total anyway
                ip = ""
            self.stats["dialback.answered"] += 1
            self._events.append(DialBackResult(peer, event.port, event.status, (ip, event.observed_port)))
        elif isinstance(event, PeerMisbehaved):
            self.stats[f"misbehaved.{event.reason}"] += 1
            self._events.append(InputRefused(peer, f"misbehaved.{event.reason}", event.detail))
            self._penalize(conn, Offence.MISBEHAVED, now)
        elif isinstance(event, MessageDropped):
            self.stats[f"dropped.{event.reason}"] += 1
        elif isinstance(event, EntriesRefused):
            self.stats["entries.refused_by_peer"] += 1
        elif isinstance(event, SessionFailed):
            self.stats["session.failed"] += 1
            self._close(conn, now, event.reason)
            self._penalize(conn, Offence.SESSION_FAILED, now)

    # ============================================================ relaying

    @property
    def circuit_count(self) -> int:
        """Circuits relayed through us now."""
        return len(self._circuits) // 2

    def request_reservation(self, peer: bytes, now: float) -> bool:
        """Ask connected ``peer`` to relay circuits to us (RESERVE); its answer is reported as
        `RelayReserved`.  Only over a connection we dialled (so the relay is reachable where
        we reached it).  False if there is none, or a request to it is pending."""
        conn_id = self._by_peer.get(peer)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None or conn.session is None or conn.closing or not conn.outbound or conn.via:
            return False
        if not conn.session.request_reservation(now):
            return False
        self.stats["relay.reservation.requested"] += 1
        self._touch(conn)
        self._pump(now)
        return True

    def _reservation_requested(self, conn: _Conn, session: GossipSession, now: float) -> None:
        """A peer asks us to relay for it: yes while we relay, have room, and it did not
        reach us through a relay itself."""
        assert conn.peer is not None
        for key in [k for k, until in self.reservations.items() if until <= now]:
            del self.reservations[key]
        room = conn.peer in self.reservations or len(self.reservations) < MAX_RESERVATIONS
        if not self.relay_enabled or not room or conn.via is not None:
            self.stats["relay.reserve.refused"] += 1
            session.answer_reservation(RelayStatus.REFUSED, 0, now)
            return
        self.reservations[conn.peer] = now + RESERVATION_SECONDS
        self.stats["relay.reserve.granted"] += 1
        session.answer_reservation(RelayStatus.OK, RESERVATION_SECONDS, now)

    def _new_circuit(self, conn_id: int, parity: int) -> int:
        """A circuit number free on connection conn_id: even for the CONNECTs we send, odd
        for the INCOMINGs we send as a relay, so the two ends never pick the same one."""
        while True:
            self._next_circuit = (self._next_circuit + 1) % (MAX_CIRCUIT + 1)
            n = self._next_circuit
            if n % 2 == parity and (conn_id, n) not in self._circuits and (conn_id, n) not in self._virtual:
                return n

    def _connect_requested(
        self, conn: _Conn, session: GossipSession, key: bytes, circuit: int, now: float
    ) -> None:
        """A peer asks us, a relay, to open its circuit to key (a node with a reservation)."""
        here = (conn.id, circuit)
        target_id = self._by_peer.get(key)
        target = self._conns.get(target_id) if target_id is not None else None
        refusal = None
        if not self.relay_enabled:
            refusal = "off"
        elif self.reservations.get(key, 0.0) <= now:
            refusal = "no_reservation"
        elif target is None or target.session is None or target.closing or target.via is not None:
            refusal = "target_gone"
        elif here in self._circuits or here in self._virtual or circuit % 2:
            refusal = "circuit_in_use"  # (odd numbers are the relay's own)
        elif conn.peer is None or not self._connect_budget.take(conn.peer, now):
            refusal = "rate"
        elif len(self._circuits) // 2 >= MAX_CIRCUITS:
            refusal = "full"
        else:
            ends = [a for a in self._circuits if a[0] == target.id]
            sources = [a for a in self._circuits if a[0] == conn.id]
            if len(ends) >= CIRCUITS_PER_TARGET or len(sources) >= CIRCUITS_PER_SOURCE:
                refusal = "full"
        if refusal is not None or target is None or target.session is None or conn.peer is None:
            self.stats[f"relay.connect.refused.{refusal}"] += 1
            session.send_circuit(circuit, RelayStatus.REFUSED, now)
            return
        there = (target.id, self._new_circuit(target.id, 1))
        self._circuits[here], self._circuits[there] = there, here
        self._circuit_bytes[here] = self._circuit_bytes[there] = 0
        target.session.send_incoming(conn.peer, there[1], now)
        session.send_circuit(circuit, RelayStatus.OK, now)
        self.stats["relay.circuits.opened"] += 1
        self._touch(target)

    def _relay_received(self, conn: _Conn, circuit: int, data: bytes, now: float) -> None:
        here = (conn.id, circuit)
        vconn_id = self._virtual.get(here)
        if vconn_id is not None:
            vconn = self._conns.get(vconn_id)
            if vconn is not None and not vconn.closing:
                vconn.channel.receive_data(data, now)
                self._touch(vconn)
            return
        there = self._circuits.get(here)
        if there is None:
            self.stats["relay.drop.unknown_circuit"] += 1  # e.g. just refused or closed: no fault
            return
        other = self._conns.get(there[0])
        carried = self._circuit_bytes.get(here, 0) + len(data)
        self._circuit_bytes[here] = carried
        if (
            other is None
            or other.session is None
            or carried > CIRCUIT_BYTES
            or self.backlog(other.id) + other.session.relay_queued + len(data) > RELAY_BACKLOG
            or not self._relay_budget.take(now, len(data))
            or not other.session.send_relay(there[1], data, now)
        ):
            self.stats["relay.circuits.cut"] += 1
            self._cut_circuit(here, now)
            return
        self.stats["relay.bytes"] += len(data)
        self._touch(other)

    def _cut_circuit(self, here: tuple[int, int], now: float) -> None:
        """Close a circuit through us; both ends are told."""
        there = self._circuits.pop(here, None)
        self._circuit_bytes.pop(here, None)
        if there is None:
            return
        self._circuits.pop(there, None)
        self._circuit_bytes.pop(there, None)
        for conn_id, circuit in (here, there):
            end = self._conns.get(conn_id)
            if end is not None and end.session is not None and not end.closing:
                end.session.send_circuit(circuit, RelayStatus.CLOSED, now)
                self._touch(end)

    def _circuit_changed(self, conn: _Conn, circuit: int, status: int, now: float) -> None:
        here = (conn.id, circuit)
        if status == RelayStatus.OK:
            return  # our circuit is open: its bytes already flow
        vconn_id = self._virtual.get(here)
        if vconn_id is not None:
            vconn = self._conns.get(vconn_id)
            if vconn is not None:
                self.stats[f"relay.circuit.{'refused' if status == RelayStatus.REFUSED else 'closed'}"] += 1
                self._end_virtual(vconn, now, "relay closed the circuit", tell_relay=False)
            return
        if here in self._circuits:
            self._cut_circuit(here, now)

    def _incoming_circuit(self, conn: _Conn, key: bytes, circuit: int, now: float) -> None:
        """A relay says key opened a circuit to us: answer its handshake over the circuit."""
        here = (conn.id, circuit)
        assert conn.session is not None
        reserved = conn.peer is not None and self.reserved_with.get(conn.peer, 0.0) > now
        if (
            not reserved
            or conn.via is not None
            or circuit % 2 == 0
            or here in self._virtual
            or here in self._circuits
            or key in self.blocked
        ):
            conn.session.send_circuit(circuit, RelayStatus.REFUSED, now)
            self.stats["relay.incoming.refused"] += 1
            return
        # Circuits through one relay have budgets of their own (never the relay's address's,
        # and no offence on its prefix): at most RELAYED_HANDSHAKING in their handshake, the
        # oldest evicted for a newcomer.
        pending = [
            c for c in self._conns.values() if c.via is not None and c.via[0] == conn.id and c.peer is None
        ]
        if len(pending) >= RELAYED_HANDSHAKING:
            self.stats["relay.incoming.evicted"] += 1
            self._close(min(pending, key=lambda c: (c.since, c.id)), now, "relayed handshake evicted")
        vconn = self._new_conn(
            SecureChannel.responder(
                self.identity, now=now, config=self.inbound_config, random_bytes=self.random_bytes
            ),
            outbound=False,
            addr=conn.addr,
            now=now,
        )
        vconn.ip, vconn.net, vconn.via = f"relay:{conn.id}", b"", here
        self._virtual[here] = vconn.id
        self.stats["relay.incoming"] += 1
        self._touch(vconn)

    def _dial_via_relay(self, peer: bytes, relay: tuple[str, int], now: float) -> None:
        """Reach peer through the relay at ``relay``: over our session with whoever listens
        there, or after dialling it (the relay's key does not matter: the circuit's own
        handshake proves peer)."""
        for conn in self._conns.values():
            if conn.session is None or conn.closing or conn.via is not None or conn.peer is None:
                continue
            if conn.addr == relay or self.book.address(conn.peer) == relay:
                self._open_circuit(conn, peer, now)
                return
        pending = self._relay_dials.get(relay)
        if pending is not None and pending[0] in self._conns:
            if peer not in pending[1]:
                pending[1].append(peer)
            return
        channel = SecureChannel.initiator(
            self.identity, now=now, config=self.channel_config, random_bytes=self.random_bytes
        )
        conn = self._new_conn(channel, outbound=True, addr=relay, now=now)
        conn.ip = host_key(relay[0])
        conn.net = address_prefix(conn.ip)
        self._relay_dials[relay] = (conn.id, [peer])
        self._dials.append((conn.id, *relay))
        self._touch(conn)
        self.stats["relay.dials"] += 1

    def _open_circuit(self, relay: _Conn, peer: bytes, now: float) -> None:
        """Send CONNECT for peer on the relay session, and start our handshake over it."""
        if relay.session is None or peer in self._by_peer or peer in self._dialling or peer in self.blocked:
            return
        circuit = self._new_circuit(relay.id, 0)
        here = (relay.id, circuit)
        if here in self._virtual or not relay.session.send_connect(peer, circuit, now):
            return
        channel = SecureChannel.initiator(
            self.identity,
            now=now,
            expected_peer=peer,
            config=self.channel_config,
            random_bytes=self.random_bytes,
        )
        vconn = self._new_conn(channel, outbound=True, addr=relay.addr, now=now)
        vconn.ip, vconn.net, vconn.via, vconn.expected = f"relay:{relay.id}", b"", here, peer
        self._virtual[here] = vconn.id
        self._dialling[peer] = vconn.id
        self.stats["relay.circuits.dialled"] += 1
        self._touch(vconn)
        self._touch(relay)

    def _forward_virtual(self, vconn: _Conn, now: float) -> None:
        """Move a relayed connection's output into its relay session as RELAY frames."""
        assert vconn.via is not None
        data = vconn.channel.data_to_send()
        if not data:
            return
        relay = self._conns.get(vconn.via[0])
        if relay is None or relay.session is None or relay.closing:
            return
        if not relay.session.send_relay(vconn.via[1], data, now):
            self.stats["relay.queue_full"] += 1
            self._end_virtual(vconn, now, "relay queue full", tell_relay=True)
            return
        self._touch(relay)

    def _end_virtual(self, vconn: _Conn, now: float, reason: str, *, tell_relay: bool) -> None:
        """A relayed connection is gone (closed by us, by the relay, or with the relay)."""
        assert vconn.via is not None
        if vconn.closing:
            return
        vconn.channel.close()
        self._forget(vconn, now, reason)
        vconn.closing = True
        self._virtual.pop(vconn.via, None)
        self._conns.pop(vconn.id, None)
        self._drop_work(vconn.id)
        relay = self._conns.get(vconn.via[0])
        if tell_relay and relay is not None and relay.session is not None and not relay.closing:
            relay.session.send_circuit(vconn.via[1], RelayStatus.CLOSED, now)
            self._touch(relay)

    def _probe_expected(self, peer: bytes, now: float) -> bool:
        """Whether a new inbound connection from peer is its dial-back of us: we asked it on
        a session that is still open, lately (after that session ends, or after a restart of
        the peer, a new connection from it is just a connection)."""
        until, asked_on = self._probes_expected.get(peer, (0.0, -1))
        asker = self._conns.get(asked_on)
        if until <= now or asker is None or asker.closing:
            self._probes_expected.pop(peer, None)
            return False
        return True

    def _relay_dial_lost(self, conn: _Conn, other: _Conn | None, now: float) -> None:
        """A dial to a relay is given up: its waiting keys go over ``other`` (a session with
        the same relay, kept by the duplicate rule) or back off."""
        waiting = self._relay_dials.get(conn.addr)
        if waiting is None or waiting[0] != conn.id:
            return
        del self._relay_dials[conn.addr]
        for key in waiting[1]:
            if other is not None and other.session is not None and not other.closing:
                self._open_circuit(other, key, now)
            else:
                self._back_off(key, now)

    def _session_gone(self, conn: _Conn, now: float) -> None:
        """conn's session ended: the circuits through it and the connections over it end."""
        for here in [h for h in self._circuits if h[0] == conn.id]:
            self._cut_circuit(here, now)
        for here in [h for h in self._virtual if h[0] == conn.id]:
            vconn = self._conns.get(self._virtual[here])
            if vconn is not None:
                self._end_virtual(vconn, now, "relay connection lost", tell_relay=False)
            self._virtual.pop(here, None)
        if conn.peer is not None and conn.peer not in self._by_peer:
            self.reservations.pop(conn.peer, None)
            self.reserved_with.pop(conn.peer, None)

    # ============================================================ dial-back

    def _observed(self, conn: _Conn) -> tuple[bytes, int] | None:
        """The address conn comes from (what we dialled, for an outbound one), packed; None
        if it is no address a probe may be sent to (not an IP literal, unspecified,
        multicast or reserved: never "dial 0.0.0.0", which is this machine)."""
        if not conn.exact_ip or conn.via is not None:
            return None
        ip = ipaddress.ip_address(conn.exact_ip)
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return None
        return ip.packed, conn.addr[1]

    def _dial_back(self, conn: _Conn, session: GossipSession, port: int, now: float) -> None:
        """The peer of conn asked us to dial it back on port, at the address conn comes from
        (never any other: nobody can make us dial a third party)."""
        observed = self._observed(conn)
        probes = len(self._live("probe"))
        if observed is None or probes >= MAX_PROBES or not self._probe_budget.take(now):
            self.stats["dialback.refused"] += 1
            ip, observed_port = observed or (bytes(4), 0)
            session.answer_dial_back(DialStatus.REFUSED, ip, observed_port, now)
            return
        assert conn.peer is not None
        host = str(ipaddress.ip_address(observed[0]))
        channel = SecureChannel.initiator(
            self.identity,
            now=now,
            expected_peer=conn.peer,
            config=dataclasses.replace(self.channel_config, handshake_timeout=PROBE_TIMEOUT),
            random_bytes=self.random_bytes,
        )
        probe = self._new_conn(channel, outbound=True, addr=(host, port), now=now)
        probe.ip, probe.net, probe.exact_ip = host_key(host), address_prefix(host_key(host)), host
        probe.probe_of = conn.id
        self._dials.append((probe.id, host, port))
        self._touch(probe)
        self.stats["dialback.probes"] += 1

    def _probe_done(self, probe: _Conn, status: DialStatus, now: float) -> None:
        """Answer the peer that asked for probe (once)."""
        asker_id, probe.probe_of = probe.probe_of, None
        self.stats[f"dialback.{status.name.lower()}"] += 1
        asker = self._conns.get(asker_id) if asker_id is not None else None
        if asker is None or asker.session is None or asker.closing:
            return
        ip, observed_port = self._observed(asker) or (bytes(4), 0)
        asker.session.answer_dial_back(status, ip, observed_port, now)
        self._touch(asker)

    def _ingest(self, conn: _Conn, session: GossipSession, event: EntriesReceived, now: float) -> None:
        """Decode a received batch (cheap checks only) and queue it for its signatures
        (`p2pblog.ingest_queue`); it is stored by `_commit`, in order, once verified."""
        skip = "blocked" if event.feed in self.blocked else None
        if skip is None and event.feed not in self.source.wanted:
            skip = "unwanted"
        entries: list[Entry] = []
        fault: tuple[str, str] | None = None
        if skip is None:
            for i, raw in enumerate(event.entries):
                try:
                    # The only decode of a peer's entry; its signature is checked by
                    # `first_forgery` (maybe on a worker thread) before anything is stored.
                    entry = decode_entry(raw, check_signature=False)
                except EntryError:
                    fault = ("entries.malformed", "entries do not match their header")
                    break
                if entry.author != event.feed or entry.seq != event.first_seq + i:
                    fault = ("entries.malformed", "entries do not match their header")
                    if first_forgery((entry,)) is not None:  # a forgery is that first
                        fault = _FORGED
                    break
                entries.append(entry)
        self.verify.add(conn.id, event, tuple(entries), fault, skip)
        self._commit_ready(conn, now)

    def entries_verified(self, token: int, forgery: int | None, now: float) -> None:
        """The driver verified the entries of ``token`` (`verifications_to_make`):
        ``forgery`` is the index of the first whose signature does not verify."""
        conn_id = self.verify.verified(token, forgery)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None:
            if conn_id is not None:
                # The connection is gone; the batch was never acknowledged, so the
                # peer (or another) sends it again: storing it now is not needed.
                self.verify.drop(conn_id)
            return
        self._commit_ready(conn, now)
        self._touch(conn)
        self._pump(now)

    def verifications_to_make(self) -> list[tuple[int, tuple[Entry, ...]]]:
        """``(token, entries)`` whose signatures the driver checks off the event loop
        (after `offload_verification`) and reports with `entries_verified`."""
        return self.verify.to_verify()

    def _commit_ready(self, conn: _Conn, now: float) -> None:
        """Store the connection's verified batches, oldest first, while they are done."""
        while (job := self.verify.next_ready(conn.id)) is not None:
            if conn.session is None or conn.closing:
                self.verify.drop(conn.id)
                return
            try:
                self._commit(conn, conn.session, job, now)
            except Exception:
                # A bug of ours or a store error (not a full disk): the batches behind
                # this one can no longer be acknowledged in order.  Close the connection
                # (the peer sends them again on the next) and let the driver count it.
                self.verify.drop(conn.id)
                self._close(conn, now, "internal error")
                raise

    def _commit(self, conn: _Conn, session: GossipSession, job: VerifyJob, now: float) -> None:
        event = job.event
        if job.skip == "blocked" or event.feed in self.blocked:
            self.stats["entries.refused_blocked"] += len(event.entries)
            session.entries_stored(event.feed, now)
            return
        if job.skip == "unwanted" or event.feed not in self.source.wanted:
            # Unfollowed while in flight: not storing them is a refusal.
            session.entries_stored(event.feed, now)
            return
        if job.skip == "busy":
            # Too many entries held for their signatures: not the peer's fault; ask
            # for the feed again in a moment (`p2pblog.ingest_queue`).
            self.stats["entries.refused_busy"] += len(event.entries)
            session.entries_stored(event.feed, now)
            self._ask_again[event.feed] = min(
                self._ask_again.get(event.feed, now + BUSY_RETRY), now + BUSY_RETRY
            )
            return
        entries = job.entries
        fault = job.fault
        if job.forgery is not None:
            entries = entries[: job.forgery]
            fault = _FORGED
        before = self.store.latest_seq(event.feed)
        try:
            report = self.store.ingest_entries(entries, now_ms=int(now * 1000))
        except StorageFull:
            # Not the peer's fault: what was committed stays; ask again when there may be room.
            self.stats["entries.refused_storage_full"] += len(entries)
            session.entries_stored(event.feed, now)
            self._ask_again[event.feed] = now + STORAGE_RETRY
            self._waiting_for_space.add(event.feed)
            self._space_check_at = min(self._space_check_at, now + SPACE_CHECK_EVERY)
            if self.store.latest_seq(event.feed) > before:
                self._feed_grew(conn, event.feed, now)
            return
        if fault is not None:
            self._peer_fault(conn, session, *fault, now)
        elif isinstance(report.error, EntryFromFuture):
            # Not the relay's fault: ask for the feed again once our clock is near.
            self.stats["entries.refused_future"] += 1
            assert report.error_index is not None
            ahead = entries[report.error_index].timestamp - MAX_AHEAD_MS
            self._ask_again[event.feed] = max(now + MAINTAIN_EVERY, ahead / 1000)
        elif report.error is not None and not isinstance(report.error, ChainError):
            self._peer_fault(conn, session, "entries.forged", str(report.error), now)
        session.entries_stored(event.feed, now)
        self.stats["entries.received"] += report.accepted
        self.stats["entries.duplicate"] += report.duplicates
        if report.duplicates and self.prune_duplicates and session.state is SessionState.OPEN:
            session.request_push(event.feed, False, now)
        if report.accepted:
            self._feed_grew(conn, event.feed, now)
            assert conn.peer is not None
            self.scores.credit(conn.peer, DELIVERY_CREDIT, now)
            conn.useful = True
            latest = self.store.latest_seq(event.feed)
            self._events.append(EntriesStored(event.feed, conn.peer, report.accepted, latest))
        for feed, _ in report.fork_seqs:
            self.stats["forks.found"] += 1
            self._fork_found(feed, now)

    def _feed_grew(self, conn: _Conn, feed: bytes, now: float) -> None:
        """We stored new entries of feed from conn: announce them to the other sessions."""
        for other in self._conns.values():
            if other is not conn and other.session is not None and not other.closing:
                other.session.feed_updated(feed, now)
        self._touch_sessions(besides=conn)

    def _peer_fault(self, conn: _Conn, session: GossipSession, reason: str, detail: str, now: float) -> None:
        self.stats[reason] += 1
        self._events.append(InputRefused(conn.peer, reason, detail))
        session.report_misbehaviour(detail, now)
        self._penalize(conn, Offence.BAD_ENTRIES, now)

    def _fork_proof(self, conn: _Conn, session: GossipSession, event: ForkProofReceived, now: float) -> None:
        try:
            pair: tuple[Entry, Entry] | None = (decode_entry(event.first), decode_entry(event.second))
        except EntryError:
            pair = None
        if (
            pair is None
            or {pair[0].author, pair[1].author} != {event.feed}
            or {pair[0].seq, pair[1].seq} != {event.seq}
            or pair[0].id == pair[1].id
        ):
            self.stats["fork_proof.invalid"] += 1
            session.report_misbehaviour("invalid fork proof", now)
            self._penalize(conn, Offence.MISBEHAVED, now)
            return
        for entry in pair:
            # e.g. we do not hold the feed up to that seq; a full disk: the proof comes again
            with contextlib.suppress(EntryError, StorageFull):
                self.store.ingest(entry.raw, now_ms=int(now * 1000))
        if self.store.feed_state(event.feed).forked_seq is not None:
            self._fork_found(event.feed, now)

    def _fork_found(self, feed: bytes, now: float) -> None:
        for conn in self._conns.values():
            if conn.session is not None and not conn.closing:
                conn.session.fork_found(feed, now)
        self._touch_sessions()
