"""Checkout policy: the cap, first come first served, overflow, timeouts, shedding, close."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from wsgi_db_pool import PoolClosed, PoolOverloaded, PoolTimeout
from wsgi_db_pool.pool import Pool

from .conftest import Clock, Spawned, connector_of, counts, wait_until

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("pool_size", "max_overflow"), [(1, 0), (3, 2), (2, 6)])
def test_never_more_than_the_cap_open_at_any_concurrency(
    make_pool: Callable[..., Pool], pool_size: int, max_overflow: int
) -> None:
    """40 threads checking out at once, connects that switch: the server sees at most the cap."""
    pool = make_pool(pool_size=pool_size, max_overflow=max_overflow, timeout=10.0)
    connector = connector_of(pool)
    connector.switch = True

    def work() -> int:
        for _ in range(10):
            entry = pool.checkout()
            entry.conn.in_use = getattr(entry.conn, "in_use", 0) + 1
            assert entry.conn.in_use == 1, "one connection handed to two holders"
            time.sleep(0)  # hold it across a switch
            entry.conn.in_use -= 1
            pool.checkin(entry)
        return 10

    crowd = [Spawned(work) for _ in range(40)]
    assert sum(s.result(timeout=10.0) for s in crowd) == 400
    cap = pool_size + max_overflow
    assert connector.peak <= cap
    stats = pool.stats()
    assert stats["checkouts"] == 400
    assert (stats["in_use"], stats["waiting"], stats["connecting"]) == (0, 0, 0)
    assert stats["open"] == stats["idle"] == connector.connects <= cap


def test_waiters_are_served_first_come_first_served(make_pool: Callable[..., Pool]) -> None:
    """Connections given back one by one go to the waiters in the order they queued."""
    pool = make_pool(pool_size=1)
    held = pool.checkout()
    waiters = []
    for n in range(5):
        waiters.append(Spawned(pool.checkout))
        wait_until(lambda n=n: pool.stats()["waiting"] == n + 1)
    served: list[int] = []
    entry = held
    for _ in range(5):
        pool.checkin(entry)
        wait_until(lambda: sum(w.done.is_set() for w in waiters) == len(served) + 1)
        got = next(i for i, w in enumerate(waiters) if w.done.is_set() and i not in served)
        served.append(got)
        entry = waiters[got].result()
    pool.checkin(entry)
    assert served == [0, 1, 2, 3, 4]
    assert connector_of(pool).connects == 1, "one connection, passed along"


def test_overflow_is_opened_on_demand_and_kept_until_overflow_max_idle(
    make_pool: Callable[..., Pool], clock: Clock
) -> None:
    """Past pool_size on demand; kept idle through bursts; reap() closes it once idle long."""
    pool = make_pool(pool_size=2, max_overflow=2, overflow_max_idle=30.0, max_age=None)
    connector = connector_of(pool)
    for _ in range(3):  # three bursts of four
        held = [pool.checkout() for _ in range(4)]
        with pytest.raises(PoolTimeout):
            pool.checkout(timeout=0.01)
        for entry in held:
            pool.checkin(entry)
    assert connector.connects == 4
    clock.advance(29.0)
    pool.reap()
    assert counts(pool) == (4, 4, 0), "not idle long enough yet"
    clock.advance(1.0)
    pool.reap()
    assert counts(pool) == (2, 2, 0)
    assert pool.stats()["discards"] == {"overflow": 2}
    clock.advance(3600.0)
    pool.reap()
    assert counts(pool) == (2, 2, 0), "pool_size stays"


def test_a_timeout_names_the_limits(make_pool: Callable[..., Pool]) -> None:
    """PoolTimeout says the alias, the wait, the timeout, the cap and its parts, the waiters."""
    pool = make_pool(pool_size=2, max_overflow=1)
    held = [pool.checkout() for _ in range(3)]
    with pytest.raises(PoolTimeout) as info:
        pool.checkout(timeout=0.02)
    message = str(info.value)
    for part in ("'default'", "timeout=5.0 s", "3 of 3 in use", "pool_size=2 + max_overflow=1"):
        assert part in message
    assert info.value.waited >= 0.02
    assert pool.stats()["timeouts"] == 1
    for entry in held:
        pool.checkin(entry)


def test_max_waiting_refuses_at_once(make_pool: Callable[..., Pool]) -> None:
    """With max_waiting already queued, the next checkout is refused without waiting."""
    pool = make_pool(pool_size=1, max_waiting=1)
    held = pool.checkout()
    waiter = Spawned(pool.checkout)
    wait_until(lambda: pool.stats()["waiting"] == 1)
    with pytest.raises(PoolOverloaded, match="max_waiting=1"):
        pool.checkout(timeout=5.0)
    assert pool.stats()["rejects"] == {"max_waiting": 1}
    pool.checkin(held)
    pool.checkin(waiter.result())


def test_a_request_holding_other_aliases_goes_past_the_cap(
    make_pool: Callable[..., Pool],
) -> None:
    """holding=1 at a full pool opens one more (the reserve), discarded when given back."""
    pool = make_pool(pool_size=1)
    held = pool.checkout()
    extra = pool.checkout(holding=1)
    assert counts(pool) == (2, 0, 2)
    with pytest.raises(PoolTimeout):
        pool.checkout(timeout=0.01, holding=1)  # cap + holding reached
    pool.checkin(extra)
    pool.checkin(held)
    stats = pool.stats()
    assert (stats["open"], stats["reserved"], stats["discards"]) == (1, 1, {"reserve": 1})


def test_close_closes_idle_now_in_use_at_checkin_and_refuses_later(
    make_pool: Callable[..., Pool],
) -> None:
    """close(): idle closed at once, waiters told, held ones closed when given back."""
    pool = make_pool(pool_size=3)
    entries = [pool.checkout() for _ in range(3)]
    pool.checkin(entries[0])
    waiter_pool = make_pool(pool_size=1)
    waiter_held = waiter_pool.checkout()
    waiter = Spawned(waiter_pool.checkout)
    wait_until(lambda: waiter_pool.stats()["waiting"] == 1)
    pool.close()
    waiter_pool.close()
    assert [c.closed for c in (e.conn for e in entries)] == [True, False, False]
    with pytest.raises(PoolClosed):
        pool.checkout()
    with pytest.raises(PoolClosed):
        waiter.result()
    for entry in entries[1:]:
        pool.checkin(entry)
    waiter_pool.checkin(waiter_held)
    assert all(e.conn.closed for e in entries)
    assert [e.conn.resets for e in entries] == [1, 0, 0], "no reset for a closed pool"
    assert counts(pool) == (0, 0, 0)
    assert pool.stats()["discards"] == {"shutdown": 3}
    pool.close()  # twice is harmless
