"""Delivery within a deadline: the share of followers that got a post within D seconds.

Theory of operation
-------------------
Eventual delivery (``metrics.delivery.ratio``) hides an outage: a post made
during a partition still arrives once it heals, so the ratio per time bucket
stays at 1.0.  What a user notices is whether a post reached them *in time*.
`WithinDeadlines` is fed each post once, by `Simulation._metrics`: the time
it was posted and, for each honest follower, its delivery latency (None when
it never arrived).  For each deadline D in `DEADLINES` it counts, per time
bucket of posting and in all, the (post, follower) pairs expected and those
delivered within D seconds.

A post whose deadline falls after the end of the run cannot be judged (it
might still arrive in time): it is left out of that deadline's counts, so a
run's last D seconds do not look like an outage.  Counts are integers and
the shares are rounded like every other metric, so the output is plain,
deterministic data (``metrics.delivery.within`` and
``metrics.delivery.within_30s`` / ``within_120s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

#: Deadlines in seconds: 30 s (a conversation feels live) and 120 s (the issue's two goals).
DEADLINES: Final = (30, 120)


class WithinDeadlines:
    """Counts, per deadline and per bucket of posting time, deliveries within the deadline."""

    def __init__(self, *, bucket: float, duration: float, deadlines: Sequence[int] = DEADLINES) -> None:
        self.bucket = bucket
        self.duration = duration
        self.deadlines = tuple(deadlines)
        # deadline -> bucket number -> [expected, delivered within the deadline]
        self._buckets: dict[int, dict[int, list[int]]] = {d: {} for d in self.deadlines}

    def add(self, posted: float, latencies: Sequence[float | None]) -> None:
        """One post: its time and each honest follower's delivery latency (None: never delivered)."""
        for deadline in self.deadlines:
            if posted + deadline > self.duration:
                continue  # cannot be judged: the run ended before the deadline
            counts = self._buckets[deadline].setdefault(int(posted // self.bucket), [0, 0])
            counts[0] += len(latencies)
            counts[1] += sum(1 for lat in latencies if lat is not None and lat <= deadline)

    def metrics(self) -> dict[str, Any]:
        """``within`` (per deadline: totals and ``over_time`` rows) and one ``within_<D>s`` share each."""
        out: dict[str, Any] = {}
        within: dict[str, Any] = {}
        for deadline in self.deadlines:
            rows = sorted(self._buckets[deadline].items())
            expected = sum(c[0] for _, c in rows)
            delivered = sum(c[1] for _, c in rows)
            within[str(deadline)] = {
                "expected": expected,
                "delivered": delivered,
                "over_time": [[round(b * self.bucket, 6), c[0], c[1]] for b, c in rows],
            }
            out[f"within_{deadline}s"] = round(delivered / expected, 6) if expected else 1.0
        out["within"] = within
        return out


__all__ = ["DEADLINES", "WithinDeadlines"]
