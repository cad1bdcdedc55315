"""`DhtCore`: answers, timers, ping-before-evict, hooks, bad input and misuse."""

from __future__ import annotations

import hashlib
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht import (
    BootstrapFinished,
    DatagramDropped,
    DhtConfig,
    DhtCore,
    LookupFinished,
    PeerMisbehaved,
    PutFinished,
    ValueFound,
    ValueNotFound,
    wire,
)
from dht.events import MAX_QUEUED_NOTICES, Event
from dht.ids import Contact, distance
from dht.records import REPLICATE_INTERVAL
from identity.errors import LocalProtocolError
from identity.limits import MAX_DHT_VALUE_BYTES
from tests.dht.simnet import SimNetwork, SimNode, bootstrap_via, put_of
from tests.dht.test_hostile_net import answer_verification
from tests.dht.test_records import seq_record, seq_selector, seq_validator
from tests.dht.test_wire import A_ADDR, A_ID, B_ID, C1, C2, GOLDEN, KEY, STORE_VALUES, golden

PEER = ("10.1.1.1", 5000)
TARGET = hashlib.sha1(b"target").digest()


def make_core(node_id: bytes = B_ID, **kwargs: object) -> DhtCore:
    return DhtCore(node_id, Random(0), 0.0, **kwargs)  # type: ignore[arg-type]


def drain(core: DhtCore) -> list[Event]:
    events: list[Event] = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def responses(core: DhtCore) -> list[tuple[bytes, tuple[str, int]]]:
    return [(d, a) for d, a in core.datagrams_to_send() if d[0] == wire.RESPONSE]


def requests(core: DhtCore) -> list[tuple[wire.Message, tuple[str, int]]]:
    return [(wire.decode_datagram(d), a) for d, a in core.datagrams_to_send() if d[0] == wire.REQUEST]


def sha(label: str) -> bytes:
    return hashlib.sha1(label.encode()).digest()


# ----------------------------------------------------------------------------- interop


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_core_answers_byte_for_byte_like_kademlia(label: str) -> None:
    """Our core as node B answers the captured requests with kademlia's exact bytes."""
    core = make_core(B_ID)
    core.table.update(C1, 0.0)
    core.table.update(C2, 0.0)
    core.records.put(KEY, b"hello", 0.0)
    request, response, _ = golden(label)
    core.receive_datagram(request, A_ADDR, 1.0)
    # A stranger is verified first (a PING it answers); a STORE, or an answer
    # over the amplification credit, waits for that one round trip.
    out = (
        answer_verification(core, Contact(A_ID, A_ADDR), 1.0) if label != "stun" else core.datagrams_to_send()
    )
    assert [(d, a) for d, a in out if d[0] == wire.RESPONSE] == [(response, A_ADDR)]
    if label in STORE_VALUES:
        assert core.records.get(KEY, 1.0) == STORE_VALUES[label]
    if label != "stun":
        assert core.table.get(A_ID) == Contact(A_ID, A_ADDR)  # it answered: in the table


def test_unknown_rpc_is_not_answered() -> None:
    core = make_core()
    datagram = wire.encode_request(wire.UnknownRequest(bytes(20), "p2pblog_hello", (A_ID,)))
    core.receive_datagram(datagram, PEER, 0.0)
    assert core.datagrams_to_send() == []
    assert drain(core) == [DatagramDropped(PEER, "unknown rpc 'p2pblog_hello'")]
    assert core.stats["drop.unknown rpc"] == 1


# ----------------------------------------------------------------------------- bad input


def test_malformed_datagram_is_an_event_not_an_exception() -> None:
    core = make_core()
    core.receive_datagram(b"\x00" + bytes(20) + b"\xc1", PEER, 0.0)
    (event,) = drain(core)
    assert isinstance(event, PeerMisbehaved) and event.addr == PEER
    assert core.stats["misbehaved.malformed datagram"] == 1
    assert core.datagrams_to_send() == []


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=120), max_size=20))
def test_garbage_never_raises(datagrams: list[bytes]) -> None:
    core = make_core()
    core.table.update(C1, 0.0)
    for i, data in enumerate(datagrams):
        core.receive_datagram(data, PEER, float(i))
        core.handle_timer(float(i))
    drain(core)
    core.datagrams_to_send()


def test_malformed_answers_are_misbehaviour() -> None:
    core = make_core(A_ID)
    core.table.update(C1, 0.0)
    core.start_lookup(TARGET, 0.0)
    ((find, addr),) = requests(core)
    assert isinstance(find, wire.FindNode) and find.target == TARGET and addr == C1.addr
    # A string where contacts belong.
    core.receive_datagram(wire.encode_response(find.msg_id, "nonsense"), C1.addr, 0.1)
    events = drain(core)
    assert isinstance(events[0], PeerMisbehaved) and events[0].node_id == C1.node_id
    assert events[1] == LookupFinished(1, TARGET, (), 1, 1)


def test_unsolicited_and_misaddressed_responses_are_dropped() -> None:
    core = make_core(A_ID)
    core.receive_datagram(wire.ping_response(bytes(20), B_ID), PEER, 0.0)
    assert drain(core) == [DatagramDropped(PEER, "unsolicited response")]
    core.bootstrap([PEER], 0.0)
    ((ping, _),) = requests(core)
    core.receive_datagram(wire.ping_response(ping.msg_id, B_ID), ("10.6.6.6", 1), 0.1)
    assert drain(core) == [DatagramDropped(("10.6.6.6", 1), "response from an address we did not ask")]
    # The real answer still counts.
    core.receive_datagram(wire.ping_response(ping.msg_id, B_ID), PEER, 0.2)
    assert core.table.get(B_ID) == Contact(B_ID, PEER)


def test_rate_limit_per_source() -> None:
    core = make_core(config=DhtConfig(source_rate=10.0, source_burst=50.0))
    ping = wire.encode_request(wire.Ping(bytes(20), A_ID))
    for _ in range(80):
        core.receive_datagram(ping, PEER, 0.0)
    core.receive_datagram(ping, ("10.2.2.2", 1), 0.0)
    assert len(responses(core)) == 51
    assert core.stats["drop.rate limited"] == 30
    core.receive_datagram(ping, PEER, 1.0)  # ten tokens later
    assert len(responses(core)) == 1


def test_notice_queue_is_bounded() -> None:
    core = make_core()
    for i in range(MAX_QUEUED_NOTICES + 50):
        core.receive_datagram(b"junk", (f"10.3.{i // 250}.{i % 250}", 1), 0.0)
    assert len(drain(core)) == MAX_QUEUED_NOTICES
    assert core.stats["events.notices_not_queued"] == 50
    core.receive_datagram(b"junk", PEER, 0.0)
    assert len(drain(core)) == 1


# ----------------------------------------------------------------------------- misuse


def test_misuse_raises_local_protocol_error() -> None:
    core = make_core()
    with pytest.raises(LocalProtocolError):
        core.start_lookup(b"short", 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_get(KEY, 0.0, quorum=0)
    with pytest.raises(LocalProtocolError):
        core.start_put(KEY, b"x" * (MAX_DHT_VALUE_BYTES + 1), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_put(KEY, None, 0.0)  # type: ignore[arg-type]
    core.handle_timer(5.0)
    with pytest.raises(LocalProtocolError):
        core.handle_timer(4.0)
    with pytest.raises(LocalProtocolError):
        DhtCore(b"short", Random(0), 0.0)
    with pytest.raises(LocalProtocolError):
        DhtConfig(retransmit_after=(1.0, 0.5))
    strict = make_core(validator=seq_validator, selector=seq_selector)
    with pytest.raises(LocalProtocolError):
        strict.start_put(KEY, b"not a record", 0.0)
    strict.start_put(KEY, seq_record(5), 0.0)
    with pytest.raises(LocalProtocolError):
        strict.start_put(KEY, seq_record(4), 0.0)


# ----------------------------------------------------------------------------- timers


def test_retransmits_then_fails_after_rpcudps_timeout() -> None:
    core = make_core(A_ID)
    query = core.bootstrap([PEER], 0.0)
    first = core.datagrams_to_send()
    assert len(first) == 1
    sent_at = []
    while (deadline := core.get_timer()) is not None and deadline <= 5.0:
        core.handle_timer(deadline)
        again = core.datagrams_to_send()
        if again:
            assert again == first  # same bytes, same message id
            sent_at.append(deadline)
    assert sent_at == [0.5, 1.0, 2.0, 3.0]
    assert drain(core) == [BootstrapFinished(query, 0, ())]
    assert core.stats["rpc.timeout.ping"] == 1


def test_lookup_without_contacts_finishes_at_once() -> None:
    core = make_core()
    query = core.start_lookup(KEY, 0.0)
    assert drain(core) == [LookupFinished(query, KEY, (), 0, 0)]
    query = core.start_get(KEY, 0.0)
    assert drain(core) == [ValueNotFound(query, KEY, 0)]
    query = core.start_put(KEY, b"v", 0.0)
    assert drain(core) == [PutFinished(query, KEY, (), (), ())]
    # ... and a get now finds our own copy without asking anyone.
    query = core.start_get(KEY, 0.0)
    assert drain(core) == [ValueFound(query, KEY, b"v", 1, 0)]


def test_bucket_refresh_after_an_hour() -> None:
    core = make_core(A_ID)
    core.table.update(C1, 0.0)
    assert core.get_timer() == 3600.0
    core.handle_timer(3600.0)
    sent = requests(core)
    assert sent and all(isinstance(m, wire.FindNode) for m, _ in sent)
    target = sent[0][0].target  # type: ignore[union-attr]
    assert core.table.bucket_index(target) == core.table.bucket_index(C1.node_id)
    # The refresh counts as a lookup in that bucket: not due again for an hour.
    assert core.table.buckets_due(3600.0) == []


def id_in_bucket(own: bytes, index: int, low: int) -> bytes:
    return (int.from_bytes(own, "big") ^ ((1 << index) | low)).to_bytes(20, "big")


@pytest.mark.parametrize("answers", [True, False])
def test_ping_before_evict(answers: bool) -> None:
    own = bytes(20)
    core = make_core(own, config=DhtConfig(k=2, questionable_after=0.0))
    members = [Contact(id_in_bucket(own, 159, i), (f"10.4.0.{i + 1}", 1)) for i in range(3)]
    out = []
    for m in members:
        core.receive_datagram(wire.encode_request(wire.Ping(sha(m.addr[0]), m.node_id)), m.addr, 1.0)
        out += answer_verification(core, m, 1.0)  # each answers the ping that verifies it
    # Three pongs, and one liveness ping: the third sender found the bucket
    # full, so the least-recently seen contact is asked whether it is alive.
    assert len(out) == 4
    (check, check_addr), *others = [
        (msg, a) for d, a in out if isinstance(msg := wire.decode_datagram(d), wire.Ping)
    ]
    assert not others and check_addr == members[0].addr
    assert core.table.bucket_contacts(159) == members[:2]
    assert core.table.replacements(159) == [members[2]]
    if answers:
        core.receive_datagram(wire.ping_response(check.msg_id, members[0].node_id), check_addr, 1.5)
        assert core.table.bucket_contacts(159) == [members[1], members[0]]
    else:
        core.handle_timer(6.0)  # 5 s after the check: evict, promote the newcomer
        assert core.table.bucket_contacts(159) == [members[1], members[2]]
        assert core.stats["table.evictions"] == 1


# ----------------------------------------------------------------------------- small networks


def small_network(
    n: int, seed: int = 1, latency: tuple[float, float] = (0.01, 0.1), **kwargs: object
) -> tuple[SimNetwork, list[SimNode]]:
    net = SimNetwork(seed, loss=0.0, latency=latency)
    rng = Random(seed)
    nodes = [net.add_node(rng.randbytes(20), **kwargs)]
    pending = []
    for _ in range(n - 1):
        node = net.add_node(rng.randbytes(20), **kwargs)
        seed_addr = rng.choice(nodes).addr
        pending.append((node, net.command(node, bootstrap_via(seed_addr))))
        nodes.append(node)
        net.run_until(net.now + 0.5)
    net.run_until_done(pending)
    return net, nodes


def test_bootstrap_put_get_lookup_on_ten_nodes() -> None:
    net, nodes = small_network(10)
    boot = nodes[5].results[1]
    assert isinstance(boot, BootstrapFinished) and boot.seeds_answered == 1
    for value in (b"bytes", "text", 7, 2.5, False):
        put = net.run_until_done([(nodes[3], net.command(nodes[3], put_of(KEY, value)))])[0]
        assert isinstance(put, PutFinished) and len(put.stored_at) == 9 and put.ok
        got = net.run_until_done([(nodes[7], net.command(nodes[7], lambda c, now: c.start_get(KEY, now)))])[0]
        assert isinstance(got, ValueFound)
        assert type(got.value) is type(value) and got.value == value
    others = [n.core.node_id for n in nodes if n is not nodes[0]]
    found = net.run_until_done([(nodes[0], net.command(nodes[0], lambda c, now: c.start_lookup(KEY, now)))])[
        0
    ]
    assert isinstance(found, LookupFinished)
    assert [c.node_id for c in found.closest] == sorted(others, key=lambda i: distance(i, KEY))
    stored = sum(n.notices["RecordStored"] for n in nodes)
    assert stored > 0


def test_selector_picks_highest_seq_and_repairs_stale_copies() -> None:
    net, nodes = small_network(8, validator=seq_validator, selector=seq_selector)
    holders = sorted(nodes[1:], key=lambda n: distance(n.core.node_id, KEY))[:3]
    for seq, holder in enumerate(holders, start=1):
        holder.core.records.put(KEY, seq_record(seq), net.now)
    got = net.run_until_done(
        [(nodes[0], net.command(nodes[0], lambda c, now: c.start_get(KEY, now, quorum=3)))]
    )[0]
    assert isinstance(got, ValueFound) and got.value == seq_record(3) and got.answers == 3
    net.run_until(net.now + 10)
    # The holders of seq 1 and 2 were sent seq 3 (they accept: it is better).
    assert all(h.core.records.get(KEY, net.now) == seq_record(3) for h in holders)


def test_invalid_value_from_a_peer_is_misbehaviour_and_the_get_goes_on() -> None:
    # One latency for every datagram: the get asks its closest peers first, so
    # the liar's answer arrives before the honest one that ends the get.
    net, nodes = small_network(8, latency=(0.05, 0.05), validator=seq_validator, selector=seq_selector)
    liar, *rest = sorted(nodes[1:], key=lambda n: distance(n.core.node_id, KEY))
    # The liar holds a value our validator refuses (expired record), bypassing its own checks.
    liar.core.records.validator = lambda key, value, now: True
    liar.core.records.put(KEY, seq_record(9, expires=1.0), net.now)
    rest[0].core.records.put(KEY, seq_record(2), net.now)
    got = net.run_until_done([(nodes[0], net.command(nodes[0], lambda c, now: c.start_get(KEY, now)))])[0]
    assert isinstance(got, ValueFound) and got.value == seq_record(2)
    assert nodes[0].core.stats["misbehaved.invalid returned value"] == 1
    misbehaved = [e for e in nodes[0].other_events if isinstance(e, PeerMisbehaved)]
    assert [e.node_id for e in misbehaved] == [liar.core.node_id]


def test_records_are_replicated_and_republished() -> None:
    cfg = DhtConfig(replicate_interval=100.0, republish_interval=300.0, record_ttl=250.0)
    net = SimNetwork(3, loss=0.0, config=cfg)
    rng = Random(3)
    nodes = [net.add_node(rng.randbytes(20)) for _ in range(6)]
    net.run_until_done(
        [(n, net.command(n, lambda c, now: c.bootstrap([nodes[0].addr], now))) for n in nodes[1:]]
    )
    net.run_until_done([(nodes[2], net.command(nodes[2], lambda c, now: c.start_put(KEY, b"v", now)))])
    t0 = net.now

    def republished() -> int:
        return sum(n.core.stats["records.republished"] for n in nodes)

    net.run_until(t0 + 99)
    assert republished() == 0
    net.run_until(t0 + 111)
    # Paper 4.5: the first holder to replicate resets the others' timers with
    # its STOREs (the jitter keeps them from all firing at once).
    assert republished() == 1
    net.run_until(t0 + 1000)
    # Replication kept every copy alive past the 250 s ttl ...
    assert all(n.core.records.get(KEY, net.now) == b"v" for n in nodes)
    # ... at about one replication per interval, plus the owner's republications.
    assert republished() <= 1000 / 100 + 1000 / 300 + 2
    assert nodes[2].core.records.is_published(KEY)


def test_by_default_holders_do_not_replicate_and_the_publisher_republishes() -> None:
    # go-libp2p-kad-dht's rule (docs/design.md, "protocol intervals"): a holder
    # never re-stores what it holds; the publisher's republication keeps the copies alive.
    assert DhtConfig().replicate_interval is None
    ttl = 3 * REPLICATE_INTERVAL  # long enough for the paper's hourly replication to show
    cfg = DhtConfig(republish_interval=300.0, record_ttl=ttl)
    net = SimNetwork(3, loss=0.0, config=cfg)
    rng = Random(3)
    nodes = [net.add_node(rng.randbytes(20)) for _ in range(6)]
    net.run_until_done(
        [(n, net.command(n, lambda c, now: c.bootstrap([nodes[0].addr], now))) for n in nodes[1:]]
    )
    publisher = nodes[2]
    holders = [n for n in nodes if n is not publisher]
    net.run_until_done([(publisher, net.command(publisher, lambda c, now: c.start_put(KEY, b"v", now)))])
    t0 = net.now
    assert all(n.core.records.get(KEY, net.now) == b"v" for n in holders)
    net.run_until(t0 + 1000)
    # The publisher re-stored it every 300-330 s; no holder re-stored anything.
    assert publisher.core.stats["records.republished"] == 3
    assert [n.core.stats["records.republished"] for n in holders] == [0] * len(holders)
    # The publisher stops.  Two hours on (hourly replication would have run twice)
    # no holder has re-stored it, and each still holds its copy ...
    publisher.core.records.remove(KEY)
    net.run_until(t0 + 1000 + 2 * REPLICATE_INTERVAL)
    assert [n.core.stats["records.republished"] for n in holders] == [0] * len(holders)
    assert all(n.core.records.get(KEY, net.now) == b"v" for n in holders)
    # ... until one ttl after the publisher's last STORE: then it lapses everywhere.
    net.run_until(t0 + 1000 + ttl)
    assert all(n.core.records.get(KEY, net.now) is None for n in holders)


def test_same_seed_same_bytes() -> None:
    def run() -> tuple[object, ...]:
        net, nodes = small_network(12, seed=9)
        net.run_until_done([(nodes[4], net.command(nodes[4], lambda c, now: c.start_put(KEY, b"v", now)))])
        return (
            net.delivered,
            net.now,
            tuple(sorted(nodes[4].core.stats.items())),
            tuple(nodes[4].results.items()),
        )

    assert run() == run()


def test_bootstrap_is_reported_after_the_refreshes_it_started() -> None:
    # A node that publishes on BootstrapFinished must find its table filled:
    # the refreshes of the far buckets (paper 2.3) are done by then.
    net, nodes = small_network(30)
    rng = Random(99)
    newcomer = net.add_node(rng.randbytes(20))
    qid = net.command(newcomer, bootstrap_via(nodes[0].addr))
    while qid not in newcomer.results:
        assert net.step(), "the bootstrap never finished"
    assert isinstance(newcomer.results[qid], BootstrapFinished)
    assert newcomer.core.stats["refresh.buckets"] == 0  # bucket refreshes are timer-driven; these are not
    assert newcomer.core.active_queries == 0
    assert newcomer.core.stats["tx.request.find_node"] > 34  # its own lookup and the refreshes
    assert len(newcomer.core.table) >= 25


def test_a_put_right_after_a_lookup_of_its_key_does_not_walk_again() -> None:
    net, nodes = small_network(30)
    node = nodes[4]
    found = net.run_until_done([(node, net.command(node, lambda c, now: c.start_lookup(KEY, now)))])[0]
    assert isinstance(found, LookupFinished)
    walks = node.core.stats["tx.request.find_node"]
    put = net.run_until_done([(node, net.command(node, put_of(KEY, b"v1")))])[0]
    assert isinstance(put, PutFinished) and put.ok
    assert node.core.stats["tx.request.find_node"] == walks
    assert {c.node_id for c in put.stored_at} == {c.node_id for c in found.closest}
    assert node.core.stats["lookups.reused"] == 1
    # Past the reuse window the put walks again.
    net.run_until(net.now + 61.0)
    put = net.run_until_done([(node, net.command(node, put_of(KEY, b"v2")))])[0]
    assert isinstance(put, PutFinished) and put.ok
    assert node.core.stats["tx.request.find_node"] > walks
    assert node.core.stats["lookups.reused"] == 1


def test_a_lookup_peer_timeout_shorter_than_the_rpcs_is_its_own_timer() -> None:
    # By default a lookup gives up on a silent peer when the RPC to it fails, so
    # get_timer need not scan lookups; with a shorter peer timeout it must.
    core = DhtCore(A_ID, Random(1), 0.0, config=DhtConfig(lookup_peer_timeout=0.7))
    core.table.update(Contact(B_ID, ("10.0.0.2", 4000)), 0.0)
    core.start_lookup(KEY, 0.0)
    assert len(core.datagrams_to_send()) == 1
    assert core.get_timer() == 0.5  # the first retransmit
    core.handle_timer(0.5)
    assert len(core.datagrams_to_send()) == 1
    assert core.get_timer() == pytest.approx(0.7)  # the lookup's own deadline, before the RPC's 1.0
