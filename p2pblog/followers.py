"""Who follows a feed, as far as this node can tell: follow entries held here and DHT providers.

Theory of operation
-------------------
Nothing in the network lists a feed's followers, and nothing could prove the
list complete.  A node learns of a follower in two ways, and reports both:

* **Follow entries held here.**  A follow is a public, signed entry in the
  follower's own feed; the store derives the ``follows`` table from the
  follow/unfollow entries of every feed it holds (`Store.followers`).  A
  follower whose feed this node does not hold is invisible here.
* **DHT provider records.**  A follower replicates the feed it follows and
  announces itself, in the DHT, as a provider of it (`p2pblog.own_records`);
  a provider search (`p2pblog.discovery`) names the signers.  A provider
  record outlives an unfollow until it expires, so a provider whose feed is
  held here and whose latest word about the feed is an unfollow entry is not
  counted (``unfollowed``).  A search answers at most
  `dht.providers.MAX_PROVIDERS_PER_KEY` providers.

The count is therefore a lower bound, and `summary` says so and how it was
obtained.  `holders_line` adds the peers currently holding a copy: connected
peers replicating the feed and the DHT's providers (the ``replicas`` count).
The node's own key is never counted.  `Followers.to_json` is the stable
document of the ``followers`` control command, `p2pblog followers --json`
and the web app (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from identity import encode_handle
from identity.handle import fingerprint
from p2pblog.entry import UNFOLLOW
from p2pblog.store import Store

#: Followers listed in a document (the counts cover all of them).
MAX_LISTED: Final = 500
#: Unfollow entries of one provider's feed examined (newest first) for an unfollow of the
#: feed: a decode each, on the node's loop, for each of at most 20 providers.
UNFOLLOWS_EXAMINED: Final = 200


@dataclass(frozen=True, slots=True)
class Follower:
    """A key known to follow the feed, and how it is known."""

    key: bytes
    entry: bool  # its follow entry is held here (latest follow/unfollow state: follow)
    provider: bool  # the DHT names it as a provider of the feed

    @property
    def source(self) -> str:
        if self.entry and self.provider:
            return "both"
        return "follow entry" if self.entry else "DHT provider record"


@dataclass(frozen=True, slots=True)
class Followers:
    """The followers of ``feed`` known here; ``dht_asked`` False: only the store's view."""

    feed: bytes
    followers: tuple[Follower, ...]
    dht_asked: bool
    searched: float | None = None  # unix time of the provider answer used (None: none yet)
    fresh: bool = False  # that answer comes from a search started for this request
    connected: int = 0  # connected peers replicating the feed
    holders: int = 0  # connected peers and DHT providers holding a copy
    unfollowed: int = 0  # DHT providers left out: their held feed unfollowed this one

    @property
    def from_entries(self) -> int:
        return sum(f.entry for f in self.followers)

    @property
    def from_dht(self) -> int:
        return sum(f.provider for f in self.followers)

    @property
    def in_both(self) -> int:
        return sum(f.entry and f.provider for f in self.followers)

    def to_json(self, store: Store) -> dict[str, Any]:
        pets: dict[bytes, str] = {}
        for pet, key in store.petnames():
            pets.setdefault(key, pet)
        return {
            "handle": encode_handle(self.feed),
            "fingerprint": fingerprint(self.feed),
            "count": len(self.followers),
            "from_entries": self.from_entries,
            "from_dht": self.from_dht,
            "in_both": self.in_both,
            "dht_asked": self.dht_asked,
            "searched": self.searched,
            "fresh": self.fresh,
            "unfollowed": self.unfollowed,
            "holders": self.holders if self.dht_asked else None,
            "connected": self.connected if self.dht_asked else None,
            "summary": summary(self),
            "copies": holders_line(self),
            "followers": [
                {
                    "handle": encode_handle(f.key),
                    "fingerprint": fingerprint(f.key),
                    "petname": pets.get(f.key),
                    "name": store.profile(f.key).get("name"),
                    "entry": f.entry,
                    "provider": f.provider,
                    "source": f.source,
                }
                for f in self.followers[:MAX_LISTED]
            ],
            "more": max(0, len(self.followers) - MAX_LISTED),
        }


def unfollowed(store: Store, follower: bytes, feed: bytes) -> bool:
    """Whether follower's feed, as held here, unfollowed feed (and did not follow it again)."""
    if feed in store.following(follower):
        return False
    items = store.feed(follower, kind=UNFOLLOW, limit=UNFOLLOWS_EXAMINED)
    return any(item.entry.feed == feed for item in items)


def count_followers(
    store: Store,
    feed: bytes,
    own: bytes,
    *,
    providers: Collection[bytes] | None = None,
    connected: Collection[bytes] = (),
    searched: float | None = None,
    fresh: bool = False,
) -> Followers:
    """The followers of feed known here; ``providers`` None when the DHT was not asked."""
    held = store.followers(feed) - {own, feed}
    named = set(providers or ()) - {own, feed}
    stale = {p for p in named - held if unfollowed(store, p, feed)}
    named -= stale
    found = sorted(held | named, key=lambda k: (not (k in held and k in named), fingerprint(k)))
    return Followers(
        feed,
        tuple(Follower(k, k in held, k in named) for k in found),
        dht_asked=providers is not None,
        searched=searched,
        fresh=fresh,
        connected=len(set(connected) - {own}),
        holders=len((set(connected) | set(providers or ())) - {own, feed}),
        unfollowed=len(stale),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(f: Followers) -> str:
    """The count and how it was obtained, e.g. "at least 3 followers (2 from follow entries
    held here, 2 providers in the DHT, 1 in both)"."""
    count = f"at least {_plural(len(f.followers), 'follower')}"
    if not f.dht_asked:
        return f"{count} (from follow entries held here; the DHT was not asked: no node is running)"
    parts = [
        f"{f.from_entries} from follow entries held here",
        f"{_plural(f.from_dht, 'provider')} in the DHT",
        f"{f.in_both} in both",
    ]
    if f.searched is None:
        parts[1] = "the DHT not searched yet"
    return f"{count} ({', '.join(parts)})"


def holders_line(f: Followers) -> str:
    """'N peers currently hold a copy' (connected replicating peers and DHT providers)."""
    if not f.dht_asked:
        return "peers holding a copy: unknown (the DHT was not asked)"
    held = "peer currently holds" if f.holders == 1 else "peers currently hold"
    return f"{f.holders} {held} a copy (connected peers replicating it and providers in the DHT)"
