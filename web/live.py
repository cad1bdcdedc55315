"""Live updates for open pages: server-sent events from the node's events.

`LiveHub.publish` numbers each update and keeps the last `RING` of them; each
open page is a subscriber with a queue of at most `QUEUE` updates.  A page
whose queue is full (a stalled tab) is dropped (counted): its browser
reconnects by itself and sends ``Last-Event-ID``; the hub replays what it
missed from the ring, or tells it to reload when the ring has moved past.
At most `MAX_SUBSCRIBERS` pages listen at once (the oldest is dropped for a
new one).  A comment line every `KEEPALIVE` seconds finds dead connections.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final

import trio

RING: Final = 256
QUEUE: Final = 64
MAX_SUBSCRIBERS: Final = 16
KEEPALIVE: Final = 15.0


def sse(number: int, name: str, data: dict[str, Any]) -> bytes:
    return f"id: {number}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class LiveHub:
    def __init__(self) -> None:
        self.number = 0
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=RING)
        self.subscribers: dict[int, trio.MemorySendChannel[bytes]] = {}
        self._next_subscriber = 0
        self.stats = {"published": 0, "dropped_slow": 0, "dropped_over_cap": 0}

    def publish(self, name: str, data: dict[str, Any]) -> None:
        self.number += 1
        message = sse(self.number, name, data)
        self.ring.append((self.number, message))
        self.stats["published"] += 1
        for key, channel in list(self.subscribers.items()):
            try:
                channel.send_nowait(message)
            except trio.WouldBlock:
                self.stats["dropped_slow"] += 1
                self._drop(key)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(key)

    def _drop(self, key: int) -> None:
        channel = self.subscribers.pop(key, None)
        if channel is not None:
            channel.close()

    def _missed(self, last_id: int | None) -> list[bytes]:
        if last_id is None or last_id == self.number:
            return []
        if last_id > self.number:  # numbered by an earlier run of the node: start afresh
            return [sse(self.number, "reload", {})]
        if last_id < 0 or not self.ring or self.ring[0][0] > last_id + 1:
            return [sse(self.number, "reload", {})]
        return [message for number, message in self.ring if number > last_id]

    async def stream(self, last_id: int | None) -> AsyncIterator[bytes]:
        """The bytes of one page's event stream, until the page goes away."""
        while len(self.subscribers) >= MAX_SUBSCRIBERS:
            self.stats["dropped_over_cap"] += 1
            self._drop(next(iter(self.subscribers)))
        send, receive = trio.open_memory_channel[bytes](QUEUE)
        key = self._next_subscriber
        self._next_subscriber += 1
        self.subscribers[key] = send
        try:
            yield b"retry: 2000\n\n"
            for message in self._missed(last_id):
                yield message
            while True:
                with trio.move_on_after(KEEPALIVE) as scope:
                    try:
                        message = await receive.receive()
                    except trio.EndOfChannel:
                        return
                if scope.cancelled_caught:
                    yield b": keepalive\n\n"
                else:
                    yield message
        finally:
            self._drop(key)
            receive.close()
