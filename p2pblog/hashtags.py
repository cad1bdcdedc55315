"""Hashtag records of our own posts: which tags to announce in the DHT, signed and kept fresh.

Theory of operation
-------------------
A tracking node finds the authors who use ``#tag`` through the DHT (issue
19, "Track"): each author's node announces, under `identity.records.tag_key`
of the tag, a signed *hashtag record* listing the seqs of its recent posts
that use the tag (`identity.records.HASHTAG`), in the provider store beside
provider records and name claims (one value per signer per key).

`own_tags` reads our last `SCAN_POSTS` posts of the last `TAG_WINDOW_MS`
(deleted ones left out) and keeps, per normalised tag, the seqs of the
newest `MAX_TAG_SEQS` posts that use it; the `MAX_ANNOUNCED_TAGS` tags used
most recently are announced, no others (so a node never announces more than
that bound, however many tags its posts use).

`HashtagAnnouncer` is the part of `p2pblog.node.NodeCore` that keeps them
in the DHT:

* **Changes.**  A post of ours that writes a tag, or a delete, marks the
  set *dirty* (`changed`; a post without tags changes nothing, so it costs
  nothing); the next `handle_timer` (due at once, `next_deadline`), and
  every republication, recomputes it: a tag that left the set is withdrawn from our own provider
  store (copies elsewhere lapse at their expiry), a tag whose seqs changed
  is signed again and added (ADD_PROVIDER).  Nothing happens while the
  routing table is empty (retried every `FIRST_CONTACT_POLL`).
* **Republication.**  Each record lives `TAG_TTL` and is re-signed every
  `TAG_REPUBLISH` (`own_records.RepublishJob`); one that reached no node
  is retried after `own_records.ANNOUNCE_RETRY` (`stored`).
* **Rate limit.**  Announcements (new, changed and republished) spend a
  token of `ANNOUNCE_RATE` per second with bursts of `ANNOUNCE_BURST`; an
  announcement without one waits (counted: ``announce.rate_limited``), so a
  user who posts a tag a second costs the DHT at most that rate.

DHT nodes bound what they hold of one signer's hashtag records
(`p2pblog.record_rules.hashtag_group`, `dht.providers.MAX_PER_GROUP`).
Counters (``stats``): ``announce.sent``, ``announce.withdrawn``,
``announce.rate_limited``, ``announce.refused``, ``announce.retried``.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Final

from dht import DhtCore
from identity import Identity
from identity.errors import LocalProtocolError
from identity.pacing import TokenBucket
from identity.records import MAX_TAG_SEQS, Record, RecordError, check_tag, create_hashtag_record, tag_key
from p2pblog.entry import POST, Entry
from p2pblog.events import HashtagAnnounced
from p2pblog.own_records import ANNOUNCE_RETRY, FIRST_CONTACT_POLL, RepublishJob
from p2pblog.queries import AnnounceHashtag, PendingQueries
from p2pblog.store import Store

#: Tags announced at most: the ones our recent posts used most recently.
MAX_ANNOUNCED_TAGS: Final = 16
#: Our posts read for tags: the newest SCAN_POSTS, of the last TAG_WINDOW_MS.
SCAN_POSTS: Final = 200
TAG_WINDOW_MS: Final = 24 * 3600 * 1000
#: Seconds a hashtag record is valid after signing, and between re-signings.
TAG_TTL: Final = 24 * 3600
TAG_REPUBLISH: Final = 4 * 3600
#: Announcements per second, and in a burst (a change of all MAX_ANNOUNCED_TAGS at once).
ANNOUNCE_RATE: Final = 0.5
ANNOUNCE_BURST: Final = float(MAX_ANNOUNCED_TAGS)

#: ``#word`` in post text, as `p2pblog.search` reads it.
_HASHTAG: Final = re.compile(r"(?<![\w#])#(\w+)")


def tags_in(text: str | None) -> list[str]:
    """The normalised tags ``text`` writes (`identity.records.normalize_tag`), in order, once each."""
    out: list[str] = []
    for match in _HASHTAG.finditer(text or ""):
        try:
            tag = check_tag(unicodedata.normalize("NFKC", match.group(1)).casefold())
        except RecordError:
            continue  # too long for a record: searchable here, not announced
        if tag not in out:
            out.append(tag)
    return out


def own_tags(store: Store, own: bytes, now_ms: int) -> dict[str, tuple[int, ...]]:
    """Tag -> seqs (ascending, at most `MAX_TAG_SEQS`) of our recent posts that use it, for
    the `MAX_ANNOUNCED_TAGS` tags used most recently."""
    seqs: dict[str, list[int]] = {}  # in order of most recent use
    for item in store.feed(own, limit=SCAN_POSTS, kind=POST):
        entry = item.entry
        if entry.timestamp < now_ms - TAG_WINDOW_MS:
            break
        if item.deleted:
            continue
        for tag in tags_in(entry.text):
            listed = seqs.setdefault(tag, [])
            if len(listed) < MAX_TAG_SEQS:
                listed.append(entry.seq)
    chosen = list(seqs.items())[:MAX_ANNOUNCED_TAGS]
    return {tag: tuple(sorted(listed)) for tag, listed in chosen}


class HashtagAnnouncer:
    """Signs, adds and keeps fresh the hashtag records of our recent posts."""

    def __init__(
        self, identity: Identity, store: Store, dht: DhtCore, queries: PendingQueries, now: float
    ) -> None:
        self.identity = identity
        self.store = store
        self.dht = dht
        self.queries = queries
        #: Our current record per announced tag.
        self.records: dict[str, Record] = {}
        self.job: RepublishJob[str] = RepublishJob()
        self.stats: Counter[str] = Counter()
        self._budget = TokenBucket(ANNOUNCE_RATE, ANNOUNCE_BURST, now)
        #: When to recompute the announced set (None: nothing changed); at start, at once.
        self._dirty_at: float | None = now

    def changed(self, now: float, entry: Entry | None = None) -> None:
        """Our feed changed (``entry`` appended): recompute the tags at the next timer, unless
        it is a post without tags."""
        if entry is not None and entry.kind == POST and not tags_in(entry.text):
            return
        self._dirty_at = now if self._dirty_at is None else min(self._dirty_at, now)

    def next_deadline(self) -> float | None:
        at = self._dirty_at
        if self.job.due:
            due = min(self.job.due.values())
            at = due if at is None else min(at, due)
        return at

    def handle_timer(self, now: float) -> None:
        """Recompute the set when dirty; re-sign the records that are due."""
        if len(self.dht.table) == 0:
            if self._dirty_at is not None and now >= self._dirty_at:
                self._dirty_at = now + FIRST_CONTACT_POLL
            for tag in self.job.poll(now):
                self.job.schedule(tag, now + FIRST_CONTACT_POLL)
            return
        due = self.job.poll(now)
        if due or (self._dirty_at is not None and now >= self._dirty_at):
            self._dirty_at = None
            self._update(now, set(due))

    def _update(self, now: float, due: set[str]) -> None:
        """Withdraw the tags no longer wanted; announce the new, the changed and the ``due``."""
        wanted = own_tags(self.store, self.identity.public_key, int(now * 1000))
        for tag in [t for t in self.records if t not in wanted]:
            self.withdraw(tag)
        for tag, seqs in wanted.items():
            record = self.records.get(tag)
            if record is None or record.seqs != seqs or tag in due:
                self._announce(tag, seqs, now)

    def _announce(self, tag: str, seqs: Iterable[int], now: float) -> None:
        if not self._budget.take(now):
            self.stats["announce.rate_limited"] += 1
            # Wait for the next token: a changed set is recomputed then, a due record retried.
            wait = now + 1 / ANNOUNCE_RATE
            if tag in self.records and tag in self.job:
                self.job.schedule(tag, wait)
            else:
                self.changed(wait)
            return
        last = self.records.get(tag)
        record = create_hashtag_record(
            self.identity,
            tag=tag,
            seqs=tuple(seqs),
            seq=max(int(now * 1000), last.seq + 1 if last is not None else 0),
            expires=int(now) + TAG_TTL,
        )
        self.records[tag] = record
        self.job.schedule(tag, now + TAG_REPUBLISH)
        try:
            qid = self.dht.start_add_provider(tag_key(tag), record.raw, now)
        except LocalProtocolError:  # our own store refused it (full): retried later
            self.stats["announce.refused"] += 1
            self.job.schedule(tag, now + ANNOUNCE_RETRY)
            return
        self.stats["announce.sent"] += 1
        self.queries.add(qid, AnnounceHashtag(tag, record.seq))

    def withdraw(self, tag: str) -> None:
        """Stop announcing ``tag``; copies held elsewhere lapse with the record's expiry."""
        self.records.pop(tag, None)
        self.job.cancel(tag)
        with contextlib.suppress(RecordError):
            self.dht.providers.remove(tag_key(tag), self.identity.public_key)
        self.stats["announce.withdrawn"] += 1

    def stored(self, result: HashtagAnnounced, now: float) -> None:
        """The end of an announcement: retry one that reached no node."""
        if not result.stored_at and result.tag in self.records:
            self.stats["announce.retried"] += 1
            self.job.schedule(result.tag, now + ANNOUNCE_RETRY)
