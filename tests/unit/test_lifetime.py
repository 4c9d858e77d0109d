"""How long connections live: max_age and its jitter, max_idle down to min_size, fill()."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsgi_db_pool.pool import Pool

from .conftest import Chance, Clock, connector_of, counts

pytestmark = pytest.mark.unit


def test_max_age_is_jittered_up_to_ten_percent_early(
    make_pool: Callable[..., Pool], chance: Chance
) -> None:
    """Connections opened together get ages between 0.9 and 1.0 of max_age, by random()."""
    pool = make_pool(pool_size=3, max_age=100.0)
    chance.queued.extend([0.0, 1.0, 0.5])
    held = [pool.checkout() for _ in range(3)]
    ages = [round(entry.expires_at - entry.created_at, 9) for entry in held]
    assert ages == [100.0, 90.0, 95.0]
    for entry in held:
        pool.checkin(entry)


def test_connections_opened_together_do_not_expire_together(
    make_pool: Callable[..., Pool], clock: Clock, chance: Chance
) -> None:
    """reap() closes each at its own expiry: one at 90 s, one at 95 s, the last at 100 s."""
    pool = make_pool(pool_size=3, max_age=100.0)
    chance.queued.extend([1.0, 0.5, 0.0])
    for entry in [pool.checkout() for _ in range(3)]:
        pool.checkin(entry)
    seen = []
    for step in (89.0, 1.0, 5.0, 5.0):
        clock.advance(step)
        pool.reap()
        seen.append(pool.stats()["open"])
    assert seen == [3, 2, 1, 0]
    assert pool.stats()["discards"] == {"max_age": 3}


@pytest.mark.parametrize("where", ["checkout", "checkin"])
def test_an_expired_connection_is_not_handed_out_again(
    make_pool: Callable[..., Pool], clock: Clock, where: str
) -> None:
    """Past max_age: closed when given back, or when found idle at checkout (and replaced)."""
    pool = make_pool(pool_size=1, max_age=100.0)
    entry = pool.checkout()
    if where == "checkout":
        pool.checkin(entry)
        clock.advance(100.0)
        fresh = pool.checkout()
    else:
        clock.advance(100.0)
        pool.checkin(entry)
        fresh = pool.checkout()
    assert entry.conn.closed
    assert fresh.conn is not entry.conn
    pool.checkin(fresh)
    stats = pool.stats()
    assert (stats["connects"], stats["discards"], stats["checkouts"]) == (2, {"max_age": 1}, 2)


def test_max_idle_shrinks_the_pool_down_to_min_size(
    make_pool: Callable[..., Pool], clock: Clock
) -> None:
    """After a burst, connections idle past max_idle close, oldest first, down to min_size."""
    pool = make_pool(pool_size=4, min_size=2, max_idle=10.0, max_age=None)
    burst = [pool.checkout() for _ in range(4)]
    for entry in burst:
        pool.checkin(entry)
    clock.advance(9.0)
    pool.reap()
    assert counts(pool) == (4, 4, 0)
    clock.advance(1.0)
    pool.reap()
    assert counts(pool) == (2, 2, 0)
    closed = [e.conn.closed for e in burst]
    assert closed == [True, True, False, False], "the coldest (given back first) go first"
    clock.advance(3600.0)
    pool.reap()
    assert counts(pool) == (2, 2, 0), "min_size stays"
    assert pool.stats()["discards"] == {"max_idle": 2}


def test_fill_opens_up_to_min_size_and_refills(
    make_pool: Callable[..., Pool],
) -> None:
    """fill() opens idle connections up to min_size, no further; again after a discard."""
    pool = make_pool(pool_size=4, min_size=3)
    pool.fill()
    assert counts(pool) == (3, 3, 0)
    pool.fill()
    assert connector_of(pool).connects == 3
    entry = pool.checkout()
    pool.checkin(entry, "broken")
    assert counts(pool) == (2, 2, 0)
    pool.fill()
    assert counts(pool) == (3, 3, 0)
    assert connector_of(pool).connects == 4


def test_fill_stops_at_the_first_failure(make_pool: Callable[..., Pool]) -> None:
    """A connect that fails ends the warm-up; its slot is not kept."""
    pool = make_pool(pool_size=4, min_size=3)
    connector_of(pool).failures = [ValueError("access denied")]
    pool.fill()
    stats = pool.stats()
    assert (stats["open"], stats["connect_errors"], stats["backed_off"]) == (0, 1, False)
