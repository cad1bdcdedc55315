"""`RpcTracker`: message ids, the retransmit schedule, timeouts, stale timer entries."""

from __future__ import annotations

from random import Random

from dht import wire
from dht.rpc import Purpose, RpcTracker

LOCAL = bytes(20)
PEER = bytes([7]) * 20
ADDR = ("10.0.0.1", 4000)


def tracker(seed: int = 1, offsets: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)) -> RpcTracker:
    return RpcTracker(Random(seed), offsets, 5.0)


def track_ping(rpcs: RpcTracker, now: float, query_id: int | None = None) -> bytes:
    request = wire.Ping(rpcs.new_msg_id(), LOCAL)
    rpcs.track(request, ADDR, PEER, Purpose.CHECK, query_id, now)
    return request.msg_id


def test_a_tracked_request_is_encoded_and_found_by_its_message_id() -> None:
    rpcs = tracker()
    request = wire.FindNode(rpcs.new_msg_id(), LOCAL, PEER)
    rpc = rpcs.track(request, ADDR, PEER, Purpose.LOOKUP_STEP, 3, 10.0)
    assert rpc.datagram == wire.encode_request(request)
    assert (rpc.name, rpc.addr, rpc.node_id, rpc.query_id) == (wire.FIND_NODE, ADDR, PEER, 3)
    assert rpc.purpose is Purpose.LOOKUP_STEP and not rpc.timed_out
    assert len(rpcs) == 1 and rpcs.get(request.msg_id) is rpc
    assert rpcs.next_deadline() == 10.5
    rpcs.close(rpc)
    assert len(rpcs) == 0 and rpcs.get(request.msg_id) is None
    assert rpcs.next_deadline() is None  # the stale heap entry is dropped
    assert rpcs.pop_due(100.0) is None


def test_message_ids_come_from_the_injected_rng_and_never_clash() -> None:
    expected = Random(5)
    rpcs = tracker(seed=5)
    first = rpcs.new_msg_id()
    assert first == expected.randbytes(wire.MSG_ID_BYTES)
    # Track a request under the id the rng draws next: the tracker must skip it.
    clash = Random(5)
    clash.randbytes(wire.MSG_ID_BYTES)
    taken = clash.randbytes(wire.MSG_ID_BYTES)
    rpcs.track(wire.Ping(taken, LOCAL), ADDR, None, Purpose.SEED_PING, 1, 0.0)
    assert rpcs.new_msg_id() == clash.randbytes(wire.MSG_ID_BYTES) != taken


def test_retransmits_follow_the_schedule_then_time_out() -> None:
    rpcs = tracker()
    msg_id = track_ping(rpcs, 100.0)
    seen: list[tuple[float, int, bool]] = []
    while (deadline := rpcs.next_deadline()) is not None:
        assert rpcs.pop_due(deadline - 0.01) is None
        rpc = rpcs.pop_due(deadline)
        assert rpc is not None and rpc.msg_id == msg_id
        assert rpcs.pop_due(deadline) is None
        seen.append((deadline, rpc.step, rpc.timed_out))
    assert seen == [
        (100.5, 1, False),
        (101.0, 2, False),
        (102.0, 3, False),
        (103.0, 4, False),
        (105.0, 4, True),
    ]
    assert len(rpcs) == 0


def test_a_late_timer_catches_up_in_one_go() -> None:
    rpcs = tracker()
    track_ping(rpcs, 0.0)
    outcomes = []
    while (rpc := rpcs.pop_due(60.0)) is not None:
        outcomes.append(rpc.timed_out)
    assert outcomes == [False, False, False, False, True]


def test_without_retransmits_an_rpc_times_out_after_the_timeout() -> None:
    rpcs = tracker(offsets=())
    track_ping(rpcs, 1.0)
    assert rpcs.next_deadline() == 6.0
    rpc = rpcs.pop_due(6.0)
    assert rpc is not None and rpc.timed_out and rpc.step == 0


def test_equal_deadlines_come_due_in_the_order_they_were_set() -> None:
    rpcs = tracker()
    first = track_ping(rpcs, 0.0)
    second = track_ping(rpcs, 0.0)
    a, b = rpcs.pop_due(0.5), rpcs.pop_due(0.5)
    assert a is not None and b is not None
    assert [a.msg_id, b.msg_id] == [first, second]


def test_an_answered_rpc_never_comes_due() -> None:
    rpcs = tracker()
    answered = track_ping(rpcs, 0.0)
    pending = track_ping(rpcs, 0.0)
    rpc = rpcs.get(answered)
    assert rpc is not None
    rpcs.close(rpc)
    due = rpcs.pop_due(0.5)
    assert due is not None and due.msg_id == pending
    assert rpcs.pop_due(0.5) is None
