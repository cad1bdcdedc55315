"""Track: follow a word or a hashtag, not a person (issue 19).

Theory of operation
-------------------
**Terms.**  A user tracks up to `MAX_TRACKED_TERMS` terms, kept in the store's
``settings`` (`TERMS_SETTING`, a JSON list) so the offline CLI and the
running node share them.  `normalize_term` spells each one way: NFKC, then
casefold; ``#tag`` (a hashtag: matches posts that write ``#tag``) or a bare
word (matches the word anywhere in a post's text), 1..64 letters, digits or
``_``.

**Matching posts held here.**  `tracked_posts` asks the full-text index
(`p2pblog.search`) once per term and merges the answers newest first:
posts of every feed this node holds, and loose entries (admitted mention
notices, and the posts fetched below), blocked authors and deleted posts
left out, paged by `p2pblog.store.cursor_of` cursors like ``search``.

**Across the network.**  Authors announce hashtag records
(`p2pblog.hashtags`); `Tracker`, a part of `p2pblog.node.NodeCore`, finds
and fetches the posts they name:

1. *Lookups.*  Each tracked ``#tag`` is looked up (GET_PROVIDERS at
   `identity.records.tag_key`) every `TAG_SEARCH_EVERY` seconds, so a new post
   is seen within about that plus a fetch; all lookups share one
   `LOOKUP_RATE` token bucket, so however many tags are tracked the node
   starts at most that many lookups a second (the tags then take turns:
   ``track.lookup.deferred``).  Driven by `next_deadline` /
   `handle_timer`, sans IO.
2. *Ranking.*  `rank_authors` orders the records found by relationship:
   authors we follow, then authors within follow hops
   (`p2pblog.store.Store.within_follow_hops`), then strangers; blocked
   authors and our own key never; at most `MAX_AUTHORS_PER_LOOKUP` per
   lookup, and seqs we hold, or tried already (`MAX_TRIED`), are skipped.
3. *Fetching.*  For each author left, at most `MAX_FETCHES` at a time, the
   node wants a connection to it (`Replicator.want_connection`; its peer
   record is resolved when its address is unknown) and sends a
   SLICE_REQUEST for those seqs (`gossip.slices`).  When the author's peer
   record cannot be resolved, or no connection to it opened within
   `FALLBACK_AFTER`, the providers of its feed are looked up and the request
   goes to one of them instead (a follower that holds the feed:
   ``track.fetch.via_provider``).  A fetch not answered in `FETCH_TIMEOUT`
   is dropped (``track.fetch.timeout``), and its author is not asked again
   for `RETRY_AFTER` (``track.fetch.backoff``; `MAX_BACKOFFS` authors
   remembered).  All fetches share
   `FETCHED_PER_DAY` seqs a day (``track.fetch.budget_spent``): strangers'
   records cannot make the node store without bound.
4. *Checking.*  Each entry of the SLICE answering a request must verify
   (signature, schema), be by the author asked, at a seq asked, a post that
   writes one of the tags asked for, and not be blocked; anything else is
   refused and counted (``track.slice.refused.<why>``).  What passes is
   stored as a loose entry (`Store.add_loose`), never in the feed log (a
   slice is not a contiguous chain): `TrackedPostFetched`.  Following the
   author replicates the whole feed the usual way.

**Serving.**  A peer's SLICE_REQUEST is answered from the feeds this node
holds (its own, and feeds it replicates), with the posts among the seqs
asked (not deleted ones), at most `gossip.messages.MAX_SLICE_ENTRIES`;
each peer may ask `SERVE_BURST` times, then `SERVE_RATE` times a second
(beyond that the answer is empty: ``track.serve.rate_limited``).

Counters (``stats``, shown by ``status`` under ``track.``): lookups,
records found, fetches, entries stored and refused, requests served.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Final

from dht import DhtCore
from dht.providers import MAX_PROVIDERS_PER_KEY
from gossip.messages import MAX_SLICE_ENTRIES
from identity import Identity
from identity.pacing import KeyedTokenBuckets, TokenBucket
from identity.records import TAG_RE, Record, tag_key
from p2pblog.discovery import Discovery
from p2pblog.entry import POST, decode_entry
from p2pblog.errors import EntryError, StoreError
from p2pblog.events import HashtagsFound, ProvidersResolved, TrackedPostFetched
from p2pblog.hashtags import tags_in
from p2pblog.own_records import FIRST_CONTACT_POLL
from p2pblog.queries import FindHashtag, PendingQueries
from p2pblog.replication import Replicator, SliceArrived, SliceAsked
from p2pblog.search import SearchHit, Term
from p2pblog.store import Store

#: Terms one node tracks at most, and where they are kept.
MAX_TRACKED_TERMS: Final = 64
TERMS_SETTING: Final = "track.terms"
#: Seconds between two lookups of one tracked tag (a new post is seen within about this).
TAG_SEARCH_EVERY: Final = 4.0
#: Lookups started per second in all, and in a burst, whatever the number of tags.
LOOKUP_RATE: Final = 1.0
LOOKUP_BURST: Final = 4.0
#: Authors fetched from per lookup, and fetches (authors) in progress at once.
MAX_AUTHORS_PER_LOOKUP: Final = 8
MAX_FETCHES: Final = 16
#: Seconds a fetch may take (resolve, dial, request, answer), and seconds without a
#: connection to the author after which a provider of its feed is asked instead.
FETCH_TIMEOUT: Final = 20.0
FALLBACK_AFTER: Final = 5.0
#: Seconds one provider of an author's feed is given before the next is asked (a provider
#: record may name a dead address, or a peer that never answers).
PROVIDER_TRY: Final = 4.0
#: Seconds before an author whose fetch timed out is asked again; authors remembered.
RETRY_AFTER: Final = 300.0
MAX_BACKOFFS: Final = 1024
#: Seqs fetched in a day at most (all authors), and in a burst.
FETCHED_PER_DAY: Final = 2000
FETCH_BURST: Final = 128.0
#: (author, seq) pairs remembered as fetched or tried, so they are not asked again.
MAX_TRIED: Final = 8192
#: Slice requests a peer may make: a burst, then this many a second; peers remembered.
SERVE_RATE: Final = 1.0
SERVE_BURST: Final = 8.0
SERVE_PEERS: Final = 1024
#: Bytes of entries one SLICE carries at most (16 entries of up to 8 KiB fit).
MAX_SLICE_BYTES: Final = 128 * 1024
_WORD: Final = re.compile(r"[^\W_]+")

#: Relationship ranks (`rank_authors`): lower first.
FOLLOWED, WITHIN_HOPS, STRANGER = 0, 1, 2


class TrackError(ValueError):
    """A term that cannot be tracked (not a word or #tag, too many terms)."""


def normalize_term(text: str) -> str:
    """A term as stored: ``#tag`` or ``word``, NFKC then casefolded; raises `TrackError`."""
    if not isinstance(text, str):
        raise TrackError("a term is text")
    raw = text.strip()
    tag = raw.startswith("#")
    word = unicodedata.normalize("NFKC", raw.removeprefix("#")).casefold()
    if TAG_RE.fullmatch(word) is None or unicodedata.normalize("NFKC", word) != word:
        raise TrackError(f"track a WORD or a #tag: 1-64 letters, digits or _ (got {text!r})")
    return f"#{word}" if tag else word


def tracked_terms(store: Store) -> list[str]:
    """The tracked terms, in the order they were added."""
    try:
        terms = json.loads(store.setting(TERMS_SETTING) or "[]")
    except ValueError:
        return []
    return [t for t in terms if isinstance(t, str)][:MAX_TRACKED_TERMS] if isinstance(terms, list) else []


def add_term(store: Store, text: str) -> tuple[str, bool]:
    """Track a term: ``(normalised term, newly added)``; raises `TrackError` past `MAX_TRACKED_TERMS`."""
    term = normalize_term(text)
    terms = tracked_terms(store)
    if term in terms:
        return term, False
    if len(terms) >= MAX_TRACKED_TERMS:
        raise TrackError(f"at most {MAX_TRACKED_TERMS} terms are tracked; remove one first (`track remove`)")
    store.set_setting(TERMS_SETTING, json.dumps([*terms, term]))
    return term, True


def remove_term(store: Store, text: str) -> tuple[str, bool]:
    """Stop tracking a term: ``(normalised term, was tracked)``."""
    term = normalize_term(text)
    terms = tracked_terms(store)
    if term not in terms:
        return term, False
    store.set_setting(TERMS_SETTING, json.dumps([t for t in terms if t != term]))
    return term, True


def text_matches(terms: Iterable[str], text: str | None) -> bool:
    """Whether ``text`` has one of the tracked ``terms`` (as `tracked_posts` would find it,
    near enough: a live page's test, not the search)."""
    tags = {_fold(tag) for tag in tags_in(text)}
    words = set(_WORD.findall(_fold(text or "")))
    for term in terms:
        if term.startswith("#"):
            if _fold(term[1:]) in tags:
                return True
        elif _fold(term) in words:
            return True
    return False


def _fold(text: str) -> str:
    """Case and accents folded, as the search index's tokenizer folds them."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def term_query(term: str) -> list[Term]:
    """The search terms for a tracked term (a bare word is whole, not a prefix)."""
    return [Term("tag", term[1:])] if term.startswith("#") else [Term("word", term)]


def tracked_posts(
    store: Store,
    terms: Iterable[str],
    *,
    limit: int = 50,
    before: int | tuple[int, bytes, int] | None = None,
    index_limit: int | None = None,
) -> list[SearchHit]:
    """Posts held here that contain any of ``terms``, newest first (one search per term;
    ``index_limit`` bounds the index's catch-up, as `Store.search`'s does)."""
    found: dict[bytes, SearchHit] = {}
    for term in terms:
        hits = store.search_terms(term_query(term), limit=limit, before=before, index_limit=index_limit)
        for hit in hits:
            found.setdefault(hit.item.entry.id, hit)
    return sorted(found.values(), key=lambda h: h.cursor, reverse=True)[:limit]


def rank_authors(
    records: Iterable[Record],
    *,
    own: bytes,
    following: Collection[bytes],
    blocked: Collection[bytes],
    within_hops: Callable[[bytes], bool],
    salt: bytes = b"",
    limit: int | None = None,
) -> list[tuple[int, Record]]:
    """``(rank, record)`` of the authors to fetch from, best first: followed, within follow
    hops, strangers; never blocked keys or ``own``.  Within a rank the order is a hash of
    ``salt`` (a fresh random value per lookup) and the author: never anything the author
    chose, such as its record's seq, so a few records signed with huge seqs cannot always
    come first and crowd the others out."""
    ranked: list[tuple[int, bytes, Record]] = []
    for record in records:
        author = record.signer
        if author == own or author in blocked:
            continue
        if author in following:
            rank = FOLLOWED
        elif within_hops(author):
            rank = WITHIN_HOPS
        else:
            rank = STRANGER
        ranked.append((rank, hashlib.blake2b(salt + author, digest_size=16).digest(), record))
    ranked.sort(key=lambda item: item[:2])
    return [(rank, record) for rank, _, record in ranked[:limit]]


@dataclass(slots=True)
class _Fetch:
    """Seqs of one author's feed to fetch, the tags they should use, and the deadline."""

    seqs: set[int]
    tags: set[str]
    deadline: float
    requested: bool = False
    asked: set[int] = field(default_factory=set)
    #: When to ask a provider of the feed instead of the author; the provider asked, until
    #: when, and the ones left to ask.
    fallback_at: float = float("inf")
    via: bytes | None = None
    via_until: float = float("inf")
    providers: list[tuple[bytes, str, int]] = field(default_factory=list)


class Tracker:
    """Looks up tracked hashtags, fetches the posts found, and serves others' slice requests."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        dht: DhtCore,
        queries: PendingQueries,
        replicator: Replicator,
        discovery: Discovery,
        now: float,
        rng: Random | None = None,
    ) -> None:
        self.own = identity.public_key
        #: Orders authors within a rank and providers (`rank_authors`, `providers_found`).
        self.rng = rng if rng is not None else Random(0)
        self.store = store
        self.dht = dht
        self.queries = queries
        self.replicator = replicator
        self.discovery = discovery
        self.stats: Counter[str] = Counter()
        self.events: list[TrackedPostFetched] = []
        self.terms: list[str] = []
        self._search_at: dict[str, float] = {}
        self._lookups = TokenBucket(LOOKUP_RATE, LOOKUP_BURST, now)
        #: No lookup before this (the bucket is empty); due tags keep their turn meanwhile.
        self._lookup_wait = now
        self._fetch_budget = TokenBucket(FETCHED_PER_DAY / 86_400, FETCH_BURST, now)
        self._fetches: dict[bytes, _Fetch] = {}
        self._tried: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._retry_at: OrderedDict[bytes, float] = OrderedDict()
        self._serve = KeyedTokenBuckets(SERVE_RATE, SERVE_BURST, SERVE_PEERS)
        #: Provider searches started for a fetch's feed: query id -> author.
        self._provider_queries: dict[int, bytes] = {}
        self.reload(now)

    # -- terms ------------------------------------------------------------------------------

    @property
    def tags(self) -> list[str]:
        return [t[1:] for t in self.terms if t.startswith("#")]

    def reload(self, now: float) -> None:
        """Read the terms again (a command changed them): new tags are looked up at once."""
        self.terms = tracked_terms(self.store)
        tags = self.tags
        for tag in tags:
            self._search_at.setdefault(tag, now)
        for tag in [t for t in self._search_at if t not in tags]:
            del self._search_at[tag]

    # -- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        at: float | None = None
        for t in self._search_at.values():
            if at is None or t < at:
                at = t
        if at is not None and at < self._lookup_wait:
            at = self._lookup_wait
        for fetch in self._fetches.values():
            due = min(fetch.deadline, fetch.fallback_at)
            if at is None or due < at:
                at = due
        return at

    def handle_timer(self, now: float) -> None:
        """Start the lookups that are due (within the rate), and drop fetches past their time."""
        for author, fetch in list(self._fetches.items()):
            if now >= fetch.deadline:
                self.stats["fetch.timeout"] += 1
                self._end(author)
                self._retry_at[author] = now + RETRY_AFTER
                while len(self._retry_at) > MAX_BACKOFFS:
                    self._retry_at.popitem(last=False)
            elif not fetch.requested:
                if now >= fetch.fallback_at:
                    self._find_providers(author, fetch, now)
                elif fetch.via is not None and now >= fetch.via_until:
                    self.stats["fetch.provider_skipped"] += 1
                    self._next_provider(author, fetch, now)
                self._request(author, fetch, now)
        if now < self._lookup_wait:
            return
        if len(self.dht.table) == 0:
            self._lookup_wait = now + FIRST_CONTACT_POLL
            return
        # Longest due first: with more tags due than tokens, the tags take turns.
        for tag, at in sorted(self._search_at.items(), key=lambda item: item[1]):
            if at > now:
                break
            if not self._lookups.take(now):
                self.stats["lookup.deferred"] += 1
                # (at least 10 ms: floating-point rounding must not make it wake to no token)
                self._lookup_wait = now + max((1 - self._lookups.tokens) / LOOKUP_RATE, 0.01)
                break
            self._search_at[tag] = now + TAG_SEARCH_EVERY
            qid = self.dht.start_get_providers(tag_key(tag), now, want=MAX_PROVIDERS_PER_KEY)
            self.queries.add(qid, FindHashtag(tag))
            self.stats["lookup.started"] += 1

    # -- lookups and fetches ----------------------------------------------------------------

    def found(self, result: HashtagsFound, now: float) -> None:
        """A lookup ended: fetch the posts its records name from the best-ranked authors."""
        if result.tag not in self._search_at:
            return
        self.stats["lookup.records"] += len(result.records)
        ranked = rank_authors(
            result.records,
            own=self.own,
            following=self.replicator.wanted,
            blocked=self.replicator.blocked,
            within_hops=lambda key: self.store.within_follow_hops(self.own, key),
            salt=self.rng.randbytes(16),
        )
        chosen = 0
        for rank, record in ranked:
            if chosen >= MAX_AUTHORS_PER_LOOKUP:
                break  # the cut comes after the filters: authors with nothing to fetch take no slot
            author = record.signer
            if self._retry_at.get(author, 0.0) > now:
                self.stats["fetch.backoff"] += 1
                continue
            fetch = self._fetches.get(author)
            seqs = set(record.seqs) - self.store.held_seqs(author, record.seqs)
            seqs = {
                s for s in seqs if (author, s) not in self._tried and (fetch is None or s not in fetch.asked)
            }
            if rank == FOLLOWED and self.store.latest_seq(author) >= max(record.seqs):
                continue  # replication brings them (or brought them, and they were deleted)
            if not seqs:
                continue
            if fetch is None:
                if len(self._fetches) >= MAX_FETCHES:
                    self.stats["fetch.busy"] += 1
                    continue
                if not self._fetch_budget.take(now, len(seqs)):
                    self.stats["fetch.budget_spent"] += 1
                    continue
                fetch = _Fetch(set(), set(), now + FETCH_TIMEOUT, fallback_at=now + FALLBACK_AFTER)
                self._fetches[author] = fetch
                self.stats["fetch.started"] += 1
                self.replicator.want_connection(author, now)
                if not self.replicator.is_connected(author) and self.replicator.known_address(author) is None:
                    self.discovery.resolve(author, now, consume=True)
            chosen += 1
            fetch.seqs |= seqs
            fetch.tags.add(result.tag)
            if not fetch.requested:
                self._request(author, fetch, now)

    def peer_connected(self, peer: bytes, now: float) -> None:
        for author, fetch in list(self._fetches.items()):
            if peer in (author, fetch.via) and not fetch.requested:
                self._request(author, fetch, now)

    def peer_resolved(self, peer: bytes, now: float) -> None:
        """An author's address is known now: dial it at once."""
        if peer in self._fetches:
            self.replicator.want_connection(peer, now)

    def peer_not_resolved(self, peer: bytes, now: float) -> None:
        """An author's peer record is not in the DHT: ask a provider of its feed."""
        fetch = self._fetches.get(peer)
        if fetch is not None and not fetch.requested:
            self._find_providers(peer, fetch, now)

    def _find_providers(self, author: bytes, fetch: _Fetch, now: float) -> None:
        fetch.fallback_at = float("inf")  # once per fetch
        if not self.replicator.is_connected(author):
            qid = self.discovery.find_providers(author, now)
            self._provider_queries[qid] = author
            self.stats["fetch.provider_search"] += 1

    def providers_found(self, result: ProvidersResolved, now: float) -> None:
        """A provider search of ours ended: ask the providers of the feed in turn (connected
        ones first, the rest in a random order), each for `PROVIDER_TRY` seconds."""
        author = self._provider_queries.pop(result.query_id, None)
        fetch = self._fetches.get(author) if author is not None else None
        if author is None or fetch is None or fetch.requested:
            return
        refused = self.replicator.blocked
        candidates = [
            (not self.replicator.is_connected(r.signer), self.rng.random(), r.signer, addr)
            for r in result.records
            if r.signer not in (self.own, author) and r.signer not in refused and (addr := r.addr("tcp"))
        ]
        if not candidates:
            self.stats["fetch.no_provider"] += 1
            return
        fetch.providers = [(signer, host, port) for _, _, signer, (host, port) in sorted(candidates)]
        self._next_provider(author, fetch, now)

    def _next_provider(self, author: bytes, fetch: _Fetch, now: float) -> None:
        """Ask the next provider of the list (one that never answers is left behind)."""
        if fetch.via is not None:
            self.replicator.release_connection(fetch.via)
        if not fetch.providers:
            fetch.via = None
            return
        provider, host, port = fetch.providers.pop(0)
        fetch.via, fetch.via_until = provider, now + PROVIDER_TRY
        self.replicator.learn_address(provider, host, port, now)
        self.replicator.want_connection(provider, now)
        self._request(author, fetch, now)

    def _request(self, author: bytes, fetch: _Fetch, now: float) -> None:
        seqs = sorted(fetch.seqs)[-MAX_SLICE_ENTRIES:]
        for peer in (author, fetch.via):
            if peer is None or not self.replicator.is_connected(peer):
                continue
            if self.replicator.request_slice(peer, author, seqs, now):
                fetch.requested = True
                fetch.fallback_at = float("inf")  # asked: wait for the answer or the deadline
                fetch.asked |= set(seqs)
                fetch.seqs -= set(seqs)
                self.stats["fetch.requested" if peer == author else "fetch.via_provider"] += 1
            return

    def _end(self, author: bytes) -> None:
        fetch = self._fetches.pop(author, None)
        for peer in (author, fetch.via if fetch is not None else None):
            if peer is not None and peer not in self.replicator.wanted:
                self.replicator.release_connection(peer)

    def _tried_add(self, author: bytes, seq: int) -> None:
        self._tried[(author, seq)] = None
        while len(self._tried) > MAX_TRIED:
            self._tried.popitem(last=False)

    def slice_arrived(self, arrived: SliceArrived, now: float) -> None:
        """Check and store the posts of a SLICE (see the module docstring, step 4)."""
        fetch = self._fetches.get(arrived.feed)
        if fetch is None or arrived.peer not in (arrived.feed, fetch.via) or not fetch.requested:
            self.stats["slice.unsolicited"] += 1
            return
        for seq in arrived.seqs:
            self._tried_add(arrived.feed, seq)
        for raw in arrived.entries:
            self._take(arrived, fetch, raw, now)
        fetch.requested = False
        if fetch.seqs:
            self._request(arrived.feed, fetch, now)
        else:
            self._end(arrived.feed)

    def _take(self, arrived: SliceArrived, fetch: _Fetch, raw: bytes, now: float) -> None:
        try:
            entry = decode_entry(raw)
        except EntryError:
            self.stats["slice.refused.invalid"] += 1
            return
        if entry.author != arrived.feed or entry.seq not in arrived.seqs:
            self.stats["slice.refused.not_asked"] += 1
        elif entry.kind != POST or not fetch.tags.intersection(tags_in(entry.text)):
            self.stats["slice.refused.no_tag"] += 1
        elif entry.author in self.replicator.blocked:
            self.stats["slice.refused.blocked"] += 1
        else:
            try:
                stored = self.store.add_loose(entry, int(now * 1000))
            except (EntryError, StoreError):
                self.stats["slice.refused.store"] += 1
                return
            if stored:
                self.stats["fetched"] += 1
                self.events.append(TrackedPostFetched(entry.author, entry.seq, entry.id, arrived.peer))

    # -- serving ----------------------------------------------------------------------------

    def slice_asked(self, asked: SliceAsked, now: float) -> None:
        """Answer a peer's SLICE_REQUEST from the feeds held here (rate-limited per peer)."""
        entries: list[bytes] = []
        if not self._serve.take(asked.peer, now):
            self.stats["serve.rate_limited"] += 1
        elif asked.feed in self.replicator.blocked:
            self.stats["serve.blocked"] += 1
        else:
            size = 0
            for raw in self.store.posts_at(asked.feed, asked.seqs)[:MAX_SLICE_ENTRIES]:
                size += len(raw)
                if size > MAX_SLICE_BYTES:
                    break
                entries.append(raw)
            self.stats["serve.answered"] += 1
            self.stats["serve.entries"] += len(entries)
        self.replicator.answer_slice(asked, entries, now)
