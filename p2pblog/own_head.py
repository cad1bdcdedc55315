"""The own feed's head: a node never signs an entry for a feed whose head it does not know.

Theory of operation
-------------------
An entry's seq is one more than the latest the signer holds.  A home that
holds the key but not the feed (restored from a backup phrase, or an
``identity.key`` copied into a new directory) would sign seq 1 again while
the network holds the feed up to #11: two entries with one seq are a fork,
and every follower refuses the feed from then on.  So the store records
whether it knows the head of the own feed, and `Store.append` (which every
write to the own feed goes through: `p2pblog.actions`, `NodeCore.follow`,
the offline CLI) refuses with `HeadUnknownError` while it does not.

**The marker** is the store setting `OWN_HEAD` (`Store.setting`):

=====================  ===================================================
value                  meaning
=====================  ===================================================
absent                 known: a store from before this rule (existing homes
                       see no change), or one no home opened (tests, the
                       simulator)
``known``              known: `Home.create` for a new identity (nothing
                       signed yet anywhere), after an import that added
                       own entries, after the node caught up, or after
                       ``p2pblog identity head --assume-new``
``unknown:HEX``        not known for the key HEX: `Home.restore`, or a store
                       `Home.open_store` had to create next to a key file
                       (the copied-key case)
=====================  ===================================================

**Catching up** (`OwnHead`, a part of `NodeCore`).  While the head is
unknown the node searches the DHT for providers of its own feed and dials
them (`Discovery.catching_up`, `DialPolicy.catching_up`), as it does in
client mode; the own feed is always in its CLOCK, so a peer that holds it
streams it to us, verified like any feed's entries (they are signed with
our key; a forged one is refused).  The head becomes known when at least
`CONFIRMING_PEERS` connected peers have declared holding the feed at a seq
>= 1 and we hold at least the highest seq any connected peer declared, and
that has held for `SETTLE` seconds without a break (time to reach the other
holders being dialled: a first holder that is behind must not decide).  A
peer that declares 0 (a new follower) tells us nothing and does not count;
a peer whose declared seq stays above ours for `STALLED_AFTER` seconds while
nothing more arrives stops counting (it claims a head it does not deliver).

The rule trusts what the reachable network holds: a partition that hides a
node holding later entries (the old laptop, offline with three posts nobody
received) leaves them unseen, and the next post forks the feed where they
are.  More confirming peers is more confidence, not certainty; a home that
knows better can import a backup of the feed (`p2pblog import`) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from identity import encode_handle

if TYPE_CHECKING:
    from p2pblog.replication import Replicator
    from p2pblog.store import Store

#: The store setting that holds the marker (see the module docstring).
OWN_HEAD: Final = "own_head"
KNOWN: Final = "known"
UNKNOWN_PREFIX: Final = "unknown:"
#: Connected peers that must have declared a seq >= 1 of the own feed (and been caught
#: up with) before the head counts as known.  One: a restored identity that only one
#: follower still serves must be able to post again.
CONFIRMING_PEERS: Final = 1
#: Seconds the rule must hold before the head counts as known: time for the node to reach
#: the other holders it is dialling, one of which may hold more (a first holder that is
#: behind would otherwise let the node sign a seq that exists elsewhere).
SETTLE: Final = 20.0
#: A peer's declared seq above what we hold, unchanged for this long while it sends us
#: nothing more, stops counting (a peer that claims a head it never delivers would keep a
#: restored node from posting for as long as it stays connected).
STALLED_AFTER: Final = 60.0


def unknown_marker(author: bytes) -> str:
    return UNKNOWN_PREFIX + author.hex()


def refusal(author: bytes, held: int) -> str:
    """Why an append to the own feed is refused, and what to do (one paragraph)."""
    where = f"this home holds {held} of its entries" if held else "this home holds none of its entries"
    return (
        f"the head of your feed {encode_handle(author)} is not known here ({where}): "
        "this home was restored or its key copied, and the network may hold later entries; "
        "posting now could sign a seq that already exists and fork the feed. "
        "Run the node (`p2pblog run`) so it catches up from the peers that hold your feed; "
        "or `p2pblog import` a backup of the feed; or, if this identity never posted "
        "anything anywhere, run `p2pblog identity head --assume-new`"
    )


class OwnHead:
    """Whether the node knows its own feed's head, and catching up until it does."""

    def __init__(self, own: bytes, store: Store, replicator: Replicator) -> None:
        self.own = own
        self.store = store
        self.replicator = replicator
        #: False while catching up; read through `Store.head_known`, which sees another
        #: process's ``identity head --assume-new`` or import.
        self.known = store.head_known(own)
        #: Per peer: the seq it declared above ours, when first seen, and what we held then.
        self._declared: dict[bytes, tuple[int, float, int]] = {}
        #: Since when the rule has held without a break (None: it does not hold now).
        self._holding_since: float | None = None

    def reported(self, now: float | None = None) -> int:
        """The highest seq of the own feed a connected peer declared holding (0: none); with
        ``now``, without declarations stalled for `STALLED_AFTER` seconds."""
        held = self.store.latest_seq(self.own)
        best = 0
        seen: dict[bytes, tuple[int, float, int]] = {}
        for peer, session, *_ in self.replicator.sessions():
            if not session.peer_wants(self.own):
                continue
            seq = session.peer_seq(self.own)
            if now is not None and seq > held:
                old = self._declared.get(peer)
                mark = old if old is not None and old[0] == seq and old[2] == held else (seq, now, held)
                seen[peer] = mark
                if now - mark[1] >= STALLED_AFTER:
                    continue  # claimed, never delivered: it does not hold the head back
            best = max(best, seq)
        if now is not None:
            self._declared = seen
        return best

    def check(self, now: float) -> bool:
        """Mark the head known if the rule of the module docstring holds and has held for
        `SETTLE` seconds; True when it became known just now."""
        if self.known:
            return False
        if self.store.head_known(self.own):
            self.known = True
            return True
        confirming = sum(
            1
            for _, session, *_ in self.replicator.sessions()
            if session.peer_wants(self.own) and session.peer_seq(self.own) >= 1
        )
        if confirming < CONFIRMING_PEERS or self.store.latest_seq(self.own) < self.reported(now):
            self._holding_since = None
            return False
        if self._holding_since is None:
            self._holding_since = now
        if now - self._holding_since < SETTLE:
            return False
        self.store.mark_head_known(self.own)
        self.known = True
        return True

    def wake_at(self) -> float | None:
        """When `check` may next succeed by time alone (the settle window ends)."""
        if self.known or self._holding_since is None:
            return None
        return self._holding_since + SETTLE

    def doc(self) -> dict[str, object]:
        """The head's state for ``status``: known, or catching up (held N, peers report M)."""
        held = self.store.latest_seq(self.own)
        if self.known or self.store.head_known(self.own):  # maybe marked by another process
            return {"state": "known", "held": held}
        return {"state": "catching up", "held": held, "reported": self.reported()}
