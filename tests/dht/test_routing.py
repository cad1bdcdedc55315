"""Routing table: ping-before-evict, exact k-closest, refresh; stateful invariants."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dht.ids import ID_BITS, Contact, distance
from dht.routing import STALE_FAILURES, RoutingTable, UpdateOutcome
from identity.errors import LocalProtocolError

OWN = bytes.fromhex("5a" * 20)


def id_in_bucket(own: bytes, index: int, low_bits: int) -> bytes:
    """An id at distance 2**index + (low_bits mod 2**index) from own."""
    d = (1 << index) | (low_bits % (1 << index) if index else 0)
    return (int.from_bytes(own, "big") ^ d).to_bytes(20, "big")


def contact(node_id: bytes, port: int = 4000) -> Contact:
    return Contact(node_id, (f"10.{node_id[0]}.{node_id[1]}.{node_id[2]}", port))


def brute_force_closest(contacts: list[Contact], target: bytes, count: int) -> list[Contact]:
    return sorted(contacts, key=lambda c: distance(c.node_id, target))[:count]


# ----------------------------------------------------------------------------- examples


def test_bucket_index_and_own_id() -> None:
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    assert table.bucket_index(id_in_bucket(OWN, 0, 0)) == 0
    assert table.bucket_index(id_in_bucket(OWN, 159, 12345)) == 159
    with pytest.raises(LocalProtocolError):
        table.bucket_index(OWN)
    assert table.update(contact(OWN), 0.0) == (UpdateOutcome.IGNORED, None)
    assert len(table) == 0


def test_ping_before_evict_keeps_live_contact() -> None:
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    members = [contact(id_in_bucket(OWN, 150, i)) for i in range(20)]
    for i, c in enumerate(members):
        assert table.update(c, float(i)) == (UpdateOutcome.ADDED, None)
    newcomer = contact(id_in_bucket(OWN, 150, 999))
    # Full bucket: newcomer waits as a replacement; ping the least-recently seen.
    assert table.update(newcomer, 30.0) == (UpdateOutcome.PING, members[0])
    assert newcomer not in table.bucket_contacts(150)
    assert table.replacements(150) == [newcomer]
    # A second newcomer does not start a second check.
    other = contact(id_in_bucket(OWN, 150, 998))
    assert table.update(other, 31.0) == (UpdateOutcome.QUEUED, None)
    # The old contact answers: it stays and moves to the tail.
    assert table.update(members[0], 32.0) == (UpdateOutcome.REFRESHED, None)
    assert table.bucket_contacts(150)[-1] == members[0]
    assert newcomer.node_id not in table
    # The next newcomer pings the new least-recently seen contact.
    third = contact(id_in_bucket(OWN, 150, 997))
    assert table.update(third, 33.0) == (UpdateOutcome.PING, members[1])


def test_ping_before_evict_evicts_dead_contact() -> None:
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    members = [contact(id_in_bucket(OWN, 150, i)) for i in range(20)]
    for c in members:
        table.update(c, 0.0)
    first = contact(id_in_bucket(OWN, 150, 1000))
    newest = contact(id_in_bucket(OWN, 150, 1001))
    assert table.update(first, 1.0)[0] is UpdateOutcome.PING
    assert table.update(newest, 2.0)[0] is UpdateOutcome.QUEUED
    # The ping timed out: evict, and the freshest replacement takes the place.
    assert table.eviction_failed(members[0].node_id, 6.0) == newest
    assert members[0].node_id not in table
    assert newest.node_id in table and table.bucket_contacts(150)[-1] == newest
    assert table.replacements(150) == [first]


def test_contact_heard_from_during_its_check_stays() -> None:
    table = RoutingTable(OWN, 0.0, k=1, questionable_after=0.0)
    old, new = contact(id_in_bucket(OWN, 150, 1)), contact(id_in_bucket(OWN, 150, 2))
    table.update(old, 0.0)
    assert table.update(new, 1.0) == (UpdateOutcome.PING, old)
    table.update(old, 2.0)  # it sent us something while our ping was lost
    assert table.eviction_failed(old.node_id, 6.0, checked_at=1.0) is None
    assert old.node_id in table and new.node_id not in table
    # Not heard from since the check: evicted.
    assert table.update(new, 7.0) == (UpdateOutcome.PING, old)
    assert table.eviction_failed(old.node_id, 12.0, checked_at=7.0) == new


def test_stale_contact_gives_way() -> None:
    table = RoutingTable(OWN, 0.0, k=2, questionable_after=0.0)
    a, b = contact(id_in_bucket(OWN, 100, 1)), contact(id_in_bucket(OWN, 100, 2))
    table.update(a, 0.0)
    table.update(b, 0.0)
    for _ in range(STALE_FAILURES):
        assert table.record_failure(b.node_id, 1.0) is None  # no replacement: kept, flagged
    assert b.node_id in table and table.failures(b.node_id) == STALE_FAILURES
    c = contact(id_in_bucket(OWN, 100, 3))
    assert table.update(c, 2.0) == (UpdateOutcome.ADDED, None)
    assert b.node_id not in table and c.node_id in table


def test_known_id_from_new_address_is_ignored() -> None:
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    a = contact(id_in_bucket(OWN, 10, 1))
    table.update(a, 0.0)
    moved = Contact(a.node_id, ("10.9.9.9", 1))
    assert table.update(moved, 1.0) == (UpdateOutcome.IGNORED, None)
    assert table.get(a.node_id) == a


def test_closest_is_exact_and_excludes() -> None:
    rng = Random(3)
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    for _ in range(400):
        table.update(contact(rng.randbytes(20)), 0.0)
    held = list(table.contacts())
    for _ in range(50):
        target = rng.randbytes(20)
        assert table.closest(target) == brute_force_closest(held, target, 20)
    best = table.closest(OWN, 1)[0]
    assert best not in table.closest(OWN, exclude_id=best.node_id)
    assert best not in table.closest(OWN, exclude_addr=best.addr)
    assert len(table.closest(OWN, exclude_id=best.node_id)) == 20


def test_refresh_schedule() -> None:
    rng = Random(4)
    table = RoutingTable(OWN, 0.0, questionable_after=0.0)
    assert table.next_refresh() is None and table.buckets_due(10_000.0) == []
    table.update(contact(id_in_bucket(OWN, 150, 1)), 10.0)
    table.update(contact(id_in_bucket(OWN, 159, 1)), 10.0)
    assert table.next_refresh() == 3600.0
    assert table.buckets_due(3599.0) == []
    assert table.buckets_due(3600.0) == list(range(150, 160))
    table.touch(id_in_bucket(OWN, 155, 7), 3600.0)
    assert 155 not in table.buckets_due(3600.0)
    for index in (0, 1, 77, 159):
        assert table.bucket_index(table.random_id_in_bucket(index, rng)) == index
    assert table.nearest_bucket() == 150


# ----------------------------------------------------------------------------- stateful

K_SMALL = 4
REPLACEMENTS = 3


class RoutingTableMachine(RuleBasedStateMachine):
    """Random updates, failures, checks and removals; invariants after every step."""

    @initialize(own=st.binary(min_size=20, max_size=20))
    def setup(self, own: bytes) -> None:
        self.own = own
        self.now = 0.0
        self.table = RoutingTable(own, 0.0, k=K_SMALL, replacement_cache=REPLACEMENTS, questionable_after=0.0)
        # Liveness checks in flight, by bucket: the contact pinged.
        self.checks: dict[int, Contact] = {}
        self.known: list[Contact] = []

    def _make(self, bucket: int, low: int, port: int) -> Contact:
        node_id = id_in_bucket(self.own, bucket, low)
        return Contact(node_id, ("10.0.0.1", port))

    @rule(
        bucket=st.sampled_from([0, 1, 2, 100, 158, 159, 159, 159]),
        low=st.integers(0, 15),
        port=st.sampled_from([1, 1, 1, 2]),
    )
    def update(self, bucket: int, low: int, port: int) -> None:
        c = self._make(bucket, low, port)
        before = {x.node_id for x in self.table.contacts()}
        healthy_before = {n for n in before if self.table.failures(n) < STALE_FAILURES}
        outcome, to_ping = self.table.update(c, self.now)
        event(f"update {outcome.value}")
        after = {x.node_id for x in self.table.contacts()}
        index = self.table.bucket_index(c.node_id)
        # An update never evicts a contact that has not failed (paper 2.2).
        assert healthy_before <= after
        if outcome is UpdateOutcome.PING:
            assert to_ping is not None
            assert len(self.table.bucket_contacts(index)) == K_SMALL
            assert c.node_id not in after
            assert to_ping == self.table.bucket_contacts(index)[0]
            assert index not in self.checks
            self.checks[index] = to_ping
        elif outcome is UpdateOutcome.QUEUED:
            assert index in self.checks and c.node_id not in after
        elif outcome is UpdateOutcome.ADDED:
            assert c.node_id in after and c.node_id not in before
        elif outcome is UpdateOutcome.REFRESHED:
            assert self.table.bucket_contacts(index)[-1] == c
            if self.checks.get(index) == c:
                del self.checks[index]
        self.known.append(c)

    @precondition(lambda self: bool(self.checks))
    @rule(data=st.data(), answered=st.booleans())
    def finish_check(self, data: st.DataObject, answered: bool) -> None:
        index = data.draw(st.sampled_from(sorted(self.checks)))
        checked = self.checks.pop(index)
        if checked.node_id not in self.table:
            return
        if answered:
            self.table.update(checked, self.now)
            assert self.table.bucket_contacts(index)[-1] == checked
        else:
            replacements = self.table.replacements(index)
            promoted = self.table.eviction_failed(checked.node_id, self.now)
            assert checked.node_id not in self.table
            assert promoted == (replacements[-1] if replacements else None)

    @precondition(lambda self: len(self.table) > 0)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(sorted(self.table.contacts(), key=lambda c: c.node_id)))
        self.table.record_failure(victim.node_id, self.now)
        self._forget_void_checks()

    @precondition(lambda self: len(self.table) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(sorted(self.table.contacts(), key=lambda c: c.node_id)))
        self.table.remove(victim.node_id, self.now)
        assert victim.node_id not in self.table
        self._forget_void_checks()

    def _forget_void_checks(self) -> None:
        # A check of a contact that left the table (stale and replaced, or
        # removed) is void: the table no longer waits for it.
        for index, checked in list(self.checks.items()):
            if checked.node_id not in self.table:
                del self.checks[index]

    @rule(dt=st.floats(0, 4000))
    def advance(self, dt: float) -> None:
        self.now += dt
        due = self.table.buckets_due(self.now)
        deadline = self.table.next_refresh()
        if due:
            assert deadline is not None and deadline <= self.now
        for index in due:
            self.table.touch_bucket(index, self.now)
        assert not self.table.buckets_due(self.now)

    @rule(key=st.binary(min_size=20, max_size=20), count=st.integers(1, 25))
    def closest(self, key: bytes, count: int) -> None:
        held = list(self.table.contacts())
        assert self.table.closest(key, count) == brute_force_closest(held, key, count)

    @invariant()
    def table_is_well_formed(self) -> None:
        if not hasattr(self, "table"):
            return
        seen: set[bytes] = set()
        total = 0
        for index in range(ID_BITS):
            members = self.table.bucket_contacts(index)
            assert len(members) <= K_SMALL
            replacements = self.table.replacements(index)
            assert len(replacements) <= REPLACEMENTS
            assert not {c.node_id for c in members} & {c.node_id for c in replacements}
            for c in members:
                assert c.node_id != self.own
                assert self.table.bucket_index(c.node_id) == index
                assert c.node_id not in seen
                assert self.table.get(c.node_id) == c
                seen.add(c.node_id)
            total += len(members)
        assert total == len(self.table)

    @invariant()
    def k_closest_to_own_id_is_exact(self) -> None:
        if not hasattr(self, "table"):
            return
        held = list(self.table.contacts())
        assert self.table.closest(self.own) == brute_force_closest(held, self.own, K_SMALL)
        # Any target, with the requester left out (the per-bucket caches `closest` ranks).
        for target in (bytes(20), b"\xff" * 20, bytes([0x5A]) * 20):
            for left_out in held[:1]:
                rest = [c for c in held if c.node_id != left_out.node_id]
                got = self.table.closest(target, exclude_id=left_out.node_id)
                assert got == brute_force_closest(rest, target, K_SMALL)

    @invariant()
    def filled_mask_tells_whether_a_contact_is_nearer_a_key_than_we_are(self) -> None:
        if not hasattr(self, "table"):
            return
        held = list(self.table.contacts())
        own = int.from_bytes(self.own, "big")
        for key in (bytes(20), b"\xff" * 20, bytes([0x5A]) * 20, self.own[:19] + bytes([self.own[19] ^ 1])):
            for left_out in [None, *held[:2]]:
                others = [c for c in held if left_out is None or c.node_id != left_out.node_id]
                nearer = any(distance(c.node_id, key) < distance(self.own, key) for c in others)
                mask = self.table.filled_mask(exclude_id=None if left_out is None else left_out.node_id)
                assert bool(mask & (own ^ int.from_bytes(key, "big"))) == nearer

    @invariant()
    def saved_rows_are_the_contacts_and_their_last_seen(self) -> None:
        if not hasattr(self, "table"):
            return
        assert self.table.saved_rows() == [
            (c.node_id, c.addr[0], c.addr[1], self.table.last_seen(c.node_id)) for c in self.table.contacts()
        ]


RoutingTableMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=80, deadline=None)
TestRoutingTable = RoutingTableMachine.TestCase


def test_a_recently_heard_contact_is_not_pinged_for_a_newcomer() -> None:
    """BEP 5's questionable-node rule: no liveness ping while the oldest contact is fresh."""
    table = RoutingTable(OWN, 0.0, k=1, questionable_after=900.0)
    old = Contact(id_in_bucket(OWN, 159, 0), ("10.0.0.1", 1))
    new = Contact(id_in_bucket(OWN, 159, 1), ("10.0.0.2", 1))
    assert table.update(old, 100.0)[0] is UpdateOutcome.ADDED
    assert table.update(new, 500.0) == (UpdateOutcome.QUEUED, None)
    assert table.replacements(159) == [new]
    # After 15 minutes of silence the oldest contact is questionable: ping it.
    assert table.update(new, 1000.0) == (UpdateOutcome.PING, old)


def test_has_room_is_false_only_when_an_update_could_only_reorder_replacements() -> None:
    table = RoutingTable(OWN, 0.0, k=2, replacement_cache=2, questionable_after=100.0)
    newcomer = id_in_bucket(OWN, 120, 99)
    assert table.has_room(newcomer, 0.0)  # no bucket yet
    a, b = contact(id_in_bucket(OWN, 120, 1)), contact(id_in_bucket(OWN, 120, 2))
    table.update(a, 0.0)
    assert table.has_room(newcomer, 0.0)  # a free slot
    table.update(b, 0.0)
    assert table.has_room(newcomer, 0.0)  # a free replacement slot
    for i in (3, 4):
        assert table.update(contact(id_in_bucket(OWN, 120, i)), 1.0)[0] is UpdateOutcome.QUEUED
    assert not table.has_room(newcomer, 1.0)  # full, full, nobody questionable
    assert table.has_room(newcomer, 100.0)  # the oldest is questionable: a check would start
    assert table.has_room(id_in_bucket(OWN, 119, 1), 1.0)  # another bucket
    for _ in range(STALE_FAILURES):
        table.record_failure(a.node_id, 2.0)
    assert table.has_room(newcomer, 2.0)  # a stale contact gives way to a newcomer
