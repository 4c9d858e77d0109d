"""The order of service: which waiter a connection given back goes to (wsgi_db_pool/_order.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from wsgi_db_pool import _order, _sync
from wsgi_db_pool.pool import Pool

from .conftest import Clock, Spawned, checkin_as_served, wait_until

pytestmark = pytest.mark.unit


class Queued:
    def __init__(self, since: float) -> None:
        self.since = since

    def __repr__(self) -> str:
        return f"<waiting since {self.since}>"


@pytest.mark.parametrize(
    ("policy", "ages", "served"),
    [
        (_order.Fifo(), [0.5, 0.2, 0.0], 0),
        (_order.Lifo(), [9.0, 0.2, 0.0], 2),
        (_order.BoundedLifo(0.1), [0.099, 0.05, 0.0], 2),
        (_order.BoundedLifo(0.1), [0.1, 0.05, 0.0], 0),
        (_order.BoundedLifo(0.1), [0.3, 0.2, 0.0], 0),
        (_order.AdaptiveLifo(2.0, floor=0.02), [0.019, 0.0], 1),
        (_order.AdaptiveLifo(2.0, floor=0.02), [0.02, 0.0], 0),
    ],
    ids=[
        "fifo-oldest",
        "lifo-newest-however-old",
        "bounded-newest-under-the-bound",
        "bounded-oldest-at-the-bound",
        "bounded-oldest-past-the-bound",
        "adaptive-newest-under-the-floor",
        "adaptive-oldest-at-the-floor",
    ],
)
def test_which_waiter_each_order_takes(
    policy: _order.Order, ages: list[float], served: int
) -> None:
    """Each order takes the waiter it promises off the queue (oldest at the left)."""
    now = 0.0  # exact differences: the bound itself is tested
    queued = [Queued(now - age) for age in ages]
    waiters = deque(queued)
    assert policy.take(waiters, now) is queued[served]
    assert list(waiters) == [w for i, w in enumerate(queued) if i != served]


def test_bounded_lifo_passes_over_no_waiter_older_than_the_bound() -> None:
    """Served one by one as time goes on, no waiter is passed over once past the bound."""
    bound = 0.1
    policy = _order.BoundedLifo(bound)
    waiters: deque[Queued] = deque()
    now = 0.0
    for step in range(2000):
        # Two arrivals for each one served: the queue grows, the newest keep coming.
        now += 0.01
        waiters.append(Queued(now))
        if step % 2:
            waiters.append(Queued(now))
        oldest = waiters[0]
        taken = policy.take(waiters, now)
        if now - oldest.since >= bound:
            assert taken is oldest, f"passed over {oldest} at {now} for {taken}"
        else:
            assert taken.since == now, "under the bound the newest is served"


def test_adaptive_bound_follows_the_mean_wait() -> None:
    """The adaptive bound is factor times the mean of the waits it ended."""
    policy = _order.AdaptiveLifo(3.0, floor=0.001)
    for _ in range(2000):
        policy.take(deque([Queued(0.0)]), 0.05)  # every wait 50 ms
    assert policy.bound() == pytest.approx(0.15, rel=0.01)


@pytest.fixture
def bounded_pool(
    make_pool: Callable[..., Pool], monkeypatch: pytest.MonkeyPatch
) -> Callable[[float], Pool]:
    def make(bound: float) -> Pool:
        monkeypatch.setattr(Pool, "_order_policy", lambda: _order.BoundedLifo(bound))
        return make_pool(pool_size=1, timeout=30.0)

    return make


def queue_three(pool: Pool, clock: Clock) -> list[Spawned]:
    waiters = []
    for n in range(3):
        waiters.append(Spawned(pool.checkout))
        wait_until(lambda n=n: pool.stats()["waiting"] == n + 1)
        clock.advance(0.01)
    return waiters


def served_next(pool: Pool, waiters: list[Spawned], entry: object) -> int:
    pool.checkin(entry)  # type: ignore[arg-type]
    wait_until(lambda: any(w.done.is_set() for w in waiters))
    return next(i for i, w in enumerate(waiters) if w.done.is_set())


def test_the_pool_serves_the_newest_waiter_under_the_bound(
    bounded_pool: Callable[[float], Pool], clock: Clock
) -> None:
    """With a bounded order, a connection given back goes to the newest of young waiters."""
    pool = bounded_pool(1.0)
    held = pool.checkout()
    waiters = queue_three(pool, clock)
    assert served_next(pool, waiters, held) == 2
    checkin_as_served(pool, waiters)


def test_the_pool_serves_the_oldest_waiter_past_the_bound(
    bounded_pool: Callable[[float], Pool], clock: Clock
) -> None:
    """Once the oldest has waited the bound, it is served before any newer waiter."""
    pool = bounded_pool(1.0)
    held = pool.checkout()
    waiters = queue_three(pool, clock)
    clock.advance(1.0)
    assert served_next(pool, waiters, held) == 0
    checkin_as_served(pool, waiters)


def test_the_pool_serves_the_oldest_first_as_shipped(make_pool: Callable[..., Pool]) -> None:
    """The shipped order is first come, first served (the switch is one line in pool.py)."""
    assert isinstance(make_pool()._order, _order.Fifo)


class Loop:
    """Stands for gevent's loop: the callbacks the pool asked for, run when the test says."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.callbacks: list[Callable[[], None]] = []
        monkeypatch.setattr(_sync, "call_soon", self.callbacks.append)
        # Barging needs a loop that turns; this one does, when turn() is called.
        monkeypatch.setattr(_order, "_sync", SimpleNamespace(gevent_patched=lambda: True))
        # ...in the waiters' own thread, as a greenlet's checkin under gevent would be.
        monkeypatch.setattr(_sync._LockWakeup, "local", lambda self: True)

    def turn(self) -> None:
        callbacks, self.callbacks[:] = list(self.callbacks), []
        for callback in callbacks:
            callback()


@pytest.fixture
def barging_pool(
    make_pool: Callable[..., Pool], monkeypatch: pytest.MonkeyPatch
) -> tuple[Pool, Loop]:
    loop = Loop(monkeypatch)
    monkeypatch.setattr(Pool, "_order_policy", lambda: _order.BoundedBarging(1.0))
    return make_pool(pool_size=1, timeout=30.0), loop


def test_barging_under_the_bound_the_giver_takes_it_back_before_the_loop_turns(
    barging_pool: tuple[Pool, Loop],
) -> None:
    """Under the bound a connection given back stays idle until the loop turns: the
    greenlet that gave it back checks it out again without waiting; then the waiter."""
    pool, loop = barging_pool
    held = pool.checkout()
    waiter = Spawned(pool.checkout)
    wait_until(lambda: pool.stats()["waiting"] == 1)
    pool.checkin(held)
    assert (pool.stats()["idle"], pool.stats()["waiting"]) == (1, 1)
    again = pool.checkout(timeout=0.0)  # no wait: it was idle
    assert again is held
    pool.checkin(again)
    assert not waiter.done.is_set()
    loop.turn()  # nobody barged this time: the oldest waiter gets it
    assert waiter.result() is held
    pool.checkin(held)


def test_barging_past_the_bound_the_oldest_waiter_gets_it_at_once(
    barging_pool: tuple[Pool, Loop], clock: Clock
) -> None:
    """Once the oldest waiter has waited the bound, a connection given back goes to it."""
    pool, loop = barging_pool
    held = pool.checkout()
    waiter = Spawned(pool.checkout)
    wait_until(lambda: pool.stats()["waiting"] == 1)
    clock.advance(1.0)
    pool.checkin(held)
    assert waiter.result() is held
    assert loop.callbacks == [], "handed over, not kept for a barger"
    pool.checkin(held)


def test_adaptive_barging_bound_follows_the_mean_wait() -> None:
    """The bound is factor times the mean of contended checkouts' waits, bargers as 0."""
    policy = _order.BoundedBarging(0.001, factor=2.0)
    for _ in range(3000):
        policy.take(deque([Queued(0.0)]), 0.1)  # waited 100 ms
        policy.barged()  # and one barged
    assert policy.limit() == pytest.approx(0.1, rel=0.05)
