"""The discrete-event engine: virtual time, a heap of actions, seeded randomness.

Theory of operation
-------------------
`Engine` keeps a heap of ``(time, seq, action)``.  `Engine.run` pops the
earliest action, sets `Engine.now` to its time and calls it; an action may
schedule more.  ``seq`` is a counter, so actions due at the same instant run
in the order they were scheduled: nothing depends on hash order, on the
wall clock or on a scheduler, and the same seed replays bit-identically.
(trio is deliberately not used here: it randomises its scheduling.)

Randomness is split by concern (`Engine.rng`): the network's losses, the
workload's posts and the faults each draw from their own
``random.Random`` seeded with ``"{seed}:{concern}"``, so adding a fault does
not change which packets are lost.

Timers are cancellable through `Timer` handles (cancelled entries stay in
the heap and are skipped when popped), which is how a node's single "next
deadline" timer is re-armed cheaply.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

Action = Callable[[], None]


@dataclass(slots=True)
class Timer:
    """A scheduled action; `cancel` it to skip it."""

    at: float
    action: Action | None

    def cancel(self) -> None:
        self.action = None

    @property
    def active(self) -> bool:
        return self.action is not None


@dataclass
class Engine:
    seed: int
    #: Virtual time of the action being run (seconds since the scenario began, plus `epoch`).
    now: float = 0.0
    events_run: int = 0
    _heap: list[tuple[float, int, Timer]] = field(default_factory=list)
    _seq: int = 0
    _rngs: dict[str, random.Random] = field(default_factory=dict)

    def rng(self, concern: str) -> random.Random:
        """The seeded random source of one concern (network, workload, faults, node:N, ...)."""
        r = self._rngs.get(concern)
        if r is None:
            r = self._rngs[concern] = random.Random(f"{self.seed}:{concern}")
        return r

    def at(self, when: float, action: Action) -> Timer:
        """Run action at virtual time when (never in the past)."""
        timer = Timer(max(when, self.now), action)
        self._seq += 1
        heapq.heappush(self._heap, (timer.at, self._seq, timer))
        return timer

    def after(self, delay: float, action: Action) -> Timer:
        return self.at(self.now + max(0.0, delay), action)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> float | None:
        while self._heap and not self._heap[0][2].active:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the next pending action, whenever it is due; False if none is left."""
        when = self.next_time()
        if when is None:
            return False
        _, _, timer = heapq.heappop(self._heap)
        action = timer.action
        assert action is not None  # next_time dropped the cancelled ones
        timer.action = None
        self.now = when
        self.events_run += 1
        action()
        return True

    def run(
        self, until: float, *, progress: Callable[[float], None] | None = None, every: int = 10_000
    ) -> None:
        """Run actions due up to and including virtual time until, then set now = until."""
        heap = self._heap
        while heap:
            when, _, timer = heap[0]
            if when > until:
                break
            heapq.heappop(heap)
            action = timer.action
            if action is None:
                continue
            timer.action = None
            self.now = when
            self.events_run += 1
            action()
            if progress is not None and self.events_run % every == 0:
                progress(self.now)
        self.now = max(self.now, until)
