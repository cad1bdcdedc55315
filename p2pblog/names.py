"""Ranking a name's claimants for one user: relationship, then witnessed age, then work (issue 15).

Theory of operation
-------------------
Any key may claim any name (`identity.records`, docs/protocol.md "Name
claims"), so a resolver lists every claimant and orders them *for the user
who asks*.  One function, `claimant_order`, is the whole rule; the daemon's
``resolve`` command, `p2pblog.targets` (the command line's ``resolve`` and
``follow NAME``, the web app's Follow page) all order by it:

1. the **relationship** (`Relation`): a key the user gave a petname, then a
   key the user follows, then a key followed by someone the user follows
   (the store knows the follow entries of the feeds it replicates), then a
   stranger.  Nobody can buy their way into the user's social graph with
   CPU or with DHT nodes, so a squatter is a stranger to everyone who does
   not already know them, and nothing below can lift them over a key the
   user knows;
2. the **witnessed age**: when the network first stored the claim
   (`witnessed_at`).  Each DHT node that holds a claim remembers when it
   first stored that signer's claim of that name and keeps the time while the
   signer keeps republishing (`dht.providers`); a lookup gathers these times
   from the nodes it asks (ours included).  Earlier first; a claim no node
   reported a time for (no witness) comes after those that have one;
3. the proof-of-work bits of the claim's stamp, more first;
4. the signer's key bytes, only so that the order is total.

`witnessed_at` combines the reports robustly: it takes the *upper median*
(the ``n // 2``-th earliest of ``n`` reports), so making a claim look older
than it is needs at least half of the reporting DHT nodes to lie; a single
Sybil node near the name's key cannot backdate a squatter's claim.  The
claim's self-asserted ``claimed`` is a floor: a claim is never older than
its signer says it is (nobody stored it before it was stamped), and
backdating ``claimed`` buys nothing because the later of the two counts.

`suggestion` is what ``follow NAME`` may follow without asking: the only
claimant, or the best claimant when it is the only one in its relationship
class and that class is not `Relation.STRANGER`.  Between strangers it
never picks (the user chooses with ``NAME~FINGERPRINT``), so a squatter,
who is a stranger, is never the suggestion while a known key claims the name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from identity import decode_handle

if TYPE_CHECKING:
    from identity.records import Record
    from p2pblog.events import NameResolved
    from p2pblog.store import Store


class Relation(enum.IntEnum):
    """How the user knows a claimant; lower ranks first."""

    PETNAME = 0
    FOLLOWING = 1
    FOLLOWED_BY_FOLLOWS = 2
    STRANGER = 3


#: The ``relation`` strings of the ``resolve`` command's answer (control protocol, JSON).
RELATION_NAMES: Final = {
    Relation.PETNAME: "petname",
    Relation.FOLLOWING: "following",
    Relation.FOLLOWED_BY_FOLLOWS: "followed-by-follows",
    Relation.STRANGER: "stranger",
}
_RELATION_OF_NAME: Final = {text: relation for relation, text in RELATION_NAMES.items()}
#: Stands for "no witness" in the sort key: after every real time.
_UNWITNESSED: Final = 2**63


#: Reports of distinct DHT nodes a claim's age needs before it counts at all: the nodes
#: that hold a claim are the ones that report it, so a squatter who stored its claim on one
#: node of its own (reporting any time it likes) must not get an age (found by a review).
#: Two, not more: in a small network a lookup may hear from only a few of the holders.
MIN_WITNESSES: Final = 2


def witnessed_at(reports: Sequence[int], claimed: int) -> int | None:
    """The claim's age as witnessed by the network (Unix seconds), or None with fewer than
    `MIN_WITNESSES` reports: the upper median of the DHT nodes' first-seen ``reports``
    (so backdating it takes half of them), never before ``claimed``."""
    if len(reports) < MIN_WITNESSES:
        return None
    times = sorted(reports)
    return max(times[len(times) // 2], claimed)


#: `claimant_order`'s key: (relation, witnessed or after all times, -work, signer).
Order = tuple[int, int, int, bytes]


def claimant_order(relation: int, witnessed: int | None, work: int, signer: bytes) -> Order:
    """The sort key of a claimant for one user: relationship, witnessed age, work, signer."""
    return (relation, _UNWITNESSED if witnessed is None else witnessed, -work, signer)


@dataclass(frozen=True, slots=True)
class Claimant:
    """One claim of a name as one user sees it."""

    record: Record
    relation: Relation
    #: `witnessed_at` of the reports (None: no DHT node reported a time).
    witnessed: int | None
    #: DHT nodes that reported a first-seen time.
    witnesses: int
    #: Keys the user follows whose feeds (held here) follow the claimant.
    followed_by: int

    def order(self) -> Order:
        return claimant_order(self.relation, self.witnessed, self.record.work, self.record.signer)


def rank(claimants: Iterable[Claimant]) -> list[Claimant]:
    """Claimants best first (`claimant_order`)."""
    return sorted(claimants, key=Claimant.order)


def relation_of(store: Store, owner: bytes, key: bytes, petnamed: frozenset[bytes]) -> tuple[Relation, int]:
    """How ``owner`` knows ``key``, and how many keys ``owner`` follows follow it."""
    followed_by = store.follows_of_follows(owner, key)
    if key in petnamed:
        return Relation.PETNAME, followed_by
    if key in store.following(owner):
        return Relation.FOLLOWING, followed_by
    return (Relation.FOLLOWED_BY_FOLLOWS if followed_by else Relation.STRANGER), followed_by


def claimants_for(store: Store, owner: bytes, result: NameResolved) -> list[Claimant]:
    """The claimants of a resolved name, ranked for ``owner`` (the node's own key)."""
    petnamed = frozenset(key for _, key in store.petnames())
    out = []
    for i, record in enumerate(result.claims):
        reports = result.seen[i] if i < len(result.seen) else ()
        relation, followed_by = relation_of(store, owner, record.signer, petnamed)
        assert record.claimed is not None
        witnessed = witnessed_at(reports, record.claimed)
        out.append(Claimant(record, relation, witnessed, len(reports), followed_by))
    return rank(out)


def network_order(records: Sequence[Record], seen: Sequence[Sequence[int]]) -> list[int]:
    """Indices of ``records`` (claims, with their first-seen reports) in the order a
    stranger to all of them sees: witnessed age, then work, then signer."""

    def key(i: int) -> Order:
        record = records[i]
        assert record.claimed is not None
        witnessed = witnessed_at(seen[i] if i < len(seen) else (), record.claimed)
        return claimant_order(Relation.STRANGER, witnessed, record.work, record.signer)

    return sorted(range(len(records)), key=key)


def suggestion(ranked: Sequence[Claimant]) -> Claimant | None:
    """The claimant ``follow NAME`` may pick without asking (``ranked`` best first), or None."""
    index = suggested_index([c.relation for c in ranked])
    return None if index is None else ranked[index]


def suggested_index(relations: Sequence[int]) -> int | None:
    """`suggestion` over the relations of ranked claimants: 0 when there is one claimant,
    or the first is alone in its class and not a stranger; else None."""
    if len(relations) == 1:
        return 0
    if not relations or relations[0] == Relation.STRANGER or relations[1] == relations[0]:
        return None
    return 0


def relation_of_answer(claim: dict[str, Any]) -> Relation:
    """The `Relation` of one claim in the ``resolve`` command's answer (unknown: a stranger)."""
    return _RELATION_OF_NAME.get(str(claim.get("relation")), Relation.STRANGER)


def answer_order(claim: dict[str, Any]) -> Order:
    """`claimant_order` of one claim in the ``resolve`` command's answer."""
    relation = relation_of_answer(claim)
    witnessed = claim.get("witnessed")
    witnessed = witnessed if isinstance(witnessed, int) else None
    return claimant_order(relation, witnessed, int(claim["work"]), decode_handle(str(claim["handle"])))


def relation_words(claim: dict[str, Any]) -> str:
    """A ``resolve`` answer's claim's relationship class in words."""
    relation = relation_of_answer(claim)
    if relation is Relation.PETNAME:
        return "you gave this key a petname"
    if relation is Relation.FOLLOWING:
        return "you follow this key"
    followed_by = int(claim.get("followed_by") or 0)
    if relation is Relation.FOLLOWED_BY_FOLLOWS:
        return f"followed by {followed_by} {'person' if followed_by == 1 else 'people'} you follow"
    return "a stranger to you (nobody you follow follows this key)"


def witnessed_words(claim: dict[str, Any], now: float) -> str:
    """A ``resolve`` answer's claim's witnessed age in words, e.g. "first seen by the
    network 3 days ago (5 DHT nodes)"."""
    witnessed = claim.get("witnessed")
    if not isinstance(witnessed, int):
        return "no DHT node said when it first stored this claim"
    nodes = int(claim.get("witnesses") or 0)
    return f"first seen by the network {ago(now - witnessed)} ({nodes} DHT node{'' if nodes == 1 else 's'})"


#: (unit seconds, unit name), largest first, for `ago`.
_UNITS: Final = ((86400, "day"), (3600, "hour"), (60, "minute"))


def ago(seconds: float) -> str:
    """``seconds`` in the past as words: "3 days ago", "2 minutes ago", "just now"."""
    for size, unit in _UNITS:
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"
