"""Devices between NodeCores, sans IO, and the rules that resolve an identity's devices.

Nodes have real SQLite stores on disk and meet over `tests.gossip.wire.Wire` (in-memory
TCP and UDP, fake clock).  The tests assert what followers see: one timeline with every
device's posts under one identity, no forks, and a revoked device's later posts refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity import Identity
from p2pblog.devices import MAX_DEVICES, Cert, Revocation, Rotation, key_digest, resolve, roots
from p2pblog.entry import DEVICE, DEVICE_OF, POST, REVOKE, ROTATE, decode_entry
from p2pblog.errors import DeviceRevokedError, EntrySchemaError
from p2pblog.events import DevicePaired
from p2pblog.node import NodeCore
from p2pblog.pairing import PairingCode, PairingError, decode_code, encode_code, start_pairing
from p2pblog.rotation import KEYEVENT_POLL, commit, recover, rotate
from p2pblog.store import Store
from tests.gossip.wire import PORT, Wire
from tests.wire_nodes import wire_net

ROOT, DEV, C, D, E, F = (Identity(bytes([i]) * 32) for i in (71, 72, 73, 74, 75, 76))
NAMES = dict(zip("rcdefx", (ROOT, C, D, E, F, DEV), strict=True))
HOST = {name: f"10.0.3.{i}" for i, name in enumerate("rcdefx", start=1)}
R, X = ROOT.public_key, DEV.public_key


# --- the rules ----------------------------------------------------------------------------------


def key(i: int) -> bytes:
    return bytes([i]) * 32


def test_a_device_counts_only_once_it_consented() -> None:
    certs = [Cert(key(2), key(1), 3, "phone", False)]
    assert resolve(key(1), certs, {}, [])[key(2)].consented is False
    assert resolve(key(1), certs, {key(2): key(1)}, [])[key(2)].consented is True
    # It consented to another identity: not ours at all.
    assert resolve(key(1), certs, {key(2): key(9)}, []) == {}
    # A certificate by a key that is not an authority of the identity counts for nothing.
    assert resolve(key(1), [Cert(key(2), key(8), 3, "x", False)], {key(2): key(1)}, []) == {}


def test_admin_devices_certify_and_their_revocation_cuts_what_they_certified_later() -> None:
    root, admin, late, early = key(1), key(2), key(3), key(4)
    certs = [
        Cert(admin, root, 1, "laptop", True),
        Cert(early, admin, 5, "phone", False),
        Cert(late, admin, 9, "tablet", False),
    ]
    consents = {admin: root, early: root, late: root}
    assert set(resolve(root, certs, consents, [])) == {admin, early, late}
    # The root revokes the admin after its seq 6: the tablet it certified at 9 does not count.
    devices = resolve(root, certs, consents, [Revocation(admin, root, 2, 6)])
    assert set(devices) == {admin, early} and devices[admin].after == 6


def test_at_most_max_devices_earliest_first() -> None:
    certs = [Cert(key(10 + i), key(1), i + 1, f"d{i}", False) for i in range(MAX_DEVICES + 5)]
    consents = {c.device: key(1) for c in certs}
    devices = resolve(key(1), certs, consents, [])
    assert set(devices) == {key(10 + i) for i in range(MAX_DEVICES)}


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(5)), st.permutations(range(3)))
def test_the_result_does_not_depend_on_the_order_rows_arrived(order: list[int], rorder: list[int]) -> None:
    root = key(1)
    certs = [
        Cert(key(2), root, 1, "a", True),
        Cert(key(3), key(2), 2, "b", False),
        Cert(key(4), key(2), 4, "c", True),
        Cert(key(5), key(4), 2, "d", False),
        Cert(key(6), root, 7, "e", False),
    ]
    revs = [
        Revocation(key(4), root, 3, 1),
        Revocation(key(3), key(2), 3, 7),
        Revocation(key(6), key(9), 1, 0),
    ]
    consents = {key(i): root for i in range(2, 7)}
    expected = resolve(root, certs, consents, revs)
    assert resolve(root, [certs[i] for i in order], consents, [revs[i] for i in rorder]) == expected
    assert expected[key(4)].after == 1 and expected[key(3)].after == 7 and expected[key(6)].after is None


def test_pairing_codes_round_trip_and_typos_are_refused() -> None:
    pc = PairingCode(X, b"12345678", "phone")
    text = encode_code(pc)
    assert (
        decode_code(text) == pc == decode_code(text.upper()) == decode_code(" ".join([text[:20], text[20:]]))
    )
    broken = text[:-3] + ("a" if text[-3] != "a" else "b") + text[-2:]
    with pytest.raises(PairingError):
        decode_code(broken)
    with pytest.raises(PairingError):
        decode_code("hello")


def test_device_entries_are_validated() -> None:
    store = Store(":memory:")
    with pytest.raises(EntrySchemaError):
        store.append(ROOT, DEVICE, {"admin": "yes", "device": X, "name": "phone"}, 1)
    with pytest.raises(EntrySchemaError):
        store.append(ROOT, DEVICE, {"admin": False, "device": X, "name": "Phone!"}, 1)
    with pytest.raises(EntrySchemaError):
        store.append(ROOT, REVOKE, {"after": -1, "device": X}, 1)
    store.close()


# --- between nodes ------------------------------------------------------------------------------

Net = Callable[..., tuple[Wire, dict[str, NodeCore]]]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """Builds NodeCores named from 'rcdex' (by default), all joined through 'c'."""
    yield from wire_net(tmp_path, NAMES, HOST, hub="c", seed_offset=50, default="rcdex")


def pair(wire: Wire, root: NodeCore, device: NodeCore, name: str = "phone") -> None:
    code = start_pairing(device.store, device.identity.public_key, name, Random(9).randbytes(8))
    root.approve_device(decode_code(encode_code(code)), wire.now)
    wire.advance(30)
    assert device.own_identity == root.identity.public_key
    assert wire.events_of(next(n for n, c in wire.nodes.items() if c is device), DevicePaired)


def posts(core: NodeCore) -> list[tuple[bytes, str]]:
    return [
        (core.store.identity_of(i.entry.author), i.entry.text or "")
        for i in core.store.timeline(core.identity.public_key, limit=1000)
    ]


def test_two_devices_post_at_once_and_followers_show_one_timeline_without_a_fork(net: Net) -> None:
    wire, cores = net("rcdefx")
    root, device = cores["r"], cores["x"]
    pair(wire, root, device)
    followers = [cores[n] for n in "cde"]
    for follower in followers:
        follower.follow(R, wire.now)
    wire.advance(30)
    for i in range(100):
        root.post(f"root {i}", wire.now)
        device.post(f"phone {i}", wire.now)
        wire.advance(0.05)
    wire.advance(60)
    expected = {f"root {i}" for i in range(100)} | {f"phone {i}" for i in range(100)}
    for follower in followers:
        shown = posts(follower)
        assert {text for _, text in shown} == expected, len(shown)
        assert {author for author, _ in shown} == {R}  # one identity, one handle
        assert (
            follower.store.feed_state(R).forked_seq is None
            and follower.store.feed_state(X).forked_seq is None
        )
    # The device's own timeline shows the root's posts too; the root's shows the device's.
    assert {text for _, text in posts(device)} >= expected
    assert {text for _, text in posts(root)} >= expected


def test_a_revoked_device_s_later_posts_are_refused_by_every_follower(net: Net) -> None:
    wire, cores = net("rcdefx")
    root, device = cores["r"], cores["x"]
    pair(wire, root, device)
    followers = [cores[n] for n in "cde"]
    for follower in followers:
        follower.follow(R, wire.now)
    device.post("before the revocation", wire.now)
    wire.advance(60)
    assert all("before the revocation" in [t for _, t in posts(f)] for f in followers)
    root.revoke_device(X, wire.now)
    wire.advance(30)
    cut = root.store.devices_of(R)[0].after
    assert cut == device.store.latest_seq(X)
    device.post("after the revocation", wire.now)
    wire.advance(60)
    for follower in followers:
        texts = [t for _, t in posts(follower)]
        assert "before the revocation" in texts and "after the revocation" not in texts
        assert follower.store.latest_seq(X) == cut
    entry = device.store.feed(X, limit=1)[0].entry  # "after the revocation", offered directly
    report = followers[0].store.ingest_entries([entry])
    assert report.accepted == 0 and isinstance(report.error, DeviceRevokedError), report


def test_a_device_of_another_key_is_never_annexed(net: Net) -> None:
    wire, cores = net("rcdex")
    root, follower = cores["r"], cores["c"]
    # R certifies D's key without D's consent: D's posts are not R's.
    root.store.append(ROOT, DEVICE, {"admin": False, "device": D.public_key, "name": "stolen"}, 1)
    cores["d"].post("mine", wire.now)
    follower.follow(R, wire.now)
    follower.follow(D.public_key, wire.now)
    wire.advance(60)
    assert follower.store.identity_of(D.public_key) == D.public_key
    assert (D.public_key, "mine") in posts(follower)


# --- root rotation and recovery -----------------------------------------------------------------

K1, K2, K3, THIEF = (Identity(bytes([i]) * 32) for i in (81, 82, 83, 84))


def rot(author: bytes, seq: int, new: bytes, nxt: bytes, cut: int = 0, identity: bytes = R) -> Rotation:
    return Rotation(author, seq, identity, new, key_digest(nxt), cut)


def test_the_root_chain_follows_commitments_and_a_recovery_beats_a_stolen_root() -> None:
    k1, k2, k3, thief = K1.public_key, K2.public_key, K3.public_key, THIEF.public_key
    assert roots(R, None, [rot(R, 5, k1, k2)]) == [(R, None)]  # nothing committed: no rotation
    planned = rot(R, 5, k1, k2)
    assert roots(R, key_digest(k1), [planned]) == [(R, 5), (k1, None)]
    # A rotation to a key nobody committed to is ignored; so is one signed by a stranger.
    assert roots(R, key_digest(k1), [rot(R, 5, k3, k2), rot(thief, 1, k1, k2)]) == [(R, None)]
    # The thief of R saw k1 revealed by the owner's recovery and rotates to it, committing to
    # its own key: the recovery (signed by k1 itself) wins, and cuts R at 7.
    recovery = rot(k1, 1, k1, k2, cut=7)
    stolen = rot(R, 9, k1, thief)
    assert roots(R, key_digest(k1), [stolen, recovery]) == [(R, 7), (k1, None)]
    assert roots(R, key_digest(k1), [recovery, stolen]) == [(R, 7), (k1, None)]
    # Chains go on: k1 rotates to k2, which it committed to.
    assert roots(R, key_digest(k1), [recovery, rot(k1, 4, k2, k3)]) == [(R, 7), (k1, 4), (k2, None)]


def restart(wire: Wire, name: str, identity: Identity, store: Store, seed: int) -> NodeCore:
    core = NodeCore(identity, Random(seed), wire.now, store=store, random_bytes=Random(seed + 7).randbytes)
    wire.restart(name, core)
    core.bootstrap([wire.addr("c")], wire.now)
    core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
    return core


def test_followers_move_to_a_rotated_root_without_doing_anything(net: Net) -> None:
    wire, cores = net("rcde")
    root = cores["r"]
    followers = [cores[n] for n in "cde"]
    for follower in followers:
        follower.follow(R, wire.now)
    commit(root.store, ROOT, K1.public_key, int(wire.now * 1000))
    root.post("before the rotation", wire.now)
    wire.advance(30)
    rotate(root.store, ROOT, K1, K2.public_key, int(wire.now * 1000))
    wire.crash("r")
    new_root = restart(wire, "r", K1, root.store, 31)  # the home's key is K1 now
    assert new_root.own_identity == R
    wire.advance(30)
    new_root.post("after the rotation", wire.now)
    wire.advance(60)
    for follower in followers:
        shown = posts(follower)
        assert (R, "before the rotation") in shown and (R, "after the rotation") in shown
        assert [k for k, _ in follower.store.root_chain(R)] == [R, K1.public_key]


def test_a_recovery_with_the_committed_key_refuses_the_thief_s_later_posts(net: Net, tmp_path: Path) -> None:
    wire, cores = net("rcde")
    root = cores["r"]
    followers = [cores[n] for n in "cde"]
    for follower in followers:
        follower.follow(R, wire.now)
    commit(root.store, ROOT, K1.public_key, int(wire.now * 1000))  # K1 goes on paper, offline
    root.post("the owner's post", wire.now)
    wire.advance(30)
    cut = root.store.latest_seq(R)
    # The thief copied R's key (and its store) and posts as R; the owner's machine is gone.
    wire.crash("r")
    thief = restart(wire, "r", ROOT, root.store, 41)
    thief.post("the thief's first post", wire.now)
    wire.advance(30)
    assert all((R, "the thief's first post") in posts(f) for f in followers)
    # The owner recovers on a new machine with K1, cutting R after its last good entry.
    store = Store(tmp_path / "recovered.db")
    try:
        recover(store, R, K1, K2.public_key, cut, int(wire.now * 1000))
        owner = make_new_node(wire, "x", K1, store)
        wire.advance(KEYEVENT_POLL + 60)  # within one poll of the followers
        owner.post("the owner is back", wire.now)
        thief.post("the thief goes on", wire.now)
        wire.advance(60)
        for follower in followers:
            texts = [t for _, t in posts(follower)]
            assert "the owner's post" in texts and "the owner is back" in texts, texts
            assert "the thief goes on" not in texts and "the thief's first post" not in texts
            assert follower.store.latest_seq(R) == cut
            assert [k for k, _ in follower.store.root_chain(R)] == [R, K1.public_key]
    finally:
        store.close()


def make_new_node(wire: Wire, name: str, identity: Identity, store: Store) -> NodeCore:
    core = NodeCore(identity, Random(77), wire.now, store=store, random_bytes=Random(78).randbytes)
    wire.add(name, core, HOST[name])
    core.bootstrap([wire.addr("c")], wire.now)
    core.publish([("udp", HOST[name], PORT), ("tcp", HOST[name], PORT)], wire.now)
    return core


# --- regressions (review) -----------------------------------------------------------------------


def test_a_pairing_record_copied_under_another_identity_proves_nothing(tmp_path: Path) -> None:
    from identity.records import create_pairing_record, pairing_key
    from p2pblog.pairing import Pairing
    from p2pblog.queries import PendingQueries
    from p2pblog.record_rules import validate_provider

    store = Store(tmp_path / "x.db")
    try:
        code = start_pairing(store, X, "phone", b"12345678")
        real = create_pairing_record(ROOT, device=X, nonce=code.nonce, seq=1, expires=2_000_000_000)
        # The thief read the real record (its proof) and files the same proof under its key.
        stolen = [(THIEF.public_key, real.payload or b""), (R, real.payload or b"")]
        pairing = Pairing(X, store, None, PendingQueries())  # type: ignore[arg-type]
        assert pairing.resolved(stolen) == R
        assert pairing.resolved(stolen[:1]) is None
        # Approvals are provider values (one per signer): a junk record cannot displace it.
        assert validate_provider(pairing_key(X), real.raw, 1_000) == R
    finally:
        store.close()


def test_revocations_of_unconsented_keys_freeze_nothing_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = Store(path)
    store.append(ROOT, DEVICE, {"admin": False, "device": C.public_key, "name": "c"}, 1)
    store.append(ROOT, REVOKE, {"after": 0, "device": C.public_key}, 2)
    store.close()
    store = Store(path)
    try:
        entry = store.append(C, POST, {"text": "still mine"}, 3)  # C never consented: not R's
        assert store.latest_seq(C.public_key) == entry.seq == 1
    finally:
        store.close()


def test_a_revoked_device_s_later_entry_is_refused_as_a_loose_entry_too(net: Net) -> None:
    wire, cores = net("rcdefx")
    root, device, follower = cores["r"], cores["x"], cores["c"]
    pair(wire, root, device)
    follower.follow(R, wire.now)
    wire.advance(30)
    root.revoke_device(X, wire.now)
    wire.advance(30)
    later = device.post("after the revocation", wire.now)
    with pytest.raises(DeviceRevokedError):
        follower.store.add_loose(later, int(wire.now * 1000))


def test_a_rotation_filed_by_another_feed_does_not_move_the_commitment(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        commit(store, ROOT, K1.public_key, 1)
        before = store.current_commitment(R)
        # The thief's feed names R and claims to rotate it to the thief's key.
        store.append(THIEF, ROTATE, {"cut": 0, "identity": R, "new": THIEF.public_key, "next": bytes(32)}, 2)
        assert store.current_commitment(R) == before == key_digest(K1.public_key)
        assert store.root_chain(R) == [(R, None)] and store.rotation_entries(R) == []
    finally:
        store.close()


def test_a_revocation_counts_after_many_certificates(net: Net) -> None:
    wire, cores = net("rcdefx")
    root, device = cores["r"], cores["x"]
    pair(wire, root, device)
    for i in range(70):  # junk certificates (never consented) fill the certificate rows
        root.store.append(ROOT, DEVICE, {"admin": False, "device": bytes([i]) * 32, "name": f"j{i}"}, 10 + i)
    root.revoke_device(X, wire.now)
    assert root.store.devices_of(R)[0].after is not None or any(
        d.after is not None for d in root.store.devices_of(R)
    )


def test_a_device_follows_what_its_identity_follows_and_dms_count_for_the_identity(net: Net) -> None:
    wire, cores = net("rcdefx")
    root, device, friend = cores["r"], cores["x"], cores["c"]
    root.follow(C.public_key, wire.now)
    friend.follow(R, wire.now)
    pair(wire, root, device)
    friend.post("from a friend of the identity", wire.now)
    wire.advance(60)
    assert (C.public_key, "from a friend of the identity") in posts(device)
    # The device writes to C, who follows R: it is R's message, in C's inbox.
    device.send_dm(C.public_key, "from the phone", wire.now)
    wire.advance(30)
    assert [(r.peer, r.folder, r.text) for r in friend.store.dm_thread(R)] == [(R, "inbox", "from the phone")]


def test_a_message_to_a_rotated_identity_reaches_its_new_root(net: Net) -> None:
    wire, cores = net("rcde")
    root, friend = cores["r"], cores["c"]
    friend.follow(R, wire.now)
    commit(root.store, ROOT, K1.public_key, int(wire.now * 1000))
    wire.advance(30)
    rotate(root.store, ROOT, K1, K2.public_key, int(wire.now * 1000))
    wire.crash("r")
    new_root = restart(wire, "r", K1, root.store, 31)
    wire.advance(60)
    assert [k for k, _ in friend.store.root_chain(R)] == [R, K1.public_key]
    friend.send_dm(R, "to the identity", wire.now)
    wire.advance(30)
    assert [r.text for r in new_root.store.dm_thread(C.public_key)] == ["to the identity"]


def test_a_revocation_read_before_the_certificate_it_ends_still_counts(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        admin, phone = K1, K2
        store.append(ROOT, DEVICE, {"admin": True, "device": admin.public_key, "name": "laptop"}, 1)
        store.append(admin, DEVICE_OF, {"identity": R}, 2)
        # The admin device revokes the phone; this store reads it before the root's certificate.
        store.append(admin, REVOKE, {"after": 0, "device": phone.public_key}, 3)
        store.append(ROOT, DEVICE, {"admin": False, "device": phone.public_key, "name": "phone"}, 4)
        store.append(phone, DEVICE_OF, {"identity": R}, 5)
        devices = {d.key: d for d in store.devices_of(R)}
        assert devices[phone.public_key].after == 0 and devices[admin.public_key].after is None
    finally:
        store.close()


def test_after_a_rotation_another_feed_naming_the_new_root_does_not_move_the_commitment(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s.db")
    try:
        commit(store, ROOT, K1.public_key, 1)
        store.append(ROOT, POST, {"text": "before"}, 2)
        rotate(store, ROOT, K1, K2.public_key, 3)
        # A stranger's feed files a rotation naming the new root (at a lower seq than the
        # owner's), committing to the stranger's own next key: it is not the identity's.
        body = {"cut": 0, "identity": R, "new": K1.public_key, "next": key_digest(THIEF.public_key)}
        store.append(THIEF, ROTATE, body, 4)
        assert store.root_chain(R) == [(R, 3), (K1.public_key, None)]
        assert store.current_commitment(R) == key_digest(K2.public_key)
        assert [decode_entry(raw).author for raw in store.rotation_entries(R)] == [R]
    finally:
        store.close()
