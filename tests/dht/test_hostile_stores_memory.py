"""Memory per stored item, measured with tracemalloc, and the stores' worst case at their bounds.

The worst case a stranger can cause: every value at the 1 KiB limit, every
value under its own key and from its own source, and the timer heap at its
largest (every item refreshed once, so stale entries stand beside live ones
until the heap is rebuilt).  Run with ``-s`` to see the numbers
(docs/design.md quotes them).
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from typing import Final

from dht.providers import MAX_PROVIDER_VALUES, ProviderStore
from dht.records import MAX_RECORDS, RecordStore
from identity.limits import MAX_DHT_VALUE_BYTES

#: Items measured per store (enough for per-item costs to settle).
ITEMS: Final = 2000
#: What both stores may take together at their bounds, worst case ("well under" ~40 MB).
BUDGET_BYTES: Final = 36 * 2**20


def fresh(data: bytes) -> bytes:
    """A new bytes object, as one decoded from a datagram would be."""
    return bytes(bytearray(data))


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(4, "big"), digest_size=20).digest()


def value_of(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


def source_of(i: int) -> str:
    return f"198.51.{i // 256}.{i % 256}"


def signer_of(key: bytes, value: bytes, now: float) -> bytes | None:
    """A provider validator that names a fresh 32-byte provider id, as a signer would be."""
    del key, now
    return hashlib.blake2b(value, digest_size=32).digest()


def per_item(fill: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = fill()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del kept
    return used / ITEMS


def record_bytes(size: int) -> float:
    keys = [key_of(i) for i in range(ITEMS)]
    values = [value_of(i, size) for i in range(ITEMS)]

    def fill() -> RecordStore:
        store = RecordStore(max_records=ITEMS, max_per_source=ITEMS)
        for now in (0.0, 1.0):  # the second round refreshes: stale heap entries
            for i in range(ITEMS):
                store.put(fresh(keys[i]), fresh(values[i]), now, source=source_of(i))
        assert len(store) == ITEMS
        return store

    return per_item(fill)


def provider_bytes(size: int) -> float:
    keys = [key_of(i) for i in range(ITEMS)]
    values = [value_of(i, size) for i in range(ITEMS)]

    def fill() -> ProviderStore:
        store = ProviderStore(validator=signer_of, max_values=ITEMS, max_per_source=ITEMS)
        for now in (0.0, 1.0):
            for i in range(ITEMS):
                store.add(fresh(keys[i]), fresh(values[i]), now, source=source_of(i))
        assert len(store) == ITEMS
        return store

    return per_item(fill)


def test_worst_case_memory_of_both_stores_is_well_under_40_mb() -> None:
    records = {size: record_bytes(size) for size in (200, MAX_DHT_VALUE_BYTES)}
    providers = {size: provider_bytes(size) for size in (200, MAX_DHT_VALUE_BYTES)}
    worst = MAX_RECORDS * records[MAX_DHT_VALUE_BYTES] + MAX_PROVIDER_VALUES * providers[MAX_DHT_VALUE_BYTES]
    print(
        f"\nbytes per record: {records}\nbytes per provider value: {providers}\n"
        f"worst case: {MAX_RECORDS} records + {MAX_PROVIDER_VALUES} provider values = {worst / 2**20:.1f} MiB"
    )
    # An item costs its value plus a few hundred bytes of bookkeeping.
    for costs in (records, providers):
        assert costs[MAX_DHT_VALUE_BYTES] - costs[200] < 1.2 * (MAX_DHT_VALUE_BYTES - 200)
        assert costs[200] < 2000
    assert worst < BUDGET_BYTES
