"""Which waiter a freed connection goes to: the pool's order of service.

At saturation every order has the same mean wait (Little's law: waiting requests
divided by throughput); the order decides the spread, and how warm the served greenlet
is. The newest waiter's frames were touched a moment ago, the oldest's a mean wait ago,
cold in the CPU caches. So serving the newest is faster, and unbounded it starves the
oldest (pure LIFO: waits up to the pool's timeout).

``BoundedLifo`` takes the middle: the newest first while the oldest has waited less
than a bound, the oldest first once one has. No waiter is passed over past the bound,
so every wait ends within about the bound plus the time to serve those ahead of it.

Each pool makes its own policy (``Pool._order_policy``, a factory) so that one that
learns (the mean wait) learns per pool. Called under the pool's lock: no I/O, no switch.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, TypeVar

from . import _sync


class _Queued(Protocol):
    #: When the waiter started waiting (the pool's monotonic clock).
    since: float


W = TypeVar("W", bound=_Queued)


class Order(Protocol):
    """Which waiter is served, and whether a connection given back may wait for a barger."""

    def take(self, waiters: deque[W], now: float) -> W:
        """Take the waiter to serve off a non-empty queue (oldest at the left)."""

    def barge(self, waiters: deque[W], now: float) -> bool:
        """Whether a connection given back while ``waiters`` wait stays idle until the
        event loop turns, for the greenlet that gave it back (or a newcomer) to take."""

    def barged(self) -> None:
        """A checkout took an idle connection while others waited (a wait of 0)."""


class _NoBarging:
    __slots__ = ()

    def barge(self, waiters: deque[W], now: float) -> bool:
        return False

    def barged(self) -> None:
        pass


class Fifo(_NoBarging):
    """First come, first served: the oldest waiter always, no barging."""

    __slots__ = ()

    def take(self, waiters: deque[W], now: float) -> W:
        return waiters.popleft()


class Lifo(_NoBarging):
    """The newest waiter always: fast and unbounded (a bench experiment, never shipped)."""

    __slots__ = ()

    def take(self, waiters: deque[W], now: float) -> W:
        return waiters.pop()


class BoundedLifo(_NoBarging):
    """The newest waiter while the oldest has waited under ``bound`` seconds, else the oldest."""

    __slots__ = ("bound",)

    def __init__(self, bound: float = 0.1) -> None:
        self.bound = bound

    def take(self, waiters: deque[W], now: float) -> W:
        if now - waiters[0].since >= self.bound:
            return waiters.popleft()
        return waiters.pop()


class AdaptiveLifo(_NoBarging):
    """``BoundedLifo`` with the bound at ``factor`` times the mean wait, never under ``floor``.

    The mean is a moving average of the waits it ends (queued checkouts only), so the
    bound follows the load: by Little's law the mean wait grows with the clients
    while the order stays out of it.
    """

    __slots__ = ("factor", "floor", "mean")

    # The weight of one wait in the moving average: about the last 64 handoffs.
    ALPHA = 1 / 64

    def __init__(self, factor: float = 2.0, floor: float = 0.02) -> None:
        self.factor = factor
        self.floor = floor
        self.mean = 0.0

    def bound(self) -> float:
        return max(self.floor, self.factor * self.mean)

    def take(self, waiters: deque[W], now: float) -> W:
        bound = max(self.floor, self.factor * self.mean)
        waiter = waiters.popleft() if now - waiters[0].since >= bound else waiters.pop()
        self.mean += (now - waiter.since - self.mean) * self.ALPHA
        return waiter


class BoundedBarging:
    """Waiters in arrival order; but while the oldest has waited under the bound, a
    connection given back stays idle until the event loop turns (gevent only).

    A greenlet that checks out before then takes it without waiting or a switch: the
    one that gave it back, if its client's next request is already there, or one
    whose request came in the same turn of the loop; whatever nobody took goes to the
    oldest waiters then (``Pool._serve_idle``). Past the bound every connection goes
    straight to the oldest, so no waiter is passed over once it has waited the bound.

    The bound: ``bound`` seconds; or, with ``factor``, that many times the mean wait
    of the checkouts made while others waited (bargers count 0), never under
    ``bound``. By Little's law that mean is fixed by the load, so waiters wait about
    the bound, and a share ``1 - 1/factor`` of the checkouts barges.
    """

    __slots__ = ("bound", "factor", "mean")

    # The weight of one checkout in the moving average: about the last 64.
    ALPHA = 1 / 64

    def __init__(self, bound: float = 0.1, factor: float | None = None) -> None:
        self.bound = bound
        self.factor = factor
        self.mean = 0.0

    def limit(self) -> float:
        """The current bound, in seconds."""
        if self.factor is None:
            return self.bound
        return max(self.bound, self.factor * self.mean)

    def take(self, waiters: deque[W], now: float) -> W:
        waiter = waiters.popleft()
        if self.factor is not None:
            self.mean += (now - waiter.since - self.mean) * self.ALPHA
        return waiter

    def barge(self, waiters: deque[W], now: float) -> bool:
        # Only gevent's loop turns on its own: under real threads nothing would hand
        # the idle connection on (looked up each time: gevent may patch after the pool).
        return now - waiters[0].since < self.limit() and _sync.gevent_patched()

    def barged(self) -> None:
        if self.factor is not None:
            self.mean -= self.mean * self.ALPHA
