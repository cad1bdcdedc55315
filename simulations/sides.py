"""The optional sides of a driven core, checked at run time by `simulations.endpoint`.

A core may have a UDP side, a TCP side and a proof-of-work side; the
endpoint finds out which with ``isinstance`` against these runtime-checkable
protocols.  They live in their own module, not in `simulations.endpoint`,
because that module is compiled in the optional mypyc build
(`simulations.compiled`) and a protocol class mypyc compiles is not one
``typing.runtime_checkable`` accepts; this module stays interpreted.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from dht.ids import Address


@runtime_checkable
class DatagramCore(Protocol):
    """A core with a UDP side (`dht.DhtCore`'s contract)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Address]]: ...


@runtime_checkable
class StreamCore(Protocol):
    """A core with a TCP side (the gossip half of `p2pblog.runtime.StreamCore`)."""

    def dials_to_make(self) -> list[tuple[int, str, int]]: ...
    def data_to_send(self) -> list[tuple[int, bytes]]: ...
    def connections_to_close(self) -> list[int]: ...
    def connection_accepted(self, addr: Address, now: float) -> int: ...
    def connection_opened(self, conn_id: int, now: float) -> None: ...
    def connection_failed(self, conn_id: int, now: float) -> None: ...
    def data_received(self, conn_id: int, data: bytes, now: float) -> None: ...
    def connection_lost(self, conn_id: int, now: float) -> None: ...


@runtime_checkable
class StampingCore(Protocol):
    """A core that asks its driver for proof-of-work stamps (`NodeCore`'s mention notices)."""

    def stamps_to_make(self) -> list[tuple[bytes, bytes, int]]: ...
    def stamp_made(self, entry_id: bytes, recipient: bytes, nonce: bytes, now: float) -> None: ...
