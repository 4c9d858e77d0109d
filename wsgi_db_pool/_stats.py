"""A pool's running totals and its checkout wait histogram, as ``stats()`` reports them."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any

__all__ = ["WAIT_BUCKETS", "PoolStats"]

# Upper bounds, in seconds, of the checkout wait histogram in stats().
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PoolStats:
    """Counters that only grow; the pool updates them under its lock."""

    __slots__ = (
        "checkouts",
        "connect_errors",
        "connects",
        "discards",
        "last_connect_error",
        "recycles",
        "rejects",
        "reserved",
        "timeouts",
        "wait_buckets",
        "wait_sum",
    )

    def __init__(self) -> None:
        self.connects = 0
        self.connect_errors = 0
        self.checkouts = 0
        self.recycles = 0
        self.timeouts = 0
        # Checkouts beyond the cap, by requests holding other aliases.
        self.reserved = 0
        self.discards: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.last_connect_error: str | None = None
        # Queue time of checkouts that got a connection or a slot: one count per
        # bucket of WAIT_BUCKETS, the last for longer ones. The pool counts a
        # checkout served at once straight into wait_buckets[0] (no clock read).
        self.wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)
        self.wait_sum = 0.0

    def waited(self, seconds: float) -> None:
        """A checkout queued ``seconds`` before it got a connection or a slot."""
        self.wait_sum += seconds
        self.wait_buckets[bisect_left(WAIT_BUCKETS, seconds)] += 1

    def totals(self) -> dict[str, Any]:
        """The totals under their ``stats()`` keys (reasons as plain strings)."""
        return {
            "connects": self.connects,
            "connect_errors": self.connect_errors,
            "checkouts": self.checkouts,
            "recycles": self.recycles,
            "discards": {str(reason): n for reason, n in self.discards.items()},
            "timeouts": self.timeouts,
            "rejects": {str(reason): n for reason, n in self.rejects.items()},
            "wait_seconds": self.wait_histogram(),
        }

    def wait_histogram(self) -> dict[str, Any]:
        """Cumulative buckets as Prometheus writes them, the sum and the count."""
        buckets = _cumulative(self.wait_buckets)
        return {"buckets": buckets, "sum": round(self.wait_sum, 6), "count": buckets[-1][1]}


def _cumulative(counts: list[int]) -> list[tuple[float | str, int]]:
    # The last bound is "+Inf", as Prometheus writes it: JSON has no infinity.
    total = 0
    result: list[tuple[float | str, int]] = []
    bounds: tuple[float | str, ...] = (*WAIT_BUCKETS, "+Inf")
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        result.append((bound, total))
    return result
