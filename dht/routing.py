"""The routing table: k-buckets with ping-before-evict, exact diverse k-closest, refresh times.

Theory of operation
-------------------
The table holds up to k contacts per *bucket*.  Bucket ``i`` (0..159) holds the
contacts whose XOR distance to our own id lies in ``[2**i, 2**(i+1))``
(paper section 2.2), i.e. ``i = distance.bit_length() - 1``.  A fixed array of
160 buckets is equivalent to the paper's split-on-demand tree of section 4.2
for every bucket that can fill up, and is simpler to reason about (it is also
what rust-libp2p's ``KBucketsTable`` does).  Our own id is never stored.

The array is virtual: a bucket's dicts exist only while it holds a contact
or a replacement, and of the rest only a refresh time per index is kept.  With
n nodes about log2(n) buckets are ever non-empty, and 160 pairs of empty dicts
per node were the largest part of a node's memory (docs/benchmarks.md).

Within a bucket contacts are kept least-recently seen first ("move to the
tail" is a delete and an append; see "Memory" below).
`RoutingTable.update` is called for every message a contact proves it sent
(paper 2.2: "when a Kademlia node receives any message ... from another
node, it updates the appropriate k-bucket"):

* known id, same address: move to the tail, clear its failure count;
* known id, other address: ignored.  Section 2.2 prefers old contacts
  ("the longer a node has been up, the more likely it is to remain up") and
  an unverified claim must not redirect traffic; if the old address dies the
  contact is evicted and the new one can come in;
* bucket has room: append;
* bucket full, one of its contacts is stale (see below): replace it;
* bucket full: the newcomer goes to the bucket's *replacement cache*
  (section 4.1) and, unless a check is already running or the
  least-recently seen contact was heard from within `questionable_after`
  seconds, the table asks the driver to ping that contact
  (`UpdateOutcome.PING`).  The grace period is BitTorrent's "questionable
  node" rule (BEP 5): a contact that spoke a moment ago is alive, and pinging
  it for every newcomer of a full bucket more than doubled our datagrams per
  lookup (docs/benchmarks.md).  If
  that contact answers, `update` moves it to the tail and the newcomer stays a
  replacement; if the ping times out the driver calls `eviction_failed`, the
  contact is removed (unless it was heard from after the ping went out) and
  the freshest replacement takes its place.  Live old
  contacts are never evicted for a newcomer (section 2.2's defence against
  flooding the table with new ids).

Only *answers* to our requests reach `update` (the core's rule, see
`dht.core`): a request proves nothing about the sender's address, and
letting requests in let a stranger fill the table with ids that never
answer.

RPC failures outside that check are counted per contact (`record_failure`);
a contact that failed `STALE_FAILURES` RPCs in a row is *stale*.  A stale
contact is replaced at once when a replacement exists; otherwise it is
removed anyway if some other contact answered us after its first failed
request went out (``sent_at``): the network works, so this contact is dead.
Section 4.1 keeps stale contacts only when nothing better is known so that a
node that loses its *own* connectivity does not flush its table; without a
fresh answer from anyone we cannot tell that case apart, so we keep them.
Stale contacts still in the table give way to the first newcomer that
answers (`update`).

`closest` is exact: it ranks the contacts by XOR, bucket by bucket in
distance order, and keeps the k nearest with at most `MAX_CLOSEST_PER_NETWORK`
of one network (`identity.netaddr.network_key`: IPv4 /24, IPv6 /48); when
too few networks are known, the nearest others fill the k
(`diverse_first`), so on one network it is the plain k nearest.  It stops
at the first bucket boundary where the nearest so far fill the k that way.
This is what FIND_NODE answers name and what lookups start from: k Sybils
from one /24 next to a key are 2 of the k a node names for it, so walks
still hear of the honest nodes there (discv5 caps 2 per /24 per bucket; we
cap the answer, not the table).  Tables hold at most a few hundred contacts
in practice (about k per bit of log2(network size)), so the ranking is
cheap, and exactness is what lookups and the tests rely on.

**Memory.**  A bucket is four parallel lists (contacts, their integer ids,
when each last answered, failures in a row), not a dict of entry objects
(when a run of failures began is kept only for the contacts failing now): a
contact costs four list slots and its `Contact`, where an entry object and
a dict entry cost about three times that (issue 18, docs/design.md).  The
table's one dict, id to contact, answers `get` and membership; a contact's
position in its bucket is found among at most k integer ids.

Each bucket remembers when a lookup last targeted its range
(`touch`).  Buckets not touched for `refresh_interval` are due for a
refresh lookup of a random id in their range (section 2.3).  Only buckets from
the nearest non-empty one outwards are refreshed: nearer buckets are empty
because no such node exists, and refreshing them would cost ~150 useless
lookups an hour.
"""

from __future__ import annotations

import bisect
import enum
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from dht.ids import ID_BITS, ID_BYTES, Contact, K
from identity.errors import LocalProtocolError
from identity.netaddr import network_key

if TYPE_CHECKING:
    from random import Random

#: Consecutive RPC failures after which a contact is stale (paper 4.1 says 5
#: for a contact that merely went quiet; we retransmit every RPC four times
#: over 5 s, so each of our failures already means five lost datagrams, and
#: two in a row at 5% loss happen to a live contact about once in 10^13).
STALE_FAILURES: Final = 2
#: Seconds after which an untouched bucket is refreshed (paper 2.3: one hour).
REFRESH_INTERVAL: Final = 3600.0
#: Seconds of silence after which a contact is "questionable" and a full
#: bucket's newcomer triggers a liveness ping of it (BEP 5: 15 minutes).
QUESTIONABLE_AFTER: Final = 15 * 60.0
#: Contacts of one network (`identity.netaddr.network_key`: an IPv4 /24, an
#: IPv6 /48) among the k closest a table names or a lookup counts, unless
#: too few other networks are known to fill the k (discv5: 2 per /24 per
#: bucket).  Fewer than `dht.lookup.READ_QUORUM`: one network cannot make a
#: read's quorum alone.
MAX_CLOSEST_PER_NETWORK: Final = 2


@functools.lru_cache(maxsize=1 << 16)
def network_of(host: str) -> str:
    """`identity.netaddr.network_key`, cached: every contact ranked or walked asks for it."""
    return network_key(host)


def diverse_first(ranked: list[Contact], count: int, per_network: int) -> tuple[list[Contact], bool]:
    """The first ``count`` of ``ranked`` (nearest first) with at most ``per_network`` of
    one network, the nearest others filling what is left; and whether no filler was needed."""
    chosen: list[int] = []
    spare: list[int] = []
    taken: dict[str, int] = {}
    for i, contact in enumerate(ranked):
        network = network_of(contact.addr[0])
        have = taken.get(network, 0)
        if have < per_network:
            taken[network] = have + 1
            chosen.append(i)
            if len(chosen) >= count:
                return [ranked[j] for j in chosen], True
        elif len(spare) < count:
            spare.append(i)
    filled = sorted(chosen + spare[: count - len(chosen)])
    return [ranked[j] for j in filled], False


class UpdateOutcome(enum.Enum):
    ADDED = "added"
    REFRESHED = "refreshed"
    #: Bucket full: newcomer cached as a replacement, ping the returned contact.
    PING = "ping"
    #: Bucket full and a check is already running: newcomer cached.
    QUEUED = "queued"
    IGNORED = "ignored"


class _Bucket:
    """A bucket that holds something (empty ones do not exist, module docstring).

    Its contacts are parallel lists, least-recently seen first (position i of
    each list is contact i): no object and no dict entry per contact (module
    docstring, "Memory").  A contact's position is found by its integer id
    (`RoutingTable._position`), at most k comparisons of ints.
    """

    __slots__ = ("checking", "failures", "ints", "members", "replacements", "seen")

    def __init__(self) -> None:
        self.members: list[Contact] = []
        #: Each contact's id as an integer (`RoutingTable.closest` ranks by it).
        self.ints: list[int] = []
        #: When each last answered us (the caller's ``now``, the object itself).
        self.seen: list[float] = []
        #: Requests each failed in a row (when the first was sent: `RoutingTable._failing_since`).
        self.failures: list[int] = []
        # Most-recently seen last.
        self.replacements: dict[bytes, Contact] = {}
        # Id of the contact whose liveness check is in flight, if any.
        self.checking: bytes | None = None


#: What an index without a bucket reads as (never written to).
_NO_BUCKET: Final = _Bucket()


class RoutingTable:
    """Contacts by XOR distance from ``own_id``.  Pure data: it never sends anything."""

    def __init__(
        self,
        own_id: bytes,
        now: float,
        *,
        k: int = K,
        replacement_cache: int = K,
        refresh_interval: float = REFRESH_INTERVAL,
        questionable_after: float = QUESTIONABLE_AFTER,
        per_network: int | None = None,
    ) -> None:
        if per_network is None:
            per_network = MAX_CLOSEST_PER_NETWORK
        if len(own_id) != ID_BYTES:
            raise LocalProtocolError(f"a node id is {ID_BYTES} bytes")
        if k < 1 or replacement_cache < 0 or per_network < 1:
            raise LocalProtocolError("k and per_network must be >= 1 and the replacement cache >= 0")
        self.own_id = own_id
        self.k = k
        #: Contacts of one network `closest` names among its count while others are known.
        self.per_network = per_network
        self.replacement_cache = replacement_cache
        self.refresh_interval = refresh_interval
        self.questionable_after = questionable_after
        self._own_int = int.from_bytes(own_id, "big")
        #: The buckets that hold contacts or replacements, by index (module docstring).
        self._buckets: dict[int, _Bucket] = {}
        #: When a lookup last targeted each bucket's range (`touch`), by index; a bucket
        #: never touched counts from ``_created``.  A dict of the touched few, not a list
        #: of 160 (about 1 KiB per node).
        self._created = now
        self._touched: dict[int, float] = {}
        #: Indexes of the buckets holding contacts (few: about log2 of the network).
        self._filled: list[int] = []  # sorted
        # Every contact by id, with its id as an integer: the flat view `closest` scans.
        self._flat: dict[bytes, Contact] = {}
        #: When the current run of failed requests began, for the contacts failing now
        #: (few: a dict of those, not a list slot per contact).
        self._failing_since: dict[bytes, float] = {}
        # Cache of next_refresh(): it is asked after every input, and changes
        # only when a bucket is touched or the nearest non-empty bucket moves.
        self._refresh_cache: float | None = None
        self._refresh_dirty = True
        #: When any contact last answered us (`update`): proof our network works.
        self.last_answer = float("-inf")

    # ------------------------------------------------------------------ queries

    def bucket_index(self, node_id: bytes) -> int:
        """Index of the bucket that holds ``node_id`` (raises for our own id)."""
        d = self._own_int ^ int.from_bytes(node_id, "big")
        if d == 0:
            raise LocalProtocolError("our own id has no bucket")
        return d.bit_length() - 1

    def __len__(self) -> int:
        return len(self._flat)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, bytes) and self.get(node_id) is not None

    def get(self, node_id: bytes) -> Contact | None:
        return self._flat.get(node_id)

    def contacts(self) -> Iterator[Contact]:
        """Every contact, bucket by bucket, least-recently seen first within a bucket."""
        for j in self._filled:
            yield from self._buckets[j].members

    def filled_mask(self, *, exclude_id: bytes | None = None) -> int:
        """Bit j set for every bucket j holding a contact (other than ``exclude_id``).

        Some contact is nearer a key K than we are iff ``mask & (own ^ K)``: a
        contact in bucket j is nearer exactly when bit j of ``own ^ K`` is set
        (bucket j == the top bit of ``own ^ K``, or a lower j where that bit is
        set).  One AND instead of a `closest` call per key."""
        mask = 0
        for j in self._filled:
            mask |= 1 << j
        if exclude_id is not None and exclude_id in self._flat:
            j = self.bucket_index(exclude_id)
            if len(self._buckets[j].members) == 1:
                mask &= ~(1 << j)
        return mask

    def saved_rows(self) -> list[tuple[bytes, str, int, float]]:
        """``(node_id, host, port, last_seen)`` of every contact, in `contacts` order:
        what a node saves to rejoin after a restart."""
        return [
            (c.node_id, c.addr[0], c.addr[1], seen)
            for j in self._filled
            for c, seen in zip(self._buckets[j].members, self._buckets[j].seen, strict=True)
        ]

    def shared(self, contact: Contact) -> Contact:
        """The table's own object for ``contact`` when it holds that contact, else ``contact``:
        what a long-lived copy should keep (one object per contact, not one per answer)."""
        found = self._flat.get(contact.node_id)
        return found if found is not None and found.addr == contact.addr else contact

    def bucket_contacts(self, index: int) -> list[Contact]:
        return list(self._buckets.get(index, _NO_BUCKET).members)

    def knows(self, contact: Contact) -> bool:
        """True if ``contact`` (id and address) is in the table or its bucket's replacement cache."""
        if len(contact.node_id) != ID_BYTES or contact.node_id == self.own_id:
            return True  # nothing to learn about ourselves
        held = self._flat.get(contact.node_id)
        if held is not None:
            return held.addr == contact.addr
        bucket = self._buckets.get(self.bucket_index(contact.node_id), _NO_BUCKET)
        return bucket.replacements.get(contact.node_id) == contact

    def has_room(self, node_id: bytes, now: float) -> bool:
        """Could `update` with a new contact of id ``node_id`` do more than reorder a full
        replacement cache?  True if its bucket has a free slot or a stale contact, its
        replacement cache a free slot, or `update` would start a liveness check."""
        bucket = self._buckets.get(self.bucket_index(node_id))
        if bucket is None or len(bucket.members) < self.k:
            return True
        if len(bucket.replacements) < self.replacement_cache:
            return True
        if max(bucket.failures) >= STALE_FAILURES:
            return True
        if bucket.checking is not None:
            return False
        return now - bucket.seen[0] >= self.questionable_after

    def replacements(self, index: int) -> list[Contact]:
        return list(self._buckets.get(index, _NO_BUCKET).replacements.values())

    def last_seen(self, node_id: bytes) -> float:
        """When the contact last answered or sent us something (``now`` units); 0.0 if unknown."""
        found = self._position(node_id)
        return found[0].seen[found[1]] if found is not None else 0.0

    def failures(self, node_id: bytes) -> int:
        found = self._position(node_id)
        return found[0].failures[found[1]] if found is not None else 0

    def closest(
        self,
        target: bytes,
        count: int | None = None,
        *,
        exclude_id: bytes | None = None,
        exclude_addr: tuple[str, int] | None = None,
    ) -> list[Contact]:
        """The ``count`` (default k) contacts nearest ``target`` by XOR, nearest first,
        at most `MAX_CLOSEST_PER_NETWORK` of one network while others are known.

        Exact over the whole table (and, on one network, the plain k nearest).
        ``exclude_*`` leaves out the requester, as ``kademlia``'s
        ``find_neighbors(node, exclude=source)`` does.
        """
        n = self.k if count is None else count
        t = int.from_bytes(target, "big")
        # Visit buckets in an order where every contact of a bucket is nearer
        # the target than every contact of the buckets after it, and stop once
        # enough are gathered; then rank only those.  With x = own ^ target and
        # b its top bit, a contact in bucket j is at distance (own ^ c) ^ x:
        # bucket b first (bit b cancels), then buckets j < b where x has bit j
        # set (highest j first: that bit cancels), then those where it is clear
        # (lowest j first), then buckets b+1, b+2, ... (distance ~ 2^j).
        # Only filled buckets are ordered (about log2 of the network size of them).
        x = self._own_int ^ t
        b = x.bit_length() - 1
        first: list[int] = []
        cancels: list[int] = []
        keeps: list[int] = []
        above: list[int] = []
        for j in self._filled:
            if j < b:
                (cancels if x >> j & 1 else keeps).append(j)
            elif j == b:
                first.append(j)
            else:
                above.append(j)
        cancels.reverse()
        buckets = self._buckets
        gathered: list[tuple[int, Contact]] = []
        filtered = exclude_id is not None or exclude_addr is not None
        for j in first + cancels + keeps + above:
            bucket = buckets[j]
            if filtered:
                gathered += [
                    (i ^ t, c)
                    for i, c in zip(bucket.ints, bucket.members, strict=True)
                    if c.node_id != exclude_id and c.addr != exclude_addr
                ]
            else:
                gathered += [(i ^ t, c) for i, c in zip(bucket.ints, bucket.members, strict=True)]
            if len(gathered) >= n:
                if n == 1:
                    break
                # Every later bucket is farther: done once the nearest so far
                # hold n contacts of diverse-enough networks.
                gathered.sort()
                picked, diverse = diverse_first([c for _, c in gathered], n, self.per_network)
                if diverse:
                    return picked
        if n == 1:
            return [min(gathered)[1]] if gathered else []
        # Distances are distinct ints, so sorting pairs never compares contacts.
        gathered.sort()
        return diverse_first([c for _, c in gathered], n, self.per_network)[0]

    # ------------------------------------------------------------------ updates

    def update(self, contact: Contact, now: float) -> tuple[UpdateOutcome, Contact | None]:
        """Record that ``contact`` is alive; see the module docstring for the rules.

        Returns the outcome and, for `UpdateOutcome.PING`, the contact to ping.
        """
        node_id = contact.node_id
        if len(node_id) != ID_BYTES or node_id == self.own_id:
            return UpdateOutcome.IGNORED, None
        self.last_answer = max(self.last_answer, now)
        index = self.bucket_index(node_id)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        held = self._flat.get(node_id)
        if held is not None:
            if held.addr != contact.addr:
                return UpdateOutcome.IGNORED, None
            i = bucket.ints.index(int.from_bytes(node_id, "big"))
            if bucket.failures[i]:
                self._recovered(node_id)
            self._pop(bucket, i)  # to the tail
            self._append(bucket, held, now)
            if bucket.checking == node_id:
                bucket.checking = None
            return UpdateOutcome.REFRESHED, None
        members = bucket.members
        if len(members) < self.k:
            self._insert(bucket, contact, now)
            return UpdateOutcome.ADDED, None
        failures = bucket.failures
        if max(failures) >= STALE_FAILURES:  # the least recently seen stale one gives way
            stale = next(i for i, f in enumerate(failures) if f >= STALE_FAILURES)
            self._drop(bucket, members[stale].node_id)
            self._insert(bucket, contact, now)
            return UpdateOutcome.ADDED, None
        self._cache_replacement(bucket, contact)
        if bucket.checking is not None:
            return UpdateOutcome.QUEUED, None
        if now - bucket.seen[0] < self.questionable_after:
            return UpdateOutcome.QUEUED, None
        oldest = members[0]
        bucket.checking = oldest.node_id
        return UpdateOutcome.PING, oldest

    def eviction_failed(
        self, node_id: bytes, now: float, *, checked_at: float | None = None
    ) -> Contact | None:
        """The liveness ping of ``node_id`` timed out: evict it, promote a replacement.

        ``checked_at`` is when the ping was sent: a contact heard from since
        then is alive after all (its answer was lost, not its node) and stays.
        Returns the promoted contact, if any.
        """
        found = self._position(node_id)
        if found is None:
            return None
        if checked_at is not None and found[0].seen[found[1]] > checked_at:
            bucket = self._buckets.get(self.bucket_index(node_id), _NO_BUCKET)
            if bucket.checking == node_id:
                bucket.checking = None
            return None
        return self.remove(node_id, now)

    def record_failure(self, node_id: bytes, now: float, *, sent_at: float | None = None) -> Contact | None:
        """An RPC to ``node_id`` (sent at ``sent_at``) failed.  Stale contacts give way.

        A stale contact is replaced by the freshest replacement, or, with no
        replacement, removed if another contact answered us after its first
        failed request was sent (module docstring).  Without ``sent_at`` a
        stale contact with no replacement is kept.  Returns the promoted
        contact, if any.
        """
        found = self._position(node_id)
        if found is None:
            return None
        bucket, i = found
        if bucket.failures[i] == 0:
            self._failing_since[node_id] = now if sent_at is None else sent_at
        bucket.failures[i] += 1
        if bucket.failures[i] < STALE_FAILURES:
            return None
        if bucket.replacements or (sent_at is not None and self.last_answer > self._failing_since[node_id]):
            return self.remove(node_id, now)
        return None

    def stale(self, node_id: bytes) -> bool:
        """True for a contact that failed `STALE_FAILURES` requests in a row."""
        found = self._position(node_id)
        return found is not None and found[0].failures[found[1]] >= STALE_FAILURES

    def remove(self, node_id: bytes, now: float) -> Contact | None:
        """Forget ``node_id`` (and its replacement-cache entry); promote the freshest replacement."""
        if len(node_id) != ID_BYTES or node_id == self.own_id:
            return None
        index = self.bucket_index(node_id)
        bucket = self._buckets.get(index)
        if bucket is None:
            return None
        bucket.replacements.pop(node_id, None)
        if node_id not in self._flat:
            self._forget_if_empty(index, bucket)
            return None
        self._drop(bucket, node_id)
        if bucket.replacements:
            _, promoted = bucket.replacements.popitem()  # the freshest
            self._insert(bucket, promoted, now)
            return promoted
        self._forget_if_empty(index, bucket)
        return None

    def _position(self, node_id: bytes) -> tuple[_Bucket, int] | None:
        """The bucket holding ``node_id`` and its position there; None if the table does not."""
        if node_id not in self._flat:
            return None
        i = int.from_bytes(node_id, "big")
        bucket = self._buckets[(self._own_int ^ i).bit_length() - 1]
        return bucket, bucket.ints.index(i)

    @staticmethod
    def _append(bucket: _Bucket, contact: Contact, now: float) -> None:
        bucket.members.append(contact)
        bucket.ints.append(int.from_bytes(contact.node_id, "big"))
        bucket.seen.append(now)
        bucket.failures.append(0)

    @staticmethod
    def _pop(bucket: _Bucket, i: int) -> None:
        del bucket.members[i]
        del bucket.ints[i]
        del bucket.seen[i]
        del bucket.failures[i]

    def _insert(self, bucket: _Bucket, contact: Contact, now: float) -> None:
        bucket.replacements.pop(contact.node_id, None)
        self._flat[contact.node_id] = contact
        self._append(bucket, contact, now)
        if len(bucket.members) == 1:
            bisect.insort(self._filled, self.bucket_index(contact.node_id))
        self._refresh_dirty = True

    def _recovered(self, node_id: bytes) -> None:
        self._failing_since.pop(node_id, None)
        if not self._failing_since:
            self._failing_since.clear()  # give back the table it grew to

    def _drop(self, bucket: _Bucket, node_id: bytes) -> None:
        del self._flat[node_id]
        self._recovered(node_id)
        self._pop(bucket, bucket.ints.index(int.from_bytes(node_id, "big")))
        if not bucket.members:
            self._filled.remove(self.bucket_index(node_id))
        if bucket.checking == node_id:
            bucket.checking = None
        self._refresh_dirty = True

    def _forget_if_empty(self, index: int, bucket: _Bucket) -> None:
        if not bucket.members and not bucket.replacements:
            del self._buckets[index]

    def _cache_replacement(self, bucket: _Bucket, contact: Contact) -> None:
        if self.replacement_cache == 0:
            return
        replacements = bucket.replacements
        replacements.pop(contact.node_id, None)
        replacements[contact.node_id] = contact
        while len(replacements) > self.replacement_cache:
            del replacements[next(iter(replacements))]  # the stalest

    # ------------------------------------------------------------------ refresh

    def touch(self, target: bytes, now: float) -> None:
        """A lookup for ``target`` started: its bucket counts as fresh (paper 2.3)."""
        if target != self.own_id:
            self.touch_bucket(self.bucket_index(target), now)

    def touch_bucket(self, index: int, now: float) -> None:
        if now > self._touched.get(index, self._created):
            self._touched[index] = now
            self._refresh_dirty = True

    def _refreshable(self) -> range:
        return range(self._filled[0], ID_BITS) if self._filled else range(0)

    def buckets_due(self, now: float) -> list[int]:
        """Indexes of refreshable buckets not touched for `refresh_interval`."""
        due = self.next_refresh()
        if due is None or due > now:
            return []  # the cached earliest deadline says none is due (cheap on every timer)
        # The same sum as `next_refresh` (not ``now - refresh_interval``): rounded
        # otherwise, a bucket could be due there and not here, and the timer would spin.
        interval = self.refresh_interval
        touched, created = self._touched, self._created
        return [i for i in self._refreshable() if touched.get(i, created) + interval <= now]

    def next_refresh(self) -> float | None:
        """When the next bucket falls due, or None while the table is empty."""
        if self._refresh_dirty:
            indexes = self._refreshable()
            touched, created = self._touched, self._created
            self._refresh_cache = (
                min([touched.get(i, created) for i in indexes]) + self.refresh_interval if indexes else None
            )
            self._refresh_dirty = False
        return self._refresh_cache

    def nearest_bucket(self) -> int | None:
        """Index of the nearest non-empty bucket (None when the table is empty)."""
        indexes = self._refreshable()
        return indexes.start if indexes else None

    def random_id_in_bucket(self, index: int, rng: Random) -> bytes:
        """A uniformly random id whose distance from us falls in bucket ``index``."""
        if not 0 <= index < ID_BITS:
            raise LocalProtocolError(f"bucket index {index} out of range")
        d = (1 << index) | rng.getrandbits(index)
        return (self._own_int ^ d).to_bytes(ID_BYTES, "big")
