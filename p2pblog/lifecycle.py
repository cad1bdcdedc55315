"""The node's lifecycle: joining the network at start, saving contacts, and shutdown.

Theory of operation
-------------------
Both drivers (the trio daemon and the simulator) start a node the same way
because the policy lives here, not in them; they only call `NodeCore.start`
and `NodeCore.close` and move bytes in between:

1. **Seeds** (`join_seeds`): the ``--bootstrap`` addresses, then up to
   `REJOIN_CONTACTS` contacts the previous run saved in the store (so a
   restarted node needs no flag), without duplicates or our own address.
2. **Join**: a bootstrap lookup through the seeds (`JoinFinished` reports
   how many answered).  With no seeds, the node waits to be contacted.
3. **Publish** the peer record once the join has filled the routing table
   (or at once, with no seeds), and again after each of `PUBLISH_RETRY`
   while no node stored it (a node that started alone publishes as peers
   appear); `StartupFinished` reports the outcome.  From then on
   `OwnRecords` re-signs it on its own timer.
4. **Save contacts** to the store once the join ended, then every
   `SAVE_CONTACTS_EVERY` seconds (at the first wake-up once due: the
   maintenance pass guarantees one every `p2pblog.node.MAINTAIN_EVERY`
   seconds) and on `close`, so the next start has seeds.  The gossip
   peers' scores and bans (`p2pblog.scoring`, through the replicator given
   as ``replicator``) are saved with them, so a peer
   banned for forging entries is still refused after a restart; the
   replicator also saves them as soon as a ban starts.  A crash (in the
   simulator) loses what changed since the last save, as a killed process
   does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from dht import BootstrapFinished, DhtCore
from dht.ids import Address
from identity.errors import LocalProtocolError
from p2pblog.events import JoinFinished, RecordPublished, StartupFinished
from p2pblog.own_records import OwnRecords
from p2pblog.replication import Replicator
from p2pblog.store import Store

#: Seconds between two saves of the routing table's contacts to the store (Bitcoin
#: Core writes its peers.dat every 15 minutes; the contacts are only seeds for the
#: next start, and the first save follows the join).
SAVE_CONTACTS_EVERY: Final = 300.0
#: Saved contacts used as seeds to rejoin after a restart.
REJOIN_CONTACTS: Final = 32
#: Seconds to wait before each new attempt to publish the peer record while no node stored it.
PUBLISH_RETRY: Final = (2.0, 5.0, 10.0, 30.0, 60.0)

LifecycleEvent = JoinFinished | StartupFinished


class Lifecycle:
    """Start-up (join, publish with retries), periodic contact saving, and shutdown."""

    def __init__(
        self, store: Store, dht: DhtCore, records: OwnRecords, replicator: Replicator | None = None
    ) -> None:
        self.store = store
        self.dht = dht
        self.records = records
        #: Whose peer scores are saved with the contacts (None: only the contacts).
        self.replicator = replicator
        self.events: deque[LifecycleEvent] = deque()
        self.started = False
        self._seeds = 0
        self._join_query: int | None = None
        self._publish_query: int | None = None
        self._publish_tries = 0
        #: When to retry publishing the peer record: the lifecycle's only deadline.
        #: Contacts are saved at the first wake-up (there is one every maintenance
        #: pass) at or after they are due, so an idle node does not wake once more for
        #: them, and the replicator's keepalives, which go out at any wake-up, keep
        #: their timing.
        self.publish_at: float | None = None
        self._save_at: float | None = None

    def join_seeds(self, bootstrap: Sequence[Address], own: Sequence[Address] = ()) -> list[Address]:
        """The addresses to join through: bootstrap, then contacts saved by the last run."""
        saved = [(host, port) for _, host, port, _ in self.store.load_contacts()[:REJOIN_CONTACTS]]
        return [seed for seed in dict.fromkeys([*bootstrap, *saved]) if seed not in own]

    def start(self, seeds: Sequence[Address], now: float) -> None:
        self.started = True
        self._seeds = len(seeds)
        if seeds:
            self._join_query = self.dht.bootstrap(seeds, now)
        else:
            self._publish(now)
        self._save_at = now + SAVE_CONTACTS_EVERY

    def handle_timer(self, now: float) -> None:
        if self.publish_at is not None and now >= self.publish_at:
            self.publish_at = None
            self._publish(now)
        if self._save_at is not None and now >= self._save_at:
            self._save_at = now + SAVE_CONTACTS_EVERY
            self.save_contacts()

    def joined(self, event: BootstrapFinished, now: float) -> bool:
        """A bootstrap ended; True if it was our join (then the peer record is published)."""
        if event.query_id != self._join_query:
            return False
        self._join_query = None
        self.events.append(JoinFinished(self._seeds, event.seeds_answered, len(self.dht.table)))
        if self._save_at is not None:
            self._save_at = min(self._save_at, now)  # a crash soon after the start keeps them
        self._publish(now)
        return True

    def published(self, event: RecordPublished, now: float) -> None:
        """A peer-record publication ended: retry the start-up one while nobody stored it."""
        if event.query_id != self._publish_query:
            return
        self._publish_query = None
        if not event.stored_at and self._publish_tries < len(PUBLISH_RETRY):
            self.publish_at = now + PUBLISH_RETRY[self._publish_tries]
            self._publish_tries += 1
            return
        self.events.append(StartupFinished(event.seq, event.stored_at, self._publish_tries + 1))

    def _publish(self, now: float) -> None:
        if not self.records.publishing:
            return  # nobody could dial the address (`OwnRecords.set_client`)
        try:
            self._publish_query = self.records.publish_peer(now)
        except LocalProtocolError:
            # Our own DHT store refused the record (counted by OwnRecords, which retries
            # it); the start-up retries go on as if no node stored it.
            if self._publish_tries < len(PUBLISH_RETRY):
                self.publish_at = now + PUBLISH_RETRY[self._publish_tries]
                self._publish_tries += 1

    def save_contacts(self) -> None:
        """Save the routing table's contacts, and the gossip peers' scores and bans."""
        rows = self.dht.table.saved_rows()
        if rows:
            self.store.save_contacts(rows)
        if self.replicator is not None:
            self.replicator.save_scores()

    def close(self) -> None:
        """Shutdown: save the contacts for the next start."""
        if self.started:
            self.save_contacts()
        self.started = False
        self.publish_at = self._save_at = None
