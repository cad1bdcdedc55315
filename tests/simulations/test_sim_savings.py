"""Simulator-only savings (`simulations.savings`) leave every result byte-identical.

Each saving is proven so the way the simulator's contract is stated: the same
scenario and seed, run with the saving and without it, write the same
``metrics.json``, byte for byte.  The scenarios are the ones where each saving
could show: a fault-free `baseline` (24 nodes, 240 s), `hostile` (attackers
that dial, handshake and idle, flood, poison and censor), and `crash-and-loss`
(30% of nodes crash and come back: their next incarnations read the contacts
the saving held in memory).  Each run also checks that the saving was in
effect, so a comparison cannot pass because nothing was saved.

The null cipher must fail where ChaCha20-Poly1305 fails (tampering, replay,
reordering, truncation, another key), at the cipher and at the channel; and
the daemon's cores never get it.
"""

from __future__ import annotations

import functools
import gc
import json
import threading
from collections.abc import Callable
from random import Random
from typing import Any

import pytest
import trio

from gossip.noise import TAGLEN, CipherState, NoiseError
from gossip.transport import ChannelConfig, ChannelFailed, FrameReceived, SecureChannel
from identity import Identity
from p2pblog.daemon import NodeService
from p2pblog.home import Home
from p2pblog.store import Store
from simulations.node import SimNode
from simulations.report import metrics_document
from simulations.savings import GC_THRESHOLDS, NullCipher, Savings, SnapshotStore
from simulations.scenario import Scenario
from simulations.simulation import Hooks, Result, Simulation
from tests.gossip.test_transport import ALICE, BOB, ChannelPair

#: (scenario, overrides): small enough for the fast suite, large enough to exercise each saving.
SCENARIOS: dict[str, dict[str, Any]] = {
    "baseline": {"nodes": 24, "duration": 240.0},
    "hostile": {"nodes": 16},
    "crash-and-loss": {"nodes": 20},
}
OFF = Savings.none()
ON = Savings()
ONLY = {
    "null_cipher": Savings(null_cipher=True, snapshots_in_memory=False, gc_tuned=False),
    "snapshots_in_memory": Savings(null_cipher=False, snapshots_in_memory=True, gc_tuned=False),
    "gc_tuned": Savings(null_cipher=False, snapshots_in_memory=False, gc_tuned=True),
}


class Watch:
    """What a run did: transport messages through each cipher class, real contact writes, GC state."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encrypted: dict[str, int] = {"CipherState": 0, "NullCipher": 0}
        self.contact_writes = 0
        self.contact_saves = 0
        self.gc_seen: set[tuple[tuple[int, ...], bool]] = set()
        self.events_seen = 0
        for cls in (CipherState, NullCipher):
            monkeypatch.setattr(cls, "encrypt_with_ad", self._counting(cls.encrypt_with_ad, cls.__name__))
        real_write, snapshot_save = Store.save_contacts, SnapshotStore.save_contacts

        def write(store: Store, rows: Any) -> bool:
            self.contact_writes += 1
            return real_write(store, rows)

        def save(store: SnapshotStore, rows: Any) -> bool:
            self.contact_saves += 1
            return snapshot_save(store, rows)

        monkeypatch.setattr(Store, "save_contacts", write)
        monkeypatch.setattr(SnapshotStore, "save_contacts", save)

    def _counting(self, method: Callable[..., bytes], name: str) -> Callable[..., bytes]:
        def counted(cipher: CipherState, ad: bytes, plaintext: bytes) -> bytes:
            # Only the exact class counts (NullCipher is a CipherState); handshake
            # messages go through CipherState too, transport ones through the factory's.
            if type(cipher).__name__ == name:
                self.encrypted[name] += 1
            return method(cipher, ad, plaintext)

        return counted

    def hooks(self) -> Hooks:
        def on_node(node: SimNode) -> None:
            inner = node.on_event

            def on_event(n: SimNode, event: Any) -> None:
                # gc.get_freeze_count() walks the frozen objects (millions, in a test
                # worker that ran other modules): look at every 500th event only.
                self.events_seen += 1
                if self.events_seen % 500 == 1:
                    self.gc_seen.add((gc.get_threshold(), gc.get_freeze_count() > 0))
                inner(n, event)

            node.on_event = on_event

        return Hooks(on_node=on_node)


def run(name: str, savings: Savings, watch: Watch | None = None) -> tuple[str, Result]:
    scenario = Scenario.load(name).with_overrides(**SCENARIOS[name])
    hooks = watch.hooks() if watch is not None else None
    result = Simulation(scenario, savings=savings, hooks=hooks).run()
    return render(result), result


def render(result: Result) -> str:
    """What `simulations.report.write_run` writes to metrics.json."""
    return json.dumps(metrics_document(result), sort_keys=True, indent=2) + "\n"


@functools.cache
def reference(name: str) -> str:
    """metrics.json of the run without any saving."""
    text, result = run(name, OFF)
    assert result.ok, result.violations
    return text


@pytest.mark.parametrize(
    "name", ["baseline", "crash-and-loss", pytest.param("hostile", marks=pytest.mark.slow)]
)
def test_all_savings_together_leave_metrics_json_byte_identical(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reference(name)
    watch = Watch(monkeypatch)
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    text, result = run(name, ON, watch)
    assert text == expected
    assert result.ok and result.events > 10_000
    # Every saving was in effect: transport messages went through the null cipher only...
    assert watch.encrypted["NullCipher"] > 1_000
    assert watch.encrypted["CipherState"] > 0  # the handshakes' messages stay real
    # ... the contact snapshots (after the join, then every 5 minutes) stayed in memory ...
    assert watch.contact_saves >= SCENARIOS[name].get("nodes", 24) // 2
    assert watch.contact_writes < watch.contact_saves / 3
    # ... and the collector ran with the raised thresholds, restored afterwards.
    assert watch.gc_seen == {(GC_THRESHOLDS, True)}
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == frozen


# --------------------------------------------------------------------------- the null cipher

KEY = bytes(range(32))


def pair(cls: type[CipherState]) -> tuple[CipherState, CipherState]:
    return cls(KEY), cls(KEY)


@pytest.mark.parametrize("size", [0, 1, 100, 4_000, 65_519])
def test_the_null_cipher_keeps_every_size_and_round_trips(size: int) -> None:
    plaintext = Random(size).randbytes(size)
    real, null = CipherState(KEY), NullCipher(KEY)
    for n in range(3):
        sealed = null.encrypt_with_ad(b"", plaintext)
        assert len(sealed) == len(real.encrypt_with_ad(b"", plaintext)) == size + TAGLEN
        assert null.n == real.n == n + 1
    receiver = NullCipher(KEY)
    receiver.n = 2
    assert receiver.decrypt_with_ad(b"", sealed) == plaintext


def _tampered(message: bytes) -> list[bytes]:
    """Every way an attacker without the key alters one transport message."""
    flips = [message[:i] + bytes([message[i] ^ 0x01]) + message[i + 1 :] for i in range(len(message))]
    return [*flips, message[:-1], message + b"\x00", b"", bytes(len(message))]


@pytest.mark.parametrize("cls", [CipherState, NullCipher])
def test_the_null_cipher_refuses_what_chacha20_poly1305_refuses(cls: type[CipherState]) -> None:
    sender, receiver = pair(cls)
    first = sender.encrypt_with_ad(b"", b"first frame")
    second = sender.encrypt_with_ad(b"", b"second frame")
    for bad in _tampered(first):
        with pytest.raises(NoiseError):
            receiver.decrypt_with_ad(b"", bad)
        assert receiver.n == 0  # a failure leaves the counter as it was
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", second)  # reordered (or the first one dropped)
    with pytest.raises(NoiseError):
        cls(bytes(32)).decrypt_with_ad(b"", first)  # another key
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"ad", first)  # other associated data
    assert receiver.decrypt_with_ad(b"", first) == b"first frame"
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", first)  # replayed
    assert receiver.decrypt_with_ad(b"", second) == b"second frame"


@pytest.mark.parametrize("cls", [CipherState, NullCipher])
def test_a_channel_with_the_null_cipher_fails_on_a_tampered_message_as_the_real_one(
    cls: type[CipherState],
) -> None:
    chan = ChannelPair.open(config=ChannelConfig(transport_cipher=cls))
    chan.client.send_frame(b"hello", 1.0)
    chan.pump(1.0)
    assert [e for e in chan.server_events if isinstance(e, FrameReceived)] == [FrameReceived(b"hello")]
    chan.client.send_frame(b"world", 2.0)
    wire = bytearray(chan.client.data_to_send())
    assert len(wire) == 2 + 4 + 5 + TAGLEN  # length prefix, frame header, frame, tag
    wire[-1] ^= 0x01
    chan.server.receive_data(bytes(wire), 2.0)
    chan.pump(2.0)
    (failed,) = [e for e in chan.server_events if isinstance(e, ChannelFailed)]
    assert failed == ChannelFailed(
        "transport message rejected (ciphertext does not authenticate): tampered, replayed or reordered"
    )


def test_null_and_real_ends_do_not_understand_each_other() -> None:
    """A stray real-cipher end in a run with the null cipher fails loudly, never silently."""
    null = ChannelConfig(transport_cipher=NullCipher)
    chan = ChannelPair(
        SecureChannel.initiator(ALICE, now=0.0, config=null, random_bytes=Random(1).randbytes),
        SecureChannel.responder(BOB, now=0.0, random_bytes=Random(2).randbytes),
    )
    chan.pump(0.0)
    assert [type(e).__name__ for e in chan.server_events] == ["HandshakeCompleted"]  # the handshake is real
    chan.client.send_frame(b"hello", 1.0)
    chan.pump(1.0)
    assert isinstance(chan.server_events[-1], ChannelFailed)


def test_the_daemon_runs_the_real_cipher(tmp_path: Any) -> None:
    home = Home(tmp_path / "n")
    identity = Identity(bytes([7]) * 32)
    home.create(identity)
    service = NodeService(home, identity, listen=("127.0.0.1", 0), bootstrap=[])
    seen: list[object] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            replicator = service.core.replicator
            seen.extend(
                [replicator.channel_config.transport_cipher, replicator.inbound_config.transport_cipher]
            )
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen == [CipherState, CipherState]
    assert ChannelConfig().transport_cipher is CipherState


# --------------------------------------------------------------------------- snapshots


def test_snapshots_held_in_memory_read_back_as_the_writes_would() -> None:
    rows = [[(bytes([i]) * 20, f"10.0.0.{i}", 7000 + i, 100.0 + i % 3) for i in range(n)] for n in (5, 9, 3)]
    scores = [(b"k" * 32, -1.5, 900.0, 10.0)]
    plain, held = Store(":memory:"), SnapshotStore()
    for snapshot in rows:
        for store in (plain, held):
            store.save_contacts(snapshot)
            store.save_peer_scores(scores)
    assert Store.load_contacts(held) == []  # held, not written yet
    assert held.load_contacts() == plain.load_contacts()
    assert held.load_peer_scores(10) == plain.load_peer_scores(10)
    held.save_contacts(rows[1])
    plain.save_contacts(rows[1])
    held.write_snapshots()  # what SimNode.crash does
    assert Store.load_contacts(held) == plain.load_contacts()


def test_a_snapshot_store_starts_as_the_database_its_migrations_make() -> None:
    """Its empty database is copied from a template: the same bytes as a store that ran its
    migrations, but for the schema cookie (header bytes 40..43), which a backup advances."""
    copied, migrated = SnapshotStore(), Store(":memory:")
    a, b = copied._conn.serialize(), migrated._conn.serialize()
    assert len(a) == len(b) and a[:40] + a[44:] == b[:40] + b[44:]
    assert copied.schema_version == migrated.schema_version > 0
    for pragma in ("foreign_keys", "journal_mode", "synchronous"):
        assert (
            copied._conn.execute(f"PRAGMA {pragma}").fetchone()
            == migrated._conn.execute(f"PRAGMA {pragma}").fetchone()
        )
    # A second store is a copy too, and independent of the first.
    copied.save_contacts([(b"k" * 20, "10.0.0.1", 7000, 1.0)])
    copied.write_snapshots()
    assert SnapshotStore().load_contacts() == []


def test_snapshot_stores_open_in_any_thread() -> None:
    """The template is made once per process; a simulation in another thread (a Dask worker
    with several threads) copies it too."""
    SnapshotStore()  # the template exists now, made in this thread
    opened: list[int] = []

    def open_one() -> None:
        opened.append(SnapshotStore().schema_version)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened == [Store(":memory:").schema_version] * 4
